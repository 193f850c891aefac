"""Run `python -m pinmatrix` held at one point of its report, so that a test can interrupt it there.

Writing a report takes milliseconds: no signal sent from outside could be aimed at it. This helper
runs the real CLI in this process with one addition: when the report starts the atomic write of
FILE (the temp file of `.FILE.*`, made by pinmatrix/fsio.py), it writes MARKER and waits there
until SIGNALS signals have reached the process (or ten minutes), then goes on. Everything else is
the real run; the waiting is the test's, and what the signals do is pinmatrix's own handling.

    python report_gate.py FILE SIGNALS MARKER -- <pinmatrix arguments>

A signal is seen through `signal.set_wakeup_fd` (CPython's C-level handler writes one byte per
signal before any Python handler runs), so the gate never decides what the signal does.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pinmatrix.cli.main import main as pinmatrix_main

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def install(file_name: str, signals: int, marker: Path) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    real_mkstemp = tempfile.mkstemp
    reached = False

    def gated(*args: Any, **kwargs: Any) -> Any:
        nonlocal reached
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else None)
        if not reached and prefix == f".{file_name}.":
            reached = True
            marker.write_text(str(os.getpid()))
            seen, deadline = 0, time.monotonic() + 600
            while seen < signals and time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError):
                    seen += len(os.read(read_end, 64))
                time.sleep(0.05)  # the Python-level handler of a signal runs here
            time.sleep(0.2)
        return real_mkstemp(*args, **kwargs)

    tempfile.mkstemp = gated  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    file_name, signals, marker, sep, *cli = argv
    assert sep == "--", argv
    install(file_name, int(signals), Path(marker))

    return pinmatrix_main(cli)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
