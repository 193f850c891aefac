"""End to end: `python -m pinmatrix matrix --matrix tests/data/matrices/ci.yaml --runner venv
--cpu`.

Real resolver (uv against PyPI + /opt/wheels), real venvs, the real probe, the real report.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from console import raw_python_values, run_timed

from pinmatrix.report.pins import lock_entries
from pinmatrix.results import CellResult, load_result
from pinmatrix.status import cell_status

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "tests" / "data" / "matrices" / "ci.yaml"
WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))
GPU_ONLY_GROUPS = ("throughput.",)

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)


def pinmatrix(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pinmatrix", *args], capture_output=True,
                          text=True, cwd=ROOT,
                          env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS), **(env or {})},
                          timeout=1800)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    """The run, into a pipe as under nox or CI (stdout and stderr as one stream), each line timed
    as it arrives (tests/console.py). Its own compile cache: the bytecode step runs in this run
    (the host's cache outlives runs, and another test may already have compiled these stacks)."""
    root = tmp_path_factory.mktemp("e2e")
    timed = run_timed([sys.executable, "-m", "pinmatrix", "matrix", "--matrix", str(CI),
                       "--runner", "venv", "--cpu", "--pins-for", "route=any,backend=hf-peft",
                       "--reports", str(root / "reports"), "--venv-dir", str(root / "venvs")],
                      cwd=ROOT, env={**os.environ, "PINMATRIX_FIND_LINKS": str(WHEELS),
                                     "PINMATRIX_COMPILE_CACHE_DIR": str(root / "compile")})
    proc = subprocess.CompletedProcess([], timed.returncode, timed.text, "")
    return root, proc, timed


def test_no_stage_is_silent_and_no_raw_python_value_is_printed(first_run) -> None:
    """Resolve, venv builds (downloads, installs) and probes: a line at least every 10 s, each
    stage said with its time, and nothing printed as a Python value (a dict, a list, a repr)."""
    root, _, timed = first_run
    gap, after = timed.longest_gap()
    assert gap < 10, f"{gap:.1f} s without a line, until: {after}\n{timed.text}"
    assert raw_python_values(timed.text) == [], timed.text
    lines = timed.text.splitlines()
    assert any(ln.startswith("resolve: 2 resolved, in ") and ln.endswith(" workers)")
               for ln in lines), timed.text
    for cell in json.loads((root / "reports" / "latest" / "run.json").read_text())["cells"]:
        assert any(ln.startswith("resolve [") and f"] {cell}: resolved, " in ln
                   for ln in lines), timed.text
        assert any(ln.startswith(f"{cell}: prepared in ") and "torch layer" in ln
                   for ln in lines), timed.text
        assert any(ln.startswith(f"{cell}: probe ran in ") for ln in lines), timed.text


def test_exit_code_and_verdict(first_run) -> None:
    root, proc, _ = first_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = [ln for ln in proc.stdout.splitlines() if ln.startswith("2 cells: ")]
    assert verdict, proc.stdout
    assert "runner: " not in proc.stdout  # --runner venv was asked for: nothing to announce


def test_run_folder_layout(first_run) -> None:
    root, _, _ = first_run
    latest = root / "reports" / "latest"
    assert latest.is_symlink() and latest.resolve().parent == (root / "reports").resolve()
    run = latest.resolve()
    manifest = json.loads((run / "run.json").read_text())
    assert (
        manifest["runner"] == "venv" and manifest["device"] == "cpu" and len(manifest["cells"]) == 2
    )
    assert len(manifest["matrix_sha256"]) == 64 and manifest["finished"]
    for cell in manifest["cells"]:
        outcome = json.loads((run / "outcomes" / f"{cell}.json").read_text())
        assert outcome["stage"] == "done" and outcome["status"] is None, outcome
        assert outcome["result"] == f"cells/{cell}.json" and len(outcome["hash"]) == 64
        # the stage times, and the venv's own steps (pinmatrix/runners/venv.py) for `nox -s bench`
        assert set(outcome["timings"]) == {"resolve_s", "prepare_s", "run_s", "venv_s",
                                           "install_torch_s", "install_stack_s",
                                           "bytecode_s"}, outcome
        assert (run / "locks" / cell / "torch.lock").is_file() and (
            run / "locks" / cell / "requirements.lock"
        ).is_file()
        assert (run / "logs" / f"{cell}.run.log").is_file() and (
            run / "logs" / f"{cell}.build.log"
        ).is_file()
        assert isinstance(load_result(run / "cells" / f"{cell}.json"), CellResult)
    assert not (run / "work").exists()


def test_merged_table_has_both_cells_on_cpu(first_run) -> None:
    root, _, _ = first_run
    run = (root / "reports" / "latest").resolve()
    summary = json.loads((run / "summary.json").read_text())
    rows = {c["pins"]["transformers"]: c for c in summary["cells"]}
    assert set(rows) == {"4.57.6", "5.17.0"}
    for version, row in rows.items():
        result = load_result(run / row["result"])
        assert row["status"] == cell_status(result.checks)  # derived, never typed in
        assert row["environment"]["device"] == "cpu"
        assert result.data["environment"]["packages"]["transformers"]["installed"] == version
        assert row["checks"]["imports"]["status"] == "pass"
        # On CPU, GPU-only checks are skipped with a reason, never failed.
        for name, check in row["checks"].items():
            if name.startswith(GPU_ONLY_GROUPS):
                assert check["status"] == "skip" and check["reason"], (name, check)
    md = (run / "summary.md").read_text()
    assert summary["verdict"] in md
    assert ("## Which versions work together: transformers × unsloth (python 3.11, torch "
            "2.13.0+cpu)") in md
    for version in rows:
        assert f"| `{version}` |" in md


def test_pins_for_the_routes_that_work_with_their_caveats(first_run) -> None:
    """Transformers 4.57.6 trains EXAONE 3.5 through its remote code, 5.17.0 only
    llamafied (the remote code fails there): each route gets the newest cell it trains on, and the
    5.17.0 pin's header names the failing remote-code route with its signature."""
    root, proc, _ = first_run
    run = (root / "reports" / "latest").resolve()
    summary = json.loads((run / "summary.json").read_text())
    rows = {c["pins"]["transformers"]: c for c in summary["cells"]}
    pins = {p["purpose"]: p for p in summary["pins"]}
    assert pins["exaone3.5-remote-code"]["cell"] == rows["4.57.6"]["id"]
    assert pins["exaone3.5-llamafied"]["cell"] == rows["5.17.0"]["id"]
    assert pins["for-route-any-backend-hf-peft-goal-newest"]["cell"] == rows["5.17.0"]["id"]
    assert pins["fastest-lora"]["file"] is None  # the CPU times nothing
    assert pins["exaone4"]["file"] is None       # no check here trains EXAONE 4 (no train group)
    for pin in pins.values():
        if pin["file"] is None:
            assert pin["why_not"], pin
            continue
        header = [ln for ln in (run / pin["file"]).read_text().splitlines() if ln.startswith("#")]
        # the header claims what the cell's verdict claims (what this CPU host did not judge too)
        assert pin["verdict"] and pin["verdict"].startswith(pin["status"]), pin
        assert f"# cell: {pin['cell']} (cell status: {pin['verdict']})" in header
        for caveat in pin["caveats"]:  # what summary.json says is what the file's header says
            assert f"#   - {caveat}" in header
        # the body is the cell's lock, hashes dropped
        body = [ln for ln in (run / pin["file"]).read_text().splitlines() if not ln.startswith("#")]
        lock = run / "locks" / pin["cell"] / "requirements.lock"
        assert body == lock_entries(lock.read_text())
    llamafied = pins["exaone3.5-llamafied"]
    assert any(c.startswith("exaone3.5.remote-code") and "(a route this pin does not use)" in c
               for c in llamafied["caveats"]), llamafied["caveats"]
    why_not = {w["cell"]: w["why"] for w in llamafied["why_not"]}
    assert why_not[rows["4.57.6"]["id"]] == "older than the pick: transformers 4.57.6 < 5.17.0"
    readme = (run / "pins" / "README.md").read_text()
    assert "Why not:" in readme and "older than the pick" in readme
    assert "## Pins by purpose" in (run / "summary.md").read_text()
    assert "pins: " in proc.stdout


def test_second_run_reuses_venvs_and_moves_latest(first_run) -> None:
    """`--runner auto` on a host whose Docker engine is unreachable says so in one line and uses
    venvs."""
    root, _, _ = first_run
    before = (root / "reports" / "latest").resolve()
    proc = pinmatrix("matrix", "--matrix", str(CI), "--runner", "auto", "--cpu",
                     "transformers=5.17.0",
                     "--reports", str(root / "reports"), "--venv-dir", str(root / "venvs"),
                     env={"DOCKER_HOST": f"unix://{root}/no-such-docker.sock",
                          "PINMATRIX_DOCKER": "/nonexistent/docker"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notices = [ln for ln in proc.stdout.splitlines() if ln.startswith("runner: ")]
    assert len(notices) == 1 and notices[0].startswith("runner: venv (no usable Docker "
                                                       "engine"), proc.stdout
    after = (root / "reports" / "latest").resolve()
    assert after != before and after.parent == before.parent
    (outcome_path,) = (after / "outcomes").glob("*.json")
    outcome = json.loads(outcome_path.read_text())
    assert outcome["pins"]["transformers"] == "5.17.0"
    # venv reused: nothing built
    assert not (after / "logs" / f"{outcome['cell']}.build.log").exists()
    first = json.loads((before / "outcomes" / outcome_path.name).read_text())
    same_probes = (json.loads((before / "run.json").read_text())["probes_digest"]
                   == json.loads((after / "run.json").read_text())["probes_digest"])
    # The same inputs give the same content hash; an edit to probes/ between the runs gives another.
    assert (outcome["hash"] == first["hash"]) == same_probes


def test_bad_matrix_writes_nothing(tmp_path: Path) -> None:
    proc = pinmatrix("matrix", "--matrix",
                     str(ROOT / "tests/data/matrices/bad/01-yaml-syntax.yaml"),
                     "--runner", "venv", "--reports", str(tmp_path / "reports"))
    assert proc.returncode == 2 and "01-yaml-syntax.yaml:" in proc.stderr
    assert not (tmp_path / "reports").exists()
