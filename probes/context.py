"""The per-run context every check receives: the cell spec, the device, a work folder and a cache."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NONE = "none"
# Axes of the cell spec that are not Python packages.
NON_PACKAGE_AXES = frozenset({"python", "base_image"})


class Skip(Exception):
    """Not applicable here: the check is reported as `skip` with this message as its reason."""


class Infra(Exception):
    """The machine failed, not the stack: reported as `infra` with this message as its reason."""


def installed_version(package: str) -> str | None:
    """The installed distribution version of `package` (any spelling: flash-attn, flash_attn), or None."""
    for name in dict.fromkeys((package, package.replace("_", "-"), package.replace("-", "_"))):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@dataclass
class Context:
    spec: dict[str, Any]
    device: str                                  # "cpu" | "cuda": what checks run on
    work_dir: Path
    requested_device: str = "auto"               # settings.device as the cell asked for it
    cache: dict[str, Any] = field(default_factory=dict)   # models and results built once per run

    @property
    def pins(self) -> dict[str, str]:
        return dict(self.spec.get("pins") or {})

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.spec.get("settings") or {})

    def setting(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def pinned(self, package: str) -> bool:
        """True when the cell pins `package` to a version (absent from pins or "none" is False)."""
        value = self.pins.get(package)
        return value is not None and value != NONE

    def installed(self, package: str) -> str | None:
        return installed_version(package)

    def require(self, package: str) -> str:
        """The installed version of `package`, or Skip when this cell deliberately leaves it out."""
        if self.pins.get(package) == NONE:
            raise Skip(f"{package} not in this cell")
        version = self.installed(package)
        if version is None:
            raise Skip(f"{package} not in this cell (not installed)")
        return version

    def require_gpu(self) -> None:
        if self.device == "cuda":
            return
        if self.requested_device == "cuda":
            # The cell asked for a GPU and the machine has none: the machine failed, not the stack.
            raise Infra("the cell asked for cuda but torch.cuda.is_available() is False (no GPU or driver)")
        raise Skip("needs a GPU")
