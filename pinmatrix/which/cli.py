"""The `which` command's work (pinmatrix/commands/which.py holds its options): whether a user's
own stack LoRA-trains EXAONE, how fast the matching cell ran and where, and the
smallest change that makes it work (pinmatrix/which/match.py). `--judge` runs a one-cell matrix of
exactly the stack's pins through `python -m pinmatrix matrix` first, and answers from that run.

Exit codes: 0 works for every purpose asked; 1 fails for one; 2 bad input (the file and line);
4 not judged (no judged cell has this stack, or its checks did not run there).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pinmatrix.errors import UsageError
from pinmatrix.fsio import MAX_JSON_BYTES, Refused, read_bytes_bounded, read_json, write_text_atomic
from pinmatrix.report import compat
from pinmatrix.which.config import DEFAULT_REPORT, WhichConfig
from pinmatrix.which.match import (
    FAILS,
    NOT_JUDGED,
    WORKS,
    PurposeAnswer,
    Record,
    answer,
    default_purposes,
    exit_code,
    match,
)
from pinmatrix.which.stack import Stack, StackError, read_here, read_stack, read_text, set_python

EXIT_WORKS, EXIT_FAILS, EXIT_NOT_JUDGED = 0, 1, 4


def run_which(config: WhichConfig) -> int:
    stack = load_stack(config)
    reports, datasets = list(config.report), list(config.dataset)
    if config.judge:
        reports, datasets = [judge_stack(stack, config)], []
    records, sources = load_records(reports, datasets)
    cells = [r.cell for r in records]
    purposes = default_purposes(stack, cells, config.purpose)
    found = match(stack, records)
    answers = answer(stack, records, purposes, found)
    code = exit_code(answers)
    if config.constraints_dir is not None:
        write_constraints(config.constraints_dir, answers)
    if config.as_json:
        print(json.dumps(to_json(stack, sources, found, answers, code), indent=2))
    else:
        print(render(stack, sources, records, found, answers, code))
    return code


def load_stack(config: WhichConfig) -> Stack:
    if config.here == (config.stack is not None):
        raise UsageError("which: give a stack FILE or --here (one of them)")
    stack = read_here() if config.here or config.stack is None else read_stack(config.stack)
    if config.python:
        set_python(stack, config.python)
    if config.complete:
        stack.complete = True
    return stack


def load_records(reports: Sequence[Path], datasets: Sequence[Path]
                 ) -> tuple[list[Record], list[str]]:
    """The judged cells of every --report folder and --dataset file (default reports/latest)."""

    documents: list[tuple[str, dict[str, Any]]] = []
    if not reports and not datasets:
        reports = [DEFAULT_REPORT]
    for folder in reports:
        if (folder / compat.COMPAT_NAME).is_file():
            datasets = [*datasets, folder / compat.COMPAT_NAME]
            continue
        if not (folder / "summary.json").is_file():
            raise UsageError(f"--report {folder}: no compat.json or summary.json there (a run "
                             "folder of `python -m pinmatrix matrix`)")

        summary = read_json(folder / "summary.json")
        if not isinstance(summary, dict):
            raise UsageError(f"--report {folder}: summary.json is not a report")
        documents.append((str(folder), compat.validate(compat.build(folder, summary),
                                                       f"{folder} (from summary.json)")))
    for path in datasets:
        try:  # the run-folder trust rule: a bounded regular file, never through a link
            raw = read_bytes_bounded(path, MAX_JSON_BYTES)
        except Refused as exc:
            raise StackError(path, None, str(exc)) from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise StackError(path, None, "not UTF-8: not a compat.json") from None
        except json.JSONDecodeError as exc:
            raise StackError(path, exc.lineno, f"column {exc.colno}: not JSON: {exc.msg}") \
                from None
        try:
            documents.append((str(path), compat.validate(data, str(path))))
        except ValueError as exc:
            raise StackError(path, None, f"not a compat.json ({exc})") from None
    records = [Record(cell, str(r["run_id"]), dict(r["host"]), source)
               for source, doc in documents
               for cell, r in zip(compat.cells_of(doc), doc["records"], strict=False)]
    return records, [f"{s} (run {d['run_id']}, {len(d['records'])} judged cells)"
                     for s, d in documents]


def write_constraints(folder: Path, answers: Sequence[PurposeAnswer]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_text_atomic(folder / a.purpose.file_name, a.change.constraints(a.purpose))
            for a in answers if a.change is not None]


# --- --judge -------------------------------------------------------------------------------------

def judge_matrix(stack: Stack, matrix_path: Path) -> dict[str, Any]:
    """The matrix file's document with every axis set to the stack's one value (a package it
    does not have: `none`). A range or an unknown version cannot be a cell: UsageError."""
    try:
        document = yaml.safe_load(read_text(matrix_path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise StackError(matrix_path, mark.line + 1 if mark else None, f"not YAML: {exc}") \
            from None
    if not isinstance(document, dict) or not isinstance(document.get("axes"), dict):
        raise StackError(matrix_path, None, "no `axes` mapping: not a matrix file")
    axes: dict[str, list[str]] = {}
    for axis, values in document["axes"].items():
        values = [str(v) for v in (values if isinstance(values, list) else [values])]
        if axis == "python":
            if not stack.python_exact:
                raise UsageError("--judge: the stack does not say its python; pass --python X.Y")
            axes[axis] = [".".join(stack.python_exact.split(".")[:2])]
        elif axis == "base_image":
            axes[axis] = values[:1]
        else:
            want = stack.want(axis)
            if want is None and stack.complete:
                axes[axis] = ["none"]
            elif want is None and len(values) == 1:
                axes[axis] = values
            elif want is None or not want.exact:
                raise UsageError(f"--judge: {axis} is {stack.version(axis)} in the stack; a cell "
                                 "needs one exact version (pin it, or freeze the environment)")
            else:
                axes[axis] = [want.exact]
    document["axes"] = axes
    return dict(document)


def judge_stack(stack: Stack, config: WhichConfig) -> Path:
    """Run the one-cell matrix through `python -m pinmatrix matrix`; the new run folder."""
    reports = Path(config.judge_reports)
    with tempfile.TemporaryDirectory(prefix="pinmatrix-judge-") as tmp:
        matrix = Path(tmp) / "matrix.yaml"
        matrix.write_text(yaml.safe_dump(judge_matrix(stack, config.matrix), sort_keys=False),
                          encoding="utf-8")
        command = [sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(matrix),
                   "--reports", str(reports), "--label", "which", *config.judge_arg]
        print("judge: " + " ".join(command), file=sys.stderr, flush=True)
        # its progress goes to our stderr: stdout stays the answer (--json reads it)
        proc = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, env=os.environ)
    if proc.returncode not in (0, 3):
        raise UsageError(f"--judge: `matrix` exited {proc.returncode}; its output is above")
    latest = reports / "latest"
    return latest.resolve() if latest.exists() else latest


# --- words ---------------------------------------------------------------------------------------

WORD = {WORKS: "WORKS", FAILS: "FAILS", NOT_JUDGED: "NOT JUDGED"}


def _speed_words(answer_speed: tuple[str, float] | None, record: Record) -> str:
    if not answer_speed:
        return "speed: not measured for this purpose's routes in that cell"
    host = record.host
    where = host.get("gpu") or host.get("name") or "unknown host"
    return (f"speed: {answer_speed[0]} {answer_speed[1]:.1f} tokens/s, measured on {where} "
            f"(run {record.run_id}, {record.cell.finished or 'date unknown'})")


def render(stack: Stack, sources: Sequence[str], records: Sequence[Record], found: Any,
           answers: Sequence[PurposeAnswer], code: int) -> str:
    lines = [f"stack: {stack.source} ({stack.format}, {len(stack.packages)} packages"
             + (f"; python {stack.python_exact or stack.python}" if stack.python
                else "; python not given (--python X.Y)")
             + (f"; torch CUDA {stack.cuda}" if stack.cuda else "") + ")"]
    if not stack.complete:
        lines.append("  a package it does not list is taken as any version (a whole environment, "
                     "as `pip freeze` writes it? pass --complete)")
    lines += [f"dataset: {s}" for s in sources]
    lines.append("axes: " + ", ".join(f"{a} {_yours(stack, a)}" for a in found.axes))
    if found.exact:
        for r in found.exact:
            lines.append(f"match: exact cell {r.cell.cell_id} (run {r.run_id}; "
                         f"{r.cell.verdict or r.cell.status}; judged on {r.host.get('name')})")
            other = found.other_differences.get(r.key) or []
            if other:
                lines.append("  other packages differ from that cell's lock (not matrix axes; "
                             "not judged): " + ", ".join(f"{n} {y} (cell {c})"
                                                         for n, y, c in other[:8])
                             + (f", and {len(other) - 8} more" if len(other) > 8 else ""))
    else:
        lines.append("match: no judged cell has exactly this stack; nearest:")
        for r, diffs in found.nearest:
            lines.append(f"  {r.cell.cell_id} (run {r.run_id}; {r.cell.verdict or r.cell.status})"
                         f": differs in " + ", ".join(d.text for d in diffs))
        if found.uncovered:
            lines.append("  no run covered: " + "; ".join(
                f"{d.axis} {d.yours} (judged: {d.cells})" for d in found.uncovered))
    for a in answers:
        lines += ["", f"{a.purpose.key}: {WORD[a.status]} ({a.purpose.title})", f"  {a.why}"]
        shown: set[tuple[Any, ...]] = set()
        for c in a.cells:  # each distinct finding once, however many matching cells share it
            key = (c.status, c.speed, tuple((f["check"], f["signature"]) for f in c.failing),
                   tuple(i["what"] for i in c.record.cell.not_judged), c.record.host.get("name"))
            if key not in shown:
                shown.add(key)
                lines += _cell_lines(c, "  ")
        for c in a.nearest:
            lines.append(f"  nearest cell {c.record.cell.cell_id}: {c.status}"
                         + (f": {c.why}" if c.why else ""))
            lines += _cell_lines(c, "    ", head=False)
        if a.change is not None:
            ch = a.change
            lines.append(f"  smallest change: {len(ch.differences)} package change"
                         f"{'s' if len(ch.differences) != 1 else ''} to cell "
                         f"{ch.record.cell.cell_id} (run {ch.record.run_id}): "
                         + ", ".join(d.text for d in ch.differences))
            lines.append("    " + _speed_words(ch.speed, ch.record))
            lines += ["    | " + ln for ln in ch.constraints(a.purpose).splitlines()]
            for r, diffs, why in ch.why_not_nearer:
                far = (f"{len(diffs)} change{'s' if len(diffs) != 1 else ''}: "
                       + ", ".join(d.text for d in diffs) if diffs else "your stack's own cell")
                lines.append(f"    why not {r.cell.cell_id} ({far}): {why}")
        elif a.change_why and a.status != WORKS:
            lines.append(f"  smallest change: none ({a.change_why})")
    lines += ["", f"exit {code}: " + {EXIT_WORKS: "works for every purpose asked",
                                      EXIT_FAILS: "fails for at least one purpose",
                                      EXIT_NOT_JUDGED: "not judged for at least one purpose "
                                                       "(none fails)"}[code]]
    return "\n".join(lines)


def _cell_lines(c: Any, indent: str, head: bool = True) -> list[str]:
    out = []
    if c.status == WORKS:  # a failing route's time answers nothing
        out.append(f"{indent}{_speed_words(c.speed, c.record)}")
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for f in c.failing:  # one line per status and signature, as the pins page groups them
        groups.setdefault((f["status"], f["signature"]), []).append(f)
    for (status, signature), same in groups.items():
        f = same[0]
        text = (f"{indent}- {', '.join(g['check'] for g in same)} {status}"
                + (f" [{signature}]" if signature else ""))
        if f["cause"]:
            text += f": {' '.join(str(f['cause']).split())}"
        if f["fix"]:
            text += f" Fix: {' '.join(str(f['fix']).split())}"
        out.append(text)
    for item in c.record.cell.not_judged:
        out.append(f"{indent}(not judged on {c.record.host.get('name')}: {item['what']})")
    return out


def _yours(stack: Stack, axis: str) -> str:
    if axis == "python":
        return stack.python_exact or (str(stack.python) if stack.python else "not given")
    return stack.version(axis)


def to_json(stack: Stack, sources: Sequence[str], found: Any,
            answers: Sequence[PurposeAnswer], code: int) -> dict[str, Any]:
    def cell(c: Any) -> dict[str, Any]:
        return {"cell": c.record.cell.cell_id, "run_id": c.record.run_id, "status": c.status,
                "why": c.why, "failing": c.failing, "not_run": c.not_run,
                "speed": ({"check": c.speed[0], "tokens_per_s": c.speed[1],
                           "gpu": c.record.host.get("gpu")} if c.speed else None),
                "host": c.record.host.get("name")}

    return {
        "stack": {"source": stack.source, "format": stack.format, "complete": stack.complete,
                  "python": stack.python_exact or (str(stack.python) if stack.python else None),
                  "cuda": stack.cuda,
                  "axes": {a: _yours(stack, a) for a in found.axes}},
        "datasets": list(sources),
        "exact": [r.key for r in found.exact],
        "nearest": [{"cell": r.cell.cell_id, "run_id": r.run_id,
                     "differs": [{"axis": d.axis, "yours": d.yours, "cell": d.cells}
                                 for d in diffs]} for r, diffs in found.nearest],
        "not_covered": [{"axis": d.axis, "yours": d.yours, "judged": d.cells}
                        for d in found.uncovered],
        "purposes": [{
            "purpose": a.purpose.key, "title": a.purpose.title, "status": a.status, "why": a.why,
            "cells": [cell(c) for c in a.cells], "nearest": [cell(c) for c in a.nearest],
            "smallest_change": ({
                "cell": a.change.record.cell.cell_id, "run_id": a.change.record.run_id,
                "changes": [{"axis": d.axis, "yours": d.yours, "to": d.cells}
                            for d in a.change.differences],
                "constraints": a.change.constraints(a.purpose),
                "why_not": [{"cell": r.cell.cell_id, "changes": len(d), "why": w}
                            for r, d, w in a.change.why_not_nearer]}
                if a.change else None),
        } for a in answers],
        "exit_code": code,
    }
