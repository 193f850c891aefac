"""Command-line arguments get the same care as matrix.yaml: every bad one exits 2 with a one-line
message that names what was wrong, and nothing is written (no reports folder, no run folder).

Each case runs the real `python -m pinmatrix matrix ...` (the command that writes the most) in a
fresh process, against a reports folder that must still not exist afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pinmatrix.outcome import Outcome
from pinmatrix.runners.docker import DockerRunner

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"

# (case id, arguments after the command, a piece the error message must contain)
BAD = [
    ("unknown-flag", ["--frobnicate"], "--frobnicate"),
    ("flag-missing-value", ["--matrix"], "--matrix"),
    ("timeout-not-a-number", ["--timeout", "soon"], "--timeout"),
    ("timeout-zero", ["--timeout", "0"], "--timeout"),
    ("timeout-negative", ["--timeout", "-5"], "--timeout"),
    ("timeout-nan", ["--timeout", "nan"], "--timeout"),
    ("timeout-inf", ["--timeout", "inf"], "--timeout"),
    ("check-timeout-zero", ["--check-timeout", "0"], "--check-timeout"),
    ("check-timeout-not-a-number", ["--check-timeout", "1m"], "--check-timeout"),
    ("runner-unknown", ["--runner", "singularity"], "singularity"),
    ("selector-unknown-axis", ["nosuchaxis=1"], "nosuchaxis"),
    ("selector-matches-nothing", ["transformers=9.9.9"], "9.9.9"),
    ("selector-shell-syntax", ["transformers=$(touch /tmp/pinmatrix-cli-pwned)"], "transformers"),
    ("matrix-missing", ["--matrix", "/nonexistent/matrix.yaml"], "/nonexistent/matrix.yaml"),
    ("extra-site-missing", ["--extra-site", "/nonexistent/site"], "/nonexistent/site"),
    ("ca-bundle-missing", ["--ca-bundle", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
    ("label-path-escape", ["--label", "../../etc"], "--label"),
    ("label-slash", ["--label", "a/b"], "--label"),
    ("snapshot-missing", ["--snapshot", "/nonexistent/run.json"], "/nonexistent/run.json"),
    ("shard-out-of-range", ["--shard", "3/2"], "--shard"),
    ("shard-garbage", ["--shard", "half"], "--shard"),
    ("gpus-garbage", ["--gpus", "zero,;rm"], "--gpus"),
    # values that used to pass here and fail (or eat memory) later
    ("shard-huge", ["--shard", "1/99999999999999999999999"], "--shard"),
    ("shard-past-cap", ["--shard", "1/5001"], "--shard"),
    ("shard-5000-digits", ["--shard", "1/" + "9" * 5000], "--shard"),
    ("selector-5000-digits", ["torch=" + "9" * 5000], "5000 characters"),
    ("selector-spec-5000-digits", ["torch>=" + "9" * 5000], "5000 characters"),
    ("find-links-missing", ["--find-links", "/nonexistent/wheels"], "/nonexistent/wheels"),
    ("find-links-file-url-missing", ["--find-links", "file:///nonexistent/wheels"],
     "/nonexistent/wheels"),
    ("docker-no-install", ["--runner", "docker", "--no-install"], "--no-install"),
    ("timeout-past-a-week", ["--timeout", "1e300"], "--timeout"),
    ("build-jobs-huge", ["--build-jobs", "99999999999"], "--build-jobs"),
    ("cpu-jobs-zero", ["--cpu-jobs", "0"], "--cpu-jobs"),
    ("slurm-poll-nan", ["--slurm-poll", "nan"], "--slurm-poll"),
    ("previous-on-matrix", ["--previous", "/nonexistent/run"], "--previous"),  # not its option
    ("resume-with-shard", ["--resume", "--shard", "1/2"], "--resume"),
    # --resume RUN is a run id under --reports, never a path
    ("resume-parent", ["--resume", "../x"], "--resume '../x'"),
    ("resume-dotdot", ["--resume", ".."], "--resume '..'"),
    ("resume-absolute", ["--resume", "/etc"], "--resume '/etc'"),
    ("resume-nested", ["--resume", "a/b"], "--resume 'a/b'"),
    ("resume-hidden", ["--resume", ".cache"], "--resume '.cache'"),
    ("resume-equals-parent", ["--resume=../../etc"], "--resume '../../etc'"),
    ("ca-bundle-is-a-folder", ["--ca-bundle", "/tmp"], "--ca-bundle"),
]


def _run(args: list[str], reports: Path) -> subprocess.CompletedProcess[str]:
    # never reach an engine from a unit test
    env = {**os.environ, "PINMATRIX_DOCKER": "/nonexistent/docker"}
    return subprocess.run([sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(CI),
                           "--runner", "venv",
                           "--reports", str(reports), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("case, args, named", BAD, ids=[c[0] for c in BAD])
def test_bad_argument_exits_2_names_it_and_writes_nothing(tmp_path: Path, case: str,
                                                          args: list[str],
                                                         named: str) -> None:
    reports = tmp_path / "reports"
    proc = _run(args, reports)
    assert proc.returncode == 2, f"{case}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr          # one clear line, not a wall
    assert named in errors[0], f"{case}: the message does not name {named!r}: {errors[0]}"
    assert not reports.exists(), f"{case}: wrote {sorted(p.name for p in reports.rglob('*'))}"
    assert not Path("/tmp/pinmatrix-cli-pwned").exists()


def test_unknown_and_missing_command_exit_2(tmp_path: Path) -> None:
    for argv in (["frobnicate"], []):
        proc = subprocess.run([sys.executable, "-m", "pinmatrix", *argv], capture_output=True,
                              text=True,
                              cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "command" in proc.stderr
        assert list(tmp_path.iterdir()) == []


def test_a_good_line_still_passes(tmp_path: Path) -> None:
    """The checks above are not rejecting everything: the same flags with good values are
    accepted."""
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "list", "--matrix", str(CI),
                           "--timeout", "30",
                           "--check-timeout", "5", "--label", "nightly-1", "transformers=5.17.0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 1 and "tf5.17.0" in proc.stdout


@pytest.mark.parametrize("image", ["pinmatrix/base; touch {canary}", "$(touch {canary})",
                                   "base`touch {canary}`",
                                   "--privileged", "a b"])
def test_hostile_base_image_stops_at_the_matrix_and_at_the_runner(
    tmp_path: Path, image: str
) -> None:
    """An image name is a matrix value that reaches `docker build --build-arg BASE_IMAGE=...`: it is
    refused twice before that (matrix validation with file:line, then the runner), never given to a
    shell."""

    canary = tmp_path / "pwned"
    image = image.format(canary=canary)
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(CI.read_text().replace('base_image: ["pinmatrix/base:bookworm-py311"]',
                                             f"base_image: [{json.dumps(image)}]"))
    assert json.dumps(image) in matrix.read_text()
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(matrix),
                           "--runner", "venv",
                           "--reports", str(tmp_path / "reports")], capture_output=True, text=True,
                          cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and f"{matrix}:" in proc.stderr, proc.stderr
    assert not (tmp_path / "reports").exists() and not canary.exists()
    with pytest.raises(ValueError):
        DockerRunner(engine=None, sources=None, reports_dir=tmp_path,  # type: ignore[arg-type]
                     base_image=image)


# a path argument that cannot be what it names; built in tmp_path
PATH_CASES = [
    ("reports-is-a-file", lambda t: ["--reports", str(t / "afile")], "--reports"),
    ("run-dir-is-a-file", lambda t: ["--run-dir", str(t / "afile")], "--run-dir"),
    ("run-dir-under-a-file", lambda t: ["--run-dir", str(t / "afile" / "run")], "--run-dir"),
    ("reports-with-a-comma-for-docker",
     lambda t: ["--runner", "docker", "--reports", str(t / "a,b")], "--reports"),
    ("model-cache-is-a-file", lambda t: ["--model-cache", str(t / "afile")], "--model-cache"),
    ("venv-dir-is-a-file", lambda t: ["--venv-dir", str(t / "afile")], "--venv-dir"),
    ("matrix-is-a-folder", lambda t: ["--matrix", str(t)], "Is a directory"),
]


@pytest.mark.parametrize("case, build, named", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_bad_path_argument_exits_2_and_writes_nothing(tmp_path: Path, case, build, named) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = _run(build(tmp_path), tmp_path / "reports")
    assert proc.returncode == 2, f"{case}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def _make_read_only(folder: Path) -> Callable[[], object]:
    """Mode 0555, and for root (who writes through modes: CI runs as root) the immutable flag, which
    root cannot write through either. Returns what undoes it."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("root writes into a 0555 folder, and chattr +i is not available here")

    def undo() -> None:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)
    return undo


def test_read_only_reports_folder_exits_2(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    undo = _make_read_only(reports)
    try:
        proc = _run([], reports)
    finally:
        undo()
    assert proc.returncode == 2 and "not writable" in proc.stderr, proc.stderr
    assert list(reports.iterdir()) == []


def test_matrix_values_past_their_bounds_exit_2_naming_the_position(tmp_path: Path) -> None:
    """The issue's matrix cases through the real command: file:line:col, exit 2, nothing
    written."""
    text = CI.read_text()
    # (the file's own line, its hostile replacement, what the message names)
    cases = [
        ("lora_steps: 12", "lora_steps: " + "1" * 5001, "lora_steps"),
        ("lora_steps: 12", 'lora_steps: !!int "twelve"', "lora_steps"),
        ("cell_timeout_s: 1800", "cell_timeout_s: .inf", "cell_timeout_s"),
        ("throughput: {batch: 1,", "throughput: {batch: 1e9,", "throughput.batch"),
    ]
    for good, bad, named in cases:
        assert good in text
        matrix = tmp_path / "m.yaml"
        matrix.write_text(text.replace(good, bad))
        line = 1 + [i for i, t in enumerate(matrix.read_text().splitlines()) if bad in t][0]
        proc = _run(["--matrix", str(matrix)], tmp_path / "reports")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{matrix}:{line}:" in proc.stderr and named in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and len(proc.stderr) < 400
        assert not (tmp_path / "reports").exists()


def test_reports_folder_that_cannot_be_made_exits_2_naming_it(tmp_path: Path) -> None:
    """What a read-only reports folder does for a user without root (above), for any user: /proc
    takes no new folders, root or not. The run stops at its first write, in one line."""
    reports = Path("/proc") / f"pinmatrix-reports-{os.getpid()}"
    proc = _run([], reports)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(reports) in errors[0], proc.stderr


# --- values from the environment: checked as their flag, named as the variable --------
SOURCE_VARS = ("PINMATRIX_FIND_LINKS", "PIP_FIND_LINKS", "PINMATRIX_CA_BUNDLE", "PIP_CERT",
               "SSL_CERT_FILE", "PINMATRIX_VENV_DIR")

# (case, the variables set, extra arguments, the name the message must hold, a name it must not)
BAD_ENV = [
    ("pinmatrix-find-links-missing", {"PINMATRIX_FIND_LINKS": "/nonexistent/wheels"}, [],
     "$PINMATRIX_FIND_LINKS '/nonexistent/wheels'", "--find-links"),
    ("pinmatrix-find-links-second-word-missing",
     {"PINMATRIX_FIND_LINKS": "/tmp /nonexistent/wheels"}, [],
     "$PINMATRIX_FIND_LINKS '/nonexistent/wheels'", "--find-links"),
    ("pip-find-links-missing", {"PIP_FIND_LINKS": "/nonexistent/pip-wheels"}, [],
     "$PIP_FIND_LINKS '/nonexistent/pip-wheels'", "--find-links"),
    ("pinmatrix-find-links-mount-unsafe", {"PINMATRIX_FIND_LINKS": "{comma}"},
     ["--runner", "docker"], "$PINMATRIX_FIND_LINKS", "--find-links"),
    ("pinmatrix-ca-bundle-missing", {"PINMATRIX_CA_BUNDLE": "/nonexistent/ca.pem"}, [],
     "$PINMATRIX_CA_BUNDLE '/nonexistent/ca.pem'", "--ca-bundle"),
    ("ssl-cert-file-missing", {"SSL_CERT_FILE": "/nonexistent/ssl.pem"}, [],
     "$SSL_CERT_FILE '/nonexistent/ssl.pem'", "--ca-bundle"),
    ("venv-dir-is-a-file", {"PINMATRIX_VENV_DIR": "{file}"}, [], "$PINMATRIX_VENV_DIR",
     "--venv-dir"),
]


def _run_env(args: list[str], reports: Path, env: dict[str, str],
             command: str = "matrix") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SOURCE_VARS}
    return subprocess.run([sys.executable, "-m", "pinmatrix", command, "--matrix", str(CI),
                           "--reports", str(reports), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**base, "PINMATRIX_DOCKER": "/nonexistent/docker", **env})


@pytest.mark.parametrize("case, env, args, named, not_named", BAD_ENV, ids=[c[0] for c in BAD_ENV])
def test_bad_value_from_the_environment_exits_2_and_names_the_variable(
        tmp_path: Path, case: str, env: dict[str, str], args: list[str], named: str,
        not_named: str) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "wheels,1").mkdir()
    env = {k: v.format(file=tmp_path / "a-file", comma=tmp_path / "wheels,1")
           for k, v in env.items()}
    reports = tmp_path / "reports"
    proc = _run_env(args if args else ["--runner", "venv", *args], reports, env)
    assert proc.returncode == 2, f"{case}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert named in errors[0] and not_named not in errors[0], errors[0]
    assert not reports.exists()


def test_the_flag_wins_over_a_bad_variable_and_report_does_not_read_them(tmp_path: Path) -> None:
    """The variable stands in for the flag only when the flag is absent, as PackageSources
    picks it; `report` uses no package source, so a bad variable is none of its business."""
    bad = {"PINMATRIX_FIND_LINKS": "/nonexistent/wheels", "PINMATRIX_CA_BUNDLE": "/nonexistent"}
    (tmp_path / "ca.pem").write_text("x")
    proc = _run_env(["--find-links", str(tmp_path), "--ca-bundle", str(tmp_path / "ca.pem")],
                    tmp_path / "reports", bad, command="list")
    assert proc.returncode == 0, proc.stderr
    proc = _run_env([], tmp_path / "reports", bad, command="list")
    assert proc.returncode == 2 and "$PINMATRIX_FIND_LINKS" in proc.stderr, proc.stderr

    run = tmp_path / "reports" / "20261129T010000Z"
    Outcome(cell="c", hash=None, pins={"python": "3.11"}, runner="venv", stage="resolve",
            status="unresolvable", reason="no install").write(run)
    (run / "run.json").write_text('{"run_id": "20261129T010000Z", "runner": "venv"}')
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "report", "--run", str(run)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **bad})
    assert proc.returncode == 0, proc.stderr
