"""matrix.yaml: load, validate (every error names file:line:column), expand into cells. Selecting
cells from the command line is pinmatrix/matrix/select.py; live axes are pinmatrix/matrix/live.py.

Expansion follows GitHub Actions: the product of the axes, minus `exclude` rules, then `include`
rules that add keys to matching combinations (never overwriting an axis value) or, matching none,
add a new combination. Live axes (a specifier, `latest: N`) expand against the package index; the
expansion is kept as a snapshot so that `load_matrix(path, snapshot=...)` gives the same cells
later, offline.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from packaging.version import Version

from pinmatrix.cell import NONE, Cell, ModelSpec, base_spec, split_extras
from pinmatrix.errors import IndexUnreachable, MatrixError
from pinmatrix.fsio import Refused, read_bytes_bounded
from pinmatrix.matrix.live import expand_live, is_specifier, valid_specifier
from pinmatrix.matrix.select import BASE_IMAGE, MAX_VALUE_CHARS, PYTHON, same_value
from pinmatrix.sources import PackageSources, Release, list_releases, redact
from probes import registry as _registry

# A top-level section of the matrix file: its key and its value.
Section = tuple[yaml.ScalarNode, yaml.Node]

# Every key an axis (or an include rule) may name. A typo is an error, not a silent new axis.
# An axis is named after the PyPI distribution it pins. FlashAttention 4 is its own distribution,
# `flash-attn-4` (it installs the `flash_attn` import package that FA2's `flash-attn` also owns, and
# transformers tells them apart by the distribution's name), so it is its own axis, not a value of
# `flash-attn`.
PACKAGE_AXES = ("torch", "transformers", "unsloth", "peft", "trl", "xformers", "flash-attn",
                "flash-attn-4", "liger-kernel", "bitsandbytes",
                "accelerate", "unsloth-zoo", "torchvision", "triton", "datasets")
KNOWN_AXES = (PYTHON, BASE_IMAGE, *PACKAGE_AXES)
REQUIRED_AXES = (PYTHON, BASE_IMAGE, "torch")
TOP_KEYS = ("axes", "include", "exclude", "models", "checks", "settings")
# Check groups of docs/CONTRACTS.md §3, from the probes' registry (stdlib only, like signatures).
CHECK_GROUPS: tuple[str, ...] = _registry.GROUP_NAMES
MODEL_KINDS = ("remote-code", "native")
THROUGHPUT_STACKS = ("sdpa", "eager", "flash_attention_2", "flash_attention_4", "sdpa-gc", "liger",
                     "liger-fa4", "unsloth")
DEFAULT_SETTINGS: dict[str, Any] = {
    "device": "auto",
    "check_timeout_s": 600,
    "cell_timeout_s": 3600,
    "lora_steps": 12,
    "throughput": {"batch": 4, "seq": 2048, "steps": 6, "warmup": 2,
                   "stacks": list(THROUGHPUT_STACKS)},
}
LIVE_KEYS = ("spec", "latest", "pre", "yanked")
MAX_THROUGHPUT_CONFIGS = 4   # each one is every speed stack measured again
# Read caps, checked before parsing (a hostile file costs a clean exit 2, not minutes and GB):
MAX_MATRIX_BYTES = 1024 * 1024   # the largest matrix here is 9 KB
MAX_MATRIX_DEPTH = 32            # a matrix nests 4 levels deep (include -> rule -> key -> value)
MAX_COMBINATIONS = 5000   # a typo'd live axis (`latest: 500`) should fail fast, not fill the memory
MAX_RULES = 2 * MAX_COMBINATIONS  # include or exclude rules; each is matched against every cell
# Bounds of every numeric setting (inclusive). A value past them is a typo or a hostile file: a week
# of timeout, a batch no card holds. The probe's LoRA criterion is checked over the whole
# lora_steps range (tests/unit/test_checks_training.py).
SETTING_BOUNDS: dict[str, tuple[float, float]] = {
    "check_timeout_s": (1, 7 * 24 * 3600),
    "cell_timeout_s": (1, 7 * 24 * 3600),
    "lora_steps": (4, 10_000),  # probes/checks/lora_train.py MIN_STEPS, MAX_STEPS
    "throughput.batch": (1, 1024),
    "throughput.seq": (1, 131_072),
    "throughput.steps": (1, 10_000),
    "throughput.warmup": (0, 1_000),
    "latest": (1, 1_000),
}
_YAML_FLOAT_WORDS = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}
MAX_MESSAGE_CHARS = 300     # a version, specifier, image or ref longer than this is not one
# A YAML 1.1 integer as PyYAML's resolver accepts it, with at most 30 digits: int() of a longer
# one is refused by Python (4,300 digits) or is past every bound anyway.
_YAML_INT_RE = re.compile(r"^[-+]?(?:0b[01_]{1,30}|0x[0-9a-fA-F_]{1,30}|0[0-7_]{0,30}|"
                          r"[1-9][0-9_]{0,30}|[1-9][0-9_]{0,30}(?::[0-5]?[0-9])+)$")

_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
# A Docker image reference: [registry[:port]/]name[:tag][@sha256:...]; nothing a shell could
# misread.
_IMAGE_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# a git ref; pinned = 40-hex commit
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")

Fetcher = Callable[[str], list[Release]]


@dataclass(frozen=True)
class Matrix:
    """A validated matrix. `axes` holds concrete values (live axes already expanded)."""
    path: Path
    axes: dict[str, tuple[str, ...]]
    models: tuple[ModelSpec, ...]
    checks: tuple[str, ...]
    settings: dict[str, Any]
    snapshot: dict[str, Any]                   # live-axis expansions; {} when the matrix has none
    cells: tuple[Cell, ...] = field(repr=False, default=())

    @property
    def unpinned_models(self) -> list[str]:
        """Models whose revision is a branch or tag, not a commit: remote code could change under
        them."""
        return [m.name for m in self.models if not _COMMIT_RE.match(m.revision)]

    def expand(self) -> list[Cell]:
        """The cells, in a deterministic order: the product in axis order, then included new
        cells."""
        return list(self.cells)


# --------------------------------------------------------------------------------------------------
def load_matrix(path: str | Path, *, snapshot: dict[str, Any] | None = None,
                sources: PackageSources | None = None, fetch: Fetcher | None = None) -> Matrix:
    """Read and validate a matrix file; raise MatrixError naming file:line:column on the first
    problem.

    Live axes are expanded from `snapshot` when given (offline), else against the index of `sources`
    (default: `PackageSources.from_env()`), or with `fetch(package) -> [Release]` (tests).
    """
    path = Path(path)
    if not path.exists():
        raise MatrixError(path, 1, 1, "file not found")
    if path.is_dir():
        raise MatrixError(path, 1, 1, "cannot read the file: Is a directory")
    try:
        # bounded before parsing: a regular file (never /dev/zero or a FIFO) of at most
        # MAX_MATRIX_BYTES; a link the user named is followed, as any path on the command line
        raw = read_bytes_bounded(path.resolve(), MAX_MATRIX_BYTES)
        text = raw.decode("utf-8")
    except Refused as exc:
        raise MatrixError(path, 1, 1, f"cannot read the file: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MatrixError(path, *_line_column(raw.decode("utf-8", "replace"), exc.start),
                          f"cannot read the file: not UTF-8 ({exc.reason})") from None
    return _Loader(path, text, snapshot, sources, fetch).load()


# --------------------------------------------------------------------------------------------------
class _Loader:
    """One pass over the YAML node tree; every check raises MatrixError at the node it is about."""

    def __init__(self, path: Path, text: str, snapshot: dict[str, Any] | None,
                 sources: PackageSources | None,
                 fetch: Fetcher | None) -> None:
        self.path, self.text = path, text
        self.snapshot_in = snapshot
        self.sources = sources
        self.fetch = fetch
        self.snapshot_out: dict[str, Any] = {}

    # -- errors and node helpers --
    def error(self, node: yaml.Node | None, message: str) -> MatrixError:
        mark = node.start_mark if node is not None else None
        if len(message) > MAX_MESSAGE_CHARS:  # a quoted 5,000-digit value stays readable
            message = (f"{message[:MAX_MESSAGE_CHARS - 80]}... ({len(message)} characters) ..."
                       f"{message[-40:]}")
        return MatrixError(self.path, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1,
                           message)

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what}: expected a mapping (key: value), got {_kind(node)}")
        seen: dict[str, yaml.Node] = {}
        pairs = []
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:null":
                raise self.error(key, f"{what}: expected a plain key, got {_kind(key)}")
            if key.tag == "tag:yaml.org,2002:merge":
                raise self.error(key,
                                 f"{what}: merge keys (<<) are not supported; write the keys out")
            if key.value in seen:
                first = seen[key.value].start_mark.line + 1
                raise self.error(key,
                                 f"{what}: duplicate key {key.value!r} (first at line {first})")
            seen[key.value] = key
            pairs.append((key, value))
        return pairs

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what}: expected a list, got {_kind(node)}")
        return list(node.value)

    def string(self, node: yaml.Node, what: str, *, allow_numbers: bool = False) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what}: expected a string, got {_kind(node)}")
        allowed = {"tag:yaml.org,2002:str"}
        if allow_numbers:
            allowed |= {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
        if node.tag not in allowed:
            raise self.error(node, f"{what}: expected a string, got {_kind(node)} {node.value!r}")
        if not node.value.strip():
            raise self.error(node, f"{what}: expected a non-empty string")
        if len(node.value.strip()) > MAX_VALUE_CHARS:
            raise self.error(node, f"{what}: {len(node.value.strip())} characters, more than "
                                   f"{MAX_VALUE_CHARS}: {_clip(node.value)!r}")
        return str(node.value).strip()  # the source text: 3.10 stays "3.10", never the float 3.1

    def integer(self, node: yaml.Node, what: str, bounds: tuple[float, float]) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.error(node,
                             f"{what}: expected an integer, got {_kind(node)} "
                             f"{_clip(getattr(node, 'value', ''))!r}")
        minimum, maximum = bounds
        # `!!int "twelve"` carries the int tag on any text; a 5,001-digit one breaks int()
        if not _YAML_INT_RE.match(node.value.strip()):
            raise self.error(node, f"{what}: expected an integer from {minimum:g} to {maximum:g}, "
                                   f"got {_clip(node.value)!r}")
        try:
            value = yaml.SafeLoader.construct_yaml_int(yaml.SafeLoader(""), node)
        except (ValueError, TypeError):
            raise self.error(node,
                             f"{what}: expected an integer, got {_clip(node.value)!r}") from None
        if not minimum <= value <= maximum:
            raise self.error(node, f"{what}: expected an integer from {minimum:g} to {maximum:g}, "
                                   f"got {_clip(node.value)}")
        return int(value)

    def number(self, node: yaml.Node, what: str, bounds: tuple[float, float]) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in ("tag:yaml.org,2002:int",
                                                                       "tag:yaml.org,2002:float"):
            raise self.error(node,
                             f"{what}: expected a number, got {_kind(node)} "
                             f"{_clip(getattr(node, 'value', ''))!r}")
        minimum, maximum = bounds
        try:
            # float() reads any digit count; `.inf`, `.nan` and `!!float "x"` are checked below
            text = node.value.strip().replace("_", "")
            value = float(_YAML_FLOAT_WORDS.get(text.lower(), text))
        except ValueError:
            raise self.error(node,
                             f"{what}: expected a number, got {_clip(node.value)!r}") from None
        if not minimum <= value <= maximum:  # nan fails both comparisons
            raise self.error(node, f"{what}: expected a finite number from {minimum:g} to "
                                   f"{maximum:g}, got {_clip(node.value)}")
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.error(node, f"{what}: expected true or false, got {_kind(node)}")
        return bool(yaml.safe_load(node.value))

    # -- the file --
    def load(self) -> Matrix:
        if _flow_deeper_than(self.text, MAX_MATRIX_DEPTH):  # PyYAML's scanner is quadratic in it
            raise MatrixError(self.path, 1, 1, f"nested deeper than {MAX_MATRIX_DEPTH} levels")
        try:
            documents = list(yaml.compose_all(self.text, Loader=yaml.SafeLoader))
        except RecursionError:  # PyYAML's composer recurses once per level
            raise MatrixError(self.path, 1, 1, f"nested deeper than {MAX_MATRIX_DEPTH} levels"
                              ) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(str(exc.problem or "").split())
            context = " ".join(str(exc.context or "").split())
            message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
            raise MatrixError(self.path, (mark.line + 1) if mark else 1,
                              (mark.column + 1) if mark else 1,
                              message) from None
        except yaml.reader.ReaderError as exc:  # a NUL or other non-printable character
            line, column = _line_column(self.text, exc.position)
            code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1])
            raise MatrixError(self.path, line, column,
                              f"YAML error: character U+{code:04X} is not allowed") from None
        except yaml.YAMLError as exc:
            raise MatrixError(self.path, 1, 1, f"YAML error: {exc}") from None
        documents = [d for d in documents if d is not None]
        for document in documents:
            deep = _node_deeper_than(document, MAX_MATRIX_DEPTH)
            if deep is not None:
                raise self.error(deep, f"nested deeper than {MAX_MATRIX_DEPTH} levels")
        if not documents:
            raise MatrixError(self.path, 1, 1, "the file is empty; expected a mapping with 'axes:'")
        if len(documents) > 1:
            raise self.error(documents[1], "expected one YAML document, found several (---)")
        root = documents[0]
        sections: dict[str, tuple[yaml.ScalarNode, yaml.Node]] = {}
        for key, value in self.mapping(root, "matrix"):
            if key.value not in TOP_KEYS:
                raise self.error(key,
                                 f"unknown key {key.value!r}; expected one of "
                                 f"{', '.join(TOP_KEYS)}")
            sections[key.value] = (key, value)
        if "axes" not in sections:
            raise self.error(root, "missing 'axes:' (python, base_image, torch, transformers, ...)")

        axes, axis_nodes = self.axes(*sections["axes"])
        exclude = self.rules(sections.get("exclude"), "exclude", axes, axis_nodes)
        include = self.rules(sections.get("include"), "include", axes, axis_nodes)
        models = self.models(sections.get("models"))
        checks = self.checks(sections.get("checks"))
        settings = self.settings(sections.get("settings"))
        combos = self.combine(axes, exclude, include)
        cells = [Cell(pins=pins, models=models, checks=checks, settings=settings) for pins,
                 _ in combos]
        self.check_unique(cells, [node for _, node in combos])
        return Matrix(self.path, axes, models, checks, settings, self.snapshot_out, tuple(cells))

    # -- axes --
    def axes(self, key: yaml.ScalarNode,
             node: yaml.Node) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
        axes: dict[str, tuple[str, ...]] = {}
        nodes: dict[str, Any] = {}
        self.axes_node = node
        pairs = self.mapping(node, "axes")
        if not pairs:
            raise self.error(node, "axes: expected at least python, base_image and torch")
        for name_node, value in pairs:
            name = name_node.value
            if name not in KNOWN_AXES:
                hint = _near(name, KNOWN_AXES)
                raise self.error(name_node,
                                 f"unknown axis {name!r}{hint}; expected one of "
                                 f"{', '.join(KNOWN_AXES)}")
            values: list[str] = []
            value_nodes: list[yaml.Node] = []
            items = value.value if isinstance(value, yaml.SequenceNode) else [value]
            if isinstance(value, yaml.SequenceNode) and not items:
                raise self.error(value,
                                 f"axis {name!r} is empty; list at least one version, or none")
            if isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null":
                raise self.error(value,
                                 f"axis {name!r} is empty; list at least one version, or none")
            for index, item in enumerate(items):
                for v in self.axis_item(name, item, index):
                    if any(same_value(name, v, seen) for seen in values):
                        raise self.error(item,
                                         f"axis {name!r}: {v!r} is listed twice (duplicate cells)")
                    values.append(v)
                    value_nodes.append(item)
            axes[name] = tuple(values)
            nodes[name] = (name_node, value_nodes)
        for required in REQUIRED_AXES:
            if required not in axes:
                raise self.error(node, f"axes: missing required axis {required!r}")
        return axes, nodes

    def axis_item(self, axis: str, node: yaml.Node, index: int) -> list[str]:
        what = f"axis {axis!r}"
        if isinstance(node, yaml.MappingNode):
            return self.live(axis, node, index, self.live_query(axis, node))
        text = self.value(axis, node, what, allow_specifier=True)
        if is_specifier(text):
            return self.live(axis, node, index, {"spec": text, "latest": None, "pre": False,
                                                 "yanked": False})
        return [text]

    def value(self, axis: str, node: yaml.Node, what: str, *, allow_specifier: bool = False) -> str:
        """One concrete axis value (a version, an image, or none), validated for its axis."""
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            raise self.error(node,
                             f"{what}: empty value; write a version, or none for not installed")
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            raise self.error(node,
                             f"{what}: expected a version or none, got the boolean {node.value!r}")
        text = self.string(node, what, allow_numbers=True)
        if text == NONE:
            if axis in (PYTHON, BASE_IMAGE):
                raise self.error(node, f"{what}: {axis} cannot be none")
            return NONE
        if axis == PYTHON:
            if not _PYTHON_RE.match(text):
                raise self.error(node,
                                 f"{what}: expected a Python version like \"3.12\" (quote it), got "
                                 f"{text!r}")
            return text
        if axis == BASE_IMAGE:
            if not _IMAGE_RE.match(text):
                raise self.error(node,
                                 f"{what}: {text!r} is not a Docker image reference "
                                 "(name[:tag][@sha256:...])")
            return text
        pin, extras = split_extras(text)
        if extras:   # "4.0.0b36[cu13]": the version is validated below, the extras go with it
            if base_spec(pin) is not None:
                raise self.error(node, f"{what}: {text!r}: the base image's copy takes no extras")
            checked = self.value(axis, yaml.ScalarNode("tag:yaml.org,2002:str", pin,
                                                       node.start_mark, node.end_mark),
                                 what, allow_specifier=allow_specifier)
            return f"{checked}[{','.join(extras)}]"
        if "[" in text or "]" in text:
            raise self.error(node, f"{what}: {text!r}: extras go after the version, as "
                                   "VERSION[EXTRA,...], e.g. 4.0.0b36[cu13]")
        if base_spec(text) is not None:  # the base image's own copy (pinmatrix/cell.py BASE)
            spec = base_spec(text)
            if spec and not valid_specifier(spec):
                raise self.error(node, f"{what}: {text!r}: {spec!r} is not a valid version "
                                       "specifier (PEP 440), e.g. base>=2.6")
            return text
        if is_specifier(text):
            if not allow_specifier:
                raise self.error(node,
                                 f"{what}: expected an exact version here, got the specifier "
                                 f"{text!r}")
            if not valid_specifier(text):
                raise self.error(node,
                                 f"{what}: {text!r} is not a valid version specifier (PEP 440), "
                                       "e.g. \">=4.57,<5.18\"")
            return text
        try:
            Version(text)
        except ValueError:  # InvalidVersion, or too many digits for int()
            raise self.error(node,
                             f"{what}: {text!r} is not a valid version (PEP 440), e.g. 5.17.0, "
                                   "2.13.0+cpu, or none") from None
        return text

    # -- live axes --
    def live_query(self, axis: str, node: yaml.MappingNode) -> dict[str, Any]:
        what = f"axis {axis!r}"
        query: dict[str, Any] = {"spec": None, "latest": None, "pre": False, "yanked": False}
        for key, value in self.mapping(node, what):
            if key.value not in LIVE_KEYS:
                raise self.error(key,
                                 f"{what}: unknown key {key.value!r}; a live axis takes "
                                 f"{', '.join(LIVE_KEYS)}")
            if key.value == "spec":
                text = self.string(value, f"{what}: spec", allow_numbers=True)
                if not valid_specifier(text):
                    raise self.error(value,
                                     f"{what}: {text!r} is not a valid version specifier (PEP "
                                     "440), "
                                            "e.g. \">=4.57,<5.18\"")
                query["spec"] = text
            elif key.value == "latest":
                query["latest"] = self.integer(value, f"{what}: latest", SETTING_BOUNDS["latest"])
            else:
                query[key.value] = self.boolean(value, f"{what}: {key.value}")
        if query["spec"] is None and query["latest"] is None:
            raise self.error(node, f"{what}: a live axis needs spec: and/or latest:")
        return query

    def live(self, axis: str, node: yaml.Node, index: int, query: dict[str, Any]) -> list[str]:
        if axis in (PYTHON, BASE_IMAGE):
            raise self.error(node, f"axis {axis!r}: only package axes can be live; list the values")
        key = f"{axis}#{index}"
        if self.snapshot_in is not None:
            recorded = (self.snapshot_in.get("live") or {}).get(key)
            if recorded is None or recorded.get("query") != query:
                raise self.error(node,
                                 f"axis {axis!r}: the snapshot has no expansion of this query "
                                       f"({_show_query(query)}); it was taken from another matrix")
            versions = list(recorded["versions"])
        else:
            try:
                releases = self.releases(axis)
            except IndexUnreachable as exc:
                raise self.error(node,
                                 f"axis {axis!r}: cannot expand against the index: {exc}") from None
            versions = expand_live(releases, query)
            self.snapshot_out.setdefault("taken",
                                         _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            self.snapshot_out.setdefault("indexes",
                                         [redact(u) for u in self._sources().index_urls()]
                                         if self.fetch is None else ["<fetch>"])
        if not versions:
            raise self.error(node, f"axis {axis!r}: {_show_query(query)} matches no release")
        self.snapshot_out.setdefault("live", {})[key] = {"query": query, "versions": versions}
        return versions

    def _sources(self) -> PackageSources:
        if self.sources is None:
            self.sources = PackageSources.from_env()
        return self.sources

    def releases(self, axis: str) -> list[Release]:
        if self.fetch is not None:
            return self.fetch(axis)
        return list_releases(axis, self._sources())

    # -- include / exclude --
    def rules(self, section: Section | None, name: str, axes: dict[str, tuple[str, ...]],
              axis_nodes: dict[str, Any]) -> list[tuple[yaml.Node, dict[str, Any]]]:
        if section is None:
            return []
        key, node = section
        items = self.sequence(node, name)
        if not items:
            raise self.error(node, f"{name}: empty list; remove it or add rules")
        if len(items) > MAX_RULES:
            raise self.error(items[MAX_RULES], f"{name}: {len(items)} rules, over the cap of "
                                               f"{MAX_RULES}")
        rules = []
        for i, item in enumerate(items):
            what = f"{name} #{i + 1}"
            pairs = self.mapping(item, what)
            if not pairs:
                raise self.error(item, f"{what}: empty rule")
            rule: dict[str, str] = {}
            for k, v in pairs:
                axis = k.value
                if axis not in KNOWN_AXES:
                    raise self.error(k, f"{what}: unknown axis {axis!r}{_near(axis, KNOWN_AXES)}")
                if name == "exclude" and axis not in axes:
                    raise self.error(k,
                                     f"{what}: {axis!r} is not an axis of this matrix; exclude can "
                                     "only "
                                        f"name axes ({', '.join(axes)})")
                rule[axis] = self.value(axis, v, f"{what}: {axis}")
                if name == "exclude" and not any(same_value(axis, rule[axis],
                                                            x) for x in axes[axis]):
                    raise self.error(v, f"{what}: {axis}={rule[axis]!r} is not a value of the axis "
                                        f"({', '.join(axes[axis])}); the rule matches nothing")
            rules.append((item, rule))
        return rules

    def combine(self, axes: dict[str, tuple[str, ...]],
                exclude: list[tuple[yaml.Node, dict[str, Any]]],
                include: list[tuple[yaml.Node, dict[str, Any]]],
                ) -> list[tuple[dict[str, str], yaml.Node | None]]:
        names = list(axes)
        size = 1
        for name in names:
            size *= len(axes[name])
        if size > MAX_COMBINATIONS:
            raise self.error(self.axes_node,
                             f"the axes multiply to {size} combinations, more than "
                             f"{MAX_COMBINATIONS}; "
                                   "narrow the axes or split the matrix")
        product = [dict(zip(names, values, strict=True))
                   for values in itertools.product(*(axes[n] for n in names))]
        for node, rule in exclude:
            kept = [c for c in product if not _matches(c, rule)]
            if len(kept) == len(product):
                raise self.error(node, f"exclude rule {_show(rule)} matches no combination"
                                       " (an earlier rule may have removed them already)")
            product = kept
        combos: list[tuple[dict[str, str], yaml.Node | None]] = [(c, None) for c in product]
        originals = len(combos)
        for node, rule in include:
            matched = False
            # GitHub Actions: added to every original combination whose original axis values it does
            # not
            # overwrite; keys added by an earlier include may be overwritten.
            for combo, _ in combos[:originals]:
                if all(same_value(k, combo[k], v) for k, v in rule.items() if k in axes):
                    combo.update({k: v for k, v in rule.items() if k not in axes})
                    matched = True
            if not matched:
                missing = [a for a in axes if a not in rule]
                if missing:
                    raise self.error(node,
                                     f"include rule {_show(rule)} matches no combination, and as a "
                                     "new cell "
                                           f"it lacks the axes {', '.join(missing)}")
                combos.append((dict(rule), node))
            if len(combos) > MAX_COMBINATIONS:
                raise self.error(node,
                                 f"with this include rule the matrix has {len(combos)} cells, "
                                 f"more than {MAX_COMBINATIONS}; split the matrix")
        if not combos:
            raise self.error(self.axes_node,
                             "the matrix expands to no cell (every combination was excluded)")
        return combos

    def check_unique(self, cells: list[Cell], nodes: list[yaml.Node | None]) -> None:
        seen: dict[str, int] = {}
        for i, cell in enumerate(cells):
            ident = cell.id
            if ident in seen:
                other = cells[seen[ident]]
                where = nodes[i] or nodes[seen[ident]]
                if cell.pins.get(BASE_IMAGE) != other.pins.get(BASE_IMAGE):
                    raise self.error(where,
                                     "cells differ only in base_image, which the readable id "
                                     "leaves out: "
                                            f"{cell.id}; give each base image its own matrix file")
                raise self.error(where,
                                 f"duplicate cell {cell.id} (the same combination appears twice)")
            seen[ident] = i

    # -- models, checks, settings --
    def models(self, section: Section | None) -> tuple[ModelSpec, ...]:
        if section is None:
            return ()
        key, node = section
        pairs = self.mapping(node, "models")
        if not pairs:
            raise self.error(node, "models: empty; list the models to probe")
        models = []
        for name_node, spec in pairs:
            name = name_node.value
            if not _MODEL_NAME_RE.match(name):
                raise self.error(name_node, f"models: {name!r} is not a valid model name")
            what = f"model {name!r}"
            fields: dict[str, str] = {}
            for k, v in self.mapping(spec, what):
                if k.value not in ("repo", "revision", "kind", "unpinned"):
                    raise self.error(k,
                                     f"{what}: unknown key {k.value!r}; expected repo, revision, "
                                     "kind, unpinned")
                fields[k.value] = self.string(v, f"{what}: {k.value}")
                if k.value == "repo" and not _valid_repo(fields["repo"]):
                    raise self.error(v,
                                     f"{what}: repo {fields['repo']!r} is not a hub id like "
                                     "org/name")
                if k.value == "revision" and not _valid_revision(fields["revision"]):
                    raise self.error(v,
                                     f"{what}: revision {fields['revision']!r} is not a git ref; "
                                     "pin a 40-hex commit")
                if k.value == "kind" and fields["kind"] not in MODEL_KINDS:
                    raise self.error(v, f"{what}: kind must be one of {', '.join(MODEL_KINDS)}, "
                                        f"got {fields['kind']!r}")
            for required in ("repo", "revision", "kind"):
                if required not in fields:
                    raise self.error(spec, f"{what}: missing {required}:")
            # `unpinned: <why>` says, once in the matrix, why a branch stands where a commit
            # should: the run then does not warn about it, the report states the reason
            if "unpinned" in fields:
                node_of = {k.value: v for k, v in self.mapping(spec, what)}
                if _COMMIT_RE.match(fields["revision"]):
                    raise self.error(node_of["unpinned"],
                                     f"{what}: unpinned: given, but revision "
                                     f"{fields['revision']!r} is a commit; drop unpinned:")
            models.append(ModelSpec(name, fields["repo"], fields["revision"], fields["kind"],
                                    unpinned=fields.get("unpinned", "").strip()))
        return tuple(models)

    def checks(self, section: Section | None) -> tuple[str, ...]:
        if section is None:
            return CHECK_GROUPS
        key, node = section
        items = self.sequence(node, "checks")
        if not items:
            raise self.error(node, "checks: empty; list check groups or drop the key to run all")
        checks: list[str] = []
        for item in items:
            name = self.string(item, "checks", allow_numbers=True)
            if name not in CHECK_GROUPS:
                raise self.error(item,
                                 "checks: unknown check group "
                                 f"{name!r}{_near(name, CHECK_GROUPS)}; "
                                       f"expected one of {', '.join(CHECK_GROUPS)}")
            if name in checks:
                raise self.error(item, f"checks: {name!r} is listed twice")
            checks.append(name)
        return tuple(checks)

    def settings(self, section: Section | None) -> dict[str, Any]:
        settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_SETTINGS.items()}
        settings["throughput"]["stacks"] = list(THROUGHPUT_STACKS)
        if section is None:
            return settings
        key, node = section
        for k, v in self.mapping(node, "settings"):
            what = f"settings: {k.value}"
            if k.value == "device":
                device = self.string(v, what)
                if device not in ("auto", "cpu", "cuda"):
                    raise self.error(v, f"{what}: expected auto, cpu or cuda, got {device!r}")
                settings["device"] = device
            elif k.value in ("check_timeout_s", "cell_timeout_s"):
                settings[k.value] = self.number(v, what, SETTING_BOUNDS[k.value])
            elif k.value == "lora_steps":
                settings[k.value] = self.integer(v, what, SETTING_BOUNDS[k.value])
            elif k.value == "throughput":
                for tk, tv in self.mapping(v, what):
                    twhat = f"{what}.{tk.value}"
                    if tk.value in ("batch", "seq", "steps", "warmup"):
                        settings["throughput"][tk.value] = self.integer(
                            tv, twhat, SETTING_BOUNDS[f"throughput.{tk.value}"])
                    elif tk.value == "stacks":
                        stacks = [self.string(s, twhat) for s in self.sequence(tv, twhat)]
                        for s, snode in zip(stacks, tv.value, strict=True):
                            if s not in THROUGHPUT_STACKS:
                                raise self.error(snode,
                                                 f"{twhat}: unknown stack {s!r}; expected one of "
                                                        f"{', '.join(THROUGHPUT_STACKS)}")
                        if not stacks:
                            raise self.error(tv, f"{twhat}: empty list")
                        settings["throughput"]["stacks"] = stacks
                    elif tk.value == "configs":
                        settings["throughput"]["configs"] = self.throughput_configs(tv, twhat)
                    else:
                        raise self.error(tk,
                                         f"{what}: unknown key {tk.value!r}; expected batch, seq, "
                                         "steps, warmup, stacks, configs")
            else:
                raise self.error(k, f"settings: unknown key {k.value!r}; expected one of "
                                    f"{', '.join(DEFAULT_SETTINGS)}")
        return settings


    def throughput_configs(self, node: yaml.Node, what: str) -> list[dict[str, int]]:
        """settings.throughput.configs: extra (batch, seq) configurations, each measured by every
        speed stack again (check names suffixed `.BxS`, probes/registry.py `.SHAPE` families)."""
        configs: list[dict[str, int]] = []
        items = self.sequence(node, what)
        if len(items) > MAX_THROUGHPUT_CONFIGS:
            raise self.error(node, f"{what}: {len(items)} configurations, at most "
                                   f"{MAX_THROUGHPUT_CONFIGS}")
        for item in items:
            config: dict[str, int] = {}
            for ck, cv in self.mapping(item, what):
                if ck.value not in ("batch", "seq"):
                    raise self.error(ck, f"{what}: unknown key {ck.value!r}; expected batch, seq")
                config[ck.value] = self.integer(cv, f"{what}.{ck.value}",
                                                SETTING_BOUNDS[f"throughput.{ck.value}"])
            if set(config) != {"batch", "seq"}:
                raise self.error(item, f"{what}: each configuration needs batch and seq")
            if config["seq"] < 2:
                raise self.error(item, f"{what}: seq must be at least 2")
            if config in configs:
                raise self.error(item, f"{what}: {config['batch']}x{config['seq']} is listed twice")
            configs.append(config)
        return configs

# --------------------------------------------------------------------------------------------------


def _matches(combo: dict[str, str], rule: dict[str, str]) -> bool:
    return all(k in combo and same_value(k, combo[k], v) for k, v in rule.items())


def _show(rule: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in rule.items()) + "}"


def _show_query(query: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in query.items() if v not in (None, False))


def _valid_repo(repo: str) -> bool:
    """A hub id as the hub accepts it: org/name, no `..` or `--` (the hub refuses them, and `..`
    in a cache path climbs out of it)."""
    return bool(_REPO_RE.match(repo)) and ".." not in repo and "--" not in repo and not any(
        part.endswith((".", "-")) for part in repo.split("/"))


def _valid_revision(revision: str) -> bool:
    """A git ref as `git check-ref-format` allows it, less what could climb a path: no `..`, no
    empty or dot-led component, no trailing `/` or `.lock`, no `@{`."""
    if not _REVISION_RE.match(revision) or ".." in revision or "@{" in revision:
        return False
    parts = revision.split("/")
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in parts)


def _clip(text: str, limit: int = 40) -> str:
    """A value quoted in a message: a 5,000-character one would make the line unreadable."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _flow_deeper_than(text: str, max_depth: int) -> bool:
    """Flow collections ([..] / {..}) nested deeper than `max_depth`, outside quotes and comments:
    a cheap look before the parse (which takes seconds on 10,000 levels)."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth, quote, comment = 0, "", False
    for char in text:
        if comment:
            comment = char != "\n"
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth = max(depth - 1, 0)
    return False


def _node_deeper_than(root: yaml.Node, max_depth: int) -> yaml.Node | None:
    """The first node nested deeper than `max_depth`, or None (iterative: no recursion)."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    seen: set[int] = set()  # an alias shares its node: each is walked once (no billion laughs)
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return node
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
    return None


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character index."""
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {"tag:yaml.org,2002:null": "nothing (null)", "tag:yaml.org,2002:bool": "a boolean",
            "tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
            "tag:yaml.org,2002:str": "a string"}.get(node.tag, f"a {node.tag}")


def _near(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

