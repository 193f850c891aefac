"""Prepared base images (the NGC pattern) on the real engine: a base image that already holds torch
(built here from the CPU wheel, into the system Python's dist-packages as NGC images do), a cell
with `torch: base`, resolved around the base's torch, built, and probed. The cell's torch must be
the base's own copy (not reinstalled into the cell venv), the lock must say so, and a pin the
base's torch does not meet must be infra with its own signature, never `broken`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pinmatrix.cell import Cell, Lock, install_lock, parse_lock, provided_by_base
from pinmatrix.containers.engine import Engine
from pinmatrix.errors import ResolveInfraError
from pinmatrix.resolve.uv import resolve
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE, DockerRunner

pytestmark = pytest.mark.integration

TORCH = "2.13.0+cpu"
WHEELHOUSE = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()[0])
SITE = "/usr/local/lib/python3.11/dist-packages"


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


@pytest.fixture(scope="module")
def torch_base(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """pinmatrix/test-torch-base:<nonce>: the local base plus torch in the system dist-packages."""
    assert any(WHEELHOUSE.glob(f"torch-{TORCH}-*.whl")), f"no torch {TORCH} wheel in {WHEELHOUSE}"
    site = tmp_path_factory.mktemp("base-site")
    proc = subprocess.run([*_uv(), "pip", "install", "--quiet", "--target", str(site),
                           "--python-version", "3.11", "--python-platform",
                           "x86_64-manylinux_2_28", "--find-links", str(WHEELHOUSE),
                           f"torch=={TORCH}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    tag = f"pinmatrix/test-torch-base:{uuid.uuid4().hex[:8]}"
    name = f"pinmatrix-test-base-{uuid.uuid4().hex[:8]}"
    print(f"building {tag} from {DEFAULT_BASE_IMAGE} + torch {TORCH}", file=sys.stderr)
    copied = subprocess.run(engine.cmd("run", "--name", name, "--network", "none", "--mount",
                                       f"type=bind,source={site},target=/site,readonly",
                                       DEFAULT_BASE_IMAGE, "sh", "-c",
                                       f"mkdir -p {SITE} && cp -a /site/. {SITE}/ && "
                                       # cp -a gives the folder the 0700 of pytest's tmp dir;
                                       # the probe runs as uid 1000
                                       f"rm -rf {SITE}/bin && chmod 755 {SITE}"),
                            capture_output=True, text=True)
    try:
        assert copied.returncode == 0, copied.stderr
        committed = subprocess.run(engine.cmd("commit", name, tag), capture_output=True,
                                   text=True)
        assert committed.returncode == 0, committed.stderr
    finally:
        subprocess.run(engine.cmd("rm", "--force", name), capture_output=True)
    yield tag
    subprocess.run(engine.cmd("rmi", "--force", tag), capture_output=True)


def _cell(base: str, torch: str = "base") -> Cell:
    return Cell({"python": "3.11", "base_image": base, "torch": torch, "transformers": "4.57.6",
                 "safetensors": ">=0.4"}, checks=("imports",), settings={"device": "cpu"})


def _sources() -> SimpleNamespace:
    return SimpleNamespace(index_url=None, extra_index_urls=(), find_links=(str(WHEELHOUSE),),
                           ca_bundle=os.environ.get("SSL_CERT_FILE",
                                                    "/etc/ssl/certs/ca-certificates.crt"),
                           torch_backend=None)


def test_torch_base_is_used_not_reinstalled(engine: Engine, torch_base: str,
                                            tmp_path: Path) -> None:
    cell = _cell(torch_base)
    lock = resolve(cell, None, tmp_path / "locks", cache_dir=tmp_path / "cache")
    assert isinstance(lock, Lock), getattr(lock, "explanation", lock)
    assert lock.torch_lock == ""
    assert provided_by_base(lock.full_lock)["torch"] == TORCH
    assert lock.pinned()["torch"] == TORCH          # the drift check compares it with the probe's
    installs = parse_lock(install_lock(lock.full_lock))
    assert "torch" not in installs and installs["transformers"] == "4.57.6"

    runner = DockerRunner(engine, _sources(), tmp_path / "reports", base_image=torch_base,
                          context_root=tmp_path / "ctx", pull="never", compile_cache=False)
    prepared = runner.prepare(cell, lock)
    built = tmp_path / "reports" / "logs" / f"{cell.id}.build.log"
    log = built.read_text()
    assert "BASE_SITE=1" in log
    try:
        where = subprocess.run(engine.cmd(
            "run", "--rm", "--network", "none", "--entrypoint", "/opt/cell/bin/python",
            prepared.ref, "-c",
            "import json, os, torch, transformers; print(json.dumps({'torch': torch.__file__, "
            "'version': torch.__version__, 'tf': transformers.__version__, 'venv_torch': "
            "os.path.exists('/opt/cell/lib/python3.11/site-packages/torch')}))"),
            capture_output=True, text=True, timeout=300)
        assert where.returncode == 0, where.stderr
        seen = json.loads(where.stdout.strip().splitlines()[-1])
        assert seen["torch"].startswith(f"{SITE}/torch/"), seen      # the base's own copy
        assert seen["venv_torch"] is False                           # nothing reinstalled
        assert seen["version"] == TORCH and seen["tf"] == "4.57.6"

        spec = tmp_path / "cell.json"
        spec.write_text(json.dumps(cell.spec("0" * 64, "docker")))
        outcome = runner.run(prepared, spec, tmp_path / "out", "", 900)
        assert outcome.ok, (outcome.infra_reason, outcome.log_tail[-2000:])
        result = json.loads(Path(outcome.result_path or "").read_text())
        assert result["environment"]["torch"] == TORCH
        imports = next(c for c in result["checks"] if c["name"] == "imports")
        assert imports["status"] == "pass", imports
    finally:
        subprocess.run(engine.cmd("rmi", "--force", prepared.ref), capture_output=True)


def test_pin_the_base_does_not_meet_is_infra(engine: Engine, torch_base: str,
                                             tmp_path: Path) -> None:
    with pytest.raises(ResolveInfraError) as caught:
        resolve(_cell(torch_base, "base<2.13"), None, tmp_path, cache_dir=tmp_path / "cache")
    assert caught.value.signature == "base-pin-mismatch"
    assert f"holds torch {TORCH}" in str(caught.value)
    lock = resolve(_cell(torch_base, "base>=2.13"), None, tmp_path / "ok",
                   cache_dir=tmp_path / "cache")
    assert isinstance(lock, Lock)


def test_base_without_the_package_is_infra(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ResolveInfraError) as caught:
        resolve(_cell(DEFAULT_BASE_IMAGE), None, tmp_path, cache_dir=tmp_path / "cache")
    assert caught.value.signature == "base-pin-mismatch"
    assert "has no torch" in str(caught.value)
