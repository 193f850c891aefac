"""The probe's console line for a failed check carries the error's first line, not only its
signature.

A probe stopped before it writes its result (a run interrupted at its time limit on the H200, issue
19) leaves its log as the only record of why a check failed; a bare `fp-…` says nothing there.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from real_results import PROBE_PYTHON, WARNING_XFORMERS, _package, route_spec_for

from pinmatrix.run.options import REPO_ROOT


def test_a_failed_check_logs_its_signature_and_message(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _package(site, "xformers", "0.0.35", WARNING_XFORMERS)
    spec = {**route_spec_for("routes-xformers-ops"), "checks": ["imports", "kernels"]}
    (tmp_path / "cell.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(site)])}
    proc = subprocess.run(
        [str(PROBE_PYTHON), "-m", "probes", "--cell", str(tmp_path / "cell.json"), "--out",
         str(tmp_path / "result.json"), "--work", str(tmp_path / "w")],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the journal of finished checks goes once the result holds them (docs/CONTRACTS.md §2)
    assert not (tmp_path / "result.json.partial.json").exists()
    record = next(c for c in json.loads((tmp_path / "result.json").read_text())["checks"]
                  if c["name"] == "kernel.xformers")
    assert record["status"] == "fail"
    line = next(ln for ln in proc.stderr.splitlines()
                if ln.startswith("[probe] kernel.xformers: fail"))
    assert record["error"]["signature"] in line
    assert "memory_efficient_attention: the C++/CUDA extensions" in line
