"""The check-group registry: spec group name -> module in this package, imported lazily.

Every group module exposes `checks(ctx) -> list[tuple[str, CheckFn]]`. A group whose module is
missing, fails to import, or whose `checks()` raises still yields one check named after the group,
so the failure is classified and reported instead of crashing the probe.
"""
from __future__ import annotations

import importlib
import sys

from probes import registry
from probes.context import Context

# Group -> module, in run order: one registry, owned by probes (probes/registry.py).
GROUPS: dict[str, str] = {g.name: g.module for g in registry.GROUPS}
run_order = registry.run_order


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
