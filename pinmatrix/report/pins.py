"""Pins by purpose: each a constraints file in `reports/<run>/pins/` (docs/CONTRACTS.md §8).

A purpose is what a user needs the stack for:
- `exaone3.5-remote-code`: the newest stack where EXAONE 3.5 LoRA-trains through its remote code;
- `exaone3.5-llamafied`: the newest where it trains llamafied (LlamaForCausalLM, same weights);
- `fastest-lora`: the fastest for LoRA training of EXAONE 3.5, any route, any backend (tokens/s
  of the throughput checks, the median timed step, of a route the cell trains);
- `exaone4`: the newest where EXAONE 4 trains;
- the same four through unsloth (`unsloth-…`) when some cell pins unsloth;
- and any `--pins-for route=…,backend=…,goal=…` (`for-…`).

A cell qualifies for a purpose when the checks that prove its route trains all pass
(probes/registry.py `TRAINING`), no route-less core check (`imports`) failed, and the run has its
lock.
A `partial` cell qualifies: what else failed (optional checks, and the core checks of a route this
purpose does not use) becomes the file's caveats, each with its signature, cause and fix from
probes/signatures.json. `claim` checks test a guide's statement, not the stack: they are listed
apart and never cost a cell its pin. Every cell passed over gets one "why not" line: unresolvable,
infra, core check failed (which), no lock, slower than the pick (by how much), or older than the
pick.

Newest = newest transformers, then unsloth (not for an HF+PEFT purpose: there unsloth does not
train), then torch (`packaging` versions of the locked, i.e. installed, versions); among equal
versions, the cell with fewer caveats, then the smaller install. Each file is the cell's full lock
reduced to `name==version` lines (no hashes: a constraints file with hashes switches pip to
hash-checking mode for everything installed with it), so `pip install -c FILE pkg` and
`uv pip install -c FILE pkg` both read it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.cell import LOCK_LINE, normalize_name, version_key
from pinmatrix.errors import UsageError
from pinmatrix.fsio import confined, read_json, real_file_under, replace_folder
from pinmatrix.report.summary import merge
from pinmatrix.results import describe_signature
from probes import registry

PINS_DIR = "pins"
LOCK_NAME = "requirements.lock"
_TORCH_LOCAL = re.compile(r"^(cu\d+|rocm[\d.]+|cpu|xpu)$")
NEWEST, FASTEST = "newest", "fastest"
GOALS = (NEWEST, FASTEST)
ANY = "any"
NEWEST_ORDER = ("transformers", "unsloth", "torch")
BACKEND_WORDS = {registry.HF_PEFT: "HF+PEFT", registry.UNSLOTH: "unsloth"}
ROUTE_WORDS = {registry.REMOTE_CODE: "EXAONE 3.5 through its remote code",
               registry.LLAMAFIED: "EXAONE 3.5 llamafied",
               registry.EXAONE4: "EXAONE 4"}
TRAINS_WORDS = {registry.REMOTE_CODE: "EXAONE 3.5 LoRA-trains through its remote code",
                registry.LLAMAFIED: "EXAONE 3.5 LoRA-trains llamafied",
                registry.EXAONE4: "EXAONE 4 LoRA-trains",
                ANY: "EXAONE 3.5 LoRA-trains (any route)"}
BAD_STATUSES = ("fail", "flaky", "infra")
NOT_JUDGED_IN_RUN = "not judged in this run"


@dataclass(frozen=True)
class Purpose:
    """What a pin is for: a route (None: either EXAONE 3.5 route), a backend (None: any) and a
    goal."""
    key: str
    route: str | None
    backend: str | None
    goal: str

    @property
    def file_name(self) -> str:
        return f"{self.key}.constraints.txt"

    @property
    def title(self) -> str:
        how = BACKEND_WORDS[self.backend] if self.backend else "any backend"
        if self.goal == FASTEST:
            what = ROUTE_WORDS[self.route] if self.route else "EXAONE 3.5, any route"
            return f"fastest stack for LoRA training of {what} ({how})"
        return f"newest stack where {TRAINS_WORDS[self.route or ANY]} ({how})"

    @property
    def versions(self) -> tuple[str, ...]:
        """What "newest" compares, in order: unsloth's version only where unsloth may train."""
        if self.backend == registry.HF_PEFT:
            return tuple(n for n in NEWEST_ORDER if n != "unsloth")
        return NEWEST_ORDER

    def routes(self) -> list[tuple[str, str]]:
        """The (route, backend) pairs of registry.TRAINING that satisfy this purpose."""
        routes = [self.route] if self.route else [registry.REMOTE_CODE, registry.LLAMAFIED]
        backends = [self.backend] if self.backend else list(registry.BACKENDS)
        return [(r, b) for r in routes for b in backends if (r, b) in registry.TRAINING]


DEFAULT_PURPOSES = (
    Purpose("exaone3.5-remote-code", registry.REMOTE_CODE, registry.HF_PEFT, NEWEST),
    Purpose("exaone3.5-llamafied", registry.LLAMAFIED, registry.HF_PEFT, NEWEST),
    Purpose("fastest-lora", None, None, FASTEST),
    Purpose("exaone4", registry.EXAONE4, registry.HF_PEFT, NEWEST),
)
UNSLOTH_PURPOSES = (
    Purpose("unsloth-exaone3.5-remote-code", registry.REMOTE_CODE, registry.UNSLOTH, NEWEST),
    Purpose("unsloth-exaone3.5-llamafied", registry.LLAMAFIED, registry.UNSLOTH, NEWEST),
    Purpose("unsloth-fastest-lora", None, registry.UNSLOTH, FASTEST),
)  # no check trains EXAONE 4 through unsloth (registry.TRAINING): no unsloth EXAONE 4 pin


def parse_pins_for(text: str) -> Purpose:
    """`route=llamafied,backend=unsloth[,goal=fastest]` → a Purpose (`any` or absent: either).

    Raises UsageError (exit 2) for an unknown key or value."""
    values = {"route": ANY, "backend": ANY, "goal": NEWEST}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        allowed = {"route": (*registry.ROUTES, ANY), "backend": (*registry.BACKENDS, ANY),
                   "goal": GOALS}.get(key)
        if not sep or allowed is None:
            raise UsageError(f"--pins-for {text!r}: {part!r} is not KEY=VALUE with KEY one of "
                             "route, backend, goal")
        if value not in allowed:
            raise UsageError(f"--pins-for {text!r}: {key}={value!r}; expected one of "
                             f"{', '.join(allowed)}")
        values[key] = value
    route = None if values["route"] == ANY else values["route"]
    backend = None if values["backend"] == ANY else values["backend"]
    if route == registry.EXAONE4 and values["goal"] == FASTEST:
        raise UsageError(f"--pins-for {text!r}: no throughput check trains EXAONE 4; use "
                         "goal=newest")
    key = "for-" + "-".join(f"{k}-{values[k]}" for k in ("route", "backend", "goal"))
    purpose = Purpose(key, route, backend, values["goal"])  # validated words: safe as a name
    if not purpose.routes():
        raise UsageError(f"--pins-for {text!r}: no check of the registry trains that route with "
                         "that backend (probes/registry.py TRAINING)")
    return purpose


# --- one cell, as the choice sees it
# ---------------------------------------------------------------------------------

@dataclass
class Cell:
    cell_id: str
    status: str
    reason: str | None
    pins: dict[str, str]
    checks: dict[str, dict[str, Any]]   # name -> {status, signature, reason} (summary.json row)
    locked: dict[str, str] | None       # normalised name -> version, from its lock; None: no lock
    lock_lines: list[str]
    environment: dict[str, Any]
    finished: str | None
    speeds: dict[str, float]            # throughput check name -> tokens/s
    # what the EXAONE 3.5 remote-code verdict rests on (evidence.basis of exaone3.5.remote-code);
    # None for results from before the revision-faithful fixtures, whose stand-in bridged
    # transformers' API changes: such a verdict cannot recommend the remote-code route
    remote_code_basis: str | None = None
    verdict: str = ""                   # the status with what it does not claim (summary.json)
    not_judged: list[dict[str, Any]] = field(default_factory=list)

    def version(self, name: str) -> str:
        return (self.locked or {}).get(name) or str(self.pins.get(name) or "none")

    @property
    def newest_key(self) -> tuple[Any, ...]:
        return tuple(version_key(self.version(n)) for n in NEWEST_ORDER) + (self.cell_id,)


@dataclass
class Caveat:
    checks: list[str]
    status: str
    signature: str | None
    kind: str               # "optional" | "other route" | "claim" | "not measured"
    cause: str | None = None
    fix: str | None = None

    @property
    def text(self) -> str:
        head = f"{', '.join(self.checks)} {self.status}"
        if self.signature:
            head += f" [{self.signature}]"
        if self.kind == "other route":
            head += " (a route this pin does not use)"
        parts = [head]
        if self.cause:
            parts.append(_sentence(self.cause))
        if self.fix:
            parts.append("Fix: " + _sentence(self.fix))
        return ": ".join(parts[:2]) + (" " + parts[2] if len(parts) > 2 else "")


@dataclass
class Verdict:
    """How one cell fares for one purpose."""
    cell: Cell
    why_not: str | None                          # None: it qualifies
    routes: list[tuple[str, str]] = field(default_factory=list)   # the purpose's routes it trains
    speed: tuple[str, float] | None = None       # (throughput check, tokens/s) of those routes
    caveats: list[Caveat] = field(default_factory=list)
    claims: list[Caveat] = field(default_factory=list)
    # False when the purpose was not judged in this cell (its checks skipped or absent, the
    # machine failed, no basis): "not judged in this run", never "no cell qualifies"
    judged: bool = True
    not_run: list[str] = field(default_factory=list)   # the purpose's checks that did not run


@dataclass
class Pick:
    purpose: Purpose
    verdict: Verdict | None                      # None: nothing qualified
    why: str
    passed_over: list[tuple[str, str]] = field(default_factory=list)   # (cell id, why not)

    @property
    def file_name(self) -> str:
        return self.purpose.file_name

    @property
    def cell(self) -> Cell | None:
        return self.verdict.cell if self.verdict else None


@dataclass
class PinsReport:
    pins_dir: Path | None
    picks: list[Pick] = field(default_factory=list)
    message: str = ""

    @property
    def written(self) -> list[Pick]:
        return [p for p in self.picks if p.verdict is not None]


# --- the plan: what each purpose picks, and why not the rest
# -------------------------------------------------------------------------

def purposes_for(cells: Iterable[Cell], pins_for: Sequence[str | Purpose] = ()) -> list[Purpose]:
    """The default purposes, the unsloth ones when a cell pins unsloth, then each --pins-for."""
    cells = list(cells)
    out = list(DEFAULT_PURPOSES)
    if any(str(c.pins.get("unsloth", "none")) != "none" for c in cells):
        out += UNSLOTH_PURPOSES
    for item in pins_for:
        purpose = item if isinstance(item, Purpose) else parse_pins_for(item)
        same = (purpose.route, purpose.backend, purpose.goal)
        if all((p.route, p.backend, p.goal) != same for p in out):  # else already a default file
            out.append(purpose)
    return out


def collect_cells(run_dir: Path, summary: dict[str, Any]) -> list[Cell]:
    """Every cell of the summary, with its lock and throughput figures."""
    speeds: dict[str, dict[str, float]] = {}
    for entry in summary.get("speed") or []:
        speeds.setdefault(entry["cell"], {})[f"throughput.{entry['stack']}"] = float(
            entry["tokens_per_s"])
    out = []
    for row in summary.get("cells") or []:
        lock = Path("locks") / row["id"] / LOCK_NAME
        # never through a symlink: a pins file would copy what it points at (fsio.real_file_under)
        lines = (lock_entries((run_dir / lock).read_text(encoding="utf-8"))
                 if real_file_under(run_dir, lock) else [])
        found = confined(run_dir, row.get("result"))
        result = read_json(found) if found is not None else None
        environment = (result or {}).get("environment") or row.get("environment") or {}
        out.append(Cell(
            cell_id=row["id"], status=row.get("status") or "infra", reason=row.get("reason"),
            pins={k: str(v) for k, v in (row.get("pins") or {}).items()},
            checks=dict(row.get("checks") or {}),
            locked=({normalize_name(_name_of(line)): _version_of(line) for line in lines}
                    if lines else None),
            lock_lines=lines, environment=dict(environment),
            finished=(result or {}).get("finished"), speeds=speeds.get(row["id"], {}),
            remote_code_basis=_remote_code_basis(result),
            verdict=str(row.get("verdict") or row.get("status") or "infra"),
            not_judged=list(row.get("not_judged") or [])))
    return out


def _remote_code_basis(result: dict[str, Any] | None) -> str | None:
    for check in (result or {}).get("checks") or []:
        if check.get("name") == "exaone3.5.remote-code":
            basis = (check.get("evidence") or {}).get("basis")
            return str(basis) if basis else None
    return None


def judge(cell: Cell, purpose: Purpose) -> Verdict:
    """Whether `cell` qualifies for `purpose`; its caveats when it does, one "why not" otherwise."""
    if cell.status == "unresolvable":
        # no install: nothing of this purpose could be judged on it
        return Verdict(cell, "unresolvable: "
                       + (_short(cell.reason) or "the resolver found no install"),
                       judged=False, not_run=["the cell is unresolvable"])
    if not cell.checks:
        return Verdict(cell, f"{cell.status}: {_short(cell.reason) or 'no valid result'}",
                       judged=False)
    statuses = {name: str(c.get("status")) for name, c in cell.checks.items()}
    core = [name for name in statuses if registry.role_of(name) == registry.CORE
            and not _route_of(name) and statuses[name] != "pass" and statuses[name] != "skip"]
    if core:
        return Verdict(cell, "core check failed: " + ", ".join(_check_word(cell, n) for n in core),
                       judged=any(statuses[n] in ("fail", "flaky") for n in core),
                       not_run=[_check_word(cell, n) for n in core if statuses[n] == "infra"])
    routes = [pair for pair in purpose.routes() if _trains(statuses, pair)]
    if cell.remote_code_basis is None and any(pair[0] == "remote-code" for pair in routes):
        routes = [pair for pair in routes if pair[0] != "remote-code"]
        if not routes:
            return Verdict(cell, "the remote-code verdict records no basis: it predates the "
                                 "revision-faithful EXAONE 3.5 fixtures (whose stand-in bridged "
                                 "transformers' API changes); rerun the cell", judged=False)
    if not routes:
        missing, failed, not_run = [], False, []
        for pair in purpose.routes():
            loads, trains = registry.TRAINING[pair]
            bad = [n for n in loads if statuses.get(n) != "pass"]
            if all(statuses.get(n) != "pass" for n in trains):
                bad += list(trains)
            # a fail (or flaky) is a verdict; a skip, an absence or the machine failing is none
            failed = failed or any(statuses.get(n) in ("fail", "flaky") for n in bad)
            not_run += [_check_word(cell, n) for n in bad
                        if statuses.get(n) not in ("fail", "flaky")]
            missing.append(f"{_route_word(pair)}: "
                           + ", ".join(_check_word(cell, n) for n in bad))
        head = ("core check for this purpose failed" if failed
                else "not tested for this purpose")
        return Verdict(cell, f"{head}: " + "; ".join(missing), judged=failed, not_run=not_run)
    if cell.locked is None:
        return Verdict(cell, f"qualifies, but the run has no lock for it "
                             f"(locks/{cell.cell_id}/{LOCK_NAME})")
    verdict = Verdict(cell, None, routes)
    if purpose.goal == FASTEST:
        timed = [(name, tps) for name, tps in cell.speeds.items()
                 if statuses.get(name) in ("pass", "flaky") and _pair_of(name) in routes]
        if timed:
            verdict.speed = max(timed, key=lambda item: item[1])
    used = {name for pair in routes for group in registry.TRAINING[pair] for name in group
            if statuses.get(name) == "pass"}
    verdict.caveats, verdict.claims = caveats(cell, used)
    return verdict


def caveats(cell: Cell, used: set[str]) -> tuple[list[Caveat], list[Caveat]]:
    """What failed in `cell` besides the checks a pick relies on (`used`), grouped by status and
    signature: the caveats (optional checks, other routes' core checks, measurements that could
    not run), and apart the guide's claims that do not hold on it."""
    groups: dict[tuple[str, str, str | None], list[str]] = {}
    for name in sorted(cell.checks, key=registry.order_key):
        record = cell.checks[name]
        status = str(record.get("status"))
        if name in used or status not in BAD_STATUSES:
            continue
        role = registry.role_of(name)
        if role == registry.CLAIM:
            kind = "claim"
        elif role == registry.CORE:
            kind = "other route"
        elif registry.is_measurement(name) and status == "infra":
            kind = "not measured"
        else:
            kind = "optional"
        groups.setdefault((kind, status, record.get("signature")), []).append(name)
    found: list[Caveat] = []
    claims: list[Caveat] = []
    for (kind, status, signature), names in groups.items():
        entry = describe_signature(signature) if signature else None
        cause = (entry or {}).get("cause")
        if kind == "not measured" and not cause:
            cause = cell.checks[names[0]].get("reason")
        caveat = Caveat(names, status, signature, kind, cause, (entry or {}).get("fix"))
        (claims if kind == "claim" else found).append(caveat)
    return found, claims


def choose(cells: list[Cell], purpose: Purpose) -> Pick:
    """The pick for one purpose, and a "why not" for every other cell."""
    verdicts = [judge(c, purpose) for c in cells]
    qualified = [v for v in verdicts if v.why_not is None]
    if purpose.goal == FASTEST:
        timed = [v for v in qualified if v.speed is not None]
        for v in qualified:
            if v.speed is None:
                v.why_not = "qualifies, but no throughput check of its routes passed (not timed)"
                v.judged = False
                v.not_run = [_check_word(v.cell, n) for n in sorted(
                    (n for n in v.cell.checks if registry.is_measurement(n)
                     and _pair_of(n) in v.routes), key=registry.order_key)]
        qualified = timed
    if not qualified:
        return Pick(purpose, None, _no_pick_why(purpose, verdicts),
                    [(v.cell.cell_id, str(v.why_not)) for v in verdicts])
    if purpose.goal == FASTEST:
        best = max(qualified, key=lambda v: (v.speed[1] if v.speed else 0.0, v.cell.newest_key))
        assert best.speed is not None
        why = (f"fastest of {len(qualified)} timed qualifying cell"
               f"{'s' if len(qualified) != 1 else ''}: {best.speed[0]} "
               f"{best.speed[1]:.1f} tokens/s ({_route_word(_pair_of(best.speed[0]))})")
    else:
        best = max(qualified, key=lambda v: _newest_key(v, purpose))
        why = (f"newest of {len(qualified)} qualifying cell{'s' if len(qualified) != 1 else ''} "
               "(" + ", ".join(f"{n} {best.cell.version(n)}" for n in purpose.versions)
               + f"; {_caveat_count(best)}); trains "
               + " and ".join(_route_word(pair) for pair in best.routes))
    passed = []
    for v in verdicts:
        if v is best:
            continue
        if v.why_not is None:
            v.why_not = _slower(v, best) if purpose.goal == FASTEST else _older(v, best, purpose)
        passed.append((v.cell.cell_id, v.why_not))
    return Pick(purpose, best, why, passed)


def _no_pick_why(purpose: Purpose, verdicts: list[Verdict]) -> str:
    """Why a purpose has no pick: "no cell qualifies" when cells were judged for it and failed;
    "not judged in this run" when none was (its checks skipped, e.g. needs a GPU, or did not run),
    naming those checks."""
    judged = [v for v in verdicts if v.judged]
    unjudged = [v for v in verdicts if not v.judged]
    words = list(dict.fromkeys(w for v in unjudged for w in v.not_run))
    shown = "; ".join(words[:6]) + (f"; and {len(words) - 6} more" if len(words) > 6 else "")
    if not judged:
        return (f"{NOT_JUDGED_IN_RUN}: " + (shown or "no cell ran its checks")
                + f" ({len(unjudged)} cell{'s' if len(unjudged) != 1 else ''})")
    head = ("no cell qualifies" if purpose.goal == NEWEST
            else "no qualifying cell has a throughput figure")
    if unjudged:
        head += (f" ({len(judged)} judged and failed; not judged in {len(unjudged)}: "
                 f"{shown or 'no result'})")
    return head


def plan(run_dir: Path, summary: dict[str, Any],
         pins_for: Sequence[str | Purpose] = ()) -> list[Pick]:
    cells = collect_cells(Path(run_dir), summary)
    return [choose(cells, purpose) for purpose in purposes_for(cells, pins_for)]


def plan_json(picks: list[Pick]) -> list[dict[str, Any]]:
    """summary.json `pins`: per purpose the pick (or why none), its caveats, and every why-not."""
    out = []
    for pick in picks:
        v = pick.verdict
        out.append({
            "purpose": pick.purpose.key, "title": pick.purpose.title,
            "file": f"{PINS_DIR}/{pick.file_name}" if v else None,
            "cell": v.cell.cell_id if v else None,
            "status": v.cell.status if v else None,
            "verdict": v.cell.verdict if v else None,
            # False: nothing was judged for this purpose ("not judged in this run")
            "judged": v is not None or not pick.why.startswith(NOT_JUDGED_IN_RUN),
            "why": pick.why,
            "tokens_per_s": v.speed[1] if v and v.speed else None,
            "caveats": [c.text for c in v.caveats] if v else [],
            "claims": [c.text for c in v.claims] if v else [],
            "why_not": [{"cell": cid, "why": why} for cid, why in pick.passed_over],
        })
    return out


# --- writing
# -------------------------------------------------------------------------------------------

def write_pins_and_say(run_dir: Path, echo: Any, pins_for: Sequence[str | Purpose] = ()) -> None:
    """`write_pins`, its message echoed. A failure there is said, never raised: a harness bug in
    pins must not cost a run its report, nor the nightly its verdict."""
    try:
        echo(write_pins(run_dir, pins_for=pins_for).message)
    except Exception as exc:  # noqa: BLE001 - said, and the report stands
        echo(f"pins: not written ({type(exc).__name__}: {exc})")


def write_pins(run_dir: Path, *, now: datetime | None = None,
               pins_for: Sequence[str | Purpose] = (), summary: dict[str, Any] | None = None,
               ) -> PinsReport:
    """Write `run_dir/pins/` (replacing an older one) and return what was chosen and why.

    A run where no purpose has a pick writes no pins folder; `message` says why."""
    run_dir = Path(run_dir)
    if summary is None:

        summary = merge(run_dir)
    run_id = (summary.get("run") or {}).get("run_id") or run_dir.name
    picks = plan(run_dir, summary, pins_for)
    pins_dir = run_dir / PINS_DIR
    written = [p for p in picks if p.verdict is not None]
    if not written:
        # pins describe this report only; stale files would mislead
        replace_folder(pins_dir, {})
        counts = ", ".join(f"{n} {status}" for status,
                           n in sorted((summary.get("counts") or {}).items())) or "no cells"
        return PinsReport(None, picks, f"pins: none written: no cell qualifies for any purpose in "
                                       f"run {run_id} ({counts})")
    written_at = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    # the whole folder at once (the old one's files never mix with the new ones)
    files = {pick.file_name: constraints_text(pick, run_id, written_at) for pick in written}
    files["README.md"] = readme_text(picks, run_id, written_at)
    replace_folder(pins_dir, files)
    names = ", ".join(p.file_name for p in written)
    missing = [p.purpose.key for p in picks if p.verdict is None]
    message = (f"pins: {len(written)} constraints file{'s' if len(written) != 1 else ''} in "
               f"{pins_dir}: {names}")
    if missing:
        message += f"; none for {', '.join(missing)} (pins/README.md says why)"
    return PinsReport(pins_dir, picks, message)


def constraints_text(pick: Pick, run_id: str, written_at: str) -> str:
    v = pick.verdict
    assert v is not None
    c = v.cell
    env = c.environment
    gpu = env.get("gpu") or ("none (device "
                             f"{env.get('device')})" if env.get("device") else "unknown")
    gpu_bits = [gpu]
    if env.get("cuda"):
        gpu_bits.append(f"CUDA {env['cuda']}")
    if env.get("driver"):
        gpu_bits.append(f"driver {env['driver']}")
    counts: dict[str, int] = {}
    for record in c.checks.values():
        counts[str(record.get("status"))] = counts.get(str(record.get("status")), 0) + 1
    throughput = (f"{v.speed[0]} {v.speed[1]:.1f} tokens/s" if v.speed else
                  ", ".join(f"{n} {t:.1f} tokens/s" for n, t in c.speeds.items())
                  or "not measured (no throughput check ran for this cell)")
    header = [
        f"# pinmatrix constraints: {pick.purpose.title}",
        f"# pick: {pick.why}",
        f"# cell: {c.cell_id} (cell status: {c.verdict or c.status})",
        f"# run: {run_id}; cell finished: {c.finished or 'unknown'}; written: {written_at} (UTC)",
        f"# GPU: {', '.join(gpu_bits)}",
        f"# throughput: {throughput}",
        "# checks: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
    ]
    for item in c.not_judged:  # a verdict claims only what ran
        header.append(f"# not judged on this host: {item['what']} ({_short(item['why'], 80)}; "
                      f"checks: {', '.join(item['checks']) or 'none in the result'})")
    if v.caveats:
        header.append("# caveats (checks that failed in this cell; this pin does not need them):")
        header += [f"#   - {cav.text}" for cav in v.caveats]
    else:
        header.append("# caveats: none (every other check passed or was skipped)")
    if v.claims:
        header.append("# guide claims that do not hold on this stack (summary.md, Claims tested):")
        header += [f"#   - {cav.text}" for cav in v.claims]
    header.append(
        "# use: pip install -c THIS_FILE PACKAGE...   or   uv pip install -c THIS_FILE PACKAGE...")
    index = torch_index_hint((c.locked or {}).get("torch"))
    if index:
        header.append(f"# torch {(c.locked or {})['torch']} is a PyTorch-index build: add "
                      f"--extra-index-url {index} "
                      f"(pip) or --index {index} (uv), or a wheelhouse with --find-links")
    return "\n".join(header + c.lock_lines) + "\n"


def readme_text(picks: list[Pick], run_id: str, written_at: str) -> str:
    lines = [f"# Pins by purpose, run {run_id}", "",
             f"Written {written_at} (UTC) by pinmatrix from this run's results and locks.",
             "Each file is a cell's full lock as a constraints file:", "",
             "    pip install -c FILE transformers peft ...",
             "    uv pip install -c FILE transformers peft ...", "",
             "| purpose | file | cell | status | why |", "|---|---|---|---|---|"]
    for pick in picks:
        c = pick.cell
        file_cell = (f"[{pick.file_name}]({pick.file_name}) | `{c.cell_id}` | "
                     f"{_md(c.verdict or c.status)}" if c
                     else "none | | ")
        lines.append(f"| {pick.purpose.title} | {file_cell} | {_md(pick.why)} |")
    lines += pick_details_md(picks)
    return "\n".join(lines) + "\n"


def pins_markdown(entries: list[dict[str, Any]]) -> list[str]:
    """summary.md's "Pins by purpose" section from summary.json `pins`."""
    out = ["## Pins by purpose", "",
           "Constraints files in `pins/` (pinmatrix/report/pins.py): a `partial` cell qualifies "
           "when what failed is not needed for the purpose; its file lists each caveat.", "",
           "| purpose | file | cell | why |", "|---|---|---|---|"]
    for e in entries:
        file_word = f"`{e['file']}`" if e["file"] else "none"
        cell_word = f"`{e['cell']}`" if e["cell"] else ""
        out.append(f"| {e['title']} | {file_word} | {cell_word} | {_md(e['why'])} |")
    return out + pick_details_md(entries) + [""]


def pick_details_md(picks: Sequence[Pick | dict[str, Any]]) -> list[str]:
    """Per purpose: the caveats of its pick and the why-not of every cell passed over (markdown);
    takes Picks or summary.json `pins` entries."""
    out: list[str] = []
    for item in picks:
        entry = plan_json([item])[0] if isinstance(item, Pick) else item
        out += ["", f"### {entry['title']}", ""]
        if entry["cell"]:
            out.append(f"Pick: `{entry['cell']}` ({_md(entry.get('verdict') or entry['status'])}): "
                       f"{_md(entry['why'])}")
        else:
            out.append(f"No pick: {_md(entry['why'])}.")
        if entry["caveats"]:
            out += ["", "Caveats:", *(f"- {_md(t)}" for t in entry["caveats"])]
        if entry["claims"]:
            out += ["", "Guide claims that do not hold on it:",
                    *(f"- {_md(t)}" for t in entry["claims"])]
        if entry["why_not"]:
            out += ["", "Why not:",
                    *(f"- `{w['cell']}`: {_md(w['why'])}" for w in entry["why_not"])]
    return out


# --- words
# -------------------------------------------------------------------------------------------

def _trains(statuses: dict[str, str], pair: tuple[str, str]) -> bool:
    loads, trains = registry.TRAINING[pair]
    return (all(statuses.get(n) == "pass" for n in loads)
            and any(statuses.get(n) == "pass" for n in trains))


def _route_of(name: str) -> str | None:
    entry = registry.lookup(name)
    return entry.route if entry else None


def _pair_of(name: str) -> tuple[str, str] | None:
    entry = registry.lookup(name)
    return (entry.route, entry.backend) if entry and entry.route and entry.backend else None


def _route_word(pair: tuple[str, str] | None) -> str:
    if pair is None:
        return "unknown route"
    route, backend = pair
    return f"{ROUTE_WORDS.get(route, route)} via {BACKEND_WORDS.get(backend, backend)}"


def _check_word(cell: Cell, name: str) -> str:
    record = cell.checks.get(name)
    if record is None:
        return f"{name} did not run"
    status = str(record.get("status"))
    detail = record.get("signature") or (_short(record.get("reason"), 80)
                                         if status != "fail" else None)
    return f"{name} {status}" + (f" [{detail}]" if detail else "")


def _newest_key(v: Verdict, purpose: Purpose) -> tuple[Any, ...]:
    """Newest versions first (purpose.versions); among equal versions the cell with fewer caveats,
    then the smaller install (fewer locked packages), then the cell id."""
    return (tuple(version_key(v.cell.version(n)) for n in purpose.versions)
            + (-_failing(v), -len(v.cell.lock_lines), v.cell.cell_id))


def _failing(v: Verdict) -> int:
    return sum(len(c.checks) for c in v.caveats)


def _caveat_count(v: Verdict) -> str:
    n = _failing(v)
    return f"{n} check{'s' if n != 1 else ''} in its caveats"


def _older(v: Verdict, best: Verdict, purpose: Purpose) -> str:
    for name in purpose.versions:
        mine, theirs = v.cell.version(name), best.cell.version(name)
        if mine != theirs:
            return f"older than the pick: {name} {mine} < {theirs}"
    versions = ", ".join(f"{n} {v.cell.version(n)}" for n in purpose.versions)
    if _failing(v) != _failing(best):
        return (f"same versions as the pick ({versions}), more caveats: {_failing(v)} failing "
                f"checks against {_failing(best)}")
    if len(v.cell.lock_lines) != len(best.cell.lock_lines):
        return (f"same versions as the pick ({versions}) and as many caveats, a bigger install: "
                f"{len(v.cell.lock_lines)} packages against {len(best.cell.lock_lines)}")
    return f"same versions as the pick ({versions}); ties go to the cell id"


def _slower(v: Verdict, best: Verdict) -> str:
    assert v.speed is not None and best.speed is not None
    pct = 100.0 * (1 - v.speed[1] / best.speed[1]) if best.speed[1] else 0.0
    return (f"slower than the pick: {v.speed[0]} {v.speed[1]:.1f} tokens/s against "
            f"{best.speed[1]:.1f} ({pct:.1f}% slower)")


def _short(text: Any, limit: int = 160) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def lock_entries(lock_text: str) -> list[str]:
    """`name==version[; marker]` for every pinned package of a uv lock (hashes, comments, options
    dropped)."""
    entries = []
    for raw in lock_text.splitlines():
        match = LOCK_LINE.match(raw.strip())
        if not match or raw[:1].isspace():
            continue  # continuation lines (--hash=...) and `# via` notes are indented
        name, version, marker = match.group(1), match.group(2), (match.group(3) or "").strip()
        entries.append(f"{name}=={version}" + (f" {marker}" if marker else ""))
    return entries




def torch_index_hint(torch_version: str | None) -> str | None:
    """The PyTorch index of a local-variant torch (2.8.0+cu128 -> .../whl/cu128); None for a PyPI
    build."""
    if not torch_version or "+" not in torch_version:
        return None
    local = torch_version.split("+", 1)[1]
    return f"https://download.pytorch.org/whl/{local}" if _TORCH_LOCAL.match(local) else None



def _name_of(line: str) -> str:
    return line.split("==", 1)[0]


def _version_of(line: str) -> str:
    return line.split("==", 1)[1].split(";", 1)[0].strip()
