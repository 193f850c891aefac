"""`python -m pinmatrix matrix`: resolve, build and probe every selected cell, then report; on this
host (pinmatrix/run/pipeline.py) or as a Slurm job array (`--on slurm`, pinmatrix/run/slurm.py)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from pinmatrix.commands.base import infra_exit
from pinmatrix.errors import EXIT_HARNESS
from pinmatrix.run.doctor import preflight
from pinmatrix.run.options import BundleOptions, RunOptions, SlurmOptions
from pinmatrix.run.pipeline import load_cells, run_matrix
from pinmatrix.run.slurm import run_on_slurm

HELP = "resolve, build and probe every selected cell, then report"


@dataclass(frozen=True)
class MatrixConfig:
    run: RunOptions
    slurm: SlurmOptions
    # --bundle DIR: applied to the run options when parsed (pinmatrix/bundle.py apply_bundle)
    bundle: BundleOptions


def run(config: MatrixConfig) -> int:
    opts = config.run
    if config.slurm.on == "slurm":

        slurm_run = run_on_slurm(config.slurm, opts)
        # The local run's rule: a table with infra cells exits 3 however its cells ran.
        return 0 if slurm_run is None else infra_exit(slurm_run)
    if opts.resume is None:  # the doctor's checks first: no all-infra table

        _, selected = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                                 snapshot=opts.snapshot, sources=opts.sources)
        preflight(opts, selected)

    summary = run_matrix(opts)
    print(summary.verdict)
    print(f"report: {summary.run_dir / 'summary.md'}")
    if summary.stopped:  # infra, not a bug: what finished is kept, the rest is retried by --resume
        print(f"run stopped early: {summary.stopped}; finished cells are kept in "
              f"{summary.run_dir}; "
              f"resume with `python -m pinmatrix matrix --resume {summary.run_dir.name}`",
              file=sys.stderr)
        return EXIT_HARNESS
    if summary.harness_errors:
        print("harness errors (a bug in pinmatrix, not in the cells):", file=sys.stderr)
        for line in summary.harness_errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_HARNESS
    return infra_exit(summary.run_dir)
