"""Write a run folder's report: summary.{json,md}, summary.html, junit.xml, compat.json, and the
diff when asked."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pinmatrix.fsio import strict_json, write_json_atomic, write_text_atomic
from pinmatrix.report.compat import write_compat
from pinmatrix.report.diff import attach_diff
from pinmatrix.report.html import write_html
from pinmatrix.report.junit import write_junit
from pinmatrix.report.markdown import render_markdown
from pinmatrix.report.pins import plan, plan_json
from pinmatrix.report.summary import merge


def write_report(run_dir: Path, previous: Path | None = None,
                 history: Iterable[dict[str, Any]] = (),
                 pins_for: Sequence[str] = ()) -> tuple[Path, Path]:
    """summary.{json,md}, then summary.html and junit.xml; with `previous`, also diff.{md,json}.
    summary's `pins` is the plan that pinmatrix.report.pins.write_pins writes (`pins_for`: the
    --pins-for targets)."""

    run_dir = Path(run_dir)
    summary = merge(run_dir)
    summary["pins"] = plan_json(plan(run_dir, summary, pins_for))
    if previous is not None:

        attach_diff(summary, run_dir, Path(previous), history)
    # strict JSON (a browser's JSON.parse rejects a bare NaN): a NaN or infinity from a result is
    # written as null, and its place is flagged in `nonfinite`; the pages show it as it was (nan)
    strict, summary["nonfinite"] = strict_json(summary)
    strict["nonfinite"] = summary["nonfinite"]
    json_path = write_json_atomic(run_dir / "summary.json", strict)
    md_path = write_text_atomic(run_dir / "summary.md", render_markdown(summary))

    write_html(summary, run_dir)
    write_junit(summary, run_dir)

    write_compat(run_dir, strict)  # the judged cells as a dataset (`which` reads it)
    return json_path, md_path
