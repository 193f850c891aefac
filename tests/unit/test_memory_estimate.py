"""The throughput memory estimate (probes/checks/memory_estimate.py) against the peaks the H200 and
H100 runs recorded (reports/h200, reports/h100), and the refusal before allocating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probes.checks import memory_estimate, throughput
from probes.context import Infra
from probes.fixtures.checkpoints import EXAONE35_2P4B_SHAPE

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
# "GPU 0 has a total capacity of 139.80 GiB" / "79.18 GiB" (the eager OOMs in reports/h200, h100)
H200_BYTES = int(139.80 * GIB)
H100_BYTES = int(79.18 * GIB)


def recorded_peaks() -> list[tuple[str, int, int, float, str]]:
    """(stack, batch, seq, peak GiB, file) of every passed speed check the GPU runs committed."""
    out = []
    for path in sorted((ROOT / "reports").glob("h*/*/cells/*.json")):
        for check in json.loads(path.read_text()).get("checks", []):
            ev = check.get("evidence") or {}
            name = check["name"]
            if (
                check["status"] == "pass"
                and name.startswith("throughput.")
                and ev.get("peak_mem_gib")
            ):
                stack = name.split(".", 1)[1]
                out.append((stack, ev["batch"], ev["seq"], ev["peak_mem_gib"], str(path)))
    return out


def test_the_estimate_matches_every_recorded_peak_it_models() -> None:
    """sdpa (remote code and llamafied) ~54-56 GiB and unsloth ~19.5-21 GiB at 4x2048, on the H200
    and the H100: within 10% of each (unsloth's own runs spread 7%)."""
    compared = []
    for stack, batch, seq, peak, where in recorded_peaks():
        estimate = memory_estimate.estimate_peak(EXAONE35_2P4B_SHAPE, stack, batch, seq)
        if estimate is None:
            continue
        compared.append(stack)
        assert estimate.gib == pytest.approx(peak, rel=0.10), (stack, batch, seq, peak, where)
    assert {"sdpa", "sdpa-llamafied", "unsloth"} <= set(compared), compared


@pytest.mark.parametrize("card", [H200_BYTES, H100_BYTES], ids=["H200", "H100"])
def test_eager_at_4x2048_is_infra_before_allocating(card: int) -> None:
    """Both cards ran out of memory on it after allocating (135 GiB of the H200's 139.8, 76.9 of the
    H100's 79.2): the estimate refuses it first, naming the estimate and the card's memory."""
    run = throughput.ThroughputRun(batch=4, seq=2048)
    with pytest.raises(
        Infra, match=r"estimated peak 143\.\d GiB at 4x2048 \(eager\) exceeds the card's"
    ) as info:
        throughput.fits_on_card("eager", run, total_bytes=card)
    assert f"{card / GIB:.1f} GiB" in str(info.value) and "eager_scores 90.0" in str(info.value)


@pytest.mark.parametrize("stack", ["sdpa", "sdpa-llamafied", "flash_attention_4", "unsloth"])
@pytest.mark.parametrize("shape", [(4, 2048), (1, 8192)])
def test_the_stacks_that_ran_fit_and_carry_their_estimate(
    stack: str, shape: tuple[int, int]
) -> None:
    run = throughput.ThroughputRun(batch=shape[0], seq=shape[1])
    for card in (H200_BYTES, H100_BYTES):
        evidence = throughput.fits_on_card(stack, run, total_bytes=card)
        assert 15 < evidence["estimated_peak_gib"] < 60 and evidence["card_memory_gib"] == round(
            card / GIB, 2
        )


def test_eager_grows_with_the_square_of_the_sequence() -> None:
    four = memory_estimate.estimate_peak(EXAONE35_2P4B_SHAPE, "eager", 4, 2048)
    one = memory_estimate.estimate_peak(EXAONE35_2P4B_SHAPE, "eager", 1, 8192)
    sdpa = memory_estimate.estimate_peak(EXAONE35_2P4B_SHAPE, "sdpa", 1, 8192)
    assert one.parts["eager_scores"] == 4 * four.parts["eager_scores"]
    assert "eager_scores" not in sdpa.parts and one.gib > 400


@pytest.mark.parametrize("stack", ["sdpa-gc", "liger", "liger-fa4", "qlora", "qlora-no-prepare"])
def test_stacks_the_estimate_does_not_model_are_never_refused(stack: str) -> None:
    run = throughput.ThroughputRun(batch=64, seq=8192)
    assert throughput.fits_on_card(stack, run, total_bytes=GIB) == {}
    gc = throughput.ThroughputRun(batch=64, seq=8192, gradient_checkpointing=True)
    assert throughput.fits_on_card("sdpa", gc, total_bytes=GIB) == {}


def test_parameter_counts_of_the_2p4b_shape() -> None:
    # 2.405 B: the figure _check_shape reads off the built model on the GPU runs (n_params)
    assert memory_estimate.param_count(EXAONE35_2P4B_SHAPE) == 2_405_327_360
    assert memory_estimate.lora_param_count(EXAONE35_2P4B_SHAPE, 16) == 21_995_520
