"""What a user sees on the console: a command run into a pipe (as under nox, CI or `tee`), each line
timed as it arrives, and the Python values that must never reach it (a dict, a list, a repr)."""
from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# A Python value printed as Python: {'k': ...}, ['a', 'b'], PosixPath('…'), Step(who=…),
# <object at 0x…>, and None/True/False standing alone as a value.
RAW_PYTHON = [
    (re.compile(r"\{\s*'[^']*'\s*:"), "a dict"),
    (re.compile(r'\{\s*"[^"]*"\s*:\s*[^ ]'), "a dict (JSON)"),
    (re.compile(r"\[\s*'[^']*'\s*(,\s*'[^']*'\s*)*\]"), "a list"),
    (re.compile(r"\[\s*\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*)+\]"), "a list of numbers"),
    (re.compile(r"\b(Posix|Windows)?Path\('"), "a Path repr"),
    (re.compile(r"\b[A-Z][A-Za-z]+\((\w+)="), "a dataclass repr"),
    (re.compile(r" object at 0x[0-9a-f]+"), "an object repr"),
    (re.compile(r"(:|=|\()\s*(None|True|False)\b"), "a None/True/False"),
]


def raw_python_values(text: str) -> list[str]:
    """`what: line` for every console line that shows a raw Python value."""
    found = []
    for line in text.splitlines():
        for pattern, what in RAW_PYTHON:
            if pattern.search(line):
                found.append(f"{what}: {line.strip()[:200]}")
                break
    return found


@dataclass
class TimedRun:
    returncode: int
    lines: list[tuple[float, str]]   # (seconds since start, line), stdout and stderr as they came
    wall_s: float

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def longest_gap(self) -> tuple[float, str]:
        """The longest time without a new line (from the start, between lines, to the exit) and
        the line that ended it."""
        marks = [(0.0, "(start)"), *self.lines, (self.wall_s, "(exit)")]
        return max(((b - a, line) for (a, _), (b, line) in zip(marks, marks[1:], strict=False)),
                   default=(0.0, ""))


def run_timed(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, timeout: float = 1800) -> TimedRun:
    """Run `cmd` with stdout and stderr into one pipe; time each line as it arrives."""
    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(env) if env is not None else None, cwd=cwd,
                            bufsize=1)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    reader.join(timeout=30)
    return TimedRun(code, lines, time.monotonic() - started)
