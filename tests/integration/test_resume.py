"""Resume, cache and shards for real: the venv runner, the real probe, the CI matrix with a cheap
check.

The harness is SIGKILLed (with its probe) once the first cell is finished; `--resume` then keeps
that cell byte for byte and runs only the other. A second matrix run reuses both results from the
cache, and two shards writing one shared run folder merge into one report.
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

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


@pytest.fixture(scope="module")
def cheap_matrix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CI matrix with only the imports check: each cell costs seconds, not minutes."""
    root = tmp_path_factory.mktemp("resume")
    text = CI.read_text()
    lines = [
        ("checks: [imports]" if line.startswith("checks:") else line) for line in text.splitlines()
    ]
    path = root / "matrix.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS)}


def _args(matrix: Path, root: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(matrix), "--runner",
            "venv", "--cpu",
            "--reports", str(root / "reports"), "--venv-dir", str(root / "venvs"), "--no-live",
            *more]


def _outcomes(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run / "outcomes").glob("*.json")}


def test_kill_then_resume_then_reuse_then_shards(cheap_matrix, tmp_path: Path) -> None:
    # 1. start, wait for the first finished cell, SIGKILL the harness and everything it started
    proc = subprocess.Popen(_args(cheap_matrix, tmp_path), cwd=ROOT, env=_env(),
                            start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reports = tmp_path / "reports"
    deadline = time.monotonic() + 300
    run = None
    while time.monotonic() < deadline and proc.poll() is None:
        runs = [p for p in reports.glob("2*") if p.is_dir()] if reports.is_dir() else []
        if runs:
            run = runs[0]
            if any(o.get("stage") == "done" for o in _outcomes(run).values()):
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the matrix ended before it could be killed:\n" + (
        proc.stdout.read() if proc.stdout else ""
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert run is not None
    killed = _outcomes(run)
    finished = {cid for cid, o in killed.items() if o.get("stage") == "done"}
    assert len(finished) == 1, killed
    manifest = json.loads((run / "run.json").read_text())
    assert not manifest.get("complete") and len(manifest["cells"]) == 2
    kept_id = finished.pop()
    kept_bytes = (run / "outcomes" / f"{kept_id}.json").read_bytes()
    kept_result = (run / "cells" / f"{kept_id}.json").read_bytes()

    # 2. resume (no RUN: the latest unfinished one): same folder, the kept cell untouched, the other
    # run
    resumed = subprocess.run(_args(cheap_matrix, tmp_path, "--resume"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 kept from the interrupted run" in resumed.stdout, resumed.stdout
    assert sorted(p.name for p in reports.glob("2*")) == [run.name], (
        "resume must not open a new run"
    )
    after = _outcomes(run)
    assert set(after) == set(manifest["cells"]) and all(
        o["stage"] == "done" for o in after.values()
    ), after
    assert (run / "outcomes" / f"{kept_id}.json").read_bytes() == kept_bytes
    assert (run / "cells" / f"{kept_id}.json").read_bytes() == kept_result
    other = next(o for cid, o in after.items() if cid != kept_id)
    assert other["reused_from"] is None and "run_s" in other["timings"]  # it really ran
    final = json.loads((run / "run.json").read_text())
    assert final["complete"] is True and final["resumed"]
    assert json.loads((run / "summary.json").read_text())["verdict"].startswith("2 cells")
    nothing = subprocess.run(_args(cheap_matrix, tmp_path, "--resume"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2 and "no unfinished run" in nothing.stderr

    # 3. run again: nothing changed, both results reused from the cache, nothing built or probed
    started = time.monotonic()
    again = subprocess.run(_args(cheap_matrix, tmp_path), cwd=ROOT, env=_env(), capture_output=True,
                           text=True,
                           timeout=600)
    took = time.monotonic() - started
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = (reports / "latest").resolve()
    assert rerun != run
    for cid, outcome in _outcomes(rerun).items():
        assert outcome["reused_from"] == run.name and "run_s" not in outcome["timings"], outcome
        assert (
            json.loads((rerun / "cells" / f"{cid}.json").read_text())["cell"]["reused_from"]
            == run.name
        )
    assert took < 60, f"an unchanged rerun took {took:.0f}s"

    # 4. --rerun SELECTOR forces that cell only
    forced = subprocess.run(_args(cheap_matrix, tmp_path, "--rerun", "transformers=5.17.0"),
                            cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    by_tf = {
        o["pins"]["transformers"]: o for o in _outcomes((reports / "latest").resolve()).values()
    }
    assert by_tf["5.17.0"]["reused_from"] is None and by_tf["4.57.6"]["reused_from"] is not None

    # 5. two shards into one shared folder, merged by `report --run`
    shared = tmp_path / "shared-run"
    for i in (1, 2):
        shard = subprocess.run(_args(cheap_matrix, tmp_path, "--shard", f"{i}/2", "--run-dir",
                                     str(shared)),
                               cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert shard.returncode == 0, shard.stdout + shard.stderr
        assert len(_outcomes(shared)) == i
    merged = subprocess.run([sys.executable, "-m", "pinmatrix", "report", "--run", str(shared)],
                            cwd=ROOT,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.startswith("2 cells: 2 work"), merged.stdout
