"""One cause, said once: cells that ended `infra` for the same reason are one group, told
once with its remedy and the list of cells, on the console and in the summary.

A cause is (signature, reason with the cell's own id taken out). The remedy is the reason's own
advice where it gives one (pinmatrix/environ/interpreters.py's missing-Python message does), else
the catalogue's `fix` for the signature (probes/signatures.json), else REMEDIES below.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pinmatrix.results import describe_signature

# Host-side infra signatures that are not in the probes' catalogue
REMEDIES = {
    "python-unavailable": "install that Python, pass `--venv-python VERSION=/path`, or use Docker",
    "environment-inconsistent": "make the prepared environment meet its own requirements (`python "
                                "-m pinmatrix.environ.env_check --python PY` lists them), or let "
                                "pinmatrix install the stack (drop --no-install)",
    "resolve-infra": "check the package index settings (`python -m pinmatrix doctor`)",
    "venv-create-failed": "see the cell's build log under logs/; `python -m pinmatrix doctor`",
    "venv-install-failed": "see the cell's build log under logs/; `python -m pinmatrix doctor`",
    "engine-unreachable": "start the Docker daemon, or use `--runner venv`",
    "base-image-missing": "pull or build the base image, or drop `--pull never`",
}


def _key(item: Mapping[str, Any]) -> tuple[str, str]:
    reason = " ".join(str(item.get("reason") or "infra").split())
    return (str(item.get("signature") or ""), reason.replace(str(item.get("cell") or ""), "<cell>"))


def remedy(signature: str | None, reason: str | None = None) -> str | None:
    if reason and ": install it, pass" in reason:  # the reason says what to do itself
        return None
    if signature in REMEDIES:
        return REMEDIES[signature]
    if signature:

        entry = describe_signature(signature) or {}
        return entry.get("fix")
    return None


def group(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Cell-level infra items ({cell, reason, signature}) → causes, biggest first:
    {signature, reason, remedy, cells}. An item of a check (its "check" set) is not grouped."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        if item.get("check"):
            continue
        key = _key(item)
        entry = groups.setdefault(key, {"signature": key[0] or None,
                                        "reason": " ".join(str(item.get("reason") or "infra")
                                                           .split()),
                                        "remedy": remedy(key[0] or None, item.get("reason")),
                                        "cells": []})
        entry["cells"].append(item.get("cell"))
    return sorted(groups.values(), key=lambda g: (-len(g["cells"]), g["reason"]))


def console_lines(causes: list[dict[str, Any]], limit: int = 8) -> list[str]:
    """The causes shared by two cells or more, as console lines."""
    out = []
    for cause in causes:
        if len(cause["cells"]) < 2:
            continue
        sig = f" [{cause['signature']}]" if cause["signature"] else ""
        out.append(f"{len(cause['cells'])} cells, one cause{sig}: {cause['reason']}")
        if cause["remedy"]:
            out.append(f"  remedy: {cause['remedy']}")
        shown = cause["cells"][:limit]
        more = f" (and {len(cause['cells']) - limit} more)" if len(cause["cells"]) > limit else ""
        out.append("  cells: " + ", ".join(shown) + more)
    return out
