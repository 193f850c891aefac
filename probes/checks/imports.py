"""Group "imports": every stack package's installed version against whether it imports.

The imports themselves happen once, at probe start (unsloth first), in probes.environment; this
check judges those records: a package the cell pins must be installed and must import.
"""
from __future__ import annotations

from probes import signatures
from probes.context import NON_PACKAGE_AXES, Context, Infra
from probes.environment import ImportRecord, probe_import, probe_imports
from probes.framework import CheckFn, Failed

CACHE_KEY = "imports"


def checks(ctx: Context) -> list[tuple[str, CheckFn]]:
    return [("imports", check_imports)]


def pinned_packages(ctx: Context) -> list[str]:
    return [name for name in ctx.pins if name not in NON_PACKAGE_AXES and ctx.pinned(name)]


def import_records(ctx: Context) -> dict[str, ImportRecord]:
    """The records from probe start, or (when run alone) a fresh probe; pinned extras are added."""
    records = ctx.cache.get(CACHE_KEY)
    if records is None:
        first = ("unsloth",) if ctx.pinned("unsloth") else ()
        records = ctx.cache[CACHE_KEY] = probe_imports(first=first)
    for name in pinned_packages(ctx):
        if name not in records:
            records[name] = probe_import(name)
    return records


def check_imports(ctx: Context) -> dict:
    records = import_records(ctx)
    pinned = pinned_packages(ctx)
    evidence: dict = {
        "packages": {name: record.to_json() for name, record in records.items()},
        "pinned": {name: ctx.pins[name] for name in pinned},
        "import_warnings": {name: r.warnings for name, r in records.items() if r.warnings},
        "import_s": {name: r.seconds for name, r in records.items() if r.installed is not None},
        # catalogue signatures of what a package warned, logged or printed while importing, e.g.
        # unsloth's "Your Flash Attention 2 installation seems to be broken" when only FA4 is there
        "import_notices": {name: found for name, r in records.items()
                           if (found := _known_notices(r.warnings))},
    }
    missing = [name for name in pinned if records[name].installed is None]
    broken = [name for name in pinned if records[name].imports is False]
    gpu_only: list[str] = []
    machine: list[str] = []
    for name in list(broken):
        record = records[name]
        found = signatures.classify(record.exc_type or "", record.message or "", record.traceback or "")
        status = signatures.status_for(found, has_accelerator=ctx.device == "cuda")
        if status != "fail":
            broken.remove(name)
            # e.g. unsloth refusing to import without a GPU: on a CPU run that is "needs a GPU",
            # on a GPU run the machine failed. Neither is a verdict on the stack.
            (gpu_only if status == "skip" else machine).append(name)
    evidence.update(missing=missing, failed=broken, needs_gpu=gpu_only)
    if missing or broken:
        parts = []
        if broken:
            first = records[broken[0]]
            parts.append(f"{', '.join(broken)} failed to import; first: {first.error}")
        if missing:
            parts.append(f"pinned but not installed: {', '.join(missing)}")
        raise _ImportFailure(records[broken[0]] if broken else None, "; ".join(parts), evidence)
    if machine:
        raise Infra(f"{', '.join(machine)} cannot import on this machine: {records[machine[0]].error}")
    return evidence


def _known_notices(lines: list[str]) -> list[str]:
    """The catalogue ids among `lines` (unknown lines are no finding: a notice is not a failure)."""
    found = [signatures.classify("Notice", line) for line in lines]
    return sorted({f.id for f in found if f.known})


class _ImportFailure(Failed):
    """A Failed whose signature comes from the first import error, not from this check's own message."""

    def __init__(self, record: ImportRecord | None, message: str, evidence: dict):
        super().__init__(message, evidence)
        if record is not None:
            self.source = (record.exc_type or "ImportError", record.message or "", record.traceback or "")
