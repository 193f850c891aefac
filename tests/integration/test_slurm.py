"""`matrix --on slurm` through a real single-node Slurm (Debian's slurm-wlm + munge), cells on CPU,
no GRES.

The fixture starts munged, slurmctld and slurmd from a private config (its own ports and spool under
/tmp/pinmatrix-slurm), idempotently: a cluster already answering is reused. Where the Slurm binaries
are absent it installs them on CI (root, CI=true), else skips. Accounting is off on this cluster, so
the session's poller reads task states from `scontrol` (pinmatrix/run/slurm.py explains the
fallback).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CI_MATRIX = ROOT / "tests" / "data" / "matrices" / "ci.yaml"
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))
CLUSTER = Path(os.environ.get("PINMATRIX_TEST_SLURM_DIR", "/tmp/pinmatrix-slurm"))
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged")


def _have_binaries() -> bool:
    return all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in BINARIES)


def _install_on_ci() -> None:
    if _have_binaries():
        return
    if os.environ.get("CI") != "true" or os.geteuid() != 0:
        pytest.skip("Slurm (slurm-wlm, munge) is not installed; CI installs it, elsewhere: apt-get "
                    "install slurm-wlm munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm",
                    "munge"],
                   check=True, env=env, capture_output=True)


def _conf(host: str) -> str:
    return f"""ClusterName=pinmatrix-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
StateSaveLocation={CLUSTER}/state
SlurmdSpoolDir={CLUSTER}/spool
SlurmctldPidFile={CLUSTER}/slurmctld.pid
SlurmdPidFile={CLUSTER}/slurmd.pid
SlurmctldLogFile={CLUSTER}/log/slurmctld.log
SlurmdLogFile={CLUSTER}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _node_ready(env: dict[str, str]) -> bool:
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env,
                          timeout=30)
    return proc.returncode == 0 and any(
        s.strip().rstrip("*") in ("idle", "mix", "alloc") for s in proc.stdout.split()
    )


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("the single-node test cluster runs its daemons as root")
    _install_on_ci()
    host = socket.gethostname().split(".")[0]
    conf = CLUSTER / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for sub in ("state", "spool", "log"):
        (CLUSTER / sub).mkdir(parents=True, exist_ok=True)
    text = _conf(host)
    if not conf.is_file() or conf.read_text() != text:
        conf.write_text(text)
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        if not Path("/etc/munge/munge.key").is_file():
            subprocess.run(
                [_sbin("mungekey") if shutil.which("mungekey") else "/usr/sbin/create-munge-key"],
                check=True,
                capture_output=True,
            )
        subprocess.run([_sbin("munged"), "--force"], check=True, capture_output=True)
    if subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                      env=env).stdout.count("UP") == 0:
        subprocess.run([_sbin("slurmctld"), "-f", str(conf)], check=True, env=env,
                       capture_output=True)
    deadline = time.monotonic() + 60
    started_slurmd = False
    while time.monotonic() < deadline:
        if _node_ready(env):
            return env
        if not started_slurmd and not subprocess.run(["pgrep", "-f", f"slurmd -f {conf}"],
                                                     capture_output=True).stdout:
            subprocess.run([_sbin("slurmd"), "-f", str(conf)], check=True, env=env,
                           capture_output=True)
            started_slurmd = True
        subprocess.run(["scontrol", "update", f"nodename={host}", "state=resume"],
                       capture_output=True, env=env)
        time.sleep(1)
    logs = "\n".join(p.read_text()[-2000:] for p in (CLUSTER / "log").glob("*.log"))
    pytest.fail(f"the test Slurm cluster did not come up in 60s:\n{logs}")


@pytest.fixture(scope="module")
def cheap_matrix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slurm-matrix") / "matrix.yaml"
    lines = [
        ("checks: [imports]" if ln.startswith("checks:") else ln)
        for ln in CI_MATRIX.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _matrix(env, matrix: Path, root: Path, *more: str, background: bool = False):
    argv = [sys.executable, "-m", "pinmatrix", "matrix", "--on", "slurm", "--cpu", "--runner",
            "venv",
            "--matrix", str(matrix), "--reports", str(root / "reports"), "--venv-dir",
            str(root / "venvs"),
            "--slurm-poll", "1", *more]
    env = {**env, "PINMATRIX_FIND_LINKS": str(WHEELS)}
    if background:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _outcomes(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run / "outcomes").glob("*.json")}


def test_cells_run_as_array_tasks_and_merge(slurm_env, cheap_matrix,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("slurm-ok")
    proc = _matrix(slurm_env, cheap_matrix, root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted as Slurm job array" in proc.stdout and "via scontrol" in proc.stdout
    assert "2 cells: 2 work" in proc.stdout, proc.stdout
    run = (root / "reports" / "latest").resolve()
    manifest = json.loads((run / "run.json").read_text())
    job = manifest["slurm"]["job_id"]
    assert manifest["slurm"]["states"] == {"0": "COMPLETED",
                                           "1": "COMPLETED"} and manifest["complete"]
    outcomes = _outcomes(run)
    assert len(outcomes) == 2 and all(
        o["stage"] == "done" and o["runner"] == "venv" for o in outcomes.values()
    )
    for i in (0, 1):  # each cell ran in its own array task, which logged where it ran
        log = (run / "slurm" / f"{job}_{i}.log").read_text()
        assert f"pinmatrix task {job}_{i} on" in log
    assert "--gres" not in (run / "slurm" / "job.sh").read_text()


def test_deadline_and_cancel_become_infra_never_a_hang(
    slurm_env, cheap_matrix, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("slurm-deadline")
    started = time.monotonic()
    proc = _matrix(slurm_env, cheap_matrix, root, "--rerun", "--slurm-deadline", "4")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # infra cells: the local run's exit code
    assert "2 cells could not be judged (infra): exit 3" in proc.stderr
    assert time.monotonic() - started < 120
    assert "deadline of 4s passed: cancelled job" in proc.stdout
    run = (root / "reports" / "latest").resolve()
    outcomes = _outcomes(run)
    assert len(outcomes) == 2
    for outcome in outcomes.values():
        assert outcome["status"] == "infra" and outcome["signature"] in (
            "slurm-deadline",
            "slurm-cancelled",
        ), outcome
        assert "Slurm task" in outcome["reason"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["verdict"].startswith("2 cells: 2 infra"), summary["verdict"]


def test_task_killed_from_outside_is_infra(slurm_env, cheap_matrix,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """An admin's scancel (or a pre-emption, a node failure: Slurm ends the task) shows as infra."""
    root = tmp_path_factory.mktemp("slurm-cancel")
    proc = _matrix(slurm_env, cheap_matrix, root, "--rerun", background=True)
    job = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job is None:
        for manifest in (root / "reports").glob("2*/run.json"):
            job = json.loads(manifest.read_text()).get("slurm", {}).get("job_id")
        time.sleep(0.2)
    assert job, "no job was submitted"
    time.sleep(2)
    subprocess.run(["scancel", f"{job}_1"], env=slurm_env, check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 3, out  # the cancelled cell is infra: the local run's exit code
    run = next((root / "reports").glob("2*"))
    by_task = {o["cell"]: o for o in _outcomes(run).values()}
    cells = (run / "slurm" / "cells.txt").read_text().split()
    cancelled = by_task[cells[1]]
    assert cancelled["status"] == "infra" and cancelled["signature"] == "slurm-cancelled", cancelled
    assert by_task[cells[0]]["stage"] == "done", by_task[cells[0]]
