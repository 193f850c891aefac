"""What changed between two runs: new breakages, fixes, new and vanished cells, throughput moves.

Both sides are summaries as `pinmatrix.report.summary.merge` builds them (the previous one re-merged
from its folder when the folder still holds cells/ and outcomes/, so a catalogue update reaches it
too).

A *breakage* is a check that passed before and fails now, or a cell that worked (fully or partly)
before and is broken or unresolvable now. Infra is never a breakage: the machine failed, not the
stack; those are listed apart so a flaky runner never turns the nightly red.

Throughput noise: a change is reported only beyond a threshold. Where the history holds at least
`MIN_SAMPLES` measurements of the same cell content hash and stack, the threshold is
`NOISE_K` × their relative standard deviation (measured); else `DEFAULT_REL_THRESHOLD`, marked
"assumed, not measured".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pinmatrix.errors import PreviousRunError
from pinmatrix.fsio import load_json, write_json_atomic, write_text_atomic
from pinmatrix.report.history import DEFAULT_REL_THRESHOLD, MIN_SAMPLES, NOISE_K, noise_threshold
from pinmatrix.report.summary import merge

WORKING = ("works", "partial")
BROKEN = ("broken", "unresolvable")


# --- finding and loading the previous run --------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(
        (path / name).exists() for name in ("summary.json", "outcomes", "cells")
    )


# how deep a run is looked for: reports/<run>, artifact/<run>, artifact/reports/<run>. A bound, so
# that `--previous /` is an answer in a moment, not a walk of the whole disk
RUN_SEARCH_DEPTH = 3


def _folders_below(root: Path, depth: int) -> list[Path]:
    """The real folders (never a symlink) at most `depth` levels below root."""
    found: list[Path] = []
    level = [root]
    for _ in range(depth):
        below: list[Path] = []
        for folder in level:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            below += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        found += below
        level = below
    return found


def find_run_dir(path: Path) -> Path:
    """`path` itself when it is a run folder, else the newest run folder inside it (an unpacked
    artifact wraps the run in one more folder; a reports/ folder holds many)."""
    path = Path(path)
    if is_run_dir(path):
        return path
    if not path.is_dir():
        raise PreviousRunError(f"{path}: no such folder")
    candidates = sorted(
        (p for p in _folders_below(path, RUN_SEARCH_DEPTH)
         if is_run_dir(p) and p.name not in ("cells", "outcomes")),
        key=lambda p: (p.name, str(p)),
    )
    if not candidates:
        raise PreviousRunError(
            f"{path}: holds no run folder (no summary.json, outcomes/ or cells/)"
        )
    return candidates[-1]


def previous_run_in(reports_dir: Path, current: Path) -> Path | None:
    """The newest run folder in reports/ that is older than `current` (run ids sort by UTC time).
    Only folders with a summary.json count: a resolve-only run (`pinmatrix resolve`) has none."""
    reports_dir, current = Path(reports_dir), Path(current).resolve()
    earlier = (
        [
            p
            for p in Path(reports_dir).iterdir()
            if p.is_dir()
            and not p.is_symlink()
            and p.resolve() != current
            and (p / "summary.json").is_file()
            and p.name < current.name
        ]
        if Path(reports_dir).is_dir()
        else []
    )
    return max(earlier, key=lambda p: p.name) if earlier else None


def load_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary: re-merged from its files where they exist, else its summary.json."""

    run_dir = find_run_dir(run_dir)
    if (run_dir / "outcomes").is_dir() or (run_dir / "cells").is_dir():
        return merge(run_dir)
    try:
        data = load_json(run_dir / "summary.json")
    except (OSError, ValueError) as exc:
        raise PreviousRunError(f"{run_dir / 'summary.json'}: unreadable: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise PreviousRunError(
            f"{run_dir / 'summary.json'}: not a pinmatrix summary (no cells list)"
        )
    return data


# --- the diff ------------------------------------------------------------------------------------


def diff(
    previous: Mapping[str, Any],
    current: Mapping[str, Any],
    history: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    history = list(history)
    before = {c["id"]: c for c in previous.get("cells") or []}
    now = {c["id"]: c for c in current.get("cells") or []}
    breakages: list[dict[str, Any]] = []
    fixes: list[dict[str, Any]] = []
    infra: list[dict[str, Any]] = []
    status_changes: list[dict[str, Any]] = []
    judged_changes: list[dict[str, Any]] = []
    for cid in sorted(set(before) & set(now)):
        old, new = before[cid], now[cid]
        if old["status"] != new["status"]:
            status_changes.append({"cell": cid, "before": old["status"], "now": new["status"]})
        was_unjudged, is_unjudged = _unjudged(old), _unjudged(new)
        if was_unjudged != is_unjudged:
            # a verdict claims only what ran: say when what was (not) judged moved between runs
            judged_changes.append({"cell": cid, "before": _verdict(old), "now": _verdict(new),
                                   "now_judged": sorted(was_unjudged - is_unjudged),
                                   "no_longer_judged": sorted(is_unjudged - was_unjudged)})
        check_breaks, check_fixes = [], []
        old_checks, new_checks = old.get("checks") or {}, new.get("checks") or {}
        for name in sorted(set(old_checks) & set(new_checks)):
            was, is_ = old_checks[name]["status"], new_checks[name]["status"]
            if was == "pass" and is_ == "fail":
                check_breaks.append(
                    {
                        "cell": cid,
                        "check": name,
                        "before": was,
                        "now": is_,
                        "signature": new_checks[name].get("signature"),
                    }
                )
            elif was == "fail" and is_ == "pass":
                check_fixes.append(
                    {
                        "cell": cid,
                        "check": name,
                        "before": was,
                        "now": is_,
                        "signature_before": old_checks[name].get("signature"),
                    }
                )
            elif is_ == "infra" and was != "infra":
                infra.append(
                    {
                        "cell": cid,
                        "check": name,
                        "before": was,
                        "reason": new_checks[name].get("reason"),
                    }
                )
        breakages += check_breaks
        fixes += check_fixes
        if old["status"] in WORKING and new["status"] in BROKEN and not check_breaks:
            breakages.append(
                {
                    "cell": cid,
                    "check": None,
                    "before": old["status"],
                    "now": new["status"],
                    "signature": _cell_signature(new),
                }
            )
        elif old["status"] in BROKEN and new["status"] in WORKING and not check_fixes:
            fixes.append(
                {
                    "cell": cid,
                    "check": None,
                    "before": old["status"],
                    "now": new["status"],
                    "signature_before": _cell_signature(old),
                }
            )
        if new["status"] == "infra" and old["status"] != "infra":
            infra.append(
                {"cell": cid, "check": None, "before": old["status"], "reason": new.get("reason")}
            )
    throughput, thresholds = _throughput(previous, current, now, history)
    return {
        "previous_run": _run_id(previous),
        "current_run": _run_id(current),
        "new_breakages": breakages,
        "fixes": fixes,
        "new_cells": [
            {"cell": cid, "status": now[cid]["status"], "verdict": _verdict(now[cid])}
            for cid in sorted(set(now) - set(before))
        ],
        "vanished_cells": [
            {"cell": cid, "status": before[cid]["status"], "verdict": _verdict(before[cid])}
            for cid in sorted(set(before) - set(now))
        ],
        "status_changes": status_changes,
        "judged_changes": judged_changes,
        "infra": infra,
        "throughput": throughput,
        "throughput_thresholds": thresholds,
        "noise": {
            "k": NOISE_K,
            "min_samples": MIN_SAMPLES,
            "default_relative": DEFAULT_REL_THRESHOLD,
        },
    }


def _throughput(
    previous: Mapping[str, Any],
    current: Mapping[str, Any],
    now: Mapping[str, Any],
    history: list[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    old = {(s["cell"], s["stack"]): s["tokens_per_s"] for s in previous.get("speed") or []}
    changes, thresholds = [], []
    for s in current.get("speed") or []:
        key = (s["cell"], s["stack"])
        if key not in old or not old[key]:
            continue
        rel = (s["tokens_per_s"] - old[key]) / old[key]
        threshold, basis = noise_threshold(
            history, (now.get(s["cell"]) or {}).get("hash"), s["stack"]
        )
        entry = {
            "cell": s["cell"],
            "stack": s["stack"],
            "before": old[key],
            "now": s["tokens_per_s"],
            "change": round(rel, 4),
            "threshold": round(threshold, 4),
            "basis": basis,
        }
        thresholds.append(entry)
        if abs(rel) > threshold:
            changes.append(entry)
    return changes, thresholds


def _cell_signature(cell: Mapping[str, Any]) -> str | None:
    if cell["status"] == "unresolvable":
        return "unresolvable"
    for check in (cell.get("checks") or {}).values():
        if check["status"] == "fail" and check.get("signature"):
            return str(check["signature"])
    return cell.get("signature")


def _run_id(summary: Mapping[str, Any]) -> str:
    run = summary.get("run") or {}
    return str(run.get("run_id") or Path(str(summary.get("run_dir", "?"))).name)


def headline(d: Mapping[str, Any]) -> str:
    n = len(d["new_breakages"])
    parts = [
        f"{n} new breakage{'s' if n != 1 else ''}",
        f"{len(d['fixes'])} fixed",
        f"{len(d['new_cells'])} new cell{'s' if len(d['new_cells']) != 1 else ''}",
        f"{len(d['vanished_cells'])} vanished",
        f"{len(d['throughput'])} throughput change{'s' if len(d['throughput']) != 1 else ''}",
    ]
    if d["infra"]:
        parts.append(f"{len(d['infra'])} infra (not counted)")
    return f"since {d['previous_run']}: " + ", ".join(parts)


# --- markdown ------------------------------------------------------------------------------------


def _verdict(cell: Mapping[str, Any]) -> str:
    return str(cell.get("verdict") or cell["status"])


def _unjudged(cell: Mapping[str, Any]) -> set[str]:
    return {str(item["what"]) for item in cell.get("not_judged") or []}


def render_markdown(d: Mapping[str, Any], *, level: int = 1) -> str:
    h = "#" * level
    out = [f"{h} Changes since {d['previous_run']}", "", f"**{headline(d)}**", ""]

    def section(title: str, items: list[dict[str, Any]],
                line: Callable[[dict[str, Any]], str]) -> None:
        if items:
            out.extend([f"{h}# {title}", ""] + [line(i) for i in items] + [""])

    section(
        "New breakages",
        d["new_breakages"],
        lambda i: (
            f"- `{i['cell']}` {('`' + i['check'] + '`') if i['check'] else '(cell)'}: "
            f"{i['before']} → "
            f"{i['now']}" + (f" [`{i['signature']}`]" if i.get("signature") else "")
        ),
    )
    if d.get("bisects"):  # pinmatrix/bisect/nightly.py
        out += [
            f"{'#' * (level + 1)} First bad releases (bisected)",
            "",
            *render_bisect_lines(d["bisects"]),
            "",
        ]
    section(
        "Fixes",
        d["fixes"],
        lambda i: (
            f"- `{i['cell']}` {('`' + i['check'] + '`') if i['check'] else '(cell)'}: "
            f"{i['before']} → "
            f"{i['now']}"
            + (f" (was `{i['signature_before']}`)" if i.get("signature_before") else "")
        ),
    )
    section("New cells", d["new_cells"],
            lambda i: f"- `{i['cell']}`: {i.get('verdict') or i['status']}")
    section("Vanished cells", d["vanished_cells"],
            lambda i: f"- `{i['cell']}` (was {i.get('verdict') or i['status']})")
    section(
        "What the host judged changed",
        d.get("judged_changes") or [],
        lambda i: (
            f"- `{i['cell']}`: {i['before']} → {i['now']}"
            + (f"; now judged: {', '.join(i['now_judged'])}" if i["now_judged"] else "")
            + (f"; no longer judged: {', '.join(i['no_longer_judged'])}"
               if i["no_longer_judged"] else "")
        ),
    )
    section(
        "Throughput changes beyond noise",
        d["throughput"],
        lambda i: (
            f"- `{i['cell']}` {i['stack']}: {i['before']:.0f} → {i['now']:.0f} tokens/s "
            f"({100 * i['change']:+.1f}%, threshold {100 * i['threshold']:.1f}%: {i['basis']})"
        ),
    )
    section(
        "Infra now (the machine failed, not the stack; never a breakage)",
        d["infra"],
        lambda i: (
            f"- `{i['cell']}` {('`' + i['check'] + '`') if i['check'] else '(cell)'}: was "
            f"{i['before']}; "
            f"{(i.get('reason') or 'infra').replace(chr(10), ' ')}"
        ),
    )
    if d["throughput_thresholds"] and not d["throughput"]:
        out += [
            f"Throughput compared for {len(d['throughput_thresholds'])} cell×stack pairs; none "
            "moved beyond "
            f"its noise threshold.",
            "",
        ]
    elif not d["throughput_thresholds"]:
        out += ["No throughput measured in both runs (throughput runs on GPU cells).", ""]
    return "\n".join(out).rstrip() + "\n"


def write_diff(run_dir: Path, d: Mapping[str, Any]) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    return (
        write_json_atomic(run_dir / "diff.json", dict(d)),
        write_text_atomic(run_dir / "diff.md", render_markdown(d)),
    )


def attach_diff(
    summary: dict[str, Any],
    run_dir: Path,
    previous: Path,
    history: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Diff `summary` against the run in `previous`, write diff.{md,json} into run_dir, and put the
    diff (with its headline) into the summary so summary.md/html show it. A previous run that cannot
    be read is said so in the summary, never a crash."""
    try:
        d = diff(load_summary(previous), summary, history)
    except PreviousRunError as exc:
        summary["diff_error"] = str(exc)
        return summary
    d["headline"] = headline(d)
    d["previous_dir"] = str(previous)
    write_diff(run_dir, d)
    summary["diff"] = d
    return summary


def render_bisect_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per nightly bisect (pinmatrix/bisect/nightly.py): its first bad release, or why
    not."""
    out = []
    for r in records:
        fact = f" fact `{r['fact']}`" if r.get("fact") else ""
        head = f"- `{r['cell']}` `{r['check']}`{fact}: {r['package']} {r['good']}..{r['bad']}"
        if r.get("first_bad"):
            # judged releases, and of them the ones probed now (the rest came from the cache)
            probed = f", {r['probes_run']} probed now" if r.get("probes_run") is not None else ""
            cause = f"; `{r['signature']}`" if r.get("signature") else ""
            out.append(
                f"{head}: **first bad {r['package']} {r['first_bad']}** (last good "
                f"{r['last_good']}{cause}; "
                f"{r['probes']} releases judged{probed}, of {r['releases']}; `{r['bisect']}`)"
            )
        else:
            out.append(f"{head}: {r.get('stopped') or r.get('note') or 'no answer'}")
    return out
