"""`python -m pinmatrix resolve`: the selected cells' locks only (pinmatrix/run/pipeline.py)."""
from __future__ import annotations

from dataclasses import dataclass

from pinmatrix.errors import EXIT_OK
from pinmatrix.run.options import RunOptions
from pinmatrix.run.pipeline import resolve_only

HELP = "resolve the selected cells' locks only"


@dataclass(frozen=True)
class ResolveConfig:
    run: RunOptions


def run(config: ResolveConfig) -> int:
    run_dir = resolve_only(config.run)
    print(f"locks: {run_dir / 'locks'}")
    return EXIT_OK
