"""Cell ids are stable and readable; the content hash is stable and moves with every input that
decides a result."""
from __future__ import annotations

from pathlib import Path

import pytest

from pinmatrix.cell import Cell, ModelSpec, content_hash
from pinmatrix.matrix.load import load_matrix

ROOT = Path(__file__).resolve().parents[2]
EXAONE35 = ModelSpec("exaone3.5", "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "a" * 40, "remote-code")
EXAONE4 = ModelSpec("exaone4", "LGAI-EXAONE/EXAONE-4.0-1.2B", "b" * 40, "native")
BASE = dict(lock_text="torch==2.13.0+cpu\ntransformers==5.17.0\n", dockerfile="FROM x\n",
            probes_digest="p" * 64,
            checks=("imports", "lora-train"), settings={"device": "cpu",
                                                        "throughput": {"batch": 4, "seq": 2048}},
            gpu_model="NVIDIA H100 80GB HBM3", base_image="pinmatrix/base:bookworm-py311",
            models=(EXAONE35, EXAONE4), pins={"python": "3.11", "torch": "2.13.0+cpu",
                                              "transformers": "5.17.0", "unsloth": "none"})


def test_ids_of_the_ci_matrix_are_exactly_these() -> None:
    # Stable across runs and machines: a change here renames every result folder, so it must be
    # deliberate.
    ids = [c.id for c in load_matrix(ROOT / "tests/data/matrices/ci.yaml").expand()]
    assert ids == [
        "py3.11-torch2.13.0+cpu-tf4.57.6-unsloth-none-peft0.21.2-xf-none-fa-none-bnb-none",
        "py3.11-torch2.13.0+cpu-tf5.17.0-unsloth-none-peft0.21.2-xf-none-fa-none-bnb-none",
    ]


def test_id_does_not_depend_on_key_order_and_reads_as_the_design_says() -> None:
    a = Cell(pins={"python": "3.12", "torch": "2.11.0", "transformers": "5.17.0",
                   "unsloth": "2026.10.9"})
    b = Cell(pins={"unsloth": "2026.10.9", "transformers": "5.17.0", "torch": "2.11.0",
                   "python": "3.12"})
    assert a.id == b.id == "py3.12-torch2.11.0-tf5.17.0-unsloth2026.10.9"


def test_every_pin_changes_the_id() -> None:
    pins = {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.17.0", "peft": "0.21.2",
            "unsloth": "none"}
    base = Cell(pins=pins).id
    for key, other in [("python", "3.12"), ("torch", "2.14.0"), ("transformers", "4.57.6"),
                       ("peft", "0.21.1"),
                       ("unsloth", "2026.10.9")]:
        assert Cell(pins={**pins, key: other}).id != base, key


def test_ids_are_unique_and_path_safe_for_the_default_matrix() -> None:
    cells = load_matrix(ROOT / "matrix.yaml").expand()
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    assert all("/" not in i and " " not in i for i in ids)


def test_content_hash_is_stable() -> None:
    h = content_hash(**BASE)
    assert h == content_hash(**{**BASE, "settings": {"throughput": {"seq": 2048, "batch": 4},
                                                     "device": "cpu"}})
    assert len(h) == 64 and int(h, 16) >= 0


@pytest.mark.parametrize("field,changed", [
    ("lock_text", "torch==2.13.0+cpu\ntransformers==5.17.1\n"),
    ("dockerfile", "FROM y\n"),
    ("probes_digest", "q" * 64),
    ("checks", ("imports",)),
    ("settings", {"device": "cpu", "throughput": {"batch": 8, "seq": 2048}}),
    ("gpu_model", "NVIDIA H200"),
    ("base_image", "nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04"),
    ("models", (EXAONE35, ModelSpec("exaone4", EXAONE4.repo, "c" * 40, "native"))),
    ("pins", {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.17.0",
              "unsloth": "2026.10.9"}),
])
def test_content_hash_moves_with_each_input(field, changed) -> None:
    assert content_hash(**{**BASE, field: changed}) != content_hash(**BASE)
