"""`which --judge` on CPU: a one-cell matrix of exactly the stack's pins (tests/data/matrices/
ci.yaml's transformers 5.17 cell), run through the real `matrix` pipeline (venv runner), then
answered from the run's own compat.json. Under a minute with uv's cache."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pinmatrix.report import compat

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


def test_judge_runs_one_cell_of_exactly_the_pins_and_answers_from_it(tmp_path: Path) -> None:
    stack = tmp_path / "requirements.txt"
    stack.write_text("torch==2.13.0+cpu\ntransformers==5.17.0\npeft==0.21.2\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pinmatrix", "which", str(stack), "--complete", "--python", "3.11",
         "--judge", "--matrix", str(ROOT / "tests" / "data" / "matrices" / "ci.yaml"),
         "--judge-reports", str(tmp_path / "reports"), "--judge-arg=--runner=venv",
         "--judge-arg=--cpu", f"--judge-arg=--venv-dir={tmp_path / 'venvs'}", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
        env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS)})
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the remote-code route fails on 5.x
    answer = json.loads(proc.stdout)
    cell = "py3.11-torch2.13.0+cpu-tf5.17.0-unsloth-none-peft0.21.2-xf-none-fa-none-bnb-none"
    assert [key.split("/", 1)[1] for key in answer["exact"]] == [cell]
    status = {p["purpose"]: p for p in answer["purposes"]}
    assert status["exaone3.5-llamafied"]["status"] == "works"
    remote = status["exaone3.5-remote-code"]
    assert remote["status"] == "fails"
    assert {f["signature"] for f in remote["cells"][0]["failing"]} == {
        "transformers-tied-weights-keys-list"}
    # a CPU host times nothing: the fastest purpose is not judged there, as on the pins page
    assert status["fastest-lora"]["status"] == "not judged"
    run = next(p for p in (tmp_path / "reports").iterdir() if p.name.endswith("-which"))
    doc = compat.validate(json.loads((run / "compat.json").read_text()), "compat.json")
    assert [r["cell"] for r in doc["records"]] == [cell]
    assert doc["records"][0]["host"]["accelerator"] is False
