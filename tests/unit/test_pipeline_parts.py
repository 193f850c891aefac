"""The pipeline's small parts: run folders, the latest link, identity inputs, outcome records."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from pinmatrix.cell import Cell
from pinmatrix.outcome import Outcome, load_outcome
from pinmatrix.probes_source import probes_digest
from pinmatrix.run.folder import new_run_dir, point_latest, redacted_argv
from pinmatrix.run.options import RunOptions, cell_timeout
from pinmatrix.run.pipeline import force_cpu
from pinmatrix.runners.venv import lock_drift


def test_run_ids_are_utc_time_and_unique(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path)
    second = new_run_dir(tmp_path)
    labelled = new_run_dir(tmp_path, "nightly")
    assert first != second and first.name[8] == "T" and first.name.endswith("Z")
    assert second.name.startswith(first.name[:16])
    assert labelled.name.endswith("Z-nightly") or "-nightly" in labelled.name


def test_latest_is_swapped_atomically(tmp_path: Path) -> None:
    a, b = new_run_dir(tmp_path), new_run_dir(tmp_path)
    point_latest(tmp_path, a)
    assert (tmp_path / "latest").resolve() == a.resolve()
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(os.readlink(tmp_path / "latest"))
            except FileNotFoundError:
                seen.append("MISSING")

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(200):
        point_latest(tmp_path, b)
        point_latest(tmp_path, a)
    stop.set()
    thread.join()
    assert "MISSING" not in seen and set(seen) <= {a.name, b.name}
    assert os.readlink(tmp_path / "latest") == a.name  # relative: the reports folder can move
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".latest")]


def test_probes_digest_changes_with_any_probe_file(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "a.py").write_text("x = 1\n")
    before = probes_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert probes_digest(tmp_path) == before  # bytecode is not source
    (tmp_path / "checks" / "a.py").write_text("x = 2\n")
    assert probes_digest(tmp_path) != before


def test_force_cpu_and_timeouts() -> None:
    cell = Cell(pins={"python": "3.11"}, settings={"device": "auto", "cell_timeout_s": 900})
    assert force_cpu(cell).settings["device"] == "cpu" and cell.settings["device"] == "auto"
    assert cell_timeout(cell, RunOptions(matrix_path=Path("m"))) == 900
    assert cell_timeout(cell, RunOptions(matrix_path=Path("m"), timeout_s=60)) == 60
    assert cell_timeout(Cell(pins={}), RunOptions(matrix_path=Path("m"))) == 3600


def test_outcome_round_trip_and_validation(tmp_path: Path) -> None:
    outcome = Outcome(cell="c1", hash="h", pins={"torch": "2.13.0+cpu"}, runner="venv",
                      stage="prepare",
                      status="infra", reason="uv failed", signature="venv-install-failed",
                      timings={"resolve_s": 1.0})
    path = outcome.write(tmp_path)
    assert path == tmp_path / "outcomes" / "c1.json"
    assert load_outcome(path) == outcome
    assert json.loads(path.read_text())["status"] == "infra"
    with pytest.raises(ValueError):
        Outcome(cell="c", hash=None, pins={}, runner="venv", stage="bake")
    with pytest.raises(ValueError):
        # the host never types that in
        Outcome(cell="c", hash=None, pins={}, runner="venv", status="works")
    (tmp_path / "junk.json").write_text("[]")
    assert isinstance(load_outcome(tmp_path / "junk.json"), str)


def test_lock_drift_names_the_packages() -> None:
    packages = {"torch": {"installed": "2.13.0+cpu", "imports": True},
                "transformers": {"installed": "4.57.6", "imports": True},
                "peft": {"installed": None, "imports": None},
                "unsloth": {"installed": "2026.1.1", "imports": True},
                "safetensors": {"installed": "0.8.0", "imports": True}}
    locked = {"torch": "2.13.0+cpu", "transformers": "5.17.0", "peft": "0.21.2",
              "safetensors": "0.8.0"}
    problems = lock_drift(locked, packages, {"unsloth": "none"})
    assert problems == ["peft missing (lock: 0.21.2)", "transformers 4.57.6 (lock: 5.17.0)",
                        "unsloth 2026.1.1 is installed but the cell says none"]
    assert lock_drift({"torch": "2.13.0+cpu"}, {"torch": {"installed": "2.13.0+cpu",
                                                          "imports": True}}, {}) == []


def test_run_manifest_argv_holds_no_credentials() -> None:
    argv = ["pinmatrix", "matrix", "--index-url", "https://bob:s3cret@pypi.corp/simple",
            "--extra-index-url=https://tok:abc@x.corp/simple", "--cpu"]
    redacted = redacted_argv(argv)
    assert "s3cret" not in " ".join(redacted) and "abc@" not in " ".join(redacted)
    assert redacted[3] == "https://***@pypi.corp/simple" and redacted[-1] == "--cpu"
