"""`python -m pinmatrix bundle` then `matrix --bundle`, end to end on CPU: a prepared host (this
test's interpreter, with torch 2.13.0+cpu and transformers 4.57.6) gets a bundle of site layers
computed against its own `pip list --format freeze`, for a cell pinning transformers 5.17.0; the
cell then runs from the bundle alone with no index (--no-install: nothing is resolved or
installed there) and judges transformers 5.17.0, not the host's release."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cpu_stack import has_stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)
if not any(WHEELS.glob("torch-2.13.0+cpu-*.whl")):
    pytest.skip(f"no torch 2.13.0+cpu wheel in {WHEELS}", allow_module_level=True)
if not has_stack(sys.executable):
    pytest.skip("this interpreter holds no CPU stack to stand for the prepared host",
                allow_module_level=True)

MATRIX = """\
axes:
  python: ["{python}"]
  base_image: ["python:{python}-slim"]
  torch: ["2.13.0+cpu"]
  transformers: ["5.17.0"]
  peft: ["0.21.2"]
  unsloth: [none]
checks: [imports]
settings:
  check_timeout_s: 300
"""


def pinmatrix(*args: str, cwd: Path = ROOT, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_a_bundle_runs_its_cell_offline_on_the_host_it_was_made_for(tmp_path: Path) -> None:
    python = "{}.{}".format(*sys.version_info[:2])
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.format(python=python))
    freeze = subprocess.run([sys.executable, "-m", "pip", "list", "--format", "freeze"],
                            capture_output=True, text=True, check=True).stdout
    host = tmp_path / "host.txt"
    host.write_text(freeze)
    out = tmp_path / "bundle"
    made = pinmatrix("bundle", str(out), "--matrix", str(matrix), "--host-packages", str(host),
                     "--find-links", str(WHEELS))
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    assert "bundle: [1/" in made.stdout   # progress while downloading
    manifest = json.loads((out / "manifest.json").read_text())
    packed = {p for layer in manifest["layers"] for p in layer["packages"]}
    assert "transformers==5.17.0" in packed
    assert not any(p.startswith("torch==") for p in packed)   # the host's torch is reused
    assert "torch==2.13.0+cpu" in manifest["reused_from_host"]
    ran = pinmatrix("matrix", "--bundle", str(out), "--matrix", str(matrix), "--runner", "venv",
                    "--system-site-packages", "--venv-python", sys.executable,
                    "--reports", str(tmp_path / "reports"), "--venv-dir", str(tmp_path / "venvs"),
                    "--no-live", "--offline")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    cells = list((tmp_path / "reports").glob("2*/cells/*.json"))   # not reports/latest again
    assert len(cells) == 1, ran.stdout[-2000:]
    result = json.loads(cells[0].read_text())
    assert result["environment"]["packages"]["transformers"]["installed"] == "5.17.0"
    assert {c["name"]: c["status"] for c in result["checks"]}["imports"] == "pass"
