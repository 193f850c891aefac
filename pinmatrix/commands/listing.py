"""`python -m pinmatrix list`: the selected cell ids, one a line, or JSON for a CI job matrix."""
from __future__ import annotations

import json
from dataclasses import dataclass

from pinmatrix.errors import EXIT_OK
from pinmatrix.run.options import ReportOptions, RunOptions
from pinmatrix.run.pipeline import load_cells

HELP = ("list the selected cell ids (--json: {\"cells\": [...], \"snapshot\": {...}} for a CI "
        "job matrix)")


@dataclass(frozen=True)
class ListConfig:
    run: RunOptions
    report: ReportOptions  # --json


def run(config: ListConfig) -> int:
    opts = config.run
    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                               snapshot=opts.snapshot, sources=opts.sources)
    if config.report.json:
        print(json.dumps({"cells": [cell.id for cell in cells],
                          "snapshot": matrix.snapshot or {}}))
        return EXIT_OK
    for cell in cells:
        print(cell.id)
    return EXIT_OK
