"""`nox -s bench` (scale part) / `python tools/bench_scale.py`: throughput numbers.

- cells per hour on this host: the matrix run with every cell forced (`--rerun`), warm venvs/images;
- the time to rerun the unchanged matrix: every cell reused from the result cache (goal: about 0 s
  of build and probe; the rest is loading the matrix and the resolution cache);
- rebuild time of a cell that differs from a built one only in the transformers pin (docker runner,
  goal ≤ 60 s warm: the torch layer is shared). The variant's transformers version is one no cell of
  the matrix uses, so its layer is new (BuildKit may still hold it from an earlier bench run: said
  in the output);
- scheduler overhead per cell: the scheduler with tasks that do nothing.

Writes reports/bench/scale-<UTC>.json and prints the numbers with the machine they were taken on.
(tools/bench.py, the resolve timings, is a separate module by design: one concern each.)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.containers.engine import find_engine
from pinmatrix.fsio import write_json_atomic
from pinmatrix.resolve.uv import resolve
from pinmatrix.run.options import RunOptions
from pinmatrix.run.pipeline import load_cells, run_matrix
from pinmatrix.run.scheduler import measure_overhead
from pinmatrix.runners.docker import DockerRunner
from pinmatrix.sources import PackageSources

# This checkout (tools/ is in its root), wherever nox installed the harness.
REPO_ROOT = Path(__file__).resolve().parents[1]

CI_MATRIX = REPO_ROOT / "tests" / "data" / "matrices" / "ci.yaml"


def machine() -> dict[str, Any]:
    mem = ""
    with contextlib.suppress(OSError, StopIteration):
        mem = next(
            ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
        )
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "memory": mem.split(":")[-1].strip(),
            "python": platform.python_version()}


def bench_matrix(matrix: Path, runner: str, scratch: Path, venv_dir: Path,
                 cpu_jobs: int) -> dict[str, Any]:
    opts = RunOptions(matrix_path=matrix, runner=runner, cpu=True, reports_dir=scratch / "reports",
                      sources=PackageSources.from_env(), venv_dir=venv_dir, rerun=[""],
                      cpu_jobs=cpu_jobs,
                      live_progress=False)
    quiet = lambda line: None  # noqa: E731
    # builds venvs/images once: "warm"
    run_matrix(dataclasses.replace(opts, label="warmup"), echo=quiet)
    started = time.monotonic()
    forced = run_matrix(opts, echo=quiet)
    forced_s = time.monotonic() - started
    started = time.monotonic()
    again = run_matrix(dataclasses.replace(opts, rerun=None), echo=quiet)
    again_s = time.monotonic() - started
    work = sum(o.timings.get("prepare_s", 0) + o.timings.get("run_s", 0) for o in again.outcomes)
    n = len(forced.outcomes)
    return {"cells": n, "runner": runner, "cpu_jobs": cpu_jobs, "forced_run_s": round(forced_s, 1),
            "cells_per_hour": round(3600 * n / forced_s, 1) if forced_s else None,
            "verdict": forced.verdict,
            "unchanged_rerun_s": round(again_s, 2),
            "unchanged_rerun_build_and_probe_s": round(work, 2),
            "unchanged_rerun_reused": sum(1 for o in again.outcomes if o.reused_from)}


def bench_rebuild(matrix: Path, scratch: Path, transformers: str) -> dict[str, Any]:
    """Build the matrix's first cell's image (or find it built), then time the build of the same
    cell with only the transformers pin changed."""

    engine = find_engine()
    if engine is None:
        return {"skipped": "no Docker engine"}
    sources = PackageSources.from_env()
    _, cells = load_cells(matrix, cpu=True)
    base_cell = cells[0]
    variant = dataclasses.replace(base_cell, pins={**base_cell.pins, "transformers": transformers})
    kwargs = (
        {"base_image": str(base_cell.pins["base_image"])}
        if base_cell.pins.get("base_image")
        else {}
    )
    runner = DockerRunner(engine, sources, scratch / "docker", cpu_only=True, **kwargs)
    out: dict[str, Any] = {"base_cell": base_cell.id, "variant_cell": variant.id}
    locks = {}
    for name, cell in (("base", base_cell), ("variant", variant)):
        lock_dir = scratch / "locks" / name
        lock_dir.mkdir(parents=True, exist_ok=True)
        locks[name] = resolve(cell, sources, lock_dir)
        if not hasattr(locks[name], "full_lock"):
            return {**out, "skipped": f"{cell.id} did not resolve: {locks[name]}"}
    started = time.monotonic()
    runner.prepare(base_cell, locks["base"])
    out["base_prepare_s"] = round(time.monotonic() - started, 1)
    tag = runner.tag_for(locks["variant"])
    existed = runner.image_exists(tag)
    if existed:  # an earlier bench built it: remove the image so the build really runs
        subprocess.run(engine.cmd("image", "rm", "-f", tag), capture_output=True, env=engine.env())
    started = time.monotonic()
    prepared = runner.prepare(variant, locks["variant"])
    out["variant_rebuild_s"] = round(time.monotonic() - started, 1)
    out["variant_reused_image"] = bool(prepared.reused)
    out["variant_built_before"] = existed
    out["goal_s"] = 60
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/bench_scale.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", type=Path, default=CI_MATRIX,
                        help="default: the CI matrix (CPU)")
    parser.add_argument("--runner", default="venv", choices=("venv", "docker"))
    parser.add_argument("--cpu-jobs", type=int, default=1)
    parser.add_argument("--rebuild-transformers", default="4.57.5",
                        help="the transformers pin of the rebuild variant (default 4.57.5)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("matrix", "rebuild", "overhead"))
    parser.add_argument("--venv-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "pinmatrix-bench-venvs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"machine": machine(), "matrix": str(args.matrix),
                              "taken": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="pinmatrix-bench-scale-") as tmp:
        scratch = Path(tmp)
        if "overhead" not in args.skip:
            report["scheduler_overhead_ms_per_cell"] = round(1000 * measure_overhead(), 3)
            print(f"scheduler overhead: {report['scheduler_overhead_ms_per_cell']} ms per cell",
                  flush=True)
        if "matrix" not in args.skip:
            report["matrix_run"] = bench_matrix(args.matrix, args.runner, scratch, args.venv_dir,
                                                args.cpu_jobs)
            print(f"matrix: {json.dumps(report['matrix_run'])}", flush=True)
        if "rebuild" not in args.skip:
            report["rebuild"] = bench_rebuild(args.matrix, scratch, args.rebuild_transformers)
            print(f"rebuild: {json.dumps(report['rebuild'])}", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = write_json_atomic(args.out / f"scale-{stamp}.json", report)
    print(f"machine: {json.dumps(report['machine'])}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
