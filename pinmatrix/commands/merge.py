"""`python -m pinmatrix merge ARTIFACT_DIR...`: a run folder from per-cell artifact folders (the
GitHub merge job), then the nightly's report, diff and history (pinmatrix/commands/nightly.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinmatrix.commands.nightly import expected_cells_of, merge_and_finish
from pinmatrix.errors import UsageError
from pinmatrix.run.options import ReportOptions, RunOptions

HELP = ("build a run folder from per-cell artifact folders (ARTIFACT_DIR...), report, diff, "
        "history")
USAGE = ("python -m pinmatrix merge ARTIFACT_DIR... [--previous DIR] [--history "
         "FILE] "
         "[--expected-cells FILE] [--reports DIR] [--label LABEL]")


@dataclass(frozen=True)
class MergeConfig:
    run: RunOptions  # the positionals (artifact folders, not selectors), --reports, --label
    report: ReportOptions


def run(config: MergeConfig) -> int:
    roots = [Path(p) for p in config.run.selectors]
    if not roots:
        raise UsageError("merge: give at least one ARTIFACT_DIR (a folder of downloaded artifacts)")
    missing = [str(p) for p in roots if not p.is_dir()]
    if missing:
        raise UsageError(f"merge: no such folder: {', '.join(missing)}")
    report = config.report
    return merge_and_finish(roots, reports_dir=config.run.reports_dir, previous=report.previous,
                            history_path=report.history,
                            expected_cells=expected_cells_of(report.expected_cells),
                            label=config.run.label,
                            pins_for=tuple(config.run.pins_for)).exit_code
