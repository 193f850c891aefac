"""Release bisect, the search and the release list, on fake release histories (the judge is a table;
the real judge runs cells: tests/integration/test_bisect.py)."""

from __future__ import annotations

import math

import pytest

from pinmatrix.bisect.pair import bisect_pair, render_pair
from pinmatrix.bisect.releases import ReleaseIndexUnreachable, fetch_index_files, releases_between
from pinmatrix.bisect.search import Judgement, RangeError, bisect_releases


def table(verdicts: dict[str, str]):
    calls: list[str] = []

    def judge(version: str) -> Judgement:
        calls.append(version)
        return Judgement(version, verdicts[version], f"detail of {version}")

    return judge, calls


def history(n: int, first_bad: int) -> dict[str, str]:
    return {f"1.{i}": ("good" if i < first_bad else "bad") for i in range(n)}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 17, 33, 40])
def test_every_first_bad_is_found_within_log2_probes(n) -> None:
    for first_bad in range(1, n):
        verdicts = history(n, first_bad)
        judge, calls = table(verdicts)
        result = bisect_releases(list(verdicts), judge)
        assert (result.last_good, result.first_bad) == (f"1.{first_bad - 1}", f"1.{first_bad}")
        assert len(calls) == result.probes == len(set(calls))  # nothing judged twice
        # both ends, then a binary search of the n-1 places the first bad release can be
        assert result.probes <= math.ceil(math.log2(n - 1)) + 2
        assert result.probes <= math.ceil(math.log2(n)) + 2


def test_a_single_release_in_range_is_the_answer_after_two_probes() -> None:
    judge, calls = table({"2.0": "good", "2.1": "bad"})
    result = bisect_releases(["2.0", "2.1"], judge)
    assert (result.last_good, result.first_bad, result.probes) == ("2.0", "2.1", 2)


def test_unresolvable_releases_are_left_out_never_counted_as_bad() -> None:
    verdicts = {
        "1.0": "good",
        "1.1": "good",
        "1.2": "unresolvable",
        "1.3": "unresolvable",
        "1.4": "bad",
        "1.5": "bad",
    }
    judge, calls = table(verdicts)
    result = bisect_releases(list(verdicts), judge)
    assert (result.last_good, result.first_bad) == ("1.1", "1.4")
    assert {j.version for j in result.unresolvable} <= {"1.2", "1.3"}
    assert all(
        result.judgements[v].verdict != "bad" for v in ("1.2", "1.3") if v in result.judgements
    )
    assert result.probes == len([v for v in calls if verdicts[v] != "unresolvable"])


@pytest.mark.parametrize(
    "ends,message",
    [
        (("bad", "bad"), "1.0 is bad, not good"),
        (("good", "good"), "1.3 is good, not bad"),
        (("unresolvable", "bad"), "1.0 is unresolvable, not good"),
    ],
)
def test_ends_that_are_not_as_claimed_are_bad_input(ends, message) -> None:
    verdicts = {"1.0": ends[0], "1.1": "good", "1.2": "bad", "1.3": ends[1]}
    judge, _ = table(verdicts)
    with pytest.raises(RangeError, match=message):
        bisect_releases(list(verdicts), judge)


def test_a_non_monotonic_history_is_said_with_its_evidence_under_all() -> None:
    verdicts = {"1.0": "good", "1.1": "bad", "1.2": "good", "1.3": "bad"}
    judge, calls = table(verdicts)
    result = bisect_releases(list(verdicts), judge, exhaustive=True)
    assert result.monotonic is False and result.first_bad is None
    assert result.stopped == "not monotonic: 1.0 good, 1.1 bad, 1.2 good, 1.3 bad"
    assert sorted(calls) == sorted(verdicts)


def test_all_probes_every_release_and_gives_the_switch() -> None:
    verdicts = history(6, 4)
    judge, calls = table(verdicts)
    result = bisect_releases(list(verdicts), judge, exhaustive=True)
    assert (result.monotonic, result.last_good, result.first_bad, result.probes) == (
        True,
        "1.3",
        "1.4",
        6,
    )


def test_binary_search_does_not_claim_monotonicity_it_did_not_see() -> None:
    result = bisect_releases(list(history(9, 5)), table(history(9, 5))[0])
    assert result.monotonic is None


def test_an_infra_verdict_stops_the_search_rather_than_guess() -> None:
    verdicts = {**history(9, 5), "1.4": "infra"}
    result = bisect_releases(list(verdicts), table(verdicts)[0])
    assert result.first_bad is None and "1.4 could not be judged (infra)" in result.stopped


# --- the release list
# ------------------------------------------------------------------------------


def files_of(*entries):
    return lambda package: [{"filename": f, "yanked": y} for f, y in entries]


LISTING = files_of(
    ("pkg-1.0.0-py3-none-any.whl", False),
    ("pkg-1.0.0.tar.gz", False),
    ("pkg-1.1.0rc1-py3-none-any.whl", False),
    ("pkg-1.1.0-py3-none-any.whl", False),
    ("pkg-1.2.0-py3-none-any.whl", "broken metadata"),
    ("pkg-1.2.0.tar.gz", True),
    ("pkg-1.10.0-py3-none-any.whl", False),
    ("pkg-1.3.0-py3-none-any.whl", False),
    ("pkg-2.0.0-py3-none-any.whl", False),
    ("not-a-dist.zip", False),
)


def test_releases_in_order_without_prereleases_or_yanked_ones() -> None:
    r = releases_between("pkg", "1.0.0", "1.10.0", files=LISTING)
    assert r.releases == ["1.0.0", "1.1.0", "1.3.0", "1.10.0"]  # packaging's order, not text order
    assert r.yanked == ["1.2.0"] and r.prereleases_left_out == ["1.1.0rc1"]
    assert releases_between("pkg", "1.0.0", "1.1.0", pre=True, files=LISTING).releases == [
        "1.0.0",
        "1.1.0rc1",
        "1.1.0",
    ]


@pytest.mark.parametrize(
    "good,bad,message",
    [
        ("1.3.0", "1.0.0", "GOOD must be older than BAD"),
        ("1.0.0", "9.9.9", "has no release 9.9.9"),
        ("one", "1.0.0", "Invalid version"),
    ],
)
def test_bad_ranges_are_bad_input(good, bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        releases_between("pkg", good, bad, files=LISTING)


def test_an_unreachable_index_is_infra_not_bad_input() -> None:
    with pytest.raises(ReleaseIndexUnreachable):
        fetch_index_files("transformers", "http://127.0.0.1:9/simple", timeout=5)


def test_a_budget_stops_the_search_and_says_so() -> None:
    verdicts = history(33, 20)
    judge, calls = table(verdicts)
    result = bisect_releases(list(verdicts), judge, budget=4)
    assert len(calls) == 4 and result.first_bad is None and "budget of 4" in result.stopped
    assert bisect_releases(list(verdicts), table(verdicts)[0], budget=8).first_bad == "1.20"


@pytest.mark.parametrize("n", [2, 3, 5, 9, 32])
def test_first_good_finds_where_it_starts_to_hold(n) -> None:
    for first_good in range(1, n):
        verdicts = {f"1.{i}": ("bad" if i < first_good else "good") for i in range(n)}
        judge, calls = table(verdicts)
        result = bisect_releases(list(verdicts), judge, first_good=True)
        assert (result.last_bad, result.first_good) == (f"1.{first_good - 1}", f"1.{first_good}")
        assert result.answer == (f"1.{first_good - 1}", f"1.{first_good}")
        assert (result.first_bad, result.last_good) == (None, None)
        assert result.probes <= math.ceil(math.log2(n - 1)) + 2


def test_first_good_needs_the_old_end_bad_and_the_new_end_good() -> None:
    judge, _ = table({"1.0": "good", "1.1": "good", "1.2": "good"})
    with pytest.raises(RangeError, match="1.0 is good, not bad"):
        bisect_releases(["1.0", "1.1", "1.2"], judge, first_good=True)
    # the first-bad question refuses a bad old end (the range a first-good question needs)
    judge, _ = table({"1.0": "bad", "1.1": "good", "1.2": "good"})
    with pytest.raises(RangeError, match="1.0 is bad, not good"):
        bisect_releases(["1.0", "1.1", "1.2"], judge)


def test_first_good_over_the_whole_table_and_unresolvable_releases() -> None:
    verdicts = {"1.0": "bad", "1.1": "unresolvable", "1.2": "bad", "1.3": "good", "1.4": "good"}
    judge, _ = table(verdicts)
    result = bisect_releases(list(verdicts), judge, first_good=True, exhaustive=True)
    assert (result.last_bad, result.first_good, result.monotonic) == ("1.2", "1.3", True)
    judge, _ = table(verdicts)
    result = bisect_releases(list(verdicts), judge, first_good=True)
    assert (result.last_bad, result.first_good) == ("1.2", "1.3")


def test_two_packages_moving_together_are_bisected_each_with_the_other_held_at_each_end() -> None:
    unsloth = ["2026.9.14", "2026.9.20", "2026.10.1", "2026.10.9"]
    trl = ["0.24.0", "1.0.0", "1.10.0", "1.15.0"]
    calls = []

    def judge(pins):
        # broken from unsloth 2026.10.1 on, but only with trl >= 1.10.0 (the two together)
        calls.append(dict(pins))
        broken = unsloth.index(pins["unsloth"]) >= 2 and trl.index(pins["trl"]) >= 2
        return Judgement("", "bad" if broken else "good", f"{pins}")

    searches, judged = bisect_pair({"unsloth": unsloth, "trl": trl}, judge)
    lines = render_pair(searches)
    assert lines == [
        "unsloth with trl held at 0.24.0: no switch in range (2026.10.9 is good, not bad: "
        "{'unsloth': '2026.10.9', 'trl': '0.24.0'})",
        "unsloth with trl held at 1.15.0: first bad 2026.10.1 (before it: 2026.9.20)",
        # this corner was judged for the first search already: its detail is that judgement's
        "trl with unsloth held at 2026.9.14: no switch in range (1.15.0 is good, not bad: "
        "{'unsloth': '2026.9.14', 'trl': '1.15.0'})",
        "trl with unsloth held at 2026.10.9: first bad 1.10.0 (before it: 1.0.0)",
    ]
    # the shared corners are judged once
    assert judged == len({tuple(sorted(c.items())) for c in calls}) == len(calls)
    with pytest.raises(ValueError):
        bisect_pair({"unsloth": unsloth}, judge)
