"""The result cache (pinmatrix/run/cache.py) through pinmatrix.run.one_cell.run_cell: a hit reuses,
and every input that can change a result (lock text, Dockerfile, probes digest, checks, settings,
GPU model) misses.

The runner is a counting stand-in that writes a schema-valid result: the point here is which cells
run; the real venv runner is exercised by tests/integration/test_resume.py, which reuses through the
cache too.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pinmatrix.cell import Cell, Lock
from pinmatrix.results import load_result
from pinmatrix.run import identity
from pinmatrix.run.cache import RerunPolicy, ResultCache
from pinmatrix.run.one_cell import CellRun, run_cell
from pinmatrix.run.options import RunOptions
from pinmatrix.runners.base import Prepared, RunOutcome

CELL = Cell(pins={"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.17.0"},
            checks=("imports",),
            settings={"device": "cpu", "lora_steps": 12})
LOCK = Lock(CELL.id, "3.11", "torch==2.13.0+cpu\n", "torch==2.13.0+cpu\ntransformers==5.17.0\n")


class CountingRunner:
    name = "docker"   # so the Dockerfile text is part of the hash

    def __init__(self) -> None:
        self.runs = 0

    def prepare(self, cell: Cell, lock: Lock) -> Prepared:
        return Prepared(self.name, cell.id, "ref")

    def run(self, prepared, spec_path: Path, out_dir: Path, gpu, timeout_s) -> RunOutcome:
        self.runs += 1
        spec = json.loads(Path(spec_path).read_text())
        result = {"schema": 1, "cell": {"id": spec["id"], "hash": spec["hash"],
                                        "pins": spec["pins"]},
                  "environment": {"python": "3.11", "device": "cpu", "packages": {}},
                  "checks": [{"name": "imports", "status": "pass", "duration_s": 0.1,
                              "evidence": {"run": self.runs}}],
                  "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z"}
        path = Path(out_dir) / "result.json"
        path.write_text(json.dumps(result))
        return RunOutcome(path)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM base\n")
    monkeypatch.setattr(identity, "DOCKERFILE", dockerfile)
    reports = tmp_path / "reports"
    runner = CountingRunner()
    opts = RunOptions(matrix_path=tmp_path / "m.yaml", reports_dir=reports, flaky_rerun=False)
    state = {"n": 0}

    def once(cell=CELL, lock=LOCK, gpu="cpu", digest="probes-1", force=False):
        state["n"] += 1
        run_dir = reports / f"run{state['n']:02d}"
        run_dir.mkdir(parents=True)
        return run_cell(cell, runner, CellRun(
            run_dir=run_dir, opts=opts, gpu=gpu, digest=digest,
            resolve_fn=lambda c, s, d: dataclasses.replace(lock, cell_id=c.id),
            cache=ResultCache(reports)), force=force)

    return runner, once, dockerfile


def test_hit_reuses_the_result_and_marks_it(env) -> None:
    runner, once, _ = env
    first = once()
    assert runner.runs == 1 and first.reused_from is None and first.stage == "done"
    second = once()
    assert runner.runs == 1, "an unchanged cell must not run again"
    assert second.reused_from == "run01" and second.hash == first.hash and second.stage == "done"
    assert second.result == f"cells/{CELL.id}.json"


def test_reused_file_is_valid_and_says_where_from(env, tmp_path: Path) -> None:
    runner, once, _ = env
    once()
    once()
    result = load_result(tmp_path / "reports" / "run02" / "cells" / f"{CELL.id}.json",
                         reclassify=False)
    assert result.data["cell"]["reused_from"] == "run01"
    assert result.checks[0]["evidence"] == {"run": 1}  # the first run's evidence, not a new run's
    # a reuse of a reuse still names the run that did the work
    once()
    again = load_result(tmp_path / "reports" / "run03" / "cells" / f"{CELL.id}.json",
                        reclassify=False)
    assert again.data["cell"]["reused_from"] == "run01" and runner.runs == 1


def test_index_lost_falls_back_to_scanning_runs(env, tmp_path: Path) -> None:
    runner, once, _ = env
    once()
    (tmp_path / "reports" / ".cache" / "index.json").unlink()
    assert once().reused_from == "run01" and runner.runs == 1


def test_damaged_cached_result_is_not_reused(env, tmp_path: Path) -> None:
    runner, once, _ = env
    once()
    (tmp_path / "reports" / "run01" / "cells" / f"{CELL.id}.json").write_text("{not json")
    assert once().reused_from is None and runner.runs == 2


def test_force_reruns(env) -> None:
    runner, once, _ = env
    once()
    assert once(force=True).reused_from is None and runner.runs == 2


@pytest.mark.parametrize("change", ["lock", "dockerfile", "probes", "checks", "settings", "gpu"])
def test_each_input_invalidates(env, change) -> None:
    runner, once, dockerfile = env
    base = once()
    assert runner.runs == 1
    kwargs: dict = {}
    if change == "lock":
        kwargs["lock"] = dataclasses.replace(LOCK,
                                             full_lock=LOCK.full_lock + "tokenizers==0.22.1\n")
    elif change == "dockerfile":
        dockerfile.write_text("FROM base\nRUN true\n")
    elif change == "probes":
        kwargs["digest"] = "probes-2"
    elif change == "checks":
        kwargs["cell"] = dataclasses.replace(CELL, checks=("imports", "generate"))
    elif change == "settings":
        kwargs["cell"] = dataclasses.replace(CELL, settings={**CELL.settings, "lora_steps": 13})
    elif change == "gpu":
        kwargs["gpu"] = "NVIDIA H100 80GB HBM3"
    changed = once(**kwargs)
    assert runner.runs == 2, f"a change of {change} must run the cell again"
    assert changed.reused_from is None and changed.hash != base.hash


def test_infra_outcomes_are_never_cached(env, tmp_path: Path) -> None:
    runner, once, _ = env

    def broken_run(*a, **k):
        runner.runs += 1
        return RunOutcome(None, infra_reason="daemon gone", signature="engine-gone")

    original = runner.run
    runner.run = broken_run
    assert once().status == "infra"
    runner.run = original
    assert once().reused_from is None and runner.runs == 2


def test_rerun_policy() -> None:
    cells = [dataclasses.replace(CELL, pins={**CELL.pins,
                                             "transformers": v}) for v in ("4.57.6", "5.17.0")]
    assert RerunPolicy.from_args(None).forced_ids(cells) == set()
    assert RerunPolicy.from_args([""]).forced_ids(cells) is None
    assert RerunPolicy.from_args(["transformers=4.57.6"]).forced_ids(cells) == {cells[0].id}
