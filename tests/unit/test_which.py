"""`python -m pinmatrix which`: stack files, bad input (exit 2, file:line), matching (exact,
nearest, none, not judged), the smallest change on a synthetic dataset with a known answer, and
compat.json from the committed reports."""
from __future__ import annotations

import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pinmatrix.commands import which as cli
from pinmatrix.report import compat
from pinmatrix.report.write import write_report
from pinmatrix.which.stack import MAX_BYTES, StackError, read_here, read_stack

ROOT = Path(__file__).resolve().parents[2]
H200 = ROOT / "reports" / "h200" / "merged"
TIED = "transformers-tied-weights-keys-list"   # a catalogue signature (probes/signatures.json)

# the checks that prove each route trains (probes/registry.py TRAINING), as a cell records them
HF_REMOTE = ("exaone3.5.remote-code", "lora-train.hf-peft")
HF_LLAMA = ("exaone3.5.llamafied", "lora-train.hf-peft-llamafied")


def record(cell: str, tf: str, peft: str, *, remote: str = "pass", llama: str = "pass",
           unsloth: str = "none", status: str = "partial", tps: float | None = 1000.0,
           host: str = "NVIDIA H200") -> dict:
    checks = {"imports": {"status": "pass", "signature": None}}
    for name in HF_REMOTE:
        checks[name] = {"status": remote, "signature": TIED if remote == "fail" else None}
    for name in HF_LLAMA:
        checks[name] = {"status": llama, "signature": None}
    checks["train.trl-sft.exaone4"] = {"status": "skip", "signature": None,
                                       "reason": "needs a GPU"}
    speed = []
    if tps is not None:
        checks["throughput.sdpa"] = {"status": "pass", "signature": None}
        speed = [{"check": "throughput.sdpa", "tokens_per_s": tps, "gpu": host}]
    locked = {"torch": "2.11.0", "transformers": tf, "peft": peft, "tokenizers": "0.22.1"}
    if unsloth != "none":
        locked["unsloth"] = unsloth
    return {"cell": cell, "run_id": "synthetic", "date": "2026-12-01T00:00:00Z",
            "status": status, "verdict": status, "reason": None,
            "pins": {"python": "3.12", "base_image": "img", "torch": "2.11.0",
                     "transformers": tf, "peft": peft, "unsloth": unsloth},
            "locked": locked, "checks": checks, "remote_code_basis": "revision-faithful",
            "speed": speed,
            "host": {"name": host, "accelerator": True, "gpu": host, "cuda": "13.0"},
            "not_judged": []}


def dataset(tmp_path: Path, *records: dict) -> Path:
    doc = {"schema": compat.SCHEMA_ID, "run_id": "synthetic", "date": None,
           "axes": {}, "records": list(records)}
    compat.validate(doc, "synthetic")  # the fixture is what a run writes
    path = tmp_path / "compat.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


KNOWN = (  # the user below has transformers 5.17.0, peft 0.20.0
    record("A-tf5.17-peft0.21.2", "5.17.0", "0.21.2", remote="fail"),    # 1 change, fails
    record("B-tf4.57-peft0.21.2", "4.57.6", "0.21.2"),                   # 2 changes, works
    record("C-tf4.57-peft0.20.0", "4.57.6", "0.20.0"),                   # 1 change, works: pick
    record("D-tf5.5-peft0.20.0", "5.5.0", "0.20.0", remote="fail"),      # 1 change, fails
    record("E-tf5.17-peft0.20.0", "5.17.0", "0.20.0", remote="fail"),    # exact, fails
)


def which(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the smallest change: a synthetic dataset with a known answer ---------------------------------

def test_smallest_change_is_the_known_one_with_why_not_for_nearer_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data = dataset(tmp_path, *KNOWN[:4])
    stack = write(tmp_path, "req.txt", "transformers==5.17.0\npeft==0.20.0\ntorch==2.11.0\n")
    code, out, _ = which(capsys, stack, "--python", "3.12", "--dataset", data, "--purpose",
                         "exaone3.5-remote-code", "--json", "--constraints-dir", tmp_path / "c")
    answer = json.loads(out)
    assert code == 4  # no cell has exactly this stack
    change = answer["purposes"][0]["smallest_change"]
    assert change["cell"] == "C-tf4.57-peft0.20.0"
    assert change["changes"] == [{"axis": "transformers", "yours": "5.17.0", "to": "4.57.6"}]
    assert {w["cell"] for w in change["why_not"]} == {"A-tf5.17-peft0.21.2", "D-tf5.5-peft0.20.0"}
    assert all(TIED in w["why"] for w in change["why_not"])
    text = (tmp_path / "c" / "exaone3.5-remote-code.constraints.txt").read_text()
    assert [ln for ln in text.splitlines() if not ln.startswith("#")] == ["transformers==4.57.6"]


def test_smallest_change_ties_go_to_the_newest(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = dataset(tmp_path, record("old", "4.56.0", "0.20.0"), record("new", "4.57.6", "0.20.0"),
                   record("exact", "5.17.0", "0.20.0", remote="fail"))
    stack = write(tmp_path, "req.txt", "transformers==5.17.0\npeft==0.20.0\ntorch==2.11.0\n")
    code, out, _ = which(capsys, stack, "--python", "3.12", "--dataset", data, "--purpose",
                         "exaone3.5-remote-code", "--json")
    assert code == 1
    assert json.loads(out)["purposes"][0]["smallest_change"]["cell"] == "new"


# --- matching ------------------------------------------------------------------------------------

def test_exact_match_fails_with_signature_cause_and_fix(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = dataset(tmp_path, *KNOWN)
    stack = write(tmp_path, "req.txt", "transformers==5.17.0\npeft==0.20.0\ntorch==2.11.0\n")
    code, out, _ = which(capsys, stack, "--python", "3.12", "--dataset", data, "--purpose",
                         "exaone3.5-remote-code")
    assert code == 1
    assert "match: exact cell E-tf5.17-peft0.20.0" in out
    assert "exaone3.5-remote-code: FAILS" in out
    assert f"exaone3.5.remote-code, lora-train.hf-peft fail [{TIED}]" in out
    assert "Fix: For the remote-code route pin transformers < 5.0" in out  # the catalogue's fix


def test_exact_match_works_with_speed_and_where(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = dataset(tmp_path, *KNOWN)
    stack = write(tmp_path, "req.txt", "transformers==4.57.6\npeft==0.21.2\ntorch==2.11.0\n")
    code, out, _ = which(capsys, stack, "--python", "3.12.3", "--dataset", data, "--purpose",
                         "exaone3.5-remote-code")
    assert code == 0, out
    assert "match: exact cell B-tf4.57-peft0.21.2" in out
    assert "exaone3.5-remote-code: WORKS" in out
    assert "speed: throughput.sdpa 1000.0 tokens/s, measured on NVIDIA H200" in out
    # throughput.sdpa times the remote-code route: the llamafied route was not timed there
    code, out, _ = which(capsys, stack, "--python", "3.12", "--dataset", data, "--purpose",
                         "exaone3.5-llamafied")
    assert code == 0 and "speed: not measured for this purpose's routes in that cell" in out


def test_nearest_cells_name_the_axes_that_differ_and_not_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data = dataset(tmp_path, *KNOWN)
    stack = write(tmp_path, "req.txt", "transformers==5.17.0\npeft==0.19.0\ntorch==2.11.0\n")
    code, out, _ = which(capsys, stack, "--python", "3.12", "--dataset", data, "--json")
    answer = json.loads(out)
    assert code == 4
    assert answer["exact"] == []
    assert {n["cell"] for n in answer["nearest"]} == {"A-tf5.17-peft0.21.2",
                                                      "E-tf5.17-peft0.20.0"}
    assert all(n["differs"][0]["axis"] == "peft" for n in answer["nearest"])
    assert answer["not_covered"] == [{"axis": "peft", "yours": "0.19.0",
                                      "judged": "0.20.0, 0.21.2"}]
    assert {p["status"] for p in answer["purposes"]} == {"not judged"}


def test_no_match_at_all_is_not_judged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = dataset(tmp_path, *KNOWN)
    stack = write(tmp_path, "req.txt", "transformers==3.0.0\npeft==0.1.0\ntorch==1.0.0\n")
    code, out, _ = which(capsys, stack, "--python", "3.8", "--dataset", data, "--purpose",
                         "exaone3.5-llamafied")
    assert code == 4
    assert "no run covered python 3.8" in out and "torch 1.0.0" in out


def test_a_purpose_whose_checks_did_not_run_is_not_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data = dataset(tmp_path, *KNOWN)
    stack = write(tmp_path, "req.txt", "transformers==4.57.6\npeft==0.21.2\ntorch==2.11.0\n")
    code, out, _ = which(capsys, stack, "--python", "3.12", "--dataset", data, "--purpose",
                         "exaone4")
    assert code == 4
    assert "exaone4: NOT JUDGED" in out and "train.trl-sft.exaone4 skip" in out
    assert "smallest change: none (no cell was judged for this purpose)" in out


def test_unknown_purpose_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = dataset(tmp_path, *KNOWN)
    stack = write(tmp_path, "req.txt", "transformers==4.57.6\n")
    code, _, err = which(capsys, stack, "--dataset", data, "--purpose", "nope")
    assert code == 2 and "exaone3.5-remote-code" in err


# --- bad input: exit 2, the file and line, nothing written ---------------------------------------

def test_non_utf8_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "freeze.txt"
    path.write_bytes(b"six==1.16.0\ntransformers==5.17.0\npe\xe9ft==0.21.0\n")
    code, out, err = which(capsys, path, "--dataset", dataset(tmp_path, *KNOWN),
                           "--constraints-dir", tmp_path / "out")
    assert code == 2 and out == ""
    assert f"{path}:3: column 3: not UTF-8" in err
    assert not (tmp_path / "out").exists()


def test_a_100_mb_freeze_is_refused_without_reading_it_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "huge.txt"
    with open(path, "wb") as handle:
        line = b"six==1.16.0\n"
        handle.write(line * (100 * 1024 * 1024 // len(line)))
    assert path.stat().st_size > MAX_BYTES
    code, _, err = which(capsys, path, "--dataset", dataset(tmp_path, *KNOWN))
    assert code == 2 and f"{path}: larger than" in err


def test_contradictory_pins_name_both_lines(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "req.txt", "# mine\ntransformers==5.17.0\npeft\ntransformers==4.57.6\n")
    code, _, err = which(capsys, path, "--dataset", dataset(tmp_path, *KNOWN))
    assert code == 2
    assert (f"{path}:4: contradictory pins: transformers==4.57.6 here, transformers==5.17.0 on "
            "line 2") in err


def test_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"env\.toml:1: unknown format"):
        read_stack(write(tmp_path, "env.toml", "[tool.x]\na = 1\n"))
    with pytest.raises(StackError, match=r"notes\.txt:2: "):
        read_stack(write(tmp_path, "notes.txt", "transformers==5.17.0\nthis is not (a pin\n"))
    with pytest.raises(StackError, match=r"stack\.json:1: "):
        read_stack(write(tmp_path, "stack.json", '{"transformers": "5.17.0"}\n'))
    with pytest.raises(StackError, match=r"uv\.lock:2: not valid TOML"):
        read_stack(write(tmp_path, "uv.lock", "version = 1\n[[package]\n"))
    with pytest.raises(StackError, match=r"empty\.txt: no requirement"):
        read_stack(write(tmp_path, "empty.txt", "# nothing\n"))


def test_bad_dataset_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "compat.json", '{"schema": "pinmatrix-compat/1", "records": []}')
    stack = write(tmp_path, "req.txt", "transformers==4.57.6\n")
    code, _, err = which(capsys, stack, "--dataset", bad)
    assert code == 2 and "not a compat.json" in err


# --- formats read by hand-checked facts (the real tools' outputs: tests/integration) -----------

def test_requirements_with_ranges_markers_includes_and_utf16(tmp_path: Path) -> None:
    write(tmp_path, "base.txt", "torch==2.11.0+cu130\n")
    stack = read_stack(write(tmp_path, "req.txt",
                             "-r base.txt\ntransformers>=4.57,<5 ; python_version >= '3.9'\n"
                             "peft==0.21.2 \\\n  --hash=sha256:00\n"))
    assert not stack.complete and stack.format == "requirements"
    assert stack.want("torch").exact == "2.11.0+cu130" and stack.cuda == "cu130"
    assert stack.want("transformers").admits("4.57.6")
    assert not stack.want("transformers").admits("5.17.0")
    assert stack.want("torch").admits("2.11.0")  # the local label is the CUDA, compared apart
    utf16 = tmp_path / "ps.txt"
    utf16.write_bytes("transformers==5.17.0\r\n".encode("utf-16"))
    assert read_stack(utf16).want("transformers").exact == "5.17.0"


# --- compat.json ----------------------------------------------------------------------------------

def test_compat_of_the_committed_h200_run_validates_and_keeps_the_judgement() -> None:
    summary = json.loads((H200 / "summary.json").read_text(encoding="utf-8"))
    doc = compat.validate(compat.build(H200, summary), "h200")
    ids = {r["cell"] for r in doc["records"]}
    assert ids == {c["id"] for c in summary["cells"] if c["status"] != "infra"}
    one = next(r for r in doc["records"] if "tf5.17.0-unsloth-none" in r["cell"])
    assert one["checks"]["exaone3.5.remote-code"] == {"status": "fail", "signature": TIED,
                                                      "reason": None}
    assert one["host"]["gpu"] == "NVIDIA H200" and one["locked"]["transformers"] == "5.17.0"
    assert any(s["check"] == "throughput.sdpa-llamafied" for s in one["speed"])


def test_report_writes_compat_json(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(H200, run, symlinks=True)
    (run / "compat.json").unlink(missing_ok=True)
    write_report(run)
    doc = json.loads((run / "compat.json").read_text(encoding="utf-8"))
    compat.validate(doc, "written")
    assert len(doc["records"]) == 9


def test_h200_stack_against_the_committed_run(capsys: pytest.CaptureFixture[str]) -> None:
    stack = ROOT / "tests" / "data" / "which" / "h200-stack.txt"
    code, out, _ = which(capsys, stack, "--python", "3.12", "--report", H200)
    assert code == 4  # peft 0.21.0: no run covered it
    assert "no run covered peft 0.21.0 (judged: 0.21.2)" in out
    assert "smallest change: 1 package change" in out and "peft==0.21.2" in out
    # what the stack does not name is pinned to what the cell ran with, not counted as a change
    assert "xformers==0.0.35  # your stack does not name it; the cell ran with it" in out
    assert "unsloth-exaone3.5-llamafied" not in out  # the stack does not name unsloth


def test_here_reads_the_running_interpreter() -> None:
    stack = read_here()
    assert stack.complete and stack.format == "here"
    assert stack.python_exact == ".".join(map(str, sys.version_info[:3]))
    assert stack.want("pytest").exact == metadata.version("pytest")
    assert stack.want("jsonschema").exact == metadata.version("jsonschema")
