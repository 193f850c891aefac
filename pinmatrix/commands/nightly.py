"""The nightly: run (or merge) the matrix, compare with the previous run, keep the history, and
turn red only on new breakages.

Exit code: 0 unless a check or cell that passed in the previous run fails now (1). Infra (a dead
runner, an OOM, a missing artifact) is listed apart and never turns the nightly red; nor do new
cells that are broken (nothing passed before) or a first run with nothing to compare against.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinmatrix.bisect.nightly import bisect_new_breakages
from pinmatrix.errors import PreviousRunError, UsageError
from pinmatrix.fsio import load_json, published_together
from pinmatrix.interrupt import held
from pinmatrix.report.diff import find_run_dir, previous_run_in
from pinmatrix.report.diff import render_bisect_lines as render_lines
from pinmatrix.report.history import append_history, history_record, read_history
from pinmatrix.report.merge import merge_artifacts
from pinmatrix.report.pins import write_pins_and_say
from pinmatrix.report.write import write_report
from pinmatrix.run.folder import new_run_dir, point_latest
from pinmatrix.run.options import BisectOptions, ReportOptions, RunOptions
from pinmatrix.run.pipeline import run_matrix

EXIT_GREEN, EXIT_NEW_BREAKAGES = 0, 1
HISTORY_NAME = "history.jsonl"

Echo = Callable[[str], None]


@dataclass
class NightlyResult:
    run_dir: Path
    previous: Path | None
    summary: dict[str, Any]
    exit_code: int


def finish(run_dir: Path, *, reports_dir: Path, previous: Path | None = None,
           history_path: Path | None = None, pins_for: Sequence[str] = (),
           echo: Echo = print) -> NightlyResult:
    """Write the report (with the diff against `previous`, else the newest earlier run in
    reports_dir) and the pins (with the `--pins-for` purposes, so the files and the summary's plan
    agree), append this run to the history, and decide the exit code."""

    run_dir = Path(run_dir)
    history_path = Path(history_path) if history_path else Path(reports_dir) / HISTORY_NAME
    if previous is not None:
        try:
            previous = find_run_dir(previous)
        except PreviousRunError as exc:
            echo(f"previous run: {exc}; comparing with nothing")
            previous = None
    else:
        previous = previous_run_in(reports_dir, run_dir)
    history, problems = read_history(history_path)
    for problem in problems:
        echo(f"history: skipped {problem}")

    # the whole report with its pins (the --pins-for purposes in both), or the one before
    # (interrupt.py)
    with held(), published_together():
        write_report(run_dir, previous=previous, history=history, pins_for=pins_for)
        write_pins_and_say(run_dir, echo, pins_for)
    summary = load_json(run_dir / "summary.json")
    diff = summary.get("diff")
    record = history_record(summary)
    record["previous"] = diff["previous_run"] if diff else None
    record["new_breakages"] = len(diff["new_breakages"]) if diff else 0
    append_history(history_path, record)

    echo(summary["verdict"])
    if diff:
        echo(diff["headline"])
        for b in diff["new_breakages"]:
            echo(f"  NEW BREAKAGE {b['cell']} {b['check'] or '(cell)'}: {b['before']} → {b['now']}"
                 + (f" [{b['signature']}]" if b.get("signature") else ""))
    else:
        echo("no previous run to compare with: nothing can be a new breakage")
    infra = summary.get("infra") or []
    if infra:
        echo(f"infra (listed apart, never red): {len(infra)}")
        for item in infra:
            echo(f"  {item['cell']} {item.get('check') or '(cell)'}: "
                 f"{' '.join(str(item.get('reason') or 'infra').split())[:200]}")
    echo(f"report: {run_dir / 'summary.md'}")
    echo(f"history: {history_path}")
    code = EXIT_NEW_BREAKAGES if diff and diff["new_breakages"] else EXIT_GREEN
    return NightlyResult(run_dir, previous, summary, code)


def run_nightly(opts: RunOptions, *, previous: Path | None = None, history_path: Path | None = None,
                echo: Echo = print, bisect_budget: int = 0) -> NightlyResult:
    """Run the matrix (live axes expand now), then `finish`. A harness error in one cell is an infra
    outcome in the run, listed apart: it never turns the nightly red by itself."""

    summary = run_matrix(opts, echo=echo)
    for line in summary.harness_errors:
        echo(f"harness error (recorded as infra): {line}")
    result = finish(summary.run_dir, reports_dir=opts.reports_dir, previous=previous,
                    history_path=history_path, pins_for=opts.pins_for,
                    echo=echo)
    if result.exit_code == EXIT_NEW_BREAKAGES and bisect_budget > 0:

        for line in render_lines(bisect_new_breakages(summary.run_dir, opts, budget=bisect_budget,
                                                      echo=echo)):
            echo(f"  {line}")
    return result


def merge_and_finish(artifact_roots: Sequence[Path], *, reports_dir: Path, previous: Path | None,
                     history_path: Path | None, expected_cells: Sequence[str] = (),
                     label: str | None = None, pins_for: Sequence[str] = (),
                     echo: Echo = print) -> NightlyResult:
    """The GitHub merge job: a run folder from the per-cell artifacts, then `finish`."""

    run_dir = new_run_dir(reports_dir, label)
    merged = merge_artifacts(artifact_roots, run_dir, expected_cells=expected_cells)
    echo(f"merged {len(merged.cells)} cell{'s' if len(merged.cells) != 1 else ''} from "
         f"{len(merged.parts)} "
         f"run folder{'s' if len(merged.parts) != 1 else ''} into {run_dir}")
    for note in merged.notes:
        echo(f"  note: {note}")
    result = finish(run_dir, reports_dir=reports_dir, previous=previous, history_path=history_path,
                    pins_for=pins_for, echo=echo)
    point_latest(reports_dir, run_dir)
    return result


# --- command line (its options: the typed fields of pinmatrix/run/options.py) ---------------------

def expected_cells_of(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        data = load_json(Path(path))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--expected-cells {path}: not readable JSON: {exc}") from None
    cells = data.get("cells") if isinstance(data, dict) else data
    if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
        raise UsageError(f"--expected-cells {path}: expected `list --json` output ({{\"cells\": "
                         f"[ids]}}) or a list of ids")
    return cells


HELP = ("run the matrix, diff with the previous run, append reports/history.jsonl; exit 1 "
        "only on new breakages")


@dataclass(frozen=True)
class NightlyConfig:
    run: RunOptions
    report: ReportOptions  # --previous, --history
    bisect: BisectOptions  # --bisect-budget


def run(config: NightlyConfig) -> int:
    opts = config.run
    if opts.pull is None:  # a moving base tag (nvidia/cuda:…) must not hide behind a stale copy
        opts = dataclasses.replace(opts, pull="always")
    return run_nightly(opts, previous=config.report.previous, history_path=config.report.history,
                       bisect_budget=config.bisect.bisect_budget).exit_code
