"""The run was interrupted (Ctrl-C, SIGTERM): one process-wide flag.

The CLI turns SIGTERM into the same KeyboardInterrupt as Ctrl-C; the scheduler sets INTERRUPTED,
starts no queued cell and waits for the running ones. A running probe is in its own session (so a
terminal's Ctrl-C does not reach it): the runner sees the flag, kills the probe's process group and
reports `interrupted`; a build or probe cut short this way is recorded as `infra: interrupted`,
never as a build failure, so `--resume` runs it again. The summary is written after the last of
those outcomes.

While a report is being written (`held`, around pinmatrix.fsio.published_together), a Ctrl-C or
SIGTERM is held off: the report is finished, published whole, and then the run stops (exit 130) with
`Interrupted(finished=True)`. A second one stops it at once, `Interrupted(finished=False)`: nothing
of the new report is published, so the folder keeps the report it had before (or none). The renames
that publish a report are never cut: a signal then waits for the last of them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any

INTERRUPTED = threading.Event()
SIGNATURE = "interrupted"
REASON = "interrupted: the run was stopped (Ctrl-C or SIGTERM) before this cell finished"
# In a Slurm array task (`run-cell`) a SIGTERM is Slurm stopping the task: its deadline, an scancel,
# a pre-emption. The session records the same cause from Slurm's side; saying it here too keeps the
# two from contradicting each other, whichever of them writes the cell's outcome last.
SLURM_SIGNATURE = "slurm-cancelled"
SLURM_REASON = ("Slurm task stopped (SIGTERM: its deadline, an scancel or a pre-emption) before "
                "this cell finished")
IN_SLURM_TASK = threading.Event()


def signature() -> str:
    return SLURM_SIGNATURE if IN_SLURM_TASK.is_set() else SIGNATURE


def reason() -> str:
    return SLURM_REASON if IN_SLURM_TASK.is_set() else REASON
POLL_S = 0.2


def wait(proc: subprocess.Popen[Any], timeout_s: float) -> int | None:
    """proc's exit code; None when the run was interrupted first (proc is still running).
    Raises subprocess.TimeoutExpired past timeout_s, like Popen.wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        if INTERRUPTED.is_set():
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
        try:
            return proc.wait(timeout=min(POLL_S, left))
        except subprocess.TimeoutExpired:
            continue


def map_in_threads(fn: Callable[[Any], Any], items: Sequence[Any], workers: int,
                   name: str) -> list[Any]:
    """fn(item) for every item, on up to `workers` threads, in the items' order. On a Ctrl-C or
    SIGTERM: INTERRUPTED is set, no item starts, every item that had started is waited for, and the
    interrupt is raised again.

    Python runs a signal handler on the main thread only, and only while that thread runs Python
    code. Linux hands a process-directed SIGTERM or SIGINT to any thread that does not block it; a
    main thread blocked in Future.result() without a timeout is then not woken, and the interrupt
    waited until the running cells had finished. CI saw it once: a SIGTERM sent during a venv build
    took effect after the probe had trained to the end (tests/unit/test_scheduler_signal.py aims the
    signal at a worker). So the main thread waits in POLL_S slices.

    An item starts under the same lock that sets INTERRUPTED, so it either sees the flag or is
    counted first. (A ThreadPoolExecutor alone loses such an item: a signal inside submit() leaves
    its new thread out of the threads that shutdown() joins.)"""
    state = threading.Condition()
    active = 0

    def one(item: Any) -> Any:
        nonlocal active
        with state:
            if INTERRUPTED.is_set():
                return None
            active += 1
        try:
            return fn(item)
        finally:
            with state:
                active -= 1
                state.notify_all()

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        futures = [executor.submit(one, item) for item in items]
        for future in futures:
            while not future.done():
                futures_wait([future], timeout=POLL_S)
        results = [future.result() for future in futures]
    except BaseException:
        with state:
            INTERRUPTED.set()
        executor.shutdown(wait=False, cancel_futures=True)
        with state:
            while active:
                state.wait(POLL_S)  # in slices: a second signal still gets through
        raise
    executor.shutdown(wait=True)
    return results


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM that arrived while a report was being written: `finished`, the report
    was completed and published first; else a second signal stopped it and the report files are as
    they were before it."""

    def __init__(self, finished: bool) -> None:
        super().__init__("report finished first" if finished else "report left as it was")
        self.finished = finished


HELD_NOTICE = ("\ninterrupted while writing the report: finishing it first, then stopping "
               "(interrupt again to stop now; the report is then left as it was before)\n")
_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held(notice: str | None = HELD_NOTICE, *, escape: bool = True) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM off until the block ends, then raise Interrupted(finished=True).
    With `escape`, a second signal raises Interrupted(finished=False) at once. Only the main thread
    can install signal handlers; elsewhere the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if caught and escape:
            raise Interrupted(finished=False)
        caught.append(signum)
        if notice and len(caught) == 1:
            os.write(2, notice.encode())  # not print(): a signal may land inside a print

    before = {s: signal.getsignal(s) for s in _HELD_SIGNALS}
    for s in _HELD_SIGNALS:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in before.items():
            if handler is not None:  # None: installed outside Python; nothing to put back
                signal.signal(s, handler)
    if caught:
        raise Interrupted(finished=True)


def console_line(exc: KeyboardInterrupt) -> str:
    """What the console says about an interrupt: what really happened to the cells and to the
    report."""
    cells = ("no new cell was started; cells that were running were stopped and recorded as infra "
             "(interrupted); finished cells are kept; `python -m pinmatrix matrix --resume` runs "
             "the rest")
    left = ("the report was left as it was before (`python -m pinmatrix report --run RUN` "
            "writes it)")
    if isinstance(exc, Interrupted):
        if INTERRUPTED.is_set():  # cells were cut short first, then the report was interrupted
            return f"interrupted: {cells}" + ("" if exc.finished else f"; {left}")
        if exc.finished:
            return ("interrupted while writing the report: every cell had finished, and the "
                    "report was completed first; nothing was lost")
        return f"interrupted twice while writing the report: every cell had finished; {left}"
    return f"interrupted: {cells}"
