"""Cell status, derived from check statuses (docs/CONTRACTS.md §3). Never typed in by hand."""

from __future__ import annotations

from typing import Iterable, Mapping

from probes import registry

# Group, order and role of every check come from the probes' registry (probes/registry.py; stdlib
# only, like probes/signatures.py). Core checks without a route: without them the stack cannot be
# used at all.
CORE_CHECKS: tuple[str, ...] = tuple(
    c.name for c in registry.CHECKS if c.role == registry.CORE and c.route is None)
# The ways to LoRA-train EXAONE 3.5: through its remote code (the matrix's pinned revision), or
# llamafied (the same weights as LlamaForCausalLM): the core checks that carry a route. A route is
# judged by its checks present in the result. The stack is broken for the job only when every route
# it offers fails: on transformers 5.x the remote code of every known hub revision fails while the
# llamafied route trains, and that cell is `partial`, with both answers in the report
# (pinmatrix/report/exaone.py).
EXAONE35_ROUTES: dict[str, tuple[str, ...]] = dict(registry.EXAONE35_ROUTES)
CELL_STATUSES = ("works", "partial", "broken", "unresolvable", "infra")
CHECK_STATUSES = ("pass", "fail", "skip", "infra", "flaky")
# How reports draw a status (summary.md, summary.html); None: the check did not run in that cell.
CHECK_GLYPH = {"pass": "✅", "fail": "❌", "skip": "⏭", "infra": "⚠", "flaky": "〰", None: "·"}
CELL_GLYPH = {"works": "✅", "partial": "🟡", "broken": "❌", "unresolvable": "⛔", "infra": "⚠"}


def is_measurement(check_name: str) -> bool:
    return registry.is_measurement(check_name)


def is_claim(check_name: str) -> bool:
    """A check that tests a guide's or a vendor's statement, not the stack: no effect on status."""
    return registry.role_of(check_name) == registry.CLAIM


def route_status(statuses: Mapping[str, str], route: str) -> str | None:
    """fail / infra / pass for one EXAONE 3.5 route from its checks, None when none of them ran."""
    present = [statuses[name] for name in EXAONE35_ROUTES[route] if name in statuses]
    if not present:
        return None
    if "fail" in present:
        return "fail"
    if "infra" in present:
        return "infra"
    return "pass"


def cell_status(
    checks: Iterable[Mapping[str, object]] | None, *, unresolvable: bool = False
) -> str:
    """The cell verdict from its check results; `checks` is None when there is no valid result.

    Rules, in order: unresolvable (the resolver found no install) → infra (no valid result, no check
    at all, a core check hit infra, or no EXAONE 3.5 route passed and one hit infra: what could not
    be
    judged is not called broken) → broken (a core check failed, or every EXAONE 3.5 route that ran
    failed) → works (every core and optional check passed or was skipped) → partial (anything
    else: an optional failure, one route failing, a flaky check, optional infra).

    `claim` checks (probes/registry.py: they test a guide's statement, such as the guide's
    attn_implementation="xformers") never change the status; the report lists them apart.

    A speed measurement that hit infra (`throughput.*`: typically CUDA OOM because the configured
    batch × sequence does not fit this card, as eager attention at 4 × 2048 on an 80 GB H100) does
    not demote a cell: it says nothing about whether the stack works, and is listed apart as infra.
    """
    if unresolvable:
        return "unresolvable"
    if checks is None:
        return "infra"
    statuses = {str(c["name"]): str(c["status"]) for c in checks if not is_claim(str(c["name"]))}
    if not statuses:
        return "infra"  # a result that ran nothing cannot say the cell works
    core = [statuses[name] for name in CORE_CHECKS if name in statuses]
    routes = [s for s in (route_status(statuses, r) for r in EXAONE35_ROUTES) if s is not None]
    if "infra" in core or (routes and "pass" not in routes and "infra" in routes):
        return "infra"
    if "fail" in core or (routes and all(s == "fail" for s in routes)):
        return "broken"
    judged = {
        name: s for name, s in statuses.items() if not (is_measurement(name) and s == "infra")
    }
    if all(s in ("pass", "skip") for s in judged.values()):
        return "works"
    return "partial"
