"""`python -m pinmatrix cdi-spec [-o FILE|-] [--dev-root DIR] [--lib-dir DIR] [--bin-dir DIR]`

Writes a CDI spec (pinmatrix/containers/cdi.py) of kind `nvidia.com/gpu` for the GPUs and driver
files this host has, for hosts with an NVIDIA driver but no NVIDIA container toolkit (`nvidia-ctk
cdi generate` does this where the toolkit is installed, with more care: it also names devices by
UUID and adds its hooks). What it writes:
- one device per `/dev/nvidiaN`, named `N`, plus `all` (every one of them);
- top-level edits: the control nodes (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`,
  `nvidia-modeset`, `nvidia-caps/*`) that exist; a read-only bind mount of every driver library
  (`libcuda.so*`, `libnvidia-*.so*`, `libcudadebugger.so*`, `libnvcuvid.so*`) found in the library
  folders, at the same path in the container, and of `nvidia-smi` and `nvidia-debugdump` where
  found; `LD_LIBRARY_PATH` naming those library folders (no hook refreshes the container's ld
  cache, so the loader is told where they are).

Library folders: `--lib-dir` (repeatable), else /usr/local/nvidia/lib64, /usr/local/nvidia/lib,
/usr/lib/x86_64-linux-gnu, /usr/lib64, plus the folders `ldconfig -p` names for libcuda.
`--dev-root` replaces `/dev` (tests use a folder of harmless files; the spec still names them
where they are). The spec is written atomically (temp file, rename): a failure leaves no half
file. Output: YAML, or JSON for a `.json` name; `-` prints it.

Exit codes: 0 written; 2 bad input (no /dev/nvidiaN under the device root, no driver library,
a folder that does not exist, an output that cannot be written), one line.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinmatrix.commands.base import parse_own
from pinmatrix.containers import cdi
from pinmatrix.errors import BadInput
from pinmatrix.fsio import write_text_atomic
from pinmatrix.run.options import Option, typed

EXIT_OK, EXIT_BAD_INPUT = 0, 2
DEFAULT_OUTPUT = Path("/etc/cdi/pinmatrix-nvidia.yaml")
DEFAULT_LIB_DIRS = ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
                    "/usr/lib/x86_64-linux-gnu", "/usr/lib64")
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
GPU_NODE = re.compile(r"^nvidia(\d+)$")
LIBRARY = re.compile(r"^(libcuda|libcudadebugger|libnvidia-[A-Za-z0-9_-]+|libnvcuvid)\.so(\.|$)")
BINARIES = ("nvidia-smi", "nvidia-debugdump")
SPEC_VERSION = "0.5.0"   # deviceNodes.hostPath appeared in 0.5.0 (CDI SPEC.md, released versions)


class SpecInputError(BadInput):
    """Bad input: one line, exit 2."""


def ldconfig_dirs() -> list[str]:
    """Folders `ldconfig -p` lists libcuda in (empty when ldconfig is absent or knows none)."""
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if Path("/sbin/ldconfig").exists()
                                            else None)
    if not ldconfig:
        return []
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    dirs: list[str] = []
    for line in out.splitlines():
        if "libcuda.so" in line and "=>" in line:
            folder = str(Path(line.split("=>", 1)[1].strip()).parent)
            if folder not in dirs:
                dirs.append(folder)
    return dirs


def build_spec(dev_root: Path, lib_dirs: Sequence[Path], bin_dirs: Sequence[Path],
               kind: str = cdi.GPU_KIND) -> dict[str, Any]:
    if not dev_root.is_dir():
        raise SpecInputError(f"--dev-root {dev_root}: not a folder")
    gpus = sorted(((int(m.group(1)), p) for p in dev_root.iterdir()
                   if (m := GPU_NODE.match(p.name))), key=lambda item: item[0])
    if not gpus:
        raise SpecInputError(f"no GPU device node (nvidiaN) under {dev_root}: is the NVIDIA "
                             "driver loaded?")
    controls = [dev_root / name for name in CONTROL_NODES if (dev_root / name).exists()]
    caps = dev_root / "nvidia-caps"
    if caps.is_dir():
        controls += sorted(p for p in caps.iterdir() if not p.is_dir())
    libraries: list[Path] = []
    folders: list[str] = []
    for folder in lib_dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if LIBRARY.match(path.name) and (path.is_file() or path.is_symlink()) \
                    and path.exists():
                libraries.append(path)
                if str(folder) not in folders:
                    folders.append(str(folder))
    if not any(p.name.startswith("libcuda.so") for p in libraries):
        raise SpecInputError("no libcuda.so* in " + ", ".join(str(d) for d in lib_dirs)
                             + ": name the driver's library folder with --lib-dir")
    binaries = []
    for name in BINARIES:
        for folder in bin_dirs:
            if (folder / name).is_file():
                binaries.append(folder / name)
                break

    def node(path: Path) -> dict[str, str]:
        return {"path": f"/dev/{path.relative_to(dev_root)}", "hostPath": str(path)}

    devices: list[dict[str, Any]] = [
        {"name": str(index), "containerEdits": {"deviceNodes": [node(path)]}}
        for index, path in gpus]
    devices.append({"name": "all",
                    "containerEdits": {"deviceNodes": [node(path) for _, path in gpus]}})
    mounts = [{"hostPath": str(p), "containerPath": str(p), "type": "bind",
               "options": ["ro", "nosuid", "nodev", "bind"]} for p in [*libraries, *binaries]]
    return {
        "cdiVersion": SPEC_VERSION,
        "kind": kind,
        "annotations": {"org.pinmatrix.generator": "python -m pinmatrix cdi-spec"},
        "devices": devices,
        "containerEdits": {
            "env": [f"LD_LIBRARY_PATH={':'.join(folders)}"],
            "deviceNodes": [node(p) for p in controls],
            "mounts": mounts,
        },
    }


HELP = ("write a CDI spec (nvidia.com/gpu) for this host's GPUs and driver files "
        "([-o FILE|-]; pinmatrix/commands/cdi_spec.py)")


_ME = ("cdi-spec",)


@dataclass(frozen=True)
class CdiSpecConfig:
    output: str = typed(Option(
        "--output", f"where to write it (default {DEFAULT_OUTPUT}; - prints it)", aliases=("-o",),
        commands=_ME, default=str(DEFAULT_OUTPUT)), default=str(DEFAULT_OUTPUT))
    dev_root: Path = typed(Option("--dev-root", "the device folder (default /dev)", commands=_ME,
                                  type=Path, default=Path("/dev")), default=Path("/dev"))
    lib_dir: tuple[Path, ...] = typed(Option(
        "--lib-dir",
        f"a driver library folder (repeatable; default: {', '.join(DEFAULT_LIB_DIRS)} and "
        "ldconfig's)", commands=_ME, type=Path, action="append", to_field=tuple), default=())
    bin_dir: tuple[Path, ...] = typed(Option(
        "--bin-dir", "where nvidia-smi is looked for (repeatable; default: PATH)", commands=_ME,
        type=Path, action="append", to_field=tuple), default=())
    kind: str = typed(Option("--kind", f"the kind (default {cdi.GPU_KIND})", commands=_ME,
                             default=cdi.GPU_KIND), default=cdi.GPU_KIND)


def main(argv: Sequence[str]) -> int:
    config = parse_own("cdi-spec", CdiSpecConfig, argv,
                       "write a CDI spec for this host's NVIDIA GPUs and driver files")
    return config if isinstance(config, int) else run(config)


def run(config: CdiSpecConfig) -> int:
    try:
        if not cdi.KIND_RE.fullmatch(config.kind):
            raise SpecInputError(f"--kind {config.kind!r}: not vendor.com/class")
        for folder in config.lib_dir:
            if not folder.is_dir():
                raise SpecInputError(f"--lib-dir {folder}: not a folder")
        lib_dirs = list(config.lib_dir) or [Path(d) for d in (*DEFAULT_LIB_DIRS, *ldconfig_dirs())]
        bin_dirs = list(config.bin_dir) or [
            Path(p) for p in os.environ.get("PATH", "").split(":") if p]
        spec = build_spec(config.dev_root, lib_dirs, bin_dirs, config.kind)
        out = None if config.output == "-" else Path(config.output)
        text = cdi.dump(spec, out)
        if out is None:
            sys.stdout.write(text)
            return EXIT_OK
        if out.exists() and out.is_dir():
            raise SpecInputError(f"-o {out}: is a folder")
        write_text_atomic(out, text)
        cdi.load_spec(out)  # what was written reads back as a spec
        print(f"cdi-spec: {out}: {len(spec['devices']) - 1} GPU(s), "
              f"{len(spec['containerEdits']['mounts'])} driver file(s)")
        return EXIT_OK
    except SpecInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {config.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
