"""The resolve stage end to end: a live axis expanded against the real index and recorded
in run.json, every cell resolved before any build, the lock installed by the docker runner on the
real engine (no drift), the drift check failing on a lock that differs, pins written from the run,
and the snapshot reproducing the cells with the index unreachable.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pinmatrix.cell import Lock
from pinmatrix.runners.base import Prepared
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE, DockerRunner

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()[0])
BOGUS_INDEX = "http://127.0.0.1:9/simple"      # nothing answers here

# ci.yaml's stack, with transformers as a live axis (a specifier) and only the fast check groups.
MATRIX = textwrap.dedent(f"""\
    axes:
      python: ["3.11"]
      base_image: ["{DEFAULT_BASE_IMAGE}"]
      torch: ["2.13.0+cpu"]
      transformers: [{{spec: "==5.17.0"}}]
      peft: ["0.21.2"]
      unsloth: [none]
      xformers: [none]
      flash-attn: [none]
      bitsandbytes: [none]
    checks: [imports, kernels]
    settings: {{device: cpu, check_timeout_s: 300, cell_timeout_s: 900}}
""")
CELL_ID = "py3.11-torch2.13.0+cpu-tf5.17.0-unsloth-none-peft0.21.2-xf-none-fa-none-bnb-none"


def _pinmatrix(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def engine(engine):   # tests/integration/conftest.py's engine, and this module's own needs
    if shutil.which("uv") is None or not any(WHEELHOUSE.glob("torch-2.13.0+cpu-*.whl")):
        pytest.skip(f"needs uv and torch 2.13.0+cpu in {WHEELHOUSE}")
    return engine


@pytest.fixture(scope="module")
def docker_run(engine, tmp_path_factory: pytest.TempPathFactory):
    """`python -m pinmatrix matrix --runner docker --cpu` on the live-axis matrix, once for the
    module."""
    folder = tmp_path_factory.mktemp("resolve-stage")
    matrix = folder / "live.yaml"
    matrix.write_text(MATRIX)
    reports = folder / "reports"
    proc = _pinmatrix("matrix", "--matrix", str(matrix), "--runner", "docker", "--cpu", "--reports",
                      str(reports),
                      "--find-links", str(WHEELHOUSE), "--label", "stage", "--keep-work")
    run_dir = (reports / "latest").resolve()
    yield {"proc": proc, "run_dir": run_dir, "matrix": matrix, "folder": folder}
    lock_dir = run_dir / "locks" / CELL_ID
    # the image this module built: do not fill the disk
    if (lock_dir / "requirements.lock").is_file():
        runner = DockerRunner(engine, None, folder, cpu_only=True)
        tag = runner.tag_for(_lock(lock_dir))
        subprocess.run(engine.cmd("rmi", "--force", tag), capture_output=True)


def _lock(lock_dir: Path) -> Lock:
    return Lock(cell_id=CELL_ID, python="3.11", torch_lock=(lock_dir / "torch.lock").read_text(),
                full_lock=(lock_dir / "requirements.lock").read_text())


def test_the_docker_runner_installs_the_resolved_lock(docker_run) -> None:
    proc, run_dir = docker_run["proc"], docker_run["run_dir"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((run_dir / "run.json").read_text())
    # resolved up front, in parallel, before the build; the live axis recorded as it expanded
    assert (
        manifest["resolve_stage"]["resolved"] == 1
        and manifest["resolve_stage"]["unresolvable"] == 0
    )
    assert manifest["snapshot"]["live"]["transformers#0"]["versions"] == ["5.17.0"]
    outcome = json.loads((run_dir / "outcomes" / f"{CELL_ID}.json").read_text())
    assert outcome["stage"] == "done" and outcome["status"] is None, outcome
    assert outcome["runner"] == "docker"
    locked = _lock(run_dir / "locks" / CELL_ID).pinned()
    result = json.loads((run_dir / "cells" / f"{CELL_ID}.json").read_text())
    installed = {name: info["installed"] for name,
                 info in result["environment"]["packages"].items()}
    # the image holds exactly the lock: every fingerprinted package the lock pins, at the locked
    # version
    for name in ("torch", "transformers", "peft"):
        assert installed[name] == locked[name], (name, installed[name], locked[name])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["works"], summary["cells"]


def test_no_pins_when_no_check_trained(docker_run) -> None:
    """A pin says a purpose is met (EXAONE 3.5 or 4 LoRA-trains); this run checked
    imports and kernels only, so it writes no pins, and says why for each purpose. (What a pins file
    holds is tested on the venv runner's run, tests/integration/test_pipeline.py.)"""
    run_dir = docker_run["run_dir"]
    assert not (run_dir / "pins").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    for pin in summary["pins"]:
        assert pin["file"] is None
        assert [w["cell"] for w in pin["why_not"]] == [CELL_ID]
        assert pin["why_not"][0]["why"].startswith("not tested for this purpose: ")
    again = _pinmatrix("report", "--run", str(run_dir), timeout=300)
    assert again.returncode == 0 and "pins: none written: no cell qualifies" in again.stdout, (
        again.stdout + again.stderr
    )


def test_docker_runner_reports_drift_from_the_lock(docker_run, engine, tmp_path: Path) -> None:
    """The same image, run against a lock that pins another transformers: infra, naming the
    package."""
    run_dir = docker_run["run_dir"]
    lock = _lock(run_dir / "locks" / CELL_ID)
    runner = DockerRunner(engine, None, tmp_path, cpu_only=True)
    tag = runner.tag_for(lock)
    assert runner.image_exists(tag), "the pipeline's image is gone"
    # the spec the pipeline handed the probe (--keep-work)
    spec = run_dir / "work" / CELL_ID / "cell.json"
    honest = Prepared("docker", CELL_ID, tag, reused=True, details={"locked": lock.pinned()})
    ok = runner.run(honest, spec, tmp_path / "ok", "", 600)
    assert ok.infra_reason is None and ok.result_path is not None, ok
    lying = Prepared("docker", CELL_ID, tag, reused=True,
                     details={"locked": {**lock.pinned(), "transformers": "5.16.0"}})
    out = runner.run(lying, spec, tmp_path / "drift", "", 600)
    assert out.signature == "lock-drift", out
    assert "transformers 5.17.0 (lock: 5.16.0)" in out.infra_reason
    assert out.result_path is not None  # the result is kept for the report


def test_snapshot_reproduces_the_run_offline(docker_run) -> None:
    run_json = docker_run["run_dir"] / "run.json"
    matrix = str(docker_run["matrix"])
    offline = _pinmatrix("list", "--matrix", matrix, "--index-url", BOGUS_INDEX, timeout=120)
    assert offline.returncode == 2 and "cannot expand against the index" in offline.stderr, (
        offline.stderr
    )
    again = _pinmatrix("list", "--matrix", matrix, "--index-url", BOGUS_INDEX, "--snapshot",
                       str(run_json),
                       timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == json.loads(run_json.read_text())["cells"] == [CELL_ID]
    # a bare snapshot file works too; a file without one is bad input (exit 2), named
    bare = docker_run["folder"] / "snapshot.json"
    bare.write_text(json.dumps(json.loads(run_json.read_text())["snapshot"]))
    assert _pinmatrix("list", "--matrix", matrix, "--index-url", BOGUS_INDEX, "--snapshot",
                      str(bare),
                      timeout=120).stdout.split() == [CELL_ID]
    junk = docker_run["folder"] / "junk.json"
    junk.write_text("[1, 2]")
    bad = _pinmatrix("list", "--matrix", matrix, "--snapshot", str(junk), timeout=120)
    assert bad.returncode == 2 and "junk.json" in bad.stderr


def test_resolve_command_prints_the_table(tmp_path: Path) -> None:
    """`python -m pinmatrix resolve` (nox -s resolve): one resolvable and one unresolvable cell,
    uv's words."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(textwrap.dedent("""\
        axes:
          python: ["3.12"]
          base_image: ["pinmatrix/base:bookworm-py311"]
          torch: ["2.11.0"]
          transformers: ["5.5.0", "5.17.0"]
          unsloth: ["2026.9.14"]
    """))
    proc = _pinmatrix("resolve", "--matrix", str(matrix), "--reports", str(tmp_path / "r"),
                      timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("py3.12")}
    assert "resolved" in rows["py3.12-torch2.11.0-tf5.5.0-unsloth2026.9.14"]
    assert "packages" in rows["py3.12-torch2.11.0-tf5.5.0-unsloth2026.9.14"]
    bad = rows["py3.12-torch2.11.0-tf5.17.0-unsloth2026.9.14"]
    assert "unresolvable" in bad and "transformers==5.17.0" in bad
    assert "2 cells: 1 resolved, 1 unresolvable, 0 infra" in proc.stdout
    run_dir = next((tmp_path / "r").glob("*-resolve"))
    outcome = json.loads(
        (run_dir / "outcomes" / "py3.12-torch2.11.0-tf5.17.0-unsloth2026.9.14.json").read_text()
    )
    assert outcome["status"] == "unresolvable" and "No solution found" in outcome["reason"]
