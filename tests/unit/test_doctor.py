"""The doctor: one line per capability, and `matrix` stopping at once, exit 2, when no
selected cell could be judged on this host. Real checks of this host; what is made absent is made so
for real (a closed port, a socket that does not exist)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinmatrix.containers.engine import find_engine
from pinmatrix.environ.interpreters import find
from pinmatrix.run.doctor import registry_of

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"
NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock",
             "PINMATRIX_DOCKER": "/nonexistent/docker"}


def pinmatrix(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env={**os.environ, **(env or {})})


def _absent_python() -> str | None:
    for version in ("3.9", "3.8", "3.7"):
        if find(version).source in (None, "downloadable"):
            return version
    return None


def test_doctor_prints_one_line_per_capability(tmp_path: Path) -> None:
    proc = pinmatrix("doctor", "--matrix", str(CI), "--runner", "venv", "--cpu",
                     "--find-links", str(tmp_path), "--reports", str(tmp_path / "reports"))
    lines = proc.stdout.splitlines()
    for capability in ("Docker client + BuildKit", "NVIDIA container runtime", "GPUs",
                       "uv (resolves every cell)", "Python 3.11", "package index",
                       "hub cache LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct@main",
                       "hub cache LGAI-EXAONE/EXAONE-4.0-1.2B@main", "free disk for reports/",
                       "compile caches"):
        found = [ln for ln in lines if f" {capability}: " in ln]
        assert len(found) == 1, (capability, proc.stdout)
        mark = found[0].split()[0]
        assert mark in ("ok", "MISSING", "n/a")
        if mark == "MISSING":
            assert " → " in found[0], found[0]  # a remedy
    assert proc.returncode in (0, 2)


@pytest.mark.skipif(_absent_python() is None, reason="every candidate Python is on this host")
def test_matrix_without_any_needed_python_stops_at_once_with_exit_2(tmp_path: Path) -> None:
    version = _absent_python()
    matrix = tmp_path / "m.yaml"
    matrix.write_text(CI.read_text().replace('python: ["3.11"]', f'python: ["{version}"]'))
    started = time.monotonic()
    proc = pinmatrix("matrix", "--matrix", str(matrix), "--runner", "auto", "--cpu",
                     "--find-links", str(tmp_path), "--reports", str(tmp_path / "reports"),
                     env={**NO_DOCKER, "UV_PYTHON_INSTALL_MIRROR": "http://127.0.0.1:9"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    assert proc.stderr.startswith("not ready: no selected cell could be judged on this host")
    assert (f"Python {version} is not on this host and uv could not download it: install it, "
            f"pass `--venv-python {version}=/path`, or use Docker") in proc.stderr
    assert not (tmp_path / "reports").exists()  # nothing was run


def test_docker_runner_without_an_engine_stops_with_exit_2(tmp_path: Path) -> None:
    proc = pinmatrix("matrix", "--matrix", str(CI), "--runner", "docker", "--cpu",
                     "--find-links", str(tmp_path), "--reports", str(tmp_path / "reports"),
                     env=NO_DOCKER)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--runner docker, but no Docker client with BuildKit found" in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_an_unreachable_index_without_a_wheelhouse_stops_with_exit_2(tmp_path: Path) -> None:
    proc = pinmatrix("matrix", "--matrix", str(CI), "--runner", "venv", "--cpu",
                     "--index-url", "http://127.0.0.1:9/simple",
                     "--venv-python", sys.executable,
                     "--reports", str(tmp_path / "reports"),
                     env={"PINMATRIX_FIND_LINKS": "", "PIP_FIND_LINKS": ""})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the package index is not reachable (http://127.0.0.1:9/simple/pip/" in proc.stderr


def test_pull_never_without_the_base_image_stops_with_exit_2(tmp_path: Path) -> None:
    if find_engine() is None:
        pytest.skip("needs a Docker engine")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(CI.read_text().replace(
        '"pinmatrix/base:bookworm-py311"', '"127.0.0.1:9/pinmatrix-absent/base:never"'))
    proc = pinmatrix("matrix", "--matrix", str(matrix), "--runner", "docker", "--cpu",
                     "--pull", "never", "--find-links", str(tmp_path),
                     "--reports", str(tmp_path / "reports"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--pull never, and no base image the cells need is in the engine" in proc.stderr


def test_registry_of_follows_dockers_naming_rule() -> None:
    assert registry_of("nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04") == ("registry-1.docker.io",
                                                                         443)
    assert registry_of("python:3.12") == ("registry-1.docker.io", 443)
    assert registry_of("nvcr.io/nvidia/pytorch:25.01-py3") == ("nvcr.io", 443)
    assert registry_of("127.0.0.1:5000/pm/base:x") == ("127.0.0.1", 5000)
    assert registry_of("localhost/pm/base:x") == ("localhost", 443)


def _absent_image_matrix(tmp_path: Path, image: str) -> Path:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(CI.read_text().replace('"pinmatrix/base:bookworm-py311"', f'"{image}"'))
    return matrix


def test_no_base_image_and_no_reachable_registry_stops_at_once_with_exit_2(tmp_path: Path) -> None:
    """A real host without the image and without a way to its registry (a closed local port):
    every cell would be `infra: pull-registry-unreachable`, so nothing is run."""

    if find_engine() is None:
        pytest.skip("needs a Docker engine")
    image = "127.0.0.1:9/pinmatrix-absent/base:x"
    started = time.monotonic()
    proc = pinmatrix("matrix", "--matrix", str(_absent_image_matrix(tmp_path, image)),
                     "--runner", "docker", "--cpu", "--find-links", str(tmp_path),
                     "--reports", str(tmp_path / "reports"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    assert ("no base image the cells need is in the engine, and no registry that serves them can "
            "be reached (127.0.0.1:9/pinmatrix-absent/base:x)") in proc.stderr
    assert not (tmp_path / "reports").exists()
    doctor = pinmatrix("doctor", "--matrix", str(_absent_image_matrix(tmp_path, image)),
                       "--runner", "docker", "--cpu", "--find-links", str(tmp_path),
                       "--reports", str(tmp_path / "reports"))
    line = next(ln for ln in doctor.stdout.splitlines() if f"base image {image}" in ln)
    assert line.startswith("MISSING") and "127.0.0.1:9 cannot be reached" in line, line


def test_a_reachable_registry_is_not_a_blocker(tmp_path: Path) -> None:
    """The same absent image behind a port that answers: the doctor says it will be pulled."""

    if find_engine() is None:
        pytest.skip("needs a Docker engine")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        image = f"127.0.0.1:{listener.getsockname()[1]}/pinmatrix-absent/base:x"
        proc = pinmatrix("doctor", "--matrix", str(_absent_image_matrix(tmp_path, image)),
                         "--runner", "docker", "--cpu", "--find-links", str(tmp_path),
                         "--reports", str(tmp_path / "reports"))
    line = next(ln for ln in proc.stdout.splitlines() if f"base image {image}" in ln)
    assert line.startswith("n/a") and "answers" in line and "pulled before the first build" in line
    assert "no registry that serves them" not in proc.stdout
