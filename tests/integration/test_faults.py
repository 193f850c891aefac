"""Faults at the pipeline level: each one injected for real, and each test asserts that
the other cells ran to completion, every finished result is intact (schema-valid, unchanged) and the
faulty cell got a classified outcome.

  fault                       where                          injected by
  probe segfault              Docker (real engine)           ctypes.string_at(0) in the probe
  probe OOM-killed            Docker, --memory 256m          the probe allocates without end
  probe hang / cell timeout   Docker, matrix cell_timeout_s  the probe sleeps
  per-check timeout           venv, the REAL probe           --check-timeout 0.5 (CLI) over the
                                                             matrix's 600
  build fails                 Docker BuildKit                a lock naming a package that exists
                                                             nowhere
  flaky check                 venv and Docker                an op failing on its first call per
                                                             work folder
  Docker daemon gone mid-run  Docker via a socket we kill    the harness's DOCKER_HOST proxy is
                                                             closed
  harness SIGKILLed mid-run   venv, CLI in a subprocess      os.kill(pid, SIGKILL), then --resume
  reports disk full           venv, tmpfs of 1 MiB           the disk is filled between two cells
  corrupted/foreign JSON      `python -m pinmatrix report`   files dropped into a finished run
                                                             folder

The stand-ins (a small probe without torch, an empty lock) live in fault_cells.py; the rest is real.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pinmatrix.containers.engine import Engine
from pinmatrix.errors import EXIT_INFRA
from pinmatrix.results import CellResult, Damaged, load_result
from pinmatrix.run.options import RunOptions
from pinmatrix.run.pipeline import run_matrix

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

import fault_cells as fc  # noqa: E402

import pinmatrix.run.pipeline as pipeline
from pinmatrix.runners import registry
from pinmatrix.runners.venv import VenvRunner

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FAULT_COUNT: dict[str, int] = {}


def _count(name: str) -> None:
    FAULT_COUNT[name] = FAULT_COUNT.get(name, 0) + 1


# --- shared helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fc.write_stand_in_probes(tmp_path_factory.mktemp("stand-in"))


def _cell_ids(run_dir: Path) -> dict[str, str]:
    """transformers pin → cell id, from the run's outcome records."""
    out = {}
    for path in (run_dir / "outcomes").glob("*.json"):
        data = json.loads(path.read_text())
        out[data["pins"]["transformers"]] = data["cell"]
    return out


def _outcome(run_dir: Path, cell_id: str) -> dict[str, Any]:
    return json.loads((run_dir / "outcomes" / f"{cell_id}.json").read_text())


def _assert_intact(run_dir: Path) -> int:
    """Every result file in the run validates and belongs to a `done` outcome; returns how many."""
    n = 0
    for path in sorted((run_dir / "cells").glob("*.json")):
        loaded = load_result(path, reclassify=False)
        assert isinstance(loaded, CellResult), f"{path.name}: {getattr(loaded, 'why', loaded)}"
        outcome = _outcome(run_dir, loaded.cell_id)
        assert outcome["stage"] == "done" and outcome["result"] == f"cells/{path.name}", outcome
        n += 1
    return n


def _opts(matrix: Path, reports: Path, runner: str, **kw: Any) -> RunOptions:
    return RunOptions(matrix_path=matrix, runner=runner, cpu=True, reports_dir=reports,
                      live_progress=False, **kw)


# --- Docker: segfault, OOM, hang, build failure, a check that fails twice -------------------------

@pytest.fixture(scope="module")
def docker_run(engine: Engine, probes_root: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("docker-faults")
    matrix = fc.write_matrix(tmp / "matrix.yaml", [fc.OK, fc.SEGFAULT, fc.OOM, fc.HANG,
                                                   fc.BUILD_FAILS, fc.FLAKY, fc.OK2],
                             cell_timeout_s=15)
    token = f"hf_PLANTED{uuid.uuid4().hex}"
    hub = fc.write_model_hub(tmp / "hub")
    with pytest.MonkeyPatch.context() as mp:
        fc.install(probes_root, {"context_root": str(tmp / "ctx"), "memory": "256m"}, mp.setattr)
        mp.setenv("HF_TOKEN", token)  # present in the harness's environment the whole run
        lines: list[str] = []
        started = time.monotonic()
        summary = run_matrix(_opts(matrix, tmp / "reports", "docker", model_cache=tmp / "hf",
                                   model_hub=hub),
                             echo=lines.append)
        elapsed = time.monotonic() - started
    yield {"summary": summary, "run": summary.run_dir, "ids": _cell_ids(summary.run_dir),
           "lines": lines,
           "elapsed": elapsed, "token": token, "model_cache": tmp / "hf"}
    images = subprocess.run(engine.cmd("images", "-q", "--filter", "label=org.pinmatrix.cell"),
                            capture_output=True,
                            text=True).stdout.split()
    for cid in {
        json.loads(p.read_text()).get("cell") for p in (summary.run_dir / "outcomes").glob("*.json")
    }:
        for image in images:  # only the images this run built (their label names one of its cells)
            label = subprocess.run(engine.cmd("image", "inspect", "--format",
                                              '{{index .Config.Labels "org.pinmatrix.cell"}}',
                                              image),
                                   capture_output=True, text=True).stdout.strip()
            if label == cid:
                subprocess.run(engine.cmd("rmi", "--force", image), capture_output=True)


def test_docker_faults_leave_the_other_cells_whole(docker_run: dict, engine: Engine) -> None:
    run, ids = docker_run["run"], docker_run["ids"]
    assert docker_run["summary"].harness_errors == [] and docker_run["summary"].stopped is None
    assert len(ids) == 7, ids
    assert _assert_intact(run) == 3  # OK, OK2 and the twice-failing cell
    for pin in (fc.OK, fc.OK2):
        assert _outcome(run, ids[pin])["stage"] == "done"
    expected = {fc.SEGFAULT: ("run", "probe-segfault"), fc.OOM: ("run", "container-oom-killed"),
                fc.HANG: ("run", "timeout")}
    for pin, (stage, signature) in expected.items():
        outcome = _outcome(run, ids[pin])
        assert (outcome["stage"], outcome["status"],
                outcome["signature"]) == (stage, "infra", signature), outcome
        assert not (run / "cells" / f"{ids[pin]}.json").exists()
        _count(signature)
    hang = _outcome(run, ids[fc.HANG])
    # the matrix's cell_timeout_s, not the 3600 s default
    assert 15 <= hang["timings"]["run_s"] < 60, hang
    built = _outcome(run, ids[fc.BUILD_FAILS])
    assert (built["stage"], built["status"]) == ("prepare", "infra") and built[
        "signature"
    ].startswith("build-"), built
    assert (
        fc.MISSING_PACKAGE.split("==")[0]
        in (run / "logs" / f"{ids[fc.BUILD_FAILS]}.build.log").read_text()
    )
    _count("build-failed")
    left = subprocess.run(engine.cmd("ps", "-a", "--format", "{{.Names}}"), capture_output=True,
                          text=True).stdout
    assert not [n for n in left.split() if "tf4.0." in n], f"containers left behind: {left}"
    summary = json.loads((run / "summary.json").read_text())
    rows = {c["id"]: c for c in summary["cells"]}
    assert {rows[ids[p]]["status"] for p in (fc.OK, fc.OK2)} == {"works"}
    assert {rows[ids[p]]["status"] for p in expected} == {"infra"} and summary["damaged"] == []


def test_docker_check_failing_twice_stays_fail_with_both_attempts(docker_run: dict) -> None:
    """In Docker the op's work folder is a fresh tmpfs per container, so it fails on the rerun
    too."""
    run, ids = docker_run["run"], docker_run["ids"]
    result = load_result(run / "cells" / f"{ids[fc.FLAKY]}.json")
    assert isinstance(result, CellResult)
    generate = next(c for c in result.checks if c["name"] == "generate")
    assert generate["status"] == "fail" and [a["status"] for a in generate["attempts"]] == [
        "fail",
        "fail",
    ]
    imports = next(c for c in result.checks if c["name"] == "imports")
    assert "attempts" not in imports  # only the failed group was rerun
    assert "same outcome" in (_outcome(run, ids[fc.FLAKY])["rerun"] or "")
    assert (run / "logs" / f"{ids[fc.FLAKY]}.rerun.log").read_text().count(
        "checks ['generate']"
    ) == 1


def test_planted_token_reaches_no_file_image_or_cell(docker_run: dict, engine: Engine) -> None:
    """HF_TOKEN was in the harness's environment through prefetch, builds and runs: it must be in no
    file of the run folder (run.json, logs, outcomes, results, summary), not in the model cache, not
    in any image's history or config, and not in a cell's environment. The cell did get the model
    cache, read-only."""
    run, token = docker_run["run"], docker_run["token"]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"run.json", "summary.md", "summary.json"} <= {p.name for p in files}
    assert any(p.suffix == ".log" for p in files)
    for path in files + [p for p in docker_run["model_cache"].rglob("*") if p.is_file()]:
        assert token.encode() not in path.read_bytes(), f"token leaked into {path}"
    images = {image for cid in docker_run["ids"].values()
              for image in subprocess.run(engine.cmd("images", "-q", "--filter",
                                                     f"label=org.pinmatrix.cell={cid}"),
                                          capture_output=True, text=True).stdout.split()}
    assert images
    for image in images:
        for what in (("history", "--no-trunc", image), ("image", "inspect", image)):
            out = subprocess.run(engine.cmd(*what), capture_output=True, text=True,
                                 check=True).stdout
            assert token not in out, f"token in docker {what[0]} of {image}"
    result = load_result(run / "cells" / f"{docker_run['ids'][fc.OK]}.json")
    assert isinstance(result, CellResult)
    seen = next(c for c in result.checks if c["name"] == "imports")["evidence"]
    assert "HF_TOKEN" not in seen["env_keys"]
    assert seen["hf_writable"] is False and any(
        s.endswith("0123456789abcdef0123456789abcdef01234567") for s in seen["hf_snapshots"]
    ), seen
    assert any("model exaone3.5" in line and "fetched" in line for line in docker_run["lines"])


# --- venv: flaky verdict, per-check timeout, full disk ------------------------------------------

@pytest.fixture(scope="module")
def venv_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"venv_root": str(tmp_path_factory.mktemp("venvs"))}


def test_fail_then_pass_is_flaky_with_both_outcomes(probes_root: Path, venv_settings: dict,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fc.install(probes_root, venv_settings, monkeypatch.setattr)
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", [fc.OK, fc.FLAKY])
    summary = run_matrix(_opts(matrix, tmp_path / "reports", "venv"), echo=lambda _: None)
    run, ids = summary.run_dir, _cell_ids(summary.run_dir)
    assert _assert_intact(run) == 2
    result = load_result(run / "cells" / f"{ids[fc.FLAKY]}.json")
    assert isinstance(result, CellResult)
    generate = next(c for c in result.checks if c["name"] == "generate")
    assert generate["status"] == "flaky", generate
    assert [a["status"] for a in generate["attempts"]] == ["fail", "pass"]
    assert generate["attempts"][0]["error"]["signature"] == "stand-in-cold-op"
    rows = {c["id"]: c for c in json.loads((run / "summary.json").read_text())["cells"]}
    assert rows[ids[fc.FLAKY]]["status"] == "partial" and rows[ids[fc.OK]]["status"] == "works"
    assert rows[ids[fc.FLAKY]]["checks"]["generate"]["status"] == "flaky"
    _count("flaky")

    # Without the rerun the same cell is judged on its first attempt: the hook is what made it
    # flaky.
    plain = run_matrix(_opts(matrix, tmp_path / "plain", "venv", flaky_rerun=False),
                       echo=lambda _: None)
    again = load_result(plain.run_dir / "cells" / f"{ids[fc.FLAKY]}.json")
    assert isinstance(again, CellResult)
    generate = next(c for c in again.checks if c["name"] == "generate")
    assert generate["status"] == "fail" and "attempts" not in generate


def test_per_check_timeout_from_the_cli_stops_a_real_check(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The REAL probe (the CPU stack of the test interpreter): lora-train needs seconds;
    --check-timeout 0.5 stops it."""
    from cpu_stack import stack_site

    site = stack_site()
    if site is None:
        pytest.skip("this interpreter holds no CPU stack (torch, transformers, peft): run through "
                    "`nox -s tests`")
    sites = [site]

    monkeypatch.setattr(pipeline, "choose_resolver", lambda opts, resolve: fc.stand_in_resolve)
    fc.use_runner("venv", lambda *_: VenvRunner(
        venv_root=tmp_path / "venvs", no_install=True, extra_sites=(sites[0],), probes_root=ROOT,
        base_python=sys.executable), monkeypatch.setattr)
    # 5000 steps take minutes on any CPU: only the 0.5 s per-check timeout can end the check in time
    # (12 steps once finished in 0.38 s on a fast CI machine, before the timeout could fire).
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", ["5.17.0"], checks=("lora-train",),
                             check_timeout_s=600,
                             lora_steps=5000)
    summary = run_matrix(_opts(matrix, tmp_path / "reports", "venv", check_timeout_s=0.5,
                               flaky_rerun=False),
                         echo=lambda _: None)
    (path,) = (summary.run_dir / "cells").glob("*.json")
    result = load_result(path)
    assert isinstance(result, CellResult)
    (check,) = [c for c in result.checks if c["name"] == "lora-train.hf-peft"]
    assert check["status"] == "infra", check
    assert "timeout" in json.dumps(check).lower() and check["duration_s"] < 30, check
    spec_settings = json.loads((summary.run_dir / "run.json").read_text())
    assert spec_settings["runner"] == "venv"
    _count("check-timeout")


def test_a_probe_stopped_at_the_cell_limit_leaves_what_had_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The REAL probe, stopped by the cell's time limit inside a check that never ends (an xformers
    whose attention operator sleeps, built here): the cell is infra (timeout), and the checks that
    had finished (imports) are kept as evidence in partial/<cell>.json, named in the outcome, and
    not read as the cell's result."""
    from cpu_stack import stack_site

    site = stack_site()
    if site is None:
        pytest.skip("this interpreter holds no CPU stack (torch, transformers, peft): run through "
                    "`nox -s tests`")
    hanging = tmp_path / "hanging-site"
    (hanging / "xformers" / "ops").mkdir(parents=True)
    (hanging / "xformers" / "__init__.py").write_text("__version__ = '0.0.35'\n")
    (hanging / "xformers" / "ops" / "__init__.py").write_text(
        "def memory_efficient_attention(*args, **kwargs):\n"
        "    import time\n    time.sleep(3600)\n")
    (hanging / "xformers-0.0.35.dist-info").mkdir()
    (hanging / "xformers-0.0.35.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: xformers\nVersion: 0.0.35\n")
    (hanging / "xformers-0.0.35.dist-info" / "RECORD").write_text("")

    monkeypatch.setattr(pipeline, "choose_resolver", lambda opts, resolve: fc.stand_in_resolve)
    fc.use_runner("venv", lambda *_: VenvRunner(
        venv_root=tmp_path / "venvs", no_install=True, extra_sites=(site, hanging),
        probes_root=ROOT, base_python=sys.executable), monkeypatch.setattr)
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", ["5.17.0"], checks=("imports", "kernels"),
                             cell_timeout_s=30)
    text = matrix.read_text().replace('xformers: [none]', 'xformers: ["0.0.35"]')
    matrix.write_text(text)
    summary = run_matrix(_opts(matrix, tmp_path / "reports", "venv", flaky_rerun=False),
                         echo=lambda _: None)
    (outcome_path,) = (summary.run_dir / "outcomes").glob("*.json")
    outcome = json.loads(outcome_path.read_text())
    assert outcome["status"] == "infra" and outcome["signature"] == "timeout", outcome
    assert outcome["result"] is None and not list((summary.run_dir / "cells").glob("*.json"))
    assert outcome["partial"] == f"partial/{outcome['cell']}.json", outcome
    assert "1 check had finished (1 pass)" in outcome["reason"], outcome
    kept = json.loads((summary.run_dir / outcome["partial"]).read_text())
    assert [(c["name"], c["status"]) for c in kept["checks"]] == [("imports", "pass")], kept
    verdict = json.loads((summary.run_dir / "summary.json").read_text())["verdict"]
    assert "1 infra" in verdict, verdict


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def test_full_reports_disk_stops_cleanly_and_keeps_what_finished(
    probes_root: Path,
    venv_settings: dict,
    tiny_disk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fc.install(probes_root, venv_settings, monkeypatch.setattr)

    made = registry.get("venv").create
    fills: list[Path] = []

    class FillsTheDiskOnTheSecondCell:
        def __init__(self) -> None:
            self.inner, self.calls = made(None, tmp_path, None, None), 0
            self.name, self.notes = self.inner.name, self.inner.notes

        def prepare(self, cell: Any, lock: Any) -> Any:
            return self.inner.prepare(cell, lock)

        def run(self, *args: Any, **kw: Any) -> Any:
            self.calls += 1
            if self.calls == 2 and not fills:  # once: the resume below runs with room
                # The scheduler hands the device on before the first cell has written its outcome;
                # fill only once that cell is done, so "the first cell finished" is what is tested.
                run_dir = Path(args[2]).parent.parent
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not any(
                    json.loads(p.read_text()).get("stage") == "done"
                    for p in (run_dir / "outcomes").glob("*.json")
                ):
                    time.sleep(0.1)
                fills.append(_fill(tiny_disk))
            return self.inner.run(*args, **kw)

    fc.use_runner("venv", lambda *_: FillsTheDiskOnTheSecondCell(), monkeypatch.setattr)
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", [fc.OK, fc.OK2, fc.OK3])
    summary = run_matrix(_opts(matrix, tiny_disk / "reports", "venv"), echo=lambda _: None)
    assert fills and summary.stopped and "full" in summary.stopped, summary
    run = summary.run_dir
    assert _assert_intact(run) == 1  # the first cell: finished before the disk filled, and intact
    manifest = json.loads((run / "run.json").read_text())
    assert not manifest.get("complete")  # resumable
    assert not [p for p in run.rglob("*.json") if p.stat().st_size == 0]
    _count("disk-full")

    fills[0].unlink()  # room again: the resume finishes the rest and keeps the first cell as it was
    first = next((run / "cells").glob("*.json"))
    before = first.read_bytes()
    resumed = run_matrix(_opts(matrix, tiny_disk / "reports", "venv", resume=run.name),
                         echo=lambda _: None)
    assert resumed.run_dir == run and resumed.stopped is None
    assert _assert_intact(run) == 3 and first.read_bytes() == before


# --- the harness SIGKILLed mid-run (CLI, subprocess) ---------------------------------------------

def _child(probes_root: Path, settings: dict, args: list[str],
           env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(fc.__file__)), str(probes_root),
                             json.dumps(settings), "--",
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            env={**os.environ, **(env or {})})


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _only_run(reports: Path) -> Path:
    runs = [
        p
        for p in reports.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    ]
    assert len(runs) == 1, runs
    return runs[0]


def test_harness_sigkilled_mid_run_resumes(probes_root: Path, venv_settings: dict,
                                           tmp_path: Path) -> None:
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", [fc.OK, fc.HANG, fc.OK2])
    reports = tmp_path / "reports"
    args = ["matrix", "--matrix", str(matrix), "--runner", "venv", "--cpu", "--reports",
            str(reports),
            "--timeout", "300"]
    child = _child(probes_root, venv_settings, args)
    pid_file: list[Path] = []
    try:
        run = _wait_for(lambda: reports.is_dir() and _only_run(reports), 120, "the run folder")

        def hanging() -> bool:
            pid_file[:] = (
                list((run / "work").glob("*/work/probe.pid")) if (run / "work").is_dir() else []
            )
            return bool(pid_file) and bool(
                list((run / "cells").glob("*.json")) if (run / "cells").is_dir() else []
            )

        _wait_for(hanging, 120, "the first result and the hanging probe")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        for path in pid_file:  # the probe outlives its harness (own session); end it by its pid
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(path.read_text()), signal.SIGKILL)
    _count("harness-sigkill")
    assert child.returncode == -signal.SIGKILL
    # whatever had finished (1 or 2 cells, in scheduler order) is whole
    finished = _assert_intact(run)
    assert finished >= 1 and not (run / "cells" / f"{pid_file[0].parent.parent.name}.json").exists()
    assert not json.loads((run / "run.json").read_text()).get("complete")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run / "cells").glob("*.json")}

    resumed = _child(probes_root, venv_settings, [*args, "--resume", run.name],
                     env={"PINMATRIX_FAKE_NO_HANG": "1"})
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out + err
    assert "kept from the interrupted run" in out + err
    assert _only_run(reports) == run and _assert_intact(run) == 3
    # finished cells not redone
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert json.loads((run / "run.json").read_text()).get("complete") is True


# --- the Docker daemon gone mid-run ------------------------------------------------------------

class SocketProxy:
    """A unix socket that relays to the real daemon's. Closing it is, for the harness behind it, the
    daemon going away (connections drop, new ones are refused), without touching the shared
    daemon."""

    def __init__(self, path: Path, target: str | None = None) -> None:
        host = os.environ.get("DOCKER_HOST", "")
        self.path = path
        self.target = target or (
            host[len("unix://") :] if host.startswith("unix://") else "/var/run/docker.sock"
        )
        self.conns: list[socket.socket] = []
        self.server: socket.socket | None = None

    def start(self) -> SocketProxy:
        self.path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(64)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def kill(self) -> None:
        if self.server is not None:
            # shutdown() first: close() alone does not wake a thread blocked in accept(), which
            # would
            # go on accepting; then no socket file at all, as when a daemon's socket is gone.
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)
            self.server.close()
            self.server = None
            self.path.unlink(missing_ok=True)
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self.conns.clear()


def test_docker_daemon_gone_mid_run_reports_infra_and_resumes(
    engine: Engine, probes_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Three cells at once: one finishes, two hang; then the daemon goes. The finished one stays,
    the two running ones become infra `engine-unreachable`, the harness exits 1 with a resume hint,
    and the resume (daemon back) finishes the two without redoing the first."""
    tmp = tmp_path_factory.mktemp("daemon-gone")
    sock = Path(f"/tmp/pm-proxy-{os.getpid()}.sock")
    proxy = SocketProxy(sock).start()
    matrix = fc.write_matrix(tmp / "matrix.yaml", [fc.OK, fc.HANG, fc.HANG2], cell_timeout_s=20)
    reports = tmp / "reports"
    settings = {"context_root": str(tmp / "ctx"), "memory": "256m"}
    env = {"DOCKER_HOST": f"unix://{sock}", "PINMATRIX_DOCKER": engine.client}
    args = ["matrix", "--matrix", str(matrix), "--runner", "docker", "--cpu", "--cpu-jobs", "3",
            "--reports", str(reports)]

    def hang_containers(running_only: bool = False) -> list[str]:
        fmt = "{{.Names}}"
        out = subprocess.run(engine.cmd("ps", *([] if running_only else ["-a"]), "--format", fmt),
                             capture_output=True, text=True).stdout
        return [n for n in out.split() if "tf4.0.3" in n or "tf4.0.9" in n]

    def ready() -> bool:
        done = list(reports.glob("*/cells/*.json")) if reports.is_dir() else []
        return bool(done) and len(hang_containers(running_only=True)) == 2

    child = _child(probes_root, settings, args, env)
    try:
        _wait_for(ready, 300, "the first result and both hanging containers")
        proxy.kill()  # the daemon, as the harness sees it, is gone
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
        for name in hang_containers():
            subprocess.run(engine.cmd("rm", "--force", name), capture_output=True)
    _count("engine-unreachable")
    assert child.returncode == 1, out + err
    assert "Traceback" not in err and "run stopped early" in err and "--resume" in err, err
    run = _only_run(reports)
    ids = _cell_ids(run)
    assert _assert_intact(run) == 1 and _outcome(run, ids[fc.OK])["stage"] == "done"
    for pin in (fc.HANG, fc.HANG2):
        gone = _outcome(run, ids[pin])
        assert (gone["status"], gone["signature"]) == ("infra", "engine-unreachable"), gone
    manifest = json.loads((run / "run.json").read_text())
    assert "unreachable" in manifest["stopped"] and not manifest.get("complete")
    assert (run / "summary.md").is_file()
    kept = run / "cells" / f"{ids[fc.OK]}.json"
    before = (kept.read_bytes(), kept.stat().st_mtime_ns)

    proxy = SocketProxy(sock).start()  # the daemon is back
    try:
        resumed = _child(probes_root, settings, [*args, "--resume", run.name], env)
        out, err = resumed.communicate(timeout=300)
    finally:
        proxy.kill()
        for name in hang_containers():
            subprocess.run(engine.cmd("rm", "--force", name), capture_output=True)
    # finished, with the two hanging cells infra (their timeout): exit 3, said once
    assert resumed.returncode == EXIT_INFRA, out + err
    assert "2 cells, one cause [timeout]" in out + err
    assert _assert_intact(run) == 1 and (kept.read_bytes(), kept.stat().st_mtime_ns) == before
    for pin in (fc.HANG, fc.HANG2):
        # judged this time: the cell timeout
        assert _outcome(run, ids[pin])["signature"] == "timeout"
    assert json.loads((run / "run.json").read_text()).get("complete") is True


# --- corrupted and foreign JSON in a reports folder ----------------------------------------------

def test_corrupted_and_foreign_json_are_reported_and_skipped(
    probes_root: Path, venv_settings: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fc.install(probes_root, venv_settings, monkeypatch.setattr)
    matrix = fc.write_matrix(tmp_path / "matrix.yaml", [fc.OK, fc.OK2])
    run = run_matrix(_opts(matrix, tmp_path / "reports", "venv"), echo=lambda _: None).run_dir
    good = sorted((run / "cells").glob("*.json"))
    text = good[0].read_text()
    planted = {
        "cells/truncated.json": text[: len(text) // 2],
        "cells/foreign.json": json.dumps({"name": "left-pad", "version": "1.3.0"}),
        "cells/future.json": json.dumps({**json.loads(text), "schema": 2}),
        "cells/lying.json": json.dumps({**json.loads(text),
                                        "checks": [{"name": "imports", "status": "great"}]}),
        "cells/binary.json": "\udcff",
        "outcomes/garbage.json": "{not json",
    }
    for rel, content in planted.items():
        (run / rel).write_bytes(content.encode("utf-8", "surrogateescape"))
    proc = subprocess.run([sys.executable, "-m", "pinmatrix", "report", "--run", str(run)],
                          capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    damaged = {d["path"] for d in summary["damaged"]}
    assert damaged >= set(planted), damaged
    assert {c["id"] for c in summary["cells"]} == {
        load_result(p).cell_id for p in good}  # type: ignore[union-attr]
    assert all(c["status"] == "works" for c in summary["cells"])
    md = (run / "summary.md").read_text()
    assert "## Damaged files (not merged)" in md and all(Path(rel).name in md for rel in planted)
    for rel in planted:
        assert isinstance(load_result(run / rel), Damaged) or rel.startswith("outcomes/")
    _count("damaged-input")


def test_zz_print_figures(pytestconfig: pytest.Config) -> None:
    """Closing figures for the CI log (runs last in this module)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[fault figures] injected: {sum(FAULT_COUNT.values())} "
              f"{dict(sorted(FAULT_COUNT.items()))}")
