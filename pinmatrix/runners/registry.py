"""Every runner by name, in one dict: a new runner is one module with a `KIND` and one entry here.

`--runner` takes a name from `RUNNERS` or `auto`, which tries `AUTO_ORDER` and takes the first
kind whose engine is usable (a kind without an engine always is). Podman is never picked by `auto`:
a host that has both engines, or a Podman that only emulates `docker`, would otherwise change
runner between runs of the same command.

Code outside this package asks a kind's capabilities (`isolates`, `builds_images`,
`tests_installed`; pinmatrix/runners/base.py RunnerKind), never its name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pinmatrix.containers.engine import Engine
from pinmatrix.errors import HarnessError
from pinmatrix.runners import docker, podman, venv
from pinmatrix.runners.base import RunnerKind

RUNNERS: dict[str, RunnerKind] = {kind.name: kind for kind in (docker.KIND, podman.KIND, venv.KIND)}
AUTO: Final = "auto"
AUTO_ORDER: Final = (docker.KIND.name, venv.KIND.name)
CHOICES: Final = (AUTO, *RUNNERS)


def get(name: str) -> RunnerKind:
    """The kind called `name`; ValueError naming the choices for any other."""
    kind = RUNNERS.get(name)
    if kind is None:
        raise ValueError(f"unknown runner {name!r}: choose one of {', '.join(CHOICES)}")
    return kind


def candidates(choice: str) -> tuple[RunnerKind, ...]:
    """The kinds a `--runner` value may end up as: `auto`'s order, or the one named."""
    if choice == AUTO:
        return tuple(get(name) for name in AUTO_ORDER)
    return (get(choice),)


def may_isolate(choice: str) -> bool:
    """Whether a `--runner` value may run cells in a container (before any engine is looked for)."""
    return any(kind.isolates for kind in candidates(choice))


@dataclass(frozen=True)
class Picked:
    kind: RunnerKind
    engine: Engine | None
    # why each kind tried before it was passed over ("no usable Docker engine: ...")
    passed_over: tuple[str, ...] = ()
    automatic: bool = False  # chosen by `auto`, which says so in one line

    def line(self) -> str:
        """`runner: docker (the engine)` or `runner: venv (why no engine was usable)`."""
        why = self.engine.describe() if self.engine is not None else "; ".join(self.passed_over)
        return f"runner: {self.kind.name} ({why})"


def pick(choice: str) -> Picked:
    """The kind a run uses, with its engine. A kind named outright whose engine is unusable is a
    HarnessError; `auto` passes over it to the next kind and says why in `passed_over`."""
    passed: list[str] = []
    automatic = choice == AUTO
    for kind in candidates(choice):
        if kind.engine is None:
            return Picked(kind, None, tuple(passed), automatic)
        engine = kind.engine.find()
        if engine is not None:
            return Picked(kind, engine, tuple(passed), automatic)
        why = f"no usable {kind.engine.label} engine: {kind.engine.message()}"
        if not automatic:
            raise HarnessError(f"--runner {kind.name}, but {why}")
        passed.append(why)
    raise HarnessError(f"--runner {choice}: no runner is usable here ({'; '.join(passed)})")
