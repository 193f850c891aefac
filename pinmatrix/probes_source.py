"""The probe sources a cell runs: which files they are, and the digest that puts them in a cell's
identity.

One definition serves the content hash (pinmatrix/run/pipeline.py), the image tag and the copy of
probes/ into the build context (pinmatrix/runners/docker.py), so what is hashed is exactly what is
shipped.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

PROBES_DIR = Path(__file__).resolve().parent.parent / "probes"
SKIPPED_DIRS = ("__pycache__", ".pytest_cache")   # caches, not sources
SKIPPED_SUFFIXES = (".pyc", ".pyo")                # bytecode


def probe_files(root: Path = PROBES_DIR) -> Iterator[Path]:
    for path in Path(root).rglob("*"):
        if (
            path.is_file()
            and not any(p in SKIPPED_DIRS for p in path.parts)
            and path.suffix not in SKIPPED_SUFFIXES
        ):
            yield path


def probes_digest(root: Path = PROBES_DIR) -> str:
    """sha256 over the probes' relative paths and bytes, so any probe change is a new cell hash."""
    digest = hashlib.sha256()
    for path in sorted(probe_files(root)):
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
