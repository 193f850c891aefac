"""Cell status, derived from check statuses (docs/CONTRACTS.md §3). Never typed in by hand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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
    return bool(registry.is_measurement(check_name))


def is_claim(check_name: str) -> bool:
    """A check that tests a guide's or a vendor's statement, not the stack: no effect on status."""
    return bool(registry.role_of(check_name) == registry.CLAIM)


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


# --- judged on: what a cell's host could exercise, and what it did not judge ---------------------

# A check that ran to a verdict; `skip` did not run, `infra` did not finish (the machine failed).
JUDGED_STATUSES = ("pass", "fail", "flaky")
NEEDS_A_GPU = "needs a GPU"


def host_label(environment: Mapping[str, object] | None) -> str:
    """Where a result was judged, in one word: "CPU", or the GPU's name ("GPU" when unnamed)."""
    env = environment or {}
    if env.get("device") != "cuda":
        return "CPU"
    return str(env.get("gpu") or "GPU")


def judged_on(environment: Mapping[str, object] | None) -> dict[str, object]:
    """The host a result was judged on and the (route, backend) pairs it could exercise: on a host
    without an accelerator, the pairs none of whose proving checks (registry.TRAINING) needs one."""
    env = environment or {}
    accelerator = env.get("device") == "cuda"
    could: list[str] = []
    could_not: list[str] = []
    for (route, backend), (loads, trains) in registry.TRAINING.items():
        runnable = accelerator or (not any(registry.needs_gpu(n) for n in loads)
                                   and not all(registry.needs_gpu(n) for n in trains))
        (could if runnable else could_not).append(f"{route} via {backend}")
    return {"host": host_label(env), "accelerator": accelerator, "routes": could,
            "routes_not_on_this_host": could_not}


def _why_not_judged(records: list[Mapping[str, object]]) -> str:
    if not records:
        return "none of its checks ran"
    reasons = []
    for record in records:
        reason = str(record.get("reason") or record.get("status") or "did not run")
        reason = NEEDS_A_GPU if reason.startswith(NEEDS_A_GPU) else " ".join(reason.split())[:120]
        reasons.append(reason)
    return "; ".join(dict.fromkeys(reasons))


def not_judged(checks: Mapping[str, Mapping[str, object]],
               pins: Mapping[str, object]) -> list[dict[str, object]]:
    """What a cell installed (or asked to measure) but never exercised (registry.FACETS): an axis
    value none of whose checks ran to a verdict, and speed where every measurement skipped. Each:
    {"what", "checks" (those that did not run; [] when none was in the result), "why"}."""
    out: list[dict[str, object]] = []
    for facet, axis in registry.FACETS.items():
        names = sorted((n for n in checks if facet in registry.judges(n)), key=registry.order_key)
        if axis is not None and str(pins.get(axis, "none") or "none") == "none":
            continue  # not installed: nothing to judge
        if axis is None and not names:
            continue  # speed: judged only where a measurement was asked for
        if any(str(checks[n].get("status")) in JUDGED_STATUSES for n in names):
            continue
        out.append({"what": facet, "checks": names,
                    "why": _why_not_judged([checks[n] for n in names])})
    return out


# broken, unresolvable and infra cells claim nothing works: their verdict is the status alone
# (summary.json `not_judged` still lists what did not run)
UNQUALIFIED_STATUSES = ("broken", "unresolvable", "infra")


def verdict_text(status: str, missing: Iterable[Mapping[str, object]], host: str | None) -> str:
    """The cell status with what it does not claim: `works (CPU: unsloth, speed not judged)`."""
    whats = [str(item["what"]) for item in missing]
    if not whats or status in UNQUALIFIED_STATUSES:
        return status
    return f"{status} ({host + ': ' if host else ''}{', '.join(whats)} not judged)"


# --- old evidence: what a remote-code verdict rests on -------------------------------------------

PREDATES_FIXTURES = "not judged (predates the faithful fixtures)"


def _remote_code_verdict_checks() -> frozenset[str]:
    """The checks whose pass says "EXAONE 3.5 trains through its remote code": the route's core
    checks and the proving checks of every remote-code (route, backend) pair."""
    names = set(EXAONE35_ROUTES[registry.REMOTE_CODE])
    for (route, _backend), (loads, trains) in registry.TRAINING.items():
        if route == registry.REMOTE_CODE:
            names.update(loads + trains)
    return frozenset(names)


REMOTE_CODE_VERDICT_CHECKS = _remote_code_verdict_checks()
REVISION_PREFIX = "exaone3.5.remote-code."


def _basis(check: Mapping[str, object] | None) -> str | None:
    evidence = (check or {}).get("evidence")
    basis = evidence.get("basis") if isinstance(evidence, Mapping) else None
    return basis if isinstance(basis, str) and basis else None


def with_recorded_basis(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checks as a verdict may use them: where the EXAONE 3.5 remote code passed with no
    recorded basis (evidence.basis: a result from before the revision-faithful fixtures, whose
    stand-in bridged transformers' API changes), each pass of the remote-code route is `skip` with
    the reason PREDATES_FIXTURES, so no table, status or pin takes it for "works". A per-revision
    check (`exaone3.5.remote-code.REV`) is judged by its own basis. Fails are kept: a kinder
    stand-in that failed shows a real failure."""
    by_name = {str(c.get("name")): c for c in checks}
    cell_unbased = ("exaone3.5.remote-code" in by_name
                    and _basis(by_name["exaone3.5.remote-code"]) is None)
    out = []
    for check in checks:
        name = str(check.get("name"))
        unbased = ((name in REMOTE_CODE_VERDICT_CHECKS and cell_unbased)
                   or (name.startswith(REVISION_PREFIX) and _basis(check) is None))
        if unbased and check.get("status") in ("pass", "flaky"):
            check = {**check, "status": "skip", "reason": PREDATES_FIXTURES,
                     "recorded_status": check.get("status")}
        out.append(check)
    return out


def status_of(verdict: str) -> str:
    """The cell status a verdict text starts with (`works (CPU: unsloth not judged)` -> works)."""
    return verdict.split(" (", 1)[0]
