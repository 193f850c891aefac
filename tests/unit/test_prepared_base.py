"""`base` pins (prepared base images): the pin's grammar, what the lock says the base provides, and
what the image build installs (pinmatrix/cell.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pinmatrix.cell import Cell, base_spec, install_lock, parse_lock, provided_by_base
from pinmatrix.errors import MatrixError
from pinmatrix.matrix.load import load_matrix

LOCK = """\
# base image nvcr.io/nvidia/pytorch:25.01-py3 (sha256:abc)
# pinmatrix-base: torch==2.6.0a0+ecf3bae40a.nv25.1
# pinmatrix-base: triton==3.1.0
certifi==2026.10.19 \\
    --hash=sha256:1111
    # via requests
torch==2.6.0a0+ecf3bae40a.nv25.1 \\
    --hash=sha256:2222
    # via
    #   peft
    #   -r requirements.in
transformers==4.57.6 \\
    --hash=sha256:3333
    # via -r requirements.in
triton==3.1.0
    # via torch
"""


@pytest.mark.parametrize("value, spec", [("base", ""), ("base>=2.6", ">=2.6"),
                                         ("base==2.13.0+cpu", "==2.13.0+cpu"),
                                         ("2.13.0", None), ("baseline", None), ("base>=", None),
                                         ("none", None)])
def test_base_spec(value: str, spec: str | None) -> None:
    assert base_spec(value) == spec


def test_base_pins_are_not_requirements() -> None:
    cell = Cell({"python": "3.11", "base_image": "img", "torch": "base>=2.6",
                 "transformers": "4.57.6"})
    assert cell.requirements() == ["transformers==4.57.6"]
    assert cell.base_pins() == {"torch": ">=2.6"}
    assert "torchbase" in cell.id


def test_install_lock_leaves_out_what_the_base_provides() -> None:
    assert provided_by_base(LOCK) == {"torch": "2.6.0a0+ecf3bae40a.nv25.1", "triton": "3.1.0"}
    assert parse_lock(LOCK)["torch"] == "2.6.0a0+ecf3bae40a.nv25.1"  # drift still sees it
    kept = install_lock(LOCK)
    assert parse_lock(kept) == {"certifi": "2026.10.19", "transformers": "4.57.6"}
    assert "--hash=sha256:2222" not in kept and "#   peft" not in kept
    assert "--hash=sha256:3333" in kept and "--hash=sha256:1111" in kept
    plain = "transformers==4.57.6\n"
    assert install_lock(plain) == plain


def test_matrix_accepts_base_and_refuses_a_bad_specifier(tmp_path: Path) -> None:
    good = tmp_path / "m.yaml"
    good.write_text('axes:\n  python: ["3.12"]\n'
                    '  base_image: ["nvcr.io/nvidia/pytorch:25.01-py3"]\n'
                    '  torch: [base, "base>=2.6"]\n')
    cells = load_matrix(good).expand()
    assert [c.pins["torch"] for c in cells] == ["base", "base>=2.6"]
    bad = tmp_path / "bad.yaml"
    bad.write_text('axes:\n  python: ["3.12"]\n  base_image: ["img"]\n  torch: ["base>=2.x"]\n')
    with pytest.raises(MatrixError, match="base>=2.x"):
        load_matrix(bad)
