"""The docker runner on the real engine: two real cells sharing the torch layer, the probe run
locked down, faults classified, planted secrets and hostile values kept where they belong.

Skips (with the reason) only when no Docker client with BuildKit exists; with
PINMATRIX_REQUIRE_DOCKER=1 (set by .ci/run) a missing engine or base image is a failure instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cpu_stack import download_wheels

from pinmatrix import interrupt
from pinmatrix.cell import Cell, Lock
from pinmatrix.containers.engine import Engine
from pinmatrix.environ import compile_cache
from pinmatrix.errors import InfraError
from pinmatrix.runners.base import Prepared, RunOutcome
from pinmatrix.runners.docker import DOCKERFILE, PROBES_DIR, DockerRunner
from probes import schema_check

pytestmark = pytest.mark.integration

TORCH = "2.13.0+cpu"
TRANSFORMERS = ("4.57.6", "5.17.0")
STACK = ("peft", "accelerate", "safetensors", "tokenizers")
WHEELHOUSE = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()[0])
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def made_images(engine: Engine) -> Iterator[list[str]]:
    """Tags this module built; removed afterwards so repeated runs do not fill the disk."""
    tags: list[str] = []
    yield tags
    for tag in set(tags):
        subprocess.run(engine.cmd("rmi", "--force", tag), capture_output=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docker-runner")


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def _compile(requirements: str, out: Path, constraint: Path | None = None) -> str:
    src = out.with_suffix(".in")
    src.write_text(requirements)
    cmd = [*_uv(), "pip", "compile", "--quiet", "--no-header", "--python-version", "3.11",
           "--python-platform", "x86_64-manylinux_2_28", "--find-links", str(WHEELHOUSE), str(src),
           "-o", str(out)]
    if constraint is not None:
        cmd += ["-c", str(constraint)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"uv pip compile failed:\n{proc.stderr}"
    return out.read_text()


@pytest.fixture(scope="module")
def locks(workdir: Path) -> dict[str, Lock]:
    """Real locks for two cells that differ only in the transformers pin.

    A nonce comment in torch.lock gives this test session its own torch layer, so the first build
    really installs torch and the second build has to reuse it (rather than both hitting an old
    cache).
    """
    assert any(WHEELHOUSE.glob(f"torch-{TORCH}-*.whl")), f"no torch {TORCH} wheel in {WHEELHOUSE}"
    torch_path = workdir / "torch.lock"
    torch_lock = _compile(f"torch=={TORCH}\n", torch_path) + f"# test nonce {uuid.uuid4().hex}\n"
    torch_path.write_text(torch_lock)
    out: dict[str, Lock] = {}
    for tf in TRANSFORMERS:
        full = _compile("\n".join([f"torch=={TORCH}", f"transformers=={tf}", *STACK]) + "\n",
                        workdir / f"tf{tf}.lock", constraint=torch_path)
        cell = _cell(tf)
        out[tf] = Lock(cell.id, "3.11", torch_lock, full)
    return out


def _cell(tf: str, **settings: Any) -> Cell:
    return Cell({"python": "3.11", "torch": TORCH, "transformers": tf}, checks=("imports",),
                settings={"device": "cpu", **settings})


def _sources(**overrides: Any) -> SimpleNamespace:
    base = dict(index_url=None, extra_index_urls=(), find_links=(str(WHEELHOUSE),),
                ca_bundle=str(CA_BUNDLE),
                torch_backend=None)
    base.update(overrides)
    return SimpleNamespace(**base)


def _layers(engine: Engine, tag: str) -> list[str]:
    proc = subprocess.run(engine.cmd("image", "inspect", "--format", "{{json .RootFS.Layers}}",
                                     tag),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _write_spec(path: Path, cell: Cell) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell.spec("0" * 64, "docker")))
    return path


@pytest.fixture(scope="module")
def built(engine: Engine, locks: dict[str, Lock], workdir: Path,
          made_images: list[str]) -> dict[str, Any]:
    # A snapshot of probes/: the tag covers the probes' content, and edits made while the suite runs
    # must not turn "the same cell" into a new one halfway through.
    probes = workdir / "probes-snapshot" / "probes"
    shutil.copytree(PROBES_DIR, probes, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    runner = DockerRunner(engine, _sources(), workdir / "reports", context_root=workdir / "ctx",
                          probes_dir=probes)
    prepared: dict[str, Prepared] = {}
    for tf in TRANSFORMERS:
        started = time.monotonic()
        prepared[tf] = runner.prepare(_cell(tf), locks[tf])
        TIMINGS[f"build tf{tf}"] = time.monotonic() - started
        made_images.append(prepared[tf].ref)
    return {"runner": runner, "prepared": prepared}


def test_second_cell_reuses_the_torch_layer_and_builds_faster(engine: Engine, built: dict[str, Any],
                                                              pytestconfig: pytest.Config) -> None:
    first, second = (built["prepared"][tf] for tf in TRANSFORMERS)
    assert not first.reused and not second.reused and first.ref != second.ref
    a, b = _layers(engine, first.ref), _layers(engine, second.ref)
    # base, uv, venv, COPY torch.lock, torch install: identical digests; the cell-specific rest
    # differs.
    torch_layer = 4
    assert a[:torch_layer + 1] == b[:torch_layer + 1]
    assert a[torch_layer + 2:-1] != b[torch_layer + 2:-1]
    history = subprocess.run(engine.cmd("history", "--no-trunc", "--format",
                                        "{{.Size}}\t{{.CreatedBy}}",
                                        second.ref), capture_output=True, text=True,
                             check=True).stdout
    assert any("locks/torch.lock" in line and "RUN" in line for line in history.splitlines())
    log = Path(second.details["build_log"]).read_text()
    torch_step = log.split("locks/torch.lock;", 1)[0].rsplit("#", 1)[-1]
    assert f"#{torch_step.split()[0]} CACHED" in log, (
        "the torch install step was not taken from the cache"
    )
    t1, t2 = TIMINGS[f"build tf{TRANSFORMERS[0]}"], TIMINGS[f"build tf{TRANSFORMERS[1]}"]
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # the CI log keeps these figures
        print(f"\n[docker timings] first build {t1:.1f}s; rebuild differing only in transformers "
              f"{t2:.1f}s")
    assert t2 < 0.8 * t1, f"rebuild {t2:.1f}s not much faster than first build {t1:.1f}s"


def test_unchanged_cell_is_not_rebuilt(built: dict[str, Any], locks: dict[str, Lock]) -> None:
    started = time.monotonic()
    again = built["runner"].prepare(_cell(TRANSFORMERS[0]), locks[TRANSFORMERS[0]])
    assert again.reused and again.ref == built["prepared"][TRANSFORMERS[0]].ref
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("tf", TRANSFORMERS)
def test_probe_runs_offline_as_non_root_and_returns_a_valid_result(
        engine: Engine, built: dict[str, Any], workdir: Path, tf: str) -> None:
    cell = _cell(tf)
    spec = _write_spec(workdir / "specs" / f"{tf}.json", cell)
    outcome: RunOutcome = built["runner"].run(built["prepared"][tf], spec, workdir / "out" / tf,
                                              None, 900)
    assert outcome.ok, f"{outcome.infra_reason} {outcome.signature}\n{outcome.log_tail}"
    assert outcome.result_path is not None
    result = json.loads(outcome.result_path.read_text())
    assert schema_check.validate(result, schema_check.load_schema()) == []
    assert result["cell"]["id"] == cell.id
    packages = result["environment"]["packages"]
    assert (
        packages["transformers"]["installed"] == tf and packages["transformers"]["imports"] is True
    )
    assert result["environment"]["torch"] == TORCH
    # the stack's volume was given
    assert result["environment"]["compile_cache"] in ("cold", "warm")
    imports = [c for c in result["checks"] if c["name"] == "imports"]
    assert imports and imports[0]["status"] == "pass"
    assert not any(p.name.startswith(".probe-") for p in outcome.result_path.parent.iterdir())
    image_user = subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Config.User}}",
                                           built["prepared"][tf].ref), capture_output=True,
                                text=True).stdout
    assert image_user.strip() == "1000:1000"


# -------------------------------------------------------------------------------------------------
# A fake probe in a small image (no torch): tells what it sees, or injects a fault on request.
FAKE_PROBE = r'''
import argparse, ctypes, json, os, socket, sys, time
p = argparse.ArgumentParser()
p.add_argument("--cell"); p.add_argument("--out"); p.add_argument("--work")
a = p.parse_args()
spec = json.load(open(a.cell))
fault = spec["settings"].get("fault", "none")
if fault == "segfault":
    ctypes.string_at(0)
if fault == "oom":
    hoard = []
    while True:
        hoard.append(bytearray(32 << 20))
if fault == "hang":
    time.sleep(3600)
if fault == "exit3":
    sys.exit(3)
def attempt(fn):
    try:
        fn(); return "ok"
    except Exception as exc:
        return type(exc).__name__
facts = {
    "uid": os.getuid(), "gid": os.getgid(), "pins": spec["pins"], "id": spec["id"],
    "dns": attempt(lambda: socket.getaddrinfo("pypi.org", 443)),
    "connect": attempt(lambda: socket.create_connection(("1.1.1.1", 80), timeout=3).close()),
    "root_write": attempt(lambda: open("/opt/pinmatrix/written", "w").close()),
    "spec_write": attempt(lambda: open(a.cell, "a").close()),
    "tmp_write": attempt(lambda: open("/tmp/written", "w").close()),
    "run_secrets": os.listdir("/run/secrets") if os.path.isdir("/run/secrets") else [],
    "sources_files": sorted(os.listdir("/opt/pinmatrix")),
    "env": dict(os.environ),
}
cc = os.environ.get("PINMATRIX_COMPILE_CACHE", "")
def cc_write():
    with open(os.path.join(cc, "written-by-probe"), "a") as handle:
        handle.write(a.out + "\n")
facts["compile_cache"] = {
    "dir": cc,
    "held_at_start": sorted(os.listdir(cc)) if cc and os.path.isdir(cc) else None,
    "owner": os.stat(cc).st_uid if cc and os.path.isdir(cc) else None,
    "mode": oct(os.stat(cc).st_mode & 0o777) if cc and os.path.isdir(cc) else None,
    "write": attempt(lambda: (os.makedirs(cc, exist_ok=True), cc_write())),
}
tmp = a.out + ".tmp"
json.dump(facts, open(tmp, "w"))
os.replace(tmp, a.out)
'''


@pytest.fixture(scope="module")
def planted() -> dict[str, str]:
    marker = uuid.uuid4().hex
    return {"token": f"hf_PLANTED{marker}", "ca": f"PLANTEDCA{marker}",
            "index": f"PLANTEDIDX{marker}"}


@pytest.fixture(scope="module")
def fake(engine: Engine, workdir: Path, made_images: list[str], planted: dict[str, str],
         built: dict[str, Any]) -> Iterator[dict[str, Any]]:
    # `built` first: the uv and venv layers then come from the cache, so the planted (unreachable)
    # index is mounted into the steps that run here without being needed for a download.
    probes = workdir / "fake-probes" / "probes"
    probes.mkdir(parents=True)
    (probes / "__init__.py").write_text("")
    (probes / "__main__.py").write_text(FAKE_PROBE)
    ca = workdir / "planted-ca.pem"
    ca.write_text(f"# {planted['ca']}\n" + CA_BUNDLE.read_text())
    sources = _sources(ca_bundle=str(ca),
                       index_url=f"https://{planted['index']}@pypi.invalid/simple",
                       extra_index_urls=(f"https://x:{planted['index']}@mirror.invalid/simple",))
    runner = DockerRunner(engine, sources, workdir / "reports", probes_dir=probes.parent / "probes",
                          memory="256m", context_root=workdir / "ctx")
    nonce = f"# fake cell {uuid.uuid4().hex}\n"
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = planted["token"]
    try:
        prepared = runner.prepare(_cell("fake"), Lock("fake-cell", "3.11", nonce, nonce))
    finally:
        if old is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = old
    made_images.append(prepared.ref)
    yield {"runner": runner, "prepared": prepared}
    volume = compile_cache.volume_name(prepared.details["compile_key"])
    subprocess.run(engine.cmd("volume", "rm", "--force", volume), capture_output=True)


def _run_fake(fake: dict[str, Any], workdir: Path, name: str, timeout_s: float = 120,
              **settings: Any) -> RunOutcome:
    cell = _cell("fake", **settings)
    spec = _write_spec(workdir / "specs" / f"fake-{name}.json", cell)
    return fake["runner"].run(fake["prepared"], spec, workdir / "out" / f"fake-{name}", None,
                              timeout_s)


def test_container_is_offline_non_root_and_read_only(fake: dict[str, Any], workdir: Path) -> None:
    outcome = _run_fake(fake, workdir, "facts")
    assert outcome.ok, outcome
    facts = json.loads(outcome.result_path.read_text())  # type: ignore[union-attr]
    assert (facts["uid"], facts["gid"]) == (1000, 1000)
    assert facts["dns"] != "ok" and facts["connect"] != "ok"
    assert facts["root_write"] != "ok" and facts["spec_write"] != "ok"
    assert facts["tmp_write"] == "ok"
    assert facts["run_secrets"] == []  # BuildKit leaves the empty mount point, never a secret file


def test_compile_cache_volume_outlives_the_container_and_only_the_probe_user_can_write_it(
        engine: Engine, fake: dict[str, Any], workdir: Path) -> None:
    """The stack's named volume: empty and owner-only (uid 1000, 0700, as unsloth demands) on first
    use, holding what the first run wrote on the second; --no-compile-cache gives an empty
    folder."""
    # a stack of its own: the other fake runs share the fake's volume
    key = f"test{uuid.uuid4().hex[:12]}"
    prepared = dataclasses.replace(fake["prepared"], details={**fake["prepared"].details,
                                                              "compile_key": key})
    spec = _write_spec(workdir / "specs" / "fake-cc.json", _cell("fake"))
    try:
        runs = (fake["runner"].run(prepared, spec, workdir / "out" / f"fake-cc-{n}", None, 120)
                for n in (1, 2))
        first, second = (json.loads(run.result_path.read_text())  # type: ignore[union-attr]
                         for run in runs)
        volumes = subprocess.run(engine.cmd("volume", "ls", "--quiet", "--filter",
                                            f"label={compile_cache.VOLUME_LABEL}={key}"),
                                 capture_output=True, text=True, check=True).stdout.split()
    finally:
        subprocess.run(engine.cmd("volume", "rm", "--force", compile_cache.volume_name(key)),
                       capture_output=True)
    assert volumes == [compile_cache.volume_name(key)]
    cc1, cc2 = first["compile_cache"], second["compile_cache"]
    assert cc1["dir"] == compile_cache.CONTAINER_PATH
    assert (cc1["held_at_start"], cc1["owner"], cc1["mode"],
            cc1["write"]) == ([], 1000, "0o700", "ok")
    assert cc2["held_at_start"] == ["written-by-probe"] and cc2["write"] == "ok"
    for name, sub in compile_cache.TOOL_SUBFOLDERS.items():
        assert first["env"][name] == f"{compile_cache.CONTAINER_PATH}/{sub}"

    cold_runner = DockerRunner(engine, fake["runner"].sources, workdir / "reports",
                               probes_dir=fake["runner"].probes_dir,
                               memory="256m", context_root=workdir / "ctx", compile_cache=False)
    spec = _write_spec(workdir / "specs" / "fake-cc-cold.json", _cell("fake"))
    cold = json.loads(cold_runner.run(fake["prepared"], spec, workdir / "out" / "fake-cc-cold",
                                      None, 120)
                      .result_path.read_text())["compile_cache"]  # type: ignore[union-attr]
    assert cold["dir"] == compile_cache.COLD_CONTAINER_PATH and cold["held_at_start"] is None
    assert cold["write"] == "ok"   # the container's own /tmp: gone with the container


def test_planted_secrets_appear_nowhere(engine: Engine, fake: dict[str, Any], workdir: Path,
                                        planted: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", planted["token"])
    outcome = _run_fake(fake, workdir, "secrets")
    assert outcome.ok
    ref = fake["prepared"].ref
    history = subprocess.run(engine.cmd("history", "--no-trunc", ref), capture_output=True,
                             text=True,
                             check=True).stdout
    inspect = subprocess.run(engine.cmd("image", "inspect", ref), capture_output=True, text=True,
                             check=True).stdout
    build_log = Path(fake["prepared"].details["build_log"]).read_text()
    result = outcome.result_path.read_text()  # type: ignore[union-attr]
    saved = subprocess.run(engine.cmd("save", ref), capture_output=True, check=True).stdout
    assert len(saved) > 1_000_000  # the whole image, every layer
    assert "/run/secrets/ca_bundle" in build_log or "secret" in history  # the secrets were in play
    for value in planted.values():
        for name, text in (("docker history", history), ("docker inspect", inspect),
                           ("build log", build_log), ("result", result),
                           ("run log", outcome.log_tail)):
            assert value not in text, f"{value} leaked into {name}"
        assert value.encode() not in saved, f"{value} baked into an image layer"


def test_hostile_values_reach_docker_only_as_arguments(engine: Engine, fake: dict[str, Any],
                                                       workdir: Path,
                                                       made_images: list[str]) -> None:
    canary = Path(f"/tmp/pinmatrix-pwned-{uuid.uuid4().hex}")
    hostile = [f"5.17.0; touch {canary}", f"$(touch {canary})", f"`touch {canary}`",
               f"x' && touch {canary} #"]
    cell = Cell({"python": "3.11", "transformers": hostile[0], "peft": hostile[1],
                 "trl": hostile[2],
                 "unsloth": hostile[3]}, checks=("imports",), settings={"device": "cpu"})
    spec = _write_spec(workdir / "specs" / "hostile.json", cell)
    runner: DockerRunner = fake["runner"]
    outcome = runner.run(fake["prepared"], spec, workdir / "out" / "hostile", None, 120)
    assert outcome.ok, outcome
    facts = json.loads(outcome.result_path.read_text())  # type: ignore[union-attr]
    # arrived verbatim, not interpreted
    assert facts["pins"] == dict(cell.pins) and facts["id"] == cell.id

    # A lock and a cell id carrying shell syntax: the label keeps the exact string; uv rejects the
    # line.
    nonce = f"# hostile {uuid.uuid4().hex}\n"
    bad_lock = Lock(f"cell {hostile[1]} {hostile[0]}", "3.11", nonce,
                    f"transformers==5.17.0; rm -rf {canary}\n")
    with pytest.raises(InfraError) as err:
        runner.prepare(cell, bad_lock)
    assert err.value.signature and err.value.signature.startswith("build-")
    with pytest.raises(InfraError):
        runner.prepare(cell, Lock("c", f"3.11; touch {canary}", nonce, nonce))
    assert not canary.exists(), "a hostile value was executed by a shell"


def test_segfault_is_classified(fake: dict[str, Any], workdir: Path) -> None:
    outcome = _run_fake(fake, workdir, "segv", fault="segfault")
    assert outcome.result_path is None and outcome.signature == "probe-segfault"


def test_oom_kill_is_classified(fake: dict[str, Any], workdir: Path) -> None:
    outcome = _run_fake(fake, workdir, "oom", fault="oom")
    assert outcome.result_path is None and outcome.signature == "container-oom-killed", outcome


def test_hang_is_killed_at_the_cell_timeout(engine: Engine, fake: dict[str, Any],
                                            workdir: Path) -> None:
    started = time.monotonic()
    outcome = _run_fake(fake, workdir, "hang", timeout_s=5, fault="hang")
    assert outcome.signature == "timeout" and outcome.result_path is None
    assert time.monotonic() - started < 60
    left = subprocess.run(engine.cmd("ps", "-a", "--filter", "name=pinmatrix-", "--format",
                                     "{{.Names}}"),
                          capture_output=True, text=True).stdout
    assert "fake" not in left, f"container left behind: {left}"


def test_no_result_is_classified(fake: dict[str, Any], workdir: Path) -> None:
    outcome = _run_fake(fake, workdir, "exit3", fault="exit3")
    assert outcome.result_path is None and outcome.signature == "probe-exit-3"


def test_interrupt_kills_the_running_container(engine: Engine, fake: dict[str, Any],
                                               workdir: Path) -> None:
    """Ctrl-C or SIGTERM to the harness alone (pinmatrix.interrupt) stops a running probe
    container at once and says so, instead of waiting for the cell timeout."""

    timer = threading.Timer(5, interrupt.INTERRUPTED.set)
    started = time.monotonic()
    timer.start()
    try:
        outcome = _run_fake(fake, workdir, "interrupted", timeout_s=600, fault="hang")
    finally:
        timer.cancel()
        interrupt.INTERRUPTED.clear()
    assert outcome.signature == "interrupted" and outcome.result_path is None, outcome
    assert time.monotonic() - started < 120
    left = subprocess.run(engine.cmd("ps", "-a", "--filter", "name=pinmatrix-", "--format",
                                     "{{.Names}}"),
                          capture_output=True, text=True).stdout
    assert "fake" not in left, f"container left behind: {left}"


def test_offline_build_takes_everything_from_the_wheelhouse(engine: Engine, locks: dict[str, Lock],
                                                            workdir: Path,
                                                            made_images: list[str]) -> None:
    """--offline (an air-gapped host such as the lent H200s): the image builds with --network none
    from the wheelhouse alone, uv's wheel included; without uv's wheel it fails at the bootstrap,
    naming uv, instead of reaching for an index."""
    torch_lock = locks[TRANSFORMERS[0]].torch_lock
    pinned = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", torch_lock, re.M)
    uv_version = re.search(r"^ARG UV_VERSION=(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    wheels = workdir / "offline-wheels"
    wheels.mkdir()
    torch_wheel = next(WHEELHOUSE.glob(f"torch-{TORCH}-*.whl"))
    os.link(torch_wheel, wheels / torch_wheel.name)
    download_wheels(wheels, [f"{n}=={v}" for n, v in pinned if n != "torch"]
                     + [f"uv=={uv_version}"])
    cell = _cell(TRANSFORMERS[0])
    lock = Lock(cell.id, "3.11", torch_lock, torch_lock)
    runner = DockerRunner(engine, _sources(find_links=(str(wheels),), offline=True),
                          workdir / "reports-offline", context_root=workdir / "ctx-offline")
    prepared = runner.prepare(cell, lock)
    made_images.append(prepared.ref)
    log = Path(prepared.details["build_log"]).read_text()
    assert "--network none" in log and "OFFLINE=1" in log
    proc = subprocess.run(engine.cmd("run", "--rm", "--network", "none", prepared.ref, "python",
                                     "-c", "import torch; print(torch.__version__)"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == TORCH, proc.stderr[-2000:]

    for uv_wheel in wheels.glob("uv-*.whl"):
        uv_wheel.unlink()
    lacking = DockerRunner(engine, _sources(find_links=(str(wheels),), offline=True),
                           workdir / "reports-offline-2", context_root=workdir / "ctx-offline-2")
    # another lock text, so that the image above (same tag) is not simply reused
    other = torch_lock + f"# no uv wheel {uuid.uuid4().hex}\n"
    with pytest.raises(InfraError) as caught:
        lacking.prepare(cell, Lock(cell.id, "3.11", other, other))
    assert caught.value.signature == "build-install-unsatisfiable", caught.value
    log = (workdir / "reports-offline-2" / "logs" / f"{cell.id}.build.log").read_text()
    assert f"No matching distribution found for uv=={uv_version}" in log
