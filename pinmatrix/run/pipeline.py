"""The run pipeline: matrix → cells → (resolve → prepare → run → result) per cell → report.

One cell's failure never stops the others: every cell ends with an outcome record
(docs/CONTRACTS.md §8), and the report is written even when the loop is interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from pinmatrix.cell import Cell, Lock, Unresolvable, content_hash
from pinmatrix.errors import HarnessError
from pinmatrix.outcome import Outcome
from pinmatrix.probes_source import probes_digest
from pinmatrix.report.write import write_report
from pinmatrix.results import Damaged, load_result, write_json_atomic, write_text_atomic
from pinmatrix.errors import InfraError
from pinmatrix.runners.base import RUN_LOG_NAME, Runner

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DEFAULT_TIMEOUT_S = 3600.0
RUNNERS = ("auto", "docker", "venv")

Echo = Callable[[str], None]



@dataclass
class RunOptions:
    matrix_path: Path
    selectors: Sequence[str] = ()
    runner: str = "auto"
    cpu: bool = False
    reports_dir: Path = REPO_ROOT / "reports"
    timeout_s: float | None = None        # None: the matrix's settings.cell_timeout_s, else DEFAULT_TIMEOUT_S
    sources: Any = None                   # pinmatrix.sources.PackageSources
    label: str | None = None
    # venv runner
    venv_dir: Path | None = None
    system_site_packages: bool = False
    no_install: bool = False
    extra_sites: Sequence[Path] = ()
    offline: bool = False
    venv_python: str | None = None
    keep_work: bool = False
    check_timeout_s: float | None = None  # --check-timeout: overrides the matrix's settings.check_timeout_s
    flaky_rerun: bool = True              # rerun a cell's failed check groups once (pinmatrix/run/flaky.py)
    model_cache: Path | None = None       # --model-cache: prefetch models here (pinmatrix/run/fetch.py), mount read-only
    model_hub: Path | None = None         # --model-hub: a local folder standing in for the hub; None: huggingface_hub
    # scale (issue 6): the result cache, resume, the scheduler, shards
    rerun: Sequence[str] | None = None    # None: reuse cached results; [] / [""]: rerun all; selectors: those
    resume: str | None = None             # "": the latest unfinished run; else a run id or folder
    run_dir: Path | None = None           # join (or create) this run folder: shards and Slurm tasks share one
    gpus: Sequence[str] | None = None     # --gpus 0,1; None: every GPU nvidia-smi lists
    build_jobs: int = 2
    cpu_jobs: int = 1                     # cells at once when there is no GPU
    shard: tuple[int, int] | None = None  # (i, n), 1-based
    live_progress: bool | None = None     # None: a live line on a TTY, log lines elsewhere
    finalize: bool = True                 # write the report and move reports/latest (off for one Slurm task)
    trust_gpus: bool = False              # `gpus` came from Slurm (host indices): do not check them against nvidia-smi
    snapshot: dict[str, Any] | None = None   # live-axis expansion to reuse (--snapshot), else ask the index
    compile_cache: bool = True            # False (--no-compile-cache): every probe run starts with empty compile caches


@dataclass
class RunSummary:
    run_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)
    verdict: str = ""
    stopped: str | None = None            # why the run stopped early (engine gone, reports disk full): resumable


# --- cells ---------------------------------------------------------------------------------------

def load_cells(matrix_path: Path, selectors: Sequence[str] = (), *, cpu: bool = False,
               snapshot: dict[str, Any] | None = None, sources: Any = None) -> tuple[Any, list[Cell]]:
    """The matrix and its selected cells. Raises pinmatrix.errors.MatrixError on bad input."""
    from pinmatrix.matrix.load import load_matrix, select

    # snapshot: live axes expand from a recorded run (offline) instead of the index (pinmatrix.snapshot)
    matrix = load_matrix(Path(matrix_path), snapshot=snapshot, sources=sources)
    cells = matrix.expand()
    if selectors:
        cells = select(cells, list(selectors))
    if cpu:
        cells = [force_cpu(c) for c in cells]
    return matrix, cells


def force_cpu(cell: Cell) -> Cell:
    return dataclasses.replace(cell, settings={**dict(cell.settings), "device": "cpu"})


def cell_timeout(cell: Cell, opts: RunOptions) -> float:
    """--timeout, else the matrix's settings.cell_timeout_s, else the default."""
    if opts.timeout_s:
        return float(opts.timeout_s)
    return float(cell.settings.get("cell_timeout_s") or DEFAULT_TIMEOUT_S)


# --- identity ------------------------------------------------------------------------------------

def gpu_model(cpu: bool) -> str:
    """The GPU the cells run on (part of the content hash): `cpu` when forced or when none is visible."""
    if cpu or not shutil.which("nvidia-smi"):
        return "cpu"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    names = sorted({l.strip() for l in out.stdout.splitlines() if l.strip()}) if out.returncode == 0 else []
    return ",".join(names) or "cpu"


def cell_hash(cell: Cell, lock: Lock, runner_name: str, gpu: str, digest: str) -> str:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8") if runner_name == "docker" and DOCKERFILE.is_file() else runner_name
    return content_hash(lock_text=lock.torch_lock + "\n---\n" + lock.full_lock, dockerfile=dockerfile,
                        probes_digest=digest, checks=tuple(cell.checks), settings=dict(cell.settings),
                        gpu_model=gpu, base_image=str(cell.pins.get("base_image", "")), models=tuple(cell.models),
                        pins=dict(cell.pins))


# --- runners -------------------------------------------------------------------------------------

def pick_runner_kind(opts: RunOptions, echo: Echo) -> tuple[str, Any]:
    """("docker", engine) or ("venv", None). `auto` is docker when an engine is found, else venv, said in ONE line."""
    if opts.runner not in RUNNERS:
        raise ValueError(f"unknown runner {opts.runner!r}: choose one of {', '.join(RUNNERS)}")
    if opts.runner == "venv":
        return "venv", None
    from pinmatrix.runners.engine import engine_message, find_engine

    engine = find_engine()
    if engine is not None:
        if opts.runner == "auto":
            echo(f"runner: docker ({engine.describe()})")
        return "docker", engine
    if opts.runner == "docker":
        raise HarnessError(f"--runner docker, but no usable Docker engine: {engine_message()}")
    echo(f"runner: venv (no usable Docker engine: {engine_message()})")
    return "venv", None


class Runners:
    """The runner for each cell: one venv runner, or one Docker runner per base image."""

    def __init__(self, kind: str, engine: Any, opts: RunOptions, run_dir: Path, echo: Echo) -> None:
        self.kind, self.engine, self.opts, self.run_dir = kind, engine, opts, run_dir
        self._docker: dict[str, Runner] = {}
        self._venv: Runner | None = None
        if kind == "venv":
            self._venv = make_venv_runner(opts)
            for note in self._venv.notes:
                echo(f"venv runner: {note}")

    @property
    def name(self) -> str:
        return self.kind

    def for_cell(self, cell: Cell) -> Runner:
        if self._venv is not None:
            return self._venv
        base = str(cell.pins.get("base_image") or "")
        with _RUNNERS_LOCK:  # cells start on several threads (pinmatrix/run/scheduler.py)
            if base not in self._docker:
                self._docker[base] = make_docker_runner(self.engine, self.opts, self.run_dir, base or None)
            return self._docker[base]


_RUNNERS_LOCK = threading.Lock()


def make_venv_runner(opts: RunOptions):
    from pinmatrix.runners import compile_cache
    from pinmatrix.runners.venv import DEFAULT_VENV_ROOT, VenvRunner

    return VenvRunner(venv_root=opts.venv_dir or DEFAULT_VENV_ROOT, sources=opts.sources,
                      system_site_packages=opts.system_site_packages, offline=opts.offline,
                      no_install=opts.no_install, extra_sites=tuple(opts.extra_sites),
                      base_python=opts.venv_python,
                      compile_cache_root=compile_cache.DEFAULT_ROOT if opts.compile_cache else None)


def make_docker_runner(engine: Any, opts: RunOptions, run_dir: Path, base_image: str | None):
    from pinmatrix.runners.docker import DockerRunner

    extra: dict[str, Any] = {"base_image": base_image} if base_image else {}
    extra["compile_cache"] = opts.compile_cache
    if opts.model_cache is not None:  # mounted read-only at /hf in every cell
        extra["hf_home"] = Path(opts.model_cache)
    return DockerRunner(engine, opts.sources, run_dir, cpu_only=opts.cpu, **extra)


def choose_resolver(opts: RunOptions, resolve: Callable[..., Any]) -> Callable[..., Any]:
    """uv's resolution, or with --no-install the lock read off the prepared interpreter (pinmatrix/runners/installed.py)."""
    if opts.no_install:
        from pinmatrix.runners.installed import environment_resolver

        return environment_resolver(opts.venv_python, opts.extra_sites)
    return resolve


# --- the run folder ------------------------------------------------------------------------------

def new_run_dir(reports_dir: Path, label: str | None = None) -> Path:
    """reports/<UTC time id>[-label]; a suffix keeps two runs in the same second apart."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = stamp + (f"-{label}" if label else "")
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = reports_dir / (base if n == 0 else f"{base}.{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise HarnessError(f"could not create a run folder under {reports_dir}")


def point_latest(reports_dir: Path, run_dir: Path) -> Path:
    """Swap reports/latest to the run atomically: a new symlink, renamed over the old one."""
    latest = Path(reports_dir) / "latest"
    tmp = Path(reports_dir) / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(run_dir).name)
    os.replace(tmp, latest)
    return latest


def _run_manifest(opts: RunOptions, run_dir: Path, matrix: Any, cells: list[Cell], runner: str) -> dict[str, Any]:
    matrix_bytes = Path(opts.matrix_path).read_bytes()
    axes = getattr(matrix, "axes", None)
    return {
        "run_id": run_dir.name,
        "matrix": str(opts.matrix_path),
        "matrix_sha256": hashlib.sha256(matrix_bytes).hexdigest(),
        "axes": _jsonable(axes),
        "snapshot": _jsonable(getattr(matrix, "snapshot", None) or {}),  # --snapshot run.json reproduces the axes
        "selection": list(opts.selectors),
        "cells": [c.id for c in cells],
        "runner": runner,
        "device": "cpu" if opts.cpu else "auto",
        "timeout_s": opts.timeout_s,
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "python": platform.python_version(), "argv": _redacted_argv(sys.argv)},
        "started": _now(),
    }


# --- the pipeline --------------------------------------------------------------------------------

def run_matrix(opts: RunOptions, echo: Echo = print) -> RunSummary:
    """Run every selected cell and write the report. MatrixError (bad input) propagates before
    anything is written; a harness error in one cell is recorded and the others still run.

    Cells run through pinmatrix.run.scheduler (one per GPU, builds in parallel); a cell whose content hash
    already has a judged result is reused (pinmatrix.run.cache) unless --rerun says otherwise; --resume
    continues an interrupted run in its own folder, keeping the cells it finished."""
    from pinmatrix.resolve.uv import resolve
    from pinmatrix.run.state import finished_cells, open_run_dir
    from pinmatrix.run.scheduler import Scheduler, detect_gpus, device_tokens

    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu, snapshot=opts.snapshot,
                               sources=opts.sources)
    all_cells = cells
    if opts.shard is not None:
        from pinmatrix.run.shard import shard_of

        cells = shard_of(cells, *opts.shard)
    kind, engine = pick_runner_kind(opts, echo)
    if opts.model_cache is not None:  # before any cell: the only step that may use a hub token
        _prefetch_models(matrix, opts, echo)
    tokens = device_tokens(cpu=opts.cpu, requested=opts.gpus, detected=[] if opts.cpu or opts.trust_gpus else detect_gpus(),
                           cpu_jobs=opts.cpu_jobs)
    run_dir, manifest = open_run_dir(opts, lambda: _run_manifest(opts, new_run_dir(opts.reports_dir, opts.label),
                                                                  matrix, all_cells, kind))
    runners = Runners(kind, engine, opts, run_dir, echo)
    summary = RunSummary(run_dir)
    gpu = gpu_model(opts.cpu)
    digest = probes_digest()
    manifest["probes_digest"], manifest["gpu_model"] = digest, gpu
    write_json_atomic(run_dir / "run.json", manifest)
    from pinmatrix.report.remote_code import unpinned_warnings

    for warning in unpinned_warnings(getattr(matrix, "models", ())):  # remote code under a moving ref
        echo(f"warning: {warning}")
    kept = finished_cells(run_dir)
    todo = [c for c in cells if c.id not in kept]
    cache, forced = _cache_and_forced(opts, cells)
    devices = ", ".join(t for t in tokens if t) or f"{len(tokens)} at once"
    echo(f"run {run_dir.name}: {len(cells)} cell{'s' if len(cells) != 1 else ''}, runner {kind}, "
         f"{'cpu (forced)' if opts.cpu else 'device ' + gpu}" + (f", shard {opts.shard[0]}/{opts.shard[1]}" if opts.shard else "")
         + (f", {len(cells) - len(todo)} kept from the interrupted run" if len(todo) != len(cells) else "")
         + (f" (devices: {devices})" if len(tokens) > 1 else ""))
    from pinmatrix.run.progress import Progress

    progress = Progress(len(todo), live=opts.live_progress, echo=echo)
    resolve_fn = choose_resolver(opts, resolve)
    if resolve_fn is resolve and todo:  # every cell resolved up front, in parallel (pinmatrix.resolve.stage)
        from pinmatrix.resolve.stage import resolve_stage

        stage = resolve_stage(todo, opts.sources, run_dir / "locks")
        manifest["resolve_stage"] = stage.manifest()
        echo(f"resolve: {stage.manifest()}")
        resolve_fn = stage.lookup

    stop = _StopSignal()

    def task(cell: Cell, ctx: Any) -> Outcome:
        if stop.reason:  # the engine is gone or the reports disk is full: start nothing more
            return stop.skipped(cell, kind, run_dir)
        try:
            outcome = run_cell(cell, run_dir, runners.for_cell(cell), opts, gpu=gpu, digest=digest,
                               resolve_fn=resolve_fn, ctx=ctx, cache=cache,
                               force=forced is None or cell.id in forced)
        except OSError as exc:
            if not _disk_full(exc):
                raise
            stop.set(_disk_full_reason(exc))
            _drop_orphan_result(run_dir, cell.id)
            return stop.skipped(cell, kind, run_dir)
        if outcome.signature == "engine-unreachable":
            stop.set(f"the Docker engine became unreachable ({_short(outcome.reason)})")
        progress.log(f"{cell.id}: {outcome.stage}: " + (f"{outcome.status} ({_short(outcome.reason)})" if outcome.status
                     else f"result {outcome.result}" + (f" (reused from {outcome.reused_from})"
                                                         if getattr(outcome, "reused_from", None) else "")))
        return outcome

    def on_error(cell: Cell, exc: BaseException) -> Outcome:  # a harness bug: record it, keep going, exit 1
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        summary.harness_errors.append(f"{cell.id}: {exc!r}")
        outcome = Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner=kind,
                          stage="run", status="infra", reason=f"harness error: {exc!r}",
                          signature="harness-error")
        outcome.write(run_dir)
        write_text_atomic(run_dir / "logs" / f"{cell.id}.harness.log", tb)
        progress.log(f"{cell.id}: run: infra (harness error: {_short(repr(exc))})")
        return outcome

    try:
        summary.outcomes = Scheduler(tokens, build_jobs=opts.build_jobs, progress=progress).run(
            todo, lambda c: c.id, task, on_error)
        if opts.shard is None and opts.finalize:  # one shard or one Slurm task is not the whole run
            manifest["complete"] = True  # read by --resume: a run without it was interrupted
    finally:
        progress.close()
        manifest["finished"] = _now()
        if stop.reason:  # no "complete": --resume picks this run up and retries what did not finish
            manifest.pop("complete", None)
            manifest["stopped"] = stop.reason
        try:
            if (opts.shard is None and opts.finalize) or not (run_dir / "run.json").is_file():
                write_json_atomic(run_dir / "run.json", manifest)
            if opts.finalize:
                write_report(run_dir)
                _write_pins(run_dir, echo)
                if run_dir.resolve().parent == Path(opts.reports_dir).resolve():  # not a shared --run-dir elsewhere
                    point_latest(opts.reports_dir, run_dir)
        except OSError as exc:  # a full disk must not turn into a traceback: the finished files stand
            if not _disk_full(exc):
                raise
            stop.set(_disk_full_reason(exc))
    summary.stopped = stop.reason
    if opts.finalize and (run_dir / "summary.json").is_file():
        summary.verdict = json.loads((run_dir / "summary.json").read_text())["verdict"]
    return summary


def _cache_and_forced(opts: RunOptions, cells: list[Cell]) -> tuple[Any, set[str] | None]:
    """The result cache of the reports folder, and the ids --rerun forces (None: all)."""
    from pinmatrix.run.cache import RerunPolicy, ResultCache

    policy = RerunPolicy.from_args(opts.rerun)
    return ResultCache(opts.reports_dir), policy.forced_ids(cells)


def run_cell(cell: Cell, run_dir: Path, runner: Runner, opts: RunOptions, *, gpu: str, digest: str,
             resolve_fn: Callable[..., Any], ctx: Any = None, cache: Any = None, force: bool = True) -> Outcome:
    """One cell, start to end. `ctx` (pinmatrix.run.scheduler.CellContext) hands out the build slot and the
    device; `cache` (pinmatrix.run.cache.ResultCache) short-cuts a cell whose content hash was judged before,
    unless `force`."""
    from pinmatrix.resolve.uv import ResolveInfraError

    ctx = ctx if ctx is not None else _SoloContext()
    if opts.check_timeout_s:  # --check-timeout overrides the matrix; part of the settings, so of the hash
        cell = dataclasses.replace(cell, settings={**dict(cell.settings), "check_timeout_s": opts.check_timeout_s})
    ctx.stage("resolving")
    outcome = Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner=runner.name, stage="resolve")
    lock_dir = run_dir / "locks" / cell.id
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        resolved = resolve_fn(cell, opts.sources, lock_dir)
    except ResolveInfraError as exc:
        return _finish(outcome, run_dir, "infra", f"resolver: {exc}", "resolve-infra", "resolve_s", started)
    outcome.timings["resolve_s"] = round(time.monotonic() - started, 2)
    if isinstance(resolved, Unresolvable):
        outcome.status, outcome.reason = "unresolvable", resolved.explanation
        outcome.write(run_dir)
        return outcome
    lock: Lock = resolved
    outcome.hash = cell_hash(cell, lock, runner.name, gpu, digest)
    if cache is not None and not force:
        entry = cache.lookup(outcome.hash)
        if entry is not None:  # judged before with exactly these inputs: reuse, build and probe nothing
            outcome.result = cache.reuse_into(entry, run_dir, cell.id)
            outcome.reused_from = entry.run_id
            outcome.stage = "done"
            outcome.write(run_dir)
            return outcome

    outcome.stage = "prepare"
    started = time.monotonic()
    try:
        with ctx.build(_build_key(cell, lock, runner.name)):
            prepared = runner.prepare(cell, lock)
    except InfraError as exc:
        _write_log(run_dir, cell.id, "build", exc.log_tail)
        return _finish(outcome, run_dir, "infra", exc.reason, exc.signature, "prepare_s", started)
    outcome.timings["prepare_s"] = round(time.monotonic() - started, 2)
    build_log = (prepared.details or {}).get("build_log")
    kept_log = run_dir / "logs" / f"{cell.id}.build.log"
    if build_log and Path(build_log).is_file() and Path(build_log).resolve() != kept_log.resolve():
        _ensure_logs(run_dir)
        shutil.copyfile(build_log, kept_log)

    outcome.stage = "run"
    work = run_dir / "work" / cell.id
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "cell.json"
    write_json_atomic(spec_path, cell.spec(outcome.hash, runner.name))
    # Held through the run and a flaky recheck, so one cell's two probe runs are not split by another
    # cell's; released after them, or by the scheduler when the task ends.
    device = ctx.hold_device()
    started = time.monotonic()
    run = runner.run(prepared, spec_path, work, "" if opts.cpu else device, cell_timeout(cell, opts))
    outcome.timings["run_s"] = round(time.monotonic() - started, 2)
    if (work / RUN_LOG_NAME).is_file():
        _ensure_logs(run_dir)
        shutil.copyfile(work / RUN_LOG_NAME, run_dir / "logs" / f"{cell.id}.run.log")
    elif run.log_tail:
        _write_log(run_dir, cell.id, "run", run.log_tail)
    if run.result_path is not None and Path(run.result_path).is_file():
        target = run_dir / "cells" / f"{cell.id}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.result_path, target.with_suffix(".json.tmp"))
        os.replace(target.with_suffix(".json.tmp"), target)
        loaded = load_result(target, reclassify=False)
        if isinstance(loaded, Damaged):
            outcome.status, outcome.reason, outcome.signature = "infra", f"damaged result: {loaded.why}", "damaged-result"
        else:
            outcome.result = f"cells/{cell.id}.json"
            if opts.flaky_rerun and not run.infra_reason:
                from pinmatrix.run.flaky import recheck_failures

                with ctx.device() as device:  # once, in a fresh container/process, only the failed groups
                    recheck = recheck_failures(runner, prepared, spec_path, work, target, cell_timeout(cell, opts),
                                               "" if opts.cpu else device, run_dir / "logs" / f"{cell.id}.rerun.log")
                outcome.rerun = recheck.describe() or None
    ctx.release_device()
    if run.infra_reason:
        outcome.status, outcome.reason, outcome.signature = "infra", run.infra_reason, run.signature
    elif outcome.result is None and outcome.status is None:
        outcome.status, outcome.reason = "infra", "the runner returned no result"
    if outcome.status is None:
        outcome.stage = "done"
    outcome.write(run_dir)
    if cache is not None and outcome.stage == "done" and outcome.result:
        cache.record(outcome.hash, run_dir.name, cell.id, outcome.result)
    if not opts.keep_work:
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()  # the last cell leaves no empty work/ behind
        except OSError:
            pass
    return outcome


def resolve_only(opts: RunOptions, echo: Echo = print) -> Path:
    """Resolve the selected cells in parallel into a run folder (locks + outcomes), print the table of
    resolvable and unresolvable cells; nothing is built or run."""
    from pinmatrix.resolve.stage import format_table, resolve_stage

    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu, snapshot=opts.snapshot,
                               sources=opts.sources)
    run_dir = new_run_dir(opts.reports_dir, opts.label or "resolve")
    manifest = {"run_id": run_dir.name, "matrix": str(opts.matrix_path), "selection": list(opts.selectors),
                "cells": [c.id for c in cells], "runner": None, "started": _now(),
                "axes": _jsonable(getattr(matrix, "axes", None)),
                "snapshot": _jsonable(getattr(matrix, "snapshot", None) or {})}
    write_json_atomic(run_dir / "run.json", manifest)
    stage = resolve_stage(cells, opts.sources, run_dir / "locks")
    for cell in cells:
        resolved = stage.results[cell.id]
        if isinstance(resolved, Unresolvable):
            Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner="none", stage="resolve",
                    status="unresolvable", reason=resolved.explanation).write(run_dir)
        elif not isinstance(resolved, Lock):
            Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner="none", stage="resolve",
                    status="infra", reason=f"resolver: {resolved}", signature="resolve-infra").write(run_dir)
    manifest["resolve_stage"], manifest["finished"] = stage.manifest(), _now()
    write_json_atomic(run_dir / "run.json", manifest)
    echo(format_table(cells, stage))
    return run_dir


# --- helpers -------------------------------------------------------------------------------------

class _StopSignal:
    """Set once when going on is pointless (the engine is gone, the reports disk is full): cells not yet
    started are recorded as infra, never judged, so a resume (pinmatrix/run/state.py) retries them."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()

    def set(self, reason: str) -> None:
        with self._lock:
            self.reason = self.reason or reason

    def skipped(self, cell: Cell, runner: str, run_dir: Path) -> Outcome:
        outcome = Outcome(cell=cell.id, hash=None, pins=dict(cell.pins), runner=runner, stage="resolve",
                          status="infra", reason=f"not run: {self.reason}", signature="run-stopped")
        try:
            outcome.write(run_dir)
        except OSError as exc:
            if not _disk_full(exc):
                raise
        return outcome


def _prefetch_models(matrix: Any, opts: RunOptions, echo: Echo) -> None:
    from pinmatrix.run.fetch import FetchError, fetch_models

    try:
        fetched = fetch_models(getattr(matrix, "models", ()), Path(opts.model_cache),
                               hub=Path(opts.model_hub) if opts.model_hub else None)
    except FetchError as exc:
        raise HarnessError(f"model prefetch failed: {exc}") from None
    for f in fetched:
        echo(f"model {f.name}: {f.repo}@{f.revision} -> {f.commit[:12]} "
             f"({'cached' if f.reused else 'fetched from ' + f.hub})")


def _drop_orphan_result(run_dir: Path, cell_id: str) -> None:
    """The disk filled between copying a cell's result and writing its outcome: a result that no `done`
    outcome vouches for is not trusted (resume reruns the cell), so it goes, and frees its space."""
    outcome = run_dir / "outcomes" / f"{cell_id}.json"
    try:
        vouched = json.loads(outcome.read_text(encoding="utf-8")).get("stage") == "done"
    except (OSError, ValueError):
        vouched = False
    if not vouched:
        (run_dir / "cells" / f"{cell_id}.json").unlink(missing_ok=True)


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_reason(exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"the reports folder is full ({exc.strerror}{where})"


class _SoloContext:
    """run_cell's resources when no scheduler hands them out: no build limit, the runner's default device."""

    def stage(self, state: str, note: str = "") -> None:
        pass

    @contextlib.contextmanager
    def build(self, key: str):
        yield

    @contextlib.contextmanager
    def device(self):
        yield None

    def hold_device(self) -> None:
        return None

    def release_device(self) -> None:
        pass


def _build_key(cell: Cell, lock: Lock, runner_name: str) -> str:
    """Cells with the same key build the same image/venv: the scheduler never builds one key twice at once."""
    payload = json.dumps([runner_name, str(cell.pins.get("base_image", "")), lock.python,
                          lock.torch_lock, lock.full_lock])
    return hashlib.sha256(payload.encode()).hexdigest()


def _write_pins(run_dir: Path, echo: Echo) -> None:
    """reports/<run>/pins/ (pinmatrix.report.pins); a failure there must not cost the run its report."""
    from pinmatrix.report.pins import write_pins

    try:
        echo(write_pins(run_dir).message)
    except Exception as exc:  # a harness bug in pins: say so, keep the report
        echo(f"pins: not written ({exc!r})")


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


def _short(text: str | None, limit: int = 160) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[:limit] + "…"


def _redacted_argv(argv: Sequence[str]) -> list[str]:
    """The command line without credentials (an index URL may hold a token): run.json is shared."""
    from pinmatrix.sources import redact

    out = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            out.append(f"{flag}={redact(value)}")
        else:
            out.append(redact(arg) or arg)
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [_jsonable(v) for v in value]
        return str(value)
