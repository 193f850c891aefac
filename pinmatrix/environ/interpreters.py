"""Which interpreter a cell's venv is made from, and whether a Python version can be had at
all.

`--venv-python` takes one interpreter per Python version (`3.12=/opt/py312/bin/python`,
repeatable); a bare PATH is the interpreter of every version not named (the old form).

`find(version)` answers where a version would come from, in the order uv itself tries: an
interpreter on this host, one uv manages, or one uv could download now; the doctor
(pinmatrix/run/doctor.py) and the venv runner's error message both use it.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from pinmatrix.errors import UsageError

_VERSION = re.compile(r"\d+\.\d+")
PYTHON_DOWNLOAD_HOST = "github.com"  # python-build-standalone releases, where uv downloads from

VenvPython = Mapping[str, str]  # Python "X.Y" (or "" for every other version) -> interpreter


def parse_venv_python(values: Sequence[str] | str | None) -> dict[str, str] | None:
    """`--venv-python` values → {version: path}; a bare PATH is stored under "" (any version)."""
    if values is None or values == []:
        return None
    if isinstance(values, str):
        values = [values]
    out: dict[str, str] = {}
    for value in values:
        version, sep, path = value.partition("=")
        if not sep:
            version, path = "", value
        elif not _VERSION.fullmatch(version) or not path:
            raise UsageError(f"--venv-python {value!r}: expected VERSION=PATH (e.g. "
                             "3.12=/usr/bin/python3.12) or a bare PATH")
        if version in out and out[version] != path:
            what = f"Python {version}" if version else "every version (a bare PATH)"
            raise UsageError(f"--venv-python: two interpreters for {what}: {out[version]!r} and "
                             f"{path!r}")
        out[version] = path
    return out


def python_for(venv_python: VenvPython | str | None, version: str | None) -> str | None:
    """The interpreter --venv-python gives a cell of Python `version`, or None (uv finds one)."""
    if venv_python is None:
        return None
    if isinstance(venv_python, str):
        return venv_python
    return venv_python.get(version or "") or venv_python.get("")


def missing_python_message(version: str) -> str:
    return (f"Python {version} is not on this host and uv could not download it: install it, pass "
            f"`--venv-python {version}=/path`, or use Docker")


# uv's words when it had to download an interpreter and could not, or was told not to
_UV_NO_PYTHON = re.compile(
    r"python-build-standalone|Failed to download .*cpython-|No interpreter found for Python|"
    r"No download found for request|Python downloads are not allowed", re.IGNORECASE)


def uv_could_not_get_python(stderr: str) -> bool:
    # uv wraps its error lines to the terminal's width (COLUMNS): at 80 columns, as under
    # pytest-xdist or in a narrow terminal, the URL after "Failed to download" is on a line of
    # its own
    return bool(_UV_NO_PYTHON.search(" ".join((stderr or "").split())))


@dataclass
class PythonAvailability:
    version: str
    source: str | None  # "--venv-python", "host", "uv-managed", "downloadable", or None: none
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.source is not None


def _runs(path: str, version: str) -> bool:
    try:
        out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A TCP connection to host:port, or to this process's HTTPS proxy when one is set."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or ""
    return connect_error(*via_proxy(host, port, proxy), timeout) is None


def via_proxy(host: str, port: int, proxy: str) -> tuple[str, int]:
    """Where a connection to host:port is opened: the proxy's address when one is given."""
    if not proxy:
        return host, port
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or host, parts.port or 8080


def connect_error(host: str, port: int, timeout: float) -> OSError | None:
    """None when a TCP connection to host:port opens within `timeout`, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc


def find(version: str, venv_python: VenvPython | str | None = None,
         uv: str | None = None) -> PythonAvailability:
    """Where Python `version` would come from here."""
    given = python_for(venv_python, version)
    if given:
        if _runs(given, version):
            return PythonAvailability(version, "--venv-python", given)
        return PythonAvailability(version, None, f"--venv-python {given} is not a working "
                                                 f"Python {version}")
    host = shutil.which(f"python{version}")
    if host and _runs(host, version):
        return PythonAvailability(version, "host", host)
    uv = uv if uv is not None else shutil.which("uv")
    if uv:
        try:
            out = subprocess.run([uv, "python", "find", "--no-python-downloads", version],
                                 capture_output=True, text=True, timeout=60)
            found = out.stdout.strip().splitlines()
            if out.returncode == 0 and found:
                return PythonAvailability(version, "uv-managed", found[-1])
        except (OSError, subprocess.SubprocessError):
            pass
        downloads = os.environ.get("UV_PYTHON_DOWNLOADS", "automatic")
        mirror = urlsplit(os.environ.get("UV_PYTHON_INSTALL_MIRROR") or "")
        where = mirror.hostname or PYTHON_DOWNLOAD_HOST
        port = mirror.port or (80 if mirror.scheme == "http" else 443)
        if downloads != "never" and reachable(where, port):
            return PythonAvailability(version, "downloadable", f"uv can download it from {where}")
        why = ("UV_PYTHON_DOWNLOADS=never" if downloads == "never"
               else f"{where} is not reachable")
        return PythonAvailability(version, None, f"not on this host, and uv cannot download it "
                                                 f"({why})")
    return PythonAvailability(version, None, "not on this host, and uv (which could download it) "
                                             "is absent")
