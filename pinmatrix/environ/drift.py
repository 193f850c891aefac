"""Lock drift: the probe's installed-versions fingerprint compared with the cell's lock.

Both runners call this after the probe ran: a mismatch means the environment is not what the table
claims was tested, so the cell is an infra outcome naming the packages, never a verdict on the
stack.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.version import Version

from pinmatrix.cell import NONE, normalize_name

DRIFT_SIGNATURE = "lock-drift"


def lock_drift(locked: Mapping[str, str], packages: Mapping[str, Any],
               pins: Mapping[str, str]) -> list[str]:
    """One line per package whose installed version differs from the lock (or that the cell says is
    `none`).

    `locked`: normalised name -> version (Lock.pinned()); `packages`: the result's
    environment.packages ({name: {"installed": version or None, ...}}); `pins`: the cell's axis
    values.
    """
    problems = []
    for raw_name, info in sorted(packages.items()):
        name = normalize_name(raw_name)
        installed = info.get("installed") if isinstance(info, dict) else None
        if pins.get(raw_name) == NONE or pins.get(name) == NONE:
            if installed:
                problems.append(f"{raw_name} {installed} is installed but the cell says none")
            continue
        want = locked.get(name)
        if want is None:
            continue
        if installed is None:
            problems.append(f"{raw_name} missing (lock: {want})")
        elif not same_version(installed, want):
            problems.append(f"{raw_name} {installed} (lock: {want})")
    return problems


def result_drift(result_path: Path, locked: Mapping[str, str]) -> list[str]:
    """lock_drift for a probe result file; [] when the file is damaged (the results module judges
    that)."""
    try:
        data = json.loads(Path(result_path).read_text())
        packages = data["environment"]["packages"]
        pins = data["cell"]["pins"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(packages, dict) or not isinstance(pins, dict):
        return []
    return lock_drift(locked, packages, pins)


def drift_reason(problems: list[str]) -> str:
    return "installed packages differ from the lock: " + "; ".join(problems)


def same_version(a: str, b: str) -> bool:
    """PEP 440 equality (2.13.0+cpu == 2.13.0+cpu, 1.0 == 1.0.0); plain text where either is not a
    version."""
    try:
        return Version(a) == Version(b)
    except ValueError:  # InvalidVersion, or too many digits for int()
        return a == b
