"""How a sequence of length L is split across the P ranks of a ring: the "contiguous" and "zigzag" layouts.

contiguous: the sequence is cut into P chunks; rank r holds chunk r.
zigzag:     the sequence is cut into 2P chunks; rank r holds chunks r and 2P-1-r (one from the front, one from
            the back), so that under a causal mask every rank has the same number of allowed score cells
            (the load-balanced layout of Brandon et al. 2023, "Striped Attention", and of PyTorch's context
            parallelism; Llama 3 used it for long-context training).

Uneven lengths. When L is not a multiple of the number of chunks n, the first L % n chunks get one extra position
(chunk sizes differ by at most one). Nothing is padded: every rank holds exactly its positions, shards may differ
in length by a few positions, and the ring sends each block with its own length. Every chunk must be non-empty:
L >= P (contiguous) or L >= 2P (zigzag).

All functions are pure (no communication) and work on NumPy arrays and PyTorch tensors alike.

>>> positions(0, 2, 8, "zigzag").tolist(), positions(1, 2, 8, "zigzag").tolist()
([0, 1, 6, 7], [2, 3, 4, 5])
>>> positions(0, 3, 7, "contiguous").tolist()
[0, 1, 2]
"""

from __future__ import annotations

import numpy as np

from .._array import as_array, namespace
from ..budget import check as check_budget
from ..checks import choice, is_int, non_negative_int, positive_int

LAYOUTS = ("contiguous", "zigzag")
CHUNK_BYTES = 256           # Python bytes per chunk in the lists of bounds and lengths (ints, tuples, list slots)


def check_layout(layout: str) -> str:
    return choice(layout, "layout", LAYOUTS)


def _check_world(rank: int, world: int) -> None:
    for value, name in ((rank, "rank"), (world, "world")):
        if not is_int(value):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}"[:200])
    positive_int(world, "world")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need world >= 1 and 0 <= rank < world, got rank={rank}, world={world}")


def n_chunks(world: int, layout: str) -> int:
    """How many chunks the sequence is cut into: P (contiguous) or 2P (zigzag)."""
    return positive_int(world, "world") * (2 if check_layout(layout) == "zigzag" else 1)


def chunk_bounds(L: int, n: int) -> list[tuple[int, int]]:
    """(start, stop) of n near-equal chunks of range(L); the first L % n chunks are one longer.

    >>> chunk_bounds(7, 3)
    [(0, 3), (3, 5), (5, 7)]
    """
    L, n = non_negative_int(L, "L"), positive_int(n, "n")
    if L < n:
        raise ValueError(f"sequence length L={L} is shorter than the n={n} chunks it must be cut into")
    check_budget(CHUNK_BYTES * n, f"the bounds of {n} chunks", instead="use fewer chunks")
    base, extra = divmod(L, n)
    sizes = [base + (i < extra) for i in range(n)]
    starts = np.cumsum([0] + sizes)
    return [(int(starts[i]), int(starts[i + 1])) for i in range(n)]


def ranges(rank: int, world: int, L: int, layout: str = "zigzag") -> list[tuple[int, int]]:
    """The contiguous (start, stop) ranges of global positions that ``rank`` holds, in the order it stores them."""
    _check_world(rank, world)
    L = non_negative_int(L, "L")
    n = n_chunks(world, layout)
    if L < n:
        raise ValueError(f"sequence length L={L} is too short for world={world} with the {layout} layout: "
                         f"it needs L >= {n} so that every rank holds at least one position per chunk")
    bounds = chunk_bounds(L, n)
    return [bounds[rank]] if layout == "contiguous" else [bounds[rank], bounds[n - 1 - rank]]


def positions(rank: int, world: int, L: int, layout: str = "zigzag") -> np.ndarray:
    """Global positions (int64, increasing) of the sequence elements held by ``rank``."""
    held = sum(b - a for a, b in ranges(rank, world, L, layout))
    check_budget(8 * held, f"the {held} positions rank {rank} holds of L={L}", instead="use a shorter sequence or more ranks")
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges(rank, world, L, layout)])


def local_lengths(world: int, L: int, layout: str = "zigzag") -> list[int]:
    """The shard length of every rank."""
    check_budget(CHUNK_BYTES * n_chunks(world, layout), f"the shard lengths of world={world} ranks",
                 instead="use fewer ranks")
    return [sum(b - a for a, b in ranges(r, world, L, layout)) for r in range(world)]


def shard(x, rank: int, world: int, layout: str = "zigzag", dim: int = -2):
    """The part of the full sequence ``x`` (sequence on axis ``dim``) that ``rank`` holds.

    >>> shard(np.arange(8), 1, 2, "zigzag", dim=0).tolist()
    [2, 3, 4, 5]
    """
    x = as_array(x, "x")
    xp = namespace(x)
    dim = _axis(x, dim)
    parts = [x[(slice(None),) * dim + (slice(a, b),)] for a, b in ranges(rank, world, x.shape[dim], layout)]
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=dim)


def unshard(parts, layout: str = "zigzag", dim: int = -2):
    """Reassemble the full sequence from every rank's shard, given in rank order (inverse of ``shard``).

    >>> full = np.arange(11)
    >>> unshard([shard(full, r, 3, "zigzag", dim=0) for r in range(3)], "zigzag", dim=0).tolist() == full.tolist()
    True
    """
    if not isinstance(parts, (list, tuple)) or not parts:
        raise TypeError(f"parts must be a non-empty list of shards in rank order, got {type(parts).__name__}")
    parts = [as_array(p, f"parts[{r}]") for r, p in enumerate(parts)]
    xp = namespace(*parts)
    dim = _axis(parts[0], dim)
    world, L = len(parts), sum(p.shape[dim] for p in parts)
    others = {p.shape[:dim] + p.shape[dim + 1:] for p in parts}
    if len(others) > 1 or any(p.ndim != parts[0].ndim for p in parts):
        raise ValueError(f"the shards must agree on every axis but dim={dim - parts[0].ndim}, got shapes "
                         f"{[tuple(p.shape) for p in parts]}")
    got = [p.shape[dim] for p in parts]
    if got != local_lengths(world, L, layout):
        raise ValueError(f"shard lengths {got} do not match the {layout} layout of L={L} over {world} ranks, "
                         f"which is {local_lengths(world, L, layout)}")
    pieces = {}
    for r, p in enumerate(parts):
        offset = 0
        for a, b in ranges(r, world, L, layout):
            pieces[a] = p[(slice(None),) * dim + (slice(offset, offset + b - a),)]
            offset += b - a
    return xp.concat([pieces[a] for a in sorted(pieces)], axis=dim)


def _axis(x, dim: int) -> int:
    if not is_int(dim) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an axis of x (ndim {x.ndim}), got {dim!r}")
    return int(dim) % x.ndim
