"""Cell status, derived from check statuses (docs/CONTRACTS.md §3). Never typed in by hand."""
from __future__ import annotations

from typing import Iterable, Mapping

CORE_CHECKS = ("imports", "exaone3.5.remote-code", "lora-train.hf-peft")
CELL_STATUSES = ("works", "partial", "broken", "unresolvable", "infra")
CHECK_STATUSES = ("pass", "fail", "skip", "infra", "flaky")


def cell_status(checks: Iterable[Mapping[str, object]] | None, *, unresolvable: bool = False) -> str:
    """The cell verdict from its check results; `checks` is None when there is no valid result.

    Rules, in order: unresolvable (the resolver found no install) → infra (no valid result, no check
    at all, or a core check hit infra) → broken (a core check failed) → works (every check passed or
    was skipped) → partial (anything else: a non-core failure, a flaky check, non-core infra).
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
    if all(s in ("pass", "skip") for s in statuses.values()):
        return "works"
    return "partial"
