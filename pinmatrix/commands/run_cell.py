"""`python -m pinmatrix run-cell --run-dir RUN --index N`: one Slurm array task
(pinmatrix/run/slurm.py)."""
from __future__ import annotations

from dataclasses import dataclass

from pinmatrix.run.options import RunOptions, SlurmOptions
from pinmatrix.run.slurm import run_cell_task

HELP = "run one cell of a prepared run folder (a Slurm array task; see pinmatrix/run/slurm.py)"


@dataclass(frozen=True)
class RunCellConfig:
    run: RunOptions  # --run-dir: the shared run folder
    slurm: SlurmOptions  # --index


def run(config: RunCellConfig) -> int:
    return run_cell_task(config.run, config.slurm.index)
