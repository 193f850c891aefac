"""A Slurm task that ended without a result is rewritten as infra with Slurm's state; what the task
had recorded before it was stopped (partial checks, timings, the GPU timeline) stays with it."""
from __future__ import annotations

from pinmatrix.cell import Cell
from pinmatrix.outcome import Outcome
from pinmatrix.run.slurm import slurm_outcome


def _cell() -> Cell:
    return Cell(pins={"torch": "2.13.0", "transformers": "4.57.6"})


def test_the_task_record_is_kept_under_slurms_cause() -> None:
    existing = Outcome(cell=_cell().id, hash="h" * 16, pins={"torch": "2.13.0"}, runner="venv",
                       stage="run", status="infra", signature="slurm-cancelled",
                       reason="Slurm task stopped", timings={"prepare_s": 12.5}, gpu="0",
                       started="2026-11-29T22:00:00.000Z", partial=f"partial/{_cell().id}.json")
    out = slurm_outcome(existing, _cell(), "TIMEOUT", "77", 3, runner="slurm:venv")
    assert (out.status, out.signature, out.runner) == ("infra", "slurm-timeout", "slurm:venv")
    assert out.reason == "Slurm task 77_3 ended TIMEOUT without a result (log: slurm/77_3.log)"
    assert (out.hash, out.stage, out.timings, out.gpu, out.partial) == (
        "h" * 16, "run", {"prepare_s": 12.5}, "0", f"partial/{_cell().id}.json")
    assert out.started == existing.started and out.result is None
    assert dict(out.pins) == {"torch": "2.13.0", "transformers": "4.57.6"}


def test_a_task_that_recorded_nothing_is_infra_at_resolve() -> None:
    out = slurm_outcome(None, _cell(), "NODE_FAIL", "77", 0, runner="slurm:docker")
    assert (out.stage, out.signature, out.hash, out.partial) == (
        "resolve", "slurm-node-fail", None, None)
