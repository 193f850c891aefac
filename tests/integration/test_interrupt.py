"""Interrupting a real run (issue 17): SIGINT to the process group (a terminal's Ctrl-C), SIGINT to
the harness alone, and SIGTERM to the harness alone (a CI cancel, `kill`), at build time and at
probe time. Each must leave a run folder whose summary counts exactly its outcomes, with the cell
that was cut short recorded as `infra` / `interrupted` (never as a build failure), and no probe
left running.

Real runs: the venv runner, real uv from the local wheelhouse, the real probe training LoRA long
enough to be caught running (lora_steps 10000 on one cell).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fault_cells as fc  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)

SIGNALS = {
    "sigint-group": lambda pid: os.killpg(pid, signal.SIGINT),
    "sigint-main": lambda pid: os.kill(pid, signal.SIGINT),
    "sigterm-main": lambda pid: os.kill(pid, signal.SIGTERM),
}


@pytest.fixture(scope="module")
def shared_venvs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv folder the probe-time runs share: built once, by the first of them."""
    return tmp_path_factory.mktemp("interrupt-venvs")


def _start(tmp_path: Path, venvs: Path) -> subprocess.Popen[str]:
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", ["4.57.6"], checks=("lora-train",),
                             lora_steps=10000, cell_timeout_s=1800, check_timeout_s=1800)
    return subprocess.Popen(
        [sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(matrix), "--runner", "venv",
         "--cpu", "--reports", str(tmp_path / "reports"), "--venv-dir", str(venvs), "--no-live",
         "--no-flaky-rerun"],
        cwd=ROOT, env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS), "PYTHONPATH": str(ROOT)},
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail("the run ended before the signal:\n" + (proc.stdout.read() or ""))
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the stage to interrupt was never reached")


def _run_dir(tmp_path: Path) -> Path | None:
    runs = sorted((tmp_path / "reports").glob("2*"))
    return runs[0] if runs else None


def _probe_running(run: Path | None) -> bool:
    return run is not None and any((run / "work").glob("*/cell.json"))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def _check_folder(proc: subprocess.Popen[str], tmp_path: Path, stage: str) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "recorded as infra (interrupted)" in out, out
    run = _run_dir(tmp_path)
    assert run is not None, out
    outcomes = {p.stem: json.loads(p.read_text()) for p in (run / "outcomes").glob("*.json")}
    summary = json.loads((run / "summary.json").read_text())
    assert {c["id"] for c in summary["cells"]} == set(outcomes), (summary["verdict"], outcomes)
    (outcome,) = outcomes.values()
    assert outcome["status"] == "infra" and outcome["signature"] == "interrupted", outcome
    assert outcome["stage"] == stage, outcome
    assert "complete" not in json.loads((run / "run.json").read_text())  # --resume picks it up
    assert _processes_mentioning(str(run)) == []  # the probe was stopped, not orphaned
    return outcome


@pytest.mark.parametrize("how", list(SIGNALS))
def test_interrupt_at_probe_time(tmp_path: Path, shared_venvs: Path, how: str) -> None:
    proc = _start(tmp_path, shared_venvs)
    _wait_for(lambda: _probe_running(_run_dir(tmp_path)), proc, 900)
    time.sleep(2)  # the probe is importing torch or training
    SIGNALS[how](proc.pid)
    _check_folder(proc, tmp_path, "run")


@pytest.mark.parametrize("how", list(SIGNALS))
def test_interrupt_at_build_time(tmp_path: Path, how: str) -> None:
    venvs = tmp_path / "venvs"  # fresh: the build is what gets interrupted
    proc = _start(tmp_path, venvs)
    _wait_for(lambda: venvs.is_dir() and any(venvs.iterdir()), proc, 600)
    SIGNALS[how](proc.pid)
    # The group's SIGINT reaches uv too: the build stops. The harness alone does not stop uv: the
    # build finishes, then no probe is started (stage run, before the probe's work folder).
    outcome = _check_folder(proc, tmp_path, "prepare" if how == "sigint-group" else "run")
    run = _run_dir(tmp_path)
    assert run is not None and not any((run / "work").glob("*/cell.json")), outcome
