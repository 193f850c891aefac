"""Merging a run folder into the summary: verdict line, table, pivot, failures by signature,
apart-lists.

The cell results come from the real probe (tests/unit/real_results.py); the run folder around them
is laid out as the pipeline lays it out (docs/CONTRACTS.md §8).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from real_results import BASE_PINS, cache_root, real_results, spec_for

from pinmatrix.fsio import write_json_atomic
from pinmatrix.outcome import Outcome
from pinmatrix.report.markdown import render_markdown
from pinmatrix.report.summary import merge
from pinmatrix.report.write import write_report


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return real_results(cache_root(request, tmp_path_factory))


def _with_result(run: Path, stack: str, source: Path, pins: dict | None = None) -> str:
    spec = spec_for(stack)
    shutil.copyfile(source, run / "cells" / f"{spec['id']}.json")
    Outcome(cell=spec["id"], hash=spec["hash"], pins=pins or spec["pins"], runner="venv",
            stage="done",
            result=f"cells/{spec['id']}.json").write(run)
    return spec["id"]


@pytest.fixture
def run_dir(tmp_path: Path, results) -> Path:
    run = tmp_path / "20261127T172100Z"
    (run / "cells").mkdir(parents=True)
    write_json_atomic(run / "run.json", {"run_id": run.name, "matrix": "matrix.yaml",
                                         "runner": "venv",
                                         "selection": [], "device": "cpu"})
    _with_result(run, "good", results["good"])
    _with_result(run, "xformers-broken", results["xformers-broken"])
    _with_result(run, "trl-broken", results["trl-broken"],
                 pins={**spec_for("trl-broken")["pins"], "transformers": "4.57.6"})
    Outcome(cell="py3.11-torch2.13.0+cpu-tf4.57.6-unsloth2026.1.1", hash=None,
            pins={**BASE_PINS, "transformers": "4.57.6", "unsloth": "2026.1.1"}, runner="venv",
            stage="resolve", status="unresolvable",
            reason="Because unsloth==2026.1.1 depends on transformers>=4.58 and you require "
                   "transformers==4.57.6,\n"
                   "we can conclude that your requirements are unsatisfiable.").write(run)
    Outcome(cell="py3.11-torch2.13.0+cpu-tf5.17.0-unsloth2026.1.1", hash="h-prep",
            pins={**BASE_PINS, "unsloth": "2026.1.1"}, runner="venv", stage="prepare",
            status="infra",
            reason="uv pip install failed (exit 2): Connection reset by peer",
            signature="venv-install-failed").write(run)
    # A result cut short on its way back: the cell has an outcome pointing at it, but no valid
    # result.
    damaged_id = "py3.11-torch2.13.0+cpu-tf5.17.0-cut"
    text = results["good"].read_text()
    (run / "cells" / f"{damaged_id}.json").write_text(text[: len(text) // 3])
    Outcome(cell=damaged_id, hash="h-cut", pins={**BASE_PINS, "peft": "0.18.0"}, runner="venv",
            stage="done",
            result=f"cells/{damaged_id}.json").write(run)
    return run


def test_verdict_line(run_dir) -> None:
    summary = merge(run_dir)
    assert (
        summary["verdict"] == "6 cells: 1 works, 2 broken (2 signatures), 1 unresolvable, 2 infra"
    )
    assert summary["counts"] == {"works": 1, "broken": 2, "unresolvable": 1, "infra": 2}


def test_one_row_per_cell_one_column_per_check(run_dir) -> None:
    summary = merge(run_dir)
    assert summary["checks"][:2] == ["imports", "kernel.xformers"]
    rows = {c["id"]: c for c in summary["cells"]}
    assert len(rows) == 6
    good = rows["py3.11-torch2.13.0+cpu-tf5.17.0-good"]
    assert good["status"] == "works" and good["checks"]["imports"]["status"] == "pass"
    assert good["environment"]["device"] == "cpu"
    broken = rows["py3.11-torch2.13.0+cpu-tf5.17.0-xformers-broken"]
    assert broken["status"] == "broken"
    assert broken["checks"]["imports"] == {"status": "fail",
                                           "signature": "xformers-extensions-not-loaded",
                                           "reason": broken["checks"]["imports"]["reason"],
                                           "group": "imports", "role": "core"}
    md = render_markdown(summary)
    assert "| `py3.11-torch2.13.0+cpu-tf5.17.0-good` | ✅ works | ✅ pass | ⏭ skip |" in md
    assert ("| `py3.11-torch2.13.0+cpu-tf5.17.0-xformers-broken` | ❌ broken | ❌ fail | ❌ fail |"
            in md)


def test_pivot_transformers_by_unsloth(run_dir) -> None:
    (table,) = merge(run_dir)["pivot"]
    assert (table["python"], table["torch"]) == ("3.11", "2.13.0+cpu")
    assert table["transformers"] == ["4.57.6", "5.17.0"]
    assert table["unsloth"] == ["none", "2026.1.1"]
    assert table["grid"]["5.17.0"]["none"] == {"works": 1, "broken": 1, "infra": 1}
    assert table["grid"]["4.57.6"]["none"] == {"broken": 1}
    assert table["grid"]["4.57.6"]["2026.1.1"] == {"unresolvable": 1}
    assert table["grid"]["5.17.0"]["2026.1.1"] == {"infra": 1}
    md = render_markdown(merge(run_dir))
    assert "| `5.17.0` | ✅ works ❌ broken ⚠ infra | ⚠ infra |" in md
    assert "| `4.57.6` | ❌ broken | ⛔ unresolvable |" in md


def test_failures_grouped_by_signature_with_catalogue_text(run_dir) -> None:
    failures = {f["signature"]: f for f in merge(run_dir)["failures"]}
    known = failures["xformers-extensions-not-loaded"]
    assert known["known"] and known["count"] == 2  # imports + kernel.xformers of the same cell
    assert known["fix"] and known["link"].startswith("https://")
    assert {c["check"] for c in known["checks"]} == {"imports", "kernel.xformers"}
    (unknown,) = [f for sig, f in failures.items() if sig.startswith("fp-")]
    assert not unknown["known"] and unknown["cause"] is None
    assert unknown["checks"][0]["cell"].endswith("trl-broken")
    md = render_markdown(merge(run_dir))
    assert "### `xformers-extensions-not-loaded` — 2 checks" in md
    assert "(unknown: not in the catalogue yet)" in md


def test_unresolvable_infra_and_damaged_are_listed_apart(run_dir) -> None:
    summary = merge(run_dir)
    (unres,) = summary["unresolvable"]
    assert "unsatisfiable" in unres["explanation"]
    infra_cells = {i["cell"] for i in summary["infra"] if i["check"] is None}
    assert infra_cells == {"py3.11-torch2.13.0+cpu-tf5.17.0-unsloth2026.1.1",
                           "py3.11-torch2.13.0+cpu-tf5.17.0-cut"}
    (damaged,) = summary["damaged"]
    assert damaged["path"] == "cells/py3.11-torch2.13.0+cpu-tf5.17.0-cut.json"
    assert damaged["why"].startswith("not JSON")
    md = render_markdown(summary)
    for heading in ("## Unresolvable", "## Infra (the machine failed, not the stack)",
                    "## Damaged files (not merged)"):
        assert heading in md
    assert "Connection reset by peer" in md


def test_result_for_another_hash_is_not_merged(run_dir, results) -> None:
    spec = spec_for("good")
    Outcome(cell=spec["id"], hash="a-newer-hash", pins=spec["pins"], runner="venv", stage="done",
            result=f"cells/{spec['id']}.json").write(run_dir)
    summary = merge(run_dir)
    row = next(c for c in summary["cells"] if c["id"] == spec["id"])
    assert row["status"] == "infra"
    assert any("content hash" in d["why"] for d in summary["damaged"])


def test_speed_table_from_throughput_evidence(run_dir, results) -> None:
    data = json.loads(results["good"].read_text())
    data["checks"] += [
        {"name": "throughput.sdpa", "status": "pass", "duration_s": 1.0,
         "evidence": {"tokens_per_s": 16500.0, "peak_mem_gib": 54.2, "batch": 4, "seq": 2048,
                      "mfu": 0.41, "tokens_per_s_min": 16012.0, "tokens_per_s_max": 16740.4,
                      "step_times_s": [0.5] * 6, "first_step_s": 2.5,
                      "gpu": "NVIDIA H100 80GB HBM3"}},
        {"name": "throughput.eager", "status": "pass", "duration_s": 1.0,
         "evidence": {"tokens_per_s": 8250.0, "peak_mem_bytes": 60 * 2**30}},
        {"name": "throughput.unsloth", "status": "skip", "duration_s": 0.0,
         "reason": "unsloth not in this cell"},
    ]
    write_json_atomic(run_dir / "cells" / f"{spec_for('good')['id']}.json", data)
    speed = {s["stack"]: s for s in merge(run_dir)["speed"]}
    assert set(speed) == {"sdpa", "eager"}
    assert speed["eager"]["speedup_vs_sdpa"] == 0.5 and speed["eager"]["peak_mem_gib"] == 60.0
    md = render_markdown(merge(run_dir))
    assert ("| `py3.11-torch2.13.0+cpu-tf5.17.0-good` | sdpa | 16500 | 1.00× | 54.2 | 4×2048 | "
            "41.0% | 16012–16740 (6) | 2.50 | "
            "NVIDIA H100 80GB HBM3 |") in md
    assert "| eager | 8250 | 0.50× | 60.0 | — | — | — | — | — |" in md   # no spread recorded


def test_no_speed_section_without_throughput(run_dir) -> None:
    summary = merge(run_dir)
    assert summary["speed"] == [] and "## Speed" not in render_markdown(summary)


def test_write_report_writes_both_files(run_dir) -> None:
    json_path, md_path = write_report(run_dir)
    assert json.loads(json_path.read_text())["verdict"].startswith("6 cells")
    assert md_path.read_text().startswith("# pinmatrix run 20261127T172100Z")


def test_empty_run_folder(tmp_path: Path) -> None:
    summary = merge(tmp_path)
    assert summary["verdict"] == "0 cells: nothing ran"
    assert render_markdown(summary)


def test_probe_time_splits_the_compat_stage_from_throughput(tmp_path: Path, results) -> None:
    run = tmp_path / "timed"
    (run / "cells").mkdir(parents=True)
    spec = spec_for("good")
    shutil.copyfile(results["good"], run / "cells" / f"{spec['id']}.json")
    Outcome(cell=spec["id"], hash=spec["hash"], pins=spec["pins"], runner="venv", stage="done",
            result=f"cells/{spec['id']}.json", timings={"run_s": 61.25}).write(run)
    # no run_s: not listed
    untimed = _with_result(run, "xformers-broken", results["xformers-broken"])
    checks = json.loads(results["good"].read_text())["checks"]
    throughput = sum(c["duration_s"] for c in checks if c["name"].startswith("throughput."))
    slowest = max((c for c in checks if not c["name"].startswith("throughput.")),
                  key=lambda c: c["duration_s"])

    summary = merge(run)
    (timing,) = summary["timing"]
    assert timing["cell"] == spec["id"] and timing["cell"] != untimed
    assert timing["probe_s"] == 61.2 or timing["probe_s"] == 61.3
    assert timing["compat_s"] == round(61.25 - throughput, 1)
    assert timing["slowest_compat_checks"][0]["check"] == slowest["name"]
    assert timing["compile_cache"] == json.loads(results["good"].read_text())["environment"].get(
        "compile_cache"
    )
    md = render_markdown(summary)
    assert "## Probe time" in md and f"| `{spec['id']}` |" in md.split("## Probe time")[1]
