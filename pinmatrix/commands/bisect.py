"""`python -m pinmatrix bisect PACKAGE GOOD..BAD`: the first bad release, each step a real cell
(pinmatrix/bisect/run.py)."""
from __future__ import annotations

from dataclasses import dataclass

from pinmatrix.bisect.run import bisect_command
from pinmatrix.run.options import BisectOptions, RunOptions

HELP = "PACKAGE GOOD..BAD: the first bad release, each step a real cell (pinmatrix/bisect/run.py)"


@dataclass(frozen=True)
class BisectConfig:
    run: RunOptions  # selectors: PACKAGE GOOD..BAD first, then the cell's selectors
    bisect: BisectOptions


def run(config: BisectConfig) -> int:
    return bisect_command(config.bisect, config.run)
