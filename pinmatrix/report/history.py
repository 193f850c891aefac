"""reports/history.jsonl: one line per nightly run, and the run-to-run noise of a throughput figure
that the diff measures a change against (pinmatrix/report/diff.py)."""
from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pinmatrix.fsio import Refused, append_line, parse_json, read_bytes_bounded, strict_json

# k in k·stdev: ~99.7% of run-to-run noise stays inside if it is normal
NOISE_K = 3.0
MIN_SAMPLES = 3                # fewer repeats give no usable stdev
MAX_HISTORY_BYTES = 256 * 1024 * 1024  # a nightly line is ~10 KB: decades of nights
DEFAULT_REL_THRESHOLD = 0.10   # used when no repeated measurement exists: assumed, not measured


def read_history(path: Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, problems): a damaged line is reported and skipped, never fatal."""
    if path is None or not os.path.lexists(path):
        return [], []
    try:  # the trust rule (pinmatrix/fsio.py): a regular file, bounded
        text = read_bytes_bounded(Path(path), MAX_HISTORY_BYTES).decode("utf-8", "replace")
    except Refused as exc:
        return [], [f"{path}: {exc}"]
    records, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError as exc:
            problems.append(f"{path}:{number}: not JSON ({exc})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("cells"), dict):
            problems.append(f"{path}:{number}: not a history record (no cells object)")
            continue
        records.append(record)
    return records, problems


def history_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One line of history.jsonl: the run, its counts, and per cell its status, hash and
    throughput."""
    run = summary.get("run") or {}
    speed: dict[str, dict[str, float]] = {}
    for s in summary.get("speed") or []:
        speed.setdefault(s["cell"], {})[s["stack"]] = s["tokens_per_s"]
    return {
        "run": run.get("run_id") or Path(str(summary.get("run_dir", ""))).name,
        "started": run.get("started"),
        "verdict": summary.get("verdict"),
        "counts": dict(summary.get("counts") or {}),
        "cells": {c["id"]: {"status": c["status"], "hash": c.get("hash"),
                            "pins": c.get("pins") or {},
                            "throughput": speed.get(c["id"], {})}
                  for c in summary.get("cells") or []},
    }


def append_history(path: Path, record: Mapping[str, Any]) -> Path:
    # never through a link: a link (or FIFO) in its place is replaced by a new file (fsio)
    line = json.dumps(strict_json(record)[0], sort_keys=True, ensure_ascii=False, allow_nan=False)
    return append_line(Path(path), line)


def noise_threshold(history: Iterable[Mapping[str, Any]], cell_hash: str | None, stack: str
                    ) -> tuple[float, str]:
    """(relative threshold, how it was found) for one cell content hash and throughput stack."""
    samples = []
    if cell_hash:
        for record in history:
            cell = next((c for c in (record.get("cells") or {}).values()
                         if isinstance(c, dict) and c.get("hash") == cell_hash), None)
            value = ((cell or {}).get("throughput") or {}).get(stack)
            if isinstance(value, (int, float)) and value > 0:
                samples.append(float(value))
    if len(samples) >= MIN_SAMPLES:
        mean = statistics.fmean(samples)
        rel = NOISE_K * statistics.stdev(samples) / mean
        return rel, (f"measured: {NOISE_K:g}·stdev of {len(samples)} runs of the same cell hash "
                     f"= {100 * rel:.1f}%")
    return DEFAULT_REL_THRESHOLD, (f"assumed, not measured: {100 * DEFAULT_REL_THRESHOLD:.0f}% "
                                   f"(fewer than {MIN_SAMPLES} runs of the same cell hash in the "
                                   "history)")
