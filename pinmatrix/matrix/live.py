"""Live axes: an axis written as a query (a specifier, `latest: N`, pre-releases, yanked) expands to
the matching releases on the package index; the matrix keeps the expansion as a snapshot."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pinmatrix.cell import version_or_none
from pinmatrix.sources import Release


def expand_live(releases: Iterable[Release], query: dict[str, Any]) -> list[str]:
    """Versions matching a live query, oldest first. Pre-releases and yanked ones only when
    asked."""
    spec = SpecifierSet(query.get("spec") or "")
    chosen: list[Version] = []
    for release in releases:
        version = version_or_none(release.version)
        if version is None:
            continue
        if release.yanked and not query.get("yanked"):
            continue
        if version.is_prerelease and not query.get("pre"):
            continue
        if not spec.contains(version, prereleases=True):
            continue
        chosen.append(version)
    chosen = sorted(set(chosen))
    if query.get("latest"):
        chosen = chosen[-int(query["latest"]):]
    return [str(v) for v in chosen]


def valid_specifier(text: str) -> bool:
    # packaging skips empty clauses (">=4,,<5"); a typo like that should not pass silently.
    if any(not part.strip() for part in text.split(",")):
        return False
    try:
        SpecifierSet(text)
    except ValueError:  # InvalidSpecifier, or too many digits for int()
        return False
    return True


def is_specifier(text: str) -> bool:
    return text[:1] in "<>=!~" or "," in text
