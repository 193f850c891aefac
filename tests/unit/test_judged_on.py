"""A verdict claims only what its host ran: `not_judged`, the verdict text in every format, old
remote-code passes with no recorded basis, and pins that tell "no cell qualifies" from "not judged
in this run" (docs/CONTRACTS.md §3, §8).

The records are the shapes the probe writes on a CPU host (an unsloth cell: unsloth refuses to
import without a GPU, so every unsloth check skips "needs a GPU"; throughput needs a GPU).
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from pinmatrix.fsio import write_json_atomic
from pinmatrix.outcome import Outcome
from pinmatrix.report.diff import diff
from pinmatrix.report.diff import render_markdown as render_diff
from pinmatrix.report.pins import write_pins
from pinmatrix.report.summary import merge
from pinmatrix.report.write import write_report
from pinmatrix.status import (
    PREDATES_FIXTURES,
    judged_on,
    not_judged,
    verdict_text,
    with_recorded_basis,
)
from probes import registry

UNSLOTH_CELL = "py3.11-torch2.13.0-tf5.17.0-unsloth2026.10.9"
PLAIN_CELL = "py3.11-torch2.13.0-tf5.17.0-unsloth-none"
BASIS = {"basis": "fixture of hub revision current", "fixture_revision": "current"}
GPU = "needs a GPU"


def rec(name: str, status: str, reason: str | None = None, **evidence) -> dict:
    out = {"name": name, "status": status, "duration_s": 0.1, "evidence": evidence}
    if reason:
        out["reason"] = reason
    return out


def hf_peft_checks(basis: bool = True) -> list[dict]:
    ev = BASIS if basis else {}
    return [rec("imports", "pass"), rec("exaone3.5.remote-code", "pass", **ev),
            rec("exaone3.5.llamafied", "pass", **ev), rec("lora-train.hf-peft", "pass"),
            rec("lora-train.hf-peft-llamafied", "pass"),
            rec("throughput.sdpa", "skip", GPU), rec("throughput.unsloth", "skip", GPU)]


def unsloth_checks() -> list[dict]:
    return hf_peft_checks() + [
        rec("unsloth.load.exaone3.5", "skip", "needs a GPU (unsloth-no-accelerator)"),
        rec("unsloth.llamafied", "skip", GPU), rec("lora-train.unsloth", "skip", GPU)]


def pins(unsloth: str) -> dict[str, str]:
    return {"python": "3.11", "torch": "2.13.0", "transformers": "5.17.0", "peft": "0.21.2",
            "unsloth": unsloth, "xformers": "none", "bitsandbytes": "none"}


def by_name(records: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in records}


# --- the rules -----------------------------------------------------------------------------------

def test_every_check_declares_whether_it_needs_an_accelerator() -> None:
    gpu = {c.name for c in registry.CHECKS if c.needs_gpu}
    assert {"unsloth.load.exaone3.5", "lora-train.unsloth", "train.qlora", "kernel.flash-attn",
            "throughput.sdpa", "attention.flash_attention_4"} <= gpu
    # what a CPU run still judges: resolve, imports, remote-code loading, HF+PEFT training
    assert not gpu & {"imports", "exaone3.5.remote-code", "exaone3.5.llamafied",
                      "lora-train.hf-peft", "lora-train.hf-peft-llamafied", "train.trl-sft"}


def test_an_unsloth_value_none_of_whose_checks_ran_is_not_judged() -> None:
    missing = not_judged(by_name(unsloth_checks()), pins("2026.10.9"))
    assert [m["what"] for m in missing] == ["unsloth", "speed"]
    assert missing[0]["why"] == GPU
    assert "unsloth.load.exaone3.5" in missing[0]["checks"]


def test_one_unsloth_check_that_ran_judges_the_value() -> None:
    records = unsloth_checks()
    records[-1] = rec("lora-train.unsloth", "fail")
    assert "unsloth" not in {m["what"] for m in not_judged(by_name(records), pins("2026.10.9"))}


def test_a_value_not_installed_is_not_listed() -> None:
    assert [m["what"] for m in not_judged(by_name(hf_peft_checks()), pins("none"))] == ["speed"]


def test_an_installed_value_with_no_check_in_the_result_is_not_judged() -> None:
    missing = not_judged(by_name(hf_peft_checks()), {**pins("none"), "flash-attn-4": "4.0.0b36"})
    fa4 = next(m for m in missing if m["what"] == "flash-attn-4")
    assert fa4["checks"] == [] and fa4["why"] == "none of its checks ran"


def test_verdict_text_says_what_was_not_judged() -> None:
    missing = not_judged(by_name(unsloth_checks()), pins("2026.10.9"))
    assert verdict_text("works", missing, "CPU") == "works (CPU: unsloth, speed not judged)"
    assert verdict_text("works", [], "CPU") == "works"


def test_a_cpu_host_could_exercise_the_hf_peft_routes_only() -> None:
    cpu = judged_on({"device": "cpu"})
    assert cpu["host"] == "CPU" and cpu["accelerator"] is False
    assert "remote-code via hf-peft" in cpu["routes"]
    assert "remote-code via unsloth" in cpu["routes_not_on_this_host"]
    gpu = judged_on({"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"})
    assert gpu["host"] == "NVIDIA H100 80GB HBM3" and not gpu["routes_not_on_this_host"]


def test_a_remote_code_pass_with_no_recorded_basis_is_not_judged() -> None:
    out = by_name(with_recorded_basis(hf_peft_checks(basis=False)))
    for name in ("exaone3.5.remote-code", "lora-train.hf-peft"):
        assert out[name]["status"] == "skip" and out[name]["reason"] == PREDATES_FIXTURES
    assert out["exaone3.5.llamafied"]["status"] == "pass"   # no remote code in that route
    kept = by_name(with_recorded_basis(hf_peft_checks(basis=True)))
    assert kept["exaone3.5.remote-code"]["status"] == "pass"


def test_a_remote_code_fail_with_no_basis_stays_a_fail() -> None:
    records = hf_peft_checks(basis=False)
    records[1] = rec("exaone3.5.remote-code", "fail")
    records[1]["error"] = {"type": "AttributeError", "message": "x", "signature": "fp-1"}
    assert by_name(with_recorded_basis(records))["exaone3.5.remote-code"]["status"] == "fail"


# --- every format --------------------------------------------------------------------------------

def result(cell: str, unsloth: str, records: list[dict]) -> dict:
    return {"schema": 1, "cell": {"id": cell, "hash": f"h-{cell}", "pins": pins(unsloth)},
            "environment": {"python": "3.11.7", "device": "cpu", "torch": "2.13.0+cpu",
                            "gpu": None, "packages": {}},
            "checks": records, "started": "2026-12-07T10:00:00Z",
            "finished": "2026-12-07T10:05:00Z"}


def make_run(root: Path, name: str, cells: dict[str, tuple[str, list[dict]]]) -> Path:
    run = root / name
    (run / "cells").mkdir(parents=True)
    write_json_atomic(run / "run.json", {"run_id": name, "runner": "venv", "device": "cpu"})
    for cell, (unsloth, records) in cells.items():
        write_json_atomic(run / "cells" / f"{cell}.json", result(cell, unsloth, records))
        Outcome(cell=cell, hash=f"h-{cell}", pins=pins(unsloth), runner="venv", stage="done",
                result=f"cells/{cell}.json").write(run)
        lock = run / "locks" / cell / "requirements.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(f"torch==2.13.0\ntransformers==5.17.0\npeft==0.21.2\nunsloth=={unsloth}\n"
                        if unsloth != "none" else "torch==2.13.0\ntransformers==5.17.0\n"
                        "peft==0.21.2\n")
    return run


def test_every_format_says_unsloth_not_judged_and_pins_never_pick_it(tmp_path: Path) -> None:
    run = make_run(tmp_path, "20261207T100000Z", {
        UNSLOTH_CELL: ("2026.10.9", unsloth_checks()),
        PLAIN_CELL: ("none", hf_peft_checks())})
    write_report(run)
    summary = json.loads((run / "summary.json").read_text())
    cell = next(c for c in summary["cells"] if c["id"] == UNSLOTH_CELL)
    assert cell["status"] == "works"   # everything that ran passed
    assert cell["verdict"] == "works (CPU: unsloth, speed not judged)"   # never bare `works`
    assert [m["what"] for m in cell["not_judged"]] == ["unsloth", "speed"]
    assert "; not judged in this run (CPU): " in summary["verdict"]
    assert "unsloth in 1 cell" in summary["verdict"]
    # the pivot never counts the unsloth value as working
    slot = summary["pivot"][0]["grid"]["5.17.0"]["2026.10.9"]
    assert slot == {"works (CPU: unsloth, speed not judged)": 1}
    md = (run / "summary.md").read_text()
    assert "works (CPU: unsloth, speed not judged)" in md
    assert f"| `{UNSLOTH_CELL}` | CPU | unsloth not judged | needs a GPU |" in md
    assert "works (CPU: unsloth, speed not judged)" in (run / "summary.html").read_text()
    junit = ET.parse(run / "junit.xml").getroot()
    suite = next(s for s in junit if s.get("name") == UNSLOTH_CELL)
    case = next(c for c in suite.iter("testcase") if c.get("name") == "not-judged.unsloth")
    assert case.find("skipped").get("message").startswith("unsloth not judged: needs a GPU")
    # pins: the unsloth purposes are not judged in this run, and name the checks that did not run
    report = write_pins(run)
    picks = {p.purpose.key: p for p in report.picks}
    for key in ("unsloth-exaone3.5-remote-code", "unsloth-exaone3.5-llamafied"):
        assert picks[key].cell is None
        assert picks[key].why.startswith("not judged in this run: unsloth.")
    assert "no cell qualifies" not in picks["unsloth-exaone3.5-llamafied"].why
    assert "unsloth.llamafied skip" in picks["unsloth-exaone3.5-llamafied"].why
    remote = picks["exaone3.5-remote-code"]
    assert remote.cell is not None
    assert remote.why.endswith("trains EXAONE 3.5 through its remote code via HF+PEFT")
    text = (run / "pins" / remote.file_name).read_text()
    if remote.cell.cell_id == UNSLOTH_CELL:
        assert "# not judged on this host: unsloth (needs a GPU" in text
    assert "not judged in this run" in (run / "pins" / "README.md").read_text()


def test_no_cell_qualifies_only_when_judged_and_failed(tmp_path: Path) -> None:
    failed = unsloth_checks()
    failed[-1] = rec("lora-train.unsloth", "fail")
    failed[-1]["error"] = {"type": "RuntimeError", "message": "loss is nan", "signature": "fp-x"}
    failed[-3] = rec("unsloth.load.exaone3.5", "pass")
    run = make_run(tmp_path, "20261207T110000Z", {UNSLOTH_CELL: ("2026.10.9", failed)})
    write_report(run)
    picks = {p.purpose.key: p for p in write_pins(run).picks}
    assert picks["unsloth-exaone3.5-remote-code"].why == "no cell qualifies"


def test_nightly_diff_says_what_became_judged(tmp_path: Path) -> None:
    before = merge(make_run(tmp_path, "20261207T100000Z",
                            {UNSLOTH_CELL: ("2026.10.9", unsloth_checks())}))
    ran = hf_peft_checks() + [rec("unsloth.load.exaone3.5", "pass"),
                              rec("unsloth.llamafied", "pass"), rec("lora-train.unsloth", "pass")]
    now = merge(make_run(tmp_path, "20261207T120000Z", {UNSLOTH_CELL: ("2026.10.9", ran)}))
    d = diff(before, now)
    assert d["judged_changes"] == [{"cell": UNSLOTH_CELL,
                                    "before": "works (CPU: unsloth, speed not judged)",
                                    "now": "works (CPU: speed not judged)",
                                    "now_judged": ["unsloth"], "no_longer_judged": []}]
    assert "now judged: unsloth" in render_diff(d)


def test_old_remote_code_pass_is_not_judged_in_every_table(tmp_path: Path) -> None:
    run = make_run(tmp_path, "20261207T130000Z", {PLAIN_CELL: ("none", hf_peft_checks(False))})
    write_report(run)
    summary = json.loads((run / "summary.json").read_text())
    cell = summary["cells"][0]
    assert cell["checks"]["exaone3.5.remote-code"]["status"] == "skip"
    assert cell["checks"]["exaone3.5.remote-code"]["reason"] == PREDATES_FIXTURES
    answer = summary["exaone35"]["cells"][0]["remote_code"]
    assert answer["verdict"] == PREDATES_FIXTURES
    md = (run / "summary.md").read_text()
    html = (run / "summary.html").read_text()
    assert "WORKS" not in md.split("| llamafied | cell |")[1].split("\n")[2].split("|")[3]
    assert PREDATES_FIXTURES in md and PREDATES_FIXTURES in html
    picks = {p.purpose.key: p for p in write_pins(run).picks}
    assert picks["exaone3.5-remote-code"].cell is None
    assert picks["exaone3.5-remote-code"].why.startswith("not judged in this run")


def test_every_4bit_check_judges_bitsandbytes_4bit() -> None:
    """Each QLoRA recipe (train and throughput, with and without prepare_model_for_kbit_training)
    exercises bitsandbytes' 4-bit path: a new recipe check that forgot the facet would let a cell
    count 4-bit bitsandbytes as working on a host where none of them ran."""
    qlora = [c.name for c in registry.CHECKS if "qlora" in c.name]
    assert "throughput.qlora-no-prepare" in qlora
    for name in qlora:
        assert "bitsandbytes 4-bit" in registry.judges(name), name
        assert registry.needs_gpu(name), name
