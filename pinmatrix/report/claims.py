"""Claims tested: statements from a guide or a vendor that the matrix puts to the test,
apart from the cell status.

The claims and their checks are listed in the probes' registry (probes/registry.py `CLAIMS`); a
check whose role is `claim` (the guide's attn_implementation="xformers") never changes a cell's
status. Per claim and cell: what ran (each check's status and signature) and, for a speed claim,
the measured speedup over HF+PEFT sdpa against the claimed range.
"""
from __future__ import annotations

from typing import Any

from probes import registry

HOLDS, FAILS, UNTESTED = "holds", "does not hold", "not tested"


def claims_section(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """summary.json `claims`: one entry per claim, with a line per cell where any of it ran."""
    speedups: dict[tuple[str, str], float] = {}
    for entry in summary.get("speed") or []:
        if entry.get("speedup_vs_sdpa") is not None:
            speedups[(entry["cell"], entry["stack"])] = float(entry["speedup_vs_sdpa"])
    out = []
    for claim_id, claim in registry.CLAIMS.items():
        checks = tuple(str(n) for n in claim["checks"])
        speed = claim.get("speed")
        low, high = claim["range"]
        rows = []
        for cell in summary.get("cells") or []:
            ran = {name: cell["checks"][name] for name in checks
                   if name in (cell.get("checks") or {})
                   and cell["checks"][name].get("status") != "skip"}
            speedup = speedups.get((cell["id"], str(speed))) if speed else None
            if not ran and speedup is None:
                continue
            rows.append({"cell": cell["id"],
                         "ran": {n: _word(r) for n, r in ran.items()},
                         "speedup": speedup,
                         "verdict": _verdict(claim_id, checks, ran, speedup, low)})
        counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in (HOLDS, FAILS, UNTESTED)}
        out.append({"id": claim_id, "claim": claim["claim"], "source": claim["source"],
                    "checks": list(checks), "speed": speed, "range": [low, high],
                    "cells": rows, "counts": counts})
    return out


def _word(record: dict[str, Any]) -> str:
    status = str(record.get("status"))
    return status + (f" [{record['signature']}]" if record.get("signature") else "")


def _verdict(claim_id: str, checks: tuple[str, ...], ran: dict[str, Any],
             speedup: float | None, low: float) -> str:
    claim_checks = [n for n in ran if registry.role_of(n) == registry.CLAIM]
    if any(ran[n].get("status") == "fail" for n in claim_checks):
        return FAILS  # the guide's own code path is rejected
    if speedup is not None:
        return HOLDS if speedup >= low else FAILS
    if claim_checks and all(ran[n].get("status") == "pass" for n in claim_checks):
        return UNTESTED  # the code path runs; its speed was not measured
    return UNTESTED


def claims_markdown(claims: list[dict[str, Any]]) -> list[str]:
    """The "Claims tested" section of summary.md."""
    if not claims:
        return []
    out = ["## Claims tested", "",
           "Statements from a guide or a vendor, tested apart from the stacks: a `claim` check "
           "(probes/registry.py) never changes a cell's status.", ""]
    for claim in claims:
        low, high = claim["range"]
        counts = claim["counts"]
        out += [f"### {claim['claim']}", "",
                f"Source: {claim['source']}. Checks: "
                + ", ".join(f"`{c}`" for c in claim["checks"])
                + (f"; speed: `throughput.{claim['speed']}` over the HF+PEFT sdpa baseline "
                   f"(claimed {low:g}-{high:g}x)" if claim["speed"] else "") + ".", ""]
        if claim["cells"]:
            out += [f"Holds in {counts[HOLDS]} cell(s), does not hold in {counts[FAILS]}, "
                    f"not tested in {counts[UNTESTED]}.", ""]
        else:
            out += ["Not tested in this run: its checks were skipped or absent in every cell.", ""]
        if claim["cells"]:
            out += ["| cell | what ran | speedup | verdict |", "|---|---|---|---|"]
            for row in claim["cells"]:
                ran = "; ".join(f"`{n}` {w}" for n, w in row["ran"].items()) or "·"
                speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "·"
                out.append(f"| `{row['cell']}` | {ran} | {speedup} | {row['verdict']} |")
            out.append("")
    return out
