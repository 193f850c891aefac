"""`nox -s bench` (bisect part) / `python tools/bench_bisect.py`: the wall time of a warm bisect.

Bisects transformers 4.57.6..5.17.0 on the CPU check `exaone3.5.remote-code` (the EXAONE 3.5 remote
code's break from 5.0.0, tests/data/matrices/exaone35-verdicts.yaml) twice in one reports folder:
the
first run probes (cold: about ceil(log2 n) + 1 cells), the second finds every step in the result
cache
(warm). Writes reports/bench/bisect-<UTC>.json with both wall times, the probes run and the answer.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MATRIX = REPO_ROOT / "tests" / "data" / "matrices" / "exaone35-verdicts.yaml"


def _run(reports: Path, venvs: Path, span: str, check: str) -> tuple[float, dict[str, Any]]:
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pinmatrix",
            "bisect",
            "transformers",
            span,
            "--check",
            check,
            "--matrix",
            str(MATRIX),
            "--runner",
            "venv",
            "--cpu",
            "--no-flaky-rerun",
            "--reports",
            str(reports),
            "--venv-dir",
            str(venvs),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"bisect failed (exit {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    # the bisect's own folder, not its steps' run folders (`…-bisect-transformers-<release>`)
    folder = sorted(p for p in reports.iterdir()
                    if re.fullmatch(r".*-bisect-transformers(\.\d+)?", p.name))[-1]
    return wall, json.loads((folder / "bisect.json").read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench_bisect.py", description=__doc__)
    parser.add_argument(
        "--work", type=Path, default=REPO_ROOT / "reports" / "bench" / "bisect-work"
    )
    parser.add_argument("--range", default="4.57.6..5.17.0")
    parser.add_argument("--check", default="exaone3.5.remote-code")
    args = parser.parse_args(argv)
    reports, venvs = args.work / "reports", args.work / "venvs"
    cold_s, cold = _run(reports, venvs, args.range, args.check)
    warm_s, warm = _run(reports, venvs, args.range, args.check)
    out = {
        "machine": {"node": platform.node(), "python": platform.python_version()},
        "range": args.range,
        "check": args.check,
        "releases": len(cold["releases_in_range"]),
        "first_bad": cold.get("first_bad"),
        "probes_run": cold.get("probes_run"),
        "judgements": cold.get("judgements"),
        "warm_probes_run": warm.get("probes_run"),
        "first_wall_s": round(cold_s, 1),
        "warm_wall_s": round(warm_s, 1),
        "warm_steps_reused": sum(1 for s in warm["steps"].values() if s.get("reused_from")),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = REPO_ROOT / "reports" / "bench" / f"bisect-{stamp}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(
        f"bisect {args.range} on {args.check}: first bad {out['first_bad']}, "
        f"{out['probes_run']} probes for {out['releases']} releases; "
        f"first run {out['first_wall_s']} s, warm {out['warm_wall_s']} s "
        f"({out['warm_steps_reused']} steps from the cache) -> {target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
