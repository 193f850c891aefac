"""Cell results made by the real probe (not hand-written JSON), for the results and report tests.

Each stack is the ready CPU venv plus, for the broken ones, a real package built here whose import
fails: an `xformers` whose import raises the catalogued "can't load C++/CUDA extensions" error, and
a `trl` whose import raises an error no catalogue entry knows. The probe runs once per probes/
digest; the results are cached in pytest's cache folder.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from pinmatrix.probes_source import probes_digest
from pinmatrix.run.options import REPO_ROOT

from cpu_stack import probe_python

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
            [str(PROBE_PYTHON), "-m", "probes", "--cell", str(spec), "--out", str(out), "--work",
             str(work / "w")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for stack, proc in procs:
        output, _ = proc.communicate(timeout=600)
        if proc.returncode != 0 or not wanted[stack].is_file():
            raise RuntimeError(f"the probe failed for stack {stack} (exit "
                               f"{proc.returncode}):\n{output[-3000:]}")
    return wanted


def cache_root(request, tmp_path_factory) -> Path:
    """pytest's cache folder (kept between runs), or a temp folder where the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    return (
        cache.mkdir("pinmatrix-real-results")
        if cache is not None
        else tmp_path_factory.mktemp("real-results")
    )
