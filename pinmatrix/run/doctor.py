"""`python -m pinmatrix doctor` (and `nox -s doctor`): can this host judge the selected cells?
One line per capability, with its remedy when it is missing.

`matrix` runs the same checks first (`preflight`): when no selected cell could possibly be judged
(the Docker runner asked for and no engine, no interpreter for any Python the cells need, no index
and no wheelhouse to resolve from, uv absent, no base image in the engine and none pullable from a
registry the daemon can reach), it stops at once with exit 2 and the remedies,
instead of spending minutes on an all-`infra` table. A capability that only some cells miss is not
a reason to stop: those cells end `infra`, and the report says why once
(pinmatrix/report/causes.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinmatrix.cell import Cell
from pinmatrix.containers.engine import _cdi_has_nvidia
from pinmatrix.environ import interpreters
from pinmatrix.environ.compile_cache import DEFAULT_ROOT
from pinmatrix.errors import EXIT_BAD_INPUT, EXIT_OK, HostNotReady
from pinmatrix.run.options import Echo, RunOptions
from pinmatrix.run.pipeline import load_cells
from pinmatrix.runners import registry
from pinmatrix.runners.base import RunnerKind
from pinmatrix.runners.docker import DEFAULT_BASE_IMAGE
from pinmatrix.runners.venv import DEFAULT_VENV_ROOT
from pinmatrix.sources import PackageSources, open_url, redact
from probes.models import find_snapshot, hub_cache_dir

GIB = 1024 ** 3
MIN_REPORTS_FREE = 1 * GIB          # results and logs are small
MIN_DOCKER_FREE = 20 * GIB          # one cell image is several GiB (torch alone is ~1 GiB on CPU)
INDEX_TIMEOUT_S = 8.0
REGISTRY_TIMEOUT_S = 5.0
DOCKER_HUB_REGISTRY = "registry-1.docker.io"


@dataclass
class Finding:
    """One capability. ok: True present, False missing, None not needed here (said why)."""

    capability: str
    ok: bool | None
    detail: str
    remedy: str = ""

    def line(self) -> str:
        mark = {True: "ok     ", False: "MISSING", None: "n/a    "}[self.ok]
        text = f"{mark} {self.capability}: {self.detail}"
        return text + (f" → {self.remedy}" if self.remedy and self.ok is False else "")


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)
    # why no selected cell could be judged here, each with its remedy; empty: go ahead
    blockers: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f.line() for f in self.findings]


def _engine_kinds(opts: RunOptions, full: bool) -> list[RunnerKind]:
    """The container kinds whose engine is looked at: those `--runner` may end up as, and with
    `full` also `auto`'s (a venv host is told whether Docker would work there)."""
    names = [kind.name for kind in registry.candidates(opts.runner)]
    if full:
        names += [name for name in registry.AUTO_ORDER if name not in names]
    return [kind for kind in map(registry.get, names) if kind.engine is not None]


def diagnose(opts: RunOptions, cells: Sequence[Cell], models: Sequence[Any] = (), *,
             full: bool = True) -> Diagnosis:
    """Every check; `full=False` (matrix's preflight) skips what cannot block (GPUs, hub cache,
    disk, compile caches)."""
    diag = Diagnosis()
    add = diag.findings.append
    engine = seen = None  # the engine the run would use; the first one found at all
    candidates = registry.candidates(opts.runner)
    for kind in _engine_kinds(opts, full):
        assert kind.engine is not None
        found = kind.engine.find()
        add(Finding(kind.engine.capability, found is not None, kind.engine.message(),
                    kind.engine.remedy))
        seen = seen or found
        if kind not in candidates:
            continue
        if found is None and len(candidates) == 1:  # named outright
            diag.blockers.append(f"--runner {kind.name}, but {kind.engine.message()}: "
                                 f"{kind.engine.remedy}")
        engine = engine or found
    # the cells run on this host's interpreters (the venv runner), not in an engine's images
    venv = engine is None and any(not kind.isolates for kind in candidates)
    if full:
        add(_nvidia_runtime(seen, opts))
        add(_gpus(opts))
    add(_uv(opts, diag))
    add(_cache_folders(opts, diag))
    _pythons(opts, cells, venv, diag)
    add(_index(opts, diag))
    if engine is not None and not venv:
        _base_images(engine, cells, diag, opts.pull or "missing")
    if full:
        for model in models:
            add(_hub_cache(model, opts))
        add(_disk("free disk for reports/", Path(opts.reports_dir), MIN_REPORTS_FREE))
        if seen is not None:
            add(_docker_root(seen))
        add(_compile_caches(opts))
    return diag


# --- the checks ----------------------------------------------------------------------------------

def _nvidia_runtime(engine: Any, opts: RunOptions) -> Finding:
    remedy = ("install the NVIDIA Container Toolkit (`nvidia-ctk runtime configure "
              "--runtime=docker` or `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`)")
    if engine is not None:
        if engine.nvidia:
            return Finding("NVIDIA container runtime", True, f"seen via {engine.nvidia_how}")
        return Finding("NVIDIA container runtime", None if opts.cpu else False,
                       "neither `docker info` nor a CDI spec names NVIDIA: cells run on CPU",
                       remedy)
    cdi = _cdi_has_nvidia(())
    return Finding("NVIDIA container runtime", True if cdi else None,
                   "a CDI spec names NVIDIA" if cdi else "no Docker engine: not needed by the venv "
                   "runner")


def _gpus(opts: RunOptions) -> Finding:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Finding("GPUs", None if opts.cpu else False,
                       "nvidia-smi not found: cells run on CPU and GPU-only checks are skipped",
                       "install the NVIDIA driver (it brings nvidia-smi), or pass --cpu")
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return Finding("GPUs", False, f"nvidia-smi failed: {exc}", "check the NVIDIA driver")
    rows = [r.strip() for r in out.stdout.splitlines() if r.strip()]
    if out.returncode != 0 or not rows:
        why = (out.stderr or out.stdout).strip().splitlines()[:1] or ["no GPU listed"]
        return Finding("GPUs", False, f"nvidia-smi: {why[0]}", "check the NVIDIA driver")
    gpus = []
    for row in rows:
        parts = [p.strip() for p in row.split(",")]
        if len(parts) >= 4:
            gpus.append(f"{parts[0]}: {parts[1]}, {parts[2]}, driver {parts[3]}")
        else:
            gpus.append(row)
    return Finding("GPUs", True, "; ".join(gpus))


def _cache_folders(opts: RunOptions, diag: Diagnosis) -> Finding:
    """The folders every cell writes outside the run folder (uv's cache, the venvs, the compile
    caches; under HOME unless set): an unwritable one would fail every cell, so it blocks here."""

    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folders = {"uv's cache": Path(os.environ.get("UV_CACHE_DIR") or Path(xdg) / "uv")}
    if not opts.no_install:
        folders["venvs"] = Path(opts.venv_dir or DEFAULT_VENV_ROOT)
    if opts.compile_cache:
        folders["compile caches"] = Path(DEFAULT_ROOT)
    bad = []
    for what, folder in folders.items():
        for parent in (folder, *folder.parents):
            if parent.exists():
                if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                    bad.append(f"{what} at {folder} ({parent} is not a writable folder)")
                break
    if not bad:
        return Finding("cache folders (HOME)", True,
                       ", ".join(f"{what} {folder}" for what, folder in folders.items()))
    remedy = ("make HOME writable, or point the caches elsewhere (UV_CACHE_DIR, --venv-dir, "
              "PINMATRIX_COMPILE_CACHE_DIR)")
    diag.blockers.append(f"{'; '.join(bad)}: every cell would fail; {remedy}")
    return Finding("cache folders (HOME)", False, "; ".join(bad), remedy)


def _uv(opts: RunOptions, diag: Diagnosis) -> Finding:
    uv = shutil.which("uv")
    if uv:
        try:
            version = subprocess.run([uv, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = uv
        return Finding("uv (resolves every cell)", True, version)
    if opts.no_install:
        return Finding("uv (resolves every cell)", None,
                       "not on PATH; not needed with --no-install")
    diag.blockers.append("uv is not on PATH, and every cell is resolved with `uv pip compile`: "
                         "`pip install uv`")
    return Finding("uv (resolves every cell)", False, "not on PATH", "`pip install uv`")


def _pythons(opts: RunOptions, cells: Sequence[Cell], venv: bool, diag: Diagnosis) -> None:
    versions = sorted({str(c.pins.get("python")) for c in cells if c.pins.get("python")},
                      key=lambda v: [int(x) for x in v.split(".") if x.isdigit()])
    if opts.no_install:
        chosen = {interpreters.python_for(opts.venv_python, v) or sys.executable for v in versions}
        chosen = chosen or {interpreters.python_for(opts.venv_python, "") or sys.executable}
        working = []
        for path in sorted(chosen):
            ok = shutil.which(path) is not None or Path(path).is_file()
            diag.findings.append(Finding(f"prepared interpreter {path}", ok,
                                         "--no-install judges what it holds" if ok
                                         else "not found", "pass `--venv-python VERSION=/path`"))
            working += [path] if ok else []
        if not working:
            diag.blockers.append("--no-install, and no prepared interpreter exists: pass "
                                 "`--venv-python VERSION=/path`")
        return
    available = []
    for version in versions:
        found = interpreters.find(version, opts.venv_python)
        remedy = (f"install Python {version}, pass `--venv-python {version}=/path`, or use Docker"
                  if venv else "")
        if not venv:
            here = f"{found.source}: {found.detail}" if found.ok else found.detail
            diag.findings.append(Finding(f"Python {version}", None,
                                         f"the Docker runner uses the image's Python (for the venv "
                                         f"runner: {here})"))
            continue
        diag.findings.append(Finding(f"Python {version}", found.ok,
                                     f"{found.source}: {found.detail}" if found.ok
                                     else found.detail, remedy))
        if found.ok:
            available.append(version)
    if venv and versions and not available:
        diag.blockers.append(
            "no Python the selected cells need is available to the venv runner: "
            + "; ".join(interpreters.missing_python_message(v) for v in versions))


def _index(opts: RunOptions, diag: Diagnosis) -> Finding:
    if opts.no_install:
        return Finding("package index", None, "not needed with --no-install")
    sources = opts.sources or PackageSources.from_env()
    links = [str(x) for x in sources.find_links]
    local = [x for x in links if Path(x).is_dir()]
    if opts.offline:
        ok = bool(local)
        if not ok:
            diag.blockers.append("--offline and no --find-links folder exists: nothing to "
                                 "resolve from")
        return Finding("package index", ok, f"--offline: wheelhouse {', '.join(links) or 'none'}",
                       "pass `--find-links DIR` with the wheels")
    url = sources.index_urls()[0].rstrip("/") + "/pip/"
    ca = f", CA {sources.ca_bundle}" if sources.ca_bundle else ""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    via = f", proxy {redact(proxy)}" if proxy else ""
    try:
        with open_url(url, sources, "application/vnd.pypi.simple.v1+json, text/html",
                      timeout_s=INDEX_TIMEOUT_S) as response:
            status = getattr(response, "status", 200)
        return Finding("package index", True, f"{redact(url)} answered {status}{ca}{via}")
    except Exception as exc:  # noqa: BLE001 - any failure to ask the index is the finding
        why = " ".join(str(getattr(exc, "reason", exc)).split())[:200]
        detail = f"{redact(url)} not reachable ({why}){ca}{via}"
        if local:
            return Finding("package index", None, detail + f"; the wheelhouse {', '.join(local)} "
                           "may still serve every pin")
        diag.blockers.append(f"the package index is not reachable ({redact(url)}: {why}), and no "
                             "--find-links wheelhouse is given: no cell can be resolved. Pass "
                             "`--index-url URL`, `--ca-bundle FILE` or HTTPS_PROXY as your network "
                             "needs, `--find-links DIR`, or `--no-install` on a prepared host")
        return Finding("package index", False, detail,
                       "`--index-url URL` (a mirror), `--ca-bundle FILE`, HTTPS_PROXY, "
                       "`--find-links DIR`, or `--no-install` on a prepared host")


def _base_images(engine: Any, cells: Sequence[Cell], diag: Diagnosis, pull: str) -> None:
    """Each base image the cells need: in the engine, or pullable. A pull is made by the daemon, so
    its registry is tried from here through the daemon's own proxy when it has one; with a registry
    mirror configured the answer is not known here, and nothing is blocked."""

    images = sorted({str(c.pins.get("base_image") or DEFAULT_BASE_IMAGE) for c in cells})
    usable_any = False
    daemon: dict[str, Any] | None = None
    for image in images:
        try:
            out = subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Id}}", image),
                                 capture_output=True, text=True, timeout=60)
            present = out.returncode == 0
        except (OSError, subprocess.SubprocessError):
            present = False
        usable_any = usable_any or present
        if pull == "never":
            diag.findings.append(Finding(
                f"base image {image}", present,
                "present in the engine" if present else "not in the engine, and --pull never",
                f"`docker pull {image}` (or `docker load`), or drop `--pull never`"))
            continue
        if present:
            diag.findings.append(Finding(
                f"base image {image}", True, "present in the engine"
                + (" (pulled again: --pull always)" if pull == "always" else "")))
            continue
        daemon = daemon if daemon is not None else _daemon_network(engine)
        reachable, how = _registry_reachable(image, daemon)
        usable_any = usable_any or reachable is not False
        diag.findings.append(Finding(
            f"base image {image}", None if reachable is not False else False,
            f"not in the engine: pulled before the first build (--pull {pull}); {how}",
            f"make {registry_of(image)[0]} reachable from the Docker daemon (its proxy: "
            "`docker info`), or `docker load` the image, or name a base image the engine holds"))
    if images and not usable_any:
        if pull == "never":
            diag.blockers.append("--pull never, and no base image the cells need is in the engine ("
                                 + ", ".join(images) + "): pull or load them, or drop --pull never")
        else:
            diag.blockers.append("no base image the cells need is in the engine, and no registry "
                                 "that serves them can be reached (" + ", ".join(images) + "): "
                                 "`docker load` them, give the daemon a proxy or mirror, or use "
                                 "`--runner venv`")


def registry_of(image: str) -> tuple[str, int]:
    """The registry host and port a pull of `image` contacts (Docker's rule: a first path part
    with a '.' or ':', or `localhost`, is a registry; anything else is Docker Hub)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, _, port = first.rpartition(":") if ":" in first else (first, "", "")
        return host, int(port) if port.isdigit() else 443
    return DOCKER_HUB_REGISTRY, 443



def _daemon_network(engine: Any) -> dict[str, Any]:
    """The daemon's HTTPS proxy and registry mirrors (`docker info`); empty when not told."""
    try:
        out = subprocess.run(engine.cmd("info", "--format",
                                        "{{json .HTTPSProxy}} {{json .RegistryConfig.Mirrors}}"),
                             capture_output=True, text=True, timeout=30)
        proxy, mirrors = (json.loads(part) for part in out.stdout.split(None, 1))
        return {"proxy": proxy or "", "mirrors": list(mirrors or [])}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"proxy": "", "mirrors": []}


def _registry_reachable(image: str, daemon: dict[str, Any]) -> tuple[bool | None, str]:
    """(True/False, what was tried), or (None, why it is not known here)."""
    host, port = registry_of(image)
    if host == DOCKER_HUB_REGISTRY and daemon.get("mirrors"):
        return None, f"the daemon pulls Docker Hub images through {daemon['mirrors'][0]}"
    proxy = str(daemon.get("proxy") or "")
    target, target_port = interpreters.via_proxy(host, port, proxy)
    where = ("the daemon's proxy " if proxy else "") + f"{target}:{target_port}"
    error = interpreters.connect_error(target, target_port, REGISTRY_TIMEOUT_S)
    if error is None:
        return True, f"{where} answers"
    return False, f"{where} cannot be reached ({error})"


def _hub_cache(model: Any, opts: RunOptions) -> Finding:
    cache = Path(opts.model_cache) if opts.model_cache else hub_cache_dir()
    snapshot = find_snapshot(model.repo, model.revision, cache)
    name = f"hub cache {model.repo}@{model.revision}"
    if snapshot is not None:
        return Finding(name, True, str(snapshot))
    return Finding(name, False, f"not in {cache}: the probes use the clean-room fixture instead",
                   f"`huggingface-cli download {model.repo} --revision {model.revision}` (or "
                   "`--model-cache DIR` to prefetch)")


def _free(path: Path) -> tuple[Path, int] | None:
    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return probe, shutil.disk_usage(probe).free
    except OSError:
        return None


def _disk(capability: str, path: Path, minimum: int) -> Finding:
    free = _free(path)
    if free is None:
        return Finding(capability, False, f"cannot read the free space of {path}",
                       "check the folder")
    where, nbytes = free
    ok = nbytes >= minimum
    return Finding(capability, ok, f"{nbytes / GIB:.1f} GiB free at {where}",
                   f"free at least {minimum / GIB:.0f} GiB there, or pass `--reports DIR`")


def _docker_root(engine: Any) -> Finding:
    try:
        out = subprocess.run(engine.storage_root_args(), capture_output=True, text=True,
                             timeout=30, env=engine.env())
        root = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        root = ""
    if not root:
        return Finding("free disk for Docker's root", None, "`docker info` did not say where it is")
    free = _free(Path(root))
    if free is None or not Path(root).exists():
        return Finding("free disk for Docker's root", None,
                       f"{root} is not visible from here (a remote or rootless daemon)")
    ok = free[1] >= MIN_DOCKER_FREE
    return Finding("free disk for Docker's root", ok, f"{free[1] / GIB:.1f} GiB free at {root}",
                   f"free at least {MIN_DOCKER_FREE / GIB:.0f} GiB (`docker system prune`)")


def _compile_caches(opts: RunOptions) -> Finding:
    if not opts.compile_cache:
        return Finding("compile caches", None, "--no-compile-cache: every probe starts empty")
    root = Path(DEFAULT_ROOT)
    if root.is_dir():
        stacks = [p for p in root.iterdir() if p.is_dir()]
        writable = os.access(root, os.W_OK)
        return Finding("compile caches", writable,
                       f"{root}: {len(stacks)} stack folder{'s' if len(stacks) != 1 else ''}"
                       + ("" if writable else ", not writable"),
                       "make it writable, set PINMATRIX_COMPILE_CACHE_DIR, or pass "
                       "--no-compile-cache")
    parent = _free(root)
    ok = parent is not None and os.access(parent[0], os.W_OK)
    return Finding("compile caches", ok, f"{root}: none yet (made on first use)",
                   "set PINMATRIX_COMPILE_CACHE_DIR to a writable folder, or --no-compile-cache")


# --- the commands --------------------------------------------------------------------------------

def doctor_command(opts: RunOptions, echo: Echo = print) -> int:
    """Print one line per capability; exit 2 when no selected cell could be judged, else 0."""

    matrix, cells = load_cells(opts.matrix_path, opts.selectors, cpu=opts.cpu,
                               snapshot=opts.snapshot, sources=opts.sources)
    diag = diagnose(opts, cells, matrix.models)
    echo(f"pinmatrix doctor: {len(cells)} selected cell{'s' if len(cells) != 1 else ''} of "
         f"{opts.matrix_path}, runner {opts.runner}")
    for line in diag.lines():
        echo(line)
    if diag.blockers:
        echo("no selected cell could be judged on this host:")
        for blocker in diag.blockers:
            echo(f"  - {blocker}")
        return EXIT_BAD_INPUT
    echo("ready: the selected cells can be judged here")
    return EXIT_OK


def preflight(opts: RunOptions, cells: Sequence[Cell]) -> None:
    """`matrix`'s first step: raise HostNotReady (exit 2) when no cell could be judged here."""
    diag = diagnose(opts, cells, full=False)
    if diag.blockers:
        raise HostNotReady("no selected cell could be judged on this host (nothing was run; "
                           "`python -m pinmatrix doctor` checks everything):\n"
                           + "\n".join(f"  - {b}" for b in diag.blockers))
