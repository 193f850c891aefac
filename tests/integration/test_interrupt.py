"""Interrupting a real run: SIGINT to the process group (a terminal's Ctrl-C), SIGINT to
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

from pinmatrix.run.state import WRITER_LOCK

sys.path.insert(0, str(Path(__file__).parent))
import fault_cells as fc  # noqa: E402

from pinmatrix.outcome import Outcome

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


def _start(tmp_path: Path, venvs: Path, *, started_ignoring_sigint: bool = False
           ) -> subprocess.Popen[str]:
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", ["4.57.6"], checks=("lora-train",),
                             lora_steps=10000, cell_timeout_s=1800, check_timeout_s=1800)
    return subprocess.Popen(
        [sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(matrix), "--runner", "venv",
         "--cpu", "--reports", str(tmp_path / "reports"), "--venv-dir", str(venvs), "--no-live",
         "--no-flaky-rerun"],
        cwd=ROOT, env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS), "PYTHONPATH": str(ROOT)},
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a shell's background job (`cmd &`) starts with SIGINT ignored, and Python keeps it so
        preexec_fn=_ignore_sigint if started_ignoring_sigint else None)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def test_interrupt_of_a_run_started_as_a_background_job(tmp_path: Path,
                                                         shared_venvs: Path) -> None:
    """`pinmatrix matrix ... &` from a script starts with SIGINT ignored: `kill -INT` must still
    stop it (before, it did nothing, and the probe and uv inherited the ignore)."""
    proc = _start(tmp_path, shared_venvs, started_ignoring_sigint=True)
    _wait_for(lambda: _probe_running(_run_dir(tmp_path)), proc, 900)
    time.sleep(2)
    os.kill(proc.pid, signal.SIGINT)
    _check_folder(proc, tmp_path, "run")


@pytest.mark.parametrize("how", list(SIGNALS))
def test_interrupt_at_build_time(tmp_path: Path, how: str) -> None:
    venvs = tmp_path / "venvs"  # fresh: the build is what gets interrupted
    proc = _start(tmp_path, venvs)
    # Signalled while uv installs the cell's packages. Waiting only for the venv folder to appear
    # was a race: from a warm uv cache the install can be over before the signal (CI saw a group
    # SIGINT land after it, so nothing was left to cut and the cell was stopped at stage run).
    _wait_for(lambda: any(" pip install " in args for args in _processes_mentioning(str(venvs))),
              proc, 600)
    SIGNALS[how](proc.pid)
    # The group's SIGINT reaches uv too: the build stops. The harness alone does not stop uv: the
    # build finishes, then no probe is started (stage run, before the probe's work folder).
    outcome = _check_folder(proc, tmp_path, "prepare" if how == "sigint-group" else "run")
    run = _run_dir(tmp_path)
    assert run is not None and not any((run / "work").glob("*/cell.json")), outcome


# --- report time ---------------------------------------------------------------------------------
# Every cell has finished; the harness is writing summary.json/md/html, junit.xml, pins/ and
# reports/latest. report_gate.py holds the real run at the start of summary.html's write (after
# summary.json and summary.md were made) until the signal has reached it. The report must then be
# finished and published whole before the run stops with 130, or, after a second signal, left as it
# was before (here: none); never part of a new one.
GATE = Path(__file__).with_name("report_gate.py")
REPORT_FILES = ("summary.json", "summary.md", "summary.html", "junit.xml")


def _start_gated(tmp_path: Path, venvs: Path, signals: int) -> tuple[subprocess.Popen[str], Path]:
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", ["4.57.6"], checks=("imports",))
    log = tmp_path / "console.log"
    with log.open("w") as console:
        proc = subprocess.Popen(
            [sys.executable, str(GATE), "summary.html", str(signals),
             str(tmp_path / "gate-reached"), "--", "matrix", "--matrix", str(matrix), "--runner",
             "venv", "--cpu", "--reports", str(tmp_path / "reports"), "--venv-dir", str(venvs),
             "--no-live", "--no-flaky-rerun"],
            cwd=ROOT,
            env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS), "PYTHONPATH": str(ROOT)},
            start_new_session=True, stdout=console, stderr=subprocess.STDOUT, text=True)
    return proc, log


def _gate_reached(tmp_path: Path, proc: subprocess.Popen[str], log: Path) -> Path:
    deadline = time.monotonic() + 900
    while not (tmp_path / "gate-reached").exists():
        if proc.poll() is not None:
            pytest.fail("the run ended before its report:\n" + log.read_text())
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the report was never reached:\n" + log.read_text())
        time.sleep(0.1)
    run = _run_dir(tmp_path)
    assert run is not None
    return run


def _leftovers(run: Path) -> list[str]:
    """Temp files and folders of an unfinished atomic write (`.NAME.*`). The writer lock's file is
    not one: it stays, so that a later writer locks the same inode (pinmatrix/run/state.py)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.name != WRITER_LOCK)


@pytest.mark.parametrize("how", list(SIGNALS))
def test_interrupt_at_report_time_finishes_the_report(tmp_path: Path, shared_venvs: Path,
                                                      how: str) -> None:
    proc, log = _start_gated(tmp_path, shared_venvs, signals=1)
    run = _gate_reached(tmp_path, proc, log)
    SIGNALS[how](proc.pid)
    assert proc.wait(timeout=120) == 130, log.read_text()
    out = log.read_text()
    assert "Traceback" not in out, out
    assert "every cell had finished, and the report was completed first" in out, out
    outcomes = {p.stem: json.loads(p.read_text()) for p in (run / "outcomes").glob("*.json")}
    (outcome,) = outcomes.values()
    assert outcome["stage"] == "done" and outcome["status"] is None, outcome  # not interrupted
    summary = json.loads((run / "summary.json").read_text())
    assert {c["id"] for c in summary["cells"]} == set(outcomes), (summary["verdict"], outcomes)
    for name in REPORT_FILES:  # every report file, whole, and of this summary
        assert (run / name).is_file(), (name, sorted(p.name for p in run.iterdir()))
    assert summary["verdict"] in (run / "summary.md").read_text()
    assert summary["verdict"] in (run / "summary.html").read_text()
    assert f'classname="{outcome["cell"]}"' in (run / "junit.xml").read_text()
    if (run / "pins").exists():
        assert (run / "pins" / "README.md").is_file()
    assert json.loads((run / "run.json").read_text()).get("complete") is True
    assert (tmp_path / "reports" / "latest").resolve() == run.resolve()
    assert _leftovers(run) == []
    assert _processes_mentioning(str(run)) == []


def test_second_interrupt_at_report_time_keeps_the_report_it_had(tmp_path: Path,
                                                                 shared_venvs: Path) -> None:
    proc, log = _start_gated(tmp_path, shared_venvs, signals=2)
    run = _gate_reached(tmp_path, proc, log)
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while "finishing it first" not in log.read_text():  # the first one was held off
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()
    out = log.read_text()
    assert "Traceback" not in out, out
    assert "interrupted twice while writing the report" in out, out
    # a fresh run had no report: none of the new one was published, not even summary.json
    assert [n for n in REPORT_FILES if (run / n).exists()] == [], sorted(run.iterdir())
    assert not (run / "pins").exists() and not (tmp_path / "reports" / "latest").exists()
    assert _leftovers(run) == []
    # run.json is the one from the start: no "complete", so --resume writes the report
    assert "complete" not in json.loads((run / "run.json").read_text())
    assert len(list((run / "outcomes").glob("*.json"))) == 1


def _report_run(folder: Path, cells: list[str]) -> Path:
    for cell in cells:
        Outcome(cell=cell, hash=None, pins={"python": "3.11"}, runner="venv", stage="resolve",
                status="unresolvable", reason="no install").write(folder)
    (folder / "run.json").write_text(json.dumps({"run_id": folder.name, "runner": "venv",
                                                 "cells": cells}))
    return folder


def _gated_report(tmp_path: Path, run: Path, signals: int) -> tuple[int, str]:
    marker = tmp_path / f"gate-{signals}"
    log = tmp_path / f"report-{signals}.log"
    with log.open("w") as console:
        proc = subprocess.Popen(
            [sys.executable, str(GATE), "summary.html", str(signals), str(marker), "--", "report",
             "--run", str(run)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True, stdout=console, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    if signals == 2:
        while "finishing it first" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
    return proc.wait(timeout=120), log.read_text()


def test_report_command_interrupted_keeps_the_old_report_or_writes_the_whole_new_one(
        tmp_path: Path) -> None:
    """`report --run` on a folder that has a report: interrupted twice, every report file is the
    old one byte for byte; interrupted once, every one is the new one."""
    run = _report_run(tmp_path / "20261129T010000Z", ["cell-a"])
    first = subprocess.run([sys.executable, "-m", "pinmatrix", "report", "--run", str(run)],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    old = {n: (run / n).read_bytes() for n in REPORT_FILES}
    _report_run(run, ["cell-a", "cell-b"])  # one more outcome: the next report differs
    code, out = _gated_report(tmp_path, run, signals=2)
    assert code == 130 and "Traceback" not in out, out
    assert {n: (run / n).read_bytes() for n in REPORT_FILES} == old, out
    assert _leftovers(run) == []
    code, out = _gated_report(tmp_path, run, signals=1)
    assert code == 130 and "the report was completed first" in out, out
    summary = json.loads((run / "summary.json").read_text())
    assert [c["id"] for c in summary["cells"]] == ["cell-a", "cell-b"]
    for name in REPORT_FILES:
        assert "cell-b" in (run / name).read_text(), name
    assert _leftovers(run) == []
