"""Cell results made by the real probe (not hand-written JSON), for the results and report tests.

Each stack is the ready CPU venv plus, for the broken ones, a real package built here whose import
fails: an `xformers` whose import raises the catalogued "can't load C++/CUDA extensions" error, and
a `trl` whose import raises an error no catalogue entry knows. The probe runs once per probes/
digest; the results are cached in pytest's cache folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cpu_stack import probe_python

from pinmatrix.probes_source import probes_digest
from pinmatrix.run.options import REPO_ROOT

PROBE_PYTHON = probe_python()
BASE_PINS = {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.17.0", "peft": "0.21.2",
             "unsloth": "none"}

BROKEN_PACKAGES = {
    # name: (version, module source)
    "xformers": ("0.0.35",
                 "raise ImportError(\"xFormers can't load C++/CUDA extensions. xFormers was built "
                 "for: PyTorch 2.8.0+cu128 with CUDA 1208 (you have 2.13.0+cpu)\")\n"),
    "trl": ("0.99.0",
            "raise RuntimeError('trl self-test 42 went sideways in a way nobody has "
            "catalogued')\n"),
}

# An xformers that imports (with the warning real xformers gives when its extensions were built for
# another torch) but whose operators do not run: what the H100 and H200 saw with xformers 0.0.35.
WARNING_XFORMERS = {
    "__init__.py": (
        "import warnings\n__version__ = '0.0.35'\n"
        "warnings.warn(\"xFormers can't load C++/CUDA extensions. xFormers was built for: PyTorch "
        "2.10.0+cu128 with CUDA 1208 (you have 2.13.0+cpu)\")\n"),
    "ops/__init__.py": (
        "def memory_efficient_attention(*args, **kwargs):\n"
        "    raise NotImplementedError('memory_efficient_attention: the C++/CUDA extensions of "
        "this xformers build are not loaded')\n"),
}
# Stacks whose results hold the EXAONE 3.5 routes (tiny fixtures on the CPU) besides the imports.
ROUTE_CHECKS = ["imports", "kernels", "exaone3.5", "attention", "lora-train"]
ROUTE_STACKS = {
    "routes": {},
    "routes-xformers-ops": WARNING_XFORMERS,   # imports pass, kernel.xformers fails (optional)
    "routes-xformers-import": {"__init__.py": BROKEN_PACKAGES["xformers"][1]},  # imports fail
}

STACKS = {
    "good": ({}, ()),
    "xformers-broken": ({"xformers": "0.0.35"}, ("xformers",)),
    "trl-broken": ({"trl": "0.99.0"}, ("trl",)),
}


def _site_with(packages: tuple[str, ...], site: Path) -> Path:
    for name in packages:
        version, source = BROKEN_PACKAGES[name]
        (site / name).mkdir(parents=True, exist_ok=True)
        (site / name / "__init__.py").write_text(source)
        dist = site / f"{name}-{version}.dist-info"
        dist.mkdir(exist_ok=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (dist / "RECORD").write_text("")
    return site


def _package(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    for rel, source in files.items():
        (site / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / name / rel).write_text(source)
    dist = site / f"{name}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "RECORD").write_text("")


@contextmanager
def _only_one_maker(folder: Path) -> Iterator[None]:
    """One process at a time checks and makes `folder`: under pytest-xdist two workers found it
    incomplete at once, and one's rmtree removed the other's packages while its probe imported
    them (a fingerprint instead of xformers-extensions-not-loaded in the report tests)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def route_spec_for(stack: str) -> dict:
    pins = {**BASE_PINS, "xformers": "0.0.35" if ROUTE_STACKS[stack] else "none"}
    return {"id": f"py3.11-torch2.13.0+cpu-{stack}", "hash": f"hash-{stack}", "pins": pins,
            "runner": "venv", "models": [], "checks": ROUTE_CHECKS,
            "settings": {"device": "cpu", "lora_steps": 12}}


def real_route_results(cache_root: Path) -> dict[str, Path]:
    """stack name -> a result of `python -m probes` with the EXAONE 3.5 routes (ROUTE_STACKS), once
    per probes/ digest. The transformers is the probe stack's own: the tests read what the routes
    did from the results, never assume it."""
    folder = Path(cache_root) / f"routes-{probes_digest()[:16]}"
    wanted = {stack: folder / f"{stack}.json" for stack in ROUTE_STACKS}
    with _only_one_maker(folder):
        if all(p.is_file() for p in wanted.values()):
            return wanted
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        procs = []
        for stack, out in wanted.items():
            work = folder / f"{stack}.work"
            site = work / "site"
            site.mkdir(parents=True)
            if ROUTE_STACKS[stack]:
                _package(site, "xformers", "0.0.35", ROUTE_STACKS[stack])
            spec = work / "cell.json"
            spec.write_text(json.dumps(route_spec_for(stack)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(site)])}
            procs.append((stack, subprocess.Popen(
                [str(PROBE_PYTHON), "-m", "probes", "--cell", str(spec), "--out", str(out),
                 "--work", str(work / "w")],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        for stack, proc in procs:
            output, _ = proc.communicate(timeout=1200)
            if proc.returncode != 0 or not wanted[stack].is_file():
                raise RuntimeError(f"the probe failed for stack {stack} (exit "
                                   f"{proc.returncode}):\n{output[-3000:]}")
        return wanted


def spec_for(stack: str) -> dict:
    extra_pins, _ = STACKS[stack]
    pins = {**BASE_PINS, **extra_pins}
    cell_id = f"py3.11-torch2.13.0+cpu-tf5.17.0-{stack}"
    return {"id": cell_id, "hash": f"hash-{stack}", "pins": pins, "runner": "venv", "models": [],
            "checks": ["imports", "kernels"], "settings": {"device": "cpu"}}


def real_results(cache_root: Path) -> dict[str, Path]:
    """stack name -> a result file written by `python -m probes` for that stack."""
    folder = Path(cache_root) / probes_digest()[:16]
    wanted = {stack: folder / f"{stack}.json" for stack in STACKS}
    with _only_one_maker(folder):
        if all(p.is_file() for p in wanted.values()):
            return wanted
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        procs = []
        for stack, out in wanted.items():
            work = folder / f"{stack}.work"
            site = _site_with(STACKS[stack][1], work / "site")
            site.mkdir(parents=True, exist_ok=True)
            spec = work / "cell.json"
            spec.write_text(json.dumps(spec_for(stack)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(site)])}
            procs.append((stack, subprocess.Popen(
                [str(PROBE_PYTHON), "-m", "probes", "--cell", str(spec), "--out", str(out),
                 "--work", str(work / "w")],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        for stack, proc in procs:
            output, _ = proc.communicate(timeout=600)
            if proc.returncode != 0 or not wanted[stack].is_file():
                raise RuntimeError(f"the probe failed for stack {stack} (exit "
                                   f"{proc.returncode}):\n{output[-3000:]}")
        return wanted


def cache_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's cache folder (kept between runs), or a temp folder where the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    return (
        cache.mkdir("pinmatrix-real-results")
        if cache is not None
        else tmp_path_factory.mktemp("real-results")
    )
