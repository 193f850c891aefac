"""Release bisection: given releases in order and a way to judge one, find the first bad release.

The judge runs a real cell (pinmatrix/bisect/run.py); here is only the search, so that its cost and
its sharp edges are tested on their own:

- the two ends are judged first: GOOD must be good and BAD bad, else it is bad input (`RangeError`);
- a release that cannot be installed with the rest of the cell is `unresolvable`: it is left out of
the
  search (never counted as bad) and reported with the resolver's words;
- a release the machine could not judge (`infra`) stops the search: guessing past it would be a
wrong
  answer;
- n judged releases cost about ⌈log2 n⌉ + 1 judgements (at most ⌈log2(n-1)⌉ + 2: both ends, then a
  binary search of the n-1 places the first bad release can be);
- `first_good` asks the other question, "since which release does it hold?": the old end must be
  bad (the check fails, or the feature is absent) and the new end good, and the answer is the first
  good release (`first_good`, `last_bad`). The verdicts keep their meaning (bad: does not hold);
- `exhaustive` judges every release, for a full table; the answer is then checked for monotonicity,
and a
  history such as good, bad, good is reported as "not monotonic" with the evidence instead of an
  answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pinmatrix.errors import BadInput

Verdict = Literal["good", "bad", "unresolvable", "infra"]
__all__ = ["Verdict", "Judgement", "BisectResult", "RangeError", "bisect_releases"]


class RangeError(BadInput, ValueError):
    """GOOD is not good or BAD is not bad (or not judgeable): bad input, exit 2."""


@dataclass(frozen=True)
class Judgement:
    version: str
    verdict: Verdict
    detail: str = ""  # the signature and message behind a bad verdict, uv's words for unresolvable
    check: str = ""  # the check that decided a bad verdict (the bisected check)
    message: str = ""  # that check's own message


@dataclass
class BisectResult:
    releases: list[str]  # every release in range, in order, ends included
    judgements: dict[str, Judgement] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # the order releases were judged in
    first_bad: str | None = None
    last_good: str | None = None
    monotonic: bool | None = None  # None: not established (binary search assumes it)
    stopped: str | None = None  # why the search stopped without an answer
    first_good: str | None = None  # with first_good: the first release where it holds
    last_bad: str | None = None
    direction: str = "first-bad"  # or "first-good"

    @property
    def answer(self) -> tuple[str, str] | None:
        """(before, switch): the last release of the old state and the first of the new one."""
        if self.direction == "first-good":
            return (self.last_bad, self.first_good) if self.first_good and self.last_bad else None
        return (self.last_good, self.first_bad) if self.first_bad and self.last_good else None

    @property
    def probes(self) -> int:
        """Judgements that ran a probe (an unresolvable release costs a resolve, not a probe)."""
        return sum(1 for v in self.order if self.judgements[v].verdict in ("good", "bad", "infra"))

    @property
    def unresolvable(self) -> list[Judgement]:
        return [
            self.judgements[v]
            for v in self.releases
            if v in self.judgements and self.judgements[v].verdict == "unresolvable"
        ]


class _BudgetSpent(Exception):
    pass


def bisect_releases(
    releases: Sequence[str],
    judge: Callable[[str], Judgement],
    *,
    exhaustive: bool = False,
    budget: int | None = None,
    first_good: bool = False,
) -> BisectResult:
    """Search `releases` (oldest first: releases[0] is GOOD, releases[-1] is BAD; with `first_good`
    releases[0] is bad and releases[-1] good). `budget` caps the judgements (the nightly's
    --bisect-budget); a search that runs out says so in `stopped`."""
    try:
        return _search(releases, judge, exhaustive, budget, first_good)
    except _BudgetSpent as spent:
        result: BisectResult = spent.args[0]
        return result


def _search(
    releases: Sequence[str],
    judge: Callable[[str], Judgement],
    exhaustive: bool,
    budget: int | None,
    first_good: bool = False,
) -> BisectResult:
    if len(releases) < 2:
        raise RangeError(f"a range needs two releases, got {list(releases)}")
    result = BisectResult(list(releases), direction="first-good" if first_good else "first-bad")
    old, new = ("bad", "good") if first_good else ("good", "bad")

    def run(version: str) -> Judgement:
        if version not in result.judgements:
            if budget is not None and len(result.order) >= budget:
                result.stopped = (
                    f"budget of {budget} judgements spent; the first bad release lies "
                    "between the last good and first bad judged so far"
                )
                raise _BudgetSpent(result)
            judgement = judge(version)
            result.judgements[version] = judgement
            result.order.append(version)
        return result.judgements[version]

    oldest, newest = run(releases[0]), run(releases[-1])
    for end, want in ((oldest, old), (newest, new)):
        if end.verdict != want:
            raise RangeError(
                f"{end.version} is {end.verdict}, not {want}: "
                + (end.detail or "pick a range whose ends are judged as claimed")
            )
    if exhaustive:
        for version in releases[1:-1]:
            if run(version).verdict == "infra":
                result.stopped = (
                    f"{version} could not be judged (infra): {result.judgements[version].detail}"
                )
                return result
        _conclude_from_table(result)
        return result

    # Binary search over the resolvable releases strictly between the last known good and first
    # known bad.
    lo, hi = 0, len(releases) - 1
    candidates = list(range(1, len(releases) - 1))
    while True:
        inside = [i for i in candidates if lo < i < hi]
        if not inside:
            break
        mid = inside[len(inside) // 2]
        judgement = run(releases[mid])
        if judgement.verdict == "unresolvable":
            candidates.remove(mid)
            continue
        if judgement.verdict == "infra":
            result.stopped = f"{releases[mid]} could not be judged (infra): {judgement.detail}"
            return result
        if judgement.verdict == old:
            lo = mid
        else:
            hi = mid
    if first_good:
        result.last_bad, result.first_good = releases[lo], releases[hi]
    else:
        result.last_good, result.first_bad = releases[lo], releases[hi]
    return result


def _conclude_from_table(result: BisectResult) -> None:
    """With every release judged: one switch from good to bad is an answer; more is not
    monotonic."""
    judged = [
        (v, result.judgements[v].verdict)
        for v in result.releases
        if result.judgements[v].verdict in ("good", "bad")
    ]
    switches = [i for i in range(1, len(judged)) if judged[i][1] != judged[i - 1][1]]
    if len(switches) == 1:
        result.monotonic = True
        before, switch = judged[switches[0] - 1][0], judged[switches[0]][0]
        if result.direction == "first-good":
            result.last_bad, result.first_good = before, switch
        else:
            result.last_good, result.first_bad = before, switch
    else:
        result.monotonic = False
        result.stopped = "not monotonic: " + ", ".join(f"{v} {verdict}" for v, verdict in judged)
