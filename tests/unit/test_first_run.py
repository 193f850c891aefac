"""Issue 13, as a new user meets it: honest exit codes, an inconsistent prepared environment named
as such, one cause said once. Real runs of `python -m pinmatrix` that end before any probe."""
from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pinmatrix.errors import EXIT_BAD_INPUT, EXIT_HARNESS, EXIT_INFRA, EXIT_OK

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"


def pinmatrix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_the_exit_codes_are_distinct():
    assert len({EXIT_OK, EXIT_HARNESS, EXIT_BAD_INPUT, EXIT_INFRA}) == 4


@pytest.mark.skipif(md.version("transformers") != "4.57.6",
                    reason="needs the test venv (transformers 4.57.6, torch 2.13.0+cpu, "
                           "peft 0.21.2)")
def test_an_inconsistent_prepared_environment_is_infra_and_exits_3(tmp_path):
    site = tmp_path / "site" / "tokenizers-0.23.2.dist-info"
    site.mkdir(parents=True)
    (site / "METADATA").write_text("Metadata-Version: 2.1\nName: tokenizers\nVersion: 0.23.2\n")
    proc = pinmatrix("matrix", "--matrix", str(CI), "--runner", "venv", "--no-install", "--cpu",
                     "transformers=4.57.6", "--venv-python", sys.executable,
                     "--extra-site", str(site.parent), "--reports", str(tmp_path / "reports"),
                     "--venv-dir", str(tmp_path / "venvs"))
    assert proc.returncode == EXIT_INFRA, proc.stdout + proc.stderr
    assert "could not be judged (infra): exit 3" in proc.stderr
    summary = json.loads((tmp_path / "reports" / "latest" / "summary.json").read_text())
    (cell,) = summary["cells"]
    assert cell["status"] == "infra"
    (infra,) = summary["infra"]
    assert infra["signature"] == "environment-inconsistent"
    words = "transformers 4.57.6 requires tokenizers<=0.23.0,>=0.22.0; found 0.23.2"
    assert words in infra["reason"]
