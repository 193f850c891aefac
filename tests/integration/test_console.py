"""A cold resolve into a pipe, as a new user sees it under nox, CI or `tee`: no silence longer than
10 s, each cell said as it resolves with its time, the summary in words, no raw Python value.

Cold means both caches empty: pinmatrix's resolve cache and uv's own (index pages, metadata). The
default matrix's cell resolves CUDA torch 2.11.0 from PyPI; with empty caches that takes tens of
seconds, which the old console spent in silence before printing a dict.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from console import raw_python_values, run_timed

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
QUIET_BAR_S = 10.0

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


def test_a_cold_resolve_into_a_pipe_is_never_silent_for_10_s(tmp_path: Path) -> None:
    env = {**os.environ, "PINMATRIX_CACHE_DIR": str(tmp_path / "pinmatrix-cache"),
           "UV_CACHE_DIR": str(tmp_path / "uv-cache"), "PYTHONUNBUFFERED": ""}
    env.pop("PYTHONUNBUFFERED")  # the harness itself must flush its lines into a pipe
    run = run_timed([sys.executable, "-m", "pinmatrix", "resolve", "--matrix",
                     str(ROOT / "matrix.yaml"), "--reports", str(tmp_path / "reports"),
                     "transformers=4.57.6", "unsloth=none"], env=env, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.text
    gap, after = run.longest_gap()
    assert gap < QUIET_BAR_S, f"{gap:.1f} s without a line, until: {after}\n{run.text}"
    lines = [line for _, line in run.lines]
    said = [ln for ln in lines if ln.startswith("resolve [1/1] py3.12-torch2.11.0-tf4.57.6-")]
    assert len(said) == 1 and ": resolved, " in said[0] and said[0].endswith(" s"), run.text
    assert lines[-2].startswith("1 cell"), run.text  # the table's own footer, in words
    assert raw_python_values(run.text) == [], run.text
