"""Classify a failure: a known signature from the catalogue, or a stable fingerprint of a new one.

Stdlib only: the probe uses it inside the cell, and the host imports it to re-classify old results on
merge (docs/CONTRACTS.md §4), so a catalogue update applies to results written before it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATALOGUE_PATH = Path(__file__).with_name("signatures.json")
ENTRY_KEYS = ("id", "pattern", "cause", "affected", "fix", "link", "infra", "means")
# What a failure with this signature says, and so the status it gets (`status_for`):
# - "stack": the stack is broken: `fail`;
# - "host": the machine failed (OOM, timeout, network, inconsistent host packages): `infra`;
# - "no-gpu": the code path needs an accelerator. On a host without one the check is `skip`
#   ("needs a GPU: ..."); on a host with one the failure is what `infra` says (a driver the
#   stack cannot use is the machine; a GPU path broken in the stack is `fail`).
STACK, HOST, NO_GPU = "stack", "host", "no-gpu"
MEANINGS = (STACK, HOST, NO_GPU)
NEEDS_A_GPU = "needs a GPU"
# Optional: "deterministic": true when the cause lies in what is installed (an ABI built for another
# torch, an option a version rejects), so the same stack fails the same way on every run. The host
# does not rerun such a failure to look for flakiness (pinmatrix/flaky.py).
FINGERPRINT_PREFIX = "fp-"


@dataclass(frozen=True)
class Classification:
    id: str          # a catalogue id, or "fp-<12 hex>" for a failure the catalogue does not know
    known: bool
    infra: bool      # the machine failed (OOM, timeout, no GPU, network), not the stack
    means: str = STACK   # MEANINGS: stack | host | no-gpu (an unknown failure: the stack)

    def __iter__(self):
        """Unpacks as (id, known), the pair docs/CONTRACTS.md §4 names."""
        return iter((self.id, self.known))


class CatalogueError(ValueError):
    """The catalogue file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class _Entry:
    data: dict[str, Any]
    regex: re.Pattern[str]


def load_catalogue(path: Path = CATALOGUE_PATH) -> list[dict[str, Any]]:
    """The catalogue entries, checked: every key present, ids unique, patterns compile."""
    return [entry.data for entry in _compiled(str(path))]


@functools.lru_cache(maxsize=4)
def _compiled(path: str) -> tuple[_Entry, ...]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(raw, list):
        raise CatalogueError(f"{path}: the catalogue must be a JSON list of entries")
    seen: set[str] = set()
    entries = []
    for index, item in enumerate(raw):
        where = f"{path}: entry {index}" + (f" ({item.get('id')!r})" if isinstance(item, dict) else "")
        if not isinstance(item, dict):
            raise CatalogueError(f"{where}: must be an object")
        missing = [key for key in ENTRY_KEYS if key not in item]
        if missing:
            raise CatalogueError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(item["infra"], bool):
            raise CatalogueError(f"{where}: 'infra' must be true or false")
        if item["means"] not in MEANINGS:
            raise CatalogueError(f"{where}: 'means' must be one of {', '.join(MEANINGS)}")
        if (item["means"] == HOST) is not item["infra"] and item["means"] != NO_GPU:
            raise CatalogueError(f"{where}: 'means' {item['means']!r} contradicts 'infra' "
                                 f"{item['infra']} (host: infra true; stack: infra false)")
        if not isinstance(item.get("deterministic", False), bool):
            raise CatalogueError(f"{where}: 'deterministic' must be true or false")
        if item["id"] in seen or str(item["id"]).startswith(FINGERPRINT_PREFIX):
            raise CatalogueError(f"{where}: id is duplicated or uses the reserved prefix {FINGERPRINT_PREFIX!r}")
        seen.add(item["id"])
        try:
            regex = re.compile(item["pattern"], re.MULTILINE)
        except re.error as exc:
            raise CatalogueError(f"{where}: bad pattern: {exc}") from None
        entries.append(_Entry(item, regex))
    return tuple(entries)


# Only what varies between runs and machines is dropped: addresses, paths, hashes, numbers. Quoted
# names stay: "No module named 'flash_attn.flash_attn_interface'" and "No module named
# 'transformers.modeling_attn_mask_utils'" are two causes, not one. A number glued to a name
# (`flash_attn_2`, `float16`) is part of the name. Order matters: addresses before numbers.
_NORMALISERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"0x[0-9a-fA-F]+"), "<addr>"),
    (re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+~-]+){2,}[\\/]?"), "<path>"),
    (re.compile(r"\b[0-9a-fA-F]{16,}\b"), "<hex>"),           # hashes, ids
    (re.compile(r"(?<![A-Za-z_\d])\d+(?:\.\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)
# the innermost frame of a Python traceback: `File "<path>", line N, in <function>`
_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+, in (\S+)', re.MULTILINE)


def normalise(message: str) -> str:
    """The message with the parts that vary between runs and machines replaced by placeholders."""
    text = message
    for pattern, placeholder in _NORMALISERS:
        text = pattern.sub(placeholder, text)
    return text.strip()


def raising_frame(traceback: str) -> str:
    """`file.py:function` of the innermost frame of a traceback text ("" without one): the file's
    name without its folder (which varies between venvs), and no line number (which varies between
    releases of the same code)."""
    frames = _FRAME.findall(traceback or "")
    if not frames:
        return ""
    path, function = frames[-1]
    name = re.split(r"[\\/]", path)[-1]
    return f"{name}:{function}"


# Failures the interpreter raises at the place that uses a name, whose message names what is missing
# (a module, a name in a module or class, a keyword a function does not take). Where they are raised
# says who used the name, not what broke: the remote code's file when it loads, the surface check when
# it executes the same fact. Their fingerprint leaves the frame out, so both carry one signature.
_NAMES_ITS_CAUSE = re.compile(
    r"^(?:ImportError|ModuleNotFoundError): "
    r"|^AttributeError: (?:module|type object) '[\w.]+' has no attribute "
    r"|^TypeError: [\w.<>]+\(\) (?:got an unexpected keyword argument|got multiple values for"
    r"|missing \d+ required|takes (?:from \d+ to )?\d+ positional)"
)


def fingerprint(exc_type: str, message: str, frame: str = "") -> str:
    """What tells causes apart: the exception's type, its message without what varies between runs,
    and the frame it was raised in (unless the message itself names the missing module, name or
    keyword)."""
    if _NAMES_ITS_CAUSE.match(f"{exc_type}: {message}"):
        frame = ""
    digest = hashlib.sha256(f"{exc_type}\n{normalise(message)}\n{frame}".encode("utf-8")).hexdigest()
    return FINGERPRINT_PREFIX + digest[:12]


def classify(exc_type: str, message: str, traceback: str = "") -> Classification:
    """Match the catalogue against "Type: message" first, then with the traceback added.

    The head goes first so that an exception's own message wins over text further down the
    traceback (a chained cause, or a warning printed earlier), which only decides if the head is unknown.
    """
    entries = _compiled(str(CATALOGUE_PATH))
    head = f"{exc_type}: {message}"
    for text in (head, f"{head}\n{traceback}" if traceback else None):
        if text is None:
            continue
        for entry in entries:
            if entry.regex.search(text):
                return Classification(entry.data["id"], True, entry.data["infra"],
                                      entry.data["means"])
    return Classification(fingerprint(exc_type, message, raising_frame(traceback)), False, False)


def status_for(found: Classification, has_accelerator: bool) -> str:
    """The check status a failure with this classification gets on this host: `skip` for a GPU
    path on a host without an accelerator (the check could not run here; never a verdict on the
    stack), `infra` for the machine, `fail` for the stack."""
    if found.means == NO_GPU and not has_accelerator:
        return "skip"
    return "infra" if found.infra else "fail"


def needs_gpu_reason(found: Classification) -> str:
    """The reason of a check skipped by `status_for`: "needs a GPU", and the signature that said so."""
    return f"{NEEDS_A_GPU} ({found.id})"


def describe(signature_id: str) -> dict[str, Any] | None:
    """The catalogue entry for `signature_id`, or None (fingerprints and unknown ids)."""
    for entry in _compiled(str(CATALOGUE_PATH)):
        if entry.data["id"] == signature_id:
            return dict(entry.data)
    return None


def is_deterministic(signature_id: str) -> bool:
    """True for a catalogue entry marked deterministic; False for fingerprints and everything else."""
    entry = describe(signature_id)
    return bool(entry and entry.get("deterministic"))
