"""`report` and `--resume` on folders that are not what they claim: a folder of runs, an
empty folder, a garbage run.json, unreadable outcomes, a missing --previous, symlinks. Each either
exits 2 naming the folder and writes nothing, or reports and says what it could not count."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pinmatrix.errors import PreviousRunError, ResumeError
from pinmatrix.outcome import Outcome
from pinmatrix.report.diff import find_run_dir
from pinmatrix.report.pins import LOCK_NAME, collect_cells
from pinmatrix.run.state import resume_folder

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"
CELL = "py3.11-torch2.13.0-tf5.17.0"


def _pinmatrix(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "PINMATRIX_DOCKER": "/nonexistent/docker"})


def _run(folder: Path, cell: str = CELL) -> Path:
    Outcome(cell=cell, hash=None, pins={"python": "3.11"}, runner="venv", stage="resolve",
            status="unresolvable", reason="no install").write(folder)
    (folder / "run.json").write_text(json.dumps({"run_id": folder.name, "runner": "venv",
                                                 "cells": [cell]}))
    return folder


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_report_on_a_folder_of_runs_exits_2_and_names_a_run(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    _run(reports / "20261129T010000Z")
    _run(reports / "20261129T020000Z")
    before = _tree(reports)
    proc = _pinmatrix("report", "--run", str(reports))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "a folder of 2 runs" in proc.stderr and "20261129T020000Z" in proc.stderr
    assert _tree(reports) == before  # no "0 cells" summary written into it


def test_report_on_an_empty_folder_exits_2(tmp_path: Path) -> None:
    proc = _pinmatrix("report", "--run", str(tmp_path))
    assert proc.returncode == 2 and "not a run folder" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_on_a_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    proc = _pinmatrix("report", "--run", str(tmp_path / "f"))
    assert proc.returncode == 2 and "--run" in proc.stderr and "not a folder" in proc.stderr


def test_garbage_run_json_and_unreadable_outcomes_are_said(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    (run / "run.json").write_text("{garbage")
    (run / "outcomes" / "bad.json").write_bytes(b"\xff\xfe\x00 not json")
    proc = _pinmatrix("report", "--run", str(run))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "warning:" in proc.stderr and "run.json" in proc.stderr and "bad.json" in proc.stderr
    verdict = proc.stdout.splitlines()[0]
    assert verdict == "1 cell: 1 unresolvable"
    assert len([line for line in proc.stderr.splitlines() if line.startswith("warning:")]) == 2
    summary = json.loads((run / "summary.json").read_text())
    assert {Path(d["path"]).name for d in summary["damaged"]} == {"run.json", "bad.json"}


def test_previous_that_is_missing_exits_2(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    proc = _pinmatrix("report", "--run", str(run), "--previous", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "--previous" in proc.stderr, proc.stderr
    assert not (run / "summary.json").exists()


def test_resume_refuses_a_symlinked_run_json(tmp_path: Path) -> None:
    elsewhere = _run(tmp_path / "elsewhere")
    reports = tmp_path / "reports"
    run = reports / "20261129T010000Z"
    run.mkdir(parents=True)
    (run / "run.json").symlink_to(elsewhere / "run.json")
    proc = _pinmatrix("matrix", "--matrix", str(CI), "--runner", "venv", "--reports",
                      str(reports), "--resume", run.name)
    assert proc.returncode == 2 and "symlink" in proc.stderr, proc.stderr
    assert _tree(elsewhere) == ["outcomes", f"outcomes/{CELL}.json", "run.json"]


def test_resume_refuses_a_symlink_that_leaves_the_reports_folder(tmp_path: Path) -> None:
    """--resume RUN names a folder under --reports; one that is a symlink to a run elsewhere would
    make the resume write there. Refused at parse time, exit 2, nothing written."""
    elsewhere = _run(tmp_path / "elsewhere")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "20261129T010000Z").symlink_to(elsewhere, target_is_directory=True)
    before = _tree(elsewhere)
    proc = _pinmatrix("matrix", "--matrix", str(CI), "--runner", "venv", "--reports",
                      str(reports), "--resume", "20261129T010000Z")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "--resume '20261129T010000Z'" in line and str(elsewhere) in line, line
    assert _tree(elsewhere) == before and sorted(p.name for p in reports.iterdir()) == [
        "20261129T010000Z"]


def test_resume_takes_a_run_id_and_a_symlink_that_stays_inside(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    run = _run(reports / "20261129T010000Z-nightly")
    (reports / "latest").symlink_to(run.name)
    assert resume_folder(reports, run.name) == run
    assert resume_folder(reports, "latest").resolve() == run.resolve()
    (reports / "sub").mkdir()
    (reports / "deep").symlink_to(reports / "sub" / "..", target_is_directory=True)
    for bad in ("../x", "..", ".", str(run), "a/b", ".cache", "deep", "a\nb"):
        try:
            resume_folder(reports, bad)
        except ResumeError as exc:
            # one line naming the option and the value (a long one cut at 80 characters)
            assert str(exc).startswith(f"--resume {bad[:80]!r}"[:-1]), exc
            assert "\n" not in str(exc), exc
        else:
            raise AssertionError(f"--resume {bad!r} was accepted")


def test_previous_that_holds_no_run_exits_2(tmp_path: Path) -> None:
    """An explicit --previous is a run to diff against: a folder with no run in it is bad input,
    not a silent diff against nothing."""
    run = _run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    for command in (["report", "--run", str(run)], ["nightly", "--matrix", str(CI), "--runner",
                                                    "venv", "--reports",
                                                    str(tmp_path / "reports")]):
        proc = _pinmatrix(*command, "--previous", str(tmp_path / "empty"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert "--previous" in line and "holds no run folder" in line, line
    assert not (run / "summary.json").exists() and not (tmp_path / "reports").exists()


def test_previous_is_looked_for_three_levels_down_at_most(tmp_path: Path) -> None:
    """`--previous /` must answer in a moment, not walk the disk: a run is found in REPORTS/RUN,
    ARTIFACT/RUN or ARTIFACT/reports/RUN, never deeper, never through a symlink."""

    shallow = _run(tmp_path / "a" / "artifact" / "reports" / "20261129T010000Z")
    assert find_run_dir(tmp_path / "a") == shallow
    _run(tmp_path / "b" / "1" / "2" / "3" / "20261129T010000Z")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    for folder in ("b", "c"):
        try:
            find_run_dir(tmp_path / folder)
        except PreviousRunError as exc:
            assert "holds no run folder" in str(exc)
        else:
            raise AssertionError(f"found a run in {folder}")


# --- symlinks inside the run folder given to `report --run` -------------------------------------
# A run folder can come from another machine (a downloaded artifact). A link in it is never
# followed: what it points at is neither counted nor copied into the report; it is listed as
# damaged.

def _outside_outcome(tmp_path: Path, cell: str) -> Path:
    elsewhere = tmp_path / "elsewhere"
    Outcome(cell=cell, hash=None, pins={"python": "3.11"}, runner="venv", stage="resolve",
            status="infra", reason="SECRET-OUTSIDE").write(elsewhere)
    return elsewhere / "outcomes" / f"{cell}.json"


def test_report_follows_no_symlinked_outcome_run_json_or_cells_folder(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    phantom = "py3.11-torch2.13.0-tf4.57.6"
    (run / "outcomes" / f"{phantom}.json").symlink_to(_outside_outcome(tmp_path, phantom))
    manifest = tmp_path / "elsewhere" / "run.json"
    manifest.write_text(json.dumps({"run_id": "SECRET-RUN", "runner": "venv", "cells": []}))
    (run / "run.json").unlink()
    (run / "run.json").symlink_to(manifest)
    (run / "cells").symlink_to(tmp_path / "elsewhere" / "outcomes", target_is_directory=True)
    proc = _pinmatrix("report", "--run", str(run))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[0] == "1 cell: 1 unresolvable"  # the phantom is not counted
    summary = json.loads((run / "summary.json").read_text())
    damaged = {d["path"]: d["why"] for d in summary["damaged"]}
    assert set(damaged) == {"run.json", f"outcomes/{phantom}.json", "cells"}, damaged
    assert all("symbolic link" in why for why in damaged.values())
    for name in ("summary.json", "summary.md", "summary.html", "junit.xml"):
        text = (run / name).read_text()
        assert "SECRET-OUTSIDE" not in text and "SECRET-RUN" not in text, name


def test_pins_never_read_a_lock_through_a_symlink(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    secret = tmp_path / "elsewhere" / "secret.lock"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("secret-package==6.6.6\n")
    summary = {"cells": [{"id": CELL, "status": "works", "pins": {}}]}
    (run / "locks" / CELL).mkdir(parents=True)
    (run / "locks" / CELL / LOCK_NAME).symlink_to(secret)
    assert collect_cells(run, summary)[0].lock_lines == []
    (run / "locks" / CELL / LOCK_NAME).unlink()
    (run / "locks" / CELL).rmdir()
    (run / "locks" / CELL).symlink_to(secret.parent, target_is_directory=True)
    (secret.parent / LOCK_NAME).write_text("secret-package==6.6.6\n")
    assert collect_cells(run, summary)[0].lock_lines == []
    (run / "locks" / CELL).unlink()
    (run / "locks" / CELL).mkdir()
    (run / "locks" / CELL / LOCK_NAME).write_text("real-package==1.0\n")
    assert collect_cells(run, summary)[0].lock_lines == ["real-package==1.0"]  # the test can fail
