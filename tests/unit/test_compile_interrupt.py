"""Ctrl-C while the venv runner compiles a stack's bytecode (2 of 12 tries once hung in
compileall's process pool). A terminal's Ctrl-C is a SIGINT to the whole foreground process group;
the harness must stop within seconds every time, leave no compiling process behind and write no
"compiled" marker.

The runner's real bytecode step (importing the stack's packages, torch and transformers of this
interpreter, in a child with a fresh pycache folder each try), interrupted at a random moment.
The number of tries is PINMATRIX_INTERRUPT_REPEATS (CI: a few; 50 were run once by hand, all
stopped within 0.4 s)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPEATS = int(os.environ.get("PINMATRIX_INTERRUPT_REPEATS", "3"))
STOP_WITHIN_S = 20

# The harness side, as the scheduler runs a prepare: the compile on a worker thread
# (interrupt.map_in_threads), the main thread waiting in slices for Ctrl-C.
HARNESS = r"""
import json, sys
from pathlib import Path
from pinmatrix import interrupt
from pinmatrix.cell import Cell
from pinmatrix.runners.venv import VenvRunner

runner = VenvRunner.__new__(VenvRunner)
runner.compile_cache_root = Path(sys.argv[1])
cell = Cell(pins={"python": "3.11", "torch": "x", "transformers": "x"})
print("compiling", flush=True)
try:
    [done] = interrupt.map_in_threads(
        lambda c: runner._bytecode(c, Path(sys.executable), "stack"), [cell], 1, "compile")
    print(json.dumps(done), flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _compilers_of(folder: Path) -> list[str]:
    """Processes still compiling into `folder` (in any session): the compile and its pool."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder).encode() in environ and state not in ("Z", "X"):
            found.append(proc.name)
    return found


@pytest.mark.parametrize("attempt", range(REPEATS))
def test_ctrl_c_during_the_bytecode_compile_stops_at_once(tmp_path: Path, attempt: int) -> None:
    cache = tmp_path / "compile"
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(cache)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # its own group: the "terminal"
    try:
        assert harness.stdout is not None and harness.stdout.readline().strip() == "compiling"
        time.sleep(random.Random(attempt).uniform(0.3, 2.0))
        os.killpg(harness.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        started = time.monotonic()
        try:
            harness.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the harness was still running {STOP_WITHIN_S}s after Ctrl-C "
                        f"(try {attempt}): compileall's pool deadlocked")
        output = harness.stdout.read()
        took = time.monotonic() - started
        deadline = time.monotonic() + 5
        while _compilers_of(cache) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _compilers_of(cache), "a compile process outlived the harness"
        if harness.returncode == 130:  # interrupted mid-compile: nothing claims it compiled
            assert not list(cache.rglob(".pinmatrix-bytecode.json")), output
        else:  # the compile had finished before the signal landed
            assert '"compiled"' in output, output
        print(f"try {attempt}: stopped {took:.2f}s after Ctrl-C, exit {harness.returncode}")
    finally:
        if _group_alive(harness.pid):
            os.killpg(harness.pid, signal.SIGKILL)
        harness.wait()
