"""Two packages that move together: the good and the bad cell differ in both (unsloth and the trl
it caps). Which one broke it?

Each is bisected over its own releases with the other held at each end of its range: four searches
(two when a held end cannot install with the moving package's ends: that search is reported with
its reason, not dropped). The judge takes both versions; a judgement asked twice (the corners of
the square, shared by the searches) is judged once. The report names, for each package and each
held end, the first bad (or first good) release, so a break that needs both (bad only with the new
trl *and* the new unsloth) shows as a switch in one package only with the other at its new end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pinmatrix.bisect.search import BisectResult, Judgement, RangeError, bisect_releases

__all__ = ["PairSearch", "bisect_pair", "render_pair"]


@dataclass
class PairSearch:
    moving: str
    held: str
    held_at: str
    result: BisectResult | None
    error: str | None = None  # the ends were not as claimed with the other package held there


def bisect_pair(
    ranges: Mapping[str, Sequence[str]],
    judge: Callable[[Mapping[str, str]], Judgement],
    *,
    first_good: bool = False,
) -> tuple[list[PairSearch], int]:
    """`ranges`: two packages, each its releases oldest first. Returns the searches and the number
    of distinct judgements they cost."""
    if len(ranges) != 2:
        raise ValueError(f"two packages move together, not {len(ranges)}: {', '.join(ranges)}")
    memo: dict[tuple[tuple[str, str], ...], Judgement] = {}

    def judge_pins(pins: Mapping[str, str]) -> Judgement:
        key = tuple(sorted(pins.items()))
        if key not in memo:
            memo[key] = judge(pins)
        return memo[key]

    (a, a_releases), (b, b_releases) = ranges.items()
    searches: list[PairSearch] = []
    for moving, releases, held, held_releases in (
        (a, a_releases, b, b_releases),
        (b, b_releases, a, a_releases),
    ):
        for held_at in (held_releases[0], held_releases[-1]):

            def step(version: str, moving: str = moving, held: str = held,
                     at: str = held_at) -> Judgement:
                return dataclasses.replace(judge_pins({moving: version, held: at}), version=version)

            try:
                result = bisect_releases(list(releases), step, first_good=first_good)
                searches.append(PairSearch(moving, held, held_at, result))
            except RangeError as exc:
                searches.append(PairSearch(moving, held, held_at, None, str(exc)))
    return searches, len(memo)


def render_pair(searches: Sequence[PairSearch]) -> list[str]:
    """One line per search: the package, the other held where, the answer or why none."""
    lines = []
    for s in searches:
        head = f"{s.moving} with {s.held} held at {s.held_at}: "
        if s.result is None:
            lines.append(head + f"no switch in range ({s.error})")
        elif s.result.answer:
            before, switch = s.result.answer
            label = "first good" if s.result.direction == "first-good" else "first bad"
            lines.append(head + f"{label} {switch} (before it: {before})")
        else:
            lines.append(head + f"no answer ({s.result.stopped})")
    return lines
