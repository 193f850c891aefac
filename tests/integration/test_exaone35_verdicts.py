"""EXAONE 3.5 verdicts on real venvs: what running the revision-faithful fixtures gives on the
default
matrix's transformers lines (4.57.6, 5.5.0, 5.17.0), through `python -m pinmatrix matrix --runner
venv`.

Nothing here is asserted from the facts files: every status comes from a probe that loaded, ran and
trained (or failed to) in a venv holding that transformers. The expectations are the executed facts:
the hub's remote code works on 4.57.6 and fails from 5.0 on (the list _tied_weights_keys raises in
post_init), the llamafied route trains everywhere, and the static surface check predicts the failure
that the load then meets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "data" / "matrices" / "exaone35-verdicts.yaml"
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))
TIED = "transformers-tied-weights-keys-list"
LEGACY = "transformers-dynamiccache-from-legacy-cache-removed"
BUFFER = "transformers-non-persistent-buffer-not-initialised"
MASK = {
    "transformers-create-causal-mask-input-embeds-renamed",
    "transformers-create-causal-mask-cache-position-removed",
}

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, venvs_once):
    root = tmp_path_factory.mktemp("exaone35")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pinmatrix",
            "matrix",
            "--matrix",
            str(MATRIX),
            "--runner",
            "venv",
            "--cpu",
            "--no-flaky-rerun",
            "--reports",
            str(root / "reports"),
            "--venv-dir",
            str(venvs_once),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3000,
        env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS)},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_dir = (root / "reports" / "latest").resolve()
    summary = json.loads((run_dir / "summary.json").read_text())
    return root, run_dir, summary


def _cells(summary):
    return {c["pins"]["transformers"]: c for c in summary["cells"]}


def test_verdicts_per_transformers_line(run) -> None:
    _, _, summary = run
    cells = _cells(summary)
    assert set(cells) == {"4.57.6", "5.5.0", "5.17.0"}
    works = cells["4.57.6"]["checks"]
    for name in (
        "exaone3.5.surface",
        "exaone3.5.remote-code",
        "exaone3.5.surface.original",
        "exaone3.5.remote-code.original",
        "exaone3.5.llamafied",
        "lora-train.hf-peft",
        "lora-train.hf-peft-llamafied",
    ):
        assert works[name]["status"] == "pass", (name, works[name])
    assert cells["4.57.6"]["status"] == "works"
    for version in ("5.5.0", "5.17.0"):
        checks = cells[version]["checks"]
        for name in (
            "exaone3.5.remote-code",
            "exaone3.5.remote-code.original",
            "lora-train.hf-peft",
        ):
            assert (checks[name]["status"], checks[name]["signature"]) == ("fail", TIED), (
                version,
                name,
                checks[name],
            )
        for name in ("exaone3.5.llamafied", "lora-train.hf-peft-llamafied"):
            assert checks[name]["status"] == "pass", (version, name, checks[name])
        # one route remains: the stack is usable for the job, and says which route broke
        assert cells[version]["status"] == "partial"


def test_the_surface_check_predicts_what_the_load_meets(run) -> None:
    _, run_dir, summary = run
    for version, cell in _cells(summary).items():
        result = json.loads((run_dir / "cells" / f"{cell['id']}.json").read_text())
        checks = {c["name"]: c for c in result["checks"]}
        for suffix in ("", ".original"):
            surface, load = (
                checks[f"exaone3.5.surface{suffix}"],
                checks[f"exaone3.5.remote-code{suffix}"],
            )
            predicted = set(surface["evidence"]["signatures"])
            if load["status"] == "pass":
                assert surface["status"] == "pass" and predicted == set(), (
                    version,
                    suffix,
                    predicted,
                )
            else:
                assert load["error"]["signature"] in predicted, (
                    version,
                    suffix,
                    load["error"],
                    predicted,
                )
        if version != "4.57.6":
            assert {TIED, LEGACY, BUFFER} <= set(
                checks["exaone3.5.surface"]["evidence"]["signatures"]
            )
        # the mask keywords of revision current break from 5.9.0 (5.2-5.8 shim them)
        assert (set(checks["exaone3.5.surface"]["evidence"]["signatures"]) >= MASK) == (
            version == "5.17.0"
        )
        assert not MASK & set(checks["exaone3.5.surface.original"]["evidence"]["signatures"])


def test_reports_say_what_each_verdict_rests_on(run) -> None:
    _, run_dir, summary = run
    section = summary["exaone35"]
    assert section["revisions"] == ["original"]
    for cell in section["cells"]:
        assert cell["remote_code"]["basis"] == "fixture of hub revision current"
        assert cell["remote_code"]["revision"] == "current"
    md = (run_dir / "summary.md").read_text()
    assert "## EXAONE 3.5: through its remote code, and llamafied" in md
    assert "Verdicts rest on: fixture of hub revision current" in md
    assert f"FAILS `{TIED}`" in md and "the llamafied route trains" in md
    html = (run_dir / "summary.html").read_text()
    assert "fixture of hub revision current" in html and "remote code (original)" in html
    # the md puts the EXAONE answer before the per-check table
    assert md.index("## EXAONE 3.5") < md.index("## Cells")


_PR7_SCRIPT = r"""
import json, sys
from pathlib import Path
from probes.context import Context
from probes.framework import run_check
from probes.checks import exaone35
from probes.fixtures.checkpoints import write_exaone35
from probes.models import ModelHandle
work = Path(sys.argv[1])
folder = write_exaone35(work / "EXAONE-3.5-2.4B-Instruct", revision="original")
code = (folder / "modeling_exaone.py").read_text()
old = '_tied_weights_keys = ["lm_head.weight"]'
assert code.count(old) == 1
new = '_tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}'
(folder / "modeling_exaone.py").write_text(code.replace(old, new))
handle = ModelHandle("exaone3.5", folder, "fixture", "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", "main",
                     "remote-code", "original")
ctx = Context(spec={"models": [], "pins": {}}, device="cpu", work_dir=work)
check = lambda c: exaone35.check_remote_code(c, handle)
result = run_check("exaone3.5.remote-code", check, ctx, 300)
print("RESULT " + json.dumps(result))
"""


def test_patching_the_tied_keys_alone_loads_on_transformers_5_and_parity_catches_the_buffer(
    run, venvs_once, tmp_path: Path
) -> None:
    """LG-AI-EXAONE/EXAONE-3.5 PR #7 (a dict _tied_weights_keys) gets the model built on 5.17.0; its
    inv_freq then loads uninitialised. Logits are finite and every weight loaded: only the parity
    with
    the llamafied model shows the model computes something else."""
    pythons = [
        p
        for p in venvs_once.glob("*/bin/python")
        if subprocess.run(
            [str(p), "-c", "import transformers; print(transformers.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        == "5.17.0"
    ]
    assert pythons, list(venvs_once.iterdir())
    proc = subprocess.run(
        [str(pythons[0]), "-c", _PR7_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["status"] == "fail", result
    ev = result["evidence"]
    assert ev["nonfinite_logits"] == 0 and ev["max_weight_diff"] == 0.0
    assert ev["max_abs_diff_vs_llamafied"] > ev["parity_tolerance"]
