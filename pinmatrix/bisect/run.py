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
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from packaging.version import InvalidVersion, Version

from pinmatrix.bisect.releases import (
    DEFAULT_INDEX,
    ReleaseRange,
    fetch_index_files,
    releases_between,
)
from pinmatrix.bisect.search import BisectResult, Judgement, RangeError, bisect_releases
from pinmatrix.errors import BadInput, PinmatrixError, UsageError
from pinmatrix.fsio import write_json_atomic, write_text_atomic
from pinmatrix.results import CellResult, load_result
from pinmatrix.run.options import BisectOptions, Echo, RunOptions

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


def parse_spec(
    positionals: Sequence[str],
    checks: Sequence[str] = (),
    *,
    pre: bool = False,
    exhaustive: bool = False,
    signature: str | None = None,
) -> BisectSpec:
    """PACKAGE GOOD..BAD [selectors...] from the command's positional arguments."""
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
    return BisectSpec(
        package, good, bad, tuple(selectors), tuple(checks), signature, pre, exhaustive
    )


def release_notes_url(package: str, version: str) -> str:
    template = RELEASE_NOTES.get(package.lower())
    return (
        template.format(version=version)
        if template
        else f"https://pypi.org/project/{package}/{version}/"
    )


def _group_of(check: str, groups: Sequence[str]) -> str:
    from pinmatrix.run.flaky import group_of

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
            m.name: {"repo": m.repo, "revision": m.revision, "kind": m.kind} for m in matrix.models
        },
        "checks": list(groups),
        "settings": dict(matrix.settings),
    }


def _signatures_of(check: dict[str, Any]) -> set[str]:
    """The check's own signature, and for a surface check every failed fact's."""
    found = {(check.get("error") or {}).get("signature")}
    evidence = check.get("evidence") or {}
    if isinstance(evidence.get("signatures"), list):
        found |= {str(s) for s in evidence["signatures"]}
    found.discard(None)
    return found  # type: ignore[return-value]


def _judge_result(
    result: CellResult, checks: Sequence[str], groups: Sequence[str], signature: str | None = None
) -> Judgement:
    from pinmatrix.run.flaky import group_of

    version = ""  # filled in by the caller
    named = [
        c for c in result.checks if c["name"] in checks or group_of(c["name"], groups) in checks
    ]
    if not named:
        return Judgement(version, "infra", f"none of {', '.join(checks)} ran in the cell")
    failed = [c for c in named if c["status"] == "fail"]
    if signature is not None:
        # one break among several: a release is bad for it only where this signature shows
        hits = [c for c in failed if signature in _signatures_of(c)]
        if hits:
            return Judgement(version, "bad", f"{hits[0]['name']}: {signature}")
        if failed:
            others = sorted(set().union(*(_signatures_of(c) for c in failed)))
            return Judgement(
                version, "good", f"{signature} absent (fails with {', '.join(others)})"
            )
    elif failed:
        first = failed[0]
        error = first.get("error") or {}
        return Judgement(
            version,
            "bad",
            f"{first['name']}: {error.get('signature')}: {str(error.get('message') or '')[:300]}",
        )
    infra = [c for c in named if c["status"] == "infra"]
    if infra:
        return Judgement(
            version, "infra", f"{infra[0]['name']}: {infra[0].get('reason') or 'infra'}"
        )
    if all(c["status"] == "skip" for c in named):
        return Judgement(
            version,
            "infra",
            "every named check was skipped: "
            + "; ".join(f"{c['name']}: {c.get('reason')}" for c in named[:3]),
        )
    return Judgement(version, "good", ", ".join(f"{c['name']}: {c['status']}" for c in named))


@dataclasses.dataclass(frozen=True)
class BisectPlan:
    """One bisect's fixed parts: the matrix, the stack besides the package, the checks judged and
    the check groups each step runs."""

    matrix: Any
    base_pins: dict[str, str]
    groups: list[str]
    checks: list[str]
    step_groups: list[str]


def run_bisect(
    spec: BisectSpec,
    opts: RunOptions,
    echo: Echo = print,
    *,
    list_files: Callable[[str], list[dict[str, Any]]] | None = None,
    budget: int | None = None,
) -> tuple[Path, BisectResult]:
    """Run the search; write bisect.json and bisect.md; return (folder, result). RangeError and
    BisectInputError are bad input; IndexUnreachable propagates (infra)."""
    from pinmatrix.run.folder import new_run_dir

    plan = plan_bisect(spec, opts)
    listed = _releases_in_range(spec, opts, list_files)
    folder = new_run_dir(opts.reports_dir, f"bisect-{spec.package}")
    echo(
        f"bisect {spec.package} {spec.good}..{spec.bad}: {len(listed.releases)} releases in range"
        + (f" (yanked, left out: {', '.join(listed.yanked)})" if listed.yanked else "")
        + (
            f" ({len(listed.prereleases_left_out)} pre-releases left out; --pre keeps them)"
            if listed.prereleases_left_out
            else ""
        )
        + f"; checks: {', '.join(plan.checks)}"
    )
    judge = _StepJudge(spec, opts, plan, folder, echo)
    try:
        result = bisect_releases(listed.releases, judge, exhaustive=spec.exhaustive, budget=budget)
    except RangeError as exc:
        _write(folder, spec, listed, None, judge.steps, plan.checks, error=str(exc))
        raise BisectInputError(
            f"bisect {spec.package}: {exc} (evidence: {folder / 'bisect.md'})"
        ) from None
    _write(folder, spec, listed, result, judge.steps, plan.checks)
    return folder, result


def plan_bisect(spec: BisectSpec, opts: RunOptions) -> BisectPlan:
    """The selection must be one stack besides the bisected package (BisectInputError else)."""
    from pinmatrix.run.pipeline import load_cells

    matrix, cells = load_cells(
        opts.matrix_path, spec.selectors, cpu=opts.cpu, snapshot=opts.snapshot, sources=opts.sources
    )
    if spec.package not in matrix.axes:
        raise BisectInputError(
            f"bisect {spec.package}: not an axis of {opts.matrix_path} ({', '.join(matrix.axes)})"
        )
    bases = {tuple(sorted((k, v) for k, v in c.pins.items() if k != spec.package)) for c in cells}
    if len(bases) != 1:
        raise BisectInputError(
            f"bisect {spec.package}: the selection {' '.join(spec.selectors) or '(all)'} "
            f"gives {len(bases)} different stacks besides {spec.package}; select one cell "
            "(e.g. unsloth=none python=3.12)"
        )
    base_pins = dict(next(iter(bases)))
    base_pins[spec.package] = spec.good
    groups = list(matrix.checks)
    checks = list(spec.checks) or groups
    step_groups = sorted(
        {c if c in groups else _group_of(c, groups) for c in checks}, key=groups.index
    )
    return BisectPlan(matrix, base_pins, groups, checks, step_groups)


def _releases_in_range(spec: BisectSpec, opts: RunOptions,
                       list_files: Callable[[str], list[dict[str, Any]]] | None) -> ReleaseRange:
    sources = opts.sources
    index = sources.index_url if sources and sources.index_url else DEFAULT_INDEX
    ca = str(sources.ca_bundle) if sources and getattr(sources, "ca_bundle", None) else None
    files = list_files or (lambda package: fetch_index_files(package, index, ca_file=ca))
    try:
        return releases_between(spec.package, spec.good, spec.bad, pre=spec.pre, files=files)
    except ValueError as exc:
        raise BisectInputError(f"bisect {spec.package}: {exc}") from None


class _StepJudge:
    """One bisect step per call: a one-cell matrix at `version`, run for real, judged by the
    named checks; each step's record kept in `steps` (bisect.json)."""

    def __init__(self, spec: BisectSpec, opts: RunOptions, plan: BisectPlan, folder: Path,
                 echo: Echo) -> None:
        self.spec, self.opts, self.plan, self.folder, self.echo = spec, opts, plan, folder, echo
        self.steps: dict[str, dict[str, Any]] = {}

    def __call__(self, version: str) -> Judgement:
        from pinmatrix.run.pipeline import run_matrix

        spec, plan, echo = self.spec, self.plan, self.echo
        step = self.folder / "matrices" / f"{version}.yaml"
        write_text_atomic(
            step,
            yaml.safe_dump(
                _step_matrix(plan.matrix, plan.base_pins, spec.package, version, plan.step_groups),
                sort_keys=False,
            ),
        )
        echo(f"bisect {spec.package}: probing {version} ({len(self.steps) + 1} so far)")
        step_opts = dataclasses.replace(
            self.opts,
            matrix_path=step,
            selectors=(),
            label=f"bisect-{spec.package}-{version}",
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
        judgement = self._judged(version, summary.run_dir, outcome, record)
        record["verdict"], record["detail"] = judgement.verdict, judgement.detail
        self.steps[version] = record
        echo(
            f"bisect {spec.package} {version}: {judgement.verdict}"
            + (f" ({judgement.detail[:160]})" if judgement.detail else "")
        )
        return judgement

    def _judged(self, version: str, run_dir: Path, outcome: Any,
                record: dict[str, Any]) -> Judgement:
        if outcome is None:
            return Judgement(version, "infra", "the step ran no cell")
        if outcome.status == "unresolvable":
            return Judgement(version, "unresolvable", outcome.reason or "")
        if outcome.status == "infra" or not outcome.result:
            return Judgement(version, "infra", outcome.reason or "no result")
        loaded = load_result(Path(run_dir) / outcome.result)
        if not isinstance(loaded, CellResult):
            return Judgement(version, "infra", f"damaged result: {loaded.why}")
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
        return dataclasses.replace(
            _judge_result(loaded, self.plan.checks, self.plan.groups, self.spec.signature),
            version=version,
        )


def _write(
    folder: Path,
    spec: BisectSpec,
    listed: ReleaseRange,
    result: BisectResult | None,
    steps: dict[str, dict[str, Any]],
    checks: Sequence[str],
    error: str | None = None,
) -> None:
    doc: dict[str, Any] = {
        "package": spec.package,
        "good": spec.good,
        "bad": spec.bad,
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
            judgements=result.probes,
            # a step whose result came from the cache ran no probe now
            probes_run=sum(1 for v in result.order
                           if steps.get(v, {}).get("verdict") in ("good", "bad", "infra")
                           and not steps.get(v, {}).get("reused_from")),
            order=result.order,
            unresolvable=[{"release": j.version, "why": j.detail} for j in result.unresolvable],
            release_notes=release_notes_url(spec.package, result.first_bad)
            if result.first_bad
            else None,
        )
    write_json_atomic(folder / "bisect.json", doc)
    write_text_atomic(folder / "bisect.md", render_markdown(doc))


def render_markdown(doc: dict[str, Any]) -> str:
    pkg = doc["package"]
    out = [f"# bisect {pkg} {doc['good']}..{doc['bad']}", ""]
    if doc.get("error"):
        out += [f"**Not run to the end: {doc['error']}**", ""]
    elif doc.get("first_bad"):
        out += [
            f"**First bad release: {pkg} {doc['first_bad']}** (last good: {doc['last_good']}); "
            f"release notes: {doc['release_notes']}",
            "",
        ]
        if doc.get("monotonic") is None:
            out += [
                "Binary search assumes one switch from good to bad; `--all` probes every release "
                "and "
                "checks that.",
                "",
            ]
    elif doc.get("stopped"):
        out += [f"**No answer: {doc['stopped']}**", ""]
    out += [
        f"- checks: {', '.join(doc['checks'])}"
        + (f"; bad means failing with `{doc['signature']}`" if doc.get("signature") else ""),
        f"- releases in range: {len(doc['releases_in_range'])} "
        f"({', '.join(doc['releases_in_range'])})",
        f"- releases judged: {doc.get('judgements', len(doc['steps']))}; probes run now: "
        f"{doc.get('probes_run', len(doc['steps']))} (the rest came from the result cache)",
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
    if doc.get("first_bad") and doc.get("last_good"):
        good, bad = doc["steps"].get(doc["last_good"], {}), doc["steps"].get(doc["first_bad"], {})
        names = sorted(set(good.get("checks") or {}) | set(bad.get("checks") or {}))
        out += [
            "",
            f"## {doc['last_good']} against {doc['first_bad']}",
            "",
            f"| check | {doc['last_good']} | {doc['first_bad']} |",
            "|---|---|---|",
        ]
        for name in names:
            cells = []
            for side in (good, bad):
                c = (side.get("checks") or {}).get(name)
                cells.append(
                    "·"
                    if c is None
                    else c["status"] + (f" `{c['signature']}`" if c.get("signature") else "")
                )
            out.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
        message = next(
            (c["message"] for c in (bad.get("checks") or {}).values() if c.get("signature")), ""
        )
        if message:
            out += ["", f"First bad message: {' '.join(message.split())[:300]}"]
    return "\n".join(out) + "\n"


def bisect_command(options: BisectOptions, opts: RunOptions) -> int:
    """The CLI entry: exit 0 with an answer (or a stated non-monotonic/infra stop written down), 2
    on bad
    input, 1 when nothing could be judged."""
    from pinmatrix.bisect.releases import IndexUnreachable

    spec = parse_spec(
        list(opts.selectors),
        list(options.check),
        pre=options.pre,
        exhaustive=options.all,
        signature=options.signature,
    )
    try:
        folder, result = run_bisect(spec, opts)
    except IndexUnreachable as exc:
        print(f"infra: the package index could not be asked: {exc}")
        return EXIT_INFRA_BISECT
    print(f"bisect: {folder / 'bisect.md'}")
    if result.first_bad:
        print(
            f"first bad release: {spec.package} {result.first_bad} (last good {result.last_good}); "
            f"{result.probes} probes for {len(result.releases)} releases"
        )
        return 0
    print(f"no answer: {result.stopped}")
    return 0 if result.monotonic is False else EXIT_INFRA_BISECT


__all__ += ["bisect_command", "BisectInputError", "PinmatrixError"]
