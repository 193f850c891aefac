"""What each worker is doing right now, and a heartbeat that says so when the console goes quiet.

One long step (uv installing a multi-GB torch layer, a docker build, a probe training a model)
prints nothing for minutes, and a silent minute looks like a hang, on a terminal or in a CI log
alike. Every long step runs inside `doing(...)`; while a run is on, a `Heartbeat` prints one line
after QUIET_S seconds without output, naming each step under way, how long it has run and, when
the step has a log file, that log's last line.

`doing` also times the step (`Step.seconds`), which is how the runners report the time of each
stage of a cell (downloads and installs, bytecode compile, probe) to outcome timings and to
`nox -s bench`.
"""
from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Under the bar of 10 s, with room for a heartbeat thread that wakes every POLL_S.
QUIET_S = 8.0
POLL_S = 0.5
_MAX_LISTED = 3      # steps named in one heartbeat line; the rest are counted

_local = threading.local()
# a line that is a Python or JSON value: a dict, a list, a tuple
_RAW = re.compile(r"^[{(]|^\[\s*[\[{('\"\d\]-]")
_steps: dict[int, Step] = {}
_steps_lock = threading.Lock()
_ids = itertools.count()


@dataclass
class Step:
    who: str                  # the cell (or stage) the step belongs to
    what: str                 # "uv pip install torch.lock (torch 2.11.0)"
    started: float
    log: Path | None = None   # a file the step writes to; its last line shows what it is at
    marker: str = ""          # only the log's lines that start with this (the probe's own words)
    seconds: float = 0.0      # set when the step ends


@contextlib.contextmanager
def acting_for(who: str) -> Iterator[None]:
    """Steps started on this thread inside the block belong to `who` (a cell id)."""
    before = getattr(_local, "who", "")
    _local.who = who
    try:
        yield
    finally:
        _local.who = before


@contextlib.contextmanager
def doing(what: str, log: Path | None = None, marker: str = "") -> Iterator[Step]:
    """Register a long step for the heartbeat; the yielded Step has `.seconds` once it ends."""
    step = Step(getattr(_local, "who", ""), what, time.monotonic(), log, marker)
    key = next(_ids)
    with _steps_lock:
        _steps[key] = step
    try:
        yield step
    finally:
        step.seconds = round(time.monotonic() - step.started, 2)
        with _steps_lock:
            _steps.pop(key, None)


def under_way() -> list[Step]:
    with _steps_lock:
        return sorted(_steps.values(), key=lambda s: s.started)


def last_line(path: Path | None, limit: int = 120, marker: str = "") -> str:
    """The last non-empty line of a log file (with `marker`: the last that starts with it),
    clipped; the tail only is read. A line that is a Python value (a trainer's `{'loss': …}`) is
    never shown: the console speaks in words."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # docker's BuildKit and uv redraw lines with \r: the last redraw is the line that shows
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and ln.startswith(marker) and not _RAW.match(ln)]
    if not lines:
        return ""
    line = " ".join(lines[-1].split())
    return line if len(line) <= limit else line[:limit] + "…"


def describe(steps: list[Step], now: float, quiet_s: float) -> str:
    """One heartbeat line in words. Steps doing the same thing are said once, with a count:
    `… 8 s since the last line; under way: uv pip compile the whole stack (Python 3.12) for 6
    cells, the longest 53 s (<cell>)`, or for one step `<cell>: <what>, 41 s (last: <log line>)`."""
    head = f"… {quiet_s:.0f} s since the last line"
    if not steps:
        return head + "; finishing up"
    groups: dict[str, list[Step]] = {}
    for step in steps:  # oldest first: the group of the longest wait comes first
        groups.setdefault(step.what, []).append(step)
    parts = []
    for what, same in list(groups.items())[:_MAX_LISTED]:
        oldest = same[0]
        if len(same) == 1:
            tail = last_line(oldest.log, marker=oldest.marker)
            parts.append(f"{oldest.who + ': ' if oldest.who else ''}{what}, "
                         f"{now - oldest.started:.0f} s" + (f" (last: {tail})" if tail else ""))
        else:
            parts.append(f"{what} for {len(same)} cells, the longest {now - oldest.started:.0f} s"
                         + (f" ({oldest.who})" if oldest.who else ""))
    more = len(groups) - _MAX_LISTED
    return head + "; under way: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class Heartbeat:
    """Wraps the console echo: `echo(line)` prints and resets the quiet clock; a daemon thread
    prints `describe(...)` whenever QUIET_S seconds pass without a line."""

    def __init__(self, echo: Callable[[str], None], quiet_s: float = QUIET_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._echo = echo
        self.quiet_s = quiet_s
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def echo(self, line: str) -> None:
        self._echo(line)
        self.touch()

    def touch(self) -> None:
        """Output went out another way (the live progress line): the console is not quiet."""
        with self._lock:
            self._last = self._clock()

    def beat(self) -> bool:
        """Print a heartbeat line if the console has been quiet long enough; True if it did."""
        now = self._clock()
        with self._lock:
            quiet = now - self._last
            if quiet < self.quiet_s:
                return False
        self.echo(describe(under_way(), now, quiet))
        return True

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            with contextlib.suppress(Exception):  # a heartbeat must never take the run down
                self.beat()

    def start(self) -> Heartbeat:
        self.touch()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
