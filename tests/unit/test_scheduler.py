"""pinmatrix/run/scheduler.py: a device is never held by two cells, builds of one key never overlap,
the build limit holds, and every cell finishes when some fail or raise. Property-based
(hypothesis)."""
from __future__ import annotations

import io
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinmatrix.run.progress import Progress
from pinmatrix.run.scheduler import (
    Scheduler,
    SchedulerError,
    detect_gpus,
    device_tokens,
    parse_gpu_list,
    parse_nvidia_smi_list,
)

cell_plans = st.lists(
    st.tuples(st.integers(0, 3),                       # image key
              st.sampled_from(["ok", "fail", "raise"]),  # what the cell does
              st.integers(0, 3)),                      # run length, in ms
    min_size=1, max_size=14)


def _run(plans, devices, build_jobs):
    lock = threading.Lock()
    events: list[tuple[str, object, float, float]] = []   # (kind, what, start, end)

    def task(item, ctx):
        index, (key, kind, ms) = item
        with ctx.build(f"img{key}"):
            t0 = time.perf_counter()
            time.sleep(0.0005)
            with lock:
                events.append(("build", f"img{key}", t0, time.perf_counter()))
        with ctx.device() as dev:
            t0 = time.perf_counter()
            time.sleep(ms / 1000)
            with lock:
                events.append(("device", dev, t0, time.perf_counter()))
        if kind == "raise":
            raise RuntimeError(f"cell {index} blew up")
        return ("fail" if kind == "fail" else "ok", index)

    sched = Scheduler(devices, build_jobs=build_jobs,
                      progress=Progress(len(plans), stream=io.StringIO(), live=False))
    results = sched.run(list(enumerate(plans)), lambda it: str(it[0]), task,
                        lambda item, exc: ("error", item[0]))
    return results, events


def _overlaps(intervals):
    intervals = sorted(intervals)
    return any(b[0] < a[1] for a, b in zip(intervals, intervals[1:], strict=False))


@settings(max_examples=40, deadline=None)
@given(plans=cell_plans, n_gpus=st.integers(1, 4), build_jobs=st.integers(1, 3))
def test_gpu_never_shared_and_all_cells_finish(plans, n_gpus, build_jobs) -> None:
    devices = [str(i) for i in range(n_gpus)]
    results, events = _run(plans, devices, build_jobs)
    # every cell has exactly its own result, in order, whatever the others did
    expected = [("error" if kind == "raise" else "fail" if kind == "fail" else "ok", i)
                for i, (_, kind, _) in enumerate(plans)]
    assert results == expected
    by_device: dict = {}
    for kind, what, t0, t1 in events:
        if kind == "device":
            by_device.setdefault(what, []).append((t0, t1))
    assert set(by_device) <= set(devices)
    for dev, spans in by_device.items():
        assert not _overlaps(spans), f"GPU {dev} held by two cells at once"
    # one image key is never built twice at the same time, and the build limit holds
    by_key: dict = {}
    builds = [(t0, t1) for kind, what, t0, t1 in events if kind == "build"]
    for kind, what, t0, t1 in events:
        if kind == "build":
            by_key.setdefault(what, []).append((t0, t1))
    for spans in by_key.values():
        assert not _overlaps(spans)
    for t0, _ in builds:
        assert sum(1 for s0, s1 in builds if s0 <= t0 < s1) <= build_jobs


def test_devices_really_run_in_parallel() -> None:
    """Two GPUs, two 0.3 s cells: about 0.3 s, not 0.6 s (the scheduler is not serial in
    disguise)."""
    plans = [(0, "ok", 300), (1, "ok", 300)]
    t0 = time.perf_counter()
    _run(plans, ["0", "1"], 2)
    assert time.perf_counter() - t0 < 0.55


def test_device_tokens() -> None:
    assert device_tokens(cpu=False, requested=None, detected=["0", "1"]) == ["0", "1"]
    assert device_tokens(cpu=False, requested=["1"], detected=["0", "1"]) == ["1"]
    assert device_tokens(cpu=True, requested=None, detected=["0", "1"], cpu_jobs=2) == ["", ""]
    assert device_tokens(cpu=False, requested=None, detected=[]) == [None]
    with pytest.raises(SchedulerError, match="GPU 7 not found"):
        device_tokens(cpu=False, requested=["7"], detected=["0", "1"])
    with pytest.raises(SchedulerError):
        device_tokens(cpu=True, requested=None, detected=[], cpu_jobs=0)


def test_gpu_lists() -> None:
    assert parse_gpu_list("0, 2") == ["0", "2"]
    for bad in ("", "a", "0,0", "1;2"):
        with pytest.raises(SchedulerError):
            parse_gpu_list(bad)
    text = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aa)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bb)\n"
    )
    assert parse_nvidia_smi_list(text) == ["0", "1"]

    class Proc:
        returncode, stdout = 0, text

    assert detect_gpus(lambda *a, **k: Proc()) == ["0", "1"]

    def missing(*a, **k) -> None:
        raise FileNotFoundError("nvidia-smi")

    assert detect_gpus(missing) == []


def test_progress_counts_and_plain_lines() -> None:
    out = io.StringIO()
    p = Progress(3, stream=out, live=False)
    p.set("a", "building")
    p.set("b", "running", "on GPU 1")
    p.set("a", "done")
    c = p.counts()
    assert (c["queued"], c["building"], c["running"], c["done"]) == (1, 0, 1, 1)
    assert out.getvalue().splitlines()[-1] == "[1/3 done] a: done"
    assert "b: running on GPU 1" in out.getvalue() and "\r" not in out.getvalue()
    live = io.StringIO()
    q = Progress(2, stream=live, live=True)
    q.set("a", "running")
    q.log("a: done: result cells/a.json")
    q.close()
    assert "\r\x1b[2K1 queued · 0 resolving · 0 building · 1 running · 0 done" in live.getvalue()
