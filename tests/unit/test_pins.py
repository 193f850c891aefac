"""pins/: constraints files of the recommended stacks, from a run folder of real probe results and
real locks.

The results come from the real probe (tests/unit/real_results.py: a good stack, an xformers-broken
and a trl-broken one) plus one more real run with an older transformers than the stack's
(OLDER_TF): uv installs it (and what it needs) into a folder that shadows the stack's transformers
on the probe's path, once per pytest cache. Each cell's lock is `uv pip freeze` of what the probe
ran on, i.e. exactly what was tested. The files are then read by the real uv and pip against a
local find-links folder of small wheels built here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from packaging.version import Version
from real_results import PROBE_PYTHON, cache_root, real_results, spec_for

from pinmatrix.cell import normalize_name
from pinmatrix.outcome import Outcome
from pinmatrix.report.pins import (
    NEWEST_FILE,
    Candidate,
    choose,
    lock_entries,
    newest_key,
    write_pins,
)
from pinmatrix.probes_source import probes_digest
from pinmatrix.run.options import REPO_ROOT


def _stack_transformers() -> str:
    return subprocess.run([str(PROBE_PYTHON), "-c", "import importlib.metadata as m; "
                           "print(m.version('transformers'))"], capture_output=True, text=True,
                          check=True).stdout.strip()


# Older than the stack's transformers, so that the stack's own cell stays the newest pick; both
# releases load the probe's fixtures and work with the stack's peft.
OLDER_TF = "4.57.6" if Version(_stack_transformers()) >= Version("5") else "4.56.2"
OLDER_CELL = f"py3.11-torch2.13.0+cpu-tf{OLDER_TF}-good"
UV = shutil.which("uv")
NOW = datetime(2026, 11, 27, 18, 0, 0, tzinfo=timezone.utc)

needs_uv = pytest.mark.skipif(UV is None, reason="uv is not installed")


def _older_tf_site(cache: Path) -> Path:
    """transformers OLDER_TF and its dependencies in a folder put first on the probe stack's path.
    Built by uv from the package index once per pytest cache; CI fails when it cannot be built."""
    site = cache / f"site-tf{OLDER_TF}"
    if (site / ".complete").is_file():
        return site
    shutil.rmtree(site, ignore_errors=True)
    proc = subprocess.run([UV, "pip", "install", "--quiet", "--python", str(PROBE_PYTHON),
                           "--target", str(site), f"transformers=={OLDER_TF}"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        message = f"uv could not install transformers {OLDER_TF}: {proc.stderr.strip()[-1500:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    (site / ".complete").write_text("")
    return site


def _older_tf_lock(site: Path) -> str:
    """What that probe ran on: the stack's packages, the shadowing folder's in their place."""
    shadowing = {}
    for dist in site.glob("*.dist-info"):
        name, version = dist.name[: -len(".dist-info")].rsplit("-", 1)
        shadowing[normalize_name(name)] = f"{name}=={version}"
    stack = [line for line in _freeze(PROBE_PYTHON).splitlines()
             if line and normalize_name(line.split("==")[0]) not in shadowing]
    return "".join(f"{line}\n" for line in sorted([*stack, *shadowing.values()], key=str.lower))


def _older_tf_result(folder: Path, site: Path) -> Path:
    """The real probe with transformers OLDER_TF (cached per probes/ digest like real_results)."""
    folder = folder / f"tf{OLDER_TF}-{probes_digest()[:16]}"
    out = folder / "good-older-tf.json"
    if out.is_file():
        return out
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = spec_for("good")
    spec["id"], spec["hash"] = OLDER_CELL, "hash-good-older-tf"
    spec["pins"] = {**spec["pins"], "transformers": OLDER_TF}
    (folder / "cell.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(site)])}
    proc = subprocess.run([str(PROBE_PYTHON), "-m", "probes", "--cell", str(folder / "cell.json"),
                           "--out", str(out),
                           "--work", str(folder / "w")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert out.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def _freeze(python: Path) -> str:
    proc = subprocess.run([UV, "pip", "freeze", "--python", str(python)], capture_output=True,
                          text=True, check=True)
    return proc.stdout


def _add_cell(run_dir: Path, result: Path, lock_text: str | None) -> str:
    data = json.loads(result.read_text())
    cell_id = data["cell"]["id"]
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result, run_dir / "cells" / f"{cell_id}.json")
    Outcome(cell=cell_id, hash=data["cell"]["hash"], pins=data["cell"]["pins"], runner="venv",
            stage="done",
            result=f"cells/{cell_id}.json").write(run_dir)
    if lock_text is not None:
        (run_dir / "locks" / cell_id).mkdir(parents=True, exist_ok=True)
        (run_dir / "locks" / cell_id / "requirements.lock").write_text(lock_text)
    return cell_id


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    root = cache_root(request, tmp_path_factory)
    found = real_results(root)
    if UV is not None:
        found["good-older-tf"] = _older_tf_result(root, _older_tf_site(root))
    return found


@pytest.fixture
def run_dir(request, tmp_path_factory, tmp_path, results):
    if UV is None:
        pytest.skip("uv is not installed")
    run = tmp_path / "20261127T170000Z"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "cells": []}))
    tf5_lock = _freeze(PROBE_PYTHON)
    for stack in ("good", "xformers-broken", "trl-broken"):
        _add_cell(run, results[stack], tf5_lock)
    # built by `results`: found at once
    site = _older_tf_site(cache_root(request, tmp_path_factory))
    _add_cell(run, results["good-older-tf"], _older_tf_lock(site))
    return run


def _header(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def test_newest_and_per_line_picks_from_real_results(run_dir, results):
    older = json.loads(results["good-older-tf"].read_text())
    # it really ran on the older release
    assert older["environment"]["packages"]["transformers"]["installed"] == OLDER_TF
    report = write_pins(run_dir, now=NOW)
    assert report.pins_dir == run_dir / "pins"
    by_file = {p.file_name: p for p in report.picks}
    # only fully working cells: the broken-trl (core import fails) and broken-xformers (partial)
    # cells never
    assert {p.candidate.cell_id for p in report.picks} <= {"py3.11-torch2.13.0+cpu-tf5.17.0-good",
                                                           OLDER_CELL}
    assert by_file[NEWEST_FILE].candidate.cell_id == "py3.11-torch2.13.0+cpu-tf5.17.0-good"
    # one torch line (2.13.0+cpu); no throughput ran on CPU, so it falls back to the newest and says
    # so
    line = by_file["fastest-torch2.13.0+cpu.constraints.txt"]
    assert line.candidate.cell_id == "py3.11-torch2.13.0+cpu-tf5.17.0-good"
    assert "no throughput check ran" in line.why
    assert sorted(p.name for p in (run_dir / "pins").iterdir()) == sorted(
        ["README.md", NEWEST_FILE, "fastest-torch2.13.0+cpu.constraints.txt"])


def test_header_says_cell_run_time_gpu_and_throughput(run_dir, results):
    write_pins(run_dir, now=NOW)
    text = (run_dir / "pins" / NEWEST_FILE).read_text()
    header = "\n".join(_header(text))
    finished = json.loads(results["good"].read_text())["finished"]
    assert "# cell: py3.11-torch2.13.0+cpu-tf5.17.0-good" in header
    assert (
        f"# run: 20261127T170000Z; cell finished: {finished}; written: 2026-11-27T18:00:00Z (UTC)"
        in header
    )
    assert "# GPU: none (device cpu)" in header
    assert "# throughput: not measured (no throughput check ran for this cell)" in header
    # the full lock: every package the probe's interpreter holds, each exactly once as name==version
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    frozen = [line for line in _freeze(PROBE_PYTHON).splitlines() if "==" in line]
    assert body == frozen and all("==" in line for line in body)
    installed = subprocess.run([str(PROBE_PYTHON), "-c", "import transformers, torch; "
                                "print(torch.__version__, transformers.__version__)"],
                               capture_output=True, text=True, check=True).stdout.split()
    assert f"torch=={installed[0]}" in body and f"transformers=={installed[1]}" in body
    readme = (run_dir / "pins" / "README.md").read_text()
    assert NEWEST_FILE in readme and "py3.11-torch2.13.0+cpu-tf5.17.0-good" in readme


def _wheel(folder: Path, name: str, version: str) -> None:
    """A small real wheel (metadata only) so pip and uv can resolve offline against find-links."""
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl",
                         "w") as whl:
        whl.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        whl.writestr(f"{dist}/METADATA",
                     f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}/WHEEL",
                     "Wheel-Version: 1.0\nGenerator: pinmatrix-test\nRoot-Is-Purelib: true\n"
                                      "Tag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")


@needs_uv
def test_uv_and_pip_read_the_file_as_constraints(run_dir, tmp_path):
    write_pins(run_dir, now=NOW)
    constraints = run_dir / "pins" / NEWEST_FILE
    links = tmp_path / "links"
    links.mkdir()
    for version in ("0.21.2", "99.0.0"):  # the newest is not the pinned one: only -c picks 0.21.2
        _wheel(links, "peft", version)
    req = tmp_path / "req.in"
    req.write_text("peft\n")
    base = [UV, "pip", "compile", str(req), "--no-index", "--find-links", str(links), "--no-deps",
            "--no-header",
            "--python-version", "3.11", "--quiet"]
    free = subprocess.run(base, capture_output=True, text=True)
    assert free.returncode == 0 and "peft==99.0.0" in free.stdout, free.stderr
    pinned = subprocess.run([*base, "-c", str(constraints)], capture_output=True, text=True)
    assert pinned.returncode == 0, pinned.stderr
    assert "peft==0.21.2" in pinned.stdout

    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
        pip = ["python3", "-m", "pip"]
    dry = subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--no-index",
                          "--find-links",
                          str(links), "--no-deps", "-c", str(constraints), "peft"],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Would install peft-0.21.2" in dry.stdout


def test_no_fully_working_cell_writes_no_pins_and_says_why(tmp_path, results):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "broken-run"}))
    lock = "torch==2.13.0+cpu\n"
    _add_cell(run, results["xformers-broken"], lock)
    _add_cell(run, results["trl-broken"], lock)
    (run / "pins").mkdir()  # a stale pins folder from an earlier report must not survive
    report = write_pins(run, now=NOW)
    assert report.pins_dir is None and report.picks == []
    assert not (run / "pins").exists()
    assert "no fully working cell in run broken-run" in report.message
    assert "2 broken" in report.message  # both import checks fail (a core check)


def test_working_cell_without_a_lock_is_left_out_with_a_note(tmp_path, results):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "nolock"}))
    _add_cell(run, results["good"], None)
    report = write_pins(run, now=NOW)
    assert report.pins_dir is None and "works but has no lock" in report.message


def test_lock_entries_strip_hashes_and_keep_markers():
    # uv's --generate-hashes layout: the pin, its hashes and `# via` notes on indented lines
    lock = ("filelock==3.20.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via torch\n"
            "torch==2.13.0+cpu \\\n    --hash=sha256:cc\n    # via -r requirements.in\n"
            "colorama==0.4.6 ; sys_platform == 'win32'\n--find-links /opt/wheels\n")
    assert lock_entries(lock) == ["filelock==3.20.0", "torch==2.13.0+cpu",
                                  "colorama==0.4.6 ; sys_platform == 'win32'"]


def _candidate(cell_id: str, tf: str, torch: str, tps: float | None,
               unsloth: str | None = None) -> Candidate:
    locked = {"transformers": tf, "torch": torch, **({"unsloth": unsloth} if unsloth else {})}
    return Candidate(cell_id, {}, locked, [f"{k}=={v}" for k, v in locked.items()],
                     {"device": "cuda", "gpu": "H100"},
                     None, tps, "throughput.sdpa" if tps else None, 3, 0)


def test_choice_orders_by_packaging_versions_and_speed_per_line():
    cells = [
        _candidate("a", "4.57.6", "2.8.0+cu128", 900.0),
        _candidate("b", "4.9.0", "2.8.0+cu128", 1200.0),       # 4.9 < 4.57 by PEP 440, not by text
        _candidate("c", "4.57.6", "2.8.0+cu128", 800.0, unsloth="2026.10.9"),
        _candidate("d", "5.17.0", "2.11.0", None),
        _candidate("e", "5.5.0", "2.11.0", None),
    ]
    picks = {p.file_name: p for p in choose(cells)}
    assert picks[NEWEST_FILE].candidate.cell_id == "d"
    assert picks["fastest-torch2.8.0+cu128.constraints.txt"].candidate.cell_id == "b"
    assert "1200.0 tokens/s" in picks["fastest-torch2.8.0+cu128.constraints.txt"].why
    assert picks["fastest-torch2.11.0.constraints.txt"].candidate.cell_id == "d"
    # same transformers: unsloth breaks the tie
    assert max(cells[:3], key=newest_key).cell_id == "c"
