"""The host-side record of one cell (docs/CONTRACTS.md §8): always written, even with no probe
result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pinmatrix.fsio import load_json, plain_name, write_json_atomic

STAGES = ("resolve", "prepare", "run", "done")
HOST_STATUSES = (None, "unresolvable", "infra")


@dataclass
class Outcome:
    cell: str
    hash: str | None
    pins: Mapping[str, str]
    runner: str
    stage: str = "resolve"
    status: str | None = None  # set only when the host already knows the verdict
    reason: str | None = None
    signature: str | None = None
    result: str | None = None  # "cells/<id>.json", relative to the run folder
    timings: dict[str, float] = field(default_factory=dict)
    # the run whose result was reused (pinmatrix/run/cache.py); None: ran here
    reused_from: str | None = None
    # what rerunning the failed check groups once found (pinmatrix/run/flaky.py)
    rerun: str | None = None
    # where and when the probe ran (the GPU the scheduler gave it, UTC ISO times from
    # taking the
    # device to giving it back), and what pinmatrix/run/gpu_watch.py saw it use: {gpu index: peak
    # MiB}
    gpu: str | None = None
    started: str | None = None
    finished: str | None = None
    gpus_seen: dict[str, float] | None = None
    trespass: str | None = None  # set when the cell was seen on a GPU it was not given
    # how the container got its GPUs: {"route": cdi | nvidia-runtime | cdi-translated |
    # none, "args": the exact engine arguments, "spec", "untranslated", "why"} (docker runner)
    gpu_access: dict[str, Any] | None = None
    # an infra cell whose probe was stopped after some checks finished: "partial/<id>.json", those
    # check records (pinmatrix/run/one_cell.py keep_partial), evidence and never a verdict
    partial: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"outcome stage {self.stage!r} not one of {STAGES}")
        if self.status not in HOST_STATUSES:
            raise ValueError(f"outcome status {self.status!r} not one of {HOST_STATUSES}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pins"] = dict(self.pins)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def write(self, run_dir: Path) -> Path:
        return write_json_atomic(Path(run_dir) / "outcomes" / f"{self.cell}.json", self.to_json())


def load_outcome(path: Path) -> Outcome | str:
    """The outcome, or a one-line reason why the file could not be read."""
    try:
        data = load_json(path)
        if not isinstance(data, dict) or "cell" not in data:
            return f"{path}: not an outcome record"
        wrong = _wrong_types(data)
        if wrong:  # a damaged record must be listed as damaged, never crash the merge
            return f"{path}: not an outcome record: {wrong}"
        return Outcome.from_json(data)
    except (OSError, ValueError, TypeError) as exc:
        return f"{path}: {exc}"


def _wrong_types(data: Mapping[str, Any]) -> str | None:
    """Why a parsed outcome's fields have the wrong JSON types, or None."""
    if not isinstance(data.get("cell"), str) or not data["cell"]:
        return "'cell' is not a non-empty string"
    if not plain_name(data["cell"]):  # a cell id names files: `../x` would lead out of the run
        return "'cell' is not a cell id (a plain file name)"
    if not isinstance(data.get("pins", {}), dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.get("pins", {}).items()
    ):
        return "'pins' is not an object of strings"
    for key in (
        "hash",
        "reason",
        "signature",
        "result",
        "reused_from",
        "rerun",
        "gpu",
        "started",
        "finished",
        "trespass",
        "partial",
    ):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"{key!r} is not a string"
    if not isinstance(data.get("runner", ""), str):
        return "'runner' is not a string"
    if data.get("gpu_access") is not None and not isinstance(data["gpu_access"], dict):
        return "'gpu_access' is not an object"
    if data.get("gpus_seen") is not None and not isinstance(data["gpus_seen"], dict):
        return "'gpus_seen' is not an object"
    if not isinstance(data.get("timings", {}), dict):
        return "'timings' is not an object"
    return None
