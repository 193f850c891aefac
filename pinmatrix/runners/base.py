"""The runner protocol (docs/CONTRACTS.md §6): how one resolved cell becomes one probe result.

A runner has two steps. `prepare` builds the environment (a Docker image, a venv) from the lock
and raises `InfraError` when the machine fails to do so. `run` starts the probe in that environment
and returns a `RunOutcome`: the result file, or an infra classification. A cell whose stack is
broken still yields a result file (failing checks are data), so `run` never raises for that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from pinmatrix.cell import Cell, Lock
from pinmatrix.errors import LOG_TAIL_CHARS


@dataclass(frozen=True)
class Prepared:
    """What `prepare` built: enough for `run` to start the probe there.

    `ref` is the runner's handle (an image tag, a venv folder); `details` carries runner-specific
    facts (the interpreter path, whether the build was reused, the build log path).
    """
    runner: str
    cell_id: str
    ref: str
    reused: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOutcome:
    """Either `result_path` (the probe wrote a result) or `infra_reason` (the machine failed)."""
    result_path: Path | None
    infra_reason: str | None = None
    signature: str | None = None
    log_tail: str = ""
    # runner facts the outcome records (docker: "gpu_access", pinmatrix/containers/cdi.py)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result_path is not None and self.infra_reason is None



@runtime_checkable
class Runner(Protocol):
    name: str

    def prepare(self, cell: Cell, lock: Lock) -> Prepared:
        """Build the cell's environment; raises InfraError."""
        ...

    def run(self, prepared: Prepared, spec_path: Path, out_dir: Path,
            gpu: str | None, timeout_s: float) -> RunOutcome:
        """Run `python -m probes` for the spec; writes the result under out_dir. Never raises for a
        cell failure.

        `gpu`: the device assignment (CUDA_VISIBLE_DEVICES value / docker --gpus device list);
        "" means CPU only (the --cpu flag); None means whatever the runner's default is (all).
        """
        ...


def tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    return text[-limit:]


# File names inside a runner's out_dir: the probe's result and the captured output of the run.
RESULT_NAME = "result.json"
RUN_LOG_NAME = "run.log"
