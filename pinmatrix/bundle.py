"""`python -m pinmatrix bundle OUT [selectors]`: what a host without network needs to run the
selected cells, packed on a host that has it; `python -m pinmatrix matrix --bundle OUT` runs them
there.

Two forms, written into OUT with a manifest.json and a RUN.md naming the command:

- wheels (default): every wheel of every selected cell's lock, downloaded for the cells' Python
  and platform, plus uv's own wheel and the harness's. The offline host resolves and installs from
  that wheelhouse alone (`--offline --find-links OUT/wheels`), as any air-gapped HPC node can.
- site layers (`--host-packages FILE`, the prepared host's `pip list --format freeze`): only what
  the host does not already have at the locked version, unpacked from its wheels into layers.
  Packages that the same cells need share one layer, put on the path of those cells alone (an
  --extra-site rule of the cells' axis values, pinmatrix/environ/site_rules.py). The host's own
  torch and the rest of its packages are reused (`--no-install --system-site-packages`), so a lent
  GPU machine that has torch 2.11+cu130 and transformers 5.17 gets neither again. Each layer is an
  xz tarball (transformers packs to about 6 MB); a carry limit (--part-mib, 60 by default: the
  device tool takes 64 MiB a call) groups the files into OUT/carry/NN folders, a file too large
  for one split into pieces.

The probes come along (OUT/probes, with their digest in the manifest): the cells' identity
includes them, so a bundle run under other probes would judge other cells; `matrix --bundle`
refuses that.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from pinmatrix.cell import Cell, Lock, Unresolvable, normalize_name
from pinmatrix.environ.site_rules import parse_extra_site
from pinmatrix.errors import PinmatrixError, UsageError
from pinmatrix.interrupt import map_in_threads
from pinmatrix.probes_source import PROBES_DIR, probe_files, probes_digest
from pinmatrix.resolve.uv import resolve_many, uv_version
from pinmatrix.run.options import HostSettings
from pinmatrix.run.pipeline import load_cells

Echo = Callable[[str], None]
MANIFEST = "manifest.json"
SCHEMA = 1
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
)
HARNESS = ("pyyaml", "jsonschema", "packaging")  # pyproject.toml's dependencies
DOWNLOAD_WORKERS = 6  # pip spends ~5 s starting per wheel; the network is idle meanwhile
# what a layer never needs at training time (device-bundle's pruning): unsloth's web app, tests
PRUNE = ("studio", "test")


class BundleError(PinmatrixError):
    """The bundle cannot be made or used (a download failed, a file is missing or corrupt)."""


# --- the host's packages -------------------------------------------------------------------------


def parse_host_packages(path: Path) -> dict[str, str]:
    """`pip list --format freeze` (or `pip freeze`) output: {normalised name: version}. A line that
    is not NAME==VERSION is an error naming the file and line; `-e`, `@ file` and comments are
    skipped (nothing to compare them with)."""
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--host-packages {path}: cannot read it: {exc}") from exc
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(("#", "-e ", "--")) or " @ " in line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or " " in version.strip():
            raise UsageError(
                f"{path}:{number}:1: expected NAME==VERSION (pip list --format "
                f"freeze), got {line[:80]!r}"
            )
        out[normalize_name(name.strip())] = version.strip()
    return out


def host_has(host: Mapping[str, str], name: str, version: str) -> bool:
    """The host holds `name` at the locked version: the same public version (torch 2.11.0 is the
    host's 2.11.0+cu130; PyPI's 2.11.0 is that CUDA 13.0 build)."""

    have = host.get(normalize_name(name))
    if have is None:
        return False
    try:
        return Version(have).public == Version(version).public
    except InvalidVersion:
        return have == version


# --- layers --------------------------------------------------------------------------------------


@dataclass
class Layer:
    name: str
    cells: tuple[str, ...]
    packages: list[tuple[str, str]] = field(default_factory=list)
    when: tuple[tuple[str, str, str], ...] = ()

    def rule(self, folder: Path) -> str:
        conds = ",".join(f"{a}{'!=' if op == '!=' else '='}{v}" for a, op, v in self.when)
        return f"{conds}:{folder}" if conds else str(folder)


def conditions_for(
    chosen: Sequence[Cell], others: Sequence[Cell]
) -> tuple[tuple[str, str, str], ...] | None:
    """Axis conditions (AND) true for every cell of `chosen` and false for every one of `others`, or
    None when the axis values cannot tell them apart."""
    axes = sorted(
        {a for c in [*chosen, *others] for a in c.pins if a not in ("python", "base_image")}
    )
    when: list[tuple[str, str, str]] = []
    for axis in axes:  # a value every chosen cell shares and some other cell does not
        values = {str(c.pins.get(axis, "")) for c in chosen}
        if len(values) == 1 and any(str(c.pins.get(axis, "")) not in values for c in others):
            when.append((axis, "=", values.pop()))

    def excluded(cell: Cell) -> bool:
        return any((str(cell.pins.get(a, "")) == v) != (op == "=") for a, op, v in when)

    for axis in axes:  # values only the others have, ruled out one by one
        if all(excluded(c) for c in others):
            break
        if any(a == axis and op == "=" for a, op, _ in when):
            continue
        mine = {str(c.pins.get(axis, "")) for c in chosen}
        for value in sorted({str(c.pins.get(axis, "")) for c in others} - mine):
            when.append((axis, "!=", value))
    if not all(excluded(c) for c in others):
        return None
    return tuple(when)


def plan_layers(
    cells: Sequence[Cell], locks: Mapping[str, Mapping[str, str]], host: Mapping[str, str]
) -> list[Layer]:
    """Each locked (name, version) the host lacks, grouped by the set of cells that need exactly it;
    each group is a layer with the axis conditions that pick those cells (one layer per cell where
    no conditions can)."""
    by_id = {c.id: c for c in cells}
    needed: dict[tuple[str, str], set[str]] = {}
    for cell_id, pins in locks.items():
        for name, version in pins.items():
            if not host_has(host, name, version):
                needed.setdefault((name, version), set()).add(cell_id)
    groups: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for package, needers in sorted(needed.items()):
        groups.setdefault(tuple(sorted(needers)), []).append(package)
    layers: list[Layer] = []
    for users, packages in sorted(groups.items(), key=lambda kv: (-len(kv[0]), kv[0])):
        chosen = [by_id[i] for i in users]
        others = [c for c in cells if c.id not in users and c.id in locks]
        when = conditions_for(chosen, others)
        if when is None:
            for cell in chosen:
                layers.append(
                    Layer(
                        "",
                        (cell.id,),
                        list(packages),
                        tuple(
                            (a, "=", str(v))
                            for a, v in sorted(cell.pins.items())
                            if a not in ("python", "base_image")
                        ),
                    )
                )
        else:
            layers.append(Layer("", users, list(packages), when))
    for number, layer in enumerate(layers):
        head = layer.packages[0][0] if len(layer.packages) == 1 else f"{len(layer.packages)}pkgs"
        layer.name = f"{number:02d}-{head}"
    return layers


# --- downloads -----------------------------------------------------------------------------------


def pip_download(
    specs: Sequence[str], dest: Path, python: str, sources: Any, echo: Echo
) -> dict[str, Path]:
    """Each NAME==VERSION's wheel for CPython `python` on manylinux x86_64 into `dest`, one line of
    progress per wheel (name, size, seconds): {spec: wheel path}."""
    dest.mkdir(parents=True, exist_ok=True)
    common = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--disable-pip-version-check",
        *(arg for tag in PLATFORMS for arg in ("--platform", tag)),
    ]
    if sources is not None:
        if getattr(sources, "index_url", None):
            common += ["--index-url", sources.index_url]
        for url in getattr(sources, "extra_index_urls", ()) or ():
            common += ["--extra-index-url", url]
        for link in getattr(sources, "find_links", ()) or ():
            common += ["--find-links", str(link)]
        if getattr(sources, "ca_bundle", None):
            common += ["--cert", str(sources.ca_bundle)]
    total, done = len(specs), [0]
    lock = threading.Lock()
    echo(
        f"bundle: downloading {total} wheel{'s' if total != 1 else ''} for CPython {python} "
        f"({DOWNLOAD_WORKERS} at a time)"
    )

    def one(spec: str) -> tuple[str, Path]:
        start = time.monotonic()
        existing = [p for p in dest.glob("*.whl") if _wheel_matches(p, spec)]
        if existing:
            wheel, how = existing[0], "already here"
        else:
            scratch = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest))
            proc = subprocess.run(
                [*common, "-d", str(scratch), spec], capture_output=True, text=True
            )
            got = list(scratch.glob("*.whl"))
            if proc.returncode != 0 or not got:
                shutil.rmtree(scratch, ignore_errors=True)
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise BundleError(
                    f"no wheel of {spec} for CPython {python} (manylinux x86_64): "
                    + " | ".join(tail)
                )
            wheel = dest / got[0].name
            got[0].replace(wheel)
            shutil.rmtree(scratch, ignore_errors=True)
            how = f"{time.monotonic() - start:.1f} s"
        with lock:
            done[0] += 1
            size = wheel.stat().st_size / 2**20
            echo(f"bundle: [{done[0]}/{total}] {spec}: {size:.1f} MiB ({how})")
        return spec, wheel

    return dict(map_in_threads(one, list(specs), min(DOWNLOAD_WORKERS, max(1, total)), "bundle"))


def _wheel_matches(path: Path, spec: str) -> bool:
    name, _, version = spec.partition("==")
    parts = path.name.split("-")
    return (
        len(parts) >= 2 and normalize_name(parts[0]) == normalize_name(name) and parts[1] == version
    )


def harness_requirements() -> list[str]:
    """pinmatrix's own runtime dependencies and theirs, at the versions this host runs it with."""

    seen: dict[str, str] = {}
    todo = list(HARNESS)
    while todo:
        name = normalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [f"{n}=={v}" for n, v in sorted(seen.items())]


# --- packing -------------------------------------------------------------------------------------


def unpack_wheels(wheels: Iterable[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
    for name in PRUNE:
        shutil.rmtree(folder / name, ignore_errors=True)
    for data in folder.glob("*.data"):
        shutil.rmtree(data, ignore_errors=True)


def write_txz(folder: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with lzma.open(tmp, "wb", preset=6) as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    tmp.replace(target)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_into_carries(files: list[Path], out: Path, part_bytes: int) -> dict[str, list[str]]:
    """Move `files` into out/carry/NN folders of at most part_bytes each (first fit, largest
    first); a file larger than part_bytes is cut into pieces NAME.part-KK, one folder each.
    {file: [pieces]}."""
    bins: list[tuple[int, Path]] = []
    pieces: dict[str, list[str]] = {}

    def new_bin() -> Path:
        folder = out / "carry" / f"{len(bins):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        bins.append((0, folder))
        return folder

    for path in sorted(files, key=lambda p: -p.stat().st_size):
        size = path.stat().st_size
        if size > part_bytes:
            names = []
            with open(path, "rb") as f:
                for k, block in enumerate(iter(lambda: f.read(part_bytes), b"")):
                    folder = new_bin()
                    piece = folder / f"{path.name}.part-{k:02d}"
                    piece.write_bytes(block)
                    bins[-1] = (len(block), folder)
                    names.append(str(piece.relative_to(out)))
            path.unlink()
            pieces[path.name] = names
            continue
        for i, (used, folder) in enumerate(bins):  # noqa: B007 - the bin found is used after the loop
            if used + size <= part_bytes:
                break
        else:
            folder = new_bin()
            i, used = len(bins) - 1, 0
        shutil.move(str(path), folder / path.name)
        bins[i] = (used + size, folder)
        pieces[path.name] = [str((folder / path.name).relative_to(out))]
    return pieces


# --- the bundle command --------------------------------------------------------------------------


def build_bundle(
    opts: Any, out: Path, *, host_packages: Path | None, part_mib: float, echo: Echo = print
) -> dict[str, Any]:
    """Resolve the selected cells, then write OUT (the module docstring); return the manifest."""

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"bundle {out}: the folder exists and is not empty; give a new one")
    host = parse_host_packages(host_packages) if host_packages else None
    _, cells = load_cells(
        opts.matrix_path, opts.selectors, cpu=opts.cpu, snapshot=opts.snapshot, sources=opts.sources
    )
    if not cells:
        raise UsageError("bundle: no cell selected")
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    echo(f"bundle: resolving {len(cells)} cell{'s' if len(cells) != 1 else ''} ...")
    results = resolve_many(cells, opts.sources, work / "locks")
    locks: dict[str, Lock] = {}
    skipped: dict[str, str] = {}
    for cell in cells:
        got = results[cell.id]
        if isinstance(got, Lock):
            locks[cell.id] = got
        elif isinstance(got, Unresolvable):
            skipped[cell.id] = "unresolvable: " + got.explanation.strip().splitlines()[-1][:200]
        else:
            skipped[cell.id] = f"resolve infra: {got}"
    for cell_id, why in skipped.items():
        echo(f"bundle: {cell_id}: left out ({why})")
    if not locks:
        raise BundleError("bundle: no selected cell resolved; nothing to pack")
    pythons = sorted({lock.python for lock in locks.values()})
    python = pythons[0]
    kept = [c for c in cells if c.id in locks]
    for cell in kept:  # the locks travel: the offline host resolves nothing
        folder = out / "locks" / cell.id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "torch.lock").write_text(locks[cell.id].torch_lock)
        (folder / "requirements.lock").write_text(locks[cell.id].full_lock)
    shutil.copytree(
        PROBES_DIR, out / "probes", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": python,
        "pythons": pythons,
        "probes_digest": probes_digest(),
        "probe_files": len(list(probe_files())),
        "matrix": str(opts.matrix_path),
        "selectors": list(opts.selectors),
        "cells": [c.id for c in kept],
        "left_out": skipped,
    }
    pins = {cid: dict(lock.pinned()) for cid, lock in locks.items()}
    if host is None:
        specs = sorted({f"{n}=={v}" for p in pins.values() for n, v in p.items()})
        uv_spec = f"uv=={uv_version()}"
        wheels = pip_download(
            [*specs, uv_spec, *harness_requirements()], out / "wheels", python, opts.sources, echo
        )
        manifest.update(
            form="wheels",
            wheels={
                s: {"file": f"wheels/{p.name}", "sha256": sha256(p)} for s, p in wheels.items()
            },
            uv=uv_spec,
        )
        manifest["command"] = "python -m pinmatrix matrix --bundle BUNDLE --runner venv"
    else:
        layers = plan_layers(kept, pins, host)
        harness = [s for s in harness_requirements() if not host_has(host, *s.split("=="))]
        specs = sorted({f"{n}=={v}" for layer in layers for n, v in layer.packages} | set(harness))
        wheels = pip_download(specs, work / "wheels", python, opts.sources, echo)
        # the harness's own needs, unpacked: put on the path of the interpreter that runs pinmatrix
        # (RUN.md's command), never into a cell
        unpack_wheels([wheels[spec] for spec in harness], out / "harness")
        (out / "sites").mkdir()
        entries: list[dict[str, Any]] = []
        for layer in layers:
            folder = work / "sites" / layer.name
            unpack_wheels([wheels[f"{n}=={v}"] for n, v in layer.packages], folder)
            target = out / "sites" / f"{layer.name}.txz"
            write_txz(folder, target)
            shutil.rmtree(folder)
            entries.append(
                {
                    "name": layer.name,
                    "file": target.name,
                    "sha256": sha256(target),
                    "bytes": target.stat().st_size,
                    "cells": list(layer.cells),
                    "when": [list(w) for w in layer.when],
                    "packages": [f"{n}=={v}" for n, v in layer.packages],
                }
            )
            echo(
                f"bundle: layer {layer.name}: {len(layer.packages)} package(s), "
                f"{target.stat().st_size / 2**20:.1f} MiB, for "
                f"{layer.rule(Path('.')).rsplit(':', 1)[0] if layer.when else 'every cell'}"
            )
        manifest.update(
            form="sites",
            host_packages=str(host_packages),
            host_package_count=len(host),
            reused_from_host=sorted(
                {f"{n}=={v}" for p in pins.values() for n, v in p.items() if host_has(host, n, v)}
            ),
            layers=entries,
        )
        pieces = split_into_carries(
            [out / "sites" / e["file"] for e in entries], out, int(part_mib * 2**20)
        )
        for entry in entries:
            entry["pieces"] = pieces[entry["file"]]
        shutil.rmtree(out / "sites")
        carries = sorted(p.name for p in (out / "carry").iterdir())
        manifest["carries"] = carries
        manifest["harness"] = harness
        manifest["command"] = (
            "python3 -c \"import runpy, sys; sys.path.insert(1, 'BUNDLE/harness'); "
            "sys.argv[0] = 'pinmatrix'; runpy.run_module('pinmatrix', run_name='__main__', "
            "alter_sys=True)\" matrix --bundle BUNDLE --runner venv --system-site-packages "
            "--venv-python $(command -v python3)"
        )
    shutil.rmtree(work, ignore_errors=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "RUN.md").write_text(run_text(manifest))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    echo(
        f"bundle: {out}: {len(kept)} cell(s), {size / 2**20:.1f} MiB; run there: "
        f"{manifest['command'].replace('BUNDLE', str(out))}"
    )
    return manifest


def run_text(manifest: Mapping[str, Any]) -> str:
    lines = [
        "# Running this bundle on a host without network",
        "",
        f"Cells ({len(manifest['cells'])}): " + ", ".join(manifest["cells"]),
        "",
        "From a checkout of the same pinmatrix (its probes digest must match "
        f"{manifest['probes_digest'][:12]}), with this folder as BUNDLE:",
        "",
        "    " + manifest["command"],
        "",
    ]
    if manifest.get("form") == "sites":
        lines += [
            "The host's own packages are reused; the layers hold only what it lacks at the "
            "locked versions.",
            "",
            f"Carry folders ({', '.join(manifest['carries'])}): each fits one upload. Where one "
            "upload cannot hold them all, copy the folders that came in earlier uploads into "
            "$PINMATRIX_BUNDLE_STASH (default ~/.cache/pinmatrix/bundle-stash) and run the "
            "command in the upload that brings the last one; the bundle finds its pieces in "
            "both places.",
            "",
        ]
    else:
        lines += [
            "Everything is installed from BUNDLE/wheels (uv's own wheel is there too: "
            "`pip install BUNDLE/wheels/uv-*.whl` where uv is missing).",
            "",
        ]
    return "\n".join(lines)


# --- using a bundle ------------------------------------------------------------------------------


def stash_dir() -> Path:
    return Path(
        HostSettings.read().bundle_stash
        or Path.home() / ".cache" / "pinmatrix" / "bundle-stash"
    )


def load_manifest(bundle: Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(
            f"--bundle {bundle}: no {MANIFEST} (make one with `python -m pinmatrix bundle`)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable: {exc}") from exc
    if manifest.get("schema") != SCHEMA:
        raise UsageError(
            f"{path}: schema {manifest.get('schema')!r}, this pinmatrix reads {SCHEMA}"
        )
    return dict(manifest)


def _find_piece(bundle: Path, relative: str) -> Path:
    for root in (bundle, stash_dir()):
        candidate = root / relative
        if candidate.is_file():
            return candidate
        hits = list(root.glob(f"**/{Path(relative).name}")) if root.is_dir() else []
        if hits:
            return hits[0]
    raise BundleError(
        f"bundle piece {relative} is neither in {bundle} nor in the stash "
        f"{stash_dir()} (carry its folder, or copy it into the stash first)"
    )


def unpack_sites(bundle: Path, manifest: Mapping[str, Any], echo: Echo) -> Path:
    """Each layer unpacked once into BUNDLE/unpacked/NAME (pieces joined, sha256 checked)."""
    root = Path(bundle) / "unpacked"
    for entry in manifest["layers"]:
        target = root / entry["name"]
        if target.is_dir():
            continue
        pieces = [_find_piece(Path(bundle), p) for p in entry["pieces"]]
        joined = root / (entry["file"] + ".joined")
        root.mkdir(parents=True, exist_ok=True)
        with open(joined, "wb") as f:
            for piece in pieces:
                f.write(piece.read_bytes())
        if sha256(joined) != entry["sha256"]:
            joined.unlink()
            raise BundleError(
                f"bundle layer {entry['name']}: its pieces do not make the packed "
                "file (sha256 differs): a piece is missing, stale or corrupt"
            )
        tmp = root / (entry["name"] + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(joined, "r:xz") as tar:
            tar.extractall(tmp)
        joined.unlink()
        tmp.replace(target)
        echo(f"bundle: unpacked layer {entry['name']} ({entry['bytes'] / 2**20:.1f} MiB packed)")
    return root


def apply_bundle(args: Any, echo: Echo = print) -> dict[str, Any]:
    """`matrix --bundle DIR`: the options that run the bundle's cells offline, set on `args`."""

    bundle = Path(args.bundle)
    manifest = load_manifest(bundle)
    if manifest["probes_digest"] != probes_digest():
        raise UsageError(
            f"--bundle {bundle}: made for probes {manifest['probes_digest'][:12]}, this "
            f"checkout has {probes_digest()[:12]}: the cells would not be the bundled "
            "ones (copy BUNDLE/probes over probes/, or bundle again)"
        )
    if not args.selectors:
        args.selectors = list(manifest["cells"])
    if manifest["form"] == "wheels":
        args.offline = True
        args.find_links = [*(args.find_links or []), str((bundle / "wheels").resolve())]
        return manifest
    root = unpack_sites(bundle, manifest, echo)
    args.offline = True
    args.no_install = True
    args.system_site_packages = True
    rules = []
    for entry in manifest["layers"]:
        conds = ",".join(f"{a}{'!=' if op == '!=' else '='}{v}" for a, op, v in entry["when"])
        folder = (root / entry["name"]).resolve()
        rules.append(parse_extra_site(f"{conds}:{folder}" if conds else str(folder)))
    args.extra_site = [*(args.extra_site or []), *rules]
    return manifest
