"""A prepared base image made from the host itself: the host's Python, the installed
distributions a cell should take from the base (default: torch and all it requires), the shared
libraries they link against, and the few tools the Dockerfile's RUN steps call, streamed as one tar
to `docker import`. No network, no registry, no debootstrap: the lent H200 has none of them, and its
torch (2.11.0+cu130, in /opt/torch/.venv, seen in reports/h200) exists nowhere else.

What goes in, and why:
- the interpreter (sys.executable resolved; a venv's python is a symlink to its base interpreter)
  and its stdlib and lib-dynload at their host paths, so the interpreter finds its own prefix;
  the stdlib's `site-packages`/`dist-packages` (whatever else the host installed: 703 MB here) and
  CPython's own regression suite `test/` (123 MB of the 248 MB stdlib here) are left out;
- each collected distribution's files (`dist.files`, its RECORD), its whole metadata folder (uv
  writes INSTALLER, REQUESTED and uv_cache.json outside RECORD), and the `__pycache__` bytecode of
  each of its `.py` files (RECORD names no `.pyc`: 771 of them in torch 2.13.0+cpu, installed by
  uv). A distribution of a venv moves from the venv's site-packages to the first site folder of the
  base interpreter: the image runs that interpreter directly, and `uv venv --system-site-packages`
  (the Dockerfile's BASE_SITE path) sees the base interpreter's site, never a venv's. Its files
  outside site-packages (console scripts whose shebang names the venv's python) are left out;
- every shared library `ldd` resolves for those ELF files, the dynamic loader included, except the
  NVIDIA driver's own (`libcuda`, `libnvidia-*`: they must match the host's kernel module, so the
  CDI spec mounts them at run time; pinmatrix/commands/cdi_spec.py); libraries reached through a
  package's RUNPATH (`$ORIGIN/../../nvidia/...`) are inside the copied package trees. `ldd` runs
  without LD_LIBRARY_PATH, since the image has none: what it cannot find is reported;
- `/bin/sh` and the tools the Dockerfile's RUN steps call (DOCKERFILE_TOOLS), with what they link;
  the libraries uv's binary links (UV_SONAMES), since the Dockerfile runs uv before anything else;
- `/etc/passwd` and `/etc/group` with uid/gid 1000 (`pinmatrix`) already present, so the
  Dockerfile's `getent passwd 1000 || useradd ...` never needs useradd or groupadd; `/tmp` (1777);
  `/etc/ssl/certs`, `/etc/ld.so.cache`, `/etc/ld.so.conf*`, `/etc/nsswitch.conf` where present
  (a stale cache entry only falls through to the loader's default folders).

Symlinked folders on the way to a path (`/lib -> usr/lib`, `/lib64 -> usr/lib64` on merged-usr
hosts; the ELF interpreter path `/lib64/ld-linux-x86-64.so.2` goes through one) become symlinks in
the image, and the real path is copied behind them. Modes: folders get r-x for everyone and files
r for everyone (x where the owner has it; no setuid/setgid), because the probe runs as uid 1000 and
pyenv lives under /root (0700 here). Modification times are the host's: Python checks a `.pyc`
against its source's mtime, so new times would make every import recompile (and, on the probe's
read-only root, fail to cache).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any

from pinmatrix.errors import BadInput, HarnessError

# The commands docker/Dockerfile's RUN steps call, found on the Dockerfile's own PATH (a prepared
# base takes BASE_SITE=1; the apt-get/rm branch runs only for a base without python3 + venv, which
# this image never is). Shell built-ins (`.`, `set`, `command`, `[`, `echo`, `printf` in dash,
# `true`) need nothing. Left out on purpose: groupadd/useradd (uid 1000 is in /etc/passwd already),
# apt-get and rm (the no-python branch).
DOCKERFILE_TOOLS: Mapping[str, str] = {
    "sh": "every RUN step runs under /bin/sh -c",
    "mkdir": "step a: mkdir -p /opt/pinmatrix",
    "printf": "step a writes sources.sh (a dash built-in; the binary serves other shells)",
    "cat": "sources.sh: $(cat /run/secrets/...) when an index secret is given",
    "getent": "step a: getent group 1000 / getent passwd 1000",
    "chmod": "step b: chmod -R a+rX /opt/python",
    "grep": "steps c and d: grep -q on each lock",
    "install": "step e: install -d -o 1000 -g 1000 -m 0700 compile-cache",
}
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the Dockerfile's
# What `ldd` lists for uv 0.13.9's binary (the Dockerfile's UV_VERSION) here; looked for beside the
# libc the interpreter links, since the binary itself arrives only during the build.
UV_SONAMES = ("libgcc_s.so.1", "librt.so.1", "libpthread.so.0", "libdl.so.2", "libm.so.6")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/nsswitch.conf")
ETC_TREES = ("/etc/ld.so.conf.d", "/etc/ssl/certs")
DRIVER_LIBRARY = re.compile(r"^(libcuda|libcudadebugger|libnvidia-[A-Za-z0-9_-]+|libnvcuvid)"
                            r"\.so(\.|$)")
STDLIB_LEFT_OUT = ("site-packages", "dist-packages", "test")
LDD_BATCH = 200
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
          "pinmatrix:x:1000:1000:pinmatrix:/tmp:/usr/sbin/nologin\n")
GROUP = "root:x:0:\nnogroup:x:65534:\npinmatrix:x:1000:\n"
LABEL_PREFIX = "org.pinmatrix.base"

# Run with the target interpreter (stdlib only): argv[1] is a JSON list of requested names. Prints
# one JSON object: where the interpreter lives, and the closure of the requested distributions.
INSPECT_SCRIPT = r"""
import json, os, re, site, sys, sysconfig
from importlib import metadata

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

base_vars = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
             "installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
base_paths = sysconfig.get_paths(vars=base_vars)
here = sysconfig.get_paths()
dynload = sysconfig.get_config_var("DESTSHARED") or ""
if not os.path.isdir(dynload):
    dynload = next((p for p in sys.path if p.endswith("lib-dynload")), "")
base_exe = getattr(sys, "_base_executable", None) or sys.executable
try:
    import ensurepip, venv
    has_ensurepip = True
except ImportError:
    has_ensurepip = False
out = {"executable": sys.executable, "real": os.path.realpath(sys.executable),
       "base_real": os.path.realpath(base_exe),
       "version": sys.version.split()[0], "python": "%d.%d" % sys.version_info[:2],
       "prefix": sys.prefix, "base_prefix": sys.base_prefix,
       "in_venv": sys.prefix != sys.base_prefix,
       "stdlib": sorted({base_paths["stdlib"], base_paths["platstdlib"]}),
       "dynload": dynload, "site": sorted({here["purelib"], here["platlib"]}),
       "ensurepip": has_ensurepip, "packages": [], "not_installed": [], "unmet": []}
by_name = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if name and norm(name) not in by_name:
        by_name[norm(name)] = dist
todo = [(norm(n), None) for n in json.loads(sys.argv[1])]
seen = set()
while todo:
    name, wanted_by = todo.pop(0)
    if name in seen:
        continue
    dist = by_name.get(name)
    if dist is None:
        (out["not_installed"] if wanted_by is None else out["unmet"]).append(
            {"name": name, "required_by": wanted_by})
        continue
    seen.add(name)
    requires = []
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue   # an extra nobody asked for
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m:
            requires.append(norm(m.group(1)))
            todo.append((norm(m.group(1)), dist.metadata["Name"]))
    files = None
    if dist.files is not None:
        files = [os.path.normpath(os.path.abspath(str(dist.locate_file(f)))) for f in dist.files]
    meta = getattr(dist, "_path", None)
    out["packages"].append({"name": dist.metadata["Name"], "version": dist.version,
                            "location": os.path.normpath(str(dist.locate_file(""))),
                            "metadata_dir": str(meta) if meta is not None else None,
                            "files": files, "requires": requires,
                            "top_level": (dist.read_text("top_level.txt") or "").split()})
print(json.dumps(out))
"""
# Run with the base interpreter itself (not a venv): the site folders it reads.
BASE_SITE_SCRIPT = "import json, site; print(json.dumps(site.getsitepackages()))"


class HostBaseInputError(BadInput):
    """Bad input: one line naming it (exit 2)."""


class HostBaseError(HarnessError):
    """The host, the engine or the image failed (exit 1)."""


# --- ldd -----------------------------------------------------------------------------------------

@dataclass
class Linked:
    found: list[str] = field(default_factory=list)     # absolute paths, the loader included
    missing: list[str] = field(default_factory=list)   # sonames ldd could not find


_LDD_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+(/\S+)\s+\(0x[0-9a-fA-F]+\)\s*$")
_LDD_MISSING = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$")
_LDD_DIRECT = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-fA-F]+\)\s*$")


def parse_ldd(text: str, files: Sequence[str]) -> dict[str, Linked]:
    """`ldd FILE...` output by file. With one file, ldd prints no `FILE:` header; with several it
    prints one before each. Lines without a path (linux-vdso.so.1, `not a dynamic executable`,
    `statically linked`) add nothing."""
    result: dict[str, Linked] = {f: Linked() for f in files}
    current = files[0] if len(files) == 1 else None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[:1].isspace() and line.rstrip().endswith(":") \
                and line.rstrip()[:-1] in result:
            current = line.rstrip()[:-1]
            continue
        if current is None:
            continue
        if (m := _LDD_FOUND.match(line)):
            result[current].found.append(m.group(2))
        elif (m := _LDD_MISSING.match(line)):
            result[current].missing.append(m.group(1))
        elif (m := _LDD_DIRECT.match(line)):
            result[current].found.append(m.group(1))
    return result


def ldd(files: Sequence[str], runner: Callable[..., Any] = subprocess.run) -> dict[str, Linked]:
    """Run the host's ldd in batches, without LD_LIBRARY_PATH/LD_PRELOAD (the image has neither)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    env["LC_ALL"] = "C"
    out: dict[str, Linked] = {}
    for start in range(0, len(files), LDD_BATCH):
        batch = list(files[start:start + LDD_BATCH])
        proc = runner(["ldd", *batch], capture_output=True, text=True, env=env, timeout=600)
        # ldd exits 1 when any file is not dynamic; the output of the others is still complete
        out.update(parse_ldd(proc.stdout, batch))
    return out


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


# --- the file set --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One tar member: `path` in the image (absolute), `source` on the host (files)."""
    path: str
    kind: str                  # "dir" | "file" | "symlink"
    mode: int
    source: str | None = None
    target: str = ""           # a symlink's target, as the image should read it
    data: bytes | None = None  # generated content (/etc/passwd)
    size: int = 0
    mtime: float = 0.0


def image_mode(kind: str, host_mode: int) -> int:
    """Folders: r-x for all (sticky kept, for /tmp); files: r for all, x for all where the owner
    has it; never setuid/setgid."""
    perms = stat.S_IMODE(host_mode)
    if kind == "dir":
        return (perms & 0o1777) | 0o555
    if kind == "symlink":
        return 0o777
    perms &= 0o777
    perms |= 0o444
    if perms & 0o100:
        perms |= 0o111
    return perms


class FileSet:
    """Host paths to image members. Folder symlinks on the way are kept as symlinks, the real
    path copied behind them; `relocate` moves host folders to other image folders (a venv's
    site-packages to the base interpreter's)."""

    def __init__(self, relocate: Mapping[str, str] | None = None) -> None:
        self.members: dict[str, Member] = {}
        self.relocate = sorted(((os.path.normpath(a), os.path.normpath(b))
                                for a, b in (relocate or {}).items()),
                               key=lambda ab: -len(ab[0]))
        self.missing: list[str] = []
        self.skipped: list[str] = []    # sockets, devices, fifos
        self._done: set[str] = set()

    def image_path(self, host: str) -> str:
        for src, dst in self.relocate:
            if host == src or host.startswith(src + "/"):
                return dst + host[len(src):]
        return host

    def _real_parents(self, path: str) -> str:
        """`path` with every symlinked ancestor folder recorded and replaced by its target."""
        for _ in range(64):
            parts = path.split("/")
            for i in range(2, len(parts)):
                ancestor = "/".join(parts[:i])
                if os.path.islink(ancestor):
                    self._symlink(ancestor)
                    target = os.path.normpath(os.path.join(os.path.dirname(ancestor),
                                                           os.readlink(ancestor)))
                    path = os.path.normpath(target + "/" + "/".join(parts[i:]))
                    break
            else:
                return path
        raise HostBaseError(f"{path}: too many levels of symbolic links")

    def _symlink(self, host: str) -> None:
        where = self.image_path(host)
        if where in self.members:
            return
        target = os.readlink(host)
        if os.path.isabs(target):
            target = self.image_path(os.path.normpath(target))
        st = os.lstat(host)
        self.members[where] = Member(where, "symlink", 0o777, target=target, mtime=st.st_mtime)

    def add(self, path: str) -> str | None:
        """Add one host path (a folder without its contents); follows symlinks to add their
        targets too. Returns the real path added, or None when it does not exist."""
        path = self._real_parents(os.path.normpath(os.path.abspath(path)))
        if path in self._done:
            return path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.missing.append(path)
            return None
        self._done.add(path)
        where = self.image_path(path)
        if stat.S_ISLNK(st.st_mode):
            self._symlink(path)
            target = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
            return self.add(target)
        if stat.S_ISDIR(st.st_mode):
            self.members.setdefault(where, Member(where, "dir", image_mode("dir", st.st_mode),
                                                  mtime=st.st_mtime))
        elif stat.S_ISREG(st.st_mode):
            self.members[where] = Member(where, "file", image_mode("file", st.st_mode),
                                         source=path, size=st.st_size, mtime=st.st_mtime)
        else:
            self.skipped.append(path)
        return path

    def add_tree(self, root: str, leave_out: Iterable[str] = ()) -> None:
        """A folder and everything under it (symlinks kept, not followed into folders);
        `leave_out`: names directly under the root to skip."""
        real = self.add(root)
        if real is None or not os.path.isdir(real):
            return
        skip = set(leave_out)
        for folder, dirs, files in os.walk(real):
            if folder == real:
                dirs[:] = [d for d in dirs if d not in skip]
                files = [f for f in files if f not in skip]
            for name in sorted(dirs):
                self.add(os.path.join(folder, name))
            for name in sorted(files):
                self.add(os.path.join(folder, name))

    def put(self, path: str, kind: str, mode: int, data: bytes | None = None,
            target: str = "") -> None:
        """A generated member (not from the host)."""
        self.members[path] = Member(path, kind, mode, data=data, target=target,
                                    size=len(data or b""), mtime=time.time())

    def ordered(self) -> list[Member]:
        """Every member, each folder of the image before what it holds (missing folders added,
        0755), in path order: `docker import` creates nothing implicitly with a mode we chose."""
        members = dict(self.members)
        for path in list(members):
            parent = str(PurePosixPath(path).parent)
            while parent != "/" and parent not in members:
                members[parent] = Member(parent, "dir", 0o755, mtime=time.time())
                parent = str(PurePosixPath(parent).parent)
        return sorted(members.values(), key=lambda m: PurePosixPath(m.path).parts)

    def files(self) -> list[Member]:
        return [m for m in self.members.values() if m.kind == "file"]


# --- the interpreter and its packages ------------------------------------------------------------

@dataclass
class Plan:
    """What the image will hold, before any byte is copied."""
    info: dict[str, Any]
    fileset: FileSet
    packages: dict[str, str]          # name -> version
    interpreter: str                  # the real interpreter path in the image
    base_site: str                    # where a venv's distributions go
    ldd_missing: dict[str, list[str]] = field(default_factory=dict)  # soname -> who needs it
    driver_left_out: list[str] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)             # tool -> host path

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.fileset.files())

    def labels(self) -> dict[str, str]:
        labels = {
            f"{LABEL_PREFIX}.made-by": "python -m pinmatrix base-image",
            f"{LABEL_PREFIX}.python": str(self.info["version"]),
            f"{LABEL_PREFIX}.interpreter": self.interpreter,
            f"{LABEL_PREFIX}.source-python": str(self.info["executable"]),
            f"{LABEL_PREFIX}.packages": ",".join(f"{n}=={v}" for n, v in
                                                 sorted(self.packages.items())),
        }
        torch = next((v for n, v in self.packages.items() if n.lower() == "torch"), None)
        if torch:
            labels[f"{LABEL_PREFIX}.torch"] = torch
        return labels


def inspect_python(python: str, packages: Sequence[str], timeout: float = 300) -> dict[str, Any]:
    """Run INSPECT_SCRIPT with the target interpreter. Raises HostBaseInputError when the
    interpreter does not run."""
    try:
        proc = subprocess.run([python, "-I", "-c", INSPECT_SCRIPT, json.dumps(list(packages))],
                              capture_output=True, text=True, timeout=timeout)
    except OSError as exc:
        raise HostBaseInputError(f"--python {python}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise HostBaseInputError(f"--python {python}: did not answer in {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HostBaseInputError(f"--python {python}: exit {proc.returncode}: {tail}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def base_site_of(real_python: str) -> str:
    """The first site folder of the base interpreter run directly (not through a venv)."""
    proc = subprocess.run([real_python, "-c", BASE_SITE_SCRIPT], capture_output=True, text=True,
                          timeout=120)
    sites = json.loads(proc.stdout) if proc.returncode == 0 else []
    if not sites:
        raise HostBaseError(f"{real_python}: cannot list its site folders: {proc.stderr.strip()}")
    return str(sites[0])


def add_distribution(fileset: FileSet, package: Mapping[str, Any], keep: Callable[[str], bool]
                     ) -> int:
    """Add one distribution's files (see the module docstring); returns how many paths it named.
    `keep(path)` says whether a file of it belongs in the image (False: a venv's console script)."""
    files = package.get("files")
    location = str(package["location"])
    if files is None:  # no RECORD: its top-level packages whole
        files = []
        for top in package.get("top_level") or []:
            for candidate in (os.path.join(location, top), os.path.join(location, f"{top}.py")):
                if os.path.isdir(candidate):
                    fileset.add_tree(candidate)
                elif os.path.exists(candidate):
                    files.append(candidate)
            files.extend(str(p) for p in _glob_ext(location, top))
    count = 0
    for path in files:
        if not keep(path) or not os.path.lexists(path):
            continue
        fileset.add(path)
        count += 1
        if path.endswith(".py"):
            cache = os.path.join(os.path.dirname(path), "__pycache__")
            stem = os.path.basename(path)[:-3] + "."
            if os.path.isdir(cache):
                for name in sorted(os.listdir(cache)):
                    if name.startswith(stem) and name.endswith(".pyc"):
                        fileset.add(os.path.join(cache, name))
    if package.get("metadata_dir") and keep(str(package["metadata_dir"])):
        fileset.add_tree(str(package["metadata_dir"]))
    return count


def _glob_ext(location: str, top: str) -> Iterator[str]:
    """`top`'s extension modules directly in `location` (`_yaml.cpython-311-...so`)."""
    try:
        names = os.listdir(location)
    except OSError:
        return
    for name in names:
        if name.startswith(top + ".") and name.endswith(".so"):
            yield os.path.join(location, name)


def plan_image(python: str, packages: Sequence[str],
               say: Callable[[str], None] = lambda line: None) -> Plan:
    """Everything the image will hold; raises HostBaseInputError for bad input."""
    if shutil.which("ldd") is None:
        raise HostBaseError("ldd not found: it lists the shared libraries the image must hold "
                            "(Debian/Ubuntu: libc-bin)")
    if os.sep in python and not os.path.exists(python):
        raise HostBaseInputError(f"--python {python}: no such file")
    found = shutil.which(python)
    if found is None:
        raise HostBaseInputError(f"--python {python}: not found (not an executable file, nor "
                                 "on PATH)")
    info = inspect_python(found, packages)
    if info["not_installed"]:
        names = ", ".join(item["name"] for item in info["not_installed"])
        raise HostBaseInputError(f"--package {names}: not installed for {found} (Python "
                                 f"{info['version']})")
    if not info["ensurepip"]:
        raise HostBaseInputError(f"--python {found}: its interpreter cannot import ensurepip and "
                                 "venv, and docker/Dockerfile step (a) bootstraps uv with "
                                 "`python3 -m venv` (Debian/Ubuntu: the python3.X-venv package)")
    real = str(info["base_real"])
    base_site = base_site_of(real) if info["in_venv"] else str(info["site"][0])
    relocate: dict[str, str] = {}
    venv_prefix = str(info["prefix"]) if info["in_venv"] else None
    if venv_prefix:
        for site_dir in info["site"]:
            relocate[str(site_dir)] = base_site
    fileset = FileSet(relocate)
    say(f"python {info['version']}: {real}" + (f" (the base of venv {venv_prefix}; its "
                                               f"site-packages go to {base_site})"
                                               if venv_prefix else ""))

    fileset.add(real)
    for folder in info["stdlib"]:
        fileset.add_tree(str(folder), leave_out=STDLIB_LEFT_OUT)
    if info["dynload"]:
        fileset.add_tree(str(info["dynload"]))
    venv_sites = [os.path.normpath(str(s)) for s in info["site"]] if venv_prefix else []

    def keep(path: str) -> bool:
        if not venv_prefix or not (path == venv_prefix or path.startswith(venv_prefix + "/")):
            return True
        return any(path == s or path.startswith(s + "/") for s in venv_sites)

    versions: dict[str, str] = {}
    for package in info["packages"]:
        add_distribution(fileset, package, keep)
        versions[str(package["name"])] = str(package["version"])
    for item in info["unmet"]:
        say(f"note: {item['required_by']} requires {item['name']}, which is not installed (a "
            "marker false on this host, or a broken install); left out")

    tools: dict[str, str] = {}
    for tool in DOCKERFILE_TOOLS:
        where = "/bin/sh" if tool == "sh" else shutil.which(tool, path=TOOL_PATH)
        if where and os.path.exists(where):
            fileset.add(where)
            tools[tool] = where
    for path in ETC_FILES:
        if os.path.exists(path):
            fileset.add(path)
    for path in ETC_TREES:
        if os.path.isdir(path):
            fileset.add_tree(path)

    plan = Plan(info, fileset, versions, real, base_site, tools=tools)
    _add_linked(plan, say)
    _finish(plan, found)
    return plan


def _add_linked(plan: Plan, say: Callable[[str], None]) -> None:
    """The shared libraries of every ELF file, until nothing new appears (a library's own
    dependencies are listed by ldd already, so one more round suffices in practice)."""
    fileset = plan.fileset
    checked: set[str] = set()
    libc_dirs: set[str] = set()
    rounds = 0
    while True:
        elves = sorted(m.source for m in fileset.files()
                       if m.source and m.source not in checked
                       and (".so" in os.path.basename(m.source) or m.mode & 0o100)
                       and is_elf(m.source))
        if not elves:
            break
        rounds += 1
        checked.update(elves)
        linked = ldd(elves)
        for who, deps in linked.items():
            for lib in deps.found:
                if DRIVER_LIBRARY.match(os.path.basename(lib)):
                    if lib not in plan.driver_left_out:
                        plan.driver_left_out.append(lib)
                    continue
                if os.path.basename(lib) == "libc.so.6":
                    libc_dirs.add(os.path.dirname(lib))
                fileset.add(lib)
            for soname in deps.missing:
                if not DRIVER_LIBRARY.match(soname):
                    plan.ldd_missing.setdefault(soname, []).append(who)
        if rounds == 1:
            for folder in sorted(libc_dirs):   # uv's binary arrives during the build
                for soname in UV_SONAMES:
                    if os.path.exists(os.path.join(folder, soname)):
                        fileset.add(os.path.join(folder, soname))
    if plan.ldd_missing:
        shown = ", ".join(f"{name} (by {os.path.basename(who[0])})"
                          for name, who in sorted(plan.ldd_missing.items())[:5])
        say(f"warning: ldd found no {len(plan.ldd_missing)} librar"
            f"{'y' if len(plan.ldd_missing) == 1 else 'ies'}: {shown}; the image lacks "
            f"{'it' if len(plan.ldd_missing) == 1 else 'them'} too: install the package that "
            "provides each on this host (or put its folder on LD_LIBRARY_PATH) and run "
            "base-image again")


def _finish(plan: Plan, found_python: str) -> None:
    """Generated members: passwd/group, /tmp, and `python3` on the Dockerfile's PATH."""
    fs = plan.fileset
    fs.put("/etc/passwd", "file", 0o644, PASSWD.encode())
    fs.put("/etc/group", "file", 0o644, GROUP.encode())
    fs.put("/tmp", "dir", 0o1777)
    # The Dockerfile asks `PATH=/usr/local/bin:/usr/bin:/bin command -v python3`.
    on_path = [f"{d}/python3" for d in ("/usr/local/bin", "/usr/bin", "/bin")]
    if plan.interpreter not in on_path:
        same = [p for p in on_path if os.path.exists(p)
                and os.path.realpath(p) == plan.interpreter]
        if same:
            fs.add(same[0])
        else:
            fs.put("/usr/local/bin/python3", "symlink", 0o777, target=plan.interpreter)


# --- the tar stream and the import ---------------------------------------------------------------

def tar_info(member: Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.path.lstrip("/"))
    info.mode = member.mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = int(member.mtime)
    if member.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif member.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = member.target
    else:
        info.type = tarfile.REGTYPE
        info.size = member.size
    return info


class Progress:
    """A line every `every_s` seconds while streaming: files and bytes so far, and the rate."""

    def __init__(self, total_files: int, total_bytes: int, say: Callable[[str], None],
                 every_s: float = 10.0) -> None:
        self.total_files, self.total_bytes, self.say, self.every_s = (total_files, total_bytes,
                                                                      say, every_s)
        self.files = self.bytes = 0
        self.start = self.last = time.monotonic()

    def step(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.say(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        return (f"streamed {self.files}/{self.total_files} files, {mib(self.bytes)}/"
                f"{mib(self.total_bytes)} in {elapsed:.0f} s ({mib(self.bytes / elapsed)}/s)")


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GiB"


def write_tar(members: Sequence[Member], out: IO[bytes], progress: Progress | None = None) -> None:
    """Stream the members as one tar (no seeking: `docker import -` reads a pipe). A file whose
    size changed while it was read is an error, not a silently short member."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tar_info(member)
            if member.kind == "file" and member.data is not None:

                tar.addfile(info, io.BytesIO(member.data))
            elif member.kind == "file":
                assert member.source is not None
                with open(member.source, "rb") as handle:
                    if os.fstat(handle.fileno()).st_size != member.size:
                        raise HostBaseError(f"{member.source}: changed while the image was made")
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
            if progress is not None and member.kind == "file":
                progress.step(member.size)


def import_changes(plan: Plan) -> list[str]:
    changes = [f"ENV PATH={TOOL_PATH}", 'CMD ["python3"]']
    for key, value in plan.labels().items():
        changes.append(f"LABEL {key}={json.dumps(value)}")
    return changes


def import_image(engine: Any, plan: Plan, say: Callable[[str], None],
                 nonce: str) -> tuple[str, float]:
    """`docker import` the stream, untagged, labelled `org.pinmatrix.base.nonce=NONCE`; returns
    (image id, seconds). On a failure while streaming the import is killed before the tar ends,
    so the engine commits nothing; a failure after that is cleaned up by the nonce
    (remove_by_nonce), since the import may have committed an image whose id never reached us."""
    args = ["import", "--change", f"LABEL {LABEL_PREFIX}.nonce={nonce}"]
    for change in import_changes(plan):
        args += ["--change", change]
    members = plan.fileset.ordered()
    progress = Progress(len(plan.fileset.files()), plan.total_bytes, say)
    start = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(engine.cmd(*args, "-"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            write_tar(members, proc.stdin, progress)
            proc.stdin.close()
            stdout = proc.stdout.read()
            proc.wait()
        except BrokenPipeError:  # the engine stopped reading (a full disk, a dead daemon)
            proc.kill()
            proc.wait()
            errors.seek(0)
            raise HostBaseError("docker import stopped reading the stream after "
                                f"{progress.files} files: "
                                f"{errors.read().decode(errors='replace').strip()[-400:]}"
                                ) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise HostBaseError(f"docker import failed (exit {proc.returncode}): "
                            f"{stderr.strip()[-400:]}")
    image_id = stdout.decode().strip().splitlines()[-1].strip()
    say(progress.line() + f"; imported as {image_id[:19]} in {took:.0f} s")
    return image_id, took


def remove_by_nonce(engine: Any, nonce: str) -> None:
    """Remove every image this call imported (found by its nonce label), tagged or not."""
    proc = subprocess.run(engine.cmd("images", "--all", "--quiet", "--no-trunc", "--filter",
                                     f"label={LABEL_PREFIX}.nonce={nonce}"),
                          capture_output=True, text=True, timeout=120)
    for image in sorted(set(proc.stdout.split())):
        remove_image(engine, image)


VERIFY_SCRIPT = r"""
import importlib, json, sys
from importlib import metadata
want = json.loads(sys.argv[1])
seen = {name: metadata.version(name) for name in want["versions"]}
for module in want["imports"]:
    importlib.import_module(module)
print(json.dumps({"python": sys.version.split()[0], "executable": sys.executable,
                  "versions": seen}))
"""


def verify_image(engine: Any, image: str, plan: Plan, requested: Sequence[str]) -> dict[str, Any]:
    """Run the image's `python3` as uid 1000 with no network: every collected distribution has
    its version, and each requested one imports (its top_level.txt names)."""
    imports: list[str] = []
    for package in plan.info["packages"]:
        if _norm(package["name"]) in {_norm(r) for r in requested}:
            imports.extend(package.get("top_level") or [package["name"].replace("-", "_")])
    want = {"versions": sorted(plan.packages), "imports": imports}
    proc = subprocess.run(engine.cmd("run", "--rm", "--network", "none", "--user", "1000:1000",
                                     "--entrypoint", "python3", image, "-c", VERIFY_SCRIPT,
                                     json.dumps(want)),
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise HostBaseError("the imported image does not run its python3 as uid 1000: "
                            f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    seen = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    wrong = {n: (v, seen["versions"].get(n)) for n, v in plan.packages.items()
             if seen["versions"].get(n) != v}
    if wrong or seen["python"] != plan.info["version"]:
        raise HostBaseError(f"the image's python3 sees other versions than the host: {wrong}, "
                            f"python {seen['python']}")
    return seen


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_size(engine: Any, image: str) -> int:
    proc = subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Size}}", image),
                          capture_output=True, text=True, timeout=60)
    try:
        return int(proc.stdout.strip())
    except ValueError:
        return 0


def remove_image(engine: Any, image: str) -> None:
    subprocess.run(engine.cmd("rmi", "--force", image), capture_output=True, timeout=300)


def make_image(engine: Any, plan: Plan, tag: str, requested: Sequence[str],
               say: Callable[[str], None]) -> dict[str, Any]:
    """Import, verify, then tag: a failure (or Ctrl-C) at any step removes what was imported, so
    the tag is either the verified image or untouched."""
    nonce = uuid.uuid4().hex
    try:
        image_id, took = import_image(engine, plan, say, nonce)
        start = time.monotonic()
        seen = verify_image(engine, image_id, plan, requested)
        say(f"verified in {time.monotonic() - start:.0f} s: python {seen['python']} as uid 1000, "
            f"{len(seen['versions'])} distributions at the host's versions")
        tagged = subprocess.run(engine.cmd("tag", image_id, tag), capture_output=True, text=True,
                                timeout=120)
        if tagged.returncode != 0:
            raise HostBaseError(f"docker tag {tag}: {tagged.stderr.strip()}")
    except BaseException:
        remove_by_nonce(engine, nonce)
        raise
    return {"image": tag, "id": image_id, "import_s": round(took, 1),
            "size": image_size(engine, image_id), "labels": plan.labels()}
