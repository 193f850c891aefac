"""The check-group registry: spec group name -> module in this package, imported lazily.

Every group module exposes `checks(ctx) -> list[tuple[str, CheckFn]]`. A group whose module is
missing, fails to import, or whose `checks()` raises still yields one check named after the group,
so the failure is classified and reported instead of crashing the probe.
"""
from __future__ import annotations

import importlib
import sys

from probes.context import Context

# The order is the run order, whatever order a matrix lists them in: loading a model through unsloth
# patches the model's classes for the rest of the process (on the H100 it compiled the remote-code
# ExaoneBlock, and a later HF+PEFT run took 33 s instead of 2.5 s), so every plain-transformers group
# comes before the unsloth group, and throughput (whose unsloth stack comes last) after it. In a cell
# that pins unsloth the plain groups run in their own interpreter anyway (probes/processes.py); the
# order is then the order of the result.
GROUPS: dict[str, str] = {
    "imports": "imports",
    "kernels": "kernels",
    "exaone3.5": "exaone35",
    "exaone4": "exaone4",
    "attention": "attention",
    "lora-train": "lora_train",
    "generate": "generate",
    "train": "train",
    "adapter": "adapter",
    "unsloth": "unsloth",
    "throughput": "throughput",
}


def run_order(groups: list[str]) -> list[str]:
    """`groups` in registry order; unknown names keep their place at the end (they fail as unknown)."""
    known = [g for g in GROUPS if g in groups]
    return known + [g for g in groups if g not in GROUPS]


def _reraise(exc: BaseException):
    """A check that re-raises `exc`, so run_check classifies a group-level failure like any other."""
    def check(ctx: Context) -> dict:
        raise exc
    return check


def group_checks(group: str, ctx: Context) -> list[tuple[str, object]]:
    """The (name, CheckFn) pairs of `group`; on any failure one pair named after the group that re-raises it."""
    module_name = GROUPS.get(group)
    if module_name is None:
        return [(group, _reraise(LookupError(f"unknown check group {group!r}; known: {', '.join(GROUPS)}")))]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
        listed = list(module.checks(ctx))
    except BaseException as exc:   # noqa: BLE001 - reported as the group's check
        if isinstance(exc, KeyboardInterrupt):
            raise
        sys.modules.pop(f"{__name__}.{module_name}", None)
        return [(group, _reraise(exc))]
    return listed
