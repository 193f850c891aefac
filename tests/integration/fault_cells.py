"""Cells that misbehave on purpose, for the pipeline-level fault tests (test_faults.py,
test_shards_concurrent.py).

A stand-in probe (`probes/__main__.py` of a small folder this module writes) replaces the real one:
it needs no torch, so a cell builds in seconds, and it injects a fault chosen by the cell's
transformers pin. Every other part is the real thing: the matrix loader, the pipeline and its
scheduler, the Docker runner on the real engine (or the venv runner), result validation, outcome
records and the report.

The one other stand-in is the resolver: the stand-in probe needs no package, so every cell gets an
empty lock (only a comment) instead of asking uv for torch; the build-failure cell gets a lock
naming a package that exists nowhere, so its image build fails for real inside BuildKit.

`child_main()` applies the same stand-ins in a fresh process (for the SIGKILL, daemon and shard
tests): `python fault_cells.py PROBES_ROOT RUNNER_SETTINGS_JSON -- <pinmatrix CLI arguments>`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pinmatrix.run.pipeline as pipeline
from pinmatrix.cell import Lock
from pinmatrix.cli.main import main
from pinmatrix.runners import registry
from pinmatrix.runners.docker import DockerRunner
from pinmatrix.runners.venv import VenvRunner

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# transformers pin → what the stand-in probe does
OK, OK2, OK3, OK4 = "4.0.0", "4.0.6", "4.0.7", "4.0.8"
SEGFAULT, OOM, HANG, BUILD_FAILS, FLAKY, HANG2 = (
    "4.0.1",
    "4.0.2",
    "4.0.3",
    "4.0.4",
    "4.0.5",
    "4.0.9",
)
FAULTS = {SEGFAULT: "segfault", OOM: "oom", HANG: "hang", HANG2: "hang", FLAKY: "flaky"}
MISSING_PACKAGE = "pinmatrix-no-such-package-anywhere==0.0.0"

STAND_IN_PROBE = r'''
"""Stand-in probe for pinmatrix fault tests: stdlib only, a fault chosen by the transformers pin."""
import argparse, ctypes, json, os, sys, time
from datetime import datetime, timezone

FAULTS = __FAULTS__
p = argparse.ArgumentParser()
p.add_argument("--cell"); p.add_argument("--out"); p.add_argument("--work"); p.add_argument("--only")
a = p.parse_args()
spec = json.load(open(a.cell))
pins = {k: str(v) for k, v in spec["pins"].items()}
fault = FAULTS.get(pins.get("transformers"), "none")
work = a.work or "/tmp/work"
os.makedirs(work, exist_ok=True)
print(f"[stand-in probe] cell {spec['id']} fault {fault} checks {spec['checks']}", file=sys.stderr, flush=True)
started = datetime.now(timezone.utc).isoformat()
time.sleep(float(os.environ.get("PINMATRIX_FAKE_PROBE_SLEEP", "0") or 0))
if fault == "segfault":
    ctypes.string_at(0)
if fault == "oom":
    hoard = []
    while True:
        hoard.append(bytearray(32 << 20))
if fault == "hang" and not os.environ.get("PINMATRIX_FAKE_NO_HANG"):
    with open(os.path.join(work, "probe.pid"), "w") as fh:  # so a test can end an orphaned probe
        fh.write(str(os.getpid()))
    time.sleep(3600)

def check(group):
    if group == "generate" and fault == "flaky":
        # Genuinely stateful: the op fails on the first call per work folder and works afterwards.
        marker = os.path.join(work, "flaky-op.warmed")
        if not os.path.exists(marker):
            open(marker, "w").close()
            return {"name": "generate", "status": "fail", "duration_s": 0.01,
                    "error": {"type": "RuntimeError", "message": "op failed on its first call (cold cache)",
                              "signature": "stand-in-cold-op"}}
    evidence = {"stand_in": 1}
    hf = os.environ.get("HF_HOME")
    if group == "imports" and hf and os.path.isdir(hf):  # what a cell sees of the prefetched model cache
        evidence["hf_snapshots"] = sorted(p for p in os.popen(f"find {hf}/hub -path '*/snapshots/*' -maxdepth 3").read().split())
        try:
            open(os.path.join(hf, "written"), "w").close()
            evidence["hf_writable"] = True
        except OSError:
            evidence["hf_writable"] = False
        evidence["env_keys"] = sorted(os.environ)
    return {"name": group, "status": "pass", "duration_s": 0.01, "evidence": evidence}

doc = {"schema": 1, "cell": {"id": spec["id"], "hash": spec["hash"], "pins": pins},
       "environment": {"python": sys.version.split()[0], "device": "cpu", "packages": {}},
       "checks": [check(g) for g in spec["checks"]],
       "started": started, "finished": datetime.now(timezone.utc).isoformat()}
if spec.get("runner"):
    doc["cell"]["runner"] = spec["runner"]
tmp = a.out + ".tmp"
with open(tmp, "w") as fh:
    json.dump(doc, fh)
os.replace(tmp, a.out)
'''  # noqa: E501 (page/script/data text, kept byte for byte)


def write_stand_in_probes(root: Path) -> Path:
    """`root/probes/` holding the stand-in probe; returns root (the folder that holds `probes/`)."""
    probes = Path(root) / "probes"
    probes.mkdir(parents=True, exist_ok=True)
    (probes / "__init__.py").write_text("")
    (probes / "__main__.py").write_text(STAND_IN_PROBE.replace("__FAULTS__", repr(FAULTS)))
    return Path(root)


def write_matrix(path: Path, transformers: list[str], *,
                 checks: tuple[str, ...] = ("imports", "generate"),
                 cell_timeout_s: float = 600, check_timeout_s: float = 600,
                 lora_steps: int = 12) -> Path:
    axes = ", ".join(f'"{v}"' for v in transformers)
    path.write_text(
        textwrap.dedent(f"""\
        axes:
          python: ["3.11"]
          base_image: ["pinmatrix/base:bookworm-py311"]
          torch: ["2.13.0+cpu"]
          transformers: [{axes}]
          peft: ["0.21.2"]
          unsloth: [none]
          xformers: [none]
          flash-attn: [none]
          bitsandbytes: [none]
        models:
          exaone3.5: {{repo: LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct, revision: 0123456789abcdef0123456789abcdef01234567, kind: remote-code}}
        checks: [{", ".join(checks)}]
        settings:
          device: cpu
          check_timeout_s: {check_timeout_s}
          cell_timeout_s: {cell_timeout_s}
          lora_steps: {lora_steps}
        """)  # noqa: E501 (page/script/data text, kept byte for byte)
    )
    return path


def write_model_hub(hub: Path, repo: str = "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
                    commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A local folder standing in for a hub (pinmatrix/run/fetch.py layout) with one tiny model at
    `commit`."""
    snap = Path(hub) / repo / commit
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "exaone", "auto_map": {}}))
    (snap / "model.safetensors").write_bytes(b"\0" * 64)
    (snap / "modeling_exaone.py").write_text("# stand-in remote code\n")
    refs = Path(hub) / repo / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(commit)
    return Path(hub)


def stand_in_resolve(cell: Any, sources: Any, lock_dir: Path) -> Any:
    stamp = "# pinmatrix fault tests: the stand-in probe needs no package\n"
    # Real locks of different cells differ; so do these (the result cache keys on the lock's
    # content).
    full = (
        stamp
        + f"# cell {cell.id}\n"
        + (MISSING_PACKAGE + "\n" if cell.pins.get("transformers") == BUILD_FAILS else "")
    )
    lock_dir = Path(lock_dir)
    (lock_dir / "torch.lock").write_text(stamp)
    (lock_dir / "requirements.lock").write_text(full)
    return Lock(cell.id, "3.11", stamp, full)


def install(probes_root: Path, settings: dict[str, Any], patch: Any = None) -> None:
    """Point the pipeline at the stand-ins. `patch(obj, name, value)`: pytest's monkeypatch.setattr,
    or setattr."""

    setter = patch or setattr
    # The pipeline asks choose_resolver for the per-cell resolver (uv's, resolved up front in
    # parallel, or
    # the --no-install one); the stand-in replaces that choice.
    setter(pipeline, "choose_resolver", lambda opts, resolve: stand_in_resolve)

    def docker_runner(opts: Any, run_dir: Path, engine: Any, base_image: str | None) -> Any:
        wheels = os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()[0]
        ca = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        sources = SimpleNamespace(index_url=None, extra_index_urls=(), find_links=(wheels,),
                                  ca_bundle=ca,
                                  torch_backend=None)
        return DockerRunner(
            engine,
            sources,
            run_dir,
            cpu_only=True,
            probes_dir=Path(probes_root) / "probes",
            memory=settings.get("memory", "256m"),
            hf_home=Path(opts.model_cache) if getattr(opts, "model_cache", None) else None,
            context_root=Path(settings["context_root"]),
        )

    def venv_runner(opts: Any, run_dir: Path, engine: Any, base_image: str | None) -> Any:
        return VenvRunner(venv_root=Path(settings["venv_root"]), no_install=True,
                          probes_root=Path(probes_root),
                          base_python=settings.get("base_python") or sys.executable)

    use_runner("docker", docker_runner, setter)
    use_runner("venv", venv_runner, setter)


def use_runner(name: str, factory: Any, patch: Any = None) -> None:
    """Make the registry's `name` kind build its runners with `factory(settings, run_dir, engine,
    base_image)` (pinmatrix/runners/base.py RunnerFactory); `patch` as in `install`."""

    kinds = {**registry.RUNNERS, name: dataclasses.replace(registry.get(name), create=factory)}
    (patch or setattr)(registry, "RUNNERS", kinds)


def child_main(argv: list[str]) -> int:
    probes_root, settings_json, sep, *cli = argv
    assert sep == "--", argv
    install(Path(probes_root), json.loads(settings_json))

    return main(cli)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
