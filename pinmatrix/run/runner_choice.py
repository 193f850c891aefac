"""Which runner a cell gets: docker when an engine works (or was asked for), else venv; one Docker
runner per base image."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinmatrix.cell import Cell
from pinmatrix.errors import HarnessError
from pinmatrix.run.options import RUNNERS, Echo, RunOptions
from pinmatrix.runners.base import Runner
from pinmatrix.containers.engine import Engine

if TYPE_CHECKING:
    from pinmatrix.runners.docker import DockerRunner
    from pinmatrix.runners.venv import VenvRunner


def pick_runner_kind(opts: RunOptions, echo: Echo) -> tuple[str, Engine | None]:
    """("docker", engine) or ("venv", None). `auto` is docker when an engine is found, else venv,
    said in ONE line."""
    if opts.runner not in RUNNERS:
        raise ValueError(f"unknown runner {opts.runner!r}: choose one of {', '.join(RUNNERS)}")
    if opts.runner == "venv":
        return "venv", None
    from pinmatrix.containers.engine import engine_message, find_engine

    engine = find_engine()
    if engine is not None:
        if opts.runner == "auto":
            echo(f"runner: docker ({engine.describe()})")
        return "docker", engine
    if opts.runner == "docker":
        raise HarnessError(f"--runner docker, but no usable Docker engine: {engine_message()}")
    echo(f"runner: venv (no usable Docker engine: {engine_message()})")
    return "venv", None


class Runners:
    """The runner for each cell: one venv runner, or one Docker runner per base image."""

    def __init__(self, kind: str, engine: Engine | None, opts: RunOptions, run_dir: Path,
                 echo: Echo) -> None:
        self.kind, self.engine, self.opts, self.run_dir = kind, engine, opts, run_dir
        self._docker: dict[str, Runner] = {}
        self._venv: Runner | None = None
        if kind == "venv":
            venv = make_venv_runner(opts)
            for note in venv.notes:
                echo(f"venv runner: {note}")
            self._venv = venv

    @property
    def name(self) -> str:
        return self.kind

    def for_cell(self, cell: Cell) -> Runner:
        if self._venv is not None:
            return self._venv
        base = str(cell.pins.get("base_image") or "")
        with _RUNNERS_LOCK:  # cells start on several threads (pinmatrix/run/scheduler.py)
            if base not in self._docker:
                assert self.engine is not None  # kind "docker" is picked only with an engine
                self._docker[base] = make_docker_runner(self.engine, self.opts, self.run_dir,
                                                        base or None)
            return self._docker[base]


_RUNNERS_LOCK = threading.Lock()


def make_venv_runner(opts: RunOptions) -> VenvRunner:
    from pinmatrix.environ import compile_cache
    from pinmatrix.runners.venv import DEFAULT_VENV_ROOT, VenvRunner

    return VenvRunner(venv_root=opts.venv_dir or DEFAULT_VENV_ROOT, sources=opts.sources,
                      system_site_packages=opts.system_site_packages, offline=opts.offline,
                      no_install=opts.no_install, extra_sites=tuple(opts.extra_sites),
                      base_python=opts.venv_python,
                      compile_cache_root=compile_cache.DEFAULT_ROOT if opts.compile_cache else None)


def make_docker_runner(engine: Engine, opts: RunOptions, run_dir: Path,
                       base_image: str | None) -> DockerRunner:
    from pinmatrix.runners.docker import DockerRunner

    extra: dict[str, Any] = {"base_image": base_image} if base_image else {}
    extra["compile_cache"] = opts.compile_cache
    extra["pull"] = opts.pull or "missing"
    if opts.model_cache is not None:  # mounted read-only at /hf in every cell
        extra["hf_home"] = Path(opts.model_cache)
    return DockerRunner(engine, opts.sources, run_dir, cpu_only=opts.cpu, **extra)
