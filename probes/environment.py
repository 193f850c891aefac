"""The environment fingerprint: interpreter, device, and for every stack package its version and import result."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback as tb
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from probes.context import installed_version
from probes.logcapture import WarningLog as _WarningLog
from probes.logcapture import attach as _attach

# Stack package (distribution / pin name) -> import name. Order is the import order after any "first" ones.
STACK: dict[str, str] = {
    "torch": "torch",
    "transformers": "transformers",
    "peft": "peft",
    "trl": "trl",
    "accelerate": "accelerate",
    "unsloth": "unsloth",
    "unsloth_zoo": "unsloth_zoo",
    "xformers": "xformers",
    "flash-attn": "flash_attn",
    # flash-attn-4 owns the `flash_attn` import package too (namespace, no __init__): what transformers
    # imports for attn_implementation="flash_attention_4" is flash_attn.cute
    "flash-attn-4": "flash_attn.cute",
    "liger-kernel": "liger_kernel",
    "bitsandbytes": "bitsandbytes",
    "triton": "triton",
    "safetensors": "safetensors",
    "tokenizers": "tokenizers",
}


def module_name(package: str) -> str:
    return STACK.get(package, package.replace("-", "_"))


@dataclass
class ImportRecord:
    package: str
    installed: str | None
    imports: bool | None                 # None: not installed, so not tried
    error: str | None = None             # "Type: message" of the import failure
    exc_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0                 # wall time of the import (unsloth's alone is ~40 s on an H100 host)

    def to_json(self) -> dict[str, Any]:
        return {"installed": self.installed, "imports": self.imports, "error": self.error}


class _PrintTee(io.TextIOBase):
    """Passes writes on to the real stream and keeps a copy: what a package prints while importing
    (unsloth prints its notices instead of warning)."""

    def __init__(self, real: Any) -> None:
        self.real, self.copy = real, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.real.write(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.real, "isatty", lambda: False)())

    def fileno(self) -> int:
        return int(self.real.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.real, "encoding", "utf-8"))


def probe_import(package: str) -> ImportRecord:
    """Import `package` once (if installed) and record the outcome; never raises."""
    version = installed_version(package)
    if version is None:
        return ImportRecord(package, None, None)
    log = _WarningLog()
    loggers = _attach(log)
    start = time.monotonic()
    printed = _PrintTee(sys.stdout)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
            warnings.simplefilter("always")
            try:
                importlib.import_module(module_name(package))
                failure = None
            except BaseException as exc:   # noqa: BLE001 - an import may raise anything, even SystemExit
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failure = exc
    finally:
        for logger in loggers:
            logger.removeHandler(log)
    seconds = round(time.monotonic() - start, 3)
    # printed lines that name the package's own notices ("Unsloth: ..."), beside warnings and log lines
    lines = [ln.strip() for ln in printed.copy.getvalue().splitlines() if ln.strip()]
    said = list(dict.fromkeys([f"{w.category.__name__}: {w.message}" for w in caught] + log.lines
                              + [f"printed: {ln}" for ln in lines if ":" in ln][:20]))[:50]
    if failure is None:
        return ImportRecord(package, version, True, warnings=said, seconds=seconds)
    message = str(failure)
    return ImportRecord(package, version, False, f"{type(failure).__name__}: {message}"[:4000],
                        type(failure).__name__, message[:4000], "".join(tb.format_exception(failure))[-8000:], said,
                        seconds)


def probe_imports(first: Iterable[str] = (), extra: Iterable[str] = (),
                  skip: Iterable[str] = ()) -> dict[str, ImportRecord]:
    """Import every stack package, `first` ones before anything else (unsloth must precede transformers);
    `skip` ones are neither imported nor recorded (the plain interpreter of probes/processes.py)."""
    skipped = set(skip)
    order = [p for p in dict.fromkeys([*first, *STACK, *extra]) if p not in skipped]
    return {package: probe_import(package) for package in order}


def decide_device(requested: str) -> str:
    """settings.device → the device checks run on. "cuda" without a GPU stays "cpu"; require_gpu reports infra."""
    if requested == "cpu":
        return "cpu"
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:   # noqa: BLE001 - no torch or a broken one: nothing can run on a GPU
        return "cpu"


def _nvidia_smi_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


# Set by the runner (pinmatrix/compile_cache.py): the folder where Triton, TorchInductor and unsloth
# keep compiled kernels between runs of this cell. Its state decides how a duration may be read.
COMPILE_CACHE_ENV = "PINMATRIX_COMPILE_CACHE"


def compile_cache_state(environ: dict[str, str] | None = None) -> str:
    """"warm" when the runner's compile-cache folder already held compiled kernels or modules at probe
    start, "cold" when it held none, "none" when the runner gave no folder. Python bytecode (pycache/,
    which the venv runner compiles when it prepares the venv) does not count: it is not a compile the
    checks would otherwise do."""
    import os

    folder = (environ if environ is not None else os.environ).get(COMPILE_CACHE_ENV, "")
    if not folder:
        return "none"
    try:
        for root, dirs, files in os.walk(folder):
            if "pycache" in dirs and root == folder:
                dirs.remove("pycache")
            if files:
                return "warm"
    except OSError:
        pass
    return "cold"


def fingerprint(device: str, records: dict[str, ImportRecord], compile_cache: str = "none") -> dict[str, Any]:
    """The schema `environment` object."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torch": None, "cuda": None, "gpu": None, "gpu_count": 0, "driver": None,
        "packages": {name: record.to_json() for name, record in records.items()},
        "compile_cache": compile_cache,
        # the GPU the runner gave this cell (CUDA_VISIBLE_DEVICES), and the one torch's device 0 really is
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_uuid": None,
    }
    torch = sys.modules.get("torch")
    if torch is None:
        return env
    env["torch"] = getattr(torch, "__version__", None)
    env["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    try:
        if torch.cuda.is_available():
            env["gpu_count"] = int(torch.cuda.device_count())
            env["gpu"] = torch.cuda.get_device_name(0)
            uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
            env["gpu_uuid"] = f"GPU-{uuid}" if uuid is not None and not str(uuid).startswith("GPU-") else uuid
    except Exception:   # noqa: BLE001 - a broken driver leaves the GPU fields empty
        pass
    env["driver"] = _nvidia_smi_driver()
    if env["driver"] is None and env["gpu_count"]:
        try:   # the CUDA driver API version (e.g. 12080), when nvidia-smi is missing in the container
            version = int(torch._C._cuda_getDriverVersion())
            env["driver"] = f"cuda-driver-api {version // 1000}.{version % 1000 // 10}"
        except Exception:   # noqa: BLE001
            pass
    return env
