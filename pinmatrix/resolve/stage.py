"""The resolve stage: every selected cell resolved in parallel before anything is built, and its
table.

`run_matrix` and `resolve_only` (pinmatrix.run.pipeline) both go through `resolve_stage`, so an
unresolvable cell is known, with uv's words, before the first image build; `nox -s resolve` prints
`format_table`.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinmatrix.cell import Cell, Lock, Unresolvable
from pinmatrix.errors import ResolveInfraError
from pinmatrix.resolve.uv import resolve_many
from pinmatrix.sources import PackageSources

Resolved = Lock | Unresolvable | ResolveInfraError


@dataclass
class StageResult:
    results: dict[str, Resolved]      # cell id -> Lock | Unresolvable | ResolveInfraError
    wall_s: float
    workers: int

    def lookup(self, cell: Cell, sources: PackageSources | None,
               lock_dir: Path) -> Lock | Unresolvable:
        """A `resolve_fn` for run.one_cell.run_cell: the stage's answer for the cell (raises its
        infra error)."""
        outcome = self.results[cell.id]
        if isinstance(outcome, ResolveInfraError):
            raise outcome
        return outcome

    def manifest(self) -> dict[str, Any]:
        counts = {"resolved": 0, "unresolvable": 0, "infra": 0}
        for outcome in self.results.values():
            counts[status_of(outcome)] += 1
        return {"wall_s": round(self.wall_s, 2), "workers": self.workers, **counts}

    def summary(self) -> str:
        """The stage in words: `resolve: 8 resolved, 1 unresolvable, in 83 s (8 workers)`."""
        counts = self.manifest()
        said = [f"{counts[k]} {k}" for k in ("resolved", "unresolvable", "infra")
                if counts[k] or k == "resolved"]
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        return f"resolve: {', '.join(said)}, in {self.wall_s:.0f} s ({workers})"


def resolve_stage(cells: Sequence[Cell], sources: PackageSources | None, locks_root: Path, *,
                  workers: int | None = None, echo: Callable[[str], None] | None = None,
                  **options: Any) -> StageResult:
    """Resolve `cells` in parallel; locks go to locks_root/<cell id>/. One cell's infra error never
    stops the rest. With `echo`, each cell is said as it resolves, with its time (`cell_line`)."""
    workers = workers or min(8, max(1, len(cells)))
    started = time.monotonic()
    done = 0
    done_lock = threading.Lock()

    def said(cell: Cell, outcome: Resolved, seconds: float) -> None:
        nonlocal done
        with done_lock:
            done += 1
            if echo is not None:
                echo(cell_line(cell.id, outcome, seconds, done, len(cells)))

    if cells and echo is not None:
        echo(f"resolve: {len(cells)} cell{'s' if len(cells) != 1 else ''} with uv pip compile, "
             f"{workers} at once")
    results = resolve_many(list(cells), sources, locks_root, workers=workers, on_done=said,
                           **options) if cells else {}
    return StageResult(results, time.monotonic() - started, workers)


def cell_line(cell_id: str, outcome: Resolved, seconds: float, done: int, total: int) -> str:
    """`resolve [3/9] <cell>: resolved, 187 packages, in 12 s`."""
    return (f"resolve [{done}/{total}] {cell_id}: {status_of(outcome)}, {detail_of(outcome)}, "
            f"in {seconds:.0f} s")


def status_of(outcome: Resolved) -> str:
    if isinstance(outcome, Lock):
        return "resolved"
    if isinstance(outcome, Unresolvable):
        return "unresolvable"
    return "infra"


def detail_of(outcome: Resolved) -> str:
    """#packages for a lock; else the first line of the explanation that says something."""
    if isinstance(outcome, Lock):
        return f"{len(outcome.pinned())} packages"
    text = outcome.explanation if isinstance(outcome, Unresolvable) else str(outcome)
    return first_line(text)


def first_line(text: str, limit: int = 200) -> str:
    # uv opens with "error: No solution found when resolving dependencies" (or "× No solution ...");
    # the
    # reason follows ("cause: Because unsloth==... depends on ...").
    for raw in text.splitlines():
        line = re.sub(r"^(error|cause|hint):\s*", "", raw.strip().lstrip("×╰─▶│ ").strip())
        if line and not line.startswith("No solution found"):
            # "depends on one of:" + a list: name the requirement it clashes with
            if line.endswith(":"):
                clash = next((ln.strip() for ln in text.splitlines() if "you require" in ln), "")
                line = f"{line} … {clash}" if clash else line
            return line if len(line) <= limit else line[:limit] + "…"
    return " ".join(text.split())[:limit]


def format_table(cells: Sequence[Cell], stage: StageResult) -> str:
    rows = [(cell.id, status_of(stage.results[cell.id]),
             detail_of(stage.results[cell.id])) for cell in cells]
    width_id = max([len("cell")] + [len(r[0]) for r in rows])
    width_status = max([len("status")] + [len(r[1]) for r in rows])
    lines = [f"{'cell':<{width_id}}  {'status':<{width_status}}  packages / explanation",
             f"{'-' * width_id}  {'-' * width_status}  {'-' * 24}"]
    lines += [f"{cid:<{width_id}}  {status:<{width_status}}  {detail}" for cid, status,
              detail in rows]
    counts = stage.manifest()
    lines.append(f"{len(rows)} cell{'s' if len(rows) != 1 else ''}: {counts['resolved']} "
                 f"resolved, {counts['unresolvable']} unresolvable, {counts['infra']} infra; "
                 f"{stage.wall_s:.1f} s wall, {stage.workers} in parallel")
    return "\n".join(lines)
