"""Cell status, derived from check statuses (docs/CONTRACTS.md §3). Never typed in by hand."""
from __future__ import annotations

from typing import Iterable, Mapping

CORE_CHECKS = ("imports", "exaone3.5.remote-code", "lora-train.hf-peft")
CELL_STATUSES = ("works", "partial", "broken", "unresolvable", "infra")
CHECK_STATUSES = ("pass", "fail", "skip", "infra", "flaky")
MEASUREMENT_PREFIX = "throughput."
# How reports draw a status (summary.md, summary.html); None: the check did not run in that cell.
CHECK_GLYPH = {"pass": "✅", "fail": "❌", "skip": "⏭", "infra": "⚠", "flaky": "〰", None: "·"}
CELL_GLYPH = {"works": "✅", "partial": "🟡", "broken": "❌", "unresolvable": "⛔", "infra": "⚠"}


def is_measurement(check_name: str) -> bool:
    return check_name.startswith(MEASUREMENT_PREFIX)


def cell_status(checks: Iterable[Mapping[str, object]] | None, *,
                unresolvable: bool = False) -> str:
    """The cell verdict from its check results; `checks` is None when there is no valid result.

    Rules, in order: unresolvable (the resolver found no install) → infra (no valid result, no check
    at all, or a core check hit infra) → broken (a core check failed) → works (every check passed or
    was skipped) → partial (anything else: a non-core failure, a flaky check, non-core infra).

    A speed measurement that hit infra (`throughput.*`: typically CUDA OOM because the configured
    batch × sequence does not fit this card, as eager attention at 4 × 2048 on an 80 GB H100) does
    not demote a cell: it says nothing about whether the stack works, and is listed apart as infra.
    """
    if unresolvable:
        return "unresolvable"
    if checks is None:
        return "infra"
    statuses = {str(c["name"]): str(c["status"]) for c in checks}
    if not statuses:
        return "infra"  # a result that ran nothing cannot say the cell works
    core = [statuses[name] for name in CORE_CHECKS if name in statuses]
    if "infra" in core:
        return "infra"
    if "fail" in core:
        return "broken"
    judged = {name: s for name,
              s in statuses.items() if not (is_measurement(name) and s == "infra")}
    if all(s in ("pass", "skip") for s in judged.values()):
        return "works"
    return "partial"
