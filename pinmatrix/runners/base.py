"""The runner protocol (docs/CONTRACTS.md §6): how one resolved cell becomes one probe result.

A runner has two steps. `prepare` builds the environment (a Docker image, a venv) from the lock
and raises `InfraError` when the machine fails to do so. `run` starts the probe in that environment
and returns a `RunOutcome`: the result file, or an infra classification. A cell whose stack is
broken still yields a result file (failing checks are data), so `run` never raises for that.

What the rest of pinmatrix may know of a runner before it exists is its `RunnerKind`: the
capabilities the scheduler, the cell hash, the option checks and the doctor ask about, and how to
find its engine and make one. Each runner module declares one (`KIND`), and
pinmatrix/runners/registry.py lists them; no other code compares a runner's name.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pinmatrix.cell import Cell, Lock
from pinmatrix.containers.engine import Engine
from pinmatrix.errors import LOG_TAIL_CHARS


@dataclass(frozen=True)
class Prepared:
    """What `prepare` built: enough for `run` to start the probe there.

    `ref` is the runner's handle (an image tag, a venv folder); `details` carries runner-specific
    facts (the interpreter path, whether the build was reused, the build log path).
    """
    runner: str
    cell_id: str
    ref: str
    reused: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOutcome:
    """Either `result_path` (the probe wrote a result) or `infra_reason` (the machine failed)."""
    result_path: Path | None
    infra_reason: str | None = None
    signature: str | None = None
    log_tail: str = ""
    # runner facts the outcome records (docker: "gpu_access", pinmatrix/containers/cdi.py)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result_path is not None and self.infra_reason is None



@runtime_checkable
class Runner(Protocol):
    name: str

    def prepare(self, cell: Cell, lock: Lock) -> Prepared:
        """Build the cell's environment; raises InfraError."""
        ...

    def run(self, prepared: Prepared, spec_path: Path, out_dir: Path,
            gpu: str | None, timeout_s: float) -> RunOutcome:
        """Run `python -m probes` for the spec; writes the result under out_dir. Never raises for a
        cell failure.

        `gpu`: the device assignment (CUDA_VISIBLE_DEVICES value / docker --gpus device list);
        "" means CPU only (the --cpu flag); None means whatever the runner's default is (all).
        """
        ...


class RunnerSettings(Protocol):
    """What a runner's factory reads of a run's options (pinmatrix/run/options.py RunOptions has
    every one): read-only, so a frozen record satisfies it as well."""

    @property
    def cpu(self) -> bool: ...
    @property
    def sources(self) -> Any: ...
    @property
    def offline(self) -> bool: ...
    @property
    def compile_cache(self) -> bool: ...
    @property
    def pull(self) -> str | None: ...
    @property
    def model_cache(self) -> Path | None: ...
    @property
    def venv_dir(self) -> Path | None: ...
    @property
    def system_site_packages(self) -> bool: ...
    @property
    def no_install(self) -> bool: ...
    @property
    def extra_sites(self) -> Sequence[Path]: ...
    @property
    def venv_python(self) -> Mapping[str, str] | str | None: ...


# (settings, run folder, engine or None, the cell's base image or None) -> a runner
RunnerFactory = Callable[[RunnerSettings, Path, Engine | None, str | None], Runner]


@dataclass(frozen=True)
class EngineNeed:
    """The engine a container runner needs: how to find it, and how a person is told it is
    missing."""
    label: str                            # "Docker", "Podman": how errors name it
    capability: str                       # the doctor's line ("Docker client + BuildKit")
    remedy: str                           # what to install or start
    find: Callable[[], Engine | None]     # the usable engine, or None (probed once per process)
    message: Callable[[], str]            # one line: the engine used, or why none was


@dataclass(frozen=True)
class RunnerKind:
    """One registry entry (pinmatrix/runners/registry.py): a runner's name, what it can do, and
    how to make it. The capability flags are what other code asks instead of comparing names."""
    name: str
    summary: str                 # one line for `--runner`'s help
    # the probe runs in a container: host paths reach it only as bind mounts (no ',' or '=' in
    # them), and GPUs are named by host index
    isolates: bool
    # an image per cell from docker/Dockerfile over a base image: the Dockerfile is part of the cell
    # hash, and cells with different `base_image` pins get separate runners
    builds_images: bool
    # can test what an interpreter already holds instead of installing the lock (--no-install)
    tests_installed: bool
    create: RunnerFactory
    engine: EngineNeed | None = None  # None: runs on this host as it is


def tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    return text[-limit:]


# File names inside a runner's out_dir: the probe's result and the captured output of the run.
RESULT_NAME = "result.json"
RUN_LOG_NAME = "run.log"
