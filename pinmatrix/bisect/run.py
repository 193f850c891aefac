"""`python -m pinmatrix bisect PACKAGE GOOD..BAD [--check CHECK_OR_GROUP ...] [selectors] [options]`

Each step is a real cell: the selected cell with PACKAGE at one release, written as a one-cell
matrix
(`matrices/<release>.yaml` in the bisect folder), resolved, prepared and probed through the same
pipeline as `nox -s matrix` (pinmatrix/run/pipeline.py) with only the named checks' groups. The
steps'
run folders live in the user's reports folder, so the result cache answers for any release already
probed there (a step whose content hash was judged costs nothing), and `--cpu` runs on CPU.

A step's verdict, from the named checks of its result: `bad` when one failed (its signature and
message
kept), `good` when all passed, `unresolvable` when uv found no install (its words kept), `infra`
when
the machine could not judge it. pinmatrix/bisect/search.py does the search.

Output: `reports/<id>-bisect-PACKAGE/bisect.json` and `bisect.md`: the first bad release, the last
good
one, the two results side by side (statuses, signatures, messages), the release notes link of the
first
bad one, the releases in range (yanked and pre-releases left out, with a note) and the probes run.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from pinmatrix.bisect.base_cell import (
    base_candidates,
    choose_base,
    companion_table,
    companions_at,
    describe_pins,
)
from pinmatrix.bisect.pair import bisect_pair, render_pair
from pinmatrix.bisect.releases import (
    DEFAULT_INDEX,
    ReleaseIndexUnreachable,
    ReleaseRange,
    fetch_index_files,
    releases_between,
)
from pinmatrix.bisect.search import BisectResult, Judgement, RangeError, bisect_releases
from pinmatrix.bisect.target import FACT_CHECKS, Target, TargetError, judge_checks, signature_target
from pinmatrix.errors import BadInput, PinmatrixError, UsageError
from pinmatrix.fsio import write_json_atomic, write_text_atomic
from pinmatrix.matrix.load import load_matrix
from pinmatrix.results import CellResult, load_result
from pinmatrix.run.flaky import group_of
from pinmatrix.run.folder import new_run_dir
from pinmatrix.run.options import BisectOptions, Echo, RunOptions
from pinmatrix.run.pipeline import load_cells, run_matrix

__all__ = ["BisectSpec", "parse_spec", "run_bisect", "release_notes_url", "EXIT_INFRA_BISECT"]

# A bisect that could not be judged (index unreachable, a step hit infra) exits with the harness
# code:
# nothing about the stack was learned.
EXIT_INFRA_BISECT = 1
RELEASE_NOTES = {
    "transformers": "https://github.com/huggingface/transformers/releases/tag/v{version}",
    "peft": "https://github.com/huggingface/peft/releases/tag/v{version}",
    "trl": "https://github.com/huggingface/trl/releases/tag/v{version}",
    "accelerate": "https://github.com/huggingface/accelerate/releases/tag/v{version}",
    "unsloth": "https://github.com/unslothai/unsloth/releases",
    "torch": "https://github.com/pytorch/pytorch/releases/tag/v{version}",
    "xformers": "https://github.com/facebookresearch/xformers/releases/tag/v{version}",
    "bitsandbytes": "https://github.com/bitsandbytes-foundation/bitsandbytes/releases/tag/{version}",
}


class BisectInputError(BadInput):
    """A bisect request that cannot be run as given (exit 2)."""


@dataclasses.dataclass(frozen=True)
class BisectSpec:
    package: str
    good: str
    bad: str
    selectors: tuple[str, ...]
    checks: tuple[str, ...]  # check names or group names; empty: the matrix's groups
    signature: str | None = None  # bad only when a named check fails with this signature
    pre: bool = False
    exhaustive: bool = False
    first_good: bool = False  # the first release where the target holds (old end bad, new good)
    fact: str | None = None  # bad only where this surface fact (or grouped cause) fails
    plan: bool = False  # list the releases and the chosen stack, probe nothing
    # a second package that moves with PACKAGE (unsloth and the trl it caps): (name, old, new)
    together: tuple[str, str, str] | None = None


def parse_spec(
    positionals: Sequence[str],
    checks: Sequence[str] = (),
    *,
    pre: bool = False,
    exhaustive: bool = False,
    signature: str | None = None,
    first_good: bool = False,
    fact: str | None = None,
    plan: bool = False,
    together: str | None = None,
) -> BisectSpec:
    """PACKAGE GOOD..BAD [selectors...] from the command's positional arguments (with
    `first_good`: OLD..NEW, the old end bad and the new one good)."""
    if len(positionals) < 2:
        raise UsageError(
            "bisect needs PACKAGE GOOD..BAD, e.g. `bisect transformers 4.57.6..5.17.0`"
        )
    package, span, *selectors = positionals
    good, sep, bad = span.partition("..")
    if not sep or not good or not bad or ".." in bad:
        raise UsageError(f"bisect {package} {span!r}: the range is GOOD..BAD, e.g. 4.57.6..5.17.0")
    for end in (good, bad):
        try:
            Version(end)
        except (InvalidVersion, ValueError):
            raise UsageError(f"bisect {package} {span!r}: {end[:60]!r} is not a version") from None
    if signature and fact:
        raise UsageError("bisect: --signature and --fact each name the break to follow; give one")
    pair: tuple[str, str, str] | None = None
    if together:
        other, eq, other_span = together.partition("=")
        old, dots, new = other_span.partition("..")
        if not eq or not dots or not other or not old or not new or other == package:
            raise UsageError(
                f"bisect --with {together[:80]!r}: the other package is PKG=OLD..NEW, e.g. "
                "trl=0.24.0..1.15.0"
            )
        for end in (old, new):
            try:
                Version(end)
            except (InvalidVersion, ValueError):
                raise UsageError(f"bisect --with: {end[:60]!r} is not a version") from None
        pair = (other, old, new)
    return BisectSpec(
        package,
        good,
        bad,
        tuple(selectors),
        tuple(checks),
        signature,
        pre,
        exhaustive,
        first_good,
        fact,
        plan,
        pair,
    )


def release_notes_url(package: str, version: str) -> str:
    template = RELEASE_NOTES.get(package.lower())
    return (
        template.format(version=version)
        if template
        else f"https://pypi.org/project/{package}/{version}/"
    )


def _group_of(check: str, groups: Sequence[str]) -> str:
    group = group_of(check, groups)
    if group is None:
        raise BisectInputError(
            f"--check {check!r}: neither a check group ({', '.join(groups)}) nor a "
            "check name of one"
        )
    return group


def _step_matrix(
    matrix: Any, base_pins: dict[str, str], package: str, version: str, groups: Sequence[str]
) -> dict[str, Any]:
    """A one-cell matrix: the base cell's axis values, PACKAGE at `version`, the named groups."""
    return {
        "axes": {
            axis: [version if axis == package else value] for axis, value in base_pins.items()
        },
        "models": {
            m.name: {"repo": m.repo, "revision": m.revision, "kind": m.kind}
            | ({"unpinned": m.unpinned} if getattr(m, "unpinned", "") else {})
            for m in matrix.models
        },
        "checks": list(groups),
        "settings": dict(matrix.settings),
    }


def _target_of(spec: BisectSpec) -> Target:
    if spec.fact:
        return Target("fact", spec.fact)
    if spec.signature:
        try:
            return signature_target(spec.signature)
        except TargetError as exc:
            raise BisectInputError(str(exc)) from None
    return Target("check")


def _judge_result(
    result: CellResult, checks: Sequence[str], groups: Sequence[str], signature: str | None = None
) -> Judgement:
    """A step's verdict on the named checks (or one signature among them): target.py judges."""
    target = Target("signature", signature) if signature else Target("check")
    return judge_checks(result, checks, groups, target)


@dataclasses.dataclass
class BisectPlan:
    """What a bisect will do before it probes: the release list, the stacks it may hold, the
    companions that follow PACKAGE, and what it judges by."""

    matrix: Any
    axes: list[str]
    candidates: list[dict[str, str]]  # held stacks, newest first
    companions: dict[str, dict[str, str]]  # PACKAGE anchor -> companion values
    groups: list[str]
    checks: list[str]
    step_groups: list[str]
    target: Target
    listed: ReleaseRange

    def ends(self, first_good: bool) -> tuple[str, str]:
        """(the end that must be good, the other end)."""
        releases = self.listed.releases
        return (releases[-1], releases[0]) if first_good else (releases[0], releases[-1])

    def step_pins(self, index: int, package: str, version: str) -> dict[str, str]:
        return {
            **self.candidates[index],
            package: version,
            **companions_at(self.companions, version),
        }


@dataclasses.dataclass(frozen=True)
class StepContext:
    spec: BisectSpec
    opts: RunOptions
    plan: BisectPlan
    folder: Path
    echo: Echo


def run_step(
    context: StepContext,
    pins: dict[str, str],
    version: str,
    suffix: str,
    steps: dict[str, dict[str, Any]],
) -> Judgement:
    """One step: a one-cell matrix with these pins, run through the pipeline, judged on the
    target; its record goes into `steps` under `version` (the release, or the pair's label)."""

    spec, opts, plan, folder, echo = (
        context.spec,
        context.opts,
        context.plan,
        context.folder,
        context.echo,
    )
    checks = plan.checks
    step = folder / "matrices" / f"{version}{suffix}.yaml"
    release = pins[spec.package]
    write_text_atomic(
        step,
        yaml.safe_dump(
            _step_matrix(plan.matrix, pins, spec.package, release, plan.step_groups),
            sort_keys=False,
        ),
    )
    echo(f"bisect {spec.package}: probing {version}{suffix} ({len(steps) + 1} so far)")
    step_opts = dataclasses.replace(
        opts,
        matrix_path=step,
        selectors=(),
        label=f"bisect-{spec.package}-{version}{suffix}",
        run_dir=None,
        resume=None,
        shard=None,
    )
    summary = run_matrix(step_opts, echo=lambda line: echo(f"  {line}"))
    outcome = summary.outcomes[0] if summary.outcomes else None
    record: dict[str, Any] = {
        "run": str(summary.run_dir),
        "cell": outcome.cell if outcome else None,
    }
    if outcome is None:
        judgement = Judgement(version, "infra", "the step ran no cell")
    elif outcome.status == "unresolvable":
        judgement = Judgement(version, "unresolvable", outcome.reason or "")
    elif outcome.status == "infra" or not outcome.result:
        judgement = Judgement(version, "infra", outcome.reason or "no result")
    else:
        loaded = load_result(Path(summary.run_dir) / outcome.result)
        if not isinstance(loaded, CellResult):
            judgement = Judgement(version, "infra", f"damaged result: {loaded.why}")
        else:
            judgement = dataclasses.replace(
                judge_checks(loaded, checks, plan.groups, plan.target), version=version
            )
            record["checks"] = {
                c["name"]: {
                    "status": c["status"],
                    "signature": (c.get("error") or {}).get("signature"),
                    "message": str(
                        (c.get("error") or {}).get("message") or c.get("reason") or ""
                    )[:300],
                }
                for c in loaded.checks
            }
            record["reused_from"] = loaded.data["cell"].get("reused_from")
    record["verdict"], record["detail"] = judgement.verdict, judgement.detail
    if judgement.check:  # the check that decided, and its own message (bisect.md quotes it)
        record["judged_by"], record["message"] = judgement.check, judgement.message
    steps[version] = record
    echo(
        f"bisect {spec.package} {version}: {judgement.verdict}"
        + (f" ({judgement.detail[:160]})" if judgement.detail else "")
    )
    return judgement


def _index_files(opts: RunOptions) -> Callable[[str], list[dict[str, Any]]]:
    """The package index the run uses (--index-url, else PyPI), with its CA bundle."""
    sources = opts.sources
    index = sources.index_url if sources and sources.index_url else DEFAULT_INDEX
    ca = str(sources.ca_bundle) if sources and getattr(sources, "ca_bundle", None) else None
    return lambda package: fetch_index_files(package, index, ca_file=ca)


def plan_bisect(
    spec: BisectSpec,
    opts: RunOptions,
    *,
    list_files: Callable[[str], list[dict[str, Any]]] | None = None,
) -> BisectPlan:
    """Everything a bisect decides without probing; BisectInputError on bad input."""

    matrix, cells = load_cells(
        opts.matrix_path, spec.selectors, cpu=opts.cpu, snapshot=opts.snapshot, sources=opts.sources
    )
    if spec.package not in matrix.axes:
        raise BisectInputError(
            f"bisect {spec.package}: not an axis of {opts.matrix_path} ({', '.join(matrix.axes)})"
        )
    if not cells:
        raise BisectInputError(f"bisect {spec.package}: the selection matches no cell")
    axes = list(matrix.axes)
    pins = [dict(c.pins) for c in cells]
    table = companion_table(pins, axes, spec.package)
    companions = sorted({k for values in table.values() for k in values})
    candidates = base_candidates(pins, axes, spec.package, companions)
    target = _target_of(spec)
    groups = list(matrix.checks)
    default = [c for c in FACT_CHECKS if target.kind == "fact"] or groups
    checks = list(spec.checks) or default
    step_groups = sorted(
        {c if c in groups else _group_of(c, groups) for c in checks}, key=groups.index
    )
    files = list_files or _index_files(opts)
    try:
        listed: ReleaseRange = releases_between(
            spec.package, spec.good, spec.bad, pre=spec.pre, files=files
        )
    except ValueError as exc:
        raise BisectInputError(f"bisect {spec.package}: {exc}") from None
    return BisectPlan(
        matrix, axes, candidates, table, groups, checks, step_groups, target, listed
    )


def run_bisect(
    spec: BisectSpec,
    opts: RunOptions,
    echo: Echo = print,
    *,
    list_files: Callable[[str], list[dict[str, Any]]] | None = None,
    budget: int | None = None,
) -> tuple[Path, BisectResult]:
    """Run the search; write bisect.json and bisect.md; return (folder, result). RangeError and
    BisectInputError are bad input; ReleaseIndexUnreachable propagates (infra)."""

    started = time.monotonic()
    plan = plan_bisect(spec, opts, list_files=list_files)
    listed, checks = plan.listed, plan.checks
    folder = new_run_dir(opts.reports_dir, f"bisect-{spec.package}")
    echo(_header(spec, plan))
    context = StepContext(spec, opts, plan, folder, echo)
    if spec.together:
        return _run_together(context, list_files, started)
    steps_of: dict[int, dict[str, dict[str, Any]]] = {}

    def judge_with(index: int) -> Callable[[str], Judgement]:
        steps = steps_of.setdefault(index, {})
        memo: dict[str, Judgement] = {}

        def judge(version: str) -> Judgement:
            if version not in memo:
                pins = plan.step_pins(index, spec.package, version)
                suffix = f".base{index}" if index else ""
                memo[version] = run_step(context, pins, version, suffix, steps)
            return memo[version]

        return judge

    good_end, other_end = plan.ends(spec.first_good)
    chosen, tried = choose_base(plan.candidates, good_end, other_end, judge_with)
    base = {
        "chosen": describe_pins(plan.candidates[chosen], plan.axes),
        "candidates": len(plan.candidates),
        "tried": [
            {**t, "stack": describe_pins(plan.candidates[t["candidate"]], plan.axes)}
            for t in tried
        ],
        "companions": plan.companions,
        "trial_probes": _probes_now(
            s for i, steps in steps_of.items() if i != chosen for s in steps.values()
        ),
    }
    echo(
        f"bisect {spec.package}: holding {base['chosen']}"
        + (
            f" (the newest of {len(plan.candidates)} stacks good at {good_end})"
            if len(plan.candidates) > 1
            else ""
        )
        + (
            f"; {', '.join(sorted({k for v in plan.companions.values() for k in v}))} follow "
            f"{spec.package} (the matrix's include rules)"
            if plan.companions
            else ""
        )
    )
    steps = steps_of.setdefault(chosen, {})
    try:
        result = bisect_releases(
            listed.releases,
            judge_with(chosen),
            exhaustive=spec.exhaustive,
            budget=budget,
            first_good=spec.first_good,
        )
    except RangeError as exc:
        _write(folder, spec, listed, None, steps, checks, error=str(exc), plan=plan, base=base)
        raise BisectInputError(
            f"bisect {spec.package}: {exc} (evidence: {folder / 'bisect.md'})"
        ) from None
    base["wall_s"] = round(time.monotonic() - started, 1)  # the whole bisect, choosing included
    _write(folder, spec, listed, result, steps, checks, plan=plan, base=base)
    return folder, result


def _probes_now(steps: Any) -> int:
    """Steps that ran a probe now: judged (good, bad, infra) and not taken from the cache."""
    return sum(
        1
        for step in steps
        if step.get("verdict") in ("good", "bad", "infra") and not step.get("reused_from")
    )


def _header(spec: BisectSpec, plan: BisectPlan) -> str:
    listed = plan.listed
    question = "first good" if spec.first_good else "first bad"
    return (
        f"bisect {spec.package} {spec.good}..{spec.bad} ({question} release): "
        f"{len(listed.releases)} releases in range"
        + (f" (yanked, left out: {', '.join(listed.yanked)})" if listed.yanked else "")
        + (
            f" ({len(listed.prereleases_left_out)} pre-releases left out; --pre keeps them)"
            if listed.prereleases_left_out
            else ""
        )
        + f"; checks: {', '.join(plan.checks)}"
        + (f"; following {plan.target.describe()}" if plan.target.kind != "check" else "")
    )


def _write(
    folder: Path,
    spec: BisectSpec,
    listed: ReleaseRange,
    result: BisectResult | None,
    steps: dict[str, dict[str, Any]],
    checks: Sequence[str],
    error: str | None = None,
    plan: BisectPlan | None = None,
    base: dict[str, Any] | None = None,
) -> None:
    doc: dict[str, Any] = {
        "package": spec.package,
        "good": spec.good,
        "bad": spec.bad,
        "direction": "first-good" if spec.first_good else "first-bad",
        "followed": plan.target.describe() if plan else "the named checks",
        "fact": spec.fact,
        "base_cell": base,
        "checks": list(checks),
        "selectors": list(spec.selectors),
        "exhaustive": spec.exhaustive,
        "pre": spec.pre,
        "signature": spec.signature,
        "releases_in_range": listed.releases,
        "yanked_left_out": listed.yanked,
        "prereleases_left_out": listed.prereleases_left_out,
        "steps": steps,
        "error": error,
    }
    if result is not None:
        doc.update(
            first_bad=result.first_bad,
            last_good=result.last_good,
            monotonic=result.monotonic,
            stopped=result.stopped,
            first_good=result.first_good,
            last_bad=result.last_bad,
            judgements=result.probes,
            # a step whose result came from the cache ran no probe now
            probes_run=_probes_now(steps.get(v, {}) for v in result.order),
            order=result.order,
            unresolvable=[{"release": j.version, "why": j.detail} for j in result.unresolvable],
            release_notes=release_notes_url(spec.package, result.answer[1])
            if result.answer
            else None,
        )
        doc["probes_from_cache"] = doc["judgements"] - doc["probes_run"]
    write_json_atomic(folder / "bisect.json", doc)
    write_text_atomic(folder / "bisect.md", render_markdown(doc))


def _answer(doc: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(switch label, switch release, before label, before release) of a finished bisect."""
    if doc.get("direction") == "first-good":
        if doc.get("first_good") and doc.get("last_bad"):
            return "First good", doc["first_good"], "last bad", doc["last_bad"]
        return None
    if doc.get("first_bad") and doc.get("last_good"):
        return "First bad", doc["first_bad"], "last good", doc["last_good"]
    return None


def render_markdown(doc: dict[str, Any]) -> str:
    pkg = doc["package"]
    answer = _answer(doc)
    out = [f"# bisect {pkg} {doc['good']}..{doc['bad']}", ""]
    if doc.get("error"):
        out += [f"**Not run to the end: {doc['error']}**", ""]
    elif answer:
        label, switch, before_label, before = answer
        out += [
            f"**{label} release: {pkg} {switch}** ({before_label}: {before}); "
            f"release notes: {doc['release_notes']}",
            "",
        ]
        if doc.get("monotonic") is None:
            switch = "bad to good" if doc.get("direction") == "first-good" else "good to bad"
            out += [
                f"Binary search assumes one switch from {switch}; `--all` probes every release "
                "and checks that.",
                "",
            ]
    elif doc.get("stopped"):
        out += [f"**No answer: {doc['stopped']}**", ""]
    judged = doc.get("judgements", len(doc["steps"]))
    run_now = doc.get("probes_run", len(doc["steps"]))
    out += [
        f"- checks: {', '.join(doc['checks'])}"
        + (f"; bad means failing with `{doc['signature']}`" if doc.get("signature") else "")
        + (f"; bad means the fact `{doc['fact']}` fails" if doc.get("fact") else ""),
    ]
    if doc.get("followed") and doc["followed"] != "the named checks":
        out.append(f"- followed: {doc['followed']}")
    if doc.get("direction") == "first-good":
        out.append("- question: the first release where it holds (a check absent there: bad)")
    base = doc.get("base_cell") or {}
    if base.get("chosen"):
        out.append(
            f"- held stack: {base['chosen']}"
            + (
                f" (the newest of {base['candidates']} stacks good at the good end; "
                f"{base.get('trial_probes', 0)} probes run now to choose it)"
                if base.get("candidates", 1) > 1
                else ""
            )
        )
        companions = sorted({k for v in (base.get("companions") or {}).values() for k in v})
        if companions:
            out.append(
                f"- following {pkg} (the matrix's include rules): {', '.join(companions)}"
            )
    out += [
        f"- releases in range: {len(doc['releases_in_range'])} "
        f"({', '.join(doc['releases_in_range'])})",
        f"- releases judged: {judged}; probes run now: {run_now}; "
        f"from the result cache: {judged - run_now}"
        + (f"; wall time {base['wall_s']} s" if base.get("wall_s") is not None else ""),
    ]
    if doc.get("yanked_left_out"):
        out.append(f"- yanked, left out: {', '.join(doc['yanked_left_out'])}")
    if doc.get("prereleases_left_out"):
        out.append(
            f"- pre-releases left out (`--pre` keeps them): "
            f"{', '.join(doc['prereleases_left_out'])}"
        )
    for item in doc.get("unresolvable") or []:
        out.append(
            f"- unresolvable, left out of the search: {item['release']}: "
            f"{' '.join(str(item['why']).split())[:300]}"
        )
    out += ["", "| release | verdict | detail | run |", "|---|---|---|---|"]
    for version in sorted(doc["steps"], key=Version):
        step = doc["steps"][version]
        detail = " ".join(str(step.get("detail") or "").split()).replace("|", "\\|")[:200]
        out.append(f"| {version} | {step['verdict']} | {detail} | `{Path(step['run']).name}` |")
    if answer:
        before_step, switch_step = doc["steps"].get(answer[3], {}), doc["steps"].get(answer[1], {})
        names = sorted(set(before_step.get("checks") or {}) | set(switch_step.get("checks") or {}))
        out += [
            "",
            f"## {answer[3]} against {answer[1]}",
            "",
            f"| check | {answer[3]} | {answer[1]} |",
            "|---|---|---|",
        ]
        for name in names:
            cells = []
            for side in (before_step, switch_step):
                c = (side.get("checks") or {}).get(name)
                cells.append(
                    "·"
                    if c is None
                    else c["status"] + (f" `{c['signature']}`" if c.get("signature") else "")
                )
            out.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
        bad_step = before_step if doc.get("direction") == "first-good" else switch_step
        bad_label = "Last bad" if doc.get("direction") == "first-good" else "First bad"
        # the bisected check's own message, never another check's
        check = bad_step.get("judged_by")
        message = bad_step.get("message") or ""
        if check:
            out += ["", f"{bad_label} message (`{check}`): {' '.join(message.split())[:300]}"]
    return "\n".join(out) + "\n"


def bisect_command(options: BisectOptions, opts: RunOptions) -> int:
    """The CLI entry: exit 0 with an answer (or a stated non-monotonic/infra stop written down), 2
    on bad
    input, 1 when nothing could be judged."""

    spec = parse_spec(
        list(opts.selectors),
        list(options.check),
        pre=options.pre,
        exhaustive=options.all,
        signature=options.signature,
        first_good=options.first_good,
        fact=options.fact,
        plan=options.plan,
        together=options.together,
    )
    try:
        if spec.plan:
            return _print_plan(spec, plan_bisect(spec, opts))
        folder, result = run_bisect(spec, opts)
        if spec.together:
            return _print_together(folder)
    except ReleaseIndexUnreachable as exc:
        print(f"infra: the package index could not be asked: {exc}")
        return EXIT_INFRA_BISECT
    doc = json.loads((folder / "bisect.json").read_text(encoding="utf-8"))
    print(f"bisect: {folder / 'bisect.md'}")
    if doc.get("followed") and doc["followed"] != "the named checks":
        print(f"followed: {doc['followed']}")
    counts = (
        f"{len(result.releases)} releases in range, {doc['judgements']} judged, "
        f"{doc['probes_run']} probes run now, {doc['probes_from_cache']} from the result cache"
    )
    if result.answer:
        before, switch = result.answer
        label, other = (
            ("first good", "last bad") if spec.first_good else ("first bad", "last good")
        )
        print(f"{label} release: {spec.package} {switch} ({other} {before}); {counts}")
        return 0
    print(f"no answer: {result.stopped}; {counts}")
    return 0 if result.monotonic is False else EXIT_INFRA_BISECT


def _print_together(folder: Path) -> int:
    doc = json.loads((folder / "bisect.json").read_text(encoding="utf-8"))
    print(f"bisect: {folder / 'bisect.md'}")
    for line in doc["together"]["lines"]:
        print(line)
    print(
        f"{doc['judgements']} steps judged, {doc['probes_run']} probes run now, "
        f"{doc['judgements'] - doc['probes_run']} from the result cache"
    )
    answered = any(s.get("switch") for s in doc["together"]["searches"])
    return 0 if answered else EXIT_INFRA_BISECT


def _run_together(
    context: StepContext,
    list_files: Callable[[str], list[dict[str, Any]]] | None,
    started: float,
) -> tuple[Path, BisectResult]:
    """PACKAGE and a second package that moves with it: each bisected with the other held at each
    end of its range (pinmatrix/bisect/pair.py). The held stack is the newest of the selection."""

    spec, plan = context.spec, context.plan
    assert spec.together is not None
    other, old, new = spec.together
    files = list_files or _index_files(context.opts)
    try:
        other_listed = releases_between(other, old, new, pre=spec.pre, files=files)
    except ValueError as exc:
        raise BisectInputError(f"bisect --with {other}: {exc}") from None
    steps: dict[str, dict[str, Any]] = {}
    trials: dict[str, dict[str, Any]] = {}

    def corner_judge(index: int) -> Callable[[str], Judgement]:
        """The held stack is chosen on the corners: both packages at their good (other) ends."""

        def judge_corner(version: str) -> Judgement:
            at = old if version == plan.listed.releases[0] else new
            full = {**plan.step_pins(index, spec.package, version), other: at}
            suffix = f".base{index}" if index else ""
            return run_step(context, full, f"{version}+{other}{at}", suffix, trials)

        return judge_corner

    good_end, other_end = plan.ends(spec.first_good)
    chosen, _tried = choose_base(plan.candidates, good_end, other_end, corner_judge)

    def judge(pins: Any) -> Judgement:
        full = {**plan.step_pins(chosen, spec.package, pins[spec.package]), other: pins[other]}
        label = f"{pins[spec.package]}+{other}{pins[other]}"
        return run_step(context, full, label, f".base{chosen}" if chosen else "", steps)

    context.echo(
        f"bisect {spec.package} with {other} {old}..{new} ({len(other_listed.releases)} releases): "
        f"each with the other held at each end; holding "
        f"{describe_pins(plan.candidates[chosen], plan.axes)}"
    )
    searches, judged = bisect_pair(
        {spec.package: plan.listed.releases, other: other_listed.releases},
        judge,
        first_good=spec.first_good,
    )
    lines = render_pair(searches)
    doc: dict[str, Any] = {
        "package": spec.package,
        "good": spec.good,
        "bad": spec.bad,
        "direction": "first-good" if spec.first_good else "first-bad",
        "followed": plan.target.describe(),
        "checks": plan.checks,
        "held_stack": describe_pins(plan.candidates[chosen], plan.axes),
        "stack_trials": trials,
        "together": {
            "package": other,
            "old": old,
            "new": new,
            "releases": other_listed.releases,
            "lines": lines,
            "searches": [
                {
                    "moving": s.moving,
                    "held": s.held,
                    "held_at": s.held_at,
                    "switch": s.result.answer[1] if s.result and s.result.answer else None,
                    "before": s.result.answer[0] if s.result and s.result.answer else None,
                    "judged": s.result.probes if s.result else None,
                    "error": s.error,
                }
                for s in searches
            ],
        },
        "releases_in_range": plan.listed.releases,
        "judgements": judged,
        "probes_run": _probes_now(steps.values()),
        "steps": steps,
        "wall_s": round(time.monotonic() - started, 1),
    }
    write_json_atomic(context.folder / "bisect.json", doc)
    md = [
        f"# bisect {spec.package} {spec.good}..{spec.bad} with {other} {old}..{new}",
        "",
        "Two packages that move together: each bisected with the other held at each end.",
        "",
        *[f"- {line}" for line in lines],
        "",
        f"- held stack: {doc['held_stack']}; checks: {', '.join(plan.checks)}",
        f"- steps judged: {judged}; probes run now: {doc['probes_run']}; "
        f"wall time {doc['wall_s']} s",
        "",
        "| step | verdict | detail |",
        "|---|---|---|",
    ]
    for label, step in steps.items():
        detail = " ".join(str(step.get("detail") or "").split()).replace("|", "\\|")[:200]
        md.append(f"| {label} | {step['verdict']} | {detail} |")
    write_text_atomic(context.folder / "bisect.md", "\n".join(md) + "\n")
    first = next((s.result for s in searches if s.result), None)
    return context.folder, first or BisectResult(list(plan.listed.releases))


def _print_plan(spec: BisectSpec, plan: BisectPlan) -> int:
    """--plan: what the bisect would probe, and with which stacks; nothing is probed."""
    good_end, other_end = plan.ends(spec.first_good)
    print(
        f"plan: bisect {spec.package} {spec.good}..{spec.bad}: "
        f"{len(plan.listed.releases)} releases in range; checks: {', '.join(plan.checks)}; "
        f"following {plan.target.describe()}"
    )
    for index, stack in enumerate(plan.candidates):
        described = describe_pins(stack, plan.axes)
        print(f"plan: stack {index + 1} of {len(plan.candidates)}: {described}")
    print(
        f"plan: holds the first of these that is good at {good_end} and installs at {other_end}"
    )
    for version in (good_end, other_end):
        follow = companions_at(plan.companions, version)
        if follow:
            print(f"plan: at {version}: {describe_pins(follow, plan.axes)} (include rules)")
    checked = _check_step_matrices(spec, plan, (good_end, other_end))
    print(f"plan: {checked} step matrices written and loaded back (one cell each); nothing probed")
    return 0


def _check_step_matrices(spec: BisectSpec, plan: BisectPlan, versions: Sequence[str]) -> int:
    """Every stack's step matrix at `versions`, loaded as the steps will load it: a bad one is bad
    input now, not after the first probe."""

    count = 0
    with tempfile.TemporaryDirectory(prefix="pinmatrix-bisect-plan-") as tmp:
        for index in range(len(plan.candidates)):
            for version in versions:
                path = Path(tmp) / f"{version}.base{index}.yaml"
                pins = plan.step_pins(index, spec.package, version)
                step = _step_matrix(plan.matrix, pins, spec.package, version, plan.step_groups)
                path.write_text(yaml.safe_dump(step, sort_keys=False), encoding="utf-8")
                cells = load_matrix(path).expand()
                if len(cells) != 1 or cells[0].pins.get(spec.package) != version:
                    raise BisectInputError(f"bisect: the step matrix {path.name} is not one cell")
                count += 1
    return count


__all__ += ["bisect_command", "BisectInputError", "PinmatrixError"]
