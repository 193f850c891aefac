"""The run pipeline: matrix → cells → (resolve → prepare → run → result) per cell → report.

One cell's failure never stops the others: every cell ends with an outcome record
(docs/CONTRACTS.md §8), and the report is written even when the loop is interrupted.
"""
from __future__ import annotations

import dataclasses
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinmatrix import interrupt
from pinmatrix.activity import Heartbeat, acting_for
from pinmatrix.cell import Cell, Lock, Unresolvable
from pinmatrix.environ.installed import environment_resolver
from pinmatrix.errors import FetchError, HarnessError
from pinmatrix.fsio import (
    load_json,
    on_publish,
    published_together,
    utc_now,
    write_json_atomic,
    write_text_atomic,
)
from pinmatrix.matrix.load import load_matrix
from pinmatrix.matrix.select import select
from pinmatrix.outcome import Outcome
from pinmatrix.probes_source import probes_digest
from pinmatrix.report.causes import console_lines
from pinmatrix.report.pins import write_pins_and_say
from pinmatrix.report.remote_code import unpinned_warnings
from pinmatrix.report.write import write_report
from pinmatrix.resolve.stage import format_table, resolve_stage
from pinmatrix.resolve.uv import resolve
from pinmatrix.run.cache import RerunPolicy, ResultCache
from pinmatrix.run.fetch import fetch_models
from pinmatrix.run.folder import (
    disk_full,
    disk_full_reason,
    drop_orphan_result,
    jsonable,
    new_run_dir,
    point_latest,
    run_manifest,
)
from pinmatrix.run.gpu_watch import watch_run
from pinmatrix.run.identity import gpu_model
from pinmatrix.run.one_cell import CellRun, run_cell
from pinmatrix.run.options import Echo, RunOptions, RunSummary
from pinmatrix.run.progress import Progress
from pinmatrix.run.runner_choice import Runners, pick_runner_kind
from pinmatrix.run.scheduler import Scheduler, detect_gpus, device_tokens
from pinmatrix.run.shard import shard_of
from pinmatrix.run.state import finished_cells, open_run_dir, release_run_folder
from pinmatrix.sources import PackageSources

if TYPE_CHECKING:
    from pinmatrix.matrix.load import Matrix
    from pinmatrix.run.cache import ResultCache
    from pinmatrix.run.one_cell import Resolver
    from pinmatrix.run.scheduler import CellContext

# --- cells ---------------------------------------------------------------------------------------

def load_cells(matrix_path: Path, selectors: Sequence[str] = (), *, cpu: bool = False,
               snapshot: dict[str, Any] | None = None,
               sources: PackageSources | None = None) -> tuple[Matrix, list[Cell]]:
    """The matrix and its selected cells. Raises pinmatrix.errors.MatrixError on bad input."""

    # snapshot: live axes expand from a recorded run (offline) instead of the index
    # (Matrix.snapshot, pinmatrix/matrix/live.py)
    matrix = load_matrix(Path(matrix_path), snapshot=snapshot, sources=sources)
    cells = matrix.expand()
    if selectors:
        cells = select(cells, list(selectors))
    if cpu:
        cells = [force_cpu(c) for c in cells]
    return matrix, cells


def force_cpu(cell: Cell) -> Cell:
    return dataclasses.replace(cell, settings={**dict(cell.settings), "device": "cpu"})


def choose_resolver(opts: RunOptions, resolve: Resolver) -> Resolver:
    """uv's resolution, or with --no-install the lock read off the prepared interpreter
    (pinmatrix/environ/installed.py)."""
    if opts.no_install:

        return environment_resolver(opts.venv_python, opts.extra_sites)
    return resolve


# --- the pipeline: plan, execute, publish --------------------------------------------------------

@dataclass
class RunPlan:
    """What a run will do, decided before its folder is opened: the cells (this shard's, and all
    the selected ones for the manifest), the runner kind and engine, the device tokens."""

    matrix: Any
    all_cells: list[Cell]
    cells: list[Cell]
    kind: str
    engine: Any
    tokens: list[str | None]


def run_matrix(opts: RunOptions, echo: Echo = print) -> RunSummary:
    """Run every selected cell and write the report. MatrixError (bad input) propagates before
    anything is written; a harness error in one cell is recorded and the others still run.

    Cells run through pinmatrix.run.scheduler (one per GPU, builds in parallel); a cell whose
    content hash already has a judged result is reused (pinmatrix.run.cache) unless --rerun says
    otherwise; --resume continues an interrupted run in its own folder, keeping the cells it
    finished."""

    plan = plan_run(opts, echo)
    run_dir, manifest = open_run_dir(
        opts,
        lambda: run_manifest(
            opts, new_run_dir(opts.reports_dir, opts.label), plan.matrix, plan.all_cells, plan.kind
        ),
    )
    try:
        run = _Execution(run_dir, manifest, opts, plan, echo)
        try:
            run.execute(resolve)
        finally:
            publish_run(run_dir, manifest, opts, run.stop, echo)
        return _summarized(run.summary, run.stop, opts, echo)
    finally:
        release_run_folder(run_dir)


def plan_run(opts: RunOptions, echo: Echo = print) -> RunPlan:
    """Load and select the cells, take this shard, pick the runner, prefetch the models, and
    count the devices: everything that may refuse the run before a folder exists."""

    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                               snapshot=opts.snapshot,
                               sources=opts.sources)
    all_cells = cells
    if opts.shard is not None:

        cells = shard_of(cells, *opts.shard)
    kind, engine = pick_runner_kind(opts, echo)
    if opts.model_cache is not None:  # before any cell: the only step that may use a hub token
        _prefetch_models(matrix, opts.model_cache, opts, echo)
    tokens = device_tokens(cpu=opts.cpu, requested=opts.gpus,
                           detected=[] if opts.cpu or opts.trust_gpus else detect_gpus(),
                           cpu_jobs=opts.cpu_jobs, cells_per_gpu=opts.cells_per_gpu)
    return RunPlan(matrix, all_cells, cells, kind, engine, tokens)


class _Execution:
    """run_matrix's part inside the run folder, while it holds the folder's writer lock: the cells
    not yet finished, each through the scheduler (`task`, `on_error`)."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any], opts: RunOptions, plan: RunPlan,
                 echo: Echo) -> None:
        self.run_dir, self.manifest, self.opts, self.plan, self.echo = (
            run_dir, manifest, opts, plan, echo)
        self.runners = Runners(plan.kind, plan.engine, opts, run_dir, echo)
        self.summary = RunSummary(run_dir)
        self.stop = _StopSignal()
        self.gpu = gpu_model(opts.cpu)
        self.digest = probes_digest()
        # an infra cause -> the first cell that had it
        self.said: dict[tuple[str | None, str], str] = {}
        self.said_lock = threading.Lock()
        self.cache, self.forced = _cache_and_forced(opts, plan.cells)
        self.resolve_fn: Any = None

    def execute(self, resolve: Any) -> None:
        todo = self._announce()
        self.progress = Progress(len(todo), live=self.opts.live_progress, echo=self.echo)
        # no stage is silent for long: a line naming what is under way whenever nothing else
        # was said
        heartbeat = Heartbeat(self.progress.log)
        self.progress.on_log = heartbeat.touch
        heartbeat.start()
        try:
            self.resolve_fn = self._resolve_up_front(todo, resolve)
        except BaseException:
            heartbeat.stop()
            raise
        try:
            self._schedule(todo)
        finally:
            heartbeat.stop()
            self.progress.close()
            self.manifest["finished"] = utc_now()
            if self.stop.reason:  # no "complete": --resume retries what did not finish
                self.manifest.pop("complete", None)
                self.manifest["stopped"] = self.stop.reason

    def _announce(self) -> list[Cell]:
        """Write the manifest's probes and GPU, warn about moving remote code, say the run;
        return the cells still to run."""

        opts, run_dir, cells, tokens = self.opts, self.run_dir, self.plan.cells, self.plan.tokens
        self.manifest["probes_digest"], self.manifest["gpu_model"] = self.digest, self.gpu
        write_json_atomic(run_dir / "run.json", self.manifest)
        # remote code under a moving ref
        for warning in unpinned_warnings(getattr(self.plan.matrix, "models", ())):
            self.echo(f"warning: {warning}")
        kept = finished_cells(run_dir)
        todo = [c for c in cells if c.id not in kept]
        devices = ", ".join(t for t in tokens if t) or f"{len(tokens)} at once"
        self.echo(
            f"run {run_dir.name}: {len(cells)} cell{'s' if len(cells) != 1 else ''}, runner "
            f"{self.plan.kind}, {'cpu (forced)' if opts.cpu else 'device ' + self.gpu}"
            + (f", shard {opts.shard[0]}/{opts.shard[1]}" if opts.shard else "")
            + (
                f", {len(cells) - len(todo)} kept from the interrupted run"
                if len(todo) != len(cells)
                else ""
            )
            + (f" (devices: {devices})" if len(tokens) > 1 else "")
        )
        return todo

    def _resolve_up_front(self, todo: list[Cell], resolve: Any) -> Any:
        """Every cell resolved up front, in parallel (pinmatrix.resolve.stage); the resolver each
        cell then reads its lock from."""
        resolve_fn = choose_resolver(self.opts, resolve)
        if resolve_fn is resolve and todo:

            stage = resolve_stage(todo, self.opts.sources, self.run_dir / "locks",
                                  echo=self.progress.log)
            self.manifest["resolve_stage"] = stage.manifest()
            self.progress.log(stage.summary())
            resolve_fn = stage.lookup
        return resolve_fn

    def _schedule(self, todo: list[Cell]) -> None:
        tokens = self.plan.tokens
        scheduler = Scheduler[Cell, Outcome](tokens, build_jobs=self.opts.build_jobs,
                                             progress=self.progress)
        # who really used which GPU
        with watch_run(self.run_dir, [] if self.opts.cpu else tokens):
            self.summary.outcomes = scheduler.run(todo, lambda c: c.id, self.task, self.on_error)
        # one shard or one Slurm task is not the whole run
        if self.opts.shard is None and self.opts.finalize:
            self.manifest["complete"] = True  # read by --resume: without it, interrupted

    def task(self, cell: Cell, ctx: CellContext) -> Outcome:
        run_dir, kind = self.run_dir, self.plan.kind
        if self.stop.reason:  # the engine is gone or the reports disk is full: start nothing more
            return self.stop.skipped(cell, kind, run_dir)
        try:
            with acting_for(cell.id):
                outcome = run_cell(cell, self.runners.for_cell(cell), CellRun(
                    run_dir=run_dir, opts=self.opts, gpu=self.gpu, digest=self.digest,
                    resolve_fn=self.resolve_fn, cache=self.cache),
                    ctx=ctx, force=self.forced is None or cell.id in self.forced)
        except OSError as exc:
            if not disk_full(exc):
                raise
            self.stop.set(disk_full_reason(exc))
            drop_orphan_result(run_dir, cell.id)
            return self.stop.skipped(cell, kind, run_dir)
        if interrupt.INTERRUPTED.is_set() and outcome.result is None and outcome.status == "infra":
            # cut short by the interrupt (a killed build reads as a build failure): say so, and
            # let --resume run it again
            outcome.reason = (f"{interrupt.reason()} (stage {outcome.stage}; "
                              f"{_short(outcome.reason)})")
            outcome.signature = interrupt.signature()
            outcome.write(run_dir)
        if outcome.signature == "engine-unreachable":
            self.stop.set(f"the Docker engine became unreachable ({_short(outcome.reason)})")
        self.progress.log(self._said(cell, outcome))
        return outcome

    def _said(self, cell: Cell, outcome: Outcome) -> str:
        """The cell's console line; an infra cause said once, later cells point at the first."""
        if outcome.status == "infra":
            key = (outcome.signature, " ".join((outcome.reason or "").split())
                   .replace(cell.id, "<cell>"))
            with self.said_lock:
                first = self.said.setdefault(key, cell.id)
            if first != cell.id:
                return (f"{cell.id}: {outcome.stage}: infra (same cause as {first}"
                        + (f": {outcome.signature}" if outcome.signature else "") + ")")
        return (
            f"{cell.id}: {outcome.stage}: "
            + (
                f"{outcome.status} ({_short(outcome.reason)})"
                if outcome.status
                else f"result {outcome.result}"
                + (
                    f" (reused from {outcome.reused_from})"
                    if getattr(outcome, "reused_from", None)
                    else ""
                )
            )
        )

    def on_error(self, cell: Cell, exc: BaseException) -> Outcome:
        """A harness bug: record it, keep going, exit 1."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        said = f"{type(exc).__name__}: {exc}"  # words, not the exception's repr
        self.summary.harness_errors.append(f"{cell.id}: {said}")
        outcome = Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner=self.plan.kind,
                          stage="run", status="infra", reason=f"harness error: {said}",
                          signature="harness-error")
        outcome.write(self.run_dir)
        write_text_atomic(self.run_dir / "logs" / f"{cell.id}.harness.log", tb)
        self.progress.log(f"{cell.id}: run: infra (harness error: {_short(said)})")
        return outcome


def publish_run(run_dir: Path, manifest: dict[str, Any], opts: RunOptions, stop: _StopSignal,
                echo: Echo) -> None:
    """run.json, the report, pins/ and reports/latest, published as one set; a Ctrl-C or SIGTERM
    meanwhile waits for it (pinmatrix/interrupt.py `held`): the folder has the whole new report
    or, after a second interrupt, the one it had before. A full disk stops the run, resumably."""
    try:
        with interrupt.held(), published_together():
            if (opts.shard is None and opts.finalize) or not (run_dir / "run.json").is_file():
                write_json_atomic(run_dir / "run.json", manifest)
            if opts.finalize:
                write_report(run_dir, pins_for=opts.pins_for)
                write_pins_and_say(run_dir, echo, opts.pins_for)
                # not a shared --run-dir elsewhere
                if run_dir.resolve().parent == Path(opts.reports_dir).resolve():
                    on_publish(lambda: point_latest(opts.reports_dir, run_dir))
    # a full disk must not turn into a traceback: the finished files stand
    except OSError as exc:
        if not disk_full(exc):
            raise
        stop.set(disk_full_reason(exc))


def _summarized(summary: RunSummary, stop: _StopSignal, opts: RunOptions,
                echo: Echo) -> RunSummary:
    """The summary with why the run stopped and the verdict; the infra causes said once."""
    run_dir = summary.run_dir
    summary.stopped = stop.reason
    if opts.finalize and (run_dir / "summary.json").is_file():
        merged = load_json(run_dir / "summary.json")
        summary.verdict = merged["verdict"]

        for line in console_lines(merged.get("causes") or []):
            echo(line)
    return summary


def _cache_and_forced(opts: RunOptions, cells: list[Cell]) -> tuple[ResultCache, set[str] | None]:
    """The result cache of the reports folder, and the ids --rerun forces (None: all)."""

    policy = RerunPolicy.from_args(opts.rerun)
    return ResultCache(opts.reports_dir), policy.forced_ids(cells)


def resolve_only(opts: RunOptions, echo: Echo = print) -> Path:
    """Resolve the selected cells in parallel into a run folder (locks + outcomes), print the table
    of resolvable and unresolvable cells; nothing is built or run."""

    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                               snapshot=opts.snapshot,
                               sources=opts.sources)
    run_dir = new_run_dir(opts.reports_dir, opts.label or "resolve")
    manifest = {"run_id": run_dir.name, "matrix": str(opts.matrix_path),
                "selection": list(opts.selectors),
                "cells": [c.id for c in cells], "runner": None, "started": utc_now(),
                "axes": jsonable(getattr(matrix, "axes", None)),
                "snapshot": jsonable(getattr(matrix, "snapshot", None) or {})}
    write_json_atomic(run_dir / "run.json", manifest)

    with Heartbeat(echo) as heartbeat:
        stage = resolve_stage(cells, opts.sources, run_dir / "locks", echo=heartbeat.echo)
    for cell in cells:
        resolved = stage.results[cell.id]
        if isinstance(resolved, Unresolvable):
            Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner="none", stage="resolve",
                    status="unresolvable", reason=resolved.explanation).write(run_dir)
        elif not isinstance(resolved, Lock):
            Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner="none", stage="resolve",
                    status="infra", reason=f"resolver: {resolved}",
                    signature="resolve-infra").write(run_dir)
    manifest["resolve_stage"], manifest["finished"] = stage.manifest(), utc_now()
    write_json_atomic(run_dir / "run.json", manifest)
    echo(format_table(cells, stage))
    return run_dir


# --- helpers -------------------------------------------------------------------------------------

class _StopSignal:
    """Set once when going on is pointless (the engine is gone, the reports disk is full): cells not
    yet started are recorded as infra, never judged, so a resume (pinmatrix/run/state.py) retries
    them."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()

    def set(self, reason: str) -> None:
        with self._lock:
            self.reason = self.reason or reason

    def skipped(self, cell: Cell, runner: str, run_dir: Path) -> Outcome:
        outcome = Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner=runner,
                          stage="resolve",
                          status="infra", reason=f"not run: {self.reason}", signature="run-stopped")
        try:
            outcome.write(run_dir)
        except OSError as exc:
            if not disk_full(exc):
                raise
        return outcome


def _prefetch_models(matrix: Matrix, model_cache: Path, opts: RunOptions, echo: Echo) -> None:
    try:
        fetched = fetch_models(getattr(matrix, "models", ()), Path(model_cache),
                               hub=Path(opts.model_hub) if opts.model_hub else None)
    except FetchError as exc:
        raise HarnessError(f"model prefetch failed: {exc}") from None
    for f in fetched:
        echo(f"model {f.name}: {f.repo}@{f.revision} -> {f.commit[:12]} "
             f"({'cached' if f.reused else 'fetched from ' + f.hub})")


def _short(text: str | None, limit: int = 160) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[:limit] + "…"
