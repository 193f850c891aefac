"""Where the tests find a real CPU stack (torch, transformers, peft) to run the probe with.

`nox -s tests` installs tests/probe-stack.txt into its own venv, so on a fresh CI machine the
running interpreter is the stack. PINMATRIX_TEST_PYTHON overrides it (e.g. a venv with another
transformers).
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path


@cache
def has_stack(python: str) -> bool:
    probe = "import torch, transformers, peft"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def probe_python() -> Path:
    """An interpreter that holds the CPU stack: $PINMATRIX_TEST_PYTHON, else this one."""
    return Path(os.environ.get("PINMATRIX_TEST_PYTHON") or sys.executable)


def stack_site() -> Path | None:
    """The site-packages folder holding this interpreter's stack (for --no-install --extra-site), or
    None."""
    if not has_stack(sys.executable):
        return None
    return Path(sysconfig.get_paths()["purelib"])


def download_wheels(dest: Path, specs: list[str]) -> None:
    """Wheels for the test cells' Python (3.11, manylinux x86_64) from the index, onto this host:
    the wheelhouses of the offline tests (resolve and Docker build)."""
    platforms = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp",
           *(arg for tag in platforms for arg in ("--platform", tag)), "-d", str(dest), *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"pip download failed:\n{proc.stderr[-2000:]}"
