"""The `docker create` arguments a cell's container gets: mounts, GPUs, and the security settings.

Everything reaches Docker as an argument list (never a shell string), so values from the matrix
(versions, paths, names) cannot be interpreted by a shell on the host. The container's lifecycle
(create, start with a timeout, kill, inspect, rm) is pinmatrix/runners/docker.py's alone: an earlier
second copy of it (`OCIContainer`, a context manager that copied files in by `docker exec tar`) was
used only by a test and was removed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path, or (kind="volume") a named volume, which the engine creates on
    first use."""
    source: Path | str
    target: str
    read_only: bool = True
    kind: str = "bind"

    def arg(self) -> str:
        # --mount (not -v): a missing bind source is an error instead of a silently created folder.
        if self.kind not in ("bind", "volume"):
            raise ValueError(f"mount kind must be bind or volume, not {self.kind!r}")
        for part in (str(self.source), self.target):
            if "," in part or "=" in part:
                raise ValueError(f"mount path may not contain ',' or '=': {part!r}")
        spec = f"type={self.kind},source={self.source},target={self.target}"
        return spec + (",readonly" if self.read_only else "")


def gpu_args(gpus: str | None) -> list[str]:
    """`--gpus` for None (no GPU), "all" or "device=0,1"; anything else is refused."""
    if gpus is None or gpus == "":
        return []
    if gpus == "all":
        return ["--gpus", "all"]
    if gpus.startswith("device="):
        ids = gpus.removeprefix("device=").split(",")
        if ids and all(i.isdigit() or _is_uuid_like(i) for i in ids):
            # The quotes are part of Docker's own --gpus syntax for a device list, not a shell.
            return ["--gpus", f'"device={",".join(ids)}"']
    raise ValueError(f"gpus must be None, 'all' or 'device=N[,M]', got {gpus!r}")


def _is_uuid_like(value: str) -> bool:
    return value.startswith(("GPU-", "MIG-")) and all(c.isalnum() or c in "-/" for c in value)


def security_args(network: str, user: str | None, read_only: bool, memory: str | None,
                  tmpfs: Sequence[str], pids_limit: int | None) -> list[str]:
    args = ["--network", network, "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if user:
        args += ["--user", user]
    if read_only:
        args.append("--read-only")
    for target in tmpfs:
        args += ["--tmpfs", target]
    if memory:
        # Equal swap limit: an over-budget probe is OOM-killed instead of swapping for hours.
        args += ["--memory", memory, "--memory-swap", memory]
    if pids_limit:
        args += ["--pids-limit", str(pids_limit)]
    return args
