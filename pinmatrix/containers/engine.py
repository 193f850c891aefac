"""Find a Docker client that reaches a daemon and can do BuildKit builds.

Why a search instead of plain `docker`: a host may carry several clients, and the first on PATH
is not always usable. A modern client without the buildx plugin cannot do BuildKit builds at all
(it refuses with "buildx component is missing"), while an older classic client builds natively
with DOCKER_BUILDKIT=1. We detect what each candidate can do by asking it, never by its version.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

from pinmatrix.fsio import first_line

ENV_CLIENT = "PINMATRIX_DOCKER"
WELL_KNOWN_CLIENTS = ("/usr/bin/docker", "/usr/local/bin/docker")
PROBE_TIMEOUT_S = 30.0

# A build that exercises what our Dockerfile needs from the frontend (RUN --mount cache and
# secret flags) without any base image: the stage holding the mounts is parsed but unused, so
# BuildKit prunes it; the classic builder and a client without buildx both fail on it.
BUILDKIT_PROBE_DOCKERFILE = (
    "FROM scratch AS mounts_parse\n"
    "RUN --mount=type=cache,target=/c --mount=type=secret,id=probe true\n"
    "FROM scratch\n"
    "LABEL org.pinmatrix.buildkit-probe=1\n"
)



@dataclass(frozen=True)
class Engine:
    """A usable client: its path, how it does BuildKit builds, and whether GPUs can be passed."""
    client: str                       # absolute path of the docker binary
    server_version: str
    # "buildx" (docker buildx build --load) | "env" (DOCKER_BUILDKIT=1)
    buildkit: str
    nvidia: bool                      # an NVIDIA runtime or CDI spec was detected
    nvidia_how: str = ""              # "runtime" | "cdi" | "" — what the detection saw
    # the folders the daemon reads CDI specs from (`docker info` CDISpecDirs): empty when the
    # daemon applies no CDI itself (before 25.0, or the cdi feature off; pinmatrix/containers/cdi.py)
    cdi_spec_dirs: tuple[str, ...] = ()

    def cmd(self, *args: str) -> list[str]:
        return [self.client, *args]

    def build_cmd(self) -> list[str]:
        """The command prefix for a BuildKit build that lands in the local image store."""
        if self.buildkit == "buildx":
            return [self.client, "buildx", "build", "--load"]
        return [self.client, "build"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_BUILDKIT"] = "1"
        return env

    def describe(self) -> str:
        gpu = f"NVIDIA via {self.nvidia_how}" if self.nvidia else "no NVIDIA runtime"
        cdi = (f", CDI specs from {', '.join(self.cdi_spec_dirs)}" if self.cdi_spec_dirs
               else ", no CDI in the engine")
        return (f"{self.client} (server {self.server_version}, BuildKit via {self.buildkit}, "
                f"{gpu}{cdi})")


@dataclass
class Attempt:
    """What happened when one candidate was tried; the reasons make the one-line message."""
    client: str
    engine: Engine | None = None
    problem: str = ""


@dataclass
class Search:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def engine(self) -> Engine | None:
        return next((a.engine for a in self.attempts if a.engine is not None), None)

    def message(self) -> str:
        if self.engine is not None:
            return f"docker engine: {self.engine.describe()}"
        tried = ", ".join(f"{a.client} ({a.problem})" for a in self.attempts) or "no candidate"
        return f"no Docker client with BuildKit found: tried {tried}"


def candidate_clients(env: dict[str, str] | None = None,
                      which: Callable[[str], str | None] = shutil.which,
                      exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """Candidates in order of preference, each once (by real path): $PINMATRIX_DOCKER first."""
    env = dict(os.environ) if env is None else env
    ordered: list[str] = []
    override = env.get(ENV_CLIENT, "").strip()
    if override:
        ordered.append(override)
    ordered.extend(WELL_KNOWN_CLIENTS)
    on_path = which("docker")
    if on_path:
        ordered.append(on_path)
    seen: set[str] = set()
    result: list[str] = []
    for path in ordered:
        if path != override and not exists(path):
            continue
        key = os.path.realpath(path) if exists(path) else path
        if key in seen:
            continue
        seen.add(key)
        result.append(path)
    return result


CommandRunner = Callable[[Sequence[str], dict[str, str] | None, str | None],
                         "subprocess.CompletedProcess[str]"]


def _run(args: Sequence[str], env: dict[str, str] | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(args), input=stdin, capture_output=True, text=True,
                              env=env, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(args), 127, "", f"{type(exc).__name__}: {exc}")


def _first_line(text: str) -> str:
    return first_line(text, limit=160, ellipsis="").strip() or "no output"


def probe_client(client: str, run: CommandRunner = _run) -> Attempt:
    """Try one client: executable, daemon reachable, BuildKit builds, NVIDIA runtime."""
    if not (os.path.isfile(client) and os.access(client, os.X_OK)):
        return Attempt(client, problem="not an executable file")
    version = run([client, "version", "--format", "{{.Server.Version}}"], None, None)
    if version.returncode != 0 or not version.stdout.strip():
        return Attempt(client,
                       problem="daemon unreachable: "
                               f"{_first_line(version.stderr or version.stdout)}")
    buildkit = _buildkit_mode(client, run)
    if buildkit is None:
        return Attempt(client, problem="no buildx, and DOCKER_BUILDKIT=1 builds fail")
    cdi_dirs = engine_cdi_dirs(client, run)
    nvidia_how = _nvidia(client, run, cdi_dirs)
    return Attempt(client, engine=Engine(client=client, server_version=version.stdout.strip(),
                                         buildkit=buildkit, nvidia=bool(nvidia_how),
                                         nvidia_how=nvidia_how, cdi_spec_dirs=cdi_dirs))


def _buildkit_mode(client: str, run: CommandRunner) -> str | None:
    if run([client, "buildx", "version"], None, None).returncode == 0:
        return "buildx"
    env = dict(os.environ)
    env["DOCKER_BUILDKIT"] = "1"
    # A real (tiny) build from stdin with no context; its output is thrown away, no image is left.
    probe = run([client, "build", "--progress=plain", "--output", "type=tar,dest=/dev/null", "-"],
                env, BUILDKIT_PROBE_DOCKERFILE)
    return "env" if probe.returncode == 0 else None


def engine_cdi_dirs(client: str, run: CommandRunner) -> tuple[str, ...]:
    """The daemon's CDI spec folders from `docker info` (CDISpecDirs, docker/cli v25.0.0 on). A
    daemon that applies no CDI reports none (null); a client older than the field fails the
    template: both mean no CDI in the engine."""
    info = run([client, "info", "--format", "{{json .CDISpecDirs}}"], None, None)
    if info.returncode != 0:
        return ()
    try:
        dirs = json.loads(info.stdout or "null") or []
    except json.JSONDecodeError:
        return ()
    return tuple(str(d) for d in dirs if isinstance(d, str) and d)


def _nvidia(client: str, run: CommandRunner, cdi_dirs: Sequence[str] = ()) -> str:
    info = run([client, "info", "--format", "{{json .Runtimes}}"], None, None)
    if info.returncode == 0:
        try:
            runtimes = json.loads(info.stdout or "{}") or {}
        except json.JSONDecodeError:
            runtimes = {}
        if any("nvidia" in name for name in runtimes):
            return "runtime"
    if _cdi_has_nvidia(cdi_dirs):
        return "cdi"
    return ""


def _cdi_has_nvidia(engine_dirs: Sequence[str]) -> bool:
    """A parsable spec of kind nvidia.com/gpu in the CDI folders (pinmatrix/containers/cdi.py)."""
    from pinmatrix.containers import cdi

    folders = [*cdi.spec_dirs(), *(Path(d) for d in engine_dirs)]
    return bool(cdi.find_specs(folders).of_kind(cdi.GPU_KIND))


def search_engines(candidates: Iterable[str] | None = None, run: CommandRunner = _run) -> Search:
    """Try candidates in order and stop at the first usable one."""
    search = Search()
    for client in (candidate_clients() if candidates is None else candidates):
        attempt = probe_client(client, run)
        search.attempts.append(attempt)
        if attempt.engine is not None:
            break
    return search


@lru_cache(maxsize=1)
def _cached_search() -> Search:
    return search_engines()


def find_engine() -> Engine | None:
    """The first usable engine, probed once per process; None when there is none (see
    engine_message)."""
    return _cached_search().engine


def engine_message() -> str:
    """One line: which engine is used, or why none was found (for --runner auto's fallback
    notice)."""
    return _cached_search().message()


def reset_cache() -> None:
    _cached_search.cache_clear()
