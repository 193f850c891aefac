"""Engine discovery without an engine: candidates, and what each scripted client answer means."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from pinmatrix.containers import engine as eng


def test_candidates_prefer_env_then_well_known_then_path_each_once() -> None:
    present = {"/usr/bin/docker", "/usr/local/bin/docker", "/opt/custom/docker"}
    got = eng.candidate_clients(env={"PINMATRIX_DOCKER": "/opt/custom/docker"},
                                which=lambda _: "/usr/local/bin/docker",
                                exists=present.__contains__)
    assert got == ["/opt/custom/docker", "/usr/bin/docker", "/usr/local/bin/docker"]


def test_candidates_skip_missing_well_known_but_keep_path_client() -> None:
    got = eng.candidate_clients(env={}, which=lambda _: "/home/u/bin/docker",
                                exists={"/home/u/bin/docker"}.__contains__)
    assert got == ["/home/u/bin/docker"]


def test_candidates_keep_a_missing_override_so_the_message_names_it() -> None:
    got = eng.candidate_clients(env={"PINMATRIX_DOCKER": "/nope/docker"}, which=lambda _: None,
                                exists=lambda _: False)
    assert got == ["/nope/docker"]


class Script:
    """A fake command runner: the first matching prefix decides (rc, stdout, stderr)."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str], env: dict[str, str] | None = None,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        for prefix, (rc, out, err) in self.answers.items():
            if tuple(args[1:1 + len(prefix)]) == prefix:
                return subprocess.CompletedProcess(list(args), rc, out, err)
        return subprocess.CompletedProcess(list(args), 1, "", "unexpected")


@pytest.fixture()
def client(tmp_path: Path) -> str:
    path = tmp_path / "docker"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_unreachable_daemon_is_reported(client: str) -> None:
    run = Script({("version",): (1, "",
                                 "Cannot connect to the Docker daemon at "
                                 "unix:///var/run/docker.sock")})
    attempt = eng.probe_client(client, run)
    assert attempt.engine is None
    assert attempt.problem.startswith("daemon unreachable: Cannot connect")


def test_buildx_client_builds_with_buildx_load(client: str) -> None:
    run = Script({("version",): (0, "28.1.1\n", ""), ("buildx", "version"): (0, "v0.20", ""),
                  ("info",): (0, '{"runc":{}}', "")})
    engine = eng.probe_client(client, run).engine
    assert engine is not None and engine.buildkit == "buildx"
    assert engine.build_cmd() == [client, "buildx", "build", "--load"]
    assert not engine.nvidia


def test_client_without_buildx_whose_buildkit_build_fails_is_refused(client: str) -> None:
    run = Script({("version",): (0, "28.1.1", ""), ("buildx",
                                                    "version"): (1, "", "unknown command"),
                  ("build",): (1, "",
                               "ERROR: BuildKit is enabled but the buildx component is missing")})
    attempt = eng.probe_client(client, run)
    assert attempt.engine is None
    assert "no buildx" in attempt.problem
    build = [c for c in run.calls if c[1] == "build"][0]
    assert build[-1] == "-"  # a real build from stdin, not a version guess


def test_classic_client_with_native_buildkit_uses_env(client: str) -> None:
    run = Script(
        {
            ("version",): (0, "20.10.24", ""),
            ("buildx", "version"): (1, "", "not a docker command"),
            ("build",): (0, "", ""),
            ("info",): (0, '{"nvidia":{"path":"nvidia-container-runtime"}}', ""),
        }
    )
    engine = eng.probe_client(client, run).engine
    assert engine is not None and engine.buildkit == "env"
    assert engine.build_cmd() == [client, "build"]
    assert engine.env()["DOCKER_BUILDKIT"] == "1"
    assert engine.nvidia and engine.nvidia_how == "runtime"


def test_nvidia_from_cdi_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client: str) -> None:
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "nvidia.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: all\n")
    monkeypatch.setenv("PINMATRIX_CDI_DIRS", str(tmp_path / "cdi"))
    run = Script({("version",): (0, "27.0", ""), ("buildx", "version"): (0, "v0.14", ""),
                  ("info",): (0, '{"runc":{}}', "")})
    engine = eng.probe_client(client, run).engine
    assert engine is not None and engine.nvidia and engine.nvidia_how == "cdi"


def test_search_stops_at_first_usable_and_message_lists_every_failure(
    tmp_path: Path, client: str
) -> None:
    broken = tmp_path / "old-docker"
    broken.write_text("#!/bin/sh\n")
    broken.chmod(0o755)

    def run(args: Sequence[str], env: dict[str, str] | None = None, stdin: str | None = None):
        if args[0] == str(broken):
            if args[1] == "version":
                return subprocess.CompletedProcess(list(args), 0, "28.1", "")
            return subprocess.CompletedProcess(list(args), 1, "", "missing buildx")
        return Script({("version",): (0, "20.10", ""), ("buildx",): (1, "", ""),
                       ("build",): (0, "", ""),
                       ("info",): (0, "{}", "")})(args, env, stdin)

    search = eng.search_engines([str(broken), "/does/not/exist", client], run)
    assert search.engine is not None and search.engine.client == client
    none = eng.search_engines([str(broken), "/does/not/exist"], run)
    assert none.engine is None
    assert none.message() == (f"no Docker client with BuildKit found: tried {broken} (no buildx, "
                              "and "
                              "DOCKER_BUILDKIT=1 builds fail), /does/not/exist (not an executable "
                              "file)")


def test_probe_timeout_becomes_a_problem_not_an_exception(tmp_path: Path) -> None:
    hang = tmp_path / "docker"
    hang.write_text("#!/bin/sh\nsleep 5\n")
    hang.chmod(0o755)
    old = eng.PROBE_TIMEOUT_S
    eng.PROBE_TIMEOUT_S = 0.3
    try:
        attempt = eng.probe_client(str(hang))
    finally:
        eng.PROBE_TIMEOUT_S = old
    assert attempt.engine is None and "TimeoutExpired" in attempt.problem
    assert os.path.exists(hang)
