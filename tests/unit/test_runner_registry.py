"""Runners by registry (pinmatrix/runners/registry.py): every kind is one entry, code outside the
registry asks capabilities instead of comparing names, and the podman runner is the docker runner
on a Podman engine (its discovery and its command lines, without a Podman)."""
from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from pinmatrix.cell import Cell, Lock
from pinmatrix.cli.main import parse
from pinmatrix.containers import engine as eng
from pinmatrix.containers.engine import Engine
from pinmatrix.errors import HarnessError, UsageError
from pinmatrix.run import identity
from pinmatrix.run.options import RunOptions, check_options
from pinmatrix.runners import registry
from pinmatrix.runners.base import Runner
from pinmatrix.runners.docker import DockerRunner
from pinmatrix.runners.podman import PodmanRunner
from pinmatrix.runners.venv import VenvRunner

PACKAGE = Path(__file__).resolve().parents[2] / "pinmatrix"
PODMAN = Engine(client="/usr/bin/podman", server_version="4.3.1", buildkit="buildah", nvidia=False,
                dialect=eng.PODMAN_CLI, rootless=True)
DOCKER = Engine(client="/usr/bin/docker", server_version="20.10", buildkit="env", nvidia=False)


def _runner_name_compares(source: str, label: str) -> list[str]:
    """`x == "docker"`, `kind != "venv"`, `runner in ("auto", "docker")`: a comparison with a
    registered runner name as a string literal, or with `auto` where a runner is compared (other
    options have an `auto` too: the device, uv's torch backend)."""
    names = set(registry.RUNNERS)
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        strings = set()
        for side in [node.left, *node.comparators]:
            if isinstance(side, ast.Constant) and isinstance(side.value, str):
                strings.add(side.value)
            elif isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                strings |= {e.value for e in side.elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if strings & names or (registry.AUTO in strings and "runner" in ast.unparse(node)):
            found.append(f"{label}:{node.lineno}")
    return found


def test_no_runner_name_is_compared_as_a_string_outside_the_registry() -> None:
    found = [hit for path in sorted(PACKAGE.rglob("*.py"))
             if path != PACKAGE / "runners" / "registry.py"
             for hit in _runner_name_compares(path.read_text(encoding="utf-8"),
                                              str(path.relative_to(PACKAGE.parent)))]
    assert not found, "compare a RunnerKind capability instead:\n" + "\n".join(found)


def test_the_compare_finder_sees_the_forms_it_forbids() -> None:
    source = ('a = opts.runner == "docker"\nb = kind in ("auto", "venv")\nc = runner != "cpu"\n'
              'd = "podman" != name\ne = device == "auto"\nf = args.runner == "auto"\n')
    assert _runner_name_compares(source, "x") == ["x:1", "x:2", "x:4", "x:6"]


def test_every_kind_is_registered_under_its_own_name_and_makes_its_runner(tmp_path: Path) -> None:
    opts = RunOptions(matrix_path=tmp_path / "m.yaml", venv_dir=tmp_path / "venvs")
    made = {name: kind.create(opts, tmp_path, PODMAN if name == "podman" else DOCKER, None)
            for name, kind in registry.RUNNERS.items()}
    assert set(made) == {"docker", "podman", "venv"}
    assert registry.CHOICES == ("auto", "docker", "podman", "venv")
    for name, runner in made.items():
        assert isinstance(runner, Runner) and runner.name == name
    assert type(made["docker"]) is DockerRunner and type(made["venv"]) is VenvRunner
    assert type(made["podman"]) is PodmanRunner and made["podman"].engine is PODMAN
    for name in ("docker", "podman"):  # the base image a cell pins reaches its runner
        runner = registry.get(name).create(opts, tmp_path, PODMAN, "nvcr.io/nvidia/pytorch:25.01")
        assert isinstance(runner, DockerRunner)
        assert runner.base_image == "nvcr.io/nvidia/pytorch:25.01"


def test_capabilities_of_each_kind() -> None:
    docker, podman, venv = (registry.get(n) for n in ("docker", "podman", "venv"))
    assert docker.isolates and podman.isolates and not venv.isolates
    assert docker.builds_images and podman.builds_images and not venv.builds_images
    assert venv.tests_installed and not docker.tests_installed and not podman.tests_installed
    assert venv.engine is None
    assert docker.engine is not None and podman.engine is not None
    assert [k.name for k in registry.candidates("auto")] == ["docker", "venv"]
    with pytest.raises(ValueError, match="auto, docker, podman, venv"):
        registry.get("singularity")


def test_auto_passes_over_a_missing_engine_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "find_engine", lambda: None)
    monkeypatch.setattr(eng, "engine_message", lambda: "no Docker client with BuildKit found")
    picked = registry.pick("auto")
    assert picked.kind.name == "venv" and picked.engine is None and picked.automatic
    assert picked.line() == ("runner: venv (no usable Docker engine: no Docker client with "
                             "BuildKit found)")
    monkeypatch.setattr(eng, "find_podman", lambda: None)
    monkeypatch.setattr(eng, "podman_message", lambda: "no usable Podman client found: tried x")
    with pytest.raises(HarnessError, match="--runner podman, but no usable Podman engine: no "
                                           "usable Podman client found"):
        registry.pick("podman")
    monkeypatch.setattr(eng, "find_podman", lambda: PODMAN)
    picked = registry.pick("podman")
    assert picked.kind.name == "podman" and picked.engine is PODMAN and not picked.automatic


def test_auto_never_picks_podman(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "find_engine", lambda: None)
    monkeypatch.setattr(eng, "find_podman", lambda: PODMAN)
    assert registry.pick("auto").kind.name == "venv"


def _check(*argv: str) -> None:
    check_options(parse(["matrix", *argv]), environ={})


def test_options_follow_the_capabilities(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--runner podman.*the podman runner always installs"):
        _check("--runner", "podman", "--no-install")
    _check("--runner", "venv", "--no-install")
    _check("--no-install")  # auto may end up as venv
    odd = tmp_path / "wheels,x"
    odd.mkdir()
    for runner in ("podman", "docker", "auto"):  # a container may run: the path is a bind mount
        with pytest.raises(UsageError, match="cannot mount"):
            _check("--runner", runner, "--find-links", str(odd))
    _check("--runner", "venv", "--find-links", str(odd))


def test_image_kinds_hash_the_dockerfile_and_share_a_hash(tmp_path: Path) -> None:
    cell = Cell(pins={"python": "3.11"}, checks=("imports",))
    lock = Lock("c", "3.11", "torch==2.13.0\n", "torch==2.13.0\n")
    hashes = {name: identity.cell_hash(cell, lock, name, "cpu", "d") for name in registry.RUNNERS}
    # the same image is the same stack whichever engine built it; a venv is another environment
    assert hashes["docker"] == hashes["podman"] != hashes["venv"]
    # the builds stay apart: each engine has its own image store
    keys = {name: identity.build_key(cell, lock, name) for name in registry.RUNNERS}
    assert len(set(keys.values())) == 3


# --- the podman engine -------------------------------------------------------------------------

class Script:
    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]) -> None:
        self.answers = answers

    def __call__(self, args: Sequence[str], env: dict[str, str] | None = None,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        for prefix, (rc, out, err) in self.answers.items():
            if tuple(args[1:1 + len(prefix)]) == prefix:
                return subprocess.CompletedProcess(list(args), rc, out, err)
        return subprocess.CompletedProcess(list(args), 1, "", "unexpected")


def _info(version: str, rootless: bool) -> str:
    # the fields `podman info --format json` writes that discovery reads (podman 4.3.1 here)
    return json.dumps({"host": {"security": {"rootless": rootless}},
                       "version": {"Version": version, "APIVersion": version}})


@pytest.fixture()
def podman_client(tmp_path: Path) -> str:
    path = tmp_path / "podman"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_podman_discovery_reads_podman_info(podman_client: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cdi_dir = tmp_path / "cdi"
    cdi_dir.mkdir()
    (cdi_dir / "nvidia.yaml").write_text(
        "cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ndevices:\n  - name: \"0\"\n"
        "    containerEdits:\n      deviceNodes:\n        - path: /dev/nvidia0\n")
    monkeypatch.setattr(eng, "PODMAN_CDI_DIRS", (str(cdi_dir),))
    monkeypatch.setenv("PINMATRIX_CDI_DIRS", str(tmp_path / "none"))
    found = eng.probe_podman(podman_client, Script({("info",): (0, _info("4.3.1", True), "")}))
    engine = found.engine
    assert engine is not None and engine.dialect is eng.PODMAN_CLI and engine.rootless
    assert engine.build_cmd() == [podman_client, "build"]
    assert engine.alive_args() == [podman_client, "info", "--format", "{{.Version.Version}}"]
    assert engine.storage_root_args()[-1] == "{{.Store.GraphRoot}}"
    assert engine.cdi_spec_dirs == (str(cdi_dir),) and engine.nvidia and engine.nvidia_how == "cdi"
    assert "rootless" in engine.describe()
    # before 4.1 podman cannot take a CDI name: no CDI folders, no GPU route through them
    old = eng.probe_podman(podman_client, Script({("info",): (0, _info("4.0.3", False), "")}))
    assert old.engine is not None and old.engine.cdi_spec_dirs == () and not old.engine.nvidia
    broken = eng.probe_podman(podman_client, Script({("info",): (
        125, "", "Error: cannot set up namespace using \"/usr/bin/newuidmap\": exit status 1")}))
    assert broken.engine is None and "newuidmap" in broken.problem
    search = eng.search_engines([podman_client], Script({("info",): (1, "", "boom")}),
                                dialect=eng.PODMAN_CLI)
    assert search.message().startswith("no usable Podman client found: tried")


def test_podman_candidates_come_from_their_own_variable() -> None:
    got = eng.candidate_clients(env={"PINMATRIX_PODMAN": "/opt/p/podman",
                                     "PINMATRIX_DOCKER": "/opt/d/docker"},
                                which=lambda name: f"/home/u/bin/{name}",
                                exists=lambda p: p != "/usr/local/bin/podman",
                                dialect=eng.PODMAN_CLI)
    assert got == ["/opt/p/podman", "/usr/bin/podman", "/home/u/bin/podman"]


def test_podman_container_gets_gpus_through_cdi_and_the_docker_lock_down(tmp_path: Path) -> None:
    cdi_dir = tmp_path / "cdi"
    cdi_dir.mkdir()
    (cdi_dir / "nvidia.yaml").write_text(
        "cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ndevices:\n  - name: \"0\"\n"
        "    containerEdits:\n      deviceNodes:\n        - path: /dev/nvidia0\n"
        "  - name: \"1\"\n    containerEdits:\n      deviceNodes:\n        - path: /dev/nvidia1\n")
    engine = Engine(client="/usr/bin/podman", server_version="4.3.1", buildkit="buildah",
                    nvidia=True, nvidia_how="cdi", cdi_spec_dirs=(str(cdi_dir),),
                    dialect=eng.PODMAN_CLI, rootless=True)
    runner = PodmanRunner(engine, None, tmp_path, context_root=tmp_path / "ctx",
                          cdi_dirs=[str(cdi_dir)])
    args = runner._create_args("pinmatrix/cell:abc", "n", tmp_path / "c.json", tmp_path / "r", "1")
    assert args[0] == "create" and engine.cmd(*args)[0] == "/usr/bin/podman"
    joined = " ".join(args)
    for expected in ("--network none", "--user 1000:1000", "--read-only", "--cap-drop ALL",
                     "--security-opt no-new-privileges", "--init", "--device nvidia.com/gpu=1"):
        assert expected in joined
    assert "--gpus" not in args  # no NVIDIA runtime hook on podman: CDI names the device
    access = runner.gpu_access(None)
    assert access.route == "cdi" and access.args == ("--device", "nvidia.com/gpu=all")
    assert runner.gpu_access("").route == "none"
