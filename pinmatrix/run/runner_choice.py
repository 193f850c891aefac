"""Which runner a cell gets: the kind `--runner` names, or for `auto` the first one whose engine
works (pinmatrix/runners/registry.py); one runner per base image for the kinds that build images."""
from __future__ import annotations

import threading
from pathlib import Path

from pinmatrix.cell import Cell
from pinmatrix.containers.engine import Engine
from pinmatrix.run.options import Echo, RunOptions
from pinmatrix.runners import registry
from pinmatrix.runners.base import Runner


def pick_runner_kind(opts: RunOptions, echo: Echo) -> tuple[str, Engine | None]:
    """(kind name, its engine or None). `auto` says what it took, and why, in ONE line."""
    picked = registry.pick(opts.runner)
    if picked.automatic:
        echo(picked.line())
    return picked.kind.name, picked.engine


class Runners:
    """The runner for each cell: one runner for the run, or, for a kind that builds images, one per
    base image."""

    def __init__(self, kind: str, engine: Engine | None, opts: RunOptions, run_dir: Path,
                 echo: Echo) -> None:
        self.kind, self.engine, self.opts, self.run_dir = kind, engine, opts, run_dir
        self._kind = registry.get(kind)
        self._by_base: dict[str, Runner] = {}
        self._one: Runner | None = None
        if not self._kind.builds_images:
            self._one = self._kind.create(opts, run_dir, engine, None)
            for note in getattr(self._one, "notes", ()):
                echo(f"{kind} runner: {note}")

    @property
    def name(self) -> str:
        return self.kind

    def for_cell(self, cell: Cell) -> Runner:
        if self._one is not None:
            return self._one
        base = str(cell.pins.get("base_image") or "")
        with _RUNNERS_LOCK:  # cells start on several threads (pinmatrix/run/scheduler.py)
            if base not in self._by_base:
                self._by_base[base] = self._kind.create(self.opts, self.run_dir, self.engine,
                                                        base or None)
            return self._by_base[base]


_RUNNERS_LOCK = threading.Lock()
