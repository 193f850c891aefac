"""Every package folder of pinmatrix/ is listed in pyproject.toml: nox installs the harness without
-e for most sessions, and a folder left out is silently missing from that install."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def test_every_pinmatrix_package_is_installed() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "pinmatrix").rglob("__init__.py")}
    assert found - listed == set(), "pinmatrix packages missing from pyproject.toml"
