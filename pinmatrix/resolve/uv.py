"""Resolve a cell to exact pins with `uv pip compile`, for the cell's Python and Linux x86_64, not
the host.

Two steps (docs/CONTRACTS.md §7): torch alone -> `torch.lock`; then everything, constrained to
torch's heavy layer (torch, triton, nvidia-*, cuda-*) -> `requirements.lock`. A cell that cannot
install is `Unresolvable` with uv's own words; a machine problem (uv missing, network down) raises
`ResolveInfraError` instead. Results are cached on disk, keyed by everything that changes them, so a
warm resolve takes milliseconds.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from pinmatrix.activity import acting_for, doing
from pinmatrix.cell import (
    NONE,
    PROVIDED_PREFIX,
    Cell,
    Lock,
    Unresolvable,
    extras_lines,
    normalize_name,
    parse_lock,
)
from pinmatrix.environ.base_inventory import read_inventory
from pinmatrix.errors import PinmatrixError, ResolveInfraError
from pinmatrix.fsio import PRIVATE_MODE, write_text_atomic
from pinmatrix.interrupt import map_in_threads
from pinmatrix.sources import PackageSources

TARGET_PLATFORM = "x86_64-manylinux_2_28"
UV_COLUMNS = "1000"  # wide enough that uv never wraps a line of its own words
CACHE_FORMAT = 1
DEFAULT_MAX_AGE_S = 24 * 3600     # a fresh index can change transitive pins; re-ask once a day
# torch's layer: the big wheels that every cell with this torch shares in the image.
_TORCH_LAYER = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
# uv's words for "no such install exists" (the stack's fault) ...
_UNSOLVABLE = ("not found in the package registry",
               "was not found in the provided package locations",
               "there is no version of", "we can conclude")
# ... and for the machine's faults.
_INFRA = ("Failed to fetch", "error sending request", "dns error", "Connection refused",
          "timed out",
          "certificate", "tls", "Network is unreachable", "Could not connect", "os error",
          "Temporary failure",
          "Failed to download", "Failed to read")



@dataclass(frozen=True)
class _Compiled:
    ok: bool
    text: str           # the lock text when ok, else uv's stderr verbatim


def resolve(cell: Cell, sources: PackageSources | None, out_dir: str | Path, *,
            platform: str = TARGET_PLATFORM,
            uv: str = "uv", cache_dir: str | Path | None = None,
            max_age_s: float = DEFAULT_MAX_AGE_S,
            timeout_s: float = 600.0) -> Lock | Unresolvable:
    """Resolve one cell; write `torch.lock` and `requirements.lock` into `out_dir` when it resolves.

    `sources=None` means `PackageSources.from_env()`. Raises ResolveInfraError when the machine is
    at fault.
    """
    resolver = _Resolver(sources if sources is not None else PackageSources.from_env(),
                         platform=platform, uv=uv, cache_dir=cache_dir, max_age_s=max_age_s,
                         timeout_s=timeout_s)
    return resolver.resolve(cell, Path(out_dir))


def resolve_many(
    cells: Sequence[Cell],
    sources: PackageSources | None,
    out_root: str | Path,
    *,
    workers: int | None = None,
    on_done: Callable[[Cell, Lock | Unresolvable | ResolveInfraError, float], None] | None = None,
    **options: Any,
) -> dict[str, Lock | Unresolvable | ResolveInfraError]:
    """Resolve cells in parallel (uv waits on the network, not the CPU); locks go to
    out_root/<cell-id>/.

    Returns cell id -> Lock, Unresolvable, or the ResolveInfraError that cell met (the others still
    finish). `on_done(cell, outcome, seconds)` is called from the worker as each cell finishes.
    """
    resolver = _Resolver(sources if sources is not None else PackageSources.from_env(), **options)
    out_root = Path(out_root)
    results: dict[str, Lock | Unresolvable | ResolveInfraError] = {}

    def one(cell: Cell) -> tuple[str, Lock | Unresolvable | ResolveInfraError]:
        started = time.monotonic()
        outcome: Lock | Unresolvable | ResolveInfraError
        with acting_for(cell.id):
            try:
                outcome = resolver.resolve(cell, out_root / cell.id)
            except ResolveInfraError as exc:
                outcome = exc
        if on_done is not None:  # each cell said as it resolves, not all at the end
            on_done(cell, outcome, time.monotonic() - started)
        return cell.id, outcome

    # threads that leave the main thread able to take a Ctrl-C (pinmatrix/interrupt.py)
    for cell_id, outcome in map_in_threads(one, cells, workers or min(8, max(1, len(cells))),
                                           "resolve"):
        results[cell_id] = outcome
    return results


@functools.cache
def uv_version(uv: str = "uv") -> str:
    try:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30,
                             check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ResolveInfraError(f"uv is not usable ({uv}): {exc}") from exc
    return out.stdout.strip()


def default_cache_dir() -> Path:
    # declared in pinmatrix/run/options.py HostSettings (resolve/ does not import run/)
    root = os.environ.get("PINMATRIX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pinmatrix")
    return Path(root) / "resolve"


class _Resolver:
    def __init__(self, sources: PackageSources, *, platform: str = TARGET_PLATFORM, uv: str = "uv",
                 cache_dir: str | Path | None = None, max_age_s: float = DEFAULT_MAX_AGE_S,
                 timeout_s: float = 600.0) -> None:
        self.sources, self.platform, self.uv = sources, platform, uv
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_age_s, self.timeout_s = max_age_s, timeout_s
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def resolve(self, cell: Cell, out_dir: Path) -> Lock | Unresolvable:
        python = cell.pins.get("python")
        if not python:
            raise ValueError(f"cell {cell.id} has no python pin")
        if cell.base_pins():
            return self.resolve_on_base(cell, out_dir, python)
        torch_pin = cell.pins.get("torch", NONE)
        requirements = cell.requirements()

        torch_lock = ""
        if torch_pin != NONE:
            torch_req = [
                r for r in requirements if normalize_name(re.split(r"[<>=!~\[ ;]", r)[0]) == "torch"
            ]
            compiled = self.compile(torch_req, constraints="", python=python, torch_pin=torch_pin)
            if not compiled.ok:
                return Unresolvable(cell.id, compiled.text)
            torch_lock = compiled.text
        constraints = "".join(f"{name}=={version}\n" for name,
                              version in sorted(parse_lock(torch_lock).items())
                              if _TORCH_LAYER.match(name))
        compiled = self.compile(requirements, constraints=constraints, python=python,
                                torch_pin=torch_pin)
        if not compiled.ok:
            return Unresolvable(cell.id, compiled.text)
        full_lock = extras_lines(cell) + compiled.text

        unwanted = _pulled_in_anyway(cell, full_lock)
        if unwanted:
            return Unresolvable(cell.id, unwanted)

        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "torch.lock", torch_lock, mode=PRIVATE_MODE)
        write_text_atomic(out_dir / "requirements.lock", full_lock, mode=PRIVATE_MODE)
        return Lock(cell_id=cell.id, python=python, torch_lock=torch_lock, full_lock=full_lock)

    def resolve_on_base(self, cell: Cell, out_dir: Path, python: str) -> Lock | Unresolvable:
        """A cell with `base` pins (prepared base images, the NGC pattern): the base image's own
        copies are checked against the pins and given to uv as already there, the rest resolved
        around them.

        uv resolves from indexes and find-links only; it has no notion of a package installed in
        another environment (`uv pip compile` never looks at one). So each package the base
        provides (the `base` pins, and with torch its layer: triton, nvidia-*, cuda-*) is handed
        to uv as a metadata-only wheel built from the base's installed metadata (name, version,
        Requires-Dist, Requires-Python) in a private find-links folder, and pinned with
        `--constraints` to the base's version: every requirement on torch in the rest of the
        stack is then checked against the base's torch by uv itself, and a stack that needs
        another torch gets uv's own "no solution" (Unresolvable). The lock names them with
        `# pinmatrix-base:` lines; the image build leaves them out (cell.install_lock), the drift
        check compares them with what the probe imports. A version that is also on the index
        (the CPU wheel here) may be locked from there; its metadata is the same release's.
        """

        image = cell.pins.get("base_image") or ""
        if not image:
            raise ResolveInfraError(f"cell {cell.id}: a `base` pin needs a base_image axis",
                                    signature="base-pin-mismatch")
        inventory = read_inventory(image)
        if inventory.python != python:
            raise ResolveInfraError(f"base image {image} has Python {inventory.python}, the cell "
                                    f"pins {python}: a `base` pin uses the base's interpreter",
                                    signature="base-python-mismatch")
        provided: dict[str, str] = {}
        for name, spec in sorted(cell.base_pins().items()):
            version = inventory.version(name)
            if version is None:
                raise ResolveInfraError(f"{name}: base, but base image {image} has no {name}",
                                        signature="base-pin-mismatch")
            try:
                fits = not spec or SpecifierSet(spec).contains(version, prereleases=True)
            except InvalidSpecifier:
                fits = False
            if not fits:
                raise ResolveInfraError(f"{name}: base{spec}, but base image {image} holds "
                                        f"{name} {version}", signature="base-pin-mismatch")
            provided[normalize_name(name)] = version
        if "torch" in provided:
            for name, info in inventory.packages.items():
                if _TORCH_LAYER.match(name) and name not in provided:
                    provided[name] = str(info["version"])
        requirements = [*cell.requirements(),
                        *(f"{name}=={provided[name]}" for name in sorted(cell.base_pins()))]
        constraints = "".join(f"{name}=={version}\n" for name, version in sorted(provided.items()))
        with tempfile.TemporaryDirectory(prefix="pinmatrix-base-") as stubs:
            for name in provided:
                _stub_wheel(Path(stubs), name, inventory.packages[name])
            compiled = self.compile(requirements, constraints=constraints, python=python,
                                    torch_pin=provided.get("torch", NONE),
                                    extra=("--find-links", stubs),
                                    key_extra=inventory.image_id)
        if not compiled.ok:
            held = ", ".join(f"{n} {v}" for n, v in sorted(provided.items()))
            return Unresolvable(cell.id, f"the rest of the cell cannot be installed on base image "
                                         f"{image} ({held}):\n{compiled.text}")
        unwanted = _pulled_in_anyway(cell, compiled.text)
        if unwanted:
            return Unresolvable(cell.id, unwanted)
        header = "".join(f"{PROVIDED_PREFIX}{name}=={version}\n"
                         for name, version in sorted(provided.items()))
        full_lock = f"# base image {image} ({inventory.image_id})\n{header}{compiled.text}"
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "torch.lock", "", mode=PRIVATE_MODE)
        write_text_atomic(out_dir / "requirements.lock", full_lock, mode=PRIVATE_MODE)
        return Lock(cell_id=cell.id, python=python, torch_lock="", full_lock=full_lock)

    # -- one uv pip compile, cached --
    def compile(self, requirements: list[str], *, constraints: str, python: str,
                torch_pin: str, extra: tuple[str, ...] = (), key_extra: str = "") -> _Compiled:
        key = self.cache_key(requirements, constraints, python, torch_pin + key_extra)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # two cells with the same torch compute it once
            cached = self.cache_get(key)
            if cached is not None:
                return cached
            # torch alone (the first of a cell's two steps) or the whole stack
            what = ("uv pip compile torch" if len(requirements) == 1 and not constraints
                    else "uv pip compile the whole stack")
            with doing(f"{what} (Python {python})"):
                compiled = self.run_uv(requirements, constraints, python, torch_pin, extra)
            self.cache_put(key, compiled)
            return compiled

    def cache_key(self, requirements: Sequence[str], constraints: str, python: str,
                  torch_pin: str) -> str:
        payload = json.dumps({"format": CACHE_FORMAT, "requirements": sorted(requirements),
                              "constraints": constraints, "python": python,
                              "platform": self.platform,
                              "sources": self.sources.identity(),
                              "backend": self.sources.backend_for(torch_pin),
                              "uv": uv_version(self.uv)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def cache_get(self, key: str) -> _Compiled | None:
        path = self.cache_dir / f"{key}.json"
        try:
            data = json.loads(path.read_text())
            if time.time() - float(data["created"]) > self.max_age_s:
                return None
            return _Compiled(bool(data["ok"]), str(data["text"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: resolve again

    def cache_put(self, key: str, compiled: _Compiled) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.cache_dir / f"{key}.json",
                              json.dumps({"ok": compiled.ok, "text": compiled.text,
                                          "created": time.time()}),
                              mode=PRIVATE_MODE)
        except OSError:
            pass  # a cache that cannot be written only costs time

    def run_uv(self, requirements: list[str], constraints: str, python: str,
               torch_pin: str, extra: tuple[str, ...] = ()) -> _Compiled:
        try:
            return self._uv_compile(requirements, constraints, python, torch_pin, hashes=True,
                                    extra=extra)
        except _HashesUnavailable:
            # A find-links page without hashes (or a remote wheel uv cannot hash): lock without
            # them.
            return self._uv_compile(requirements, constraints, python, torch_pin, hashes=False,
                                    extra=extra)

    def _uv_compile(self, requirements: list[str], constraints: str, python: str, torch_pin: str, *,
                    hashes: bool, extra: tuple[str, ...] = ()) -> _Compiled:
        with tempfile.TemporaryDirectory(prefix="pinmatrix-resolve-") as tmp:
            req_file = Path(tmp) / "requirements.in"
            req_file.write_text("".join(r + "\n" for r in requirements))
            args = [self.uv, "pip", "compile", str(req_file), "--python-version", python,
                    "--python-platform", self.platform, "--no-header", "--quiet", "--no-progress",
                    "--color", "never"]
            if hashes:
                args.append("--generate-hashes")
            if constraints:
                constraint_file = Path(tmp) / "constraints.txt"
                constraint_file.write_text(constraints)
                args += ["--constraints", str(constraint_file)]
            args += [*extra, *self.sources.uv_args(torch_pin)]
            # uv wraps its explanation to COLUMNS (80 in a pytest-xdist worker or a narrow
            # terminal), splitting the sentences classified below and kept verbatim
            env = {**os.environ, **self.sources.uv_env(), "COLUMNS": UV_COLUMNS}
            try:
                proc = subprocess.run(args, capture_output=True, text=True, env=env,
                                      timeout=self.timeout_s,
                                      cwd=tmp)
            except FileNotFoundError as exc:
                raise ResolveInfraError(f"uv not found ({self.uv}); install uv or put it on "
                                        "PATH") from exc
            except subprocess.TimeoutExpired as exc:
                raise ResolveInfraError(f"uv pip compile ran past {self.timeout_s:.0f} s") from exc
            if proc.returncode == 0:
                # The temp path is noise in "# via -r /tmp/.../requirements.in"; keep the lock
                # reproducible.
                return _Compiled(True, proc.stdout.replace(str(req_file), "requirements.in"))
            stderr = proc.stderr.replace(str(req_file), "requirements.in").strip()
            if self.sources.offline and "not found in the provided package locations" in stderr:
                # offline, a package missing from the wheelhouse is the host's gap, not a verdict
                # on the stack: uv words it as "no solution", so it is caught before that
                missing = sorted(set(re.findall(r"(\S+) was not found in the provided package "
                                                r"locations", stderr)))
                raise ResolveInfraError(
                    f"--offline: the find-links folders lack {', '.join(missing) or 'a package'} "
                    f"(uv: {stderr.splitlines()[-1][:300]})", signature="wheelhouse-incomplete")
            if _is_unsolvable(stderr):
                return _Compiled(False, stderr)
            if hashes and "hash" in stderr.lower():
                raise _HashesUnavailable(stderr)
            raise ResolveInfraError(f"uv pip compile failed (exit {proc.returncode}): "
                                    f"{stderr[-2000:]}")


def _stub_wheel(folder: Path, name: str, info: Any) -> Path:
    """A metadata-only wheel for a distribution the base image holds: enough for uv to resolve
    against (name, version, Requires-Dist, Requires-Python); never installed."""

    version = str(info["version"])
    dist = re.sub(r"[-_.]+", "_", name)
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if info.get("requires_python"):
        meta.append(f"Requires-Python: {info['requires_python']}")
    meta += [f"Requires-Dist: {req}" for req in info.get("requires") or []]
    info_dir = f"{dist}-{version}.dist-info"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{info_dir}/METADATA", "\n".join(meta) + "\n")
        wheel.writestr(f"{info_dir}/WHEEL", "Wheel-Version: 1.0\nGenerator: pinmatrix base stub\n"
                                            "Root-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info_dir}/RECORD", "")
    return path


class _HashesUnavailable(PinmatrixError):
    """The index gave no hashes: resolve again without --generate-hashes (caught in this module)."""


def _is_unsolvable(stderr: str) -> bool:
    """uv's derivation of "no install exists"; anything else (network, TLS, unknown) is the
    machine's fault."""
    if "No solution found" in stderr or "unsatisfiable" in stderr:
        return True
    if any(marker.lower() in stderr.lower() for marker in _INFRA):
        return False
    return any(marker in stderr for marker in _UNSOLVABLE)


def _pulled_in_anyway(cell: Cell, lock_text: str) -> str:
    """An explanation when a package the cell marks `none` is in the lock anyway, from uv's `# via`
    notes."""
    pinned = parse_lock(lock_text)
    via = _via_annotations(lock_text)
    lines = []
    for package in cell.none_packages():
        name = normalize_name(package)
        if name in pinned:
            parents = ", ".join(via.get(name, [])) or "an unannotated dependency"
            lines.append(f"{package} is `none` in this cell, but the resolution installs "
                         f"{name}=={pinned[name]} "
                         f"(required by {parents})")
    if not lines:
        return ""
    return "\n".join(lines) + "\nSet the axis to a version, or exclude this combination."


def _via_annotations(lock_text: str) -> dict[str, list[str]]:
    """Package -> the packages uv says required it (`# via x` or `# via` followed by `#   x`
    lines)."""
    via: dict[str, list[str]] = {}
    current: str | None = None
    in_block = False
    for raw in lock_text.splitlines():
        line = raw.strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==", line)
        if match:
            current, in_block = normalize_name(match.group(1)), False
            via.setdefault(current, [])
            continue
        if current is None or not line.startswith("#"):
            continue
        body = line.lstrip("#").strip()
        if body.startswith("via"):
            rest = body[3:].strip()
            in_block = not rest
            if rest:
                via[current].append(rest)
        elif in_block and body:
            via[current].append(body)
    return via
