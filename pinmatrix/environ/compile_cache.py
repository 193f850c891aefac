"""Compile caches that outlive one probe run: one folder per stack, so a cell's second run does not
recompile what its first run compiled.

unsloth (its generated modules and its "Mega-cache" bundle of torch.compile artifacts),
TorchInductor and Triton compile on the first model load or training step of a process and keep the
result on disk. The docker runner starts every probe in a fresh container (HOME=/tmp, read-only
root) and the venv runner in a fresh work folder, so without a folder that outlives the run every
run would pay the whole compile again. The venv runner also keeps the stack's Python bytecode there
(pycache/, PYTHONPYCACHEPREFIX): what the probe imports at its start is compiled when the venv is
prepared, anything else on the probe's first import of it, and every later run reads it: on the lent
H100, whose image sets PYTHONDONTWRITEBYTECODE, `import unsloth` took 59.7 s compiling from source
and 29.3 s from bytecode. (Compiling the whole stack at prepare time instead cost 221 to 382 s per
cell on a 2-core host, for modules no probe imports.)

The folder is keyed by the stack (both locks, the base image, the Python), never shared between
stacks: an artifact compiled by one stack cannot stand in for another stack's compile, so a compile
that fails on a new stack still fails there. The probe reports the folder's state at its start
(`environment.compile_cache`: warm, cold or none), so every duration is read together with the cache
it ran with. `--no-compile-cache` gives each run an empty folder: what a user's first run costs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pinmatrix.cell import Lock

# The variable the probe reads (probes/environment.py) and the tools' own variables, each pointed at
# a
# subfolder. UNSLOTH_COMPILE_LOCATION otherwise defaults to ./unsloth_compiled_cache, which is the
# read-only image in a docker cell.
STATE_ENV = "PINMATRIX_COMPILE_CACHE"
TOOL_SUBFOLDERS = {
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "UNSLOTH_MEGA_CACHE_DIR": "unsloth-mega",
    "UNSLOTH_COMPILE_LOCATION": "unsloth-compiled",
    # FlashAttention 4's persistent JIT cache of compiled CuTe DSL kernels (flash_attn/cute/
    # cache_utils.py in flash-attn-4 4.0.0b36: FLASH_ATTENTION_CUTE_DSL_CACHE_DIR, default
    # /tmp/$USER/flash_attention_cute_dsl_cache), used only with the switch below
    "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": "flash-attn-cute",
}
# Variables that switch a tool's on-disk cache on (FA4 keeps its compiled kernels in memory only
# unless FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1).
TOOL_SWITCHES = {"FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1"}
DEFAULT_ROOT = Path(os.environ.get("PINMATRIX_COMPILE_CACHE_DIR",
                                   Path.home() / ".cache" / "pinmatrix" / "compile"))
# Inside a docker cell: a named volume per stack, mounted where the image has an empty folder owned
# by
# the probe's user (docker/Dockerfile), whose owner and mode a new volume takes over.
CONTAINER_PATH = "/opt/pinmatrix/compile-cache"
# --no-compile-cache: the container's own tmpfs
COLD_CONTAINER_PATH = "/tmp/pinmatrix-compile-cache"
VOLUME_PREFIX = "pinmatrix-compile-"
VOLUME_LABEL = "org.pinmatrix.compile-cache"


def stack_key(lock: Lock, base: str = "") -> str:
    """16 hex digits naming the stack: the same locks, base and Python give the same cache."""
    payload = json.dumps({"python": lock.python, "torch": lock.torch_lock, "full": lock.full_lock,
                          "base": base}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def probe_env(folder: str) -> dict[str, str]:
    """The environment that points the probe and every compiler at `folder` (as the probe sees
    it)."""
    folder = folder.rstrip("/")
    return {STATE_ENV: folder, **{name: f"{folder}/{sub}" for name, sub in TOOL_SUBFOLDERS.items()},
            **TOOL_SWITCHES}


def host_folder(root: Path, key: str) -> Path:
    """`root/key`, created owner-only: unsloth loads a Mega-cache bundle only from a folder that its
    user owns and nobody else can write (compiled artifacts are executable), and refuses it
    otherwise."""
    folder = Path(root) / key
    for path in (Path(root), folder, *(folder / sub for sub in TOOL_SUBFOLDERS.values())):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def volume_name(key: str) -> str:
    return f"{VOLUME_PREFIX}{key}"
