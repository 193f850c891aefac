"""Build one run folder from per-cell artifact folders (the nightly's merge job).

`actions/download-artifact` without `merge-multiple` lays artifacts out as one subfolder per
artifact name: `ARTIFACTS/cell-<id>/{run.json, outcomes/, cells/, logs/, locks/, partial/}`. Each
cell job ran a one-cell matrix, so each artifact holds one run folder (possibly one level deeper,
depending on the path that was uploaded). This module finds every run folder under the given
roots and copies its per-cell files into a fresh run folder; the report is then merged from that
folder like any other run.

A cell expected by the list job but absent from every artifact (its job died before uploading) gets
an infra outcome: the machine failed, not the stack. Two artifacts with the same cell are a
conflict: the first wins and the conflict is recorded in run.json.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinmatrix.fsio import read_json, real_dir, real_file, write_json_atomic
from pinmatrix.outcome import Outcome, load_outcome

# partial/: the checks an infra cell had finished before it was stopped (pinmatrix/run/one_cell.py)
PER_CELL_DIRS = ("outcomes", "cells", "logs", "locks", "partial")
# A cell id as the harness writes it (pinmatrix/cell.py): never a path, never dot-led.
_CELL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


# Artifacts come from every GPU job: a symlink in one could point anywhere on the merge
# host. Nothing here follows one: a path is used only when it and every folder between it and its
# artifact root are real (lstat), and only regular files are read or copied.
def _read_real_json(path: Path) -> Any:
    return read_json(path) if real_file(path) else None


@dataclass
class MergeReport:
    run_dir: Path
    # the run folders merged, relative to their root
    parts: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    # empty artifacts, conflicts, missing cells
    notes: list[str] = field(default_factory=list)


def find_cell_runs(roots: Iterable[Path]) -> list[Path]:
    """Every folder under `roots` that is a run folder (has outcomes/), sorted; symlinks not
    followed."""
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not real_dir(root):
            continue
        if real_dir(root / "outcomes"):
            found.append(root)
            continue
        for outcomes in sorted(root.rglob("outcomes")):
            between = [outcomes, *outcomes.relative_to(root).parents]
            if all(real_dir(root / p) for p in between):
                found.append(outcomes.parent)
    return sorted(set(found))


def merge_artifacts(roots: Sequence[Path], run_dir: Path, *,
                    expected_cells: Sequence[str] = ()) -> MergeReport:
    """Copy the per-cell files of every run folder under `roots` into `run_dir` (which must be
    new/empty)."""
    run_dir = Path(run_dir)
    report = MergeReport(run_dir)
    for root in roots:
        if not Path(root).is_dir():
            report.notes.append(f"{root}: no such folder")
    runs = find_cell_runs(roots)
    for root in roots:  # one subfolder per artifact name; say which held nothing usable
        if Path(root).is_dir() and not (Path(root) / "outcomes").is_dir():
            for art in sorted(d for d in Path(root).iterdir() if d.is_dir() and not d.is_symlink()):
                if not any(r == art or art in r.parents for r in runs):
                    report.notes.append(f"artifact {art.name}: holds no run folder (its job "
                                        "uploaded nothing usable)")
    manifests: list[dict[str, Any]] = []
    owner: dict[str, Path] = {}
    for part in runs:
        report.parts.append(str(part))
        manifest = _read_real_json(part / "run.json")
        if isinstance(manifest, dict):
            manifests.append(manifest)
        for outcome_path in sorted((part / "outcomes").glob("*.json")):
            cell_id = outcome_path.stem
            why = _unusable_outcome(outcome_path, cell_id)
            if why:  # never counted: a cell is what a valid outcome of its own name says
                report.notes.append(f"{outcome_path}: skipped: {why}")
                continue
            if cell_id in owner:
                report.notes.append(f"cell {cell_id}: in {owner[cell_id]} and {part}; kept the "
                                    "first")
                continue
            owner[cell_id] = part
            report.cells.append(cell_id)
            _copy_cell(part, run_dir, cell_id)
    for cell_id in expected_cells:
        if cell_id not in owner:
            report.notes.append(f"cell {cell_id}: no artifact (its job failed before uploading)")
            Outcome(cell=cell_id, hash=None, pins={}, runner="unknown",
                    stage="run", status="infra",
                    reason="no artifact from this cell's job: the job failed or was "
                                                          "cancelled before uploading its result",
                    signature="missing-artifact").write(run_dir)
            report.cells.append(cell_id)
    write_json_atomic(run_dir / "run.json", _manifest(run_dir, manifests, report))
    return report


def _unusable_outcome(path: Path, cell_id: str) -> str | None:
    if not real_file(path):
        return "a symlink or not a regular file"
    if not _CELL_ID.match(cell_id):
        return "not a cell id"
    loaded = load_outcome(path)
    if isinstance(loaded, str):
        return loaded
    if loaded.cell != cell_id:
        return f"the record is for cell {loaded.cell!r}, not its file name"
    return None


def _copy_cell(part: Path, run_dir: Path, cell_id: str) -> None:
    for sub in PER_CELL_DIRS:
        src = part / sub
        if not real_dir(src):
            continue
        for path in src.iterdir():
            name = path.name
            if not (name == cell_id or name.startswith(cell_id + ".")):
                continue
            dest = run_dir / sub / name
            if real_dir(path):
                _copy_tree_without_links(path, dest)
            elif real_file(path):
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest, follow_symlinks=False)


def _copy_tree_without_links(src: Path, dest: Path) -> None:
    """Regular files and folders only: symlinks, fifos and devices are left behind."""
    for folder, dirs, files in os.walk(src, followlinks=False):
        rel = Path(folder).relative_to(src)
        dirs[:] = [d for d in dirs if real_dir(Path(folder) / d)]
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if real_file(Path(folder) / name):
                shutil.copyfile(Path(folder) / name, dest / rel / name, follow_symlinks=False)


def _manifest(run_dir: Path, manifests: list[dict[str, Any]],
              report: MergeReport) -> dict[str, Any]:
    first = manifests[0] if manifests else {}
    runners = sorted({str(m.get("runner")) for m in manifests if m.get("runner")})
    return {
        "run_id": run_dir.name,
        "merged_from": report.parts,
        "merge_notes": report.notes,
        "matrix": first.get("matrix"),
        "matrix_sha256": first.get("matrix_sha256"),
        "axes": first.get("axes"),
        "snapshot": first.get("snapshot"),
        "cells": report.cells,
        "runner": ",".join(runners) or None,
        "device": first.get("device"),
        "started": min((str(m["started"]) for m in manifests if m.get("started")), default=None),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parts": [{"run_id": m.get("run_id"), "cells": m.get("cells"), "host": m.get("host"),
                   "probes_digest": m.get("probes_digest"),
                   "gpu_model": m.get("gpu_model")} for m in manifests],
    }


def outcome_ids(run_dir: Path) -> list[str]:
    out = []
    for path in sorted((Path(run_dir) / "outcomes").glob("*.json")):
        loaded = load_outcome(path)
        if not isinstance(loaded, str):
            out.append(loaded.cell)
    return out
