"""`python -m pinmatrix base-image` on the real engine (a prepared base from the host's
own Python and torch, for the H200, which has no network and no registry). Here, on CPU, from a
venv holding torch 2.13.0+cpu (a venv's python is a symlink into pyenv: the image must carry the
base interpreter and move the venv's site-packages to it):
- the image runs `python3 -c "import torch"` with `--network none` and gets the venv's version;
- it serves as the base of a real cell with `torch: base` through the docker runner: resolved
  around the base's torch, built from the docker/Dockerfile (BASE_SITE=1, so its RUN steps run on
  the host's own sh and tools), probed, `imports` passing on the base's own copy of torch;
- a failure after the import (here: an image without its dynamic loader, which cannot start)
  leaves no tag and no image behind.

The interpreter: $PINMATRIX_HOST_BASE_PYTHON, else /tmp/venv/tf4.57.6-bnb/bin/python where it holds
torch 2.13.0+cpu, else a venv made here with torch from the wheelhouse (a fresh clone's CI).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pinmatrix.cell import Cell, Lock, provided_by_base
from pinmatrix.containers import host_base
from pinmatrix.containers.engine import Engine
from pinmatrix.resolve.uv import resolve
from pinmatrix.runners.docker import DockerRunner

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TORCH = "2.13.0+cpu"
WHEELHOUSE = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()[0])
KNOWN_VENV = Path("/tmp/venv/tf4.57.6-bnb/bin/python")


def _say(line: str) -> None:
    print(f"[host-base test] {line}", file=sys.stderr, flush=True)


def _torch_of(python: Path) -> str | None:
    proc = subprocess.run([str(python), "-c", "from importlib.metadata import version; "
                                              "print(version('torch'))"],
                          capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def host_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    named = os.environ.get("PINMATRIX_HOST_BASE_PYTHON")
    if named:
        yield Path(named)
        return
    if KNOWN_VENV.exists() and _torch_of(KNOWN_VENV) == TORCH:
        yield KNOWN_VENV
        return
    assert any(WHEELHOUSE.glob(f"torch-{TORCH}-*.whl")), f"no torch {TORCH} wheel in {WHEELHOUSE}"
    venv = tmp_path_factory.mktemp("host-venv") / "venv"
    uv = shutil.which("uv")
    uv_cmd = [uv] if uv else [sys.executable, "-m", "uv"]
    made = subprocess.run([*uv_cmd, "venv", "--quiet", "--python", sys.executable, str(venv)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    installed = subprocess.run([*uv_cmd, "pip", "install", "--quiet", "--python",
                                str(venv / "bin" / "python"), "--offline", "--find-links",
                                str(WHEELHOUSE), f"torch=={TORCH}"], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    yield venv / "bin" / "python"
    shutil.rmtree(venv.parent, ignore_errors=True)   # ~700 MB of torch: the disk fills up


@pytest.fixture(scope="module")
def host_image(engine: Engine, host_python: Path) -> Iterator[dict]:
    tag = f"pinmatrix/test-host-base:{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "base-image", "--python",
                           str(host_python), "--tag", tag, "--package", "torch",
                           "--engine", engine.client],
                          capture_output=True, text=True, cwd=REPO, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    took = time.monotonic() - start
    for line in proc.stderr.strip().splitlines():
        _say(line)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        made = json.loads(proc.stdout.strip().splitlines()[-1])
        assert made["image"] == tag
        _say(f"base-image took {took:.0f} s: import {made['import_s']} s, image "
             f"{made['size'] / 2**20:.0f} MiB")
        made["took_s"] = took
        yield made
    finally:
        subprocess.run(engine.cmd("rmi", "--force", tag), capture_output=True)


def test_image_imports_the_hosts_torch_offline(engine: Engine, host_image: dict,
                                               host_python: Path) -> None:
    labels = host_image["labels"]
    assert labels["org.pinmatrix.base.torch"] == TORCH
    assert f"torch=={TORCH}" in labels["org.pinmatrix.base.packages"]
    inspected = subprocess.run(engine.cmd("image", "inspect", "--format",
                                          "{{json .Config.Labels}}", host_image["image"]),
                               capture_output=True, text=True)
    assert json.loads(inspected.stdout)["org.pinmatrix.base.torch"] == TORCH
    start = time.monotonic()
    ran = subprocess.run(engine.cmd("run", "--rm", "--network", "none", host_image["image"],
                                    "python3", "-c",
                                    "import sys, torch; print(torch.__version__); "
                                    "print(torch.__file__); print(sys.prefix); "
                                    "print(float(torch.ones(3).sum()))"),
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    version, where, prefix, total = ran.stdout.strip().splitlines()[-4:]
    _say(f"docker run python3 -c 'import torch': {version} from {where} in "
         f"{time.monotonic() - start:.1f} s")
    assert version == TORCH and total == "3.0"
    base = subprocess.run([str(host_python), "-c", "import sys; print(sys.base_prefix)"],
                          capture_output=True, text=True).stdout.strip()
    assert prefix == base                    # the host's prefix, unchanged
    assert where.startswith(base + "/")      # the venv's torch now in the base's site


def test_cell_with_torch_base_builds_and_probes(engine: Engine, host_image: dict,
                                                tmp_path: Path) -> None:
    image = host_image["image"]
    cell = Cell({"python": "3.11", "base_image": image, "torch": "base",
                 "transformers": "4.57.6", "safetensors": ">=0.4"},
                checks=("imports",), settings={"device": "cpu"})
    lock = resolve(cell, None, tmp_path / "locks", cache_dir=tmp_path / "cache")
    assert isinstance(lock, Lock), getattr(lock, "explanation", lock)
    assert provided_by_base(lock.full_lock)["torch"] == TORCH and lock.torch_lock == ""
    sources = SimpleNamespace(index_url=None, extra_index_urls=(), find_links=(str(WHEELHOUSE),),
                              ca_bundle=os.environ.get("SSL_CERT_FILE",
                                                       "/etc/ssl/certs/ca-certificates.crt"),
                              torch_backend=None)
    runner = DockerRunner(engine, sources, tmp_path / "reports", base_image=image,
                          context_root=tmp_path / "ctx", pull="never", compile_cache=False)
    start = time.monotonic()
    prepared = runner.prepare(cell, lock)
    _say(f"cell image built on the host base in {time.monotonic() - start:.0f} s")
    try:
        log = (tmp_path / "reports" / "logs" / f"{cell.id}.build.log").read_text()
        assert "BASE_SITE=1" in log
        spec = tmp_path / "cell.json"
        spec.write_text(json.dumps(cell.spec("0" * 64, "docker")))
        start = time.monotonic()
        outcome = runner.run(prepared, spec, tmp_path / "out", "", 900)
        _say(f"probe ran in {time.monotonic() - start:.0f} s")
        assert outcome.ok, (outcome.infra_reason, outcome.log_tail[-2000:])
        result = json.loads(Path(outcome.result_path or "").read_text())
        assert result["environment"]["torch"] == TORCH
        assert result["environment"]["python"] == host_image["labels"]["org.pinmatrix.base.python"]
        imports = next(c for c in result["checks"] if c["name"] == "imports")
        assert imports["status"] == "pass", imports
    finally:
        subprocess.run(engine.cmd("rmi", "--force", prepared.ref), capture_output=True)
        for folder in ("ctx", "cache", "out", "reports"):   # ~180 MB; pytest keeps 3 runs
            shutil.rmtree(tmp_path / folder, ignore_errors=True)


def test_failure_after_import_leaves_no_tag_and_no_image(engine: Engine,
                                                         host_python: Path) -> None:
    plan = host_base.plan_image(str(host_python), ["filelock"])
    loaders = [p for p, m in plan.fileset.members.items()
               if os.path.basename(p).startswith("ld-linux")]
    assert loaders, "the plan holds no dynamic loader"
    for path in loaders:             # an image whose binaries cannot start: verification fails
        del plan.fileset.members[path]

    def ours() -> set[str]:
        listed = subprocess.run(engine.cmd("images", "--all", "--quiet", "--no-trunc", "--filter",
                                           "label=org.pinmatrix.base.made-by"),
                                capture_output=True, text=True)
        return set(listed.stdout.split())

    before = ours()
    tag = f"pinmatrix/test-host-base-broken:{uuid.uuid4().hex[:8]}"
    with pytest.raises(host_base.HostBaseError, match="does not run its python3"):
        host_base.make_image(engine, plan, tag, ["filelock"], _say)
    assert subprocess.run(engine.cmd("image", "inspect", tag), capture_output=True).returncode != 0
    assert ours() <= before
