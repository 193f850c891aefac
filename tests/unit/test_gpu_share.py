"""Several cells on one GPU (probes/gpu_share.py, pinmatrix/containers/gpu_lock.py): compat work
shares the lock, a speed phase has it alone and is not starved by compat work that keeps coming.
Real processes and real flock, nothing mocked."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pinmatrix.containers import gpu_lock
from pinmatrix.run.scheduler import SchedulerError, device_tokens
from probes.gpu_share import GpuShare

REPO = Path(__file__).resolve().parents[2]


def _holder(lock: Path, kind: str, seconds: float, log: Path, name: str) -> subprocess.Popen[bytes]:
    """A process that takes the lock (`compat` or `speed`), notes when, holds it, and leaves."""
    code = textwrap.dedent(f"""
        import time
        from probes.gpu_share import GpuShare
        share = GpuShare({str(lock)!r})
        with open({str(log)!r}, "a") as log:
            if {kind!r} == "compat":
                share.enter_compat()
            else:
                cm = share.speed(); cm.__enter__()
            log.write(f"{{time.monotonic():.3f}} {name} in\\n"); log.flush()
            time.sleep({seconds})
            log.write(f"{{time.monotonic():.3f}} {name} out\\n"); log.flush()
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


def _events(log: Path) -> list[tuple[float, str, str]]:
    out = []
    for line in log.read_text().splitlines():
        stamp, name, what = line.split()
        out.append((float(stamp), name, what))
    return sorted(out)


def _wait_for(log: Path, entry: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and entry in log.read_text():
            return
        time.sleep(0.02)
    text = log.read_text() if log.exists() else ""
    raise AssertionError(f"{entry!r} never appeared in {log}: {text}")


def test_compat_work_of_two_cells_runs_at_once(tmp_path: Path) -> None:
    lock, log = tmp_path / "gpu-0.lock", tmp_path / "log"
    a = _holder(lock, "compat", 1.0, log, "a")
    b = _holder(lock, "compat", 1.0, log, "b")
    assert a.wait(30) == 0 and b.wait(30) == 0
    ev = _events(log)
    ins = [t for t, _, what in ev if what == "in"]
    first_out = min(t for t, _, what in ev if what == "out")
    assert max(ins) < first_out, f"the second cell waited for the first: {ev}"


def test_a_speed_phase_waits_for_compat_work_then_has_the_gpu_alone(tmp_path: Path) -> None:
    lock, log = tmp_path / "gpu-0.lock", tmp_path / "log"
    compat = _holder(lock, "compat", 1.0, log, "compat")
    _wait_for(log, "compat in")
    speed = _holder(lock, "speed", 0.5, log, "speed")
    assert compat.wait(30) == 0 and speed.wait(30) == 0
    ev = {(name, what): t for t, name, what in _events(log)}
    assert ev[("speed", "in")] >= ev[("compat", "out")]


def test_compat_work_that_keeps_coming_cannot_starve_a_speed_phase(tmp_path: Path) -> None:
    lock, log = tmp_path / "gpu-0.lock", tmp_path / "log"
    first = _holder(lock, "compat", 1.5, log, "first")
    _wait_for(log, "first in")
    speed = _holder(lock, "speed", 0.5, log, "speed")
    time.sleep(0.5)   # the speed phase now waits at the turnstile
    late = _holder(lock, "compat", 0.2, log, "late")
    for proc in (first, speed, late):
        assert proc.wait(30) == 0
    ev = {(name, what): t for t, name, what in _events(log)}
    # without the turnstile the late compat work would slip in beside `first` and go before the
    # speed phase; with it, it queues behind the speed phase
    assert ev[("speed", "in")] >= ev[("first", "out")]
    assert ev[("late", "in")] >= ev[("speed", "out")], _events(log)


def test_without_a_lock_every_phase_is_free_and_nothing_is_recorded() -> None:
    share = GpuShare(None)
    share.enter_compat()
    with share.speed() as alone:
        assert alone == {}
    assert share.record() is None


def test_a_speed_phase_records_its_wait_and_leaves_compat_first(tmp_path: Path) -> None:
    share = GpuShare(str(tmp_path / "gpu-0.lock"))
    share.enter_compat()
    # the same process goes from compat to speed: leaving the shared lock first is what keeps two
    # cells that both want to measure from deadlocking in a shared-to-exclusive conversion
    with share.speed() as alone:
        assert alone["gpu_alone"] is True and alone["waited_for_gpu_s"] >= 0
    record = share.record()
    assert record is not None and record["speed_phases"] == 1 and record["lock"] == "gpu-0.lock"


def test_each_gpu_is_handed_out_cells_per_gpu_times_round_robin() -> None:
    tokens = device_tokens(cpu=False, requested=["0", "1"], detected=["0", "1"], cells_per_gpu=3)
    assert tokens == ["0", "1", "0", "1", "0", "1"]
    assert device_tokens(cpu=False, requested=None, detected=["0"]) == ["0"]
    # no GPU: cells_per_gpu does not apply, cpu_jobs does
    assert device_tokens(cpu=True, requested=None, detected=[], cells_per_gpu=4) == [""]
    with pytest.raises(SchedulerError, match="--cells-per-gpu 0"):
        device_tokens(cpu=False, requested=None, detected=["0"], cells_per_gpu=0)


def test_the_host_lock_is_per_gpu_and_only_for_one_gpu(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gpu_lock.DIR_ENV, str(tmp_path / "locks"))
    zero = gpu_lock.host_lock("0")
    assert zero == tmp_path / "locks" / "gpu-0.lock" and zero.exists()
    assert (zero.stat().st_mode & 0o666) == 0o666   # a container's user opens it too
    assert gpu_lock.host_lock("device=1") == tmp_path / "locks" / "gpu-1.lock"
    for token in (None, "", "0,1", "all"):
        assert gpu_lock.host_lock(token) is None
