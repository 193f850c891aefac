"""Progress of a matrix run: how many cells are queued, resolving, building, running, done.

On a terminal one live line is rewritten in place (and log lines are printed above it); anywhere
else (CI logs, files, Slurm output) every state change is one plain, timestamp-free log line, so the
output stays greppable and diffable.
"""
from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import TextIO

STATES = ("queued", "resolving", "building", "running", "done")


class Progress:
    def __init__(self, total: int, *, stream: TextIO | None = None, live: bool | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.total = total
        self._echo = echo
        self._state: dict[str, str] = {}
        self._lock = threading.RLock()  # line() re-enters it from _redraw()
        self._line_shown = False
        self.on_log: Callable[[], None] | None = None  # told of every log line (the heartbeat)

    def counts(self) -> Counter[str]:
        with self._lock:
            counts = Counter(self._state.values())
        counts["queued"] += self.total - sum(counts.values())
        return counts

    def line(self) -> str:
        c = self.counts()
        return " · ".join(f"{c[s]} {s}" for s in STATES) + f"  (of {self.total})"

    def set(self, cell_id: str, state: str, note: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"progress state {state!r} not one of {STATES}")
        with self._lock:
            self._state[cell_id] = state
        if self.live:
            self._redraw()
        else:
            done = sum(1 for s in self._state.values() if s == "done")
            self.log(f"[{done}/{self.total} done] {cell_id}: {state}{(' ' + note) if note else ''}")

    def log(self, message: str) -> None:
        """A log line; on a terminal it goes above the live line."""
        with self._lock:
            if self.live and self._line_shown:
                self.stream.write("\r\x1b[2K")
            if self._echo is not None and not self.live:
                self._echo(message)
            else:
                self.stream.write(message + "\n")
            self.stream.flush()
        if self.on_log is not None:
            self.on_log()
        if self.live:
            self._redraw()

    def _redraw(self) -> None:
        with self._lock:
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
            self._line_shown = True

    def close(self) -> None:
        with self._lock:
            if self.live and self._line_shown:
                self.stream.write("\n")
                self.stream.flush()
                self._line_shown = False
