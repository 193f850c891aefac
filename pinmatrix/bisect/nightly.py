"""The nightly bisects its new breakages: where a check that passed in the previous run
fails
now, in a cell that differs from a previous good cell in exactly one axis value, the first bad
release
of that package is searched within a budget of probes, and written into diff.md, diff.json,
summary.{json,md}, junit.xml (a property per cell) and the GitHub step summary.

Which pairs qualify: the diff matches cells by id, and a cell id holds every axis value, so a check
that broke under the same id broke with the same pins (a transitive dependency moved in the lock;
that
is said, not bisected). A new cell (a live axis moved to a new release) is compared with every
previous
cell whose pins differ from it in exactly one axis, where the check passed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packaging.version import Version

from pinmatrix.bisect.releases import ReleaseIndexUnreachable
from pinmatrix.bisect.run import BisectSpec, run_bisect
from pinmatrix.errors import PinmatrixError
from pinmatrix.fsio import load_json, write_json_atomic, write_text_atomic
from pinmatrix.report.diff import render_bisect_lines as render_lines
from pinmatrix.report.diff import write_diff
from pinmatrix.report.junit import write_junit
from pinmatrix.report.markdown import render_markdown
from pinmatrix.run.options import RunOptions

__all__ = ["DEFAULT_BISECT_BUDGET", "candidates", "bisect_new_breakages", "render_lines"]

# Probes one new breakage may cost: ceil(log2 n) + 2 for n releases, so 8 covers ranges of up to 65
# releases (transformers 4.57.6..5.17.0 holds 33).
DEFAULT_BISECT_BUDGET = 8
Echo = Callable[[str], None]


def _cells(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in summary.get("cells") or []}


FactsOf = Callable[[dict[str, Any], str], set[str]]


def candidates(
    now: dict[str, Any], before: dict[str, Any], facts_of: tuple[FactsOf, FactsOf] | None = None
) -> list[dict[str, Any]]:
    """(cell, check, package, good, bad) for each broken check with a one-axis-away good cell
    before. With `facts_of` (now's, before's: a cell and a check -> its failed fact ids), a check
    that failed before too is a new break where a fact fails now that did not fail in that cell:
    one candidate per such fact, bisected by its id (`fact`)."""
    now_cells, old_cells = _cells(now), _cells(before)
    found: list[dict[str, Any]] = []
    for cid, cell in now_cells.items():
        failing = [n for n, c in (cell.get("checks") or {}).items() if c.get("status") == "fail"]
        for check in failing:
            for old in old_cells.values():
                old_status = ((old.get("checks") or {}).get(check) or {}).get("status")
                new_facts: list[str] = []
                if old_status == "fail" and facts_of is not None:
                    new_facts = sorted(facts_of[0](cell, check) - facts_of[1](old, check))
                    if not new_facts:
                        continue
                elif old_status != "pass":
                    continue
                pins, old_pins = cell.get("pins") or {}, old.get("pins") or {}
                differ = [k for k in set(pins) | set(old_pins) if pins.get(k) != old_pins.get(k)]
                if len(differ) != 1:
                    continue
                axis = differ[0]
                facts: list[str | None] = list(new_facts) or [None]
                for fact in facts:
                    item = {
                        "cell": cid,
                        "check": check,
                        "package": axis,
                        "good": old_pins.get(axis),
                        "bad": pins.get(axis),
                        "previous_cell": old["id"],
                    }
                    found.append(item | ({"fact": fact} if fact else {}))
    unique = {
        (f["package"], f["good"], f["bad"], f["check"], f.get("fact")): f for f in found
    }
    return list(unique.values())


def bisect_new_breakages(
    run_dir: Path, opts: RunOptions, *, budget: int = DEFAULT_BISECT_BUDGET, echo: Echo = print
) -> list[dict[str, Any]]:
    """Bisect each candidate of this run against its previous run; record the answers in the run."""

    summary_path = Path(run_dir) / "summary.json"
    summary = load_json(summary_path)
    diff = summary.get("diff")
    if not diff or not diff.get("previous_dir"):
        return []
    before = load_json(Path(diff["previous_dir"]) / "summary.json")
    records: list[dict[str, Any]] = []
    facts = (_failed_facts(Path(run_dir)), _failed_facts(Path(diff["previous_dir"])))
    for item in candidates(summary, before, facts):
        try:
            bad, good = item["bad"], item["good"]
            if Version(good) > Version(
                bad
            ):  # a downgrade broke it: bisect upwards from the bad one
                item["note"] = "the package moved backwards; not bisected"
                records.append(item)
                continue
        except Exception:  # noqa: BLE001 - a non-version axis value (a base image): nothing to bisect
            item["note"] = "not a version axis; not bisected"
            records.append(item)
            continue
        cell_pins = next(c["pins"] for c in summary["cells"] if c["id"] == item["cell"])
        selectors = tuple(f"{k}={v}" for k, v in sorted(cell_pins.items()) if k != item["package"])
        spec = BisectSpec(
            item["package"], good, bad, selectors, (item["check"],), fact=item.get("fact")
        )
        echo(
            f"nightly: bisecting {item['package']} {good}..{bad} for {item['check']} (budget "
            f"{budget})"
        )
        step_opts = dataclasses.replace(opts, flaky_rerun=False)
        try:
            folder, result = run_bisect(spec, step_opts, echo=echo, budget=budget)
        except (PinmatrixError, ReleaseIndexUnreachable, ValueError) as exc:
            item["note"] = f"not bisected: {exc}"
            records.append(item)
            continue
        written = load_json(Path(folder) / "bisect.json")
        first_step = (written.get("steps") or {}).get(result.first_bad or "", {})
        item.update(
            probes_run=written.get("probes_run"),
            # the signature the bisected check failed with at the first bad release
            signature=((first_step.get("checks") or {}).get(item["check"]) or {}).get("signature"),
            first_bad=result.first_bad,
            last_good=result.last_good,
            probes=result.probes,
            releases=len(result.releases),
            stopped=result.stopped,
            bisect=str(Path(folder) / "bisect.md"),
        )
        records.append(item)
    if records:
        _record(Path(run_dir), summary, records)
    return records


def _failed_facts(run_dir: Path) -> FactsOf:
    """A cell's failed fact ids for one check, from its result file (the summary keeps none)."""

    def facts(cell: dict[str, Any], check: str) -> set[str]:
        path = cell.get("result")
        if not path:
            return set()
        try:
            result = load_json(run_dir / str(path))
        except (OSError, ValueError):
            return set()
        for entry in result.get("checks") or []:
            if entry.get("name") == check:
                return {str(f) for f in (entry.get("evidence") or {}).get("failed_fact_ids") or []}
        return set()

    return facts


def _record(run_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    summary["diff"]["bisects"] = records
    write_diff(run_dir, summary["diff"])
    write_json_atomic(run_dir / "summary.json", summary)
    write_text_atomic(run_dir / "summary.md", render_markdown(summary))
    write_junit(summary, run_dir)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write("\n".join(["### First bad releases", *render_lines(records), ""]) + "\n")
