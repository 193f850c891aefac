"""The run was interrupted (Ctrl-C, SIGTERM): one process-wide flag (issue 17).

The CLI turns SIGTERM into the same KeyboardInterrupt as Ctrl-C; the scheduler sets INTERRUPTED,
starts no queued cell and waits for the running ones. A running probe is in its own session (so a
terminal's Ctrl-C does not reach it): the runner sees the flag, kills the probe's process group and
reports `interrupted`; a build or probe cut short this way is recorded as `infra: interrupted`,
never as a build failure, so `--resume` runs it again. The summary is written after the last of
those outcomes.
"""
from __future__ import annotations

import subprocess
import threading
import time

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


def wait(proc: subprocess.Popen, timeout_s: float) -> int | None:
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
