"""`nox -s bench` / `python tools/bench_route.py`: the CPU route, cold, timed by stage.

The route a new user takes on a CPU host: `python -m pinmatrix matrix --runner venv --cpu` on the
default matrix, with every cache empty (a fresh folder each for uv's cache, pinmatrix's resolution
cache, the venvs and the compile caches), so every byte is downloaded and every venv built. Where
the time goes, per stage:

- resolve: the resolve stage's wall time (every cell at once, run.json `resolve_stage`);
- venv, torch layer, the rest: per cell, `uv venv`, then `uv pip install` of torch.lock (torch and
  its CUDA layer: the first cell downloads it, later cells link it from uv's cache) and of
  requirements.lock (outcome timings `venv_s`, `install_torch_s`, `install_stack_s`);
- bytecode: the compile at prepare time, where a run still does one (`bytecode_s`);
- probe: per cell, the probe's run (`run_s`);
- downloads: the size of uv's cache afterwards.

Cells build two at a time and probe one at a time, overlapping, so the per-stage sums exceed the
wall time; both are written. The machine's load average is recorded at the start and the end: on a
shared host the numbers are only as good as the load they were taken under.

`--from-run DIR` summarises a run folder made earlier (any cache state) instead of running one.
Writes reports/bench/route-<UTC>.json and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
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

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("venv_s", "install_torch_s", "install_stack_s", "bytecode_s", "prepare_s", "run_s")
WORDS = {"venv_s": "venv", "install_torch_s": "torch layer (download + install)",
         "install_stack_s": "the rest (download + install)", "bytecode_s": "bytecode compile",
         "prepare_s": "prepare (all of the above)", "run_s": "probe"}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def summarise(run_dir: Path) -> dict[str, Any]:
    """Stage sums and per-cell timings from a run folder's outcomes and run.json."""
    manifest = json.loads((run_dir / "run.json").read_text())
    cells = []
    for path in sorted((run_dir / "outcomes").glob("*.json")):
        outcome = json.loads(path.read_text())
        cells.append({"cell": outcome["cell"], "status": outcome.get("status") or "judged",
                      "timings": outcome.get("timings") or {}})
    sums = {stage: round(sum(c["timings"].get(stage, 0.0) for c in cells), 1)
            for stage in STAGES}
    stage = manifest.get("resolve_stage") or {}
    return {"run": str(run_dir), "cells": cells, "sums_s": sums,
            "resolve_stage_wall_s": stage.get("wall_s"),
            "started": manifest.get("started"), "finished": manifest.get("finished")}


def run_cold(matrix: Path, selectors: Sequence[str], extra: Sequence[str],
             scratch: Path) -> tuple[Path, float, int]:
    """The route with every cache empty; returns its run folder, wall seconds and uv cache bytes."""
    env = {**os.environ,
           "UV_CACHE_DIR": str(scratch / "uv"), "PINMATRIX_CACHE_DIR": str(scratch / "pinmatrix"),
           "PINMATRIX_VENV_DIR": str(scratch / "venvs"),
           "PINMATRIX_COMPILE_CACHE_DIR": str(scratch / "compile")}
    reports = scratch / "reports"
    cmd = [sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(matrix), "--runner",
           "venv", "--cpu", "--reports", str(reports), *extra, *selectors]
    print("$ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT)
    wall = time.monotonic() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"bench_route: the run failed (exit {proc.returncode})")
    return (reports / "latest").resolve(), wall, _du(scratch / "uv")


def format_table(report: dict[str, Any]) -> str:
    lines = [f"CPU route: {len(report['cells'])} cells, wall "
             + (f"{report['wall_s']:.0f} s ({report['wall_s'] / 60:.1f} min)"
                if report.get("wall_s") else "not measured here")]
    if report.get("resolve_stage_wall_s") is not None:
        lines.append(f"  {'resolve stage (wall)':<40} {report['resolve_stage_wall_s']:>7.0f} s")
    for stage in STAGES:
        lines.append(f"  {WORDS[stage] + ' (sum)':<40} {report['sums_s'][stage]:>7.0f} s")
    if report.get("downloads_bytes") is not None:
        lines.append(f"  {'downloads (uv cache afterwards)':<40} "
                     f"{report['downloads_bytes'] / 1e9:>7.1f} GB")
    if report.get("load"):
        lines.append(f"  load average at the start {report['load']['start']}, at the end "
                     f"{report['load']['end']} ({report['host']['cpus']} cores)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/bench_route.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("selectors", nargs="*", help="AXIS=VALUE or cell id (default: every cell)")
    parser.add_argument("--matrix", type=Path, default=REPO_ROOT / "matrix.yaml")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    parser.add_argument("--from-run", type=Path, help="summarise this run folder, run nothing")
    parser.add_argument("--venv-python", action="append", default=[],
                        help="VERSION=PATH, passed on to `pinmatrix matrix`")
    args = parser.parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    host = {"platform": platform.platform(), "cpus": os.cpu_count()}
    if args.from_run:
        report = {**summarise(args.from_run), "host": host, "taken": stamp}
    else:
        extra = [a for p in args.venv_python for a in ("--venv-python", p)]
        load_start = _load()
        with tempfile.TemporaryDirectory(prefix="pinmatrix-bench-route-") as tmp:
            run_dir, wall, downloads = run_cold(args.matrix, args.selectors, extra, Path(tmp))
            report = {**summarise(run_dir), "wall_s": round(wall, 1),
                      "downloads_bytes": downloads,
                      "load": {"start": load_start, "end": _load()}, "host": host,
                      "taken": stamp, "matrix": str(args.matrix)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"route-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
