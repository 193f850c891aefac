"""A CPU run of the smallest matrix with an unsloth cell (tests/data/matrices/cpu-unsloth.yaml),
through `python -m pinmatrix matrix --runner venv`: real uv, a real venv with unsloth 2026.10.9,
trl 1.15.0 and triton, and the real probe.

unsloth refuses a host without an accelerator, so none of its checks runs: the cell is never `works`
outright, every format says "unsloth not judged", and no pin picks it for an unsloth purpose. trl
1.15.0's SFT path launches a triton kernel, which raises "0 active drivers" without a GPU: that is
`skip` ("needs a GPU"), never `fail`. What a CPU host can judge (imports, the llamafied route and
HF+PEFT training) is still judged.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "data" / "matrices" / "cpu-unsloth.yaml"
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


def _python_312() -> str | None:
    """A Python 3.12 for the cell venv: $PINMATRIX_TEST_PY312, python3.12 on PATH, or pyenv's."""
    found = [os.environ.get("PINMATRIX_TEST_PY312"), shutil.which("python3.12")]
    pyenv = subprocess.run(["pyenv", "root"], capture_output=True, text=True) if shutil.which(
        "pyenv") else None
    if pyenv is not None and pyenv.returncode == 0:
        versions = Path(pyenv.stdout.strip()) / "versions"
        found += sorted(str(p) for p in versions.glob("3.12.*/bin/python"))
    for candidate in filter(None, found):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 12)":
            return candidate
    return None


PY312 = _python_312()
if PY312 is None:
    pytest.skip("no Python 3.12 on this host for the cell venv", allow_module_level=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cpu-unsloth")
    proc = subprocess.run(
        [sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(MATRIX), "--runner", "venv",
         "--cpu", "--no-flaky-rerun", "--venv-python", f"3.12={PY312}",
         "--reports", str(root / "reports"),
         "--venv-dir", str(root / "venvs")],
        capture_output=True, text=True, cwd=ROOT, timeout=3000,
        env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS)},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_dir = (root / "reports" / "latest").resolve()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["cells"]) == 1
    return run_dir, summary, summary["cells"][0]


def test_the_unsloth_cell_is_not_works_and_says_unsloth_not_judged(run) -> None:
    _, summary, cell = run
    assert cell["verdict"] != "works" and "unsloth" in cell["verdict"]
    unsloth = next(item for item in cell["not_judged"] if item["what"] == "unsloth")
    assert unsloth["why"] == "needs a GPU", unsloth
    assert cell["judged_on"]["host"] == "CPU"
    assert "remote-code via unsloth" in cell["judged_on"]["routes_not_on_this_host"]
    # nothing of unsloth ran to a verdict, and no unsloth check failed on account of the host
    for name, check in cell["checks"].items():
        if name.startswith("unsloth.") or name.endswith("unsloth"):
            assert check["status"] == "skip", (name, check)
    # the pivot never counts this unsloth value as working
    slot = summary["pivot"][0]["grid"][cell["pins"]["transformers"]][cell["pins"]["unsloth"]]
    assert "works" not in slot


def test_a_cpu_run_still_judges_what_it_can(run) -> None:
    _, _, cell = run
    checks = cell["checks"]
    assert checks["imports"]["status"] == "pass"
    assert checks["exaone3.5.llamafied"]["status"] == "pass"
    assert checks["lora-train.hf-peft-llamafied"]["status"] == "pass"


def test_triton_without_a_driver_is_skip_needs_a_gpu(run) -> None:
    run_dir, _, cell = run
    data = json.loads((run_dir / cell["result"]).read_text())
    for name in ("train.trl-sft", "train.trl-sft-llamafied"):
        sft = cell["checks"][name]
        assert sft["status"] == "skip", sft
        assert sft["reason"] == "needs a GPU (trl-sft-fused-lm-head-needs-triton)"
        record = next(c for c in data["checks"] if c["name"] == name)
        assert "0 active drivers" in record["error"]["message"], record["error"]
    # the HF Trainer on the same stack ran, so the skip is the SFT path's GPU need, not the stack
    assert cell["checks"]["train.hf-trainer-llamafied"]["status"] == "pass"


def test_every_format_says_unsloth_not_judged(run) -> None:
    run_dir, summary, cell = run
    assert "unsloth" in summary["verdict"] and "not judged" in summary["verdict"]
    md = (run_dir / "summary.md").read_text()
    assert f"| `{cell['id']}` | CPU | unsloth not judged | needs a GPU |" in md
    assert cell["verdict"] in md and cell["verdict"] in (run_dir / "summary.html").read_text()
    root = ET.parse(run_dir / "junit.xml").getroot()
    suite = next(s for s in root if s.get("name") == cell["id"])
    case = next(c for c in suite.iter("testcase") if c.get("name") == "not-judged.unsloth")
    assert case.find("skipped").get("message").startswith("unsloth not judged: needs a GPU")


def test_pins_never_pick_it_for_an_unsloth_purpose(run) -> None:
    run_dir, summary, cell = run
    pins = {p["purpose"]: p for p in summary["pins"]}
    for key in ("unsloth-exaone3.5-remote-code", "unsloth-exaone3.5-llamafied",
                "unsloth-fastest-lora"):
        assert pins[key]["cell"] is None, pins[key]
        assert pins[key]["why"].startswith("not judged in this run"), pins[key]
        assert not (run_dir / "pins" / f"{key}.constraints.txt").exists()
    llamafied = pins["exaone3.5-llamafied"]
    assert llamafied["cell"] == cell["id"]
    text = (run_dir / llamafied["file"]).read_text()
    assert "# not judged on this host: unsloth (needs a GPU" in text
