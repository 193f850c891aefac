"""Command-line arguments get the same care as matrix.yaml: every bad one exits 2 with a one-line
message that names what was wrong, and nothing is written (no reports folder, no run folder).

Each case runs the real `python -m pinmatrix matrix ...` (the command that writes the most) in a
fresh process, against a reports folder that must still not exist afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    ("runner-unknown", ["--runner", "podman"], "podman"),
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
    from pinmatrix.runners.docker import DockerRunner

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
