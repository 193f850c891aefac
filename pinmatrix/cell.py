"""A cell: one combination of axis values plus the models and checks to run, and its identity."""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

from pinmatrix.fsio import slug

# Order of the readable id; axes not listed here follow alphabetically.
ID_ORDER = ("python", "base_image", "torch", "transformers", "unsloth", "peft", "trl",
            "xformers", "flash-attn", "flash-attn-4", "liger-kernel", "bitsandbytes")
ID_ABBREV = {"python": "py", "transformers": "tf", "flash-attn": "fa", "flash-attn-4": "fa4",
             "liger-kernel": "liger", "bitsandbytes": "bnb", "xformers": "xf", "base_image": "base"}
NONE = "none"
# A package axis value `base` (or `base` + a PEP 440 specifier, e.g. `base>=2.6`): use the base
# image's own installed copy, checked against the specifier, and install only the rest of the cell
# (prepared bases, the NGC pattern; pinmatrix/environ/base_inventory.py, resolve/uv.py).
BASE = "base"
BASE_PIN = re.compile(r"^base(?P<spec>(===|==|!=|~=|>=|<=|<|>)[^\s<>=!~].*)?$")
# Lock comment naming a package the base image provides: `# pinmatrix-base: torch==2.13.0+cpu`
PROVIDED_PREFIX = "# pinmatrix-base: "


def base_spec(value: str | None) -> str | None:
    """The specifier of a `base` pin ("" for a bare `base`), or None for any other value."""
    match = BASE_PIN.fullmatch(value or "")
    return None if match is None else (match.group("spec") or "")


def provided_by_base(lock_text: str) -> dict[str, str]:
    """Normalised name -> version of the packages a lock says the base image provides."""
    out: dict[str, str] = {}
    for line in lock_text.splitlines():
        if line.startswith(PROVIDED_PREFIX):
            name, _, version = line[len(PROVIDED_PREFIX):].strip().partition("==")
            out[normalize_name(name)] = version
    return out


def install_lock(lock_text: str) -> str:
    """The lock without the entries of packages the base image provides (each entry: its `==` line
    and the indented hash and `# via` lines under it): what the image build installs."""
    provided = provided_by_base(lock_text)
    if not provided:
        return lock_text
    kept: list[str] = []
    skipping = False
    for line in lock_text.splitlines(keepends=True):
        match = LOCK_LINE.match(line)
        if match and not line[:1].isspace():
            skipping = normalize_name(match.group(1)) in provided
        elif line.strip() and not line[:1].isspace():
            skipping = False
        if not skipping:
            kept.append(line)
    return "".join(kept)


@dataclass(frozen=True)
class ModelSpec:
    name: str            # "exaone3.5" | "exaone4"
    repo: str            # hub repo id, used only where a hub cache exists
    revision: str        # pinned revision
    kind: str            # "remote-code" | "native"
    # why the revision is a branch, not a commit (matrix.yaml `unpinned:`); not part of the cell's
    # identity (to_json), the report says it
    unpinned: str = field(default="", compare=False)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "repo": self.repo, "revision": self.revision, "kind": self.kind}


@dataclass(frozen=True)
class Cell:
    """Axis values (`pins`, "none" = not installed), the models, the check groups and settings."""
    pins: Mapping[str, str]
    models: tuple[ModelSpec, ...] = ()
    checks: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        keys = [k for k in ID_ORDER if k in self.pins] + sorted(
            k for k in self.pins if k not in ID_ORDER
        )
        parts = []
        for key in keys:
            if key == "base_image":
                continue  # the base image is in the hash; ids stay short and readable
            value, name = self.pins[key], ID_ABBREV.get(key, key)
            # "fa4_4.0.0b36", not "fa44.0.0b36": a name ending in a digit is kept apart from a
            # version
            apart = name[-1:].isdigit() and value[:1].isdigit()
            sep = "-" if value == NONE else ("_" if apart else "")
            parts.append(f"{name}{sep}{slug(value)}")
        return "-".join(parts)

    def packages(self) -> list[str]:
        """The package axes that are not `none`, sorted: what the cell installs by name."""
        return sorted(k for k,
                      v in self.pins.items() if k not in ("python", "base_image") and v != NONE)

    def requirements(self) -> list[str]:
        """PEP 508 requirements for the resolver: every package axis that is not `none` or `base`
        (the resolver adds those at the base image's version)."""
        return [_requirement(key, self.pins[key]) for key in self.packages()
                if base_spec(self.pins[key]) is None]

    def base_pins(self) -> dict[str, str]:
        """Package axis -> specifier ("" for any) of the axes the base image must provide."""
        return {key: spec for key in self.packages()
                if (spec := base_spec(self.pins[key])) is not None}

    def none_packages(self) -> list[str]:
        return sorted(k for k,
                      v in self.pins.items() if v == NONE and k not in ("python", "base_image"))

    def spec(self, content_hash: str, runner: str) -> dict[str, Any]:
        """The cell spec handed to the probe (docs/CONTRACTS.md §1)."""
        return {
            "id": self.id,
            "hash": content_hash,
            "pins": dict(self.pins),
            "runner": runner,
            "models": [m.to_json() for m in self.models],
            "checks": list(self.checks),
            "settings": dict(self.settings),
        }


@dataclass(frozen=True)
class Lock:
    """The exact install set of a resolved cell (docs/CONTRACTS.md §7)."""
    cell_id: str
    python: str
    # requirements text: torch alone, shared by every cell with the same torch line
    torch_lock: str
    full_lock: str       # requirements text: everything, resolved with -c torch_lock

    def pinned(self) -> dict[str, str]:
        """Normalised package name -> exact version, from the full lock."""
        return parse_lock(self.full_lock)


@dataclass(frozen=True)
class Unresolvable:
    cell_id: str
    explanation: str     # the resolver's own words, verbatim


# A lock line: name[extras]==version [; marker] [\]  (uv's --generate-hashes puts hashes on the next
# lines)
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(;[^\\#]*)?")


def parse_lock(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        m = LOCK_LINE.match(line.strip())
        if m:
            pins[normalize_name(m.group(1))] = m.group(2)
    return pins


def version_or_none(text: str) -> Version | None:
    try:
        return Version(text)
    except ValueError:  # InvalidVersion, or too many digits for int()
        return None


def version_key(value: str | None) -> tuple[int, Any]:
    """Sort key for pin values: `none` (and nothing) first, then releases in version order, then
    anything that is not a version, by its text."""
    if not value or value == NONE:
        return (0, ())
    try:
        return (1, Version(value))
    except ValueError:  # InvalidVersion, or too many digits for int()
        return (2, value)


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# An axis value may carry extras after its version: "4.0.0b36[cu13]" asks for
# flash-attn-4[cu13]==4.0.0b36 (PEP 440 versions and specifiers never contain brackets).
EXTRAS_VALUE = re.compile(r"^(?P<pin>[^\[\]]+)\[(?P<extras>[A-Za-z0-9][A-Za-z0-9._-]*"
                          r"(?:\s*,\s*[A-Za-z0-9][A-Za-z0-9._-]*)*)\]$")
EXTRAS_PREFIX = "# pinmatrix-extras: "


def split_extras(value: str) -> tuple[str, tuple[str, ...]]:
    """(the version or specifier, the extras) of an axis value: ("4.0.0b36", ("cu13",)) for
    "4.0.0b36[cu13]"; a value without brackets has no extras."""
    match = EXTRAS_VALUE.fullmatch(str(value).strip())
    if match is None:
        return str(value), ()
    extras = tuple(sorted({e.strip().lower() for e in match.group("extras").split(",")}))
    return match.group("pin").strip(), extras


def extras_lines(cell: Cell) -> str:
    """The lock's record of the cell's extras (uv writes `name==version` without them, and the
    extras' own dependencies as plain lines): one comment line per package asked with extras."""
    lines = []
    for key in cell.packages():
        _, extras = split_extras(cell.pins[key])
        if extras:
            lines.append(f"{EXTRAS_PREFIX}{key}[{','.join(extras)}]\n")
    return "".join(lines)


def _requirement(package: str, value: str) -> str:
    # An axis value is an exact version ("5.17.0", "2.13.0+cpu") or a PEP 440 specifier
    # (">=4.57,<5"), either with extras ("4.0.0b36[cu13]").
    pin, extras = split_extras(value)
    name = f"{package}[{','.join(extras)}]" if extras else package
    if pin[:1] in "<>=!~":
        return f"{name}{pin}"
    return f"{name}=={pin}"


def content_hash(*, lock_text: str, dockerfile: str, probes_digest: str, checks: tuple[str, ...],
                 settings: Mapping[str, Any], gpu_model: str, base_image: str,
                 models: tuple[ModelSpec, ...],
                 pins: Mapping[str, str]) -> str:
    """Everything that determines a cell's result. Names the image (with the lock) and keys the
    result cache.

    The pins are in it too: the probe reads them (a `none` pin skips its checks), and two cells can
    share a lock (--no-install reads the same interpreter for both), so a key without them would
    hand one cell's result to another."""
    payload = json.dumps({
        "pins": dict(pins),
        "lock": lock_text, "dockerfile": dockerfile, "probes": probes_digest,
        "checks": list(checks),
        "settings": settings, "gpu": gpu_model, "base_image": base_image,
        "models": [m.to_json() for m in models],
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
