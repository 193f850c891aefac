"""Run the cells of one host at once: one cell per GPU, builds in parallel, no device ever shared.

Why the harness's own scheduler and not nox's: nox runs its sessions one after another (it has no
`-j`), and a session per cell would also repeat nox's own venv setup per cell and lose the shared
state this needs (which GPU is free, which image is being built). `nox -s matrix` therefore stays
one session that calls `python -m pinmatrix matrix`, and this module fans the cells out inside it.

The model: every cell is one task on a thread (the work is subprocesses: uv, docker, the probe;
threads only wait). A task takes two kinds of resource, each through a context manager:

- a **build slot** (`CellContext.build(key)`): at most `build_jobs` builds at once, and one lock per
  image key, so two cells that need the same image never build it twice (the second waits and then
  finds it built, reused);
- a **device** (`CellContext.device()`): one token from a pool, a GPU index ("0", "1", ...) or, with
  no GPUs, one of `cpu_jobs` CPU tokens. A token is held by one cell at a time, so a GPU is never
  shared.

The pool has `len(devices) + build_jobs` workers: while every device is running a cell, up to
`build_jobs` more cells can resolve and build, so the next cell is ready when a device frees up.
A task that raises is handed to `on_error`; the other cells still run (all cells always finish).
"""
from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pinmatrix import interrupt
from pinmatrix.errors import SchedulerError
from pinmatrix.run.progress import Progress

T = TypeVar("T")
C = TypeVar("C")



# --- devices -------------------------------------------------------------------------------------

def detect_gpus(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> list[str]:
    """GPU indices from `nvidia-smi -L` ("GPU 0: NVIDIA H100 ..."); none when the tool is absent or
    fails."""
    if run is subprocess.run and shutil.which("nvidia-smi") is None:
        return []
    try:
        proc = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    return parse_nvidia_smi_list(proc.stdout)


def parse_nvidia_smi_list(text: str) -> list[str]:
    gpus = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("GPU ") and ":" in line:
            index = line[4:line.index(":")].strip()
            if index.isdigit():
                gpus.append(index)
    return gpus


def parse_gpu_list(text: str) -> list[str]:
    """`--gpus 0,1` → ["0", "1"]; clear error on anything else."""
    items = [p.strip() for p in text.split(",") if p.strip()]
    if not items or not all(p.isdigit() for p in items):
        raise SchedulerError(f"--gpus {text!r}: expected comma-separated GPU indices, e.g. 0,1")
    if len(set(items)) != len(items):
        raise SchedulerError(f"--gpus {text!r}: a GPU is listed twice")
    return items


def device_tokens(*, cpu: bool, requested: Sequence[str] | None, detected: Sequence[str],
                  cpu_jobs: int = 1, cells_per_gpu: int = 1) -> list[str | None]:
    """The device pool. Each GPU index `cells_per_gpu` times where GPUs are used (the cells that
    share one GPU coordinate through its lock: pinmatrix/containers/gpu_lock.py); else `cpu_jobs`
    tokens: "" (CPU forced) or None (the runner's default: no GPU was found, let the runner
    decide)."""
    if cpu_jobs < 1:
        raise SchedulerError(f"--cpu-jobs {cpu_jobs}: must be at least 1")
    if cells_per_gpu < 1:
        raise SchedulerError(f"--cells-per-gpu {cells_per_gpu}: must be at least 1")
    if not cpu:
        gpus: list[str] = []
        if requested:
            missing = [g for g in requested if detected and g not in detected]
            if missing:
                raise SchedulerError(f"--gpus: GPU {', '.join(missing)} not found "
                                     f"(nvidia-smi -L lists {', '.join(detected)})")
            gpus = list(requested)
        elif detected:
            gpus = list(detected)
        if gpus:
            # round robin: with two GPUs and two cells each, the first two cells get different GPUs
            return [gpu for _ in range(cells_per_gpu) for gpu in gpus]
    return ["" if cpu else None] * cpu_jobs


# --- the scheduler -------------------------------------------------------------------------------

class BuildGate:
    """At most `jobs` builds at once, and never two builds of the same key at once."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise SchedulerError(f"--build-jobs {jobs}: must be at least 1")
        self._slots = threading.BoundedSemaphore(jobs)
        self._keys: dict[str, threading.Lock] = {}
        self._keys_lock = threading.Lock()

    @contextmanager
    def build(self, key: str) -> Iterator[None]:
        with self._keys_lock:
            key_lock = self._keys.setdefault(key, threading.Lock())
        # the key first: a waiter for the same image holds no build slot
        with key_lock, self._slots:
            yield


class DevicePool:
    def __init__(self, tokens: Sequence[str | None]) -> None:
        if not tokens:
            raise SchedulerError("no device to run cells on")
        self._free: queue.Queue[int] = queue.Queue()
        self.tokens = list(tokens)
        for i in range(len(self.tokens)):  # hand out positions: CPU tokens repeat, positions do not
            self._free.put(i)

    @contextmanager
    def take(self) -> Iterator[str | None]:
        slot = self._free.get()
        try:
            yield self.tokens[slot]
        finally:
            self._free.put(slot)


@dataclass
class CellContext:
    """What a cell task uses to take resources and report its stage."""
    cell_id: str
    gate: BuildGate
    pool: DevicePool
    progress: Progress | None = None
    device_used: list[str | None] = field(default_factory=list)

    def stage(self, state: str, note: str = "") -> None:
        if self.progress is not None:
            self.progress.set(self.cell_id, state, note)

    def say(self, message: str) -> None:
        """A line about this cell (a stage finished, with its time)."""
        if self.progress is not None:
            self.progress.log(f"{self.cell_id}: {message}")

    @contextmanager
    def build(self, key: str) -> Iterator[None]:
        with self.gate.build(key):
            self.stage("building")
            yield

    # [(exit stack, token)] while hold_device() holds one
    _held: list[tuple[ExitStack, str | None]] = field(default_factory=list)

    @contextmanager
    def device(self) -> Iterator[str | None]:
        """A device for the block; the one already held (hold_device) if any, so a recheck stays on
        it."""
        if self._held:
            yield self._held[0][1]
            return
        with self.pool.take() as token:
            self.device_used.append(token)
            self.stage("running", f"on GPU {token}" if token else "")
            yield token

    def hold_device(self) -> str | None:
        """Take a device until release_device() (the scheduler releases it at the latest when the
        task ends)."""
        if not self._held:
            stack = ExitStack()
            token = stack.enter_context(self.device())
            self._held.append((stack, token))
        return self._held[0][1]

    def release_device(self) -> None:
        while self._held:
            stack, _ = self._held.pop()
            stack.close()


class Scheduler(Generic[C, T]):
    def __init__(self, devices: Sequence[str | None], *, build_jobs: int = 2,
                 progress: Progress | None = None) -> None:
        self.gate = BuildGate(build_jobs)
        self.pool = DevicePool(devices)
        self.build_jobs = build_jobs
        self.progress = progress

    def run(self, items: Sequence[C], key: Callable[[C], str], task: Callable[[C, CellContext], T],
            on_error: Callable[[C, BaseException], T]) -> list[T]:
        """Every item's result, in the items' order. A task that raises yields on_error's value
        instead."""
        results: list[T | None] = [None] * len(items)
        interrupt.INTERRUPTED.clear()  # a run in a process that was interrupted before starts clean

        def one(index: int) -> None:
            item = items[index]
            ctx = CellContext(key(item), self.gate, self.pool, self.progress)
            try:
                results[index] = task(item, ctx)
            except Exception as exc:  # a harness bug in one cell: recorded, the others go on
                results[index] = on_error(item, exc)
            finally:
                ctx.release_device()  # never leak a device, whatever the task did
                ctx.stage("done")

        workers = max(1, min(len(items), len(self.pool.tokens) + self.build_jobs))
        # Ctrl-C or SIGTERM: start no queued cell; the running ones see INTERRUPTED, stop their
        # probe and write an `infra: interrupted` outcome, which is waited for, so that the summary
        # written next counts them (pinmatrix/interrupt.py)
        interrupt.map_in_threads(one, range(len(items)), workers, "cell")
        return results  # type: ignore[return-value]


def measure_overhead(n_cells: int = 200, devices: int = 4) -> float:
    """Seconds of scheduler bookkeeping per cell, with tasks that do nothing (for `nox -s
    bench`)."""
    sched: Scheduler[int, int] = Scheduler([str(i) for i in range(devices)], build_jobs=2)

    def task(item: int, ctx: CellContext) -> int:
        with ctx.build(str(item % 7)):
            pass
        with ctx.device():
            pass
        return item

    started = time.perf_counter()
    sched.run(list(range(n_cells)), str, task, lambda item, exc: -1)
    return (time.perf_counter() - started) / n_cells
