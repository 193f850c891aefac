"""The docker runner: one image per cell (built or reused by content tag), the probe run in a
locked-down container.

prepare: assemble a small per-build context (locks, probes, hardlinks to the wheelhouse), derive the
image tag from everything that goes in, and build with BuildKit only when that tag is missing.
run: the probe runs as uid 1000 with no network, a read-only root, the spec mounted read-only and a
results folder mounted read-write; exit codes and the engine's own state become classified outcomes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinmatrix import interrupt
from pinmatrix.activity import doing
from pinmatrix.cell import Cell, Lock, install_lock, provided_by_base
from pinmatrix.containers import cdi, gpu_lock
from pinmatrix.containers import engine as engines
from pinmatrix.containers.container_args import Mount, security_args
from pinmatrix.containers.engine import Engine
from pinmatrix.environ import compile_cache
from pinmatrix.environ.drift import DRIFT_SIGNATURE, drift_reason, result_drift
from pinmatrix.errors import InfraError
from pinmatrix.probes_source import PROBES_DIR, SKIPPED_DIRS, SKIPPED_SUFFIXES, probes_digest
from pinmatrix.runners.base import (
    RESULT_NAME,
    RUN_LOG_NAME,
    EngineNeed,
    Prepared,
    RunnerKind,
    RunnerSettings,
    RunOutcome,
    tail,
)

if TYPE_CHECKING:  # pinmatrix.sources is written alongside; only its attributes are used here
    from pinmatrix.sources import PackageSources

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DEFAULT_BASE_IMAGE = "pinmatrix/base:bookworm-py311"
IMAGE_REPO = "pinmatrix/cell"
CONTAINER_UID = "1000:1000"
PYTHON_PIN = re.compile(r"^3\.\d{1,2}$")
IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
PULL_POLICIES = ("missing", "always", "never")  # --pull; nightly uses always
PULL_TIMEOUT_S = 3600.0
# A failed `docker pull`, told apart by the engine's words (checked in this order: a registry that
# refuses an anonymous pull of a missing repository says "pull access denied", which means
# authentication is needed as far as anyone can tell from outside).
PULL_SIGNATURES = (
    (re.compile(r"unauthorized|authentication required|pull access denied|no basic auth "
                r"credentials|denied: requested access|401 Unauthorized", re.I),
     "pull-auth-required", "the registry wants a login: `docker login REGISTRY`, then run again"),
    (re.compile(r"manifest unknown|manifest for \S+ not found|not found: manifest|repository "
                r"does not exist|name unknown|: not found", re.I),
     "pull-image-not-found", "the registry has no such image or tag: check the base_image axis of "
                             "the matrix (or build it locally and pass `--pull never`)"),
    (re.compile(r"connection refused|no such host|i/o timeout|dial tcp|TLS handshake timeout|"
                r"network is unreachable|server misbehaving|context deadline exceeded|"
                r"server gave HTTP response to HTTPS client|x509:", re.I),
     "pull-registry-unreachable", "the registry cannot be reached from the Docker daemon: check "
                                  "its network, proxy (the daemon's own HTTPS_PROXY) and CA; or "
                                  "load the image another way and pass `--pull never`"),
)


def classify_pull(text: str) -> tuple[str, str]:
    """(signature, remedy) of a failed pull's output."""
    for pattern, signature, remedy in PULL_SIGNATURES:
        if pattern.search(text or ""):
            return signature, remedy
    return "pull-failed", "see the pull log; `docker pull IMAGE` by hand says more"
BUILD_TIMEOUT_S = 3600.0
CONTROL_TIMEOUT_S = 120.0
# Only these files of the find-links folder enter the build context (as hardlinks).
WHEELHOUSE_SUFFIXES = (".whl", ".tar.gz", ".zip")


# ---------------------------------------------------------------------------------------------
# identity


def image_tag(*, torch_lock: str, full_lock: str, dockerfile: str, probes_digest: str,
              base_image: str, python: str) -> str:
    """`pinmatrix/cell:<16 hex>`: the same inputs give the same tag, so an unchanged cell is never
    rebuilt."""
    payload = json.dumps({"torch_lock": torch_lock, "full_lock": full_lock,
                          "dockerfile": dockerfile,
                          "probes": probes_digest, "base_image": base_image, "python": python},
                         sort_keys=True)
    return f"{IMAGE_REPO}:{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# build inputs
def find_links_dirs(sources: Any) -> list[Path]:
    """Local folders among the sources' find-links (URLs cannot be bind-mounted and are left
    out)."""
    raw = getattr(sources, "find_links", None) if sources is not None else None
    if not raw:
        return []
    items = [raw] if isinstance(raw, (str, Path)) else list(raw)
    return [Path(i) for i in items if "://" not in str(i) and Path(i).is_dir()]


def assemble_context(dest: Path, *, torch_lock: str, full_lock: str, dockerfile: Path,
                     probes_dir: Path, wheelhouses: Sequence[Path]) -> dict[str, int]:
    """(Re)write the build context in `dest`. Wheels are hardlinked (a copy only across
    filesystems).

    `dest` may hold an earlier build's context: the small files are rewritten, the wheelhouse is
    synchronised (stale links removed, missing ones added). A stable `dest` lets BuildKit send only
    what changed instead of the whole wheelhouse on every build.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dockerfile, dest / "Dockerfile")
    (dest / "torch.lock").write_text(torch_lock)
    # what a prepared base already holds (`# pinmatrix-base:` lines) is not installed again
    (dest / "requirements.lock").write_text(install_lock(full_lock))
    shutil.rmtree(dest / "probes", ignore_errors=True)
    shutil.copytree(probes_dir, dest / "probes",
                    ignore=shutil.ignore_patterns(*SKIPPED_DIRS,
                                                  *(f"*{x}" for x in SKIPPED_SUFFIXES)))
    wanted: dict[str, Path] = {}
    for folder in wheelhouses:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.endswith(WHEELHOUSE_SUFFIXES):
                # first folder wins, as with repeated --find-links
                wanted.setdefault(path.name, path)
    counts = _sync_links(dest / "wheelhouse", wanted)
    # uv's own wheels apart, for the uv bootstrap (Dockerfile step a): mounting the whole wheelhouse
    # there would tie the first layers, and so the shared torch layer, to every wheelhouse change
    _sync_links(dest / "bootstrap", {n: p for n, p in wanted.items() if n.startswith("uv-")})
    return counts


def _sync_links(folder: Path, wanted: dict[str, Path]) -> dict[str, int]:
    """Make `folder` hold exactly `wanted` (name -> source): hardlinks, copies across filesystems;
    links already right are kept."""
    folder.mkdir(exist_ok=True)
    counts = {"linked": 0, "copied": 0, "kept": 0}
    for existing in folder.iterdir():
        source = wanted.get(existing.name)
        if source is None or not _same_file(source, existing):
            existing.unlink()
    for name, source in wanted.items():
        target = folder / name
        if target.exists():
            counts["kept"] += 1
            continue
        try:
            os.link(source, target)
            counts["linked"] += 1
        except OSError:
            shutil.copy2(source, target)
            counts["copied"] += 1
    return counts


def _same_file(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino) or (sa.st_size, sa.st_mtime_ns) == (
        sb.st_size,
        sb.st_mtime_ns,
    )


@contextlib.contextmanager
def context_slot(root: Path) -> Iterator[Path]:
    """A build-context folder under `root` held under an exclusive lock; parallel builds take other
    slots."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(64):
        lock_path = root / f"slot-{index}.lock"
        fh = open(lock_path, "a+")  # noqa: SIM115 - held open: the lock lives as long as the slot
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        try:
            yield root / f"slot-{index}"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        return
    raise InfraError(f"no free build-context slot under {root}", signature="build-context-busy")


def default_context_root() -> Path:
    base = os.environ.get("PINMATRIX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pinmatrix")
    return Path(base) / "build-context"


def secret_args(sources: Any, secret_dir: Path) -> list[str]:
    """`--secret` arguments. Values that are not files are written 0600 outside the build
    context."""
    if sources is None:
        return []
    args: list[str] = []
    ca = getattr(sources, "ca_bundle", None)
    if ca:
        if not Path(ca).is_file():
            raise InfraError(f"CA bundle {ca} is not a file", signature="build-ca-bundle-missing")
        args += ["--secret", f"id=ca_bundle,src={Path(ca).resolve()}"]
    values = {
        "index_url": getattr(sources, "index_url", None) or "",
        "extra_index_urls": " ".join(getattr(sources, "extra_index_urls", None) or ()),
        "torch_backend": getattr(sources, "torch_backend", None) or "",
    }
    for secret_id, value in values.items():
        if not value:
            continue
        path = secret_dir / secret_id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        args += ["--secret", f"id={secret_id},src={path}"]
    return args


BUILD_SIGNATURES = (
    (re.compile(r"No solution found|no matching distribution|not found in the package registry|"
                r"Because .* we can conclude", re.I), "build-install-unsatisfiable"),
    (re.compile(r"hash mismatch|Hash mismatch|doesn't match any of the", re.I),
     "build-hash-mismatch"),
    (re.compile(r"Failed to fetch|Connection refused|Temporary failure in name resolution|"
                r"timed out|Could not connect|certificate verify failed|invalid peer certificate",
                re.I),
     "build-network"),
    (re.compile(r"pull access denied|repository does not exist|failed to resolve source metadata",
                re.I),
     "build-base-image-missing"),
    (re.compile(r"no space left on device", re.I), "build-disk-full"),
    (re.compile(r"Failed to build|error: subprocess-exited-with-error|Failed to prepare "
                r"distributions", re.I),
     "build-sdist-failed"),
)


def classify_build_log(log: str) -> str:
    for pattern, signature in BUILD_SIGNATURES:
        if pattern.search(log):
            return signature
    return "build-failed"


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exit:
    code: int
    oom_killed: bool


def classify_exit(exit: Exit, has_result: bool) -> tuple[str | None, str | None]:
    """(infra_reason, signature) for a finished container; (None, None) when the result stands."""
    if exit.code == 0 and has_result:
        return None, None
    if exit.oom_killed:
        return "probe killed: out of memory (container memory limit)", "container-oom-killed"
    if exit.code == 139:
        return "probe crashed: segmentation fault (SIGSEGV)", "probe-segfault"
    if exit.code == 137:
        return "probe killed by SIGKILL", "probe-killed"
    if exit.code == 134:
        return "probe aborted (SIGABRT)", "probe-abort"
    if exit.code in (125, 126, 127):
        return (
            f"container could not start the probe (exit {exit.code})",
            f"container-exit-{exit.code}",
        )
    if exit.code == 0:
        return "probe exited 0 without writing a result", "probe-no-result"
    return f"probe exited {exit.code} without a usable result", f"probe-exit-{exit.code}"


class DockerRunner:
    """Runner protocol (docs/CONTRACTS.md §6) on a Docker engine with BuildKit."""

    name = "docker"

    def __init__(self, engine: Engine, sources: PackageSources | None, reports_dir: Path, *,
                 cpu_only: bool = False, base_image: str = DEFAULT_BASE_IMAGE,
                 memory: str | None = None,
                 dockerfile: Path = DOCKERFILE, probes_dir: Path = PROBES_DIR,
                 hf_home: Path | None = None,
                 build_timeout_s: float = BUILD_TIMEOUT_S, pids_limit: int | None = 4096,
                 context_root: Path | None = None, compile_cache: bool = True,
                 pull: str = "missing", echo: Any = None,
                 cdi_dirs: Sequence[str] | None = None) -> None:
        if not IMAGE_NAME.fullmatch(base_image):
            raise ValueError(f"base image name {base_image!r} is not a valid image reference")
        if pull not in PULL_POLICIES:
            raise ValueError(f"pull policy {pull!r} not one of {PULL_POLICIES}")
        self.pull = pull
        # where the pull's progress goes, line by line (default: stderr)
        self.echo = echo
        self._pulled: tuple[str, ...] | None = None  # ("ok",) or (reason, signature, log)
        self._pull_lock = threading.Lock()
        self.engine = engine
        self.sources = sources
        self.reports_dir = Path(reports_dir)
        self.cpu_only = cpu_only
        self.base_image = base_image
        self.memory = memory
        self.dockerfile = Path(dockerfile)
        self.probes_dir = Path(probes_dir)
        self.hf_home = hf_home
        self.build_timeout_s = build_timeout_s
        self.pids_limit = pids_limit
        # pinmatrix/environ/compile_cache.py: a named volume per stack
        self.compile_cache = compile_cache
        self.context_root = Path(context_root) if context_root else default_context_root()
        # where CDI specs are looked for (pinmatrix/containers/cdi.py); None: $PINMATRIX_CDI_DIRS,
        # else /etc/cdi and /var/run/cdi
        self.cdi_dirs = tuple(cdi_dirs) if cdi_dirs else None
        # --offline, read from the package sources as the resolver reads it: builds run with
        # --network none and install from the wheelhouse alone (docker/Dockerfile OFFLINE); the
        # wheelhouse must then hold uv's wheel too
        self.offline = bool(getattr(sources, "offline", False))

    # -- prepare -------------------------------------------------------------------------------
    def tag_for(self, lock: Lock) -> str:
        python = _python_pin(lock.python)
        return image_tag(torch_lock=lock.torch_lock, full_lock=lock.full_lock,
                         dockerfile=self.dockerfile.read_text(),
                         probes_digest=probes_digest(self.probes_dir),
                         base_image=f"{self.base_image}@{self._base_image_id()}", python=python)

    def image_exists(self, tag: str) -> bool:
        return self._docker("image", "inspect", "--format", "{{.Id}}", tag).returncode == 0

    def prepare(self, cell: Cell, lock: Lock) -> Prepared:
        python = _python_pin(lock.python)
        tag = self.tag_for(lock)
        log_path = self.reports_dir / "logs" / f"{lock.cell_id}.build.log"
        # what `run` needs whether the image is built now or reused: the lock (drift) and the
        # stack's cache
        needed = {"locked": lock.pinned(),
                  "compile_key": compile_cache.stack_key(lock,
                                                         f"{self.base_image}@{self._base_image_id()}")}
        if self.image_exists(tag):
            return Prepared(self.name, lock.cell_id, tag, reused=True,
                            details={"build_log": None, "build_s": 0.0, **needed})
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="pinmatrix-secrets-") as tmp, \
                context_slot(self.context_root) as context:
            secrets = Path(tmp)
            secrets.chmod(0o700)
            counts = assemble_context(context, torch_lock=lock.torch_lock, full_lock=lock.full_lock,
                                      dockerfile=self.dockerfile, probes_dir=self.probes_dir,
                                      wheelhouses=find_links_dirs(self.sources))
            cmd = [*self.engine.build_cmd(), "--progress=plain", "--tag", tag,
                   "--build-arg", f"BASE_IMAGE={self.base_image}", "--build-arg",
                   f"PYTHON={python}",
                   # a lock with packages the base provides: the cell's venv sees the base's
                   # site-packages (docker/Dockerfile step b)
                   "--build-arg", f"BASE_SITE={1 if provided_by_base(lock.full_lock) else 0}",
                   "--build-arg", f"OFFLINE={1 if self.offline else 0}",
                   *(["--network", "none"] if self.offline else []),
                   "--label", f"org.pinmatrix.cell={lock.cell_id}",
                   *secret_args(self.sources, secrets), str(context)]
            with open(log_path, "w") as log, \
                    doing(f"docker build of the cell's image (Python {python})", log=log_path):
                log.write(f"# {lock.cell_id} -> {tag}; context {context}; wheelhouse files "
                          f"{counts}\n# {_redacted(cmd)}\n")
                log.flush()
                try:
                    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.engine.env(),
                                          timeout=self.build_timeout_s, check=False)
                    code = proc.returncode
                except subprocess.TimeoutExpired:
                    code = None
        build_s = time.monotonic() - started
        text = log_path.read_text(errors="replace")
        if code is None:
            raise InfraError(f"image build timed out after {self.build_timeout_s:.0f}s",
                             signature="build-timeout", log_tail=text)
        if code != 0:
            raise InfraError(f"image build failed (exit {code}); log: {log_path}",
                             signature=classify_build_log(text), log_tail=text)
        return Prepared(self.name, lock.cell_id, tag, reused=False,
                        details={"build_log": str(log_path), "build_s": round(build_s, 1),
                                 "timings": {"build_s": round(build_s, 2)}, **needed})

    # -- run -----------------------------------------------------------------------------------
    def gpus_for(self, gpu: str | None) -> str | None:
        """None (CPU) unless an NVIDIA runtime was detected, the runner is not CPU-only and gpu !=
        ""."""
        if self.cpu_only or not self.engine.nvidia or gpu == "":
            return None
        return "all" if gpu is None else f"device={gpu}"

    def gpu_access(self, gpu: str | None) -> cdi.GpuAccess:
        """How the container gets `gpu` (None: all; "": none): native CDI, the NVIDIA runtime, a
        CDI spec translated into flags, or none (pinmatrix/containers/cdi.py gpu_access). Raises
        cdi.CdiError for a broken spec and ValueError for a GPU name no route can carry."""
        if self.cpu_only or gpu == "":
            return cdi.GpuAccess("none", why="CPU only (--cpu)")
        return cdi.gpu_access(gpu=gpu, engine_cdi_dirs=self.engine.cdi_spec_dirs,
                              nvidia_runtime=self.engine.nvidia and self.engine.nvidia_how != "cdi",
                              dirs=self.cdi_dirs)

    def run(self, prepared: Prepared, spec_path: Path, out_dir: Path,
            gpu: str | None, timeout_s: float) -> RunOutcome:
        try:
            access = self.gpu_access(gpu)
        except (cdi.CdiError, ValueError) as exc:
            return RunOutcome(None, f"GPU access: {exc}", "gpu-access-invalid")
        outcome = self._run(prepared, spec_path, out_dir, gpu, timeout_s, access)
        return dataclasses.replace(outcome, details={**outcome.details,
                                                     "gpu_access": access.to_json()})

    def _run(self, prepared: Prepared, spec_path: Path, out_dir: Path,
             gpu: str | None, timeout_s: float, access: cdi.GpuAccess) -> RunOutcome:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = out_dir / f".probe-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        _give_to_container_user(staging)
        log_path = out_dir / RUN_LOG_NAME
        name = f"pinmatrix-{_container_name_part(prepared.cell_id)[:40]}-{uuid.uuid4().hex[:8]}"
        try:
            volume = self._compile_volume(prepared)
            create = self._create_args(prepared.ref, name, Path(spec_path).resolve(), staging, gpu,
                                       volume, access)
            made = self._docker(*create)
            if made.returncode != 0:
                return self._engine_failure("container could not be created", made.stderr, log_path)
            timed_out = interrupted = False
            with open(log_path, "w", encoding="utf-8", errors="replace") as log, \
                    doing("running the probe's checks in the container", log=log_path,
                          marker="[probe"):
                attached = subprocess.Popen(self.engine.cmd("start", "--attach", name),
                                            stdout=log, stderr=subprocess.STDOUT)
                try:
                    # polls pinmatrix.interrupt: Ctrl-C or SIGTERM to the harness alone stops the
                    # container too, instead of leaving it to run to its timeout
                    interrupted = interrupt.wait(attached, timeout_s) is None
                except subprocess.TimeoutExpired:
                    timed_out = True
                if timed_out or interrupted:
                    self._docker("kill", name)
                    try:
                        attached.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        attached.kill()
                        attached.wait()
            output = log_path.read_text(encoding="utf-8", errors="replace")
            if not output:
                output = self._docker("logs", name).stdout
                log_path.write_text(output)
            if timed_out:
                return RunOutcome(None, f"probe timed out after {timeout_s:g}s (container killed)",
                                  "timeout", tail(output))
            if interrupted:
                return RunOutcome(None, f"{interrupt.reason()}; the container was killed",
                                  interrupt.signature(), tail(output))
            exit = self._exit_of(name)
            if exit is None:
                return self._engine_failure("container state unknown after run", output, log_path)
            staged = staging / RESULT_NAME
            has_result = staged.is_file()
            reason, signature = classify_exit(exit, has_result)
            if has_result and reason is None:
                final = out_dir / RESULT_NAME
                os.replace(staged, final)
                # The image must hold exactly the lock (pinmatrix.environ.drift, shared with the
                # venv runner).
                drift = result_drift(final, (prepared.details or {}).get("locked") or {})
                if drift:
                    return RunOutcome(final, drift_reason(drift), DRIFT_SIGNATURE, tail(output))
                return RunOutcome(final, None, None, tail(output))
            return RunOutcome(None, reason, signature, tail(output))
        finally:
            self._docker("rm", "--force", name)
            shutil.rmtree(staging, ignore_errors=True)

    def _compile_volume(self, prepared: Prepared) -> str | None:
        """The stack's compile-cache volume, created with its label (so `docker volume ls --filter
        label=org.pinmatrix.compile-cache` finds them all); None with --no-compile-cache."""
        key = (prepared.details or {}).get("compile_key")
        if not self.compile_cache or not key:
            return None
        volume = compile_cache.volume_name(key)
        made = self._docker("volume", "create", "--label", f"{compile_cache.VOLUME_LABEL}={key}",
                            volume)
        # no volume: the run is cold, never refused
        return volume if made.returncode == 0 else None

    def _create_args(self, image: str, name: str, spec: Path, staging: Path, gpu: str | None,
                     compile_volume: str | None = None,
                     access: cdi.GpuAccess | None = None) -> list[str]:
        mounts = [Mount(spec, "/cell/cell.json", read_only=True),
                  Mount(staging, "/results", read_only=False)]
        # Bytecode is compiled into the image at build time (docker/Dockerfile), so nothing is
        # written beside it.
        env = {"HOME": "/tmp", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if compile_volume is not None:
            mounts.append(Mount(compile_volume, compile_cache.CONTAINER_PATH, read_only=False,
                                kind="volume"))
            env.update(compile_cache.probe_env(compile_cache.CONTAINER_PATH))
        else:
            env.update(compile_cache.probe_env(compile_cache.COLD_CONTAINER_PATH))
        share = gpu_lock.host_lock(gpu)
        if share is not None:  # the cells that share this GPU take turns for speed phases
            mounts.append(Mount(share.parent, gpu_lock.CONTAINER_DIR, read_only=False))
            env[gpu_lock.ENV] = f"{gpu_lock.CONTAINER_DIR}/{share.name}"
        if self.hf_home is not None:
            mounts.append(Mount(Path(self.hf_home).resolve(), "/hf", read_only=True))
            env["HF_HOME"] = "/hf"
        else:
            env["HF_HOME"] = "/tmp/hf"
        # --shm-size: PyTorch shares tensors through /dev/shm; Docker's default 64 MiB is too small.
        args = ["create", "--name", name, "--init", "--shm-size", "2g",
                *security_args("none", CONTAINER_UID, True, self.memory,
                               ("/tmp:rw,exec,mode=1777",),
                               self.pids_limit),
                *(access if access is not None else self.gpu_access(gpu)).args]
        for mount in mounts:
            args += ["--mount", mount.arg()]
        # a fixed allowlist: nothing of the host environment (tokens) leaks in
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        return [*args, "--workdir", "/opt/pinmatrix", image,
                "python", "-m", "probes", "--cell", "/cell/cell.json", "--out",
                f"/results/{RESULT_NAME}",
                "--work", "/tmp/work"]

    def _exit_of(self, name: str) -> Exit | None:
        proc = self._docker("inspect", "--format", "{{json .State}}", name)
        if proc.returncode != 0:
            return None
        state = json.loads(proc.stdout)
        return Exit(int(state.get("ExitCode", -1)), bool(state.get("OOMKilled", False)))

    def _engine_failure(self, what: str, detail: str, log_path: Path) -> RunOutcome:
        log_path.write_text(detail)
        alive = self._alive()
        signature = "container-create-failed" if alive else "engine-unreachable"
        reason = what if alive else f"{what}: {self.engine.title} is unreachable"
        return RunOutcome(None, reason, signature, tail(detail))

    # -- plumbing ------------------------------------------------------------------------------
    def _alive(self) -> bool:
        return self._docker(*self.engine.alive_args()[1:]).returncode == 0

    def _base_image_id(self) -> str:
        self.ensure_base_image()
        proc = self._docker("image", "inspect", "--format", "{{.Id}}", self.base_image)
        if proc.returncode != 0:
            if not self._alive():
                raise InfraError(f"{self.engine.title} is unreachable",
                                 signature="engine-unreachable", log_tail=proc.stderr)
            raise InfraError(f"base image {self.base_image} is not in the engine"
                             + (" and --pull never: pull or build it first (the local Debian base:"
                                " docker/base/build-base.sh)" if self.pull == "never" else ""),
                             signature="base-image-missing", log_tail=proc.stderr)
        return proc.stdout.strip()

    def ensure_base_image(self) -> None:
        """The pull policy, once per runner (one per base image and run): `missing` pulls an image
        the engine lacks, `always` pulls it anyway (a moving tag moves), `never` pulls nothing. A
        failed pull is this image's infra, the same for every cell that needs it."""
        if self.pull == "never":
            return
        with self._pull_lock:
            if self._pulled is None:
                present = self._docker("image", "inspect", "--format", "{{.Id}}",
                                       self.base_image).returncode == 0
                self._pulled = ("ok",) if present and self.pull == "missing" else self._do_pull()
            if self._pulled[0] != "ok":
                reason, signature, log = self._pulled
                raise InfraError(reason, signature=signature, log_tail=log)

    def _do_pull(self) -> tuple[str, ...]:
        echo = self.echo or (lambda line: print(line, file=sys.stderr, flush=True))
        log_path = (self.reports_dir / "logs"
                    / f"pull-{re.sub(r'[^A-Za-z0-9._-]', '_', self.base_image)}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        echo(f"pull {self.base_image} (--pull {self.pull})")
        lines: list[str] = []
        started = time.monotonic()
        try:
            proc = subprocess.Popen(self.engine.cmd("pull", self.base_image),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=self.engine.env())
        except OSError as exc:
            return (f"docker pull {self.base_image} could not start: {exc}", "pull-failed", "")
        assert proc.stdout is not None
        with open(log_path, "w") as log, doing(f"docker pull {self.base_image}", log=log_path):
            for line in proc.stdout:  # the engine's own progress: one line per layer step
                line = line.rstrip()
                log.write(line + "\n")
                lines.append(line)
                if line and time.monotonic() - started < PULL_TIMEOUT_S:
                    echo(f"  pull {self.base_image}: {line}")
            code = proc.wait()
        text = "\n".join(lines)
        if code == 0:
            echo(f"pull {self.base_image}: done in {time.monotonic() - started:.1f}s")
            return ("ok",)
        signature, remedy = classify_pull(text)
        last = next((ln for ln in reversed(lines) if ln.strip()), f"exit {code}")
        return (f"pull of base image {self.base_image} failed: {last.strip()[:300]} → {remedy}",
                signature, text)

    def _docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(self.engine.cmd(*args), capture_output=True, text=True,
                                  timeout=CONTROL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(list(args), 124, "",
                                               f"docker {args[0]} timed out: {exc}")


def _python_pin(value: str) -> str:
    # The Python pin reaches the build as a build argument; only "3.N" is accepted.
    if not PYTHON_PIN.fullmatch(value or ""):
        raise InfraError(f"python pin {value!r} is not of the form 3.N", signature="bad-python-pin")
    return value


def _give_to_container_user(path: Path) -> None:
    """The probe runs as uid 1000; the results folder must be writable for it."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(path, 1000, 1000)
    else:
        path.chmod(0o777)


def _redacted(cmd: Sequence[str]) -> str:
    # Secret *values* never enter cmd (only file paths do); printing the argument list is safe.
    return " ".join(json.dumps(c) if " " in c else c for c in cmd)


def _container_name_part(value: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "_", value).strip("._-") or "cell"


def create(settings: RunnerSettings, run_dir: Path, engine: Engine | None,
           base_image: str | None, runner: type[DockerRunner] | None = None) -> DockerRunner:
    """One container runner for the cells of one base image (None: the default base), on `engine`
    (the registry finds it before any runner is made). `runner`: the class to make, for the
    runners built on this one (pinmatrix/runners/podman.py)."""
    if engine is None:
        raise ValueError("a container runner needs an engine")
    extra: dict[str, Any] = {"base_image": base_image} if base_image else {}
    extra["compile_cache"] = settings.compile_cache
    extra["pull"] = settings.pull or "missing"
    if settings.model_cache is not None:  # mounted read-only at /hf in every cell
        extra["hf_home"] = Path(settings.model_cache)
    return (runner or DockerRunner)(engine, settings.sources, run_dir, cpu_only=settings.cpu,
                                    **extra)


ENGINE = EngineNeed(
    label="Docker", capability="Docker client + BuildKit",
    remedy="install Docker (Debian: `apt-get install docker.io`), start the daemon, and make sure "
           "your user may reach it; or use `--runner venv`",
    # through the module, so a test that replaces engines.find_engine is heard
    find=lambda: engines.find_engine(), message=lambda: engines.engine_message())
KIND = RunnerKind(name="docker",
                  summary="an image per cell, built with BuildKit on a Docker engine",
                  isolates=True, builds_images=True, tests_installed=False, create=create,
                  engine=ENGINE)
