"""`nox -s bench` / `python tools/bench.py`: how long the resolve stage takes, written down.

What the words mean here:
- cold (all): pinmatrix's resolution cache is empty AND uv's cache (HTTP responses, wheel metadata)
  is a fresh empty folder: a new machine; every byte of metadata comes from the index.
- cold (pinmatrix): pinmatrix's resolution cache is empty, uv's own cache is kept: uv still runs its
  solver for both steps (torch, then everything) but reuses the metadata it already downloaded.
- warm: pinmatrix's resolution cache holds the cell: no uv solve (the goal: at most 2 s per cell).
Per-cell numbers are measured one cell at a time; the stage numbers resolve every cell in parallel
(pinmatrix.resolve.stage), as `python -m pinmatrix matrix|resolve` do.

Writes reports/bench/resolve-<UTC>.json and prints a table.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.cell import Cell
from pinmatrix.fsio import write_json_atomic
from pinmatrix.resolve.stage import resolve_stage, status_of
from pinmatrix.resolve.uv import resolve, uv_version
from pinmatrix.run.pipeline import load_cells
from pinmatrix.sources import PackageSources

# This checkout (tools/ is in its root), wherever nox installed the harness.
REPO_ROOT = Path(__file__).resolve().parents[1]

GOAL_WARM_S = 2.0
MODES = ("cold_all", "cold_pinmatrix", "warm")


@contextmanager
def _uv_cache(folder: Path | None) -> Iterator[None]:
    """UV_CACHE_DIR set to `folder` for the uv processes started inside (None: leave uv's cache as
    it is)."""
    old = os.environ.get("UV_CACHE_DIR")
    if folder is not None:
        os.environ["UV_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if folder is not None:
            if old is None:
                os.environ.pop("UV_CACHE_DIR", None)
            else:
                os.environ["UV_CACHE_DIR"] = old


def _timed(fn) -> tuple[float, Any]:
    started = time.monotonic()
    value = fn()
    return time.monotonic() - started, value


def bench_cell(cell: Cell, sources: Any, scratch: Path, *, cold_all: bool = True) -> dict[str, Any]:
    """One cell: cold (all), cold (pinmatrix), warm, each from its own pinmatrix cache folder."""
    row: dict[str, Any] = {"cell": cell.id}
    if cold_all:
        with _uv_cache(Path(tempfile.mkdtemp(prefix="uv-", dir=scratch))):
            row["cold_all_s"], outcome = _timed(lambda: resolve(
                cell, sources, scratch / "locks-a" / cell.id,
                cache_dir=scratch / f"pm-a-{cell.id}"))
    cache = scratch / f"pm-b-{cell.id}"
    row["cold_pinmatrix_s"], outcome = _timed(lambda: resolve(cell, sources,
                                                              scratch / "locks-b" / cell.id,
                                                              cache_dir=cache))
    row["warm_s"], _ = _timed(lambda: resolve(cell, sources, scratch / "locks-c" / cell.id,
                                              cache_dir=cache))
    row["status"] = status_of(outcome)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def bench_stage(cells: Sequence[Cell], sources: Any, scratch: Path) -> dict[str, Any]:
    """The whole stage in parallel: pinmatrix cache empty (uv's kept), then warm."""
    cache = scratch / "pm-stage"
    cold = resolve_stage(cells, sources, scratch / "stage-cold", cache_dir=cache)
    warm = resolve_stage(cells, sources, scratch / "stage-warm", cache_dir=cache)
    return {"cells": len(cells), "workers": cold.workers, "cold_pinmatrix_s": round(cold.wall_s, 3),
            "warm_s": round(warm.wall_s, 3), "counts": cold.manifest()}


def run_bench(matrix_path: Path, selectors: Sequence[str], out_dir: Path, *, cold_all: bool = True,
              echo=print) -> Path:
    sources = PackageSources.from_env()
    _, cells = load_cells(matrix_path, selectors, sources=sources)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="pinmatrix-bench-") as tmp:
        scratch = Path(tmp)
        rows = []
        for index, cell in enumerate(cells, 1):
            echo(f"[{index}/{len(cells)}] {cell.id}")
            rows.append(bench_cell(cell, sources, scratch, cold_all=cold_all))
        stage = bench_stage(cells, sources, scratch)
    warm = [r["warm_s"] for r in rows]
    report = {
        "taken": stamp, "matrix": str(matrix_path), "selection": list(selectors),
        "definitions": {
            "cold_all_s": "pinmatrix resolution cache empty and a fresh empty UV_CACHE_DIR (new "
                          "machine)",
            "cold_pinmatrix_s": "pinmatrix resolution cache empty; uv's cache kept (uv solves "
                                "again from cached metadata)",
            "warm_s": "pinmatrix resolution cache holds the cell (no uv solve)",
            "stage": "every cell at once through pinmatrix.resolve.stage (threads), as the "
                     "pipeline runs it",
        },
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "cpus": os.cpu_count(),
                 "uv": uv_version()},
        "sources": sources.identity() if hasattr(sources, "identity") else None,
        "cells": rows,
        "stage": stage,
        "goal": {"warm_s_per_cell_max": GOAL_WARM_S, "worst_warm_s": max(warm) if warm else None,
                 "met": bool(warm) and max(warm) <= GOAL_WARM_S},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_json_atomic(out_dir / f"resolve-{stamp}.json", report)
    echo(format_table(report))
    echo(f"written: {path}")
    return path


def format_table(report: dict[str, Any]) -> str:
    rows = report["cells"]
    width = max([4] + [len(r["cell"]) for r in rows])
    lines = [f"{'cell':<{width}}  {'status':<12}  {'cold all':>9}  {'cold pm':>9}  {'warm':>7}",
             f"{'-' * width}  {'-' * 12}  {'-' * 9}  {'-' * 9}  {'-' * 7}"]
    for r in rows:
        cold_all = f"{r['cold_all_s']:.2f}s" if "cold_all_s" in r else "-"
        lines.append(f"{r['cell']:<{width}}  {r['status']:<12}  {cold_all:>9}  "
                     f"{r['cold_pinmatrix_s']:>8.2f}s  "
                     f"{r['warm_s']:>6.3f}s")
    for key in ("cold_all_s", "cold_pinmatrix_s", "warm_s"):
        values = [r[key] for r in rows if key in r]
        if values:
            lines.append(f"{key}: median {statistics.median(values):.3f}s, max {max(values):.3f}s")
    s = report["stage"]
    lines.append(f"whole stage ({s['cells']} cells, {s['workers']} in parallel): cold (pinmatrix) "
                 f"{s['cold_pinmatrix_s']:.2f}s, warm {s['warm_s']:.3f}s")
    g = report["goal"]
    lines.append(f"goal warm <= {g['warm_s_per_cell_max']:.0f}s per cell: "
                 f"{'met' if g['met'] else 'NOT met'} "
                 f"(worst {g['worst_warm_s']}s)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/bench.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("selectors", nargs="*", help="AXIS=VALUE or cell id (default: every cell)")
    parser.add_argument("--matrix", type=Path, default=REPO_ROOT / "matrix.yaml")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    parser.add_argument("--no-cold-all", action="store_true",
                        help="skip the fresh-uv-cache measurement (slowest)")
    args = parser.parse_args(argv)
    run_bench(args.matrix, args.selectors, args.out, cold_all=not args.no_cold_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
