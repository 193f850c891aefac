"""The host-wide lock file of one GPU, named to a cell's probe in PINMATRIX_GPU_LOCK.

The probe's side (probes/gpu_share.py) holds it shared for compat work and exclusive for a speed
measurement, so `matrix --cells-per-gpu N` can pack several cells' compat phases on one GPU while
every tokens/s number is still taken with the GPU to itself. The file lives outside the run folder,
in one folder per user, so two pinmatrix runs on the same machine respect each other too.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV = "PINMATRIX_GPU_LOCK"          # probes/gpu_share.py reads it
DIR_ENV = "PINMATRIX_GPU_LOCK_DIR"  # where the lock files go (default: one folder per user in tmp)
CONTAINER_DIR = "/run/pinmatrix-gpu-locks"


def lock_dir() -> Path:
    configured = os.environ.get(DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"pinmatrix-gpu-locks-{os.getuid()}"


def lock_name(gpu: str | None) -> str | None:
    """The lock file's name for a device token: one GPU index ("0") has one; none, CPU ("") and
    several GPUs at once have none (a cell that holds two GPUs is not packed)."""
    if gpu is None:
        return None
    index = gpu.removeprefix("device=")
    return f"gpu-{index}.lock" if index.isdigit() else None


def host_lock(gpu: str | None) -> Path | None:
    """The lock file for `gpu` on this host, its folder made; None where the GPU is not shared."""
    name = lock_name(gpu)
    if name is None:
        return None
    folder = lock_dir()
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    # made here, readable and writable by all: a container's probe runs as another user and opens
    # them for flock (it needs write access only to create them, which it then never has to)
    for path in (folder / name, folder / (name + ".turnstile")):
        if not path.exists():
            path.touch()
            path.chmod(0o666)
    return folder / name
