"""`merge` on hostile artifacts: it never follows a symlink, never reads outside the
artifact, never counts what it cannot validate. Real merges of real files; the artifacts are built
the way a GPU job uploads them (ARTIFACTS/cell-<id>/{run.json, outcomes/, locks/, logs/})."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pinmatrix.outcome import Outcome
from pinmatrix.report.merge import find_cell_runs, merge_artifacts

ROOT = Path(__file__).resolve().parents[2]
CELL = "py3.11-torch2.13.0-tf5.17.0"
SECRET = "root:x:0:0:secret-outside-the-artifact"


def _artifact(artifacts: Path, name: str, cell: str) -> Path:
    part = artifacts / name
    Outcome(cell=cell, hash=None, pins={"python": "3.11"}, runner="venv", stage="resolve",
            status="unresolvable", reason="no install").write(part)
    (part / "locks" / cell).mkdir(parents=True)
    (part / "locks" / cell / "requirements.txt").write_text("torch==2.13.0\n")
    (part / "run.json").write_text(json.dumps({"run_id": name, "runner": "venv", "cells": [cell]}))
    return part


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(SECRET + "\n")
    return secret


def _every_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*")
                   if p.is_file() and not p.is_symlink())


def test_symlink_inside_a_lock_folder_is_not_followed(tmp_path: Path) -> None:
    secret = _outside(tmp_path)
    part = _artifact(tmp_path / "artifacts", "cell-0", CELL)
    (part / "locks" / CELL / "x").symlink_to(secret)
    (part / "locks" / CELL / "etc").symlink_to(secret.parent, target_is_directory=True)
    (part / "locks" / f"{CELL}.lock").symlink_to(secret)
    (part / "logs").mkdir()
    (part / "logs" / f"{CELL}.run.log").symlink_to(secret)
    run = tmp_path / "run"
    report = merge_artifacts([tmp_path / "artifacts"], run)
    assert report.cells == [CELL]
    assert (run / "locks" / CELL / "requirements.txt").read_text() == "torch==2.13.0\n"
    assert not any(p.is_symlink() for p in run.rglob("*"))
    assert sorted(p.name for p in (run / "locks" / CELL).iterdir()) == ["requirements.txt"]
    assert SECRET not in _every_text(run)


def test_symlinked_outcome_is_no_phantom_cell(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    Outcome(cell="phantom", hash=None, pins={}, runner="venv", status="infra",
            reason="x").write(elsewhere)
    part = _artifact(tmp_path / "artifacts", "cell-0", CELL)
    (part / "outcomes" / "phantom.json").symlink_to(elsewhere / "outcomes" / "phantom.json")
    (part / "outcomes" / "etc.json").symlink_to(_outside(tmp_path))
    run = tmp_path / "run"
    report = merge_artifacts([tmp_path / "artifacts"], run)
    assert report.cells == [CELL]
    assert sorted(p.name for p in (run / "outcomes").iterdir()) == [f"{CELL}.json"]
    assert any("phantom.json: skipped: a symlink" in note for note in report.notes)
    assert json.loads((run / "run.json").read_text())["cells"] == [CELL]


def test_outcome_that_does_not_validate_is_not_counted(tmp_path: Path) -> None:
    part = _artifact(tmp_path / "artifacts", "cell-0", CELL)
    (part / "outcomes" / "garbage.json").write_text("{not json")
    (part / "outcomes" / "wrong-types.json").write_text(json.dumps({"cell": 7}))
    other = Outcome(cell="someone-else", hash=None, pins={}, runner="venv", status="infra",
                    reason="x")
    (part / "outcomes" / "renamed.json").write_text(json.dumps(other.to_json()))
    run = tmp_path / "run"
    report = merge_artifacts([tmp_path / "artifacts"], run)
    assert report.cells == [CELL]
    skipped = " ".join(report.notes)
    for name in ("garbage.json", "wrong-types.json", "renamed.json"):
        assert f"{name}: skipped" in skipped


def test_symlinked_run_folders_are_not_found(tmp_path: Path) -> None:
    real = _artifact(tmp_path / "elsewhere", "cell-9", "outside-cell")
    artifacts = tmp_path / "artifacts"
    _artifact(artifacts, "cell-0", CELL)
    (artifacts / "cell-1").symlink_to(real, target_is_directory=True)
    linked_outcomes = artifacts / "cell-2" / "nested"
    linked_outcomes.mkdir(parents=True)
    (linked_outcomes / "outcomes").symlink_to(real / "outcomes", target_is_directory=True)
    assert find_cell_runs([artifacts]) == [artifacts / "cell-0"]
    assert find_cell_runs([artifacts / "cell-1"]) == []


def test_symlinked_run_json_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "run.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"run_id": "stolen", "host": "merge-host-secret"}))
    part = _artifact(tmp_path / "artifacts", "cell-0", CELL)
    (part / "run.json").unlink()
    (part / "run.json").symlink_to(secret)
    run = tmp_path / "run"
    merge_artifacts([tmp_path / "artifacts"], run)
    assert "merge-host-secret" not in (run / "run.json").read_text()


def test_merge_command_on_hostile_artifacts_reports_only_what_validates(tmp_path: Path) -> None:
    secret = _outside(tmp_path)
    part = _artifact(tmp_path / "artifacts", "cell-0", CELL)
    (part / "locks" / CELL / "x").symlink_to(secret)
    (part / "outcomes" / "phantom.json").symlink_to(secret)
    reports = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "merge", str(tmp_path / "artifacts"),
                           "--reports", str(reports)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    run = (reports / "latest").resolve()
    summary = json.loads((run / "summary.json").read_text())
    assert [c["id"] for c in summary["cells"]] == [CELL]
    assert SECRET not in _every_text(run)


def test_an_infra_cells_partial_checks_are_carried(tmp_path: Path) -> None:
    """The checks a stopped cell had finished (partial/<id>.json) reach the merged run, so the
    outcome's `partial` link still points at a file there."""
    part = tmp_path / "artifacts" / "cell-0"
    Outcome(cell=CELL, hash="h" * 16, pins={"python": "3.11"}, runner="venv", stage="run",
            status="infra", signature="timeout", reason="timeout; 2 checks finished",
            partial=f"partial/{CELL}.json").write(part)
    (part / "partial").mkdir()
    (part / "partial" / f"{CELL}.json").write_text('{"checks": []}\n')
    (part / "partial" / "other-cell.json").write_text("{}\n")  # not this artifact's cell
    (part / "run.json").write_text(json.dumps({"run_id": "p", "runner": "venv", "cells": [CELL]}))
    run = tmp_path / "run"
    assert merge_artifacts([tmp_path / "artifacts"], run).cells == [CELL]
    outcome = json.loads((run / "outcomes" / f"{CELL}.json").read_text())
    assert (run / outcome["partial"]).read_text() == '{"checks": []}\n'
    assert sorted(p.name for p in (run / "partial").iterdir()) == [f"{CELL}.json"]
