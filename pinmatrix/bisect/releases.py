"""The releases of a package between two versions, from the package index (PEP 691 JSON simple API).

Final releases only unless `pre`; yanked releases (every file yanked, PEP 592) are left out with a
note;
ordering and parsing are `packaging`'s, never by hand. The index is the one the run uses
(`--index-url`, else PyPI); an unreachable index is an infra failure (`ReleaseIndexUnreachable`),
not bad input.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from pinmatrix.errors import HarnessError

__all__ = [
    "ReleaseRange",
    "ReleaseIndexUnreachable",
    "fetch_index_files",
    "releases_between",
    "DEFAULT_INDEX",
]

DEFAULT_INDEX = "https://pypi.org/simple"
ACCEPT = "application/vnd.pypi.simple.v1+json"


class ReleaseIndexUnreachable(HarnessError):
    """The index could not be asked (network, TLS, HTTP error): the machine failed, not the
    input."""


@dataclass
class ReleaseRange:
    package: str
    good: str
    bad: str
    releases: list[str]  # good .. bad inclusive, oldest first
    yanked: list[str] = field(default_factory=list)  # in range, left out
    prereleases_left_out: list[str] = field(default_factory=list)


def fetch_index_files(
    package: str,
    index_url: str = DEFAULT_INDEX,
    *,
    timeout: float = 30.0,
    ca_file: str | None = None,
) -> list[dict[str, Any]]:
    """The `files` of the package's project page on a PEP 691 index."""
    url = f"{index_url.rstrip('/')}/{canonicalize_name(package)}/"
    request = urllib.request.Request(url, headers={"Accept": ACCEPT})
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise LookupError(f"{package}: no such project on {index_url}") from None
        raise ReleaseIndexUnreachable(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise ReleaseIndexUnreachable(f"{url}: {getattr(exc, 'reason', exc)}") from None
    files = payload.get("files")
    if not isinstance(files, list):
        raise ReleaseIndexUnreachable(f"{url}: not a PEP 691 project page (no files list)")
    return files


def _file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def releases_between(
    package: str,
    good: str,
    bad: str,
    *,
    pre: bool = False,
    files: Callable[[str], list[dict[str, Any]]] | None = None,
) -> ReleaseRange:
    """Every release of `package` from `good` to `bad` (inclusive), oldest first. ValueError (bad
    input)
    for versions that do not parse, GOOD not older than BAD, or an end the index does not have."""
    try:
        lo, hi = Version(good), Version(bad)
    except InvalidVersion as exc:
        raise ValueError(f"{package} {good}..{bad}: {exc}") from None
    if not lo < hi:
        raise ValueError(f"{package} {good}..{bad}: GOOD must be older than BAD")
    listing = (files or fetch_index_files)(package)
    by_version: dict[Version, list[bool]] = {}
    for entry in listing:
        version = _file_version(str(entry.get("filename", "")))
        if version is not None:
            by_version.setdefault(version, []).append(bool(entry.get("yanked")))
    missing = [str(v) for v in (lo, hi) if v not in by_version]
    if missing:
        raise ValueError(f"{package}: the index has no release {', '.join(missing)}")
    result = ReleaseRange(package, str(lo), str(hi), [])
    for version in sorted(v for v in by_version if lo <= v <= hi):
        is_end = version in (lo, hi)
        if all(by_version[version]) and not is_end:
            result.yanked.append(str(version))
        elif version.is_prerelease and not pre and not is_end:
            result.prereleases_left_out.append(str(version))
        else:
            result.releases.append(str(version))
    return result
