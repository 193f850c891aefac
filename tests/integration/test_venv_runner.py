"""The venv runner with real uv, real virtual environments and the real probe.

Two cells that differ only in the transformers pin (4.57.6 vs 5.17.0), torch 2.13.0+cpu from the
/opt/wheels wheelhouse: each gets its own venv, the probe runs in it, and the merged table shows
both.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pinmatrix.cell import Cell, Lock
from pinmatrix.environ import compile_cache
from pinmatrix.errors import InfraError
from pinmatrix.outcome import Outcome
from pinmatrix.report.markdown import render_markdown
from pinmatrix.report.summary import merge
from pinmatrix.resolve.uv import resolve
from pinmatrix.results import CellResult, load_result
from pinmatrix.run.pipeline import force_cpu
from pinmatrix.runners.base import Runner
from pinmatrix.runners.venv import READY_MARKER, VenvRunner
from pinmatrix.sources import PackageSources

pytestmark = pytest.mark.integration

WHEELS = Path(os.environ.get("PINMATRIX_TEST_WHEELS", "/opt/wheels"))
PINS = {"python": "3.11", "torch": "2.13.0+cpu", "peft": "0.21.2", "unsloth": "none"}

if shutil.which("uv") is None:
    pytest.skip("uv is not installed on this host", allow_module_level=True)
if not any(WHEELS.glob("torch-2.13.0+cpu-*.whl")):
    pytest.skip(f"no torch 2.13.0+cpu wheel in {WHEELS}", allow_module_level=True)


def cell_for(transformers: str) -> Cell:
    # Only the imports group: the point here is the runner; the pipeline test runs every group.
    return force_cpu(Cell(pins={**PINS, "transformers": transformers}, checks=("imports",),
                          settings={"check_timeout_s": 300}))


@pytest.fixture(scope="module")
def sources():
    return PackageSources.from_env(find_links=[str(WHEELS)])


@pytest.fixture(scope="module")
def locks(tmp_path_factory: pytest.TempPathFactory, sources) -> dict[str, tuple[Cell, Lock]]:
    out = {}
    for version in ("4.57.6", "5.17.0"):
        cell = cell_for(version)
        lock = resolve(cell, sources, tmp_path_factory.mktemp(f"lock-{version}"))
        assert isinstance(lock, Lock), lock
        assert lock.pinned()["transformers"] == version and lock.pinned()["torch"] == "2.13.0+cpu"
        out[version] = (cell, lock)
    return out


@pytest.fixture(scope="module")
def venv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("venvs")


@pytest.fixture(scope="module")
def tf457_site(locks, sources, venv_root) -> Path:
    """A prepared site holding transformers 4.57.6 (and its stack): the 4.57.6 cell's own venv,
    installed from its lock by the runner (reused when the first test already built it)."""
    cell, lock = locks["4.57.6"]
    prepared = VenvRunner(venv_root=venv_root, sources=sources).prepare(cell, lock)
    sites = sorted(Path(prepared.ref).glob("lib/python3*/site-packages"))
    assert sites, prepared.ref
    return sites[0]


def write_spec(cell: Cell, folder: Path, content_hash: str = "h") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cell.json"
    path.write_text(json.dumps(cell.spec(content_hash, "venv")))
    return path


def test_two_cells_differing_in_transformers(locks, sources, venv_root, tmp_path: Path) -> None:
    runner = VenvRunner(venv_root=venv_root, sources=sources)
    assert isinstance(runner, Runner)
    run_dir = tmp_path / "run"
    for version, (cell, lock) in locks.items():
        prepared = runner.prepare(cell, lock)
        assert not prepared.reused
        work = tmp_path / "work" / version
        outcome = runner.run(prepared, write_spec(cell, work, f"hash-{version}"), work, "", 600)
        assert outcome.ok, (outcome.infra_reason, outcome.log_tail)
        result = load_result(outcome.result_path)
        assert isinstance(result, CellResult), result
        env = result.data["environment"]
        assert env["packages"]["transformers"]["installed"] == version
        assert env["packages"]["torch"]["installed"] == "2.13.0+cpu" and env["device"] == "cpu"
        (run_dir / "cells").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(outcome.result_path, run_dir / "cells" / f"{cell.id}.json")
        Outcome(cell=cell.id, hash=f"hash-{version}", pins=dict(cell.pins), runner="venv",
                stage="done",
                result=f"cells/{cell.id}.json").write(run_dir)
    # Two venvs, one per lock.
    assert len([p for p in venv_root.iterdir() if p.is_dir()]) == 2
    summary = merge(run_dir)
    assert summary["verdict"] == "2 cells: 2 work"
    rows = {c["pins"]["transformers"]: c for c in summary["cells"]}
    assert set(rows) == {"4.57.6", "5.17.0"}
    assert all(r["checks"]["imports"]["status"] == "pass" for r in rows.values())
    (table,) = summary["pivot"]
    assert table["transformers"] == ["4.57.6", "5.17.0"]
    md = render_markdown(summary)
    assert "| `4.57.6` | ✅ works |" in md and "| `5.17.0` | ✅ works |" in md


def test_unchanged_cell_reuses_its_venv(locks, sources, venv_root) -> None:
    cell, lock = locks["5.17.0"]
    runner = VenvRunner(venv_root=venv_root, sources=sources)
    first = runner.prepare(cell, lock)
    python = Path(first.details["python"])
    stamp = python.stat().st_mtime_ns
    again = runner.prepare(cell, lock)
    assert again.reused and again.ref == first.ref and python.stat().st_mtime_ns == stamp
    # A different flag is a different environment.
    other = VenvRunner(venv_root=venv_root, sources=sources, system_site_packages=True)
    assert other.venv_key(lock) != runner.venv_key(lock)


def test_timeout_kills_the_probe_and_reports_infra(locks, sources, venv_root,
                                                   tmp_path: Path) -> None:
    cell, lock = locks["5.17.0"]
    runner = VenvRunner(venv_root=venv_root, sources=sources)
    prepared = runner.prepare(cell, lock)
    spec = write_spec(cell, tmp_path)
    outcome = runner.run(prepared, spec, tmp_path, "", 1.0)  # importing torch alone takes longer
    assert outcome.result_path is None
    assert outcome.signature == "timeout" and outcome.infra_reason.startswith("timeout")
    left = subprocess.run(["pgrep", "-f", str(spec)], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"probe processes survived the timeout: {left.stdout}"


def test_offline_install_fails_as_infra_when_the_wheelhouse_lacks_a_package(locks,
                                                                            tmp_path: Path) -> None:
    cell, lock = locks["5.17.0"]
    runner = VenvRunner(venv_root=tmp_path / "venvs",
                        sources=PackageSources(find_links=(str(WHEELS),)),
                        offline=True)
    with pytest.raises(InfraError) as caught:
        runner.prepare(cell, lock)  # torch is in /opt/wheels, its dependencies are not
    assert caught.value.signature == "venv-install-failed"
    assert "--offline" in caught.value.log_tail and "--no-index" in caught.value.log_tail
    assert "not found in the provided package locations" in caught.value.log_tail
    # a failed venv is never marked ready
    assert not list((tmp_path / "venvs").glob(f"*/{READY_MARKER}"))


def test_no_install_extra_site_and_stdlib_venv_fallback_detect_drift(locks, tf457_site,
                                                                     tmp_path: Path) -> None:
    """A machine with no index: nothing is installed, a prepared site is put on the path (.pth), and
    the drift check compares the lock with what is there. Without uv the stdlib venv module is
    used."""
    cell, lock = locks["5.17.0"]        # the lock wants transformers 5.17.0 ...
    runner = VenvRunner(venv_root=tmp_path / "venvs", no_install=True, extra_sites=[tf457_site],
                        uv=None)
    assert any("falling back to the stdlib venv" in n for n in runner.notes)
    prepared = runner.prepare(cell, lock)
    pth = list(Path(prepared.ref).glob("lib/python*/site-packages/pinmatrix-extra-site.pth"))
    line = f"import site; site.addsitedir({str(tf457_site)!r})"
    assert pth and pth[0].read_text().strip() == line
    outcome = runner.run(prepared, write_spec(cell, tmp_path / "w"), tmp_path / "w", "", 600)
    # ... the site holds 4.57.6: the result exists, but the cell is judged infra, naming the
    # package.
    assert outcome.result_path is not None and outcome.signature == "lock-drift"
    assert "transformers 4.57.6 (lock: 5.17.0)" in outcome.infra_reason


def test_extra_sites_have_their_pth_files_applied_in_order(locks, tf457_site,
                                                           tmp_path: Path) -> None:
    """An extra site is a site folder: its own .pth files apply (nvidia-cutlass-dsl reaches its
    `cutlass` package only through one), and earlier sites win over later ones."""
    cell, lock = locks["4.57.6"]
    first, second = tmp_path / "first", tmp_path / "second"
    for site, tag in ((first, "first"), (second, "second")):
        (site / "nested" / "pm_nested_mod").mkdir(parents=True)
        (site / "nested" / "pm_nested_mod" / "__init__.py").write_text(f"WHERE = {tag!r}\n")
        (site / "pm_nested.pth").write_text("nested\n")
    runner = VenvRunner(venv_root=tmp_path / "venvs", no_install=True,
                        extra_sites=[tf457_site, first, second])
    prepared = runner.prepare(cell, lock)
    proc = subprocess.run([prepared.details["python"], "-c",
                           "import pm_nested_mod; print(pm_nested_mod.WHERE)"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "first"


def test_no_install_matching_site_has_no_drift(locks, tf457_site, tmp_path: Path) -> None:
    cell, lock = locks["4.57.6"]
    runner = VenvRunner(venv_root=tmp_path / "venvs", no_install=True, extra_sites=[tf457_site])
    prepared = runner.prepare(cell, lock)
    outcome = runner.run(prepared, write_spec(cell, tmp_path / "w"), tmp_path / "w", "", 600)
    installed = {k: v["installed"] for k, v in
                 json.loads(outcome.result_path.read_text())["environment"]["packages"].items()}
    locked = lock.pinned()
    differs = {k for k, v in installed.items() if k in locked and v and v != locked[k]}
    assert outcome.ok == (not differs), (outcome.infra_reason, differs)


def test_without_uv_the_stdlib_venv_and_pip_install_the_lock(locks, sources,
                                                             tmp_path: Path) -> None:
    """Hosts without uv: `python -m venv` + pip install the same lock (hash-checked), and say so."""
    cell, lock = locks["4.57.6"]
    runner = VenvRunner(venv_root=tmp_path / "venvs", sources=sources, uv=None)
    prepared = runner.prepare(cell, lock)
    assert prepared.details["notes"] == ["uv not found on PATH: falling back to the stdlib venv "
                                         "module and pip"]
    build_log = Path(prepared.details["build_log"]).read_text()
    assert (
        " -m venv " in build_log and " -m pip install " in build_log and "uv pip" not in build_log
    )
    outcome = runner.run(prepared, write_spec(cell, tmp_path / "w"), tmp_path / "w", "", 600)
    assert outcome.ok, (outcome.infra_reason, outcome.log_tail)
    packages = json.loads(outcome.result_path.read_text())["environment"]["packages"]
    assert (
        packages["transformers"]["installed"] == "4.57.6"
        and packages["torch"]["installed"] == "2.13.0+cpu"
    )


def test_compile_cache_outlives_the_run_per_stack_and_can_be_turned_off(
    locks, sources, venv_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack's compile-cache folder: the bytecode of what the probe imports compiled once per
    stack, at prepare (even where the host says PYTHONDONTWRITEBYTECODE), and read, never rewritten,
    by the runs; kernels a run leaves there seen as warm by the next run; a different stack gets
    its own folder; without the cache every run is cold and nothing is precompiled."""

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")   # as on the lent H100's image
    root = tmp_path / "compile"
    runner = VenvRunner(venv_root=venv_root, sources=sources, compile_cache_root=root)
    cell, lock = locks["5.17.0"]
    prepared = runner.prepare(cell, lock)
    bytecode = prepared.details["bytecode"]
    # the stack's packages the probe imports at its start, and what they import
    assert bytecode["compiled"] is True and bytecode["failed"] == [], bytecode
    assert {"torch", "transformers", "peft"} <= set(bytecode["modules"]), bytecode
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    # unsloth loads compiled artifacts only from such a folder
    assert (folder.stat().st_mode & 0o777) == 0o700
    compiled = {p: p.stat().st_mtime_ns for p in (folder / "pycache").rglob("*.pyc")}
    for package in ("torch", "transformers", "peft"):
        assert any(f"/{package}/__init__" in str(p) for p in compiled), package
    # once per stack
    assert runner.prepare(cell, lock).details["bytecode"]["compiled"] == "earlier"

    states = []
    for attempt in range(2):
        work = tmp_path / f"run{attempt}"
        outcome = runner.run(prepared, write_spec(cell, work), work, "", 600)
        assert outcome.ok, (outcome.infra_reason, outcome.log_tail)
        states.append(json.loads(outcome.result_path.read_text())["environment"]["compile_cache"])
        # a CPU probe compiles no kernels; stand in for Triton leaving one behind
        (folder / "triton" / "kernel.cubin").write_bytes(b"\0")
    assert states == ["cold", "warm"]
    # the runs read the bytecode compiled at prepare, never compile it again, and write none
    # beside the sources
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in compiled.items())
    assert not list(Path(prepared.ref).rglob("site-packages/transformers/__pycache__"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*compile_cache.TOOL_SUBFOLDERS.values(), "pycache"]
    )

    other_cell, other_lock = locks["4.57.6"]
    other = runner.prepare(other_cell, other_lock)
    assert runner.compile_env(other, tmp_path)["PINMATRIX_COMPILE_CACHE"] != str(folder)

    cold = VenvRunner(venv_root=venv_root, sources=sources, compile_cache_root=None)
    prepared = cold.prepare(cell, lock)
    assert prepared.details["bytecode"] is None
    work = tmp_path / "cold"
    outcome = cold.run(prepared, write_spec(cell, work), work, "", 600)
    assert json.loads(outcome.result_path.read_text())["environment"]["compile_cache"] == "cold"
