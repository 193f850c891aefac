"""Several cells on one GPU: their compat work shares it, a speed measurement has it alone.

The compat checks load tiny models (a few MiB of weights, under a second of GPU time per step), so
one cell leaves an H200 idle almost all the time; most of a cell's wall time is imports and CPU-side
setup. Running several cells' compat phases on the same GPU at once costs each little, while a
tokens/s number taken with another cell on the card would be false. So the scheduler may hand one
GPU to several cells (`matrix --cells-per-gpu N`), and each cell's probe takes a lock file that the
runner names in PINMATRIX_GPU_LOCK (one per physical GPU, host-wide, so separate pinmatrix runs on
one machine also respect each other):

  * compat work holds the lock shared (flock LOCK_SH);
  * a speed phase holds it exclusive (LOCK_EX), so no other cell's work runs on the GPU meanwhile.

flock alone lets new readers keep a waiting writer out for as long as any compat work keeps coming.
A second file, the turnstile, gives the writer preference: a reader passes the turnstile (shared,
released at once) before it takes the lock; a writer holds the turnstile exclusively while it waits
and measures, so new compat work queues behind it. Nobody waits on the turnstile while holding the
lock, so there is no cycle. Without PINMATRIX_GPU_LOCK (one cell per GPU, or CPU) every phase is a
no-op and nothing is recorded.

stdlib only: it runs inside the cell.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

ENV = "PINMATRIX_GPU_LOCK"


class GpuShare:
    """The cell's side of the GPU lock named by `path` (None: the GPU is not shared)."""

    def __init__(self, path: str | None) -> None:
        self.path = path or None
        self.waited_compat_s = 0.0
        self.waited_speed_s = 0.0
        self.speed_phases = 0
        self._compat: int | None = None   # the lock's descriptor while compat work holds it

    @classmethod
    def from_env(cls) -> "GpuShare":
        return cls(os.environ.get(ENV))

    def _open(self, suffix: str = "") -> int:
        assert self.path is not None
        return os.open(self.path + suffix, os.O_RDWR | os.O_CREAT, 0o666)

    def enter_compat(self) -> None:
        """Start compat work: other cells' compat work may run beside it, a speed phase may not.
        Held until leave_compat() (or a speed phase, which leaves it first)."""
        if self.path is None or self._compat is not None:
            return
        started = time.monotonic()
        turnstile, lock = self._open(".turnstile"), self._open()
        try:
            fcntl.flock(turnstile, fcntl.LOCK_SH)   # queues behind a waiting speed phase
            fcntl.flock(lock, fcntl.LOCK_SH)
        except BaseException:
            os.close(lock)
            os.close(turnstile)
            raise
        os.close(turnstile)                          # closing drops its flock
        self._compat = lock
        self.waited_compat_s += time.monotonic() - started

    def leave_compat(self) -> None:
        if self._compat is not None:
            os.close(self._compat)
            self._compat = None

    @contextmanager
    def speed(self) -> Iterator[dict[str, Any]]:
        """A speed measurement: the GPU alone. Yields the evidence to attach to its records."""
        if self.path is None:
            yield {}
            return
        self.leave_compat()   # never convert a shared flock in place: two converting cells would deadlock
        started = time.monotonic()
        turnstile, lock = self._open(".turnstile"), self._open()
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX)   # no new compat work starts from here on
            fcntl.flock(lock, fcntl.LOCK_EX)        # and the running compat work has finished
            waited = time.monotonic() - started
            self.waited_speed_s += waited
            self.speed_phases += 1
            yield {"gpu_alone": True, "waited_for_gpu_s": round(waited, 3)}
        finally:
            os.close(lock)
            os.close(turnstile)

    def record(self) -> dict[str, Any] | None:
        """The result's `environment.gpu_share` (None when the GPU was not shared)."""
        if self.path is None:
            return None
        return {"lock": os.path.basename(self.path), "waited_compat_s": round(self.waited_compat_s, 3),
                "waited_speed_s": round(self.waited_speed_s, 3), "speed_phases": self.speed_phases}
