"""The venv runner: one virtual environment per cell on the host (HPC nodes, WSL, hosts without
Docker).

The venv is keyed by the lock (and the flags that change what is in it), so an unchanged cell is not
reinstalled. Installs go through uv (`uv venv`, `uv pip install`); where uv is absent, the stdlib
`venv` module and pip take over, and the runner says so once.

Two install modes:
- install (default): `torch.lock`, then `requirements.lock`, from the configured sources (an index,
  a find-links wheelhouse, or only the wheelhouse when offline).
- `no_install`: for a machine with no index at all. Nothing is installed; `extra_sites` folders are
  put on the venv's path through a `.pth` file, and `system_site_packages` reuses the machine's
  torch. The drift check then compares the lock with what is actually there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinmatrix import interrupt
from pinmatrix.activity import doing
from pinmatrix.cell import Cell, Lock, parse_lock
from pinmatrix.containers import gpu_lock
from pinmatrix.containers.engine import Engine
from pinmatrix.environ import compile_cache
from pinmatrix.environ.drift import DRIFT_SIGNATURE, drift_reason, lock_drift
from pinmatrix.environ.interpreters import (
    missing_python_message,
    python_for,
    uv_could_not_get_python,
)
from pinmatrix.environ.site_rules import normalise, sites_for
from pinmatrix.errors import InfraError
from pinmatrix.fsio import read_json, write_text_atomic
from pinmatrix.runners.base import (
    RESULT_NAME,
    RUN_LOG_NAME,
    Prepared,
    RunnerKind,
    RunnerSettings,
    RunOutcome,
    tail,
)
from probes.environment import STACK

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_MARKER = ".pinmatrix-ready.json"
DEFAULT_VENV_ROOT = Path(
    os.environ.get("PINMATRIX_VENV_DIR", Path.home() / ".cache" / "pinmatrix" / "venvs")
)
INSTALL_TIMEOUT_S = 3600


@dataclass
class VenvRunner:
    """Builds and runs cells in host virtual environments.

    `sources` is a `pinmatrix.sources.PackageSources` (or None: the host's uv/pip settings apply).
    `offline`: no index is contacted; only the find-links wheelhouse (`--offline --no-index`).
    """

    venv_root: Path = DEFAULT_VENV_ROOT
    sources: Any = None
    system_site_packages: bool = False
    offline: bool = False
    no_install: bool = False
    # folders, or ExtraSite rules (pinmatrix/environ/site_rules.py); normalised to rules after init
    extra_sites: Sequence[Any] = ()
    # an interpreter path for every venv (e.g. the one holding a CUDA torch), or one per Python
    # version ({"3.12": path, "": every other}; pinmatrix/environ/interpreters.py)
    base_python: Mapping[str, str] | str | None = None
    probes_root: Path = REPO_ROOT  # the folder that holds `probes/`, put on PYTHONPATH
    # pinmatrix/environ/compile_cache.py: one folder per venv key under this root; None
    # (--no-compile-cache):
    # a fresh empty folder in each run's work folder
    compile_cache_root: Path | None = compile_cache.DEFAULT_ROOT
    uv: str | None = field(default_factory=lambda: shutil.which("uv"))
    name: str = "venv"

    def __post_init__(self) -> None:
        self.venv_root = Path(self.venv_root)
        self.extra_sites = normalise(
            self.extra_sites
        )  # pinmatrix/environ/site_rules.py: some only for some cells
        self.notes: list[str] = []
        if self.uv is None:
            self.notes.append(
                "uv not found on PATH: falling back to the stdlib venv module and pip"
            )

    # --- prepare ---------------------------------------------------------------------------------

    def venv_key(self, lock: Lock, cell: Cell | None = None) -> str:
        sites = (
            sites_for(cell, self.extra_sites)
            if cell is not None
            else [s.path for s in self.extra_sites]
        )
        payload = json.dumps(
            {
                "python": lock.python,
                "torch": lock.torch_lock,
                "full": lock.full_lock,
                "system_site_packages": self.system_site_packages,
                "no_install": self.no_install,
                "extra_sites": [str(p) for p in sites],
                "installer": "uv" if self.uv else "pip",
                "base_python": python_for(self.base_python, lock.python),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def prepare(self, cell: Cell, lock: Lock) -> Prepared:
        key = self.venv_key(lock, cell)
        venv = self.venv_root / f"{cell.id}-{key[:12]}"
        python = venv / "bin" / "python"
        marker = venv / READY_MARKER
        if marker.is_file() and python.exists():
            try:
                if json.loads(marker.read_text()).get("key") == key:
                    return self._prepared(cell, venv, python, key, reused=True, log=None)
            except ValueError:
                pass  # a damaged marker: rebuild
        if venv.exists():
            shutil.rmtree(venv)  # half-built or stale: never trust it
        venv.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.venv_root / f"{cell.id}-{key[:12]}.build.log"
        log: list[str] = [f"# {note}" for note in self.notes]
        timings: dict[str, float] = {}
        with doing(f"uv venv (Python {lock.python})" if self.uv else "python -m venv") as step:
            self._create(venv, lock.python, log)
        timings["venv_s"] = step.seconds
        lock_dir = venv / "pinmatrix-lock"
        lock_dir.mkdir()
        (lock_dir / "torch.lock").write_text(lock.torch_lock)
        (lock_dir / "requirements.lock").write_text(lock.full_lock)
        sites = list(sites_for(cell, self.extra_sites)) + self._inherited_sites(log, lock.python)
        if sites:
            site = self._site_packages(python, log)
            # `import site; site.addsitedir(...)` rather than a bare path: a bare line puts the
            # folder on sys.path but skips the .pth files inside it, and nvidia-cutlass-dsl
            # (flash-attn-4's compiler) reaches its `cutlass` package only through its own .pth.
            # addsitedir appends in line order, as bare lines do: the layers keep their precedence.
            (site / "pinmatrix-extra-site.pth").write_text(
                "".join(f"import site; site.addsitedir({str(p)!r})\n" for p in sites))
        if not self.no_install:
            for name, what, timing in (
                    ("torch.lock", f"torch {cell.pins.get('torch')} and its layer",
                     "install_torch_s"),
                    ("requirements.lock", "the rest of the stack", "install_stack_s")):
                if (lock_dir / name).read_text().strip():
                    installer = "uv pip" if self.uv else "pip"
                    with doing(f"{installer} install {name}: downloads and installs {what}"
                               ) as step:
                        self._install(python, lock_dir / name, cell.pins.get("torch"), log)
                    timings[timing] = step.seconds
        marker.write_text(json.dumps({"key": key, "cell": cell.id, "created": time.time()}))
        log_path.write_text("\n".join(log) + "\n")
        return self._prepared(cell, venv, python, key, reused=False, log=log_path,
                              timings=timings)

    def _inherited_sites(self, log: list[str], python_version: str) -> list[Path]:
        """With --system-site-packages from an interpreter that is itself a venv (a GPU image's
        /opt/torch/.venv, say), a new venv would inherit the *base* interpreter's site, not the one
        holding torch: put that venv's site-packages on the path too, after the extra sites."""
        base_python = python_for(self.base_python, python_version)
        if not (self.system_site_packages and base_python):
            return []
        probe = (
            "import json, site, sys; print(json.dumps({'venv': sys.prefix != sys.base_prefix, "
            "'sites': site.getsitepackages()}))"
        )
        try:
            out = subprocess.run(
                [base_python, "-c", probe],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            info = json.loads(out.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise InfraError(
                f"cannot inspect {base_python}: {exc}", "venv-python-missing"
            ) from exc
        if not info["venv"]:
            return []
        sites = [Path(p) for p in info["sites"] if Path(p).is_dir()]
        log.append(
            f"# {base_python} is a venv: its site-packages join the cell's path: {sites}"
        )
        return sites

    def _prepared(
        self, cell: Cell, venv: Path, python: Path, venv_key: str, *, reused: bool,
        log: Path | None, timings: dict[str, float] | None = None
    ) -> Prepared:
        # the venv folder's suffix: the stack's compile-cache folder has the same name
        key = venv_key[:12]
        timings = dict(timings or {})
        with doing("compiling the bytecode of what the probe imports") as step:
            bytecode = self._bytecode(cell, python, key)
        if bytecode and bytecode.get("compiled") is True:
            timings["bytecode_s"] = step.seconds
        return Prepared(
            runner=self.name,
            cell_id=cell.id,
            ref=str(venv),
            reused=reused,
            details={
                "python": str(python),
                "build_log": str(log) if log else None,
                "compile_key": key,
                "bytecode": bytecode,
                "notes": list(self.notes),
                "no_install": self.no_install,
                "system_site_packages": self.system_site_packages,
                "timings": timings,
            },
        )

    def _create(self, venv: Path, python_version: str, log: list[str]) -> None:
        base_python = python_for(self.base_python, python_version)
        if self.uv:
            cmd = [self.uv, "venv", "--quiet", "--python", base_python or python_version]
            if self.system_site_packages:
                cmd.append("--system-site-packages")
            cmd.append(str(venv))
        else:
            interpreter = (
                base_python
                or shutil.which(f"python{python_version}")
                or (sys.executable if sys.version.startswith(python_version) else None)
            )
            if interpreter is None:
                raise InfraError(missing_python_message(python_version), "python-unavailable")
            cmd = [interpreter, "-m", "venv"]
            if self.system_site_packages:
                cmd.append("--system-site-packages")
            cmd.append(str(venv))
        # Without VIRTUAL_ENV: uv must not take the harness's own venv (nox's) as the cell's
        # interpreter.
        try:
            self._call(cmd, log, "venv-create-failed", timeout=600, env=self._source_env())
        except InfraError as exc:
            # uv's own words for "no such interpreter here, and the download failed" are a DNS
            # error: say what is missing and what to do
            if self.uv and not base_python and uv_could_not_get_python(exc.log_tail):
                raise InfraError(missing_python_message(python_version), "python-unavailable",
                                 exc.log_tail) from exc
            raise

    def _install(
        self, python: Path, requirements: Path, torch_pin: str | None, log: list[str]
    ) -> None:
        if self.uv:
            cmd = [self.uv, "pip", "install", "--python", str(python), "-r", str(requirements)]
        else:
            cmd = [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-r",
                str(requirements),
            ]
        cmd += self._source_args(torch_pin)
        self._call(
            cmd, log, "venv-install-failed", timeout=INSTALL_TIMEOUT_S, env=self._source_env()
        )

    def _source_args(self, torch_pin: str | None) -> list[str]:
        """Index / wheelhouse arguments. Offline: the wheelhouse only, no index contacted."""
        src = self.sources
        find_links = [str(ln) for ln in _as_list(getattr(src, "find_links", None))]
        args: list[str]
        if self.offline:
            args = ["--no-index"] + (["--offline"] if self.uv else [])
            for link in find_links:
                args += ["--find-links", link]
            return args
        if self.uv and hasattr(src, "uv_args"):
            return list(src.uv_args(torch_pin))  # credentialed URLs travel in uv_env(), never argv
        # pip: index URLs (which may hold tokens) go through _source_env, not argv
        args = []
        for link in find_links:
            args += ["--find-links", link]
        return args

    def _source_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env["COLUMNS"] = "1000"  # uv's errors unwrapped, whatever the terminal's width
        if self.uv and hasattr(self.sources, "uv_env"):
            env.update(self.sources.uv_env())
        elif not self.uv and not self.offline:
            if getattr(self.sources, "index_url", None):
                env["PIP_INDEX_URL"] = str(self.sources.index_url)
            extras = [str(u) for u in _as_list(getattr(self.sources, "extra_index_urls", None))]
            if extras:
                env["PIP_EXTRA_INDEX_URL"] = " ".join(extras)
        ca = getattr(self.sources, "ca_bundle", None)
        if ca:
            env["SSL_CERT_FILE"] = str(ca)
            env["PIP_CERT"] = str(ca)
        return env

    def _site_packages(self, python: Path, log: list[str]) -> Path:
        out = self._call(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            log,
            "venv-create-failed",
            timeout=60,
        )
        return Path(out.strip().splitlines()[-1])

    def _call(
        self,
        cmd: list[str],
        log: list[str],
        signature: str,
        *,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> str:
        log.append("$ " + " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise InfraError(
                f"{cmd[0]} timed out after {timeout:.0f}s", "timeout", str(exc.stderr or "")
            ) from exc
        except OSError as exc:
            raise InfraError(f"could not start {cmd[0]}: {exc}", signature) from exc
        log.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise InfraError(
                f"{' '.join(cmd[:3])} failed (exit {proc.returncode}): {_last_line(proc.stderr)}",
                signature,
                "\n".join(log),
            )
        return proc.stdout

    # --- run -------------------------------------------------------------------------------------

    def run(
        self, prepared: Prepared, spec_path: Path, out_dir: Path, gpu: str | None, timeout_s: float
    ) -> RunOutcome:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = out_dir / RESULT_NAME
        result.unlink(missing_ok=True)
        work = out_dir / "work"
        work.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        # Only the probes go on the path: the harness's own PYTHONPATH (its jsonschema, say) would
        # otherwise leak into the cell and the table would report packages the cell does not hold.
        # Extra sites reach the venv through its .pth file instead.
        env["PYTHONPATH"] = str(self.probes_root)
        for token in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
            env.pop(token, None)  # tokens are for model fetching, outside the cell
        env["PYTHONNOUSERSITE"] = "1"  # the user's site must not leak into the cell
        # As in the Docker runner: no hub traffic from a cell; a hub cache is used only if HF_HOME
        # holds it.
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
            env.setdefault(key, "1")
        env.update(self.compile_env(prepared, work))
        if self.compile_cache_root is not None:
            # Bytecode goes to the stack's own folder, never beside the sources, so a host-wide
            # PYTHONDONTWRITEBYTECODE (set for read-only images) has no reason to apply to it.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        env.pop(gpu_lock.ENV, None)
        share = gpu_lock.host_lock(gpu)
        if share is not None:
            env[gpu_lock.ENV] = str(share)
        env["PINMATRIX_CELL_ID"] = (
            prepared.cell_id
        )  # pinmatrix/run/gpu_watch.py ties GPU processes to cells
        cmd = [
            prepared.details["python"],
            "-m",
            "probes",
            "--cell",
            str(spec_path),
            "--out",
            str(result),
            "--work",
            str(work),
        ]
        log_path = out_dir / RUN_LOG_NAME
        # a probe of this cell left running by a harness that was SIGKILLed (its own session kept
        # it alive) would share this work folder with the new one: it is ended first
        end_orphan_probe(out_dir)
        with open(log_path, "w", encoding="utf-8") as log, \
                doing("running the probe's checks", log=log_path, marker="[probe"):
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(out_dir),
                start_new_session=True,
            )
            record_probe(out_dir, proc.pid)
            try:
                code = interrupt.wait(proc, timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return RunOutcome(
                    None,
                    f"timeout: the probe ran past {timeout_s:.0f}s and was killed",
                    "timeout",
                    _read_tail(log_path),
                )
            if code is None:  # the run was interrupted: the probe is killed, not waited for
                _kill_group(proc)
                return RunOutcome(None, f"{interrupt.reason()}; the probe was killed",
                                  interrupt.signature(), _read_tail(log_path))
        (out_dir / PROBE_PID_NAME).unlink(missing_ok=True)
        log_tail = _read_tail(log_path)
        if not result.is_file():
            return RunOutcome(
                None, f"the probe wrote no result (exit {code})", "probe-no-result", log_tail
            )
        drift = self.drift(result, prepared)
        if drift:
            return RunOutcome(result, drift_reason(drift), DRIFT_SIGNATURE, log_tail)
        return RunOutcome(result, None, None, log_tail)

    def _bytecode(self, cell: Cell, python: Path, key: str) -> dict[str, Any] | None:
        """Compile, once per stack, the bytecode of what the probe imports at its start (the
        cell's stack packages, probes/environment.py STACK, unsloth aside), by importing them in
        the cell's interpreter with the stack's pycache folder as PYTHONPYCACHEPREFIX; whatever
        the probe imports later is compiled there on first import.

        Measured on the default matrix's CPU route, cold, on this 2-core host under load (load
        average 15 to 22): compiling every module of the stack at prepare time (the transitive
        requirements of the cell's packages, compileall: all of torch, every model family of
        transformers) took 221 s and 382 s per cell; compiling nothing here moved the compile into
        the probe, whose imports check went from 30 s to 84 s, on the cells' one-at-a-time probe
        path. Importing here compiles only what the probe needs, in the build slot, which runs
        beside the previous cell's probe: on one venv of the default matrix, back to back (load
        average 27), compileall of the stack took 113 s and wrote 8,608 files, these imports 51 s
        (22 s of CPU) and 2,997 files. A read-only site (a GPU image's venv, which sets
        PYTHONDONTWRITEBYTECODE) gets its bytecode written here too. A failed import only costs
        the probe that compile: it is the probe's to report, never raised here."""
        if self.compile_cache_root is None:
            return None
        folder = compile_cache.host_folder(Path(self.compile_cache_root), key)
        pycache = folder / "pycache"
        marker = pycache / ".pinmatrix-bytecode.json"
        if marker.is_file():
            return {"compiled": "earlier", "marker": str(marker)}

        modules = [module for package, module in STACK.items()
                   if cell.pins.get(package, "none") != "none" and not package.startswith("unsloth")
                   ] or ["torch"]
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV")}
        # no hub traffic, and no GPU (the scheduler hands those out to probes); the compilers'
        # folders stay untouched, so the probe's first run still finds them cold, as it is
        env.update(PYTHONPYCACHEPREFIX=str(pycache), PYTHONNOUSERSITE="1",
                   CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_HUB_DISABLE_TELEMETRY="1")
        started = time.monotonic()
        # Its own session, waited for in slices (interrupt.wait): a terminal's Ctrl-C reaches the
        # harness only, never the importing child; the harness then ends the whole group.
        # stdout holds only the script's JSON line; what the imports print (warnings) goes to stderr
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out, \
                tempfile.TemporaryFile("w+", encoding="utf-8") as err:
            try:
                proc = subprocess.Popen(
                    [str(python), "-c", IMPORT_SCRIPT, json.dumps(modules)],
                    stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
                    env=env, start_new_session=True)
            except OSError as exc:
                return {"compiled": False, "error": str(exc)[-500:]}
            try:
                code = interrupt.wait(proc, INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return {"compiled": False, "error": f"timeout after {INSTALL_TIMEOUT_S}s"}
            if code is None:  # interrupted: killed, not waited for; no marker, nothing kept
                _kill_group(proc)
                return {"compiled": False, "error": interrupt.reason()}
            out.seek(0)
            err.seek(0)
            output, errors = out.read(), err.read()
        seconds = round(time.monotonic() - started, 1)
        try:
            failed = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"compiled": False, "error": (errors or output)[-500:], "seconds": seconds}
        summary = {"compiled": True, "seconds": seconds, "modules": modules, "failed": failed}
        write_text_atomic(marker, json.dumps(summary))
        return summary

    def compile_env(self, prepared: Prepared, work: Path) -> dict[str, str]:
        """Where the probe's compilers keep their work: the stack's folder (it outlives the run), or
        with --no-compile-cache an empty one inside this run's work folder.

        Bytecode goes there too (PYTHONPYCACHEPREFIX): a site the cell only reads, such as a GPU
        image's read-only venv, would otherwise be compiled from source at every probe start."""
        key = str((prepared.details or {}).get("compile_key") or "")
        if self.compile_cache_root is None or not key:
            folder = compile_cache.host_folder(work, "compile-cache")
        else:
            folder = compile_cache.host_folder(Path(self.compile_cache_root), key)
        return {
            **compile_cache.probe_env(str(folder)),
            "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
        }

    def drift(self, result_path: Path, prepared: Prepared) -> list[str]:
        """Packages whose installed version (the probe's fingerprint) differs from the lock."""
        lock_dir = Path(prepared.ref) / "pinmatrix-lock"
        try:
            data = json.loads(result_path.read_text())
            packages = data["environment"]["packages"]
            pins = data["cell"]["pins"]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # a damaged result is judged by the results module, not here

        locked = (
            parse_lock((lock_dir / "requirements.lock").read_text()) if lock_dir.is_dir() else {}
        )
        # pinmatrix.environ.drift: the comparison both runners share
        return lock_drift(locked, packages, pins)


# Run by the cell's interpreter: import each module named on the command line (JSON list), so that
# Python writes their bytecode under PYTHONPYCACHEPREFIX. Prints the JSON list of those that failed.
IMPORT_SCRIPT = r"""
import importlib, json, sys
failed = []
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except BaseException as exc:  # a broken stack is the probe's to report
        failed.append(f"{name}: {type(exc).__name__}")
print(json.dumps(failed))
"""


PROBE_PID_NAME = "probe.pid"


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22), or None when
    it is gone or a zombie: with the pid, it names one process even after pids wrap."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat_line[stat_line.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def record_probe(out_dir: Path, pid: int) -> None:
    """Note the running probe (the leader of its own session) beside its work folder."""
    write_text_atomic(Path(out_dir) / PROBE_PID_NAME,
                      json.dumps({"pid": pid, "start": _start_ticks(pid)}), mode=0o600)


def end_orphan_probe(out_dir: Path, grace_s: float = 10.0) -> str | None:
    """End the probe a killed harness left running in `out_dir` (its whole process group: SIGTERM,
    then SIGKILL after `grace_s`), and wait until it is gone. The pid file names the process by pid
    and start time, so a pid reused by another process is never signalled. The run folder's writer
    lock (pinmatrix/run/state.py) means no live harness owns that probe. Returns what was done."""
    path = Path(out_dir) / PROBE_PID_NAME
    data = read_json(path, limit=4096)
    if not isinstance(data, dict):
        return None
    pid, start = data.get("pid"), data.get("start")
    done = None
    if isinstance(pid, int) and pid > 1 and start is not None and _start_ticks(pid) == start:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + wait_s
            while _start_ticks(pid) == start and time.monotonic() < deadline:
                time.sleep(0.05)
            if _start_ticks(pid) != start:
                break
        done = f"ended the orphaned probe {pid} of an earlier, killed harness"
    path.unlink(missing_ok=True)
    return done


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    # The probe may have started workers (dataloaders, compilers): end the whole session it leads.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass


def _read_tail(path: Path) -> str:
    try:
        return tail(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def create(settings: RunnerSettings, run_dir: Path, engine: Engine | None,
           base_image: str | None) -> VenvRunner:
    """The run's one venv runner (the cell's base image means nothing here)."""
    return VenvRunner(venv_root=settings.venv_dir or DEFAULT_VENV_ROOT, sources=settings.sources,
                      system_site_packages=settings.system_site_packages,
                      offline=settings.offline, no_install=settings.no_install,
                      extra_sites=tuple(settings.extra_sites), base_python=settings.venv_python,
                      compile_cache_root=(compile_cache.DEFAULT_ROOT if settings.compile_cache
                                          else None))


KIND = RunnerKind(name="venv", summary="a venv per cell on this host (uv, else the venv module)",
                  isolates=False, builds_images=False, tests_installed=True, create=create)
