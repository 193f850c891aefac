"""`python -m pinmatrix report`: merge a run folder into summary.{md,json} and the pins."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from pinmatrix.errors import EXIT_OK, UsageError
from pinmatrix.fsio import load_json, published_together
from pinmatrix.interrupt import held
from pinmatrix.report.pins import write_pins
from pinmatrix.report.write import write_report
from pinmatrix.run.folder import check_run_folder
from pinmatrix.run.options import ReportOptions, RunOptions

HELP = "merge a run folder into summary.{md,json}"


@dataclass(frozen=True)
class ReportConfig:
    run: RunOptions  # --reports, --pins-for
    report: ReportOptions  # --run, --previous


def run(config: ReportConfig) -> int:
    given = config.report.run
    run_dir = given or (config.run.reports_dir / "latest")
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir} (run `python -m pinmatrix matrix` first, or "
                         "pass --run DIR)")
    check_run_folder(run_dir, "--run" if given else "--reports")
    pins_for = tuple(config.run.pins_for)
    # one set: an interrupt waits for the whole report, or a second one keeps the old report
    with held(), published_together():
        json_path, md_path = write_report(run_dir.resolve(), previous=config.report.previous,
                                          pins_for=pins_for)
        pins_message = write_pins(run_dir.resolve(), pins_for=pins_for).message

    summary = load_json(json_path)
    for item in summary.get("damaged", []):  # said on the console too, not only in summary.md
        print(f"warning: {item['path']}: {item['why']}", file=sys.stderr)
    print(summary["verdict"])
    print(f"report: {md_path}")
    print(pins_message)
    return EXIT_OK
