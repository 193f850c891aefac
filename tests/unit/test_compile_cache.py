"""pinmatrix/environ/compile_cache.py and the probe's reading of it (probes/environment.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pinmatrix.cell import Lock
from pinmatrix.containers.container_args import Mount
from pinmatrix.environ import compile_cache
from probes.environment import COMPILE_CACHE_ENV, compile_cache_state

LOCK = Lock("c", "3.12", "torch==2.11.0\n", "torch==2.11.0\ntransformers==5.17.0\n")


def test_stack_key_names_the_stack_not_the_cell() -> None:
    assert compile_cache.stack_key(LOCK, "base@sha256:1") == compile_cache.stack_key(
        Lock("another-id", LOCK.python, LOCK.torch_lock, LOCK.full_lock), "base@sha256:1")
    others = {compile_cache.stack_key(LOCK, "base@sha256:2"),
              compile_cache.stack_key(Lock("c", "3.11", LOCK.torch_lock, LOCK.full_lock),
                                      "base@sha256:1"),
              compile_cache.stack_key(Lock("c", "3.12", LOCK.torch_lock, "transformers==5.16.0\n"),
                                      "base@sha256:1")}
    assert compile_cache.stack_key(LOCK, "base@sha256:1") not in others and len(others) == 3


def test_probe_env_points_every_compiler_into_the_folder() -> None:
    env = compile_cache.probe_env("/cache/")
    assert env[COMPILE_CACHE_ENV] == env[compile_cache.STATE_ENV] == "/cache"
    assert (
        env["TRITON_CACHE_DIR"] == "/cache/triton"
        and env["UNSLOTH_COMPILE_LOCATION"] == "/cache/unsloth-compiled"
    )
    assert set(env) == {compile_cache.STATE_ENV, *compile_cache.TOOL_SUBFOLDERS,
                        *compile_cache.TOOL_SWITCHES}
    # FlashAttention 4 keeps its compiled kernels on disk only when switched on (flash-attn-4
    # 4.0.0b36 flash_attn/cute/cache_utils.py), and then in the stack's folder
    assert env["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert env["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == "/cache/flash-attn-cute"


def test_host_folder_is_owner_only(tmp_path: Path) -> None:
    folder = compile_cache.host_folder(tmp_path / "root", "abc")
    assert folder == tmp_path / "root" / "abc" and (folder.stat().st_mode & 0o777) == 0o700
    assert all((folder / sub).is_dir() for sub in compile_cache.TOOL_SUBFOLDERS.values())
    folder.chmod(0o777)   # a folder someone loosened is tightened again
    assert (compile_cache.host_folder(tmp_path / "root", "abc").stat().st_mode & 0o777) == 0o700


def test_probe_reads_none_cold_and_warm(tmp_path: Path) -> None:
    assert compile_cache_state({}) == "none"
    assert compile_cache_state({COMPILE_CACHE_ENV: str(tmp_path / "missing")}) == "cold"
    folder = compile_cache.host_folder(tmp_path, "k")   # empty subfolders are still cold
    assert compile_cache_state({COMPILE_CACHE_ENV: str(folder)}) == "cold"
    # bytecode from prepare is not a kernel compile
    (folder / "pycache" / "torch").mkdir(parents=True)
    (folder / "pycache" / "torch" / "__init__.cpython-312.pyc").write_bytes(b"x")
    assert compile_cache_state({COMPILE_CACHE_ENV: str(folder)}) == "cold"
    (folder / "triton" / "kernel.cubin").write_bytes(b"x")
    assert compile_cache_state({COMPILE_CACHE_ENV: str(folder)}) == "warm"


def test_volume_mount_argument() -> None:
    mount = Mount(compile_cache.volume_name("abc"), compile_cache.CONTAINER_PATH, read_only=False,
                  kind="volume")
    assert (
        mount.arg()
        == f"type=volume,source=pinmatrix-compile-abc,target={compile_cache.CONTAINER_PATH}"
    )
    with pytest.raises(ValueError):
        Mount("x", "/y", kind="tmpfs").arg()
