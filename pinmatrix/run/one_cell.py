"""One cell, start to end: resolve → (cached result | prepare → run → flaky recheck) → outcome.

Every path ends with an outcome record (docs/CONTRACTS.md §8); a machine failure is an `infra`
outcome, never an exception out of here."""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinmatrix import interrupt
from pinmatrix.cell import Cell, Lock, Unresolvable
from pinmatrix.errors import InfraError, ResolveInfraError
from pinmatrix.fsio import copy_atomic, read_json, write_json_atomic, write_text_atomic
from pinmatrix.outcome import Outcome
from pinmatrix.results import Damaged, load_result
from pinmatrix.run.flaky import recheck_failures
from pinmatrix.run.identity import build_key, cell_hash
from pinmatrix.run.options import RunOptions, cell_timeout
from pinmatrix.runners.base import RUN_LOG_NAME, Runner
from pinmatrix.sources import PackageSources

if TYPE_CHECKING:
    from pinmatrix.run.cache import ResultCache
    from pinmatrix.run.scheduler import CellContext

# (cell, sources, lock folder) -> its lock, or why none exists; raises ResolveInfraError
Resolver = Callable[[Cell, PackageSources | None, Path], Lock | Unresolvable]


@dataclass(frozen=True)
class CellRun:
    """What every cell of one run shares: the run folder, the options, the GPU model and probes'
    digest (both part of a cell's content hash), the resolver and the result cache."""

    run_dir: Path
    opts: RunOptions
    gpu: str
    digest: str
    resolve_fn: Resolver
    cache: ResultCache | None = None


def run_cell(cell: Cell, runner: Runner, run: CellRun, *,
             ctx: CellContext | SoloContext | None = None, force: bool = True) -> Outcome:
    """One cell, start to end. `ctx` (pinmatrix.run.scheduler.CellContext) hands out the build slot
    and the device; `run.cache` (pinmatrix.run.cache.ResultCache) short-cuts a cell whose content
    hash was judged before, unless `force`."""
    ctx = ctx if ctx is not None else SoloContext()
    # --check-timeout overrides the matrix; part of the settings, so of the hash
    if run.opts.check_timeout_s:
        cell = dataclasses.replace(cell, settings={**dict(cell.settings),
                                                   "check_timeout_s": run.opts.check_timeout_s})
    ctx.stage("resolving")
    outcome = Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner=runner.name,
                      stage="resolve")
    lock = _resolve(cell, run, outcome)
    if lock is None:
        return outcome
    outcome.hash = cell_hash(cell, lock, runner.name, run.gpu, run.digest)
    if not force and _reused(cell, run, outcome):
        return outcome
    outcome.stage = "prepare"
    prepared = _prepare(cell, lock, runner, run, ctx, outcome)
    if prepared is None:
        return outcome
    outcome.stage = "run"
    if interrupt.INTERRUPTED.is_set():  # built after the interrupt: start no probe
        return _finish(outcome, run.run_dir, "infra", interrupt.reason(), interrupt.signature(),
                       "run_s", time.monotonic())
    return _probe(cell, prepared, runner, run, ctx, outcome)


def _resolve(cell: Cell, run: CellRun, outcome: Outcome) -> Lock | None:
    """The cell's lock; None when there is none (the outcome then says why, written)."""

    lock_dir = run.run_dir / "locks" / cell.id
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        resolved = run.resolve_fn(cell, run.opts.sources, lock_dir)
    except ResolveInfraError as exc:
        signature = getattr(exc, "signature", None) or "resolve-infra"
        reason = str(exc) if signature != "resolve-infra" else f"resolver: {exc}"
        _finish(outcome, run.run_dir, "infra", reason, signature, "resolve_s", started)
        return None
    outcome.timings["resolve_s"] = round(time.monotonic() - started, 2)
    if isinstance(resolved, Unresolvable):
        outcome.status, outcome.reason = "unresolvable", resolved.explanation
        outcome.write(run.run_dir)
        return None
    return resolved


def _reused(cell: Cell, run: CellRun, outcome: Outcome) -> bool:
    """Judged before with exactly these inputs: reuse, build and probe nothing."""
    entry = run.cache.lookup(outcome.hash) if run.cache is not None and outcome.hash else None
    if entry is None or run.cache is None:
        return False
    outcome.result = run.cache.reuse_into(entry, run.run_dir, cell.id)
    outcome.reused_from = entry.run_id
    outcome.stage = "done"
    outcome.write(run.run_dir)
    return True


def _prepare(cell: Cell, lock: Lock, runner: Runner, run: CellRun,
             ctx: CellContext | SoloContext, outcome: Outcome) -> Any:
    """The runner's prepared environment; None when it could not be made (an infra outcome)."""
    run_dir = run.run_dir
    started = time.monotonic()
    try:
        with ctx.build(build_key(cell, lock, runner.name)):
            prepared = runner.prepare(cell, lock)
    except InfraError as exc:
        _write_log(run_dir, cell.id, "build", exc.log_tail)
        _finish(outcome, run_dir, "infra", exc.reason, exc.signature, "prepare_s", started)
        return None
    outcome.timings["prepare_s"] = round(time.monotonic() - started, 2)
    # the runner's own steps (downloads and installs, bytecode, image build), for `nox -s bench`
    steps = {k: float(v) for k, v in ((prepared.details or {}).get("timings") or {}).items()}
    outcome.timings.update(steps)
    ctx.say(prepare_line(prepared.reused, outcome.timings["prepare_s"], steps))
    build_log = (prepared.details or {}).get("build_log")
    kept_log = run_dir / "logs" / f"{cell.id}.build.log"
    if build_log and Path(build_log).is_file() and Path(build_log).resolve() != kept_log.resolve():
        _ensure_logs(run_dir)
        shutil.copyfile(build_log, kept_log)
    return prepared


def _probe(cell: Cell, prepared: Any, runner: Runner, run: CellRun,
           ctx: CellContext | SoloContext, outcome: Outcome) -> Outcome:
    """Run the probe (and the flaky recheck) on the device, keep its result and logs, and write
    the outcome."""
    run_dir, opts = run.run_dir, run.opts
    assert outcome.hash is not None  # set once the cell resolved
    work = run_dir / "work" / cell.id
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "cell.json"
    write_json_atomic(spec_path, cell.spec(outcome.hash, runner.name))
    # Held through the run and a flaky recheck, so one cell's two probe runs are not split by
    # another cell's; released after them, or by the scheduler when the task ends.
    device = ctx.hold_device()
    # the GPU timeline: which device, from taking it to giving it back
    outcome.gpu, outcome.started = (device or None) if not opts.cpu else None, _now_ms()
    started = time.monotonic()
    result = runner.run(prepared, spec_path, work, "" if opts.cpu else device,
                        cell_timeout(cell, opts))
    outcome.timings["run_s"] = round(time.monotonic() - started, 2)
    ctx.say(f"probe ran in {outcome.timings['run_s']:.0f} s"
            + (f" ({_short(result.infra_reason)})" if result.infra_reason else ""))
    outcome.gpu_access = dict(result.details.get("gpu_access") or {}) or None
    if (work / RUN_LOG_NAME).is_file():
        _ensure_logs(run_dir)
        shutil.copyfile(work / RUN_LOG_NAME, run_dir / "logs" / f"{cell.id}.run.log")
    elif result.log_tail:
        _write_log(run_dir, cell.id, "run", result.log_tail)
    if result.result_path is not None and Path(result.result_path).is_file():
        _keep_result(cell, prepared, runner, run, ctx, outcome, result, spec_path)
    ctx.release_device()
    outcome.finished = _now_ms()
    return _close(cell, run, outcome, result, work)


def _keep_result(cell: Cell, prepared: Any, runner: Runner, run: CellRun,
                 ctx: CellContext | SoloContext, outcome: Outcome, result: Any,
                 spec_path: Path) -> None:
    """Copy the probe's result into the run folder; a failed group is rechecked once."""
    target = run.run_dir / "cells" / f"{cell.id}.json"
    copy_atomic(Path(result.result_path), target)
    loaded = load_result(target, reclassify=False)
    if isinstance(loaded, Damaged):
        outcome.status, outcome.reason, outcome.signature = (
            "infra",
            f"damaged result: {loaded.why}",
            "damaged-result",
        )
        return
    outcome.result = f"cells/{cell.id}.json"
    if run.opts.flaky_rerun and not result.infra_reason:

        # once, in a fresh container/process, only the failed groups
        with ctx.device() as device:
            recheck = recheck_failures(runner, prepared, spec_path, spec_path.parent, target,
                                       cell_timeout(cell, run.opts),
                                       "" if run.opts.cpu else device,
                                       run.run_dir / "logs" / f"{cell.id}.rerun.log")
        outcome.rerun = recheck.describe() or None


def _close(cell: Cell, run: CellRun, outcome: Outcome, result: Any, work: Path) -> Outcome:
    """The outcome's status from the run, written; the cache recorded; the work folder gone."""
    run_dir = run.run_dir
    if result.infra_reason:
        outcome.status, outcome.reason, outcome.signature = (
            "infra", result.infra_reason, result.signature)
        if outcome.result is None:
            kept = keep_partial(work, run_dir, cell.id, result.infra_reason)
            if kept is not None:
                outcome.partial, said = kept
                outcome.reason = f"{result.infra_reason}; {said}"
    elif outcome.result is None and outcome.status is None:
        outcome.status, outcome.reason = "infra", "the runner returned no result"
    if outcome.status is None:
        outcome.stage = "done"
    outcome.write(run_dir)
    if run.cache is not None and outcome.stage == "done" and outcome.result and outcome.hash:
        run.cache.record(outcome.hash, run_dir.name, cell.id, outcome.result)
    if not run.opts.keep_work:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # the last cell leaves no empty work/ behind
    return outcome


class SoloContext:
    """run_cell's resources when no scheduler hands them out: no build limit, the runner's default
    device."""

    def stage(self, state: str, note: str = "") -> None:
        pass

    def say(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def build(self, key: str) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def device(self) -> Iterator[str | None]:
        yield None

    def hold_device(self) -> str | None:
        return None

    def release_device(self) -> None:
        pass


# the runners' step timings, as the prepare line names them
STEP_WORDS = {"venv_s": "venv", "install_torch_s": "torch layer", "install_stack_s": "the rest",
              "bytecode_s": "bytecode", "build_s": "image build", "pull_s": "pull"}


def prepare_line(reused: bool, seconds: float, steps: dict[str, float]) -> str:
    """`prepared in 83 s (venv 1 s, torch layer 40 s, the rest 30 s, bytecode 12 s)`."""
    if reused:
        return f"prepared in {seconds:.0f} s (reused: built earlier with the same lock)"
    parts = [f"{STEP_WORDS.get(k, k.removesuffix('_s'))} {v:.0f} s" for k, v in steps.items()]
    return f"prepared in {seconds:.0f} s" + (f" ({', '.join(parts)})" if parts else "")


def _short(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def _finish(outcome: Outcome, run_dir: Path, status: str, reason: str, signature: str | None,
            timing: str, started: float) -> Outcome:
    outcome.timings[timing] = round(time.monotonic() - started, 2)
    outcome.status, outcome.reason, outcome.signature = status, reason, signature
    outcome.write(run_dir)
    return outcome


def _ensure_logs(run_dir: Path) -> bool:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    return True


def _write_log(run_dir: Path, cell_id: str, kind: str, text: str) -> None:
    if text:
        write_text_atomic(run_dir / "logs" / f"{cell_id}.{kind}.log", text)


def _now_ms() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def keep_partial(work: Path, run_dir: Path, cell_id: str,
                 why: str) -> tuple[str, str] | None:
    """The check records a probe stopped before its result had finished (its `*.partial.json`
    journals, and the result of a plain child that did finish: docs/CONTRACTS.md §2), kept as
    `partial/<cell>.json`: evidence beside the infra outcome, never read as the cell's result.
    Returns (that path, a clause for the reason), or None when nothing had finished."""
    records: dict[str, dict[str, Any]] = {}
    sources: list[str] = []
    found = sorted(work.rglob("*.partial.json")) + sorted(work.rglob("plain-*/result.json"))
    for path in found:
        data = read_json(path)  # None for a journal cut mid-write: skipped, never trusted
        checks = data.get("checks") if isinstance(data, dict) else None
        if not isinstance(checks, list):
            continue
        taken = [c for c in checks if isinstance(c, dict) and isinstance(c.get("name"), str)
                 and isinstance(c.get("status"), str)]
        for check in taken:
            records.setdefault(check["name"], check)
        if taken:
            sources.append(str(path.relative_to(work)))
    if not records:
        return None
    rel = f"partial/{cell_id}.json"
    counts: dict[str, int] = {}
    for check in records.values():
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    write_json_atomic(run_dir / rel, {"cell": cell_id, "why": why, "from": sources,
                                      "note": "checks finished before the probe was stopped: "
                                              "evidence, not a verdict",
                                      "checks": list(records.values())})
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    n = len(records)
    return rel, f"{n} check{'s' if n != 1 else ''} had finished ({tally}): {rel}"
