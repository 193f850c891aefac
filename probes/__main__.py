"""`python -m probes --cell CELL.json --out RESULT.json [--work DIR] [--only GROUP,...]` (docs/CONTRACTS.md §2).

Exit 0 whenever a result was written (a failing check is data, not a crash); 3 when it could not be.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.gpu_share import GpuShare

if TYPE_CHECKING:
    from probes.processes import PlainChild

EXIT_WRITTEN = 0
EXIT_NOT_WRITTEN = 3
DEFAULT_CHECK_TIMEOUT_S = 600.0


class SpecError(ValueError):
    """The cell spec is unreadable or malformed; the message names the file (and line)."""


def load_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the cell spec: {exc.strerror}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: the cell spec must be a JSON object")
    for key, kind in (("id", str), ("hash", str), ("pins", dict), ("checks", list)):
        if not isinstance(spec.get(key), kind):
            raise SpecError(f"{path}: '{key}' must be a {kind.__name__} (docs/CONTRACTS.md §1)")
    if not isinstance(spec.get("settings", {}), dict):
        raise SpecError(f"{path}: 'settings' must be an object")
    device = spec.get("settings", {}).get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise SpecError(f"{path}: settings.device must be auto, cpu or cuda, not {device!r}")
    return spec


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


ROLE = "main"
# `<--out>.partial.json`: the check records finished so far, rewritten (atomically) after each one, and
# removed once the result is written. A probe killed first (the cell's time limit, an interrupted run)
# otherwise takes every verdict it reached with it: an H200 cell stopped at 110 s kept nothing but its
# log (reports/h200/20261129T202553Z-h200-train). The host keeps it as evidence, never as a result.
JOURNAL: Path | None = None
_JOURNALED: list[dict[str, Any]] = []


def _journal(records: list[dict[str, Any]]) -> None:
    if JOURNAL is None or not records:
        return
    _JOURNALED.extend(records)
    try:
        write_atomically({"partial": True, "role": ROLE, "updated": _now(), "checks": _JOURNALED}, JOURNAL)
    except Exception as exc:   # noqa: BLE001 - the journal is evidence; it must never cost a verdict
        _say(f"note: journal not written: {type(exc).__name__}: {exc}")


def _say(line: str) -> None:
    tag = "probe" if ROLE == "main" else f"probe:{ROLE}"
    print(f"[{tag}] {line}", file=sys.stderr, flush=True)


def run(spec: dict[str, Any], work_dir: Path, only: list[str] | None, role: str = "main",
        check_names: list[str] | None = None) -> dict[str, Any]:
    """Run the cell's check groups and return the result document (not yet validated).

    `role` "plain" is the child interpreter of probes/processes.py: it never imports unsloth.
    `check_names`, when given, limits the selected groups to those checks."""
    from probes import processes
    from probes.checks import run_order

    started = _now()
    pins = spec.get("pins", {})
    groups = run_order([g for g in spec.get("checks", []) if only is None or g in only])
    for group in sorted(set(only or ()) - set(spec.get("checks", []))):
        _say(f"note: --only names {group!r}, which this cell's spec does not list; not run")
    split = processes.splits(pins, role)
    plain_compat = [g for g in groups if g in processes.PLAIN_GROUPS] if split else []
    # The cell's main probe speaks for the whole cell, its plain child included (probes/gpu_share.py).
    share = GpuShare.from_env() if role == processes.ROLE_MAIN else GpuShare(None)
    share.enter_compat()
    # Started before anything is imported here, so it works while unsloth imports (probes/processes.py).
    child = processes.start_plain(spec, work_dir, plain_compat) if plain_compat else None
    try:
        return _run_groups(spec, work_dir, groups, role, check_names, split, child, started, share)
    finally:
        if child is not None:
            child.stop()
        share.leave_compat()


def _run_groups(spec: dict[str, Any], work_dir: Path, groups: list[str], role: str, check_names: list[str] | None,
                split: bool, child: PlainChild | None, started: str, share: GpuShare) -> dict[str, Any]:
    from probes import environment, processes

    pins = spec.get("pins", {})
    compile_cache = environment.compile_cache_state()   # before anything compiles into it
    # unsloth patches transformers/peft/trl at import time, so it must be the very first import of the
    # process that uses it (the main one of a cell that pins it); the plain interpreter never imports it.
    first = ("unsloth",) if split else ()
    skip = processes.UNSLOTH_PACKAGES if role == processes.ROLE_PLAIN else ()
    import_start = time.monotonic()
    records = environment.probe_imports(first=first, extra=[p for p in pins if p not in ("python", "base_image")
                                                             and pins[p] != "none"], skip=skip)
    import_s = time.monotonic() - import_start
    # Everything imported so far lives until the probe exits. Moving it into the collector's permanent
    # generation keeps each later full collection to what the checks create: unsloth calls gc.collect()
    # dozens of times per model load and each call walked the whole torch/transformers/unsloth heap
    # (66 calls, 24.5 s of an unsloth cell's compat stage on the H100). Nothing here is garbage yet, so
    # nothing is leaked by freezing it.
    gc.collect()
    gc.freeze()
    from probes.checks import group_checks
    from probes.context import Context
    from probes.framework import check_name, run_check

    settings = spec.get("settings", {})
    requested = settings.get("device", "auto")
    device = environment.decide_device(requested)
    ctx = Context(spec=spec, device=device, work_dir=work_dir, requested_device=requested)
    ctx.cache["imports"] = records
    env = environment.fingerprint(device, records, compile_cache)
    _say(f"cell {spec['id']} on {device} (torch {env['torch']}, gpu {env['gpu']})")
    timeout_s = float(settings.get("check_timeout_s", DEFAULT_CHECK_TIMEOUT_S))

    def names_of(group: str) -> list[str]:
        return [check_name(name) for name, _ in group_checks(group, ctx)]

    def run_group(group: str, allowed: list[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for name, fn in group_checks(group, ctx):
            if allowed is not None and check_name(name) not in allowed:
                continue
            result = run_check(name, fn, ctx, timeout_s)
            result["group"] = group   # docs/CONTRACTS.md §3: every record says which group emitted it
            if result["name"] == "imports":   # the imports it judges ran at probe start; their time is its time
                result["duration_s"] = round(result["duration_s"] + import_s, 4)
            out.append(result)
            detail = result.get("reason") or ""
            error = result.get("error") or {}
            if error:
                # The message too, not only the signature: a probe stopped before it writes its result
                # (a run interrupted at its time limit) leaves this log as the only record of why a check
                # failed, and a bare fingerprint (an H200 run) says nothing by itself.
                first = (str(error.get("message") or "").strip().splitlines() or [""])[0]
                detail = f"{error.get('signature') or ''} {first[:300]}".strip()
            _say(f"{result['name']}: {result['status']} ({result['duration_s']:.2f}s) {detail}")
            _journal([result])
        return out

    by_group: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        if (child is not None and group in child.groups) or (split and group == "throughput"):
            continue
        if group == "throughput" and device == "cuda":
            with share.speed() as alone:
                by_group[group] = _mark_alone(run_group(group, check_names), alone)
        else:
            share.enter_compat()
            by_group[group] = run_group(group, check_names)
    if child is not None:
        collected = child.collect({g: names_of(g) for g in child.groups})
        _journal([record for records in collected.values() for record in records])
        by_group.update(collected)
    if split and "throughput" in groups:
        # One measurement at a time: the plain stacks in a fresh plain interpreter, then unsloth's here.
        plain = [n for n in names_of("throughput") if n not in processes.UNSLOTH_THROUGHPUT]
        if device == "cuda":
            with share.speed() as alone:
                measured: list[dict[str, Any]] = []
                if plain:
                    speed = processes.start_plain(spec, work_dir, ["throughput"], plain)
                    try:
                        measured = speed.collect({"throughput": plain})["throughput"]
                        _journal(measured)
                    finally:
                        speed.stop()
                measured += run_group("throughput", list(processes.UNSLOTH_THROUGHPUT))
                by_group["throughput"] = _mark_alone(measured, alone)
        else:   # no GPU: every speed check only skips, no second interpreter needed for that
            by_group["throughput"] = (run_group("throughput", plain)
                                      + run_group("throughput", list(processes.UNSLOTH_THROUGHPUT)))
    share.leave_compat()
    if share.record() is not None:
        env["gpu_share"] = share.record()
    results = [record for group in groups for record in by_group.get(group, [])]
    cell = {"id": spec["id"], "hash": spec["hash"], "pins": {k: str(v) for k, v in pins.items()}}
    if isinstance(spec.get("runner"), str):
        cell["runner"] = spec["runner"]
    return {"schema": 1, "cell": cell, "environment": env, "checks": results,
            "started": started, "finished": _now()}


def _mark_alone(records: list[dict[str, Any]], alone: dict[str, Any]) -> list[dict[str, Any]]:
    """Say on each speed record that ran that it had the shared GPU to itself (probes/gpu_share.py)."""
    for record in records:
        if alone and record.get("status") != "skip":
            record.setdefault("evidence", {}).update(alone)
    return records


def write_atomically(document: dict[str, Any], out: Path) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a result."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probes", description=__doc__.splitlines()[0])
    parser.add_argument("--cell", required=True, type=Path, help="the cell spec (cell.json)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the result JSON")
    parser.add_argument("--work", type=Path, help="folder for generated fixtures (default: a temp dir)")
    parser.add_argument("--only", help="comma-separated check groups to run (a subset of the spec's)")
    # Internal, for probes/processes.py: the plain interpreter of an unsloth cell, and a check subset.
    parser.add_argument("--role", choices=("main", "plain"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--checks", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global ROLE, JOURNAL
    ROLE = args.role
    JOURNAL = Path(str(args.out) + ".partial.json")
    JOURNAL.unlink(missing_ok=True)   # a journal left by an earlier probe at this path is not ours
    try:
        spec = load_spec(args.cell)
    except SpecError as exc:
        _say(f"error: {exc}")
        return EXIT_NOT_WRITTEN
    only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only else None
    work_dir = args.work or Path(tempfile.mkdtemp(prefix="pinmatrix-probe-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    # transformers copies remote code into HF_MODULES_CACHE (default ~/.cache/huggingface/modules) and
    # imports it from there, so probes running side by side (cells on one host, the three CPU stacks of
    # tests/unit/real_results.py) copy and import the same file at the same time. CI saw the remote-code
    # check fail in one such run (fp-102cadbdaf2c) where it passes alone and in every rerun here; the
    # shared cache is the only state those probes share. Each probe keeps its own copy instead.
    os.environ["HF_MODULES_CACHE"] = str(work_dir / "hf-modules")
    try:
        check_names = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
        document = run(spec, work_dir, only, args.role, check_names)
        from probes.schema_check import load_schema, validate
        errors = validate(document, load_schema())
        if errors:
            _say("error: the result does not match probes/result.schema.json:\n  " + "\n  ".join(errors[:20]))
            return EXIT_NOT_WRITTEN
        write_atomically(document, args.out)
        JOURNAL.unlink(missing_ok=True)   # the result holds it all now
    except BaseException:   # noqa: BLE001 - whatever happened, say it and exit with the contract's code
        _say("error: no result written:\n" + traceback.format_exc())
        return EXIT_NOT_WRITTEN
    _say(f"wrote {args.out}")
    return EXIT_WRITTEN


if __name__ == "__main__":
    sys.exit(main())
