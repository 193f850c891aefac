"""--no-install: a prepared environment whose own requirements are unmet is infra, not a broken
stack. The environments here are real: the test venv's transformers 4.57.6 with a site
layer holding a tokenizers 0.23.2 distribution first on the path."""
from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pinmatrix.cell import Cell
from pinmatrix.environ import env_check
from pinmatrix.environ.installed import lock_from_environment
from pinmatrix.resolve.uv import ResolveInfraError
from probes.signatures import classify


def _dist(site: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    return site


def test_a_consistent_environment_has_no_conflicts() -> None:
    report = env_check.check(sys.executable, roots=["packaging"])
    assert report.consistent and report.distributions > 0


def test_an_unmet_requirement_is_named_with_what_was_found(tmp_path: Path) -> None:
    site = _dist(tmp_path / "site", "pm-demo-app", "1.0", ("packaging<1", "pm-demo-missing>=2"))
    report = env_check.check(sys.executable, [site])
    found = md.version("packaging")
    assert f"pm-demo-app 1.0 requires packaging<1; found {found}" in report.conflicts
    assert "pm-demo-app 1.0 requires pm-demo-missing>=2; not installed" in report.conflicts
    assert report.involving_sites == report.conflicts
    # roots: only the stack's packages and their requirements are judged
    assert env_check.check(sys.executable, [site], roots=["packaging"]).consistent


def test_markers_are_evaluated_for_the_interpreter_under_test(tmp_path: Path) -> None:
    site = _dist(tmp_path / "site", "pm-demo-app", "1.0",
                 ('packaging<1; python_version < "3"', 'packaging<1; extra == "x"'))
    assert env_check.check(sys.executable, [site]).consistent


def _transformers() -> str | None:
    try:
        return md.version("transformers")
    except md.PackageNotFoundError:
        return None


@pytest.mark.skipif(_transformers() != "4.57.6", reason="needs the test venv's transformers 4.57.6")
def test_transformers_with_a_too_new_tokenizers_is_environment_inconsistent(tmp_path: Path) -> None:
    site = _dist(tmp_path / "site", "tokenizers", "0.23.2")
    cell = Cell(pins={"transformers": "4.57.6"})
    with pytest.raises(ResolveInfraError) as err:
        lock_from_environment(cell, sys.executable, [site])
    assert err.value.signature == "environment-inconsistent"
    assert ("transformers 4.57.6 requires tokenizers<=0.23.0,>=0.22.0; found 0.23.2"
            in str(err.value))
    # what the probe would have seen: transformers refuses to import, and the catalogue knows it
    proc = subprocess.run([sys.executable, "-c", "import transformers"], capture_output=True,
                          text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    head = proc.stderr[proc.stderr.index("ImportError: "):]
    assert head.startswith("ImportError: tokenizers>=0.22.0,<=0.23.0 is required for a normal "
                           "functioning of this module, but found tokenizers==0.23.2.")
    found = classify("ImportError", head.split(": ", 1)[1])
    assert (found.id, found.known, found.infra) == ("transformers-dependency-version-check",
                                                    True, True)


def test_the_device_script_reports_the_same(tmp_path: Path) -> None:
    site = _dist(tmp_path / "site", "pm-demo-app", "1.0", ("packaging<1",))
    script = Path(__file__).resolve().parents[2] / "lab" / "gpu-lease" / "h200_env_check.py"
    out = subprocess.run([sys.executable, str(script), "lbl"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=True)

    data = json.loads(out.stdout)
    assert data["label"] == "lbl" and data["consistent"] is False
    assert data["unmet_involving_sites"][0].startswith("pm-demo-app 1.0 requires packaging<1")
