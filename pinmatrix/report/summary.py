"""Merge a run folder (docs/CONTRACTS.md §8) into the summary dict written to `summary.json`.

A pure function of the files in the folder: outcomes/, cells/, run.json. Results are validated and
their signatures re-classified with the current catalogue (pinmatrix.results); damaged files are
listed apart and never counted as data.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinmatrix.cell import version_key
from pinmatrix.fsio import (
    Refused,
    file_kind,
    first_line,
    inside,
    load_json,
    plain_name,
    real_file,
    real_file_under,
    real_json_files,
)
from pinmatrix.outcome import Outcome, load_outcome
from pinmatrix.report.causes import group as group_causes
from pinmatrix.report.claims import claims_section
from pinmatrix.report.exaone import exaone35_section
from pinmatrix.report.gpus import timeline
from pinmatrix.report.remote_code import report_section
from pinmatrix.results import CellResult, Damaged, describe_signature, load_result
from pinmatrix.status import cell_status, judged_on, not_judged, verdict_text, with_recorded_basis
from probes import registry

VERDICT_WORDS = {
    "works": ("works", "work"),
    "partial": ("partial", "partial"),
    "broken": ("broken", "broken"),
    "unresolvable": ("unresolvable", "unresolvable"),
    "infra": ("infra", "infra"),
}
TOKENS_KEYS = ("tokens_per_s", "tokens_per_sec", "tok_per_s", "tokens_s")
PEAK_GIB_KEYS = ("peak_mem_gib", "peak_memory_gib", "peak_gib")
PEAK_BYTES_KEYS = ("peak_mem_bytes", "peak_memory_bytes", "max_memory_allocated")


@dataclass
class CellRow:
    cell_id: str
    pins: dict[str, str]
    status: str
    outcome: Outcome | None = None
    result: CellResult | None = None
    reason: str | None = None
    signature: str | None = None
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # judged on (docs/CONTRACTS.md §3): the host, the routes it could exercise, and what the cell
    # installed or asked to measure but never exercised (pinmatrix/status.py not_judged)
    judged_on: dict[str, Any] | None = None
    not_judged: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """The status with what it does not claim: `works (CPU: unsloth, speed not judged)`."""
        host = self.judged_on.get("host") if self.judged_on else None
        return verdict_text(self.status, self.not_judged, host)


# A run folder handed to `report --run` may come from elsewhere: what is not a regular
# file (a symlink, above all, which could point anywhere on this host) is listed as damaged and
# never read.
NOT_FOLLOWED = "not a regular file: a symbolic link in a run folder is never followed"


def not_followed(path: Path) -> str:
    """Why a refused entry of a run folder was not read: a link is never followed, a FIFO or a
    device never opened (it could block the reader or never end)."""
    kind = file_kind(path)
    return NOT_FOLLOWED if kind == "a symlink" else f"not a regular file ({kind}): never opened"


def _json_files(folder: Path, damaged: list[Damaged]) -> list[Path]:
    taken, refused = real_json_files(folder)
    damaged.extend(Damaged(path, not_followed(path)) for path in refused)
    return taken


def merge(run_dir: Path) -> dict[str, Any]:
    """The summary of one run folder, as the JSON-able dict written to summary.json."""
    run_dir = Path(run_dir)
    damaged: list[Damaged] = []
    manifest = run_dir / "run.json"
    run_meta = None
    if real_file(manifest):
        try:
            run_meta = load_json(manifest)
        except Refused as exc:
            damaged.append(Damaged(manifest, str(exc)))
        if run_meta is not None and not isinstance(run_meta, dict):
            # a run.json that is there but unreadable is said, not taken for an empty run
            damaged.append(Damaged(manifest, "not a readable JSON object"))
    elif os.path.lexists(manifest):
        damaged.append(Damaged(manifest, not_followed(manifest)))
    run_meta = run_meta if isinstance(run_meta, dict) else {}
    outcomes: dict[str, Outcome] = {}
    for path in _json_files(run_dir / "outcomes", damaged):
        loaded = load_outcome(path)
        if isinstance(loaded, str):
            damaged.append(Damaged(path, loaded))
            continue
        for key in ("result", "partial"):  # paths from a record stay inside the run folder
            value = getattr(loaded, key)
            if value is not None and not (inside(value) and (
                    real_file_under(run_dir, value) or not os.path.lexists(run_dir / value))):
                damaged.append(Damaged(path, f"{key} {value!r} is not a file inside the run "
                                             "folder (a link, `..` or an absolute path)"))
                setattr(loaded, key, None)
        outcomes[loaded.cell] = loaded
    results: dict[str, CellResult] = {}
    for path in _json_files(run_dir / "cells", damaged):
        result = load_result(path)
        if isinstance(result, Damaged):
            damaged.append(result)
            continue
        if not plain_name(result.cell_id):  # a cell id names files: `../x` is not one
            damaged.append(Damaged(path, "cell.id is not a cell id (a plain file name)"))
            continue
        expected = outcomes.get(result.cell_id)
        if expected is not None and expected.hash and result.data["cell"]["hash"] != expected.hash:
            found = result.data["cell"]["hash"][:12]
            damaged.append(
                Damaged(
                    path,
                    f"result is for content hash {found}…, the run expected {expected.hash[:12]}…",
                )
            )
            continue
        results[result.cell_id] = result

    rows = [
        _row(cid, outcomes.get(cid), results.get(cid))
        for cid in sorted(set(outcomes) | set(results))
    ]
    columns = _columns(rows)
    failures = _failures(rows)
    summary: dict[str, Any] = {
        "run": run_meta,
        "run_dir": str(run_dir),
        "verdict": verdict_line(rows),
        "counts": dict(Counter(r.status for r in rows)),
        "checks": columns,
        "cells": [_row_json(r) for r in rows],
        "pivot": _pivot(rows),
        "failures": failures,
        "unresolvable": [
            {"cell": r.cell_id, "explanation": r.reason} for r in rows if r.status == "unresolvable"
        ],
        "infra": _infra(rows),
        # one cause, said once (pinmatrix/report/causes.py)
        "causes": group_causes(_infra(rows)),
        "damaged": [{"path": _rel(d.path, run_dir), "why": d.why} for d in damaged],
        "speed": _speed(rows),
        "timing": _timing(rows),
        "remote_code": _remote_code(run_dir),
        "exaone35": exaone35_section(rows),
    }

    summary["claims"] = claims_section(summary)

    summary["gpu_timeline"] = timeline(outcomes.values())
    return summary


# --- rows ----------------------------------------------------------------------------------------


def _row(cell_id: str, outcome: Outcome | None, result: CellResult | None) -> CellRow:
    pins = dict(outcome.pins) if outcome else dict(result.data["cell"]["pins"]) if result else {}
    # a remote-code pass with no recorded basis is not judged (status.with_recorded_basis)
    listed = with_recorded_basis(result.checks) if result else None
    checks = {c["name"]: c for c in listed} if listed is not None else {}
    if outcome is not None and outcome.status is not None:
        # the host already knew: unresolvable, or infra (build, timeout, drift)
        status = outcome.status
    else:
        status = cell_status(listed)
    reason = outcome.reason if outcome else None
    if status == "infra" and not reason:
        if result is None:
            reason = "no valid result"
        else:
            core_infra = [c for c in result.checks if c["status"] == "infra"]
            reason = (
                "; ".join(f"{c['name']}: {c.get('reason') or 'infra'}" for c in core_infra)
                or "no check ran"
            )
    row = CellRow(
        cell_id,
        pins,
        status,
        outcome,
        result,
        reason,
        outcome.signature if outcome else None,
        checks,
    )
    if result is not None and status != "unresolvable":
        row.judged_on = judged_on(result.data.get("environment"))
        row.not_judged = not_judged(checks, pins)
    return row


def _row_json(row: CellRow) -> dict[str, Any]:
    env = row.result.data["environment"] if row.result else {}
    return {
        "id": row.cell_id,
        "status": row.status,
        # the status with what it does not claim, as every format prints it
        "verdict": row.verdict,
        "judged_on": row.judged_on,
        "not_judged": row.not_judged,
        "pins": row.pins,
        "hash": (row.outcome.hash if row.outcome else None)
        or (row.result.data["cell"]["hash"] if row.result else None),
        "runner": row.outcome.runner
        if row.outcome
        else (row.result.data["cell"].get("runner") if row.result else None),
        "reason": row.reason,
        "signature": row.signature,
        "reused_from": row.result.data["cell"].get("reused_from") if row.result else None,
        "result": row.outcome.result
        if row.outcome and row.result
        else (f"cells/{row.result.path.name}" if row.result else None),
        "environment": {
            k: env.get(k) for k in ("python", "device", "torch", "cuda", "gpu", "driver")
        }
        if env
        else None,
        "checks": {
            name: {
                "status": c["status"],
                "signature": (c.get("error") or {}).get("signature"),
                "reason": c.get("reason"),
                # written by the probe since results record it; older results: the registry's
                "group": c.get("group") or registry.group_of(name),
                "role": registry.role_of(name),
            }
            for name, c in row.checks.items()
        },
    }


def verdict_line(rows: list[CellRow]) -> str:
    counts = Counter(r.status for r in rows)
    n = len(rows)
    parts = []
    for status in ("works", "partial", "broken", "unresolvable", "infra"):
        if counts[status]:
            word = VERDICT_WORDS[status][0 if counts[status] == 1 else 1]
            text = f"{counts[status]} {word}"
            if status == "broken":
                sigs = {
                    (c.get("error") or {}).get("signature")
                    for r in rows
                    if r.status == "broken"
                    for c in r.checks.values()
                    if c["status"] == "fail"
                }
                sigs.discard(None)
                text += f" ({len(sigs)} signature{'s' if len(sigs) != 1 else ''})"
            parts.append(text)
    line = f"{n} cell{'s' if n != 1 else ''}: " + (", ".join(parts) if parts else "nothing ran")
    qualified = [r for r in rows if r.verdict != r.status]  # cells that claim something works
    unjudged = Counter(str(item["what"]) for r in qualified for item in r.not_judged)
    if unjudged:
        hosts = sorted({str(r.judged_on["host"]) for r in qualified if r.judged_on})
        line += (f"; not judged in this run ({', '.join(hosts)}): "
                 + ", ".join(f"{what} in {k} cell{'s' if k != 1 else ''}"
                             for what, k in unjudged.items()))
    return line


def _columns(rows: Iterable[CellRow]) -> list[str]:
    seen = {name for r in rows for name in r.checks}
    return sorted(seen, key=registry.order_key)  # the probes' registry order, unknown names last


def _failures(rows: list[CellRow]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    known: dict[str, bool] = {}
    for row in rows:
        for check in row.checks.values():
            if check["status"] != "fail":
                continue
            error = check.get("error") or {}
            sig = error.get("signature") or "unclassified"
            known[sig] = known.get(sig, False) or bool(error.get("known"))
            groups[sig].append(
                {
                    "cell": row.cell_id,
                    "check": check["name"],
                    "type": error.get("type"),
                    "message": first_line(error.get("message")),
                }
            )
    out = []
    for sig, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        entry = describe_signature(sig) or {}
        out.append(
            {
                "signature": sig,
                "known": bool(entry) or known[sig],
                "count": len(items),
                "cause": entry.get("cause"),
                "affected": entry.get("affected"),
                "fix": entry.get("fix"),
                "link": entry.get("link"),
                "checks": items,
            }
        )
    return out


def _infra(rows: list[CellRow]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row.status == "infra":
            out.append(
                {
                    "cell": row.cell_id,
                    "check": None,
                    "reason": row.reason,
                    "signature": row.signature,
                }
            )
        for check in row.checks.values():
            if check["status"] == "infra":
                out.append(
                    {
                        "cell": row.cell_id,
                        "check": check["name"],
                        "reason": check.get("reason"),
                        "signature": (check.get("error") or {}).get("signature"),
                    }
                )
    return out


def _pivot(rows: list[CellRow]) -> list[dict[str, Any]]:
    """transformers × unsloth, one table per torch line (python + torch)."""
    lines: dict[tuple[str, str], list[CellRow]] = defaultdict(list)
    for row in rows:
        lines[(row.pins.get("python", "?"), row.pins.get("torch", "?"))].append(row)
    tables = []
    for (python, torch), members in sorted(
        lines.items(), key=lambda kv: (version_key(kv[0][0]), version_key(kv[0][1]))
    ):
        tfs = sorted({r.pins.get("transformers", "?") for r in members}, key=version_key)
        uns = sorted({r.pins.get("unsloth", "none") for r in members}, key=version_key)
        grid: dict[str, dict[str, dict[str, int]]] = {tf: {u: {} for u in uns} for tf in tfs}
        for r in members:
            # keyed by the verdict: a cell whose unsloth never ran is not counted as working
            slot = grid[r.pins.get("transformers", "?")][r.pins.get("unsloth", "none")]
            slot[r.verdict] = slot.get(r.verdict, 0) + 1
        tables.append(
            {"python": python, "torch": torch, "transformers": tfs, "unsloth": uns, "grid": grid}
        )
    return tables


def _number(evidence: dict[str, Any], key: str) -> float | None:
    value = evidence.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _speed(rows: list[CellRow]) -> list[dict[str, Any]]:
    """One row per passed throughput check. Its speedup is against the HF+PEFT sdpa check of the
    same model family and configuration (probes/registry.py speed_baselines): for EXAONE 3.5 the
    remote code, or where that did not run (the pinned revision's remote code fails on this
    transformers) the llamafied model, and the row says which; for EXAONE 4 its own sdpa run."""
    out = []
    for row in rows:
        for name, check in row.checks.items():
            if not name.startswith("throughput.") or check["status"] not in ("pass", "flaky"):
                continue
            tps = _tokens(check)
            if tps is None:
                continue
            baseline, sdpa = None, None
            for candidate in registry.speed_baselines(name) or ("throughput.sdpa",
                                                                 "throughput.sdpa-llamafied"):
                sdpa = _tokens(row.checks.get(candidate))
                if sdpa:
                    baseline = candidate
                    break
            evidence = check.get("evidence") or {}
            shape = (
                f"{evidence['batch']}×{evidence['seq']}"
                if isinstance(evidence.get("batch"), int) and isinstance(evidence.get("seq"), int)
                else None
            )
            steps = evidence.get("step_times_s")
            raw_jit = evidence.get("fa4_jit")
            jit: dict[str, Any] = raw_jit if isinstance(raw_jit, dict) else {}
            out.append(
                {
                    "cell": row.cell_id,
                    "stack": name.split(".", 1)[1],
                    "tokens_per_s": tps,
                    "speedup_vs_sdpa": round(tps / sdpa, 3) if sdpa else None,
                    "baseline": baseline.split(".", 1)[1] if baseline else None,
                    "peak_mem_gib": _peak_gib(check),
                    "batch_x_seq": shape,
                    "mfu": _number(evidence, "mfu"),
                    "gpu": evidence.get("gpu") if isinstance(evidence.get("gpu"), str) else None,
                    # the median is tokens_per_s; the spread is the slowest and fastest timed step
                    "steps_timed": len(steps) if isinstance(steps, list) else None,
                    "tokens_per_s_min": _number(evidence, "tokens_per_s_min"),
                    "tokens_per_s_max": _number(evidence, "tokens_per_s_max"),
                    "step_time_rel_spread": _number(evidence, "step_time_rel_spread"),
                    "first_step_s": _number(evidence, "first_step_s"),
                    "jit_compile_s": _number(jit, "jit_compile_s"),
                }
            )
    return out


def _timing(rows: list[CellRow]) -> list[dict[str, Any]]:
    """Where each probe's time went: the compat stage (every check but throughput, with the probe's
    start and imports) against the throughput measurements, read with the compile cache it ran with.
    Only cells whose probe ran in this run (a result reused from the cache took no time here)."""
    out = []
    for row in rows:
        run_s = ((row.outcome.timings if row.outcome else None) or {}).get("run_s")
        if (
            row.result is None
            or not isinstance(run_s, (int, float))
            or run_s <= 0
            or row.result.data["cell"].get("reused_from")
        ):
            continue
        durations = {name: float(c.get("duration_s") or 0.0) for name, c in row.checks.items()}
        throughput_s = sum(d for name, d in durations.items() if name.startswith("throughput."))
        compat = {name: d for name, d in durations.items() if not name.startswith("throughput.")}
        slowest = sorted(compat.items(), key=lambda kv: -kv[1])[:3]
        out.append(
            {
                "cell": row.cell_id,
                "probe_s": round(float(run_s), 1),
                "compat_s": round(max(float(run_s) - throughput_s, 0.0), 1),
                "throughput_s": round(throughput_s, 1),
                "compile_cache": row.result.data["environment"].get("compile_cache"),
                "slowest_compat_checks": [{"check": n, "s": round(d, 1)} for n, d in slowest],
            }
        )
    return out


def _tokens(check: dict[str, Any] | None) -> float | None:
    if not check or check["status"] not in ("pass", "flaky"):
        return None
    evidence = check.get("evidence") or {}
    for key in TOKENS_KEYS:
        if isinstance(evidence.get(key), (int, float)):
            return float(evidence[key])
    return None


def _peak_gib(check: dict[str, Any]) -> float | None:
    evidence = check.get("evidence") or {}
    for key in PEAK_GIB_KEYS:
        if isinstance(evidence.get(key), (int, float)):
            return round(float(evidence[key]), 2)
    for key in PEAK_BYTES_KEYS:
        if isinstance(evidence.get(key), (int, float)):
            return round(float(evidence[key]) / 2**30, 2)
    return None


# --- helpers -------------------------------------------------------------------------------------


def _remote_code(run_dir: Path) -> dict[str, Any]:
    """Loaded remote-code files, unpinned revisions and changed hashes
    (pinmatrix/report/remote_code.py)."""

    return report_section(run_dir)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
