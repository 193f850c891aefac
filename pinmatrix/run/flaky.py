"""Flaky verdicts: a failing check is rerun once in a fresh container (or process), and a
disagreement is reported as `flaky` with both outcomes kept (docs/CONTRACTS.md §3, DESIGN.md
statuses).

A failure whose catalogue signature is marked deterministic (an ABI built for another torch, an
option the installed version rejects) is not rerun: the same stack fails it the same way every time.
Only the check groups that failed are rerun: the rerun spec is the cell's spec with `checks` cut
down to those groups, so the probe runs nothing else (the same effect as its `--only`, but through
the runner protocol, which every runner already honours). Rules per check of a rerun group:
  - pass then fail, or fail then pass → `flaky`; `attempts` holds both check records, first first;
  - the same outcome twice → the first record stands; a failing one keeps both in `attempts`, as
    proof that it was rerun;
  - anything else (skip, infra, missing on the rerun) → the first record stands untouched.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinmatrix.fsio import write_json_atomic, write_text_atomic
from pinmatrix.results import CellResult, load_result, validate
from pinmatrix.runners.base import Prepared, Runner
from probes import registry, signatures

DISAGREEING = frozenset({"pass", "fail"})
RERUN_SPEC_NAME = "rerun.cell.json"


def group_of(check_name: str, groups: Iterable[str] = ()) -> str | None:
    """The group that emits `check_name`: a group named exactly like the check, else the probes'
    registry (probes/registry.py). Records written since the registry carry `group` themselves."""
    groups = tuple(groups)
    if check_name in groups:
        return check_name
    group: str | None = registry.group_of(check_name)
    return group


def deterministic_failures(result: Mapping[str, Any]) -> list[str]:
    """Failing checks whose signature the catalogue marks deterministic (probes/signatures.json):
    the cause is in what is installed, so a rerun would fail the same way. An unsloth cell's rerun
    costs a fresh process and `import unsloth` again, about 40 s on the H100, for nothing."""

    return [str(c.get("name")) for c in result.get("checks") or []
            if c.get("status") == "fail"
            and signatures.is_deterministic(str((c.get("error") or {}).get("signature") or ""))]


def failed_groups(result: Mapping[str, Any], spec_groups: Sequence[str]) -> list[str]:
    """The spec's groups that hold a failing check worth a rerun, in spec order: deterministic
    failures are left out. A failing check of no known group makes every group of the spec rerun:
    better one rerun too many than a flaky verdict missed."""
    wanted: set[str] = set()
    settled = set(deterministic_failures(result))
    for check in result.get("checks") or []:
        if check.get("status") != "fail" or check.get("name") in settled:
            continue
        group = check.get("group") or group_of(str(check.get("name")), spec_groups)
        if group is None or group not in spec_groups:
            return list(spec_groups)
        wanted.add(group)
    return [g for g in spec_groups if g in wanted]


def rerun_spec(spec: Mapping[str, Any], groups: Sequence[str]) -> dict[str, Any]:
    out = copy.deepcopy(dict(spec))
    out["checks"] = list(groups)
    return out


def _attempt(check: Mapping[str, Any]) -> dict[str, Any]:
    """A check record as kept in `attempts` (without nested attempts)."""
    return {k: copy.deepcopy(v) for k, v in check.items() if k != "attempts"}


def merge_attempts(first: Mapping[str, Any], second: Mapping[str, Any], groups: Sequence[str],
                   spec_groups: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The first result with every rerun check judged against its rerun (rules in the module doc).
    Returns the merged document and the names of the checks that came out flaky."""
    merged = copy.deepcopy(dict(first))
    again = {str(c.get("name")): c for c in second.get("checks") or []}
    flaky: list[str] = []
    for index, check in enumerate(merged["checks"]):
        name = str(check["name"])
        if group_of(name, spec_groups) not in groups or name not in again:
            continue
        other = again[name]
        a, b = check["status"], other["status"]
        if {a, b} == DISAGREEING:
            failing = check if a == "fail" else other
            passing = other if a == "fail" else check
            record: dict[str, Any] = {
                "name": name, "status": "flaky", "duration_s": check["duration_s"],
                "reason": f"{a} on the first attempt, {b} on the rerun in a fresh container",
                "attempts": [_attempt(check), _attempt(other)],
            }
            if isinstance(failing.get("error"), dict):
                record["error"] = copy.deepcopy(failing["error"])
            if isinstance(passing.get("evidence"), dict):
                record["evidence"] = copy.deepcopy(passing["evidence"])
            merged["checks"][index] = record
            flaky.append(name)
        elif a == b == "fail":
            merged["checks"][index] = {**check, "attempts": [_attempt(check), _attempt(other)]}
    return merged, flaky


@dataclass
class Recheck:
    """What the rerun did, for the pipeline's log line."""
    groups: list[str] = field(default_factory=list)
    flaky: list[str] = field(default_factory=list)
    problem: str | None = None      # the rerun gave no usable result (the first result stands)
    not_rerun: list[str] = field(default_factory=list)   # failures with a deterministic signature

    def describe(self) -> str:
        kept = (
            f"not rerun (deterministic signature): {', '.join(self.not_rerun)}"
            if self.not_rerun
            else ""
        )
        if not self.groups:
            return kept
        head = (f"{kept}; " if kept else "") + f"reran {', '.join(self.groups)}"
        if self.problem:
            return f"{head}: {self.problem}; the first result stands"
        return f"{head}: " + (f"flaky: {', '.join(self.flaky)}" if self.flaky else "same outcome")


def recheck_failures(runner: Runner, prepared: Prepared, spec_path: Path, work: Path,
                     result_file: Path, timeout_s: float, gpu: str | None,
                     log_path: Path) -> Recheck:
    """Rerun the failed groups of the result at `result_file` once and rewrite it with the verdicts.

    `result_file` is replaced atomically, and only by a merged document that validates; whatever the
    rerun does (crash, timeout, damaged file), the first result is never lost.
    """
    first = load_result(result_file, reclassify=False)
    if not isinstance(first, CellResult):
        return Recheck()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    spec_groups = [str(g) for g in spec.get("checks") or []]
    groups = failed_groups(first.data, spec_groups)
    not_rerun = deterministic_failures(first.data)
    if not groups:
        return Recheck(not_rerun=not_rerun)
    outcome = Recheck(groups=groups, not_rerun=not_rerun)
    rerun_path = Path(work) / RERUN_SPEC_NAME
    write_json_atomic(rerun_path, rerun_spec(spec, groups))
    run = runner.run(prepared, rerun_path, Path(work), gpu, timeout_s)
    if run.log_tail:
        write_text_atomic(log_path, run.log_tail)
    if run.result_path is None or not Path(run.result_path).is_file():
        outcome.problem = f"rerun gave no result ({run.infra_reason or 'no reason given'})"
        return outcome
    second = load_result(Path(run.result_path), reclassify=False)
    if not isinstance(second, CellResult):
        outcome.problem = f"rerun result damaged: {second.why}"
        return outcome
    merged, outcome.flaky = merge_attempts(first.data, second.data, groups, spec_groups)
    why = validate(merged)
    if why is not None:  # a harness bug; never let it cost the first result
        outcome.problem = f"merged result invalid: {why}"
        return outcome
    write_json_atomic(result_file, merged)
    return outcome
