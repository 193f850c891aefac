"""The run pipeline: matrix → cells → (resolve → prepare → run → result) per cell → report.

One cell's failure never stops the others: every cell ends with an outcome record
(docs/CONTRACTS.md §8), and the report is written even when the loop is interrupted.
"""
from __future__ import annotations

import dataclasses
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pinmatrix.cell import Cell, Lock, Unresolvable
from pinmatrix.errors import HarnessError
from pinmatrix.fsio import (load_json, on_publish, published_together, utc_now, write_json_atomic,
                            write_text_atomic)
from pinmatrix.outcome import Outcome
from pinmatrix.probes_source import probes_digest
from pinmatrix import interrupt
from pinmatrix.report.write import write_report
from pinmatrix.run.folder import (
    disk_full,
    disk_full_reason,
    drop_orphan_result,
    jsonable,
    new_run_dir,
    point_latest,
    run_manifest,
)
from pinmatrix.run.identity import gpu_model
from pinmatrix.run.one_cell import run_cell
from pinmatrix.run.options import Echo, RunOptions, RunSummary
from pinmatrix.run.runner_choice import Runners, pick_runner_kind
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
    from pinmatrix.matrix.load import load_matrix
    from pinmatrix.matrix.select import select

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
        from pinmatrix.environ.installed import environment_resolver

        return environment_resolver(opts.venv_python, opts.extra_sites)
    return resolve


# --- the pipeline --------------------------------------------------------------------------------

def run_matrix(opts: RunOptions, echo: Echo = print) -> RunSummary:
    """Run every selected cell and write the report. MatrixError (bad input) propagates before
    anything is written; a harness error in one cell is recorded and the others still run.

    Cells run through pinmatrix.run.scheduler (one per GPU, builds in parallel); a cell whose
    content hash already has a judged result is reused (pinmatrix.run.cache) unless --rerun says
    otherwise; --resume continues an interrupted run in its own folder, keeping the cells it
    finished."""
    from pinmatrix.resolve.uv import resolve
    from pinmatrix.run.scheduler import detect_gpus, device_tokens
    from pinmatrix.run.state import open_run_dir

    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                               snapshot=opts.snapshot,
                               sources=opts.sources)
    all_cells = cells
    if opts.shard is not None:
        from pinmatrix.run.shard import shard_of

        cells = shard_of(cells, *opts.shard)
    kind, engine = pick_runner_kind(opts, echo)
    if opts.model_cache is not None:  # before any cell: the only step that may use a hub token
        _prefetch_models(matrix, opts.model_cache, opts, echo)
    tokens = device_tokens(cpu=opts.cpu, requested=opts.gpus,
                           detected=[] if opts.cpu or opts.trust_gpus else detect_gpus(),
                           cpu_jobs=opts.cpu_jobs, cells_per_gpu=opts.cells_per_gpu)
    run_dir, manifest = open_run_dir(
        opts,
        lambda: run_manifest(
            opts, new_run_dir(opts.reports_dir, opts.label), matrix, all_cells, kind
        ),
    )
    try:
        return _run_in(run_dir, manifest, opts, echo, matrix, cells, kind, engine, tokens, resolve)
    finally:
        from pinmatrix.run.state import release_run_folder

        release_run_folder(run_dir)


def _run_in(run_dir: Path, manifest: dict[str, Any], opts: RunOptions, echo: Echo,
            matrix: Any, cells: list[Cell], kind: str, engine: Any, tokens: list[str | None],
            resolve: Any) -> RunSummary:
    """run_matrix's part inside the run folder, while it holds the folder's writer lock."""
    from pinmatrix.run.scheduler import Scheduler
    from pinmatrix.run.state import finished_cells

    runners = Runners(kind, engine, opts, run_dir, echo)
    summary = RunSummary(run_dir)
    gpu = gpu_model(opts.cpu)
    digest = probes_digest()
    manifest["probes_digest"], manifest["gpu_model"] = digest, gpu
    write_json_atomic(run_dir / "run.json", manifest)
    from pinmatrix.report.remote_code import unpinned_warnings

    # remote code under a moving ref
    for warning in unpinned_warnings(getattr(matrix, "models", ())):
        echo(f"warning: {warning}")
    kept = finished_cells(run_dir)
    todo = [c for c in cells if c.id not in kept]
    cache, forced = _cache_and_forced(opts, cells)
    devices = ", ".join(t for t in tokens if t) or f"{len(tokens)} at once"
    echo(
        f"run {run_dir.name}: {len(cells)} cell{'s' if len(cells) != 1 else ''}, runner {kind}, "
        f"{'cpu (forced)' if opts.cpu else 'device ' + gpu}"
        + (f", shard {opts.shard[0]}/{opts.shard[1]}" if opts.shard else "")
        + (
            f", {len(cells) - len(todo)} kept from the interrupted run"
            if len(todo) != len(cells)
            else ""
        )
        + (f" (devices: {devices})" if len(tokens) > 1 else "")
    )
    from pinmatrix.activity import Heartbeat, acting_for
    from pinmatrix.run.progress import Progress

    progress = Progress(len(todo), live=opts.live_progress, echo=echo)
    # no stage is silent for long: a line naming what is under way whenever nothing else was said
    heartbeat = Heartbeat(progress.log)
    progress.on_log = heartbeat.touch
    heartbeat.start()
    resolve_fn = choose_resolver(opts, resolve)
    # every cell resolved up front, in parallel (pinmatrix.resolve.stage)
    if resolve_fn is resolve and todo:
        from pinmatrix.resolve.stage import resolve_stage

        try:
            stage = resolve_stage(todo, opts.sources, run_dir / "locks", echo=progress.log)
        except BaseException:
            heartbeat.stop()
            raise
        manifest["resolve_stage"] = stage.manifest()
        progress.log(stage.summary())
        resolve_fn = stage.lookup

    stop = _StopSignal()
    said: dict[tuple[str | None, str], str] = {}  # an infra cause -> the first cell that had it
    said_lock = threading.Lock()

    def task(cell: Cell, ctx: CellContext) -> Outcome:
        if stop.reason:  # the engine is gone or the reports disk is full: start nothing more
            return stop.skipped(cell, kind, run_dir)
        try:
            with acting_for(cell.id):
                outcome = run_cell(cell, run_dir, runners.for_cell(cell), opts, gpu=gpu,
                                   digest=digest, resolve_fn=resolve_fn, ctx=ctx, cache=cache,
                                   force=forced is None or cell.id in forced)
        except OSError as exc:
            if not disk_full(exc):
                raise
            stop.set(disk_full_reason(exc))
            drop_orphan_result(run_dir, cell.id)
            return stop.skipped(cell, kind, run_dir)
        if interrupt.INTERRUPTED.is_set() and outcome.result is None and outcome.status == "infra":
            # cut short by the interrupt (a killed build reads as a build failure): say so, and
            # let --resume run it again
            outcome.reason = (f"{interrupt.reason()} (stage {outcome.stage}; "
                              f"{_short(outcome.reason)})")
            outcome.signature = interrupt.signature()
            outcome.write(run_dir)
        if outcome.signature == "engine-unreachable":
            stop.set(f"the Docker engine became unreachable ({_short(outcome.reason)})")
        if outcome.status == "infra":  # one cause, said once: the next cells point at the first
            key = (outcome.signature, " ".join((outcome.reason or "").split())
                   .replace(cell.id, "<cell>"))
            with said_lock:
                first = said.setdefault(key, cell.id)
            if first != cell.id:
                progress.log(f"{cell.id}: {outcome.stage}: infra (same cause as {first}"
                             + (f": {outcome.signature}" if outcome.signature else "") + ")")
                return outcome
        progress.log(
            f"{cell.id}: {outcome.stage}: "
            ""
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
        return outcome

    # a harness bug: record it, keep going, exit 1
    def on_error(cell: Cell, exc: BaseException) -> Outcome:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        said = f"{type(exc).__name__}: {exc}"  # words, not the exception's repr
        summary.harness_errors.append(f"{cell.id}: {said}")
        outcome = Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner=kind,
                          stage="run", status="infra", reason=f"harness error: {said}",
                          signature="harness-error")
        outcome.write(run_dir)
        write_text_atomic(run_dir / "logs" / f"{cell.id}.harness.log", tb)
        progress.log(f"{cell.id}: run: infra (harness error: {_short(said)})")
        return outcome

    try:
        from pinmatrix.run.gpu_watch import watch_run

        scheduler = Scheduler[Cell, Outcome](tokens, build_jobs=opts.build_jobs, progress=progress)
        # who really used which GPU (issue 15)
        with watch_run(run_dir, [] if opts.cpu else tokens):
            summary.outcomes = scheduler.run(todo, lambda c: c.id, task, on_error)
        if opts.shard is None and opts.finalize:  # one shard or one Slurm task is not the whole run
            manifest["complete"] = True  # read by --resume: a run without it was interrupted
    finally:
        heartbeat.stop()
        progress.close()
        manifest["finished"] = utc_now()
        if stop.reason:  # no "complete": --resume picks this run up and retries what did not finish
            manifest.pop("complete", None)
            manifest["stopped"] = stop.reason
        try:
            # run.json, the report, pins/ and reports/latest are published as one set, and a
            # Ctrl-C or SIGTERM meanwhile waits for it (pinmatrix/interrupt.py `held`): the folder
            # has the whole new report or, after a second interrupt, the one it had before
            with interrupt.held(), published_together():
                if (opts.shard is None and opts.finalize) or not (run_dir / "run.json").is_file():
                    write_json_atomic(run_dir / "run.json", manifest)
                if opts.finalize:
                    write_report(run_dir, pins_for=opts.pins_for)
                    from pinmatrix.report.pins import write_pins_and_say

                    write_pins_and_say(run_dir, echo, opts.pins_for)
                    # not a shared --run-dir elsewhere
                    if run_dir.resolve().parent == Path(opts.reports_dir).resolve():
                        on_publish(lambda: point_latest(opts.reports_dir, run_dir))
        # a full disk must not turn into a traceback: the finished files stand
        except OSError as exc:
            if not disk_full(exc):
                raise
            stop.set(disk_full_reason(exc))
    summary.stopped = stop.reason
    if opts.finalize and (run_dir / "summary.json").is_file():
        merged = load_json((run_dir / "summary.json"))
        summary.verdict = merged["verdict"]
        from pinmatrix.report.causes import console_lines

        for line in console_lines(merged.get("causes") or []):
            echo(line)
    return summary


def _cache_and_forced(opts: RunOptions, cells: list[Cell]) -> tuple[ResultCache, set[str] | None]:
    """The result cache of the reports folder, and the ids --rerun forces (None: all)."""
    from pinmatrix.run.cache import RerunPolicy, ResultCache

    policy = RerunPolicy.from_args(opts.rerun)
    return ResultCache(opts.reports_dir), policy.forced_ids(cells)


def resolve_only(opts: RunOptions, echo: Echo = print) -> Path:
    """Resolve the selected cells in parallel into a run folder (locks + outcomes), print the table
    of resolvable and unresolvable cells; nothing is built or run."""
    from pinmatrix.resolve.stage import format_table, resolve_stage

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
    from pinmatrix.activity import Heartbeat

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
    from pinmatrix.run.fetch import FetchError, fetch_models

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
