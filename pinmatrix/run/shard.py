"""`--shard i/n`: split the selected cells into n deterministic, balanced parts (1 ≤ i ≤ n).

Any engine can fan out with it (n CI jobs, n hosts, n Slurm tasks): each runs
`python -m pinmatrix matrix --shard i/n --run-dir SHARED` and `python -m pinmatrix report --run
SHARED` merges the per-cell files every shard wrote.

Cost-aware: cells that share an image base (python, base image, torch: the expensive torch layer)
stay together where balance allows, so each shard builds the torch layer once. The algorithm:

1. group the cells by image key; a group larger than the fair share ceil(N/n) is cut into chunks of
   at most that size (balance wins over locality past that point);
2. place chunks largest first (ties: by key, then cell ids) on the shard with the fewest cells
   (ties: the lowest index) — greedy longest-processing-time.

Guarantees (tested with hypothesis): every cell is in exactly one shard; the split depends only on
the cell ids and pins (not on input order or the machine); and max(shard) − min(shard) ≤ the largest
chunk, i.e. ≤ min(largest image group, ceil(N/n)). Proof of the bound: the fullest shard got its
last chunk c while it was the emptiest, and shards only grow, so max ≤ (min at that time) + |c| ≤
min + |c|.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from pinmatrix.cell import Cell
from pinmatrix.errors import ShardError

# More shards than the matrix can have cells (load.MAX_COMBINATIONS) are empty; the bound keeps
# `--shard 1/99999999999999999999999` from allocating a list per shard.
MAX_SHARDS = 5000
_SHARD = re.compile(r"^\s*(\d{1,12})\s*/\s*(\d{1,12})\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """"2/4" → (2, 4); 1-based, 1 ≤ i ≤ n."""
    m = _SHARD.match(text or "")
    if not m:
        shown = text if len(text or "") <= 60 else f"{text[:60]}..."
        raise ShardError(f"--shard {shown!r}: expected i/n (at most {MAX_SHARDS} shards), e.g. 1/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ShardError(f"--shard {text!r}: need 1 ≤ i ≤ n")
    if n > MAX_SHARDS:
        raise ShardError(f"--shard {text!r}: at most {MAX_SHARDS} shards (a matrix has at most "
                         "that many cells)")
    return i, n


def image_key(cell: Cell) -> str:
    """What cells with one shared image base have in common (the torch layer: python, base,
    torch)."""
    pins = cell.pins
    return "|".join(str(pins.get(k, "")) for k in ("python", "base_image", "torch"))


def partition(cells: Sequence[Cell], n: int) -> list[list[Cell]]:
    """The n shards, each sorted by cell id."""
    if not 1 <= n <= MAX_SHARDS:
        raise ShardError(f"the number of shards must be from 1 to {MAX_SHARDS}")
    ordered = sorted(cells, key=lambda c: c.id)
    if len({c.id for c in ordered}) != len(ordered):
        raise ShardError("two cells share an id; sharding needs unique ids")
    fair = max(1, math.ceil(len(ordered) / n))
    groups: dict[str, list[Any]] = {}
    for cell in ordered:
        groups.setdefault(image_key(cell), []).append(cell)
    chunks: list[tuple[str, list[Any]]] = []
    for key in sorted(groups):
        members = groups[key]
        for start in range(0, len(members), fair):
            chunks.append((key, members[start:start + fair]))
    chunks.sort(key=lambda kc: (-len(kc[1]), kc[0], [c.id for c in kc[1]]))
    shards: list[list[Any]] = [[] for _ in range(n)]
    for _, chunk in chunks:
        target = min(range(n), key=lambda s: (len(shards[s]), s))
        shards[target].extend(chunk)
    return [sorted(s, key=lambda c: c.id) for s in shards]


def shard_of(cells: Sequence[Cell], i: int, n: int) -> list[Cell]:
    """Shard i of n (1-based)."""
    if not 1 <= i <= n:
        raise ShardError(f"shard {i}/{n}: need 1 ≤ i ≤ n")
    return partition(cells, n)[i - 1]


def balance_bound(cells: Sequence[Cell], n: int) -> int:
    """The promised bound on max − min shard size for these cells."""
    if not cells:
        return 0
    fair = max(1, math.ceil(len(cells) / n))
    sizes: dict[str, int] = {}
    for cell in cells:
        sizes[image_key(cell)] = sizes.get(image_key(cell), 0) + 1
    return min(max(sizes.values()), fair)
