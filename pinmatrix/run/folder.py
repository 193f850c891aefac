"""The run folder (docs/CONTRACTS.md §8): its id, reports/latest, the run.json manifest, and what a
full reports disk leaves behind."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import socket
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.cell import Cell
from pinmatrix.errors import HarnessError, UsageError
from pinmatrix.fsio import utc_now
from pinmatrix.run.options import RunOptions
from pinmatrix.sources import redact


def new_run_dir(reports_dir: Path, label: str | None = None) -> Path:
    """reports/<UTC time id>[-label]; a suffix keeps two runs in the same second apart."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = stamp + (f"-{label}" if label else "")
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = reports_dir / (base if n == 0 else f"{base}.{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise HarnessError(f"could not create a run folder under {reports_dir}")


def point_latest(reports_dir: Path, run_dir: Path) -> Path:
    """Swap reports/latest to the run atomically: a new symlink, renamed over the old one."""
    latest = Path(reports_dir) / "latest"
    tmp = Path(reports_dir) / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(run_dir).name)
    os.replace(tmp, latest)
    return latest


def run_manifest(opts: RunOptions, run_dir: Path, matrix: Any, cells: list[Cell],
                 runner: str) -> dict[str, Any]:
    matrix_bytes = Path(opts.matrix_path).read_bytes()
    axes = getattr(matrix, "axes", None)
    return {
        "run_id": run_dir.name,
        "matrix": str(opts.matrix_path),
        "matrix_sha256": hashlib.sha256(matrix_bytes).hexdigest(),
        "axes": jsonable(axes),
        # --snapshot run.json reproduces the axes
        "snapshot": jsonable(getattr(matrix, "snapshot", None) or {}),
        "selection": list(opts.selectors),
        "cells": [c.id for c in cells],
        # with each one's `unpinned:` reason, which the report's remote-code section states
        "models": [{**m.to_json(), "unpinned": m.unpinned}
                   for m in getattr(matrix, "models", ()) or ()],
        "runner": runner,
        "device": "cpu" if opts.cpu else "auto",
        "timeout_s": opts.timeout_s,
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "python": platform.python_version(), "argv": redacted_argv(sys.argv)},
        "started": utc_now(),
    }


def redacted_argv(argv: Sequence[str]) -> list[str]:
    """The command line without credentials (an index URL may hold a token): run.json is shared."""

    out = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            out.append(f"{flag}={redact(value)}")
        else:
            out.append(redact(arg) or arg)
    return out


def jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [jsonable(v) for v in value]
        return str(value)


def drop_orphan_result(run_dir: Path, cell_id: str) -> None:
    """The disk filled between copying a cell's result and writing its outcome: a result that no
    `done` outcome vouches for is not trusted (resume reruns the cell), so it goes, and frees its
    space."""
    outcome = run_dir / "outcomes" / f"{cell_id}.json"
    try:
        vouched = json.loads(outcome.read_text(encoding="utf-8")).get("stage") == "done"
    except (OSError, ValueError):
        vouched = False
    if not vouched:
        (run_dir / "cells" / f"{cell_id}.json").unlink(missing_ok=True)


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_reason(exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"the reports folder is full ({exc.strerror}{where})"


RUN_MARKERS = ("run.json", "outcomes", "cells")


def is_run_folder(path: Path) -> bool:
    """A folder `matrix`, `merge` or a shard wrote: it holds run.json, outcomes/ or cells/."""
    return any((Path(path) / marker).exists() for marker in RUN_MARKERS)


def check_run_folder(path: Path, flag: str) -> None:
    """UsageError unless `path` is a run folder; a folder of runs (reports/) names its newest run,
    so that `report --run reports/` never writes a "0 cells" summary into the reports folder."""

    path = Path(path)
    if is_run_folder(path):
        return
    runs = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.is_symlink()
                  and is_run_folder(p))
    if runs:
        raise UsageError(f"{flag} {path}: a folder of {len(runs)} runs, not a run; pass one, e.g. "
                         f"--run {path / runs[-1]}")
    raise UsageError(f"{flag} {path}: not a run folder (no run.json, outcomes/ or cells/)")
