"""Extra sites for some cells only: `--extra-site AXIS=VALUE[,AXIS=VALUE...]:DIR`.

A prepared GPU host (`--no-install`) holds one stack; the cells of a matrix differ by a few packages
each (another transformers with its tokenizers, an unsloth release with its trl). Carrying one site
per cell repeats the shared packages, so sites are carried as layers instead, each put on the path
of the cells whose pins match its conditions:

    --extra-site /s/common                       every cell
    --extra-site transformers=4.57.6:/s/tf4576   the cells pinning transformers 4.57.6
    --extra-site unsloth=2026.10.9:/s/u1010      ... unsloth 2026.10.9
    --extra-site unsloth!=none:/s/unsloth-deps   ... any unsloth

Conditions are all required (AND); `!=` negates one. A plain DIR applies to every cell. The order on
the command line is the order on the path. One invocation can then run cells of different stacks,
which is what the per-GPU scheduler needs to run two of them at once.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_COND = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)(!=|==|=)(.+)$")


@dataclass(frozen=True)
class ExtraSite:
    path: Path
    when: tuple[tuple[str, str, str], ...] = ()     # (axis, "=" | "!=", value)

    def applies(self, pins: Any) -> bool:
        for axis, op, value in self.when:
            have = str(pins.get(axis, pins.get(axis.replace("_", "-"), "")))
            if (have == value) != (op == "="):
                return False
        return True

    def resolved(self) -> ExtraSite:
        return ExtraSite(Path(self.path).resolve(), self.when)

    def is_dir(self) -> bool:
        return Path(self.path).is_dir()

    def __str__(self) -> str:
        if not self.when:
            return str(self.path)
        return ",".join(f"{a}{op}{v}" for a, op, v in self.when) + ":" + str(self.path)


def parse_extra_site(text: str) -> ExtraSite:
    """`DIR` or `AXIS=VALUE[,AXIS!=VALUE...]:DIR` (argparse type)."""
    head, sep, tail = str(text).partition(":")
    if sep and head and all(_COND.match(part.strip()) for part in head.split(",")):
        when = []
        for part in head.split(","):
            axis, op, value = _COND.match(part.strip()).groups()  # type: ignore[union-attr]
            when.append((axis, "!=" if op == "!=" else "=", value.strip()))
        return ExtraSite(Path(tail), tuple(when))
    return ExtraSite(Path(text))


def as_site(entry: Any) -> ExtraSite:
    return entry if isinstance(entry, ExtraSite) else ExtraSite(Path(entry))


def sites_for(pins: Any, entries: Iterable[Any]) -> tuple[Path, ...]:
    """The folders, in order, that apply to a cell with these pins (a Cell, or its pins mapping)."""
    pins = getattr(pins, "pins", pins)
    return tuple(Path(site.path) for site in map(as_site, entries) if site.applies(pins))


def normalise(entries: Sequence[Any]) -> tuple[ExtraSite, ...]:
    return tuple(as_site(e).resolved() for e in entries)
