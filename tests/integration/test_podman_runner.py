"""The podman runner on a real Podman: one real CPU cell (torch, transformers) built with `podman
build` from the docker runner's Dockerfile, its probe run locked down, a valid result back.

The base image comes from the local Docker engine (`docker save | podman load`; no registry is
reachable here), the same bytes docker/base/build-base.sh imported there. Skips, with the reason,
where Podman or that base image is absent, or where Podman cannot start a container at all (its own
words are the reason); with PINMATRIX_REQUIRE_PODMAN=1 those are failures instead.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pinmatrix.cell import Cell, Lock
from pinmatrix.containers import engine as engines
from pinmatrix.containers.engine import Engine
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE, PROBES_DIR
from pinmatrix.runners.podman import PodmanRunner
from pinmatrix.runners.registry import pick
from probes import schema_check

pytestmark = pytest.mark.integration

TORCH = "2.13.0+cpu"
TRANSFORMERS = "4.57.6"
WHEELHOUSE = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()[0])
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))


def _unavailable(reason: str) -> None:
    if os.environ.get("PINMATRIX_REQUIRE_PODMAN") == "1":
        pytest.fail(f"PINMATRIX_REQUIRE_PODMAN=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def podman() -> Iterator[Engine]:
    engines.reset_cache()
    found = engines.find_podman()
    if found is None:
        _unavailable(engines.podman_message())
    assert found is not None
    if subprocess.run(found.cmd("image", "exists", DEFAULT_BASE_IMAGE)).returncode != 0:
        docker = engines.find_engine()
        if docker is None:
            _unavailable(f"base image {DEFAULT_BASE_IMAGE} is in neither Podman nor Docker")
        assert docker is not None
        save = subprocess.Popen(docker.cmd("save", DEFAULT_BASE_IMAGE), stdout=subprocess.PIPE)
        load = subprocess.run(found.cmd("load"), stdin=save.stdout, capture_output=True,
                              text=True)
        save.wait()
        if load.returncode != 0 or save.returncode != 0:
            _unavailable(f"docker save | podman load of {DEFAULT_BASE_IMAGE} failed: "
                         f"{load.stderr.strip()[-300:]}")
    smoke = subprocess.run(found.cmd("run", "--rm", "--network", "none", DEFAULT_BASE_IMAGE,
                                     "true"), capture_output=True, text=True)
    if smoke.returncode != 0:
        _unavailable(f"podman cannot start a container here: {smoke.stderr.strip()[-300:]}")
    yield found
    engines.reset_cache()


def _lock(workdir: Path, cell: Cell) -> Lock:
    uv = shutil.which("uv")
    cmd = [uv] if uv else [sys.executable, "-m", "uv"]
    out: dict[str, str] = {}
    for name, reqs in (("torch", f"torch=={TORCH}\n"),
                       ("full", f"torch=={TORCH}\ntransformers=={TRANSFORMERS}\n")):
        src, dest = workdir / f"{name}.in", workdir / f"{name}.lock"
        src.write_text(reqs)
        proc = subprocess.run([*cmd, "pip", "compile", "--quiet", "--no-header",
                               "--python-version", "3.11", "--python-platform",
                               "x86_64-manylinux_2_28", "--find-links", str(WHEELHOUSE), str(src),
                               "-o", str(dest)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out[name] = dest.read_text()
    return Lock(cell.id, "3.11", out["torch"], out["full"])


def test_registry_picks_podman_by_name(podman: Engine) -> None:
    picked = pick("podman")
    assert picked.kind.name == "podman" and picked.engine is not None
    assert picked.engine.client == podman.client


def test_one_cpu_cell_builds_and_runs_on_podman(podman: Engine, tmp_path: Path) -> None:
    assert any(WHEELHOUSE.glob(f"torch-{TORCH}-*.whl")), f"no torch {TORCH} wheel in {WHEELHOUSE}"
    cell = Cell({"python": "3.11", "torch": TORCH, "transformers": TRANSFORMERS},
                checks=("imports",), settings={"device": "cpu"})
    lock = _lock(tmp_path, cell)
    sources = SimpleNamespace(index_url=None, extra_index_urls=(), find_links=(str(WHEELHOUSE),),
                              ca_bundle=str(CA_BUNDLE), torch_backend=None)
    runner = PodmanRunner(podman, sources, tmp_path / "reports", cpu_only=True,
                          context_root=tmp_path / "ctx", probes_dir=PROBES_DIR)
    prepared = runner.prepare(cell, lock)
    try:
        assert prepared.runner == "podman" and not prepared.reused
        assert runner.prepare(cell, lock).reused  # the tag is in Podman's store now
        spec = tmp_path / "cell.json"
        spec.write_text(json.dumps(cell.spec("0" * 64, "podman")))
        outcome = runner.run(prepared, spec, tmp_path / "out", "", 900)
        assert outcome.ok, f"{outcome.infra_reason} {outcome.signature}\n{outcome.log_tail}"
        assert outcome.details["gpu_access"]["route"] == "none"
        assert outcome.result_path is not None
        result = json.loads(outcome.result_path.read_text())
        assert schema_check.validate(result, schema_check.load_schema()) == []
        packages = result["environment"]["packages"]
        assert packages["transformers"]["installed"] == TRANSFORMERS
        assert result["environment"]["torch"] == TORCH
        (imports,) = [c for c in result["checks"] if c["name"] == "imports"]
        assert imports["status"] == "pass", imports
        user = subprocess.run(podman.cmd("image", "inspect", "--format", "{{.Config.User}}",
                                         prepared.ref), capture_output=True, text=True).stdout
        assert user.strip() == "1000:1000"
    finally:
        subprocess.run(podman.cmd("rmi", "--force", prepared.ref), capture_output=True)
