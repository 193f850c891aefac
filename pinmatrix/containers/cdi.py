"""CDI (Container Device Interface) specs: find them, parse them, turn one into engine arguments.

The spec format is the CNCF one (https://github.com/cncf-tags/container-device-interface,
SPEC.md, "CDI JSON Specification"): a JSON or YAML file with `cdiVersion`, `kind`
(`vendor.com/class`), `devices` (each a `name` and its `containerEdits`) and top-level
`containerEdits` applied whenever any of its devices is requested. `containerEdits` holds `env`
("K=V"), `deviceNodes` (`path`, optional `hostPath`, `permissions`, `type`, `major`, `minor`,
`fileMode`, `uid`, `gid`), `mounts` (`hostPath`, `containerPath`, `type`, `options`), `hooks`
(`hookName`, `path`, `args`, `env`, `timeout`), `additionalGids`, `intelRdt`, `netDevices`.
Engines read specs from `/etc/cdi` and `/var/run/cdi` (the spec's and Docker's defaults).

Two ways to apply a spec (`gpu_access` picks, in this order of preference):
- **cdi**: the engine applies the spec itself, from `--device nvidia.com/gpu=all`. Docker added this
  in Engine 25.0 behind `"features": {"cdi": true}` in daemon.json (docker/cli 852d198bb5,
  docs/reference/dockerd.md "Enable CDI devices"), and enables it by default since Engine 28.3.0
  (docker/cli 7e040d91ef, "cdi is not experimental anymore"). A daemon with CDI on reports its spec
  folders as `CDISpecDirs` in `docker info` (docker/cli 1c2cc4bbe3, first in v25.0.0); a daemon
  without it (20.10, or CDI off) reports none, and a 20.10 client cannot even name the field.
  Podman reads CDI specs from 4.1 on.
- **nvidia-runtime**: `--gpus all`, where the daemon has an NVIDIA runtime registered (the NVIDIA
  container toolkit's hook injects the driver).
- **cdi-translated**: engines without CDI (Debian's docker.io 20.10): the spec's edits become plain
  flags. deviceNodes -> `--device HOST:PATH:PERMS`; bind mounts -> `--mount type=bind,...`
  (`ro` -> readonly, a propagation option -> bind-propagation); tmpfs mounts -> `--tmpfs`;
  env -> `--env`; additionalGids -> `--group-add`. What cannot be said with flags is listed in
  `untranslated`, never dropped silently: hooks (run by the runtime at create time; the one
  exception is `update-ldcache`, whose `--folder` values become `LD_LIBRARY_PATH`, which is what the
  refreshed ld cache would have let the dynamic loader find), deviceNode uid/gid/fileMode (Docker
  copies the host node's), mount options nosuid/nodev/noexec (Docker's bind mounts cannot take
  them), intelRdt and netDevices.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pinmatrix.containers.container_args import Mount, gpu_args
from pinmatrix.errors import UsageError

GPU_KIND = "nvidia.com/gpu"
DEFAULT_DIRS = ("/etc/cdi", "/var/run/cdi")
ENV_DIRS = "PINMATRIX_CDI_DIRS"  # os.pathsep-separated; replaces DEFAULT_DIRS (tests, odd hosts)
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
KIND_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}"
                     r"[A-Za-z0-9])?$")
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
PERMISSIONS_RE = re.compile(r"^[rwm]{1,3}$")
PROPAGATIONS = {"private", "rprivate", "shared", "rshared", "slave", "rslave"}
UNSAID_MOUNT_OPTIONS = {"nosuid", "nodev", "noexec"}
LDCACHE_HOOK = "update-ldcache"
ROUTES = ("cdi", "nvidia-runtime", "cdi-translated", "none")


class CdiError(UsageError):
    """A spec file that is not a CDI spec: `file:line: what`."""


@dataclass(frozen=True)
class DeviceNode:
    path: str
    host_path: str
    permissions: str = ""
    ignored: tuple[str, ...] = ()   # fields set that Docker's --device cannot carry


@dataclass(frozen=True)
class CdiMount:
    host_path: str
    container_path: str
    type: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[CdiMount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    other: tuple[str, ...] = ()     # intelRdt, netDevices: present, not translatable


@dataclass(frozen=True)
class Device:
    name: str
    edits: Edits


@dataclass(frozen=True)
class Spec:
    path: Path
    version: str
    kind: str
    devices: tuple[Device, ...]
    edits: Edits

    def device(self, name: str) -> Device | None:
        return next((d for d in self.devices if d.name == name), None)


# ---------------------------------------------------------------------------------------------
# parsing: every error names the file and line


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, node: yaml.Node | None, message: str) -> CdiError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return CdiError(f"{self.path}{line}: {message}")

    def mapping(self, node: yaml.Node, what: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what}: expected an object")
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = self.string(key, f"{what}: key")
            if name in out:
                raise self.error(key, f"{what}: {name!r} given twice")
            out[name] = value
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what}: expected a list")
        return list(node.value)

    def record(self, node: yaml.Node, what: str,
               required: Sequence[str] = ()) -> dict[str, yaml.Node]:
        """An object that must have the `required` fields."""
        fields = self.mapping(node, what)
        for key in required:
            if key not in fields:
                raise self.error(node, f"{what}: missing {key!r}")
        return fields

    def only(self, node: yaml.Node, fields: dict[str, yaml.Node], allowed: Sequence[str],
             what: str) -> None:
        """Refuse a field the spec format does not have (checked after the known ones)."""
        for key in fields:
            if key not in allowed:
                raise self.error(node, f"{what}: unknown field {key!r}")

    def entries(self, fields: dict[str, yaml.Node], key: str,
                what: str) -> list[tuple[str, yaml.Node]]:
        """The items of the optional list field `key`, each with its name `what.key[i]`."""
        if key not in fields:
            return []
        items = self.sequence(fields[key], f"{what}.{key}")
        return [(f"{what}.{key}[{i}]", item) for i, item in enumerate(items)]

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag in (
                "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool"):
            raise self.error(node, f"{what}: expected a string")
        return str(node.value)

    def integer(self, node: yaml.Node, what: str) -> int:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            try:
                return int(node.value, 0)
            except ValueError:
                pass
        raise self.error(node, f"{what}: expected an integer")

    def absolute(self, node: yaml.Node, what: str) -> str:
        text = self.string(node, what)
        if not text.startswith("/"):
            raise self.error(node, f"{what}: {text!r} is not an absolute path")
        return text


def load_spec(path: Path | str) -> Spec:
    """Parse one spec file (JSON or YAML); raises CdiError `file:line: ...` on anything wrong."""
    path = Path(path)
    reader = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CdiError(f"{path}: cannot be read: {exc}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CdiError(f"{path}{where}: not JSON or YAML: {problem}") from None
    if root is None:
        raise CdiError(f"{path}: empty file")
    top = reader.record(root, "spec", ("cdiVersion", "kind", "devices"))
    version = reader.string(top["cdiVersion"], "cdiVersion")
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise reader.error(top["cdiVersion"], f"cdiVersion: {version!r} is not a version X.Y.Z")
    kind = reader.string(top["kind"], "kind")
    if not KIND_RE.fullmatch(kind):
        raise reader.error(top["kind"], f"kind: {kind!r} is not vendor.com/class")
    devices = []
    seen: set[str] = set()
    for index, node in enumerate(reader.sequence(top["devices"], "devices")):
        fields = reader.record(node, f"devices[{index}]", ("name",))
        name = reader.string(fields["name"], f"devices[{index}].name")
        if not NAME_RE.fullmatch(name):
            raise reader.error(fields["name"], f"devices[{index}].name: {name!r} is not a device "
                                               "name (letters, digits, '_', '.', '-', ':')")
        if name in seen:
            raise reader.error(fields["name"], f"devices[{index}].name: {name!r} given twice")
        seen.add(name)
        reader.only(node, fields, ("name", "annotations", "containerEdits"), f"devices[{index}]")
        edits = (_edits(reader, fields["containerEdits"], f"devices[{index}].containerEdits")
                 if "containerEdits" in fields else Edits())
        devices.append(Device(name, edits))
    if not devices:
        raise reader.error(top["devices"], "devices: a spec needs at least one device")
    reader.only(root, top, ("cdiVersion", "kind", "devices", "containerEdits", "annotations"),
                "spec")
    edits = _edits(reader, top["containerEdits"], "containerEdits") if "containerEdits" in top \
        else Edits()
    return Spec(path, version, kind, tuple(devices), edits)


def _edits(reader: _Reader, node: yaml.Node, what: str) -> Edits:
    fields = reader.mapping(node, what)
    env: list[str] = []
    for where, item in reader.entries(fields, "env", what):
        text = reader.string(item, where)
        if "=" not in text or text.startswith("="):
            raise reader.error(item, f"{where}: {text!r} is not NAME=VALUE")
        env.append(text)
    nodes: list[DeviceNode] = []
    for where, item in reader.entries(fields, "deviceNodes", what):
        dev = reader.record(item, where, ("path",))
        path = reader.absolute(dev["path"], f"{where}.path")
        host = reader.absolute(dev["hostPath"], f"{where}.hostPath") if "hostPath" in dev else path
        perms = reader.string(dev["permissions"], f"{where}.permissions") \
            if "permissions" in dev else ""
        if perms and not PERMISSIONS_RE.fullmatch(perms):
            raise reader.error(dev["permissions"], f"{where}.permissions: {perms!r} is not made "
                                                   "of r, w, m")
        for key in ("major", "minor", "fileMode", "uid", "gid"):
            if key in dev:
                reader.integer(dev[key], f"{where}.{key}")
        reader.only(item, dev, ("path", "hostPath", "permissions", "type", "major", "minor",
                                "fileMode", "uid", "gid"), where)
        ignored = tuple(k for k in ("fileMode", "uid", "gid") if k in dev)
        nodes.append(DeviceNode(path, host, perms, ignored))
    mounts: list[CdiMount] = []
    for where, item in reader.entries(fields, "mounts", what):
        mount = reader.record(item, where, ("hostPath", "containerPath"))
        reader.only(item, mount, ("hostPath", "containerPath", "type", "options"), where)
        options = tuple(reader.string(o, name) for name, o in
                        reader.entries(mount, "options", where))
        mounts.append(CdiMount(reader.string(mount["hostPath"], f"{where}.hostPath"),
                               reader.absolute(mount["containerPath"], f"{where}.containerPath"),
                               reader.string(mount["type"], f"{where}.type") if "type" in mount
                               else "", options))
    hooks: list[Hook] = []
    for where, item in reader.entries(fields, "hooks", what):
        hook = reader.record(item, where, ("hookName", "path"))
        args = tuple(reader.string(a, name) for name, a in reader.entries(hook, "args", where))
        hooks.append(Hook(reader.string(hook["hookName"], f"{where}.hookName"),
                          reader.absolute(hook["path"], f"{where}.path"), args))
    gids = tuple(reader.integer(g, name) for name, g in
                 reader.entries(fields, "additionalGids", what))
    other = tuple(k for k in ("intelRdt", "netDevices") if k in fields)
    reader.only(node, fields, ("env", "deviceNodes", "mounts", "hooks", "additionalGids",
                               "intelRdt", "netDevices"), what)
    return Edits(tuple(env), tuple(nodes), tuple(mounts), tuple(hooks), gids, other)


# ---------------------------------------------------------------------------------------------
# finding specs


def spec_dirs(dirs: Sequence[str | Path] | None = None) -> tuple[Path, ...]:
    """The folders to search: `dirs`, else $PINMATRIX_CDI_DIRS, else /etc/cdi and /var/run/cdi."""
    if dirs:
        return tuple(Path(d) for d in dirs)
    env = os.environ.get(ENV_DIRS, "").strip()
    if env:
        return tuple(Path(d) for d in env.split(os.pathsep) if d)
    return tuple(Path(d) for d in DEFAULT_DIRS)


@dataclass
class Found:
    specs: list[Spec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # bad files: "file:line: why"

    def of_kind(self, kind: str) -> list[Spec]:
        return [s for s in self.specs if s.kind == kind]


def find_specs(dirs: Iterable[Path]) -> Found:
    """Every spec file in the folders (sorted by name within a folder); a bad one is a problem,
    not an exception, so one broken vendor file does not hide the others."""
    found = Found()
    for folder in dirs:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).iterdir()):
            if path.suffix not in SPEC_SUFFIXES or not path.is_file():
                continue
            try:
                found.specs.append(load_spec(path))
            except CdiError as exc:
                found.problems.append(str(exc))
    return found


def device_names(gpu: str | None) -> list[str]:
    """The CDI device names for a GPU assignment: None -> ["all"], "0,1" -> ["0", "1"]."""
    if gpu is None or gpu in ("", "all"):
        return ["all"]
    names = [g.strip() for g in gpu.removeprefix("device=").split(",") if g.strip()]
    for name in names:
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"GPU {name!r} is not a CDI device name")
    return names


def pick_devices(spec: Spec, names: Sequence[str]) -> list[Device]:
    """The spec's devices for the names; "all" is the spec's own `all` device, else every device.
    Raises LookupError naming what is missing."""
    chosen: list[Device] = []
    for name in names:
        device = spec.device(name)
        if device is None and name == "all":
            chosen.extend(spec.devices)
            continue
        if device is None:
            raise LookupError(f"{spec.path}: no device {name!r} of kind {spec.kind} (has: "
                              f"{', '.join(d.name for d in spec.devices)})")
        chosen.append(device)
    return chosen


# ---------------------------------------------------------------------------------------------
# engine arguments


@dataclass(frozen=True)
class Translation:
    args: tuple[str, ...]
    untranslated: tuple[str, ...]


def translate(spec: Spec, devices: Sequence[Device]) -> Translation:
    """Plain `docker create` flags for the spec's top-level edits plus the chosen devices' edits,
    and one line per edit that flags cannot express (see the module docstring)."""
    args: list[str] = []
    notes: list[str] = []
    env: dict[str, str] = {}
    ld_folders: list[str] = []
    seen_nodes: set[str] = set()
    seen_mounts: set[str] = set()
    gids: set[int] = set()
    for where, edits in [("spec", spec.edits), *((f"device {d.name}", d.edits) for d in devices)]:
        for node in edits.device_nodes:
            if node.path in seen_nodes:
                continue
            seen_nodes.add(node.path)
            _no_separator(node.host_path, node.path)
            perms = node.permissions or "rwm"
            args += ["--device", f"{node.host_path}:{node.path}:{perms}"]
            if node.ignored:
                notes.append(f"{where}: deviceNode {node.path}: {', '.join(node.ignored)} not "
                             "settable with --device (the host node's are used)")
        for mount in edits.mounts:
            if mount.container_path in seen_mounts:
                continue
            seen_mounts.add(mount.container_path)
            arg, note = _mount_args(mount)
            args += arg
            if note:
                notes.append(f"{where}: mount {mount.container_path}: {note}")
        for item in edits.env:
            name, value = item.split("=", 1)
            env[name] = value
        for hook in edits.hooks:
            folders = _ldcache_folders(hook)
            if folders:
                ld_folders += [f for f in folders if f not in ld_folders]
                notes.append(f"{where}: hook {hook.hook_name} {Path(hook.path).name} "
                             f"{LDCACHE_HOOK}: not run; its folders are put on LD_LIBRARY_PATH")
            else:
                notes.append(f"{where}: hook {hook.hook_name} {hook.path} "
                             f"{' '.join(hook.args[1:])}".rstrip() + ": not run (an engine "
                             "without CDI cannot run CDI hooks)")
        for gid in edits.additional_gids:
            if gid and gid not in gids:  # 0 is ignored (CDI SPEC.md, additionalGids)
                gids.add(gid)
                args += ["--group-add", str(gid)]
        for other in edits.other:
            notes.append(f"{where}: {other}: not translatable to engine flags")
    if ld_folders:
        current = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join([*current, *(f for f in ld_folders if f not in current)])
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    return Translation(tuple(args), tuple(notes))


def _no_separator(*paths: str) -> None:
    for path in paths:
        if ":" in path:
            raise ValueError(f"device path {path!r} has ':' in it; --device cannot carry it")


def _mount_args(mount: CdiMount) -> tuple[list[str], str]:
    options = set(mount.options)
    if mount.type == "tmpfs" and not options & {"bind", "rbind"}:
        return ["--tmpfs", mount.container_path], ""
    if mount.type not in ("", "none", "bind") and not options & {"bind", "rbind"}:
        return [], f"type {mount.type!r} is not a bind mount: not translatable"
    read_only = "ro" in options
    spec = Mount(mount.host_path, mount.container_path, read_only=read_only).arg()
    propagation = [o for o in mount.options if o in PROPAGATIONS]
    if propagation:
        spec += f",bind-propagation={propagation[-1]}"
    unsaid = sorted(options & UNSAID_MOUNT_OPTIONS)
    note = f"options {', '.join(unsaid)} not expressible with --mount" if unsaid else ""
    return ["--mount", spec], note


def _ldcache_folders(hook: Hook) -> list[str]:
    """The `--folder` values of an NVIDIA update-ldcache hook (nvidia-cdi-hook / nvidia-ctk hook
    update-ldcache --folder DIR ...), else []."""
    if LDCACHE_HOOK not in hook.args:
        return []
    folders, args = [], list(hook.args)
    for i, arg in enumerate(args):
        if arg == "--folder" and i + 1 < len(args):
            folders.append(args[i + 1])
        elif arg.startswith("--folder="):
            folders.append(arg.split("=", 1)[1])
    return folders


def native_args(kind: str, names: Sequence[str]) -> list[str]:
    """`--device KIND=NAME` per name: the engine applies the spec itself."""
    args: list[str] = []
    for name in names:
        args += ["--device", f"{kind}={name}"]
    return args


# ---------------------------------------------------------------------------------------------
# which route


@dataclass(frozen=True)
class GpuAccess:
    """How a container gets its GPUs: the route (ROUTES), the exact engine arguments, the spec used
    and what of it could not be translated. Recorded in the cell's outcome (`gpu_access`)."""
    route: str
    args: tuple[str, ...] = ()
    spec: str | None = None
    untranslated: tuple[str, ...] = ()
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "args": list(self.args), "spec": self.spec,
                "untranslated": list(self.untranslated), "why": self.why}


def gpu_access(*, gpu: str | None, engine_cdi_dirs: Sequence[str], nvidia_runtime: bool,
               dirs: Sequence[str | Path] | None = None, kind: str = GPU_KIND) -> GpuAccess:
    """The route for `gpu` (None: all; "0,1": those): native CDI where the engine reads a folder
    holding a spec of `kind` with those devices, else the NVIDIA runtime, else the spec
    translated into flags, else none. Raises CdiError when the only spec of `kind` is broken."""
    names = device_names(gpu)
    folders = spec_dirs(dirs)
    engine_folders = {os.path.realpath(d) for d in engine_cdi_dirs}
    found = find_specs([*folders, *(Path(d) for d in engine_cdi_dirs
                                    if Path(d) not in folders)])
    specs = found.of_kind(kind)
    misses: list[str] = []
    usable: list[tuple[Spec, list[Device]]] = []
    for spec in specs:
        try:
            usable.append((spec, pick_devices(spec, names)))
        except LookupError as exc:
            misses.append(str(exc))
    # the last spec of a kind wins: /var/run/cdi (generated) over /etc/cdi (static), as in CDI
    for spec, _ in reversed(usable):
        if os.path.realpath(spec.path.parent) in engine_folders:
            return GpuAccess("cdi", tuple(native_args(kind, names)), str(spec.path),
                             why=f"the engine reads CDI specs from {spec.path.parent}")
    if nvidia_runtime:
        ids = None if names == ["all"] else "device=" + ",".join(names)
        return GpuAccess("nvidia-runtime", tuple(gpu_args(ids or "all")),
                         why="an NVIDIA runtime is registered with the engine")
    if usable:
        spec, devices = usable[-1]
        done = translate(spec, devices)
        why = ("the engine reports no CDI spec folders (CDI needs Docker 25+ with the cdi "
               "feature, on by default from 28.3)" if not engine_cdi_dirs else
               f"the spec's folder is not one of the engine's ({', '.join(engine_cdi_dirs)})")
        return GpuAccess("cdi-translated", done.args, str(spec.path), done.untranslated, why)
    if not specs and found.problems:
        raise CdiError("; ".join(found.problems))
    why = "; ".join(misses) or f"no NVIDIA runtime and no CDI spec of kind {kind} in " + \
        ", ".join(str(f) for f in folders)
    return GpuAccess("none", why=why)


def dump(data: dict[str, Any], path: Path | None) -> str:
    """A spec as text: JSON for a .json path, else YAML."""
    if path is not None and path.suffix == ".json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False)
