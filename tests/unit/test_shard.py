"""pinmatrix/run/shard.py: `--shard i/n` is a partition, deterministic, balanced within the stated
bound, and keeps cells that share an image base together where balance allows (hypothesis)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinmatrix.cell import Cell
from pinmatrix.run.shard import (
    ShardError,
    balance_bound,
    image_key,
    parse_shard,
    partition,
    shard_of,
)

cells_st = st.lists(
    st.tuples(st.sampled_from(["3.11", "3.12"]), st.sampled_from(["2.9.1", "2.10.0", "2.11.0"]),
              st.integers(0, 40)),
    max_size=60, unique=True,
).map(lambda rows: [Cell(pins={"python": py, "torch": t, "transformers": f"4.{tf}.0"}) for py, t,
                    tf in rows])


@settings(max_examples=150, deadline=None)
@given(cells=cells_st, n=st.integers(1, 9), seed=st.integers(0, 1000))
def test_partition_deterministic_balanced(cells, n, seed) -> None:
    shards = partition(cells, n)
    assert len(shards) == n
    ids = [c.id for s in shards for c in s]
    assert sorted(ids) == sorted(c.id for c in cells) and len(ids) == len(set(ids))   # a partition
    shuffled = list(cells)
    random.Random(seed).shuffle(shuffled)
    assert [[c.id for c in s] for s in partition(shuffled,
                                                 # deterministic
                                                 n)] == [[c.id for c in s] for s in shards]
    sizes = [len(s) for s in shards]
    bound = balance_bound(cells, n)
    assert max(sizes) - min(sizes) <= bound                                               # balanced
    assert [c.id for c in shard_of(shuffled, 1, n)] == [c.id for c in shards[0]]


@settings(max_examples=100, deadline=None)
@given(cells=cells_st, n=st.integers(1, 6))
def test_image_groups_stay_together_when_they_fit(cells, n) -> None:
    """A group no larger than the fair share is never split across shards."""
    fair = max(1, -(-len(cells) // n))
    shards = partition(cells, n)
    where = {c.id: i for i, s in enumerate(shards) for c in s}
    groups: dict = {}
    for c in cells:
        groups.setdefault(image_key(c), []).append(c)
    for members in groups.values():
        if len(members) <= fair:
            assert len({where[c.id] for c in members}) == 1


def test_group_larger_than_fair_share_is_cut() -> None:
    # three cells of one image and one of another into 2 shards: keeping the group whole gives 3 +
    # 1;
    # the group exceeds the fair share ceil(4/2) = 2, so it is cut and the shards come out 2 + 2
    cells = [Cell(pins={"python": "3.11", "torch": "2.9.1",
                        "transformers": f"4.{i}.0"}) for i in range(3)]
    cells.append(Cell(pins={"python": "3.12", "torch": "2.9.1", "transformers": "4.0.0"}))
    sizes = sorted(len(s) for s in partition(cells, 2))
    assert sizes == [2, 2]


def test_parse_shard() -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "1/0", "a/b", "1-4", ""):
        with pytest.raises(ShardError):
            parse_shard(bad)
