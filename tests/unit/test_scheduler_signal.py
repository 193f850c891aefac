"""A signal that the kernel hands to a cell's thread instead of the main thread still stops the run
at once.

Python runs signal handlers only on the main thread, and only when it runs Python code. Linux gives
a process-directed SIGTERM to any thread that does not block it. When a worker thread takes it, a
main thread blocked in Future.result() without a timeout is not woken: the handler (and so the
interrupt) waited until the running cell had finished. CI caught it once: a SIGTERM sent during a
cell's venv build was seen only after the probe had trained to the end, and the cell was recorded
as finished instead of `infra: interrupted`. `pthread_kill` aims the signal at the worker here, so
this test does not depend on where the kernel would have sent it.

Two moments: while the main thread is still starting the worker threads (a signal inside
ThreadPoolExecutor.submit once left the new thread out of those the interrupt waited for), and
while it waits for the cells.
"""
from __future__ import annotations

import signal
import threading
import time

import pytest

from pinmatrix import interrupt
from pinmatrix.run.scheduler import Scheduler

WAIT_S = 10.0


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers are installed from the main thread only")
@pytest.mark.parametrize("after_s", [0.0, 0.5])
def test_a_signal_taken_by_a_worker_thread_interrupts_the_running_cell(after_s: float) -> None:
    seen: list[float] = []
    ended: list[int] = []

    def task(item: int, ctx) -> str:
        try:
            return wait_for_the_interrupt()
        finally:
            ended.append(item)

    def wait_for_the_interrupt() -> str:
        time.sleep(after_s)
        started = time.monotonic()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # this worker takes it
        while time.monotonic() - started < WAIT_S:
            if interrupt.INTERRUPTED.is_set():
                seen.append(time.monotonic() - started)
                return "interrupted"
            time.sleep(0.01)
        return "ran to the end"

    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(KeyboardInterrupt):
            Scheduler(["cpu0"], build_jobs=1).run([1], str, task, lambda item, exc: "error")
        assert ended == [1], "the run stopped before the cell it had started"
    finally:
        signal.signal(signal.SIGTERM, before)
        interrupt.INTERRUPTED.clear()
    assert seen, f"the cell never saw the interrupt in {WAIT_S:.0f}s: it ran to the end"
    assert seen[0] < 2.0, seen
