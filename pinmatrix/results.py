"""Cell results on the host: atomic writes, loading with schema validation, re-classification.

A result file is trusted only after it validates against `probes/result.schema.json`. Anything else
(truncated JSON, a foreign file, another schema version) becomes a `Damaged` record: listed in the
report, never merged as data, never a crash.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinmatrix.fsio import Refused, load_json
from probes import signatures

if TYPE_CHECKING:
    import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "probes" / "result.schema.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CellResult:
    path: Path
    data: dict[str, Any]

    @property
    def cell_id(self) -> str:
        return str(self.data["cell"]["id"])

    @property
    def checks(self) -> list[dict[str, Any]]:
        return list(self.data["checks"])


@dataclass(frozen=True)
class Damaged:
    path: Path
    why: str


# --- loading -------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    import jsonschema  # noqa: PLC0415 - ~100 ms to import: loaded when a result is validated, not by every command's start-up

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate(data: Any) -> str | None:
    """None when `data` is a valid result of this schema version, else why not (one line)."""
    if not isinstance(data, dict):
        return f"not a pinmatrix result: top level is {type(data).__name__}, not an object"
    if "schema" not in data:
        return "not a pinmatrix result: no 'schema' field"
    if data["schema"] != SCHEMA_VERSION:
        return f"schema version {data['schema']!r}, this harness reads version {SCHEMA_VERSION}"
    import jsonschema  # noqa: PLC0415 - ~100 ms to import (see _validator)

    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        return f"schema violation at {where}: {error.message}"
    return None


def load_result(path: Path, *, reclassify: bool = True) -> CellResult | Damaged:
    path = Path(path)
    try:  # the trust rule of pinmatrix/fsio.py: a regular file, bounded, strict, not too deep
        data = load_json(path)
    except Refused as exc:
        return Damaged(path, str(exc))
    why = validate(data)
    if why is not None:
        return Damaged(path, why)
    if reclassify:
        data = reclassify_signatures(data)
    return CellResult(path, data)


# --- signatures ----------------------------------------------------------------------------------

def reclassify_signatures(data: dict[str, Any]) -> dict[str, Any]:
    """Re-run the current catalogue over every check error, so a catalogue update reaches old
    results.

    A known match replaces the stored signature. An unknown one keeps what the probe stored: the
    probe may have named a signature from context (a check that failed its bar without an
    exception).
    """

    data = copy.deepcopy(data)
    for check in data["checks"]:
        for error in _errors_of(check):
            found = signatures.classify(error.get("type", ""), error.get("message", ""),
                                        error.get("traceback_tail", "") or "")
            sig, known = (found.id, found.known) if hasattr(found, "id") else found
            if known or not error.get("signature"):
                error["signature"] = sig
                error["known"] = bool(known)
    return data


def _errors_of(check: dict[str, Any]) -> list[dict[str, Any]]:
    errors = [check["error"]] if isinstance(check.get("error"), dict) else []
    for attempt in check.get("attempts") or []:
        if isinstance(attempt, dict) and isinstance(attempt.get("error"), dict):
            errors.append(attempt["error"])
    return errors


def describe_signature(signature: str) -> dict[str, Any] | None:
    """The catalogue entry (cause, affected, fix, link, infra) for a signature id, or None."""

    try:
        entry = signatures.describe(signature)
    except (KeyError, LookupError):
        return None
    return dict(entry) if entry else None
