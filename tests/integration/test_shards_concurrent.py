"""Two shards writing one run folder at the same time never clobber each other.

Two real `python -m pinmatrix matrix --shard i/2 --run-dir SHARED` processes run concurrently on
disjoint cell selections (the stand-in probe of fault_cells.py sleeps a little, so their writes
overlap), then `python -m pinmatrix report --run SHARED` merges. Every cell must have its outcome
and an intact result, every shared file (run.json, summary.json) must be whole JSON, and no temp
file may be left behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pinmatrix.results import CellResult, load_result

sys.path.insert(0, str(Path(__file__).parent))
import fault_cells as fc  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PINS = [fc.OK, fc.OK2, fc.OK3, fc.OK4, "4.1.0", "4.1.1"]


def test_two_shards_share_one_run_folder(tmp_path: Path) -> None:
    probes_root = fc.write_stand_in_probes(tmp_path / "stand-in")
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", PINS)
    shared = tmp_path / "reports" / "nightly"
    settings = json.dumps({"venv_root": str(tmp_path / "venvs")})
    env = {**os.environ, "PINMATRIX_FAKE_PROBE_SLEEP": "1"}
    shards = [subprocess.Popen([sys.executable, fc.__file__, str(probes_root), settings, "--",
                                "matrix",
                                "--matrix", str(matrix), "--runner", "venv", "--cpu", "--reports",
                                str(tmp_path / "reports"), "--run-dir", str(shared), "--shard",
                                f"{i}/2"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
              for i in (1, 2)]
    outputs = [p.communicate(timeout=600) for p in shards]
    for proc, (out, err) in zip(shards, outputs, strict=True):
        assert proc.returncode == 0, out + err

    outcomes = {json.loads(p.read_text())["pins"]["transformers"]: json.loads(p.read_text())
                for p in (shared / "outcomes").glob("*.json")}
    assert sorted(outcomes) == sorted(PINS)
    for pin, outcome in outcomes.items():
        assert outcome["stage"] == "done", outcome
        result = load_result(shared / outcome["result"])
        assert isinstance(result, CellResult) and result.data["cell"]["pins"]["transformers"] == pin
    assert json.loads((shared / "run.json").read_text())["run_id"] == "nightly"
    # whichever shard wrote last: whole, not interleaved
    json.loads((shared / "summary.json").read_text())
    leftovers = [p.name for p in shared.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []

    merged = subprocess.run([sys.executable, "-m", "pinmatrix", "report", "--run", str(shared)],
                            cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    summary = json.loads((shared / "summary.json").read_text())
    assert len(summary["cells"]) == len(PINS) and summary["damaged"] == []
    assert {c["status"] for c in summary["cells"]} == {"works"}
