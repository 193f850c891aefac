"""Extras in axis values ("4.0.0b36[cu13]"): the matrix reads them, the requirement asks for them,
the cell id and the lock record them, a prepared host's version check ignores them, and a
malformed one is refused at file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinmatrix.cell import Cell, extras_lines, split_extras
from pinmatrix.environ.installed import pin_mismatches
from pinmatrix.errors import MatrixError
from pinmatrix.matrix.load import load_matrix

ROOT = Path(__file__).resolve().parents[2]
MATRIX = """\
axes:
  python: ["3.12"]
  base_image: ["nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04"]
  torch: ["2.11.0"]
  transformers: ["5.17.0"]
include:
  - {{transformers: "5.17.0", flash-attn-4: "{fa4}"}}
"""


def cells_of(tmp_path: Path, fa4: str) -> list[Cell]:
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX.format(fa4=fa4))
    return load_matrix(path).expand()


def test_an_axis_value_carries_extras_into_the_requirement_the_id_and_the_lock(
    tmp_path: Path,
) -> None:
    (cell,) = cells_of(tmp_path, "4.0.0b36[cu13]")
    assert cell.pins["flash-attn-4"] == "4.0.0b36[cu13]"
    assert "flash-attn-4[cu13]==4.0.0b36" in cell.requirements()
    assert cell.id.endswith("fa4_4.0.0b36_cu13")
    (bare,) = cells_of(tmp_path, "4.0.0b36")
    assert bare.id != cell.id and "flash-attn-4==4.0.0b36" in bare.requirements()
    assert extras_lines(cell) == "# pinmatrix-extras: flash-attn-4[cu13]\n"
    assert extras_lines(bare) == ""


def test_extras_are_sorted_and_a_specifier_keeps_them() -> None:
    assert split_extras(">=4.0.0b30[cu13, Dev]") == (">=4.0.0b30", ("cu13", "dev"))
    assert split_extras("5.17.0") == ("5.17.0", ())
    cell = Cell(pins={"python": "3.12", "flash-attn-4": ">=4.0.0b30[cu13]"})
    assert cell.requirements() == ["flash-attn-4[cu13]>=4.0.0b30"]


@pytest.mark.parametrize("bad", ["4.0.0b36[cu13", "4.0.0b36[]", "[cu13]4.0.0b36", "base[cu13]"])
def test_a_malformed_extras_value_is_refused_at_its_line(tmp_path: Path, bad: str) -> None:
    with pytest.raises(MatrixError, match=r"matrix\.yaml:7:\d+: include #1: flash-attn-4"):
        cells_of(tmp_path, bad)


def test_a_prepared_host_honours_a_pin_with_extras() -> None:
    cell = Cell(pins={"python": "3.12", "flash-attn-4": "4.0.0b36[cu13]"})
    assert pin_mismatches(cell, "3.12", {"flash-attn-4": "4.0.0b36"}) == []
    assert pin_mismatches(cell, "3.12", {"flash-attn-4": "4.0.0b35"}) == [
        "flash-attn-4 4.0.0b35 is installed, the cell pins 4.0.0b36[cu13]"
    ]


def test_the_default_matrix_asks_flash_attn_4_for_cuda_13() -> None:
    fa4 = {c.pins.get("flash-attn-4") for c in load_matrix(ROOT / "matrix.yaml").expand()}
    assert fa4 == {"none", "4.0.0b36[cu13]"}
