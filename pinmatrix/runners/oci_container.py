"""A running container as a context manager: start it, copy files in and out, run commands, remove it.

Everything reaches Docker as an argument list (never a shell string), so values from the matrix
(versions, paths, names) cannot be interpreted by a shell on the host. Copies travel as tar streams
through `docker exec`, which also works on a read-only root filesystem with a tmpfs target, where
`docker cp` cannot write. On leaving the `with` block the container is killed and removed, also
after an exception or a timeout.
"""
from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Mapping, Sequence

from pinmatrix.runners.engine import Engine

CONTROL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path, or (kind="volume") a named volume, which the engine creates on first use."""
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


class ContainerError(RuntimeError):
    """The engine refused an operation on the container (not a failure of the command inside it)."""


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


class OCIContainer:
    """`with OCIContainer(engine, image, ...) as c: c.copy_into(...); c.call([...]); c.copy_out(...)`."""

    def __init__(self, engine: Engine, image: str, *, network: str = "none", user: str | None = "1000:1000",
                 read_only: bool = True, mounts: Sequence[Mount] = (), gpus: str | None = None,
                 memory: str | None = None, env: Mapping[str, str] | None = None,
                 tmpfs: Sequence[str] = ("/tmp:rw,exec,mode=1777",), workdir: str | None = None,
                 pids_limit: int | None = 4096, name: str | None = None) -> None:
        self.engine = engine
        self.image = image
        self.name = name or f"pinmatrix-{uuid.uuid4().hex[:12]}"
        self._create_args = [
            "create", "--name", self.name, "--init",
            *security_args(network, user, read_only, memory, tmpfs, pids_limit),
            *gpu_args(gpus),
        ]
        for mount in mounts:
            self._create_args += ["--mount", mount.arg()]
        for key, value in (env or {}).items():
            self._create_args += ["--env", f"{key}={value}"]
        if workdir:
            self._create_args += ["--workdir", workdir]
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "OCIContainer":
        # The main process only keeps the container alive; work happens through `docker exec`.
        self._engine(*self._create_args, "--entrypoint", "sleep", self.image, "infinity")
        try:
            self._engine("start", self.name)
        except BaseException:
            self.remove()
            raise
        self.started = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def remove(self) -> None:
        """Kill and remove; safe to call twice and when the container never started."""
        subprocess.run(self.engine.cmd("rm", "--force", "--volumes", self.name), capture_output=True,
                       text=True, timeout=CONTROL_TIMEOUT_S, check=False)
        self.started = False

    # -- work ----------------------------------------------------------------------------------
    def call(self, args: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None,
             cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `args` inside the container (exec form: no shell). On timeout the container is killed."""
        if isinstance(args, (str, bytes)):
            raise TypeError("call() takes an argument list, never a shell string")
        cmd = ["exec"]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        if cwd:
            cmd += ["--workdir", cwd]
        cmd += [self.name, *[str(a) for a in args]]
        try:
            proc = subprocess.run(self.engine.cmd(*cmd), capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, list(args), proc.stdout, proc.stderr)
        return proc

    def kill(self) -> None:
        subprocess.run(self.engine.cmd("kill", self.name), capture_output=True, text=True,
                       timeout=CONTROL_TIMEOUT_S, check=False)

    def copy_into(self, src: Path, dst: str) -> None:
        """Copy a host file or folder to the absolute container path `dst` (its parent must exist)."""
        src = Path(src)
        dst_path = PurePosixPath(dst)
        if not dst_path.is_absolute():
            raise ValueError(f"container path must be absolute: {dst!r}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(src), arcname=dst_path.name)
        self._exec_stdin(["tar", "-x", "--no-same-owner", "-f", "-", "-C", str(dst_path.parent)], buf.getvalue())

    def copy_out(self, src: str, dst: Path) -> None:
        """Copy the container path `src` (file or folder) to the host path `dst`."""
        src_path = PurePosixPath(src)
        proc = subprocess.run(self.engine.cmd("exec", self.name, "tar", "-c", "-f", "-", "-C",
                                              str(src_path.parent), src_path.name),
                              capture_output=True, timeout=CONTROL_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise ContainerError(f"copy_out {src}: {proc.stderr.decode(errors='replace').strip()}")
        dst = Path(dst)
        with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r") as tar:
            members = tar.getmembers()
            root = src_path.name
            for member in members:
                # Only what lies under the requested name; no absolute paths, no '..'.
                rel = PurePosixPath(member.name)
                if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != (root,):
                    raise ContainerError(f"copy_out {src}: refusing member {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    continue
                target = dst.joinpath(*rel.parts[1:]) if len(rel.parts) > 1 else dst
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    target.write_bytes(extracted.read())

    # -- plumbing ------------------------------------------------------------------------------
    def _exec_stdin(self, args: Sequence[str], data: bytes) -> None:
        proc = subprocess.run(self.engine.cmd("exec", "-i", self.name, *args), input=data,
                              capture_output=True, timeout=CONTROL_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise ContainerError(f"{' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")

    def _engine(self, *args: str) -> str:
        proc = subprocess.run(self.engine.cmd(*args), capture_output=True, text=True,
                              timeout=CONTROL_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise ContainerError(f"docker {args[0]}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout
