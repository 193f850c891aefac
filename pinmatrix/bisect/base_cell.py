"""Which stack a bisect holds still while PACKAGE moves, when the selection has several.

- Companions follow PACKAGE: a key the matrix's include rules add (not an axis) whose value is
  decided by PACKAGE's value in every cell (flash-attn-4 and liger-kernel by transformers in the
  default matrix) is not part of the held stack. At a release between two anchors it takes the
  values of the newest anchor at or below that release (the oldest anchor's below them all): what
  the matrix pairs with the release line the step belongs to.
- The rest of the cell (every other axis, and include keys that follow another axis, such as the
  trl that unsloth caps) is the held stack. Candidates are ordered newest first: axis by axis in the
  matrix's order, a higher version first, `none` last. The bisect takes the first candidate that is
  good at the good end (the old end for first-bad, the new end for first-good) and whose other end
  installs, and says which one it chose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from packaging.version import InvalidVersion, Version

from pinmatrix.bisect.search import Judgement

__all__ = [
    "companion_table",
    "companions_at",
    "base_candidates",
    "describe_pins",
    "choose_base",
]


def _key(value: str) -> tuple[int, Any]:
    """Sort key of an axis value: `none` lowest, then versions, then other strings."""
    if value in ("none", "", None):
        return (0, "")
    try:
        return (2, Version(value.split("[", 1)[0].split("+", 1)[0]))
    except InvalidVersion:
        return (1, value)


def companion_table(
    cells_pins: Sequence[Mapping[str, str]], axes: Sequence[str], package: str
) -> dict[str, dict[str, str]]:
    """{PACKAGE value: {companion: value}} for the non-axis keys that PACKAGE's value decides."""
    keys = sorted({k for pins in cells_pins for k in pins if k not in axes and k != package})
    table: dict[str, dict[str, str]] = {}
    companions = []
    for key in keys:
        seen: dict[str, str] = {}
        decided = True
        for pins in cells_pins:
            anchor, value = pins.get(package), pins.get(key)
            if anchor is None or value is None:
                continue
            if seen.setdefault(anchor, value) != value:
                decided = False
                break
        # decided by PACKAGE, and not constant (a constant key is part of every stack alike)
        if decided and seen and len(set(seen.values())) > 1:
            companions.append(key)
    for pins in cells_pins:
        anchor = pins.get(package)
        if anchor is not None and companions:
            table.setdefault(anchor, {k: pins[k] for k in companions if k in pins})
    return table


def companions_at(table: Mapping[str, Mapping[str, str]], version: str) -> dict[str, str]:
    """The companions of `version`: the newest anchor at or below it, else the oldest anchor."""
    if not table:
        return {}
    anchors = sorted((a for a in table if _key(a)[0] == 2), key=_key)
    if not anchors:
        return {}
    at_or_below = [a for a in anchors if _key(a) <= _key(version)]
    return dict(table[(at_or_below or anchors)[-1 if at_or_below else 0]])


def base_candidates(
    cells_pins: Sequence[Mapping[str, str]],
    axes: Sequence[str],
    package: str,
    companions: Sequence[str],
) -> list[dict[str, str]]:
    """The distinct held stacks of the selection, newest first."""
    seen: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for pins in cells_pins:
        stack = {k: v for k, v in pins.items() if k != package and k not in companions}
        seen.setdefault(tuple(sorted(stack.items())), stack)
    order = [a for a in axes if a != package]

    def newest_first(stack: Mapping[str, str]) -> tuple[Any, ...]:
        keys = order + sorted(k for k in stack if k not in order)
        return tuple(_key(stack.get(k, "none")) for k in keys)

    return sorted(seen.values(), key=newest_first, reverse=True)


def describe_pins(pins: Mapping[str, str], axes: Sequence[str]) -> str:
    """`unsloth=2026.10.9 trl=1.15.0 …`: the values that vary, in axis order, then the rest."""
    keys = [a for a in axes if a in pins] + sorted(k for k in pins if k not in axes)
    return " ".join(f"{k}={pins[k]}" for k in keys)


def choose_base(
    candidates: Sequence[Mapping[str, str]],
    good_end: str,
    other_end: str,
    judge_with: Callable[[int], Callable[[str], Judgement]],
) -> tuple[int, list[dict[str, Any]]]:
    """The index of the first candidate good at `good_end` whose `other_end` installs, and what was
    tried (each candidate's verdicts at the ends). With one candidate nothing is judged here (the
    search judges both ends anyway); with none good, the first: the search then reports its ends
    as bad input."""
    tried: list[dict[str, Any]] = []
    if len(candidates) < 2:
        return 0, tried
    for index in range(len(candidates)):
        judge = judge_with(index)
        at_good = judge(good_end)
        entry: dict[str, Any] = {
            "candidate": index,
            good_end: at_good.verdict,
            "detail": at_good.detail[:300],
        }
        tried.append(entry)
        if at_good.verdict != "good":
            continue
        at_other = judge(other_end)
        entry[other_end] = at_other.verdict
        if at_other.verdict in ("unresolvable", "infra"):
            entry["detail"] = at_other.detail[:300]
            continue
        return index, tried
    return 0, tried
