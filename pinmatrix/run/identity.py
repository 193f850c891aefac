"""A cell's identity on this host: the GPU model, the content hash that keys images and the result
cache, and the build key that keeps two builds of one image from running at once."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

from pinmatrix.cell import Cell, Lock, content_hash
from pinmatrix.run.options import REPO_ROOT
from pinmatrix.runners import registry

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"


def gpu_model(cpu: bool) -> str:
    """The GPU the cells run on (part of the content hash): `cpu` when forced or when none is
    visible."""
    if cpu or not shutil.which("nvidia-smi"):
        return "cpu"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    names = (
        sorted({ln.strip() for ln in out.stdout.splitlines() if ln.strip()})
        if out.returncode == 0
        else []
    )
    return ",".join(names) or "cpu"


def _builds_images(runner_name: str) -> bool:
    """The image-building kinds (docker, podman) hash the Dockerfile they build from; the same
    image is the same stack whichever engine built it. A name outside the registry (a test's
    stand-in runner) hashes as its name."""
    kind = registry.RUNNERS.get(runner_name)
    return kind is not None and kind.builds_images


def cell_hash(cell: Cell, lock: Lock, runner_name: str, gpu: str, digest: str) -> str:
    dockerfile = (
        DOCKERFILE.read_text(encoding="utf-8")
        if _builds_images(runner_name) and DOCKERFILE.is_file()
        else runner_name
    )
    return content_hash(lock_text=lock.torch_lock + "\n---\n" + lock.full_lock,
                        dockerfile=dockerfile,
                        probes_digest=digest, checks=tuple(cell.checks),
                        settings=dict(cell.settings),
                        gpu_model=gpu, base_image=str(cell.pins.get("base_image", "")),
                        models=tuple(cell.models),
                        pins=dict(cell.pins))


def build_key(cell: Cell, lock: Lock, runner_name: str) -> str:
    """Cells with the same key build the same image/venv: the scheduler never builds one key twice
    at once."""
    payload = json.dumps([runner_name, str(cell.pins.get("base_image", "")), lock.python,
                          lock.torch_lock, lock.full_lock])
    return hashlib.sha256(payload.encode()).hexdigest()
