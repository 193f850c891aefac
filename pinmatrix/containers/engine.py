"""Find a container engine: a Docker client that reaches a daemon and can do BuildKit builds, or a
Podman client (rootless or not) whose storage answers.

Why a search instead of plain `docker`: a host may carry several clients, and the first on PATH
is not always usable. A modern client without the buildx plugin cannot do BuildKit builds at all
(it refuses with "buildx component is missing"), while an older classic client builds natively
with DOCKER_BUILDKIT=1. We detect what each candidate can do by asking it, never by its version.

Podman needs no daemon and builds with buildah, which reads the Dockerfile's `RUN --mount` cache,
bind and secret flags itself; `podman info` says whether it runs rootless and which version it is.
Its command line is Docker's for everything the docker runner calls (create, start --attach,
inspect, kill, rm, volume, image inspect, pull, build), so one `Engine` record serves both, and
its `Dialect` holds the few things that differ (where the client is looked for, how to ask whether
the engine is alive and where it keeps images, how messages name it).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pinmatrix.containers import cdi
from pinmatrix.fsio import first_line

ENV_CLIENT = "PINMATRIX_DOCKER"
WELL_KNOWN_CLIENTS = ("/usr/bin/docker", "/usr/local/bin/docker")
ENV_PODMAN = "PINMATRIX_PODMAN"
WELL_KNOWN_PODMAN = ("/usr/bin/podman", "/usr/local/bin/podman")
# Podman reads CDI specs from the CDI defaults from 4.1 on (podman v4.1.0 release notes: "--device
# accepts CDI device names"); before that a CDI name is an unknown device.
PODMAN_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
PODMAN_CDI_SINCE = (4, 1)


@dataclass(frozen=True)
class Dialect:
    """What differs between the Docker and the Podman command line, as far as pinmatrix calls it."""
    program: str                      # the client's name on PATH
    env_client: str                   # the variable that names a client first
    well_known: tuple[str, ...]       # where a client usually is
    title: str                        # how messages name the engine
    alive: tuple[str, ...]            # fails when the engine cannot be reached
    storage_root: tuple[str, ...]     # prints the folder the images live in
    none_found: str                   # the message's start when no client is usable


DOCKER_CLI = Dialect("docker", ENV_CLIENT, WELL_KNOWN_CLIENTS, "the Docker daemon",
                     ("version", "--format", "{{.Server.Version}}"),
                     ("info", "--format", "{{.DockerRootDir}}"),
                     "no Docker client with BuildKit found")
# `podman version` has no `.Server` outside remote mode; `podman info` opens the image store
PODMAN_CLI = Dialect("podman", ENV_PODMAN, WELL_KNOWN_PODMAN, "Podman",
                     ("info", "--format", "{{.Version.Version}}"),
                     ("info", "--format", "{{.Store.GraphRoot}}"),
                     "no usable Podman client found")
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
    # daemon applies no CDI itself (before 25.0, or the cdi feature off;
    # pinmatrix/containers/cdi.py)
    cdi_spec_dirs: tuple[str, ...] = ()
    dialect: Dialect = DOCKER_CLI
    rootless: bool = False            # podman: runs as the calling user (`podman info`)

    @property
    def title(self) -> str:
        """How messages name it: "the Docker daemon", "Podman"."""
        return self.dialect.title

    def alive_args(self) -> list[str]:
        """A cheap command that fails when the engine cannot be reached (a stopped daemon, podman
        storage that cannot be opened)."""
        return self.cmd(*self.dialect.alive)

    def storage_root_args(self) -> list[str]:
        """A command that prints the folder the engine keeps its images in."""
        return self.cmd(*self.dialect.storage_root)

    def cmd(self, *args: str) -> list[str]:
        return [self.client, *args]

    def build_cmd(self) -> list[str]:
        """The command prefix for a BuildKit build that lands in the local image store."""
        if self.buildkit == "buildah":  # podman build: buildah, no BuildKit, same Dockerfile flags
            return [self.client, "build"]
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
        if self.dialect is PODMAN_CLI:
            mode = "rootless" if self.rootless else "as root"
            return f"{self.client} (podman {self.server_version}, {mode}, {gpu}{cdi})"
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
    dialect: Dialect = DOCKER_CLI

    @property
    def engine(self) -> Engine | None:
        return next((a.engine for a in self.attempts if a.engine is not None), None)

    def message(self) -> str:
        if self.engine is not None:
            return f"{self.dialect.program} engine: {self.engine.describe()}"
        tried = ", ".join(f"{a.client} ({a.problem})" for a in self.attempts) or "no candidate"
        return f"{self.dialect.none_found}: tried {tried}"


def candidate_clients(env: dict[str, str] | None = None,
                      which: Callable[[str], str | None] = shutil.which,
                      exists: Callable[[str], bool] = os.path.exists,
                      dialect: Dialect = DOCKER_CLI) -> list[str]:
    """Candidates in order of preference, each once (by real path): $PINMATRIX_DOCKER (or
    $PINMATRIX_PODMAN) first."""
    env = dict(os.environ) if env is None else env
    ordered: list[str] = []
    override = env.get(dialect.env_client, "").strip()
    if override:
        ordered.append(override)
    ordered.extend(dialect.well_known)
    on_path = which(dialect.program)
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


def probe_podman(client: str, run: CommandRunner = _run) -> Attempt:
    """Try one podman client: executable, `podman info` answers (its storage opens, which is where
    a rootless setup without subuids or a broken storage.conf fails), and CDI from 4.1 on."""
    if not (os.path.isfile(client) and os.access(client, os.X_OK)):
        return Attempt(client, problem="not an executable file")
    info = run([client, "info", "--format", "json"], None, None)
    if info.returncode != 0:
        return Attempt(client,
                       problem=f"podman info failed: {_first_line(info.stderr or info.stdout)}")
    try:
        data = json.loads(info.stdout or "{}")
        version = str(data["version"]["Version"])
        rootless = bool(data["host"]["security"]["rootless"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return Attempt(client, problem=f"podman info is not the JSON podman writes: {exc!r}")
    cdi_dirs = PODMAN_CDI_DIRS if _version_tuple(version) >= PODMAN_CDI_SINCE else ()
    nvidia = _cdi_has_nvidia(cdi_dirs) if cdi_dirs else False
    return Attempt(client, engine=Engine(client=client, server_version=version, buildkit="buildah",
                                         nvidia=nvidia, nvidia_how="cdi" if nvidia else "",
                                         cdi_spec_dirs=cdi_dirs, dialect=PODMAN_CLI,
                                         rootless=rootless))


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


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

    folders = [*cdi.spec_dirs(), *(Path(d) for d in engine_dirs)]
    return bool(cdi.find_specs(folders).of_kind(cdi.GPU_KIND))


def search_engines(candidates: Iterable[str] | None = None, run: CommandRunner = _run,
                   dialect: Dialect = DOCKER_CLI) -> Search:
    """Try candidates in order and stop at the first usable one."""
    search = Search(dialect=dialect)
    probe = probe_podman if dialect is PODMAN_CLI else probe_client
    for client in (candidate_clients(dialect=dialect) if candidates is None else candidates):
        attempt = probe(client, run)
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


@lru_cache(maxsize=1)
def _cached_podman() -> Search:
    return search_engines(dialect=PODMAN_CLI)


def find_podman() -> Engine | None:
    """The first usable podman client, probed once per process; None when there is none."""
    return _cached_podman().engine


def podman_message() -> str:
    return _cached_podman().message()


def reset_cache() -> None:
    _cached_search.cache_clear()
    _cached_podman.cache_clear()
