"""Release bisect on a real break: the EXAONE 3.5 remote code (revision-faithful fixture) loads on
transformers 4.57.6 and not from 5.0.0. Real uv, real venvs, real probes, the real package index."""

from __future__ import annotations

import json
import math
import re
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

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


def bisect(root: Path, venvs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pinmatrix",
            "bisect",
            *args,
            "--matrix",
            str(MATRIX),
            "--runner",
            "venv",
            "--cpu",
            "--no-flaky-rerun",
            "--reports",
            str(root / "reports"),
            "--venv-dir",
            str(venvs),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=2400,
        env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS)},
    )


def test_first_bad_release_of_the_remote_code_break(tmp_path, venvs_once):
    proc = bisect(tmp_path, venvs_once, "transformers", "4.57.6..5.1.0", "--check",
                  "exaone3.5.remote-code")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (folder,) = (tmp_path / "reports").glob("*-bisect-transformers")
    doc = json.loads((folder / "bisect.json").read_text())
    assert (doc["last_good"], doc["first_bad"]) == ("4.57.6", "5.0.0")
    assert doc["releases_in_range"] == ["4.57.6", "5.0.0", "5.1.0"]
    n = len(doc["releases_in_range"])
    assert doc["judgements"] == doc["probes_run"] <= math.ceil(math.log2(n)) + 1
    bad = doc["steps"]["5.0.0"]["checks"]["exaone3.5.remote-code"]
    assert (bad["status"], bad["signature"]) == ("fail", "transformers-tied-weights-keys-list")
    assert doc["release_notes"].endswith("/v5.0.0")
    md = (folder / "bisect.md").read_text()
    assert "**First bad release: transformers 5.0.0** (last good: 4.57.6)" in md
    assert "first bad release: transformers 5.0.0" in proc.stdout

    # warm: every step's result is in the cache, so the same bisect runs no probe again
    again = bisect(tmp_path, venvs_once, "transformers", "4.57.6..5.1.0", "--check",
                  "exaone3.5.remote-code")
    assert again.returncode == 0, again.stdout[-3000:]
    newest = sorted(p for p in (tmp_path / "reports").iterdir()
                    if re.fullmatch(r".*-bisect-transformers(\.\d+)?", p.name))[-1]
    steps = json.loads((newest / "bisect.json").read_text())["steps"]
    assert all(step.get("reused_from") for step in steps.values()), steps
    assert json.loads((newest / "bisect.json").read_text())["probes_run"] == 0


def test_ends_not_as_claimed_are_bad_input(tmp_path, venvs_once):
    proc = bisect(tmp_path, venvs_once, "transformers", "5.0.0..5.1.0", "--check",
                  "exaone3.5.remote-code")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "5.0.0 is bad, not good" in proc.stderr
