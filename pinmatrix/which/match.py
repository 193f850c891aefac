"""Match a user's stack against judged cells, answer per purpose, find the smallest change.

A cell's value on an axis is its locked (installed) version, or its pin when the run has no lock;
`none` where the package is not installed. The stack admits a value as stack.Want.admits says
(python by major.minor). `base_image` is no package: it is never compared.

Per purpose (pinmatrix.report.pins: the same purposes, and pins.judge, the very rule of the pins
page), each matched cell is
- works: it qualifies for the purpose;
- fails: it was judged and does not (the failing checks, each with signature, cause and fix);
- not judged: its checks did not run (skipped on that host, unresolvable, infra).
With no exactly matching cell the answer is `not judged`, naming the axes no run covered; the
nearest cells are shown with the axes that differ, as guidance, never as the verdict.

The smallest change: among the cells that qualify for the purpose, the one reached by the fewest
package changes (ties: the fewest packages added that the stack does not name, then for a fastest
purpose the faster, then the newest as pins' "newest"), with a
"why not" for every cell as near or nearer that does not qualify.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from pinmatrix.cell import NONE, version_key
from pinmatrix.errors import UsageError
from pinmatrix.report.pins import (
    FASTEST,
    UNSLOTH_PURPOSES,
    Cell,
    Purpose,
    Verdict,
    judge,
    purposes_for,
    torch_index_hint,
)
from pinmatrix.results import describe_signature
from pinmatrix.which.stack import Stack
from probes import registry

WORKS, FAILS, NOT_JUDGED = "works", "fails", "not judged"
NOT_COMPARED = ("base_image",)
NEAREST_SHOWN = 3
WHY_NOT_SHOWN = 5


@dataclass
class Record:
    """One judged cell of one run (compat.json record) as pins sees it."""
    cell: Cell
    run_id: str
    host: dict[str, Any]
    source: str                      # the report folder or dataset file it came from

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.cell.cell_id}"

    def value(self, axis: str) -> str:
        if axis == "python":
            return str(self.cell.pins.get("python") or NONE)
        pin = str(self.cell.pins.get(axis, NONE))
        locked = (self.cell.locked or {}).get(canonicalize_name(axis))
        return locked or pin.split("[", 1)[0]


@dataclass
class Difference:
    axis: str
    yours: str
    cells: str

    @property
    def text(self) -> str:
        return f"{self.axis} {self.yours} -> {self.cells}"


@dataclass
class CellAnswer:
    record: Record
    status: str                      # works | fails | not judged
    why: str | None
    failing: list[dict[str, Any]] = field(default_factory=list)
    speed: tuple[str, float] | None = None
    not_run: list[str] = field(default_factory=list)


@dataclass
class Change:
    record: Record
    differences: list[Difference]
    speed: tuple[str, float] | None
    why_not_nearer: list[tuple[Record, list[Difference], str]]
    # axes the stack does not name (any version) where the cell has a package: pinned too, so
    # the install is the judged one, but not counted as changes
    unnamed: list[tuple[str, str]] = field(default_factory=list)

    def constraints(self, purpose: Purpose) -> str:
        c = self.record.cell
        lines = [f"# pinmatrix which: the smallest change to a stack that works for: "
                 f"{purpose.title}",
                 f"# {len(self.differences)} package change"
                 f"{'s' if len(self.differences) != 1 else ''}, to cell {c.cell_id} "
                 f"(run {self.record.run_id}, {c.verdict or c.status}; judged on "
                 f"{self.record.host.get('name') or 'unknown'})",
                 "# use: pip install -c THIS_FILE PACKAGE...   or   uv pip install -c THIS_FILE "
                 "PACKAGE..."]
        pins = []
        for d in self.differences:
            if d.axis == "python":
                lines.append(f"# python {d.cells}: a constraints file cannot pin the interpreter;"
                             " make the environment with it")
            elif d.cells == NONE:
                lines.append(f"# uninstall {d.axis} (the cell does not have it): pip uninstall "
                             f"{d.axis}")
            else:
                pins.append(f"{d.axis}=={d.cells}")
        for axis, version in self.unnamed:
            pins.append(f"{axis}=={version}  # your stack does not name it; the cell ran with it")
        hint = torch_index_hint(next((d.cells for d in self.differences if d.axis == "torch"),
                                     None))
        if hint:
            lines.append(f"# torch is a PyTorch-index build: add --extra-index-url {hint}")
        return "\n".join(lines + pins) + "\n"


@dataclass
class PurposeAnswer:
    purpose: Purpose
    status: str
    why: str
    cells: list[CellAnswer] = field(default_factory=list)       # exact matches
    nearest: list[CellAnswer] = field(default_factory=list)     # guidance when none is exact
    change: Change | None = None
    change_why: str | None = None    # why there is no change to suggest


@dataclass
class Match:
    axes: list[str]
    exact: list[Record]
    nearest: list[tuple[Record, list[Difference]]]
    uncovered: list[Difference]      # axes whose value in the stack no record has
    other_differences: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


# --- matching ------------------------------------------------------------------------------------

def axes_of(records: Sequence[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for axis in r.cell.pins:
            if axis not in NOT_COMPARED:
                seen.setdefault(axis, None)
    return list(seen)


def admits(stack: Stack, axis: str, value: str) -> bool:
    """Whether the stack agrees with a cell's value on one axis."""
    if axis == "python":
        if stack.python_exact:
            return _minor(stack.python_exact) == _minor(value)
        if stack.python is None:
            return True                 # not given: any (the answer says so)
        try:
            return stack.python.contains(Version(value), prereleases=True)
        except InvalidVersion:
            return False
    want = stack.want(axis)
    if want is None:
        return value == NONE or not stack.complete
    return value != NONE and want.admits(value)


def differences(stack: Stack, record: Record, axes: Sequence[str]) -> list[Difference]:
    out = []
    for axis in axes:
        value = record.value(axis)
        if not admits(stack, axis, value):
            yours = (stack.python_exact or str(stack.python) if axis == "python"
                     else stack.version(axis))
            out.append(Difference(axis, yours, value))
    return out


def match(stack: Stack, records: Sequence[Record]) -> Match:
    axes = axes_of(records)
    diffs = [(r, differences(stack, r, axes)) for r in records]
    exact = [r for r, d in diffs if not d]
    # an unresolvable cell is a combination that cannot be installed: the user's stack is
    # installed, so where a resolvable cell matches too, that one is the stack
    if any(r.cell.status != "unresolvable" for r in exact):
        exact = [r for r in exact if r.cell.status != "unresolvable"]
    nearest: list[tuple[Record, list[Difference]]] = []
    if not exact and diffs:
        fewest = min(len(d) for _, d in diffs)
        nearest = [(r, d) for r, d in diffs if len(d) == fewest]
        nearest.sort(key=lambda item: (item[0].cell.status == "unresolvable",
                                       tuple(-_vkey(item[0].value(a)) for a in
                                             ("transformers", "torch"))))
        nearest = nearest[:NEAREST_SHOWN]
    uncovered = []
    for axis in axes:
        if not any(admits(stack, axis, r.value(axis)) for r in records):
            values = sorted({r.value(axis) for r in records})
            yours = (stack.python_exact or str(stack.python) if axis == "python"
                     else stack.version(axis))
            uncovered.append(Difference(axis, yours, ", ".join(values)))
    result = Match(axes, exact, nearest, uncovered)
    if stack.complete:
        for r in exact:
            result.other_differences[r.key] = [
                (name, want.exact or "?", (r.cell.locked or {})[name])
                for name, want in sorted(stack.packages.items())
                if name not in {canonicalize_name(a) for a in axes} and r.cell.locked
                and name in r.cell.locked and want.exact
                and not want.admits(r.cell.locked[name])]
    return result


# --- answering -----------------------------------------------------------------------------------

def answer_cell(record: Record, purpose: Purpose) -> CellAnswer:
    v = judge(record.cell, purpose)
    speed = _speed(record.cell, v)
    if v.why_not is None or v.why_not.startswith("qualifies, but the run has no lock"):
        if purpose.goal == FASTEST and speed is None:
            # the pins page's rule (pins.choose): a fastest purpose needs a time
            return CellAnswer(record, NOT_JUDGED, "qualifies, but no throughput check of its "
                              "routes passed (not timed)", not_run=[
                                  n for n in sorted(record.cell.checks, key=registry.order_key)
                                  if registry.is_measurement(n) and _pair_of(n) in v.routes])
        return CellAnswer(record, WORKS, None, speed=speed)
    if v.judged:
        return CellAnswer(record, FAILS, v.why_not, failing=failing_checks(record.cell, purpose),
                          speed=speed)
    return CellAnswer(record, NOT_JUDGED, v.why_not, not_run=list(v.not_run))


def failing_checks(cell: Cell, purpose: Purpose) -> list[dict[str, Any]]:
    """The checks this purpose rests on (its routes' loading and training checks, and the
    route-less core checks) that failed, each with its signature's cause and fix."""
    wanted = {n for pair in purpose.routes() for group in registry.TRAINING[pair] for n in group}
    out = []
    for name in sorted(cell.checks, key=registry.order_key):
        record = cell.checks[name]
        core_any = registry.role_of(name) == registry.CORE and not _route_of(name)
        if str(record.get("status")) not in ("fail", "flaky") or not (name in wanted or core_any):
            continue
        signature = record.get("signature")
        entry = describe_signature(signature) if signature else None
        out.append({"check": name, "status": str(record.get("status")), "signature": signature,
                    "cause": (entry or {}).get("cause"), "fix": (entry or {}).get("fix")})
    return out


def answer(stack: Stack, records: Sequence[Record], purposes: Sequence[Purpose],
           found: Match) -> list[PurposeAnswer]:
    out = []
    for purpose in purposes:
        cells = [answer_cell(r, purpose) for r in found.exact]
        if cells:
            statuses = {c.status for c in cells}
            if FAILS in statuses:
                status = FAILS
                why = _grouped([c for c in cells if c.status == FAILS])
                if WORKS in statuses:
                    why += " (it works in: " + ", ".join(
                        _where(c.record) for c in cells if c.status == WORKS) + ")"
            elif WORKS in statuses:
                status, why = WORKS, "works in " + ", ".join(
                    _where(c.record) for c in cells if c.status == WORKS)
            else:
                status = NOT_JUDGED
                why = _grouped(cells)
        else:
            status = NOT_JUDGED
            if found.uncovered:
                why = "no run covered " + "; ".join(
                    f"{d.axis} {d.yours} (judged: {d.cells})" for d in found.uncovered)
            elif records:
                why = ("no run judged this combination (each of its versions was judged, in "
                       "other combinations)")
            else:
                why = "the dataset holds no judged cell"
        result = PurposeAnswer(purpose, status, why, cells,
                               [answer_cell(r, purpose) for r, _ in found.nearest])
        if status != WORKS:
            result.change, result.change_why = smallest_change(stack, records, purpose,
                                                               found.axes)
        out.append(result)
    return out


def smallest_change(stack: Stack, records: Sequence[Record], purpose: Purpose,
                    axes: Sequence[str]) -> tuple[Change | None, str | None]:
    """The qualifying cell the fewest package changes away; "why not" for nearer cells."""
    scored = []
    for r in records:
        a = answer_cell(r, purpose)
        scored.append((r, differences(stack, r, axes), a))
    good = [(r, d, a) for r, d, a in scored if a.status == WORKS and d]
    if not good:
        judged = any(a.status != NOT_JUDGED for _, _, a in scored)
        return None, ("no judged cell works for this purpose" if judged
                      else "no cell was judged for this purpose")

    def rank(item: tuple[Record, list[Difference], CellAnswer]) -> tuple[Any, ...]:
        r, d, a = item
        speed = a.speed[1] if (purpose.goal == FASTEST and a.speed) else 0.0
        # fewest changes; then the fewest packages the stack does not name that the cell
        # installs (unsloth is not added to a stack for a time within noise of one without);
        # then the faster (a fastest purpose), then the newest as pins compares versions
        added = sum(1 for axis in axes if axis != "python" and stack.want(axis) is None
                    and r.value(axis) != NONE)
        return (-len(d), -added, speed,
                tuple(version_key(r.cell.version(n)) for n in purpose.versions), r.cell.cell_id)

    best_record, best_diffs, best = max(good, key=rank)
    why_not = [(r, d, a.why or a.status) for r, d, a in sorted(scored, key=lambda s: len(s[1]))
               if a.status != WORKS and r is not best_record and len(d) <= len(best_diffs)]
    unnamed = [(axis, best_record.value(axis)) for axis in axes
               if axis != "python" and stack.want(axis) is None and not stack.complete
               and best_record.value(axis) != NONE]
    return Change(best_record, best_diffs, best.speed, why_not[:WHY_NOT_SHOWN], unnamed), None


def default_purposes(stack: Stack, cells: Sequence[Cell], wanted: str | None) -> list[Purpose]:
    """Every purpose of the pins page, or the one asked for (UsageError lists the keys).
    Unsloth's purposes only when the stack names unsloth."""

    every = purposes_for(cells)
    known = {p.key: p for p in (*every, *UNSLOTH_PURPOSES)}
    if wanted is not None:
        if wanted not in known:
            raise UsageError(f"--purpose {wanted!r}: choose one of {', '.join(known)}")
        return [known[wanted]]
    # a stack that does not name unsloth is not asked about training through it
    has_unsloth = stack.want("unsloth") is not None
    return [p for p in every if p.backend != registry.UNSLOTH or has_unsloth]


def exit_code(answers: Sequence[PurposeAnswer]) -> int:
    """0 works for every purpose asked; 1 fails for one; 4 not judged for one (none fails)."""
    statuses = {a.status for a in answers}
    if FAILS in statuses:
        return 1
    if NOT_JUDGED in statuses or not answers:
        return 4
    return 0


# --- helpers -------------------------------------------------------------------------------------

def _speed(cell: Cell, v: Verdict) -> tuple[str, float] | None:
    if v.speed:
        return v.speed
    routes = set(v.routes)
    timed = [(n, t) for n, t in cell.speeds.items()
             if str((cell.checks.get(n) or {}).get("status")) in ("pass", "flaky")
             and _pair_of(n) in routes]
    return max(timed, key=lambda item: item[1]) if timed else None


def _route_of(name: str) -> str | None:
    entry = registry.lookup(name)
    return entry.route if entry else None


def _pair_of(name: str) -> tuple[str, str] | None:
    entry = registry.lookup(name)
    return (entry.route, entry.backend) if entry and entry.route and entry.backend else None


def _where(record: Record) -> str:
    return f"cell {record.cell.cell_id} (run {record.run_id}, {record.host.get('name')})"


def _grouped(cells: Sequence[CellAnswer]) -> str:
    """One line per distinct reason, naming its cells (a range matches several cells)."""
    groups: dict[str, list[CellAnswer]] = {}
    for c in cells:
        groups.setdefault(str(c.why), []).append(c)
    return "; ".join(
        (_where(same[0].record) if len(same) == 1 else
         f"{len(same)} cells ({', '.join(c.record.cell.cell_id for c in same)})") + f": {why}"
        for why, same in groups.items())


def _minor(value: str) -> tuple[int, ...]:
    try:
        return Version(value).release[:2]
    except InvalidVersion:
        return ()


def _vkey(value: str) -> float:
    """A number that orders versions for the nearest list (newest first)."""
    try:
        release = Version(value).release
    except InvalidVersion:
        return 0.0
    return sum(part / (1000.0 ** i) for i, part in enumerate(release[:4]))
