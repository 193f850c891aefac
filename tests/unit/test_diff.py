"""The diff between two real runs that differ by one pin, the nightly's exit code and history, and
the GitHub merge job's logic on a folder laid out as actions/download-artifact lays it out.

Run A: the cell on the good CPU stack. Run B: the same cell, its lock differing by one pin
(xformers 0.0.35, a real package built by tests/unit/real_results.py whose import raises the
catalogued "can't load C++/CUDA extensions" error). Both results come from the real probe.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from real_results import BASE_PINS, cache_root
from report_runs import CELL_ID, add_cell, cpu_throughput_checks, new_run, probe_result

from pinmatrix.commands.nightly import EXIT_GREEN, EXIT_NEW_BREAKAGES, finish
from pinmatrix.outcome import Outcome
from pinmatrix.report.diff import diff, find_run_dir, load_summary
from pinmatrix.report.history import DEFAULT_REL_THRESHOLD, NOISE_K, noise_threshold, read_history
from pinmatrix.run.options import REPO_ROOT

GOOD_PINS = {**BASE_PINS, "xformers": "none"}
BROKEN_PINS = {**BASE_PINS, "xformers": "0.0.35"}     # the one pin that differs
ONLY_BEFORE = "py3.11-torch2.13.0+cpu-tf4.57.6-peft0.21.2"
ONLY_NOW = "py3.11-torch2.13.0+cpu-tf5.17.0-peft0.22.0"
INFRA_NOW = "py3.11-torch2.13.0+cpu-tf5.17.0-trl1.0.0"


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cache_root(request, tmp_path_factory)


def _run_a(reports: Path, cache: Path) -> Path:
    run = new_run(reports, "20261126T031700Z-nightly")
    add_cell(run, CELL_ID, GOOD_PINS, probe_result(cache, CELL_ID, "good", GOOD_PINS))
    add_cell(run, ONLY_BEFORE, GOOD_PINS, probe_result(cache, ONLY_BEFORE, "good", GOOD_PINS))
    add_cell(run, INFRA_NOW, GOOD_PINS, probe_result(cache, INFRA_NOW, "good", GOOD_PINS))
    return run


def _run_b(reports: Path, cache: Path) -> Path:
    run = new_run(reports, "20261127T031700Z-nightly")
    add_cell(run, CELL_ID, BROKEN_PINS, probe_result(cache, CELL_ID, "xformers-broken",
                                                     BROKEN_PINS))
    add_cell(run, ONLY_NOW, GOOD_PINS, probe_result(cache, ONLY_NOW, "good", GOOD_PINS))
    Outcome(cell=INFRA_NOW, hash="h", pins=GOOD_PINS, runner="docker", stage="run", status="infra",
            reason="the runner lost its GPU: NVIDIA driver not loaded",
            signature="no-gpu").write(run)
    return run


@pytest.fixture
def runs(tmp_path: Path, cache) -> tuple[Path, Path, Path]:
    reports = tmp_path / "reports"
    return reports, _run_a(reports, cache), _run_b(reports, cache)


def test_one_pin_apart_gives_a_new_breakage_with_its_signature(runs) -> None:
    _, a, b = runs
    d = diff(load_summary(a), load_summary(b))
    breaks = {(x["cell"], x["check"]): x for x in d["new_breakages"]}
    assert (CELL_ID, "imports") in breaks
    assert breaks[(CELL_ID, "imports")]["signature"] == "xformers-extensions-not-loaded"
    assert breaks[(CELL_ID,
                   "imports")]["before"] == "pass" and breaks[(CELL_ID, "imports")]["now"] == "fail"
    # infra and new cells are not breakages
    assert all(x["cell"] == CELL_ID for x in d["new_breakages"])
    assert d["new_cells"] == [{"cell": ONLY_NOW, "status": "works", "verdict": "works"}]
    assert d["vanished_cells"] == [{"cell": ONLY_BEFORE, "status": "works", "verdict": "works"}]
    assert [(i["cell"], i["check"]) for i in d["infra"]] == [(INFRA_NOW, None)]
    assert {"cell": CELL_ID, "before": "works", "now": "broken"} in d["status_changes"]
    assert d["fixes"] == []


def test_the_other_way_round_is_a_fix(runs) -> None:
    _, a, b = runs
    d = diff(load_summary(b), load_summary(a))
    assert d["new_breakages"] == []
    fix = next(f for f in d["fixes"] if f["check"] == "imports")
    assert fix["cell"] == CELL_ID and fix["signature_before"] == "xformers-extensions-not-loaded"


def test_nightly_red_on_new_breakage_writes_diff_and_history(runs) -> None:
    reports, a, b = runs
    lines: list[str] = []
    first = finish(a, reports_dir=reports, echo=lines.append)
    # nothing earlier: nothing can break
    assert first.exit_code == EXIT_GREEN and first.previous is None
    second = finish(b, reports_dir=reports, echo=lines.append)
    # found as the newest earlier run
    assert second.exit_code == EXIT_NEW_BREAKAGES and second.previous == a
    assert any(ln.startswith(f"  NEW BREAKAGE {CELL_ID} imports: pass → fail "
                            "[xformers-extensions-not-loaded]")
               for ln in lines)
    assert any(ln == "infra (listed apart, never red): 1" for ln in lines)
    md = (b / "summary.md").read_text()
    assert "## Changes since 20261126T031700Z-nightly" in md and "### New breakages" in md
    assert (b / "diff.md").read_text().startswith("# Changes since 20261126T031700Z-nightly")
    assert json.loads((b / "diff.json").read_text())["new_breakages"]
    assert "new breakage: <code>" in (b / "summary.html").read_text()
    history, problems = read_history(reports / "history.jsonl")
    assert problems == [] and [h["run"] for h in history] == [a.name, b.name]
    assert history[1]["counts"] == {"broken": 1, "works": 1, "infra": 1}
    assert history[1]["cells"][CELL_ID]["status"] == "broken" and history[1]["new_breakages"] >= 1


def test_infra_only_never_turns_it_red(tmp_path: Path, cache) -> None:
    reports = tmp_path / "reports"
    a = new_run(reports, "20261126T031700Z")
    add_cell(a, CELL_ID, GOOD_PINS, probe_result(cache, CELL_ID, "good", GOOD_PINS))
    b = new_run(reports, "20261127T031700Z")
    Outcome(cell=CELL_ID, hash=None, pins=GOOD_PINS, runner="docker", stage="prepare",
            status="infra",
            reason="docker build: no space left on device", signature="disk-full").write(b)
    assert finish(b, reports_dir=reports, previous=a, echo=lambda _: None).exit_code == EXIT_GREEN
    d = json.loads((b / "diff.json").read_text())
    assert d["new_breakages"] == [] and d["infra"][0]["cell"] == CELL_ID


def test_damaged_history_line_is_reported_not_fatal(runs) -> None:
    reports, a, b = runs
    (reports / "history.jsonl").write_text('{"run": "x", "cells": {}}\n{broken\n')
    lines: list[str] = []
    finish(b, reports_dir=reports, previous=a, echo=lines.append)
    assert any("history.jsonl:2: not JSON" in ln for ln in lines)
    assert len(read_history(reports / "history.jsonl")[0]) == 2


def test_unreadable_previous_is_said_not_fatal(runs, tmp_path: Path) -> None:
    reports, _, b = runs
    empty = tmp_path / "previous"
    empty.mkdir()
    lines: list[str] = []
    assert finish(b, reports_dir=reports, previous=empty, echo=lines.append).exit_code == EXIT_GREEN
    assert any("holds no run folder" in ln for ln in lines)


# --- throughput noise ----------------------------------------------------------------------------

def test_noise_threshold_measured_from_repeated_real_runs() -> None:
    """Four real CPU measurements of the same cell: the threshold is k·stdev of them, and says
    so."""
    samples = [cpu_throughput_checks(("sdpa",))[0]["evidence"]["tokens_per_s"] for _ in range(4)]
    history = [{"run": f"r{i}", "cells": {"c": {"hash": "H", "throughput": {"sdpa": v}}}} for i,
               v in enumerate(samples)]
    threshold, basis = noise_threshold(history, "H", "sdpa")

    assert threshold == pytest.approx(
        NOISE_K * statistics.stdev(samples) / statistics.fmean(samples)
    )
    assert basis.startswith(f"measured: {NOISE_K:g}·stdev of 4 runs")
    other, basis2 = noise_threshold(history[:2], "H", "sdpa")  # too few repeats
    assert other == DEFAULT_REL_THRESHOLD and basis2.startswith("assumed, not measured: 10%")
    assert noise_threshold(history, "another-hash", "sdpa")[0] == DEFAULT_REL_THRESHOLD


def test_throughput_change_beyond_threshold_is_reported(tmp_path: Path, cache) -> None:
    reports = tmp_path / "reports"
    measured = cpu_throughput_checks(("sdpa",))
    a = new_run(reports, "20261126T031700Z")
    add_cell(a, CELL_ID, GOOD_PINS, probe_result(cache, CELL_ID, "good", GOOD_PINS), hash_="H",
             extra_checks=measured)
    slower = json.loads(json.dumps(measured))
    # halved
    slower[0]["evidence"]["tokens_per_s"] = round(measured[0]["evidence"]["tokens_per_s"] * 0.5, 1)
    b = new_run(reports, "20261127T031700Z")
    add_cell(b, CELL_ID, GOOD_PINS, probe_result(cache, CELL_ID, "good", GOOD_PINS), hash_="H",
             extra_checks=slower)
    d = diff(load_summary(a), load_summary(b))
    (change,) = d["throughput"]
    assert change["change"] == pytest.approx(-0.5, abs=0.01) and change["basis"].startswith(
        "assumed, not measured"
    )
    same = diff(load_summary(a), load_summary(a))
    assert same["throughput"] == [] and len(same["throughput_thresholds"]) == 1


# --- the GitHub merge job ------------------------------------------------------------------------

def _cell_artifact(artifacts: Path, name: str, run: Path, cell_id: str, *, nested: bool) -> None:
    """One cell job's upload: its one-cell run folder, as download-artifact unpacks it (one folder
    per artifact name); `nested` keeps the run id folder (an upload of reports/ instead of the run
    folder)."""
    dest = artifacts / name / (run.name if nested else "")
    for sub in ("outcomes", "cells"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        src = run / sub / f"{cell_id}.json"
        if src.exists():
            shutil.copyfile(src, dest / sub / src.name)
    (dest / "logs").mkdir(exist_ok=True)
    (dest / "logs" / f"{cell_id}.run.log").write_text("probe log\n")
    (dest / "run.json").write_text(json.dumps({"run_id": run.name, "runner": "docker",
                                               "cells": [cell_id],
                                               "matrix": "matrix.yaml",
                                               "started": "2026-11-27T03:17:00+00:00"}))


def _pinmatrix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True,
                          cwd=REPO_ROOT, timeout=300, env={**os.environ,
                                                           "PYTHONPATH": str(REPO_ROOT)})


def test_merge_job_on_a_download_artifact_layout(runs, tmp_path: Path) -> None:
    _, a, b = runs
    work = tmp_path / "gh"
    artifacts = work / "artifacts"
    _cell_artifact(artifacts, "cell-0", b, CELL_ID, nested=False)
    _cell_artifact(artifacts, "cell-1", b, ONLY_NOW, nested=True)
    (artifacts / "cell-2").mkdir(parents=True)  # a job that uploaded nothing usable
    (work / "cells.json").write_text(json.dumps({"cells": [CELL_ID, ONLY_NOW, INFRA_NOW],
                                                 "snapshot": {}}))
    # The previous nightly's report artifact, unpacked: reports/ as the merge job uploads it.
    previous = work / "previous"
    shutil.copytree(a, previous / a.name)
    (previous / "history.jsonl").write_text(json.dumps({"run": a.name, "cells": {}}) + "\n")
    reports = work / "reports"
    reports.mkdir()
    shutil.copyfile(previous / "history.jsonl", reports / "history.jsonl")

    proc = _pinmatrix("merge", str(artifacts), "--reports", str(reports), "--previous",
                      str(previous),
                      "--expected-cells", str(work / "cells.json"), "--label", "nightly")
    assert proc.returncode == EXIT_NEW_BREAKAGES, proc.stdout + proc.stderr
    assert "merged 3 cells from 2 run folders" in proc.stdout
    assert "artifact cell-2: holds no run folder" in proc.stdout
    run = (reports / "latest").resolve()
    summary = json.loads((run / "summary.json").read_text())
    rows = {c["id"]: c for c in summary["cells"]}
    assert rows[CELL_ID]["status"] == "broken" and rows[ONLY_NOW]["status"] == "works"
    assert (
        rows[INFRA_NOW]["status"] == "infra" and rows[INFRA_NOW]["signature"] == "missing-artifact"
    )
    assert (run / "logs" / f"{CELL_ID}.run.log").is_file()
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["runner"] == "docker" and len(manifest["merged_from"]) == 2
    d = json.loads((run / "diff.json").read_text())
    assert [(x["cell"], x["check"]) for x in d["new_breakages"]][0] == (CELL_ID, "imports")
    assert d["vanished_cells"] == [{"cell": ONLY_BEFORE, "status": "works", "verdict": "works"}]
    assert len(read_history(reports / "history.jsonl")[0]) == 2  # the previous line + this run
    for name in ("summary.md", "summary.html", "junit.xml", "diff.md"):
        assert (run / name).is_file()
    assert find_run_dir(previous) == previous / a.name


def test_merge_job_green_when_nothing_broke(runs, tmp_path: Path) -> None:
    _, a, _ = runs
    artifacts = tmp_path / "artifacts"
    _cell_artifact(artifacts, "cell-0", a, CELL_ID, nested=False)
    proc = _pinmatrix("merge", str(artifacts), "--reports", str(tmp_path / "reports"), "--previous",
                      str(a))
    assert proc.returncode == EXIT_GREEN, proc.stdout + proc.stderr
    assert "0 new breakages" in proc.stdout


def test_merge_usage_errors(tmp_path: Path) -> None:
    proc = _pinmatrix("merge", "--reports", str(tmp_path))
    assert proc.returncode == 2 and "ARTIFACT_DIR" in proc.stderr
    proc = _pinmatrix("merge", str(tmp_path / "nope"), "--reports", str(tmp_path))
    assert proc.returncode == 2 and "no such folder" in proc.stderr


def test_list_json_for_the_job_matrix() -> None:
    proc = _pinmatrix("list", "--json", "--matrix", "tests/data/matrices/ci.yaml")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["cells"]) == 2 and all(
        "tf4.57.6" in c or "tf5.17.0" in c for c in data["cells"]
    )
    assert isinstance(data["snapshot"], dict)
