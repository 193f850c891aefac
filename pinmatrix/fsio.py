"""Small helpers every stage shares: the time stamp written into run files, and (below) atomic writes
and tolerant JSON reads. One copy each, so a fix reaches every writer."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """The time stamp of run.json, outcomes and history records: UTC, ISO 8601, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
