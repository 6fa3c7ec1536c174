"""The tiled kernel's layout: how inputs are viewed, how they are cut into tiles, which tiles a mask leaves empty,
and how the work is scheduled on threads. Named types replace positional tuples: a ``Task`` is one unit of work of
the thread pool, a ``Part`` one rectangle of a tile the kernel multiplies.

The planner (``attnlab.planner``) reads the same functions, so ``plan()``'s tile counts and threads are exactly
the tiles and threads the kernel uses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import masks as masks_mod
from .._array import accumulation_itemsize, broadcast_shapes
from ..checks import positive_int
from ..masks import EMPTY, FULL, PARTIAL
from . import band as band_mod

FOLD_MIN_ROWS = 16                   # tiles of this many rows fold the running max into the score matmul
WORK_PER_THREAD = 2**21              # multiply-adds (scores x (D + Dv)) a thread must get, else fewer threads
TILE_ROWS = 1024                     # rows per tile (r * block_q)
PARTIAL_ROWS = 128                   # rows per slice of a partial tile, each slice narrowed to its own keys
MASK_PATTERNS = 8                    # partial-tile patterns of a relative mask a kernel call keeps (per diagonal)
TILE_SCORES = 2**17                  # scores per tile when the rows are few: 512 KiB in float32
DECODE_KEYS = 8192                   # keys per tile at most when the rows are few (decoding): blocks to split
BATCHED_ROWS = 512                   # query rows per head up to which every head of a query block runs in one task
BATCHED_MASKED_ROWS = 1024           # the same for a Mask whose per-head tiles would all be partial (``fragmented``)
BATCHED_BLOCK_Q = 128                # the batched regime's query rows per head of a tile
BATCHED_KEYS = 512                   # its keys per tile without a mask (n <= 512: one block, no online rescale)
BATCHED_MASKED_KEYS = 128            # its keys per tile with a mask (partial tiles small), and its fewest keys
BATCHED_SCORES = 2**19               # scores of one batched tile (every head together) at most: 2 MiB in float32
DECODE_BYTES_PER_THREAD = 2**25      # key/value bytes a decode-regime thread must read, else fewer threads


class Task(NamedTuple):
    """One unit of work of the thread pool: query block ``block`` of head group ``group`` (an index into
    ``Layout.lead``; None in the decode regime: every head at once) over key blocks key_lo:key_hi, written to
    partial result ``split`` (split-KV)."""

    group: tuple | None
    block: int
    key_lo: int
    key_hi: int
    split: int


class Part(NamedTuple):
    """A rectangle of a tile to compute: its query rows row_lo:row_hi (all r heads) against keys key_lo:key_hi,
    the cells ``blocked`` (bool (r or 1, rows, cols), or None) set to -inf. In a cached pattern the key range is
    relative to the tile's first key; ``Problem.tile`` hands out absolute ones."""

    row_lo: int
    row_hi: int
    blocked: np.ndarray | None
    key_lo: int
    key_hi: int


# --- the kernel's layout ---------------------------------------------------------------------------------------
@dataclass
class Layout:
    """q (*lead, r, Lq, D), k (*lead, 1, Lk, D), v (*lead, 1, Lk, Dv): views, never copies.

    The r query heads that share one key/value head (GQA, MQA) sit together on axis -3, so one task multiplies a
    tall (r * block_q, D) block of queries by one key tile. ``lead`` is the broadcast of the remaining leading dims
    (batch, key/value heads); ``scores_shape`` is the reference's (..., Hq, Lq, Lk).
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    lead: tuple
    r: int
    scores_shape: tuple

    @property
    def Lq(self) -> int:
        return self.q.shape[-2]

    @property
    def Lk(self) -> int:
        return self.k.shape[-2]

    def to_internal(self, x):
        """An array broadcastable to the scores (mask, bias) as a (*lead, r, Lq, Lk) view."""
        full = np.broadcast_to(x, self.scores_shape)
        return full.reshape(self.lead + (self.r,) + self.scores_shape[-2:])      # splits/inserts axes: a view

    def heads_of(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """Batch and head index (in the scores' (..., B, H, Lq, Lk) layout) of the r query heads of task ``idx``:
        two int arrays of shape (r,), 0 where the scores have no such axis."""
        flat = int(np.ravel_multi_index(idx, self.lead)) if self.lead else 0
        ids = flat * self.r + np.arange(self.r)
        outer = self.scores_shape[:-2]
        coords = np.unravel_index(ids, outer) if outer else ()
        zeros = np.zeros(self.r, dtype=np.int64)
        h = coords[-1] if len(outer) >= 1 else zeros
        b = coords[-2] if len(outer) >= 2 else zeros
        return b, h


def layout(p) -> Layout:
    """The kernel's view of inputs prepared by ``attnlab._inputs.prepare`` (which validated shapes and dtypes)."""
    q, k, v = p.q, p.k, p.v
    if p.groups > 1:                                          # (..., G, r, Lq, D) and (..., G, 1, Lk, D)
        r = p.groups
    elif q.ndim >= 3 and q.shape[-3] > 1 and all(x.ndim < 3 or x.shape[-3] == 1 for x in (k, v)):
        r = q.shape[-3]                                       # every query head shares one key/value head (MQA)
        k, v = (x if x.ndim >= 3 else x[None] for x in (k, v))
    else:
        r = 1
        q, k, v = q[..., None, :, :], k[..., None, :, :], v[..., None, :, :]
    lead = broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    return Layout(q, k, v, lead, r, tuple(p.scores_shape))


def mask_heads(mask, lay: Layout, b, h):
    """(b, h) as the reference's ``resolve_mask`` reads them for a Mask: with 3-D scores (X, Lq, Lk) axis -3 is the
    batch unless the mask depends on the head."""
    if len(lay.scores_shape) == 3 and mask.heads is None:
        return h, np.zeros_like(h)
    return b, h


def check_mask_axes(mask, scores_shape) -> None:
    """Raise like the reference does when a Mask defined for some batch/head size does not fit the scores."""
    outer = scores_shape[:-2]
    heads_axis = len(outer) >= 2 or (len(outer) == 1 and mask.heads is not None)
    batch_axis = len(outer) >= 2 or (len(outer) == 1 and mask.heads is None)
    for size, what, present, axis in ((mask.batch, "batch size", batch_axis, -2 if len(outer) >= 2 else -1),
                                      (mask.heads, "heads", heads_axis, -1)):
        if size is None:
            continue
        actual = outer[axis] if present else None
        if actual != size and not (actual is None and size == 1):     # padding([n]) fits unbatched scores
            raise ValueError(f"mask {mask.name} is defined for {what} {size}, but the scores "
                             f"{tuple(scores_shape)} have {actual if actual is not None else 'no such axis'}")


# --- block sizes and threads -------------------------------------------------------------------------------------
def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_blocks(r: int, Lq: int, Lk: int) -> tuple[int, int]:
    """block_q so that a tile has r * block_q ~ TILE_ROWS rows (tall matmuls; the kernel cuts partial tiles into
    PARTIAL_ROWS slices, so a causal diagonal wastes little); block_k = 256 keys, more when the rows are few
    (decoding): up to TILE_SCORES scores and DECODE_KEYS keys per tile, so that a long context still has blocks
    to split among the threads."""
    block_q = max(1, min(Lq, max(16, TILE_ROWS // r)))
    block_k = max(1, min(Lk, max(256, min(DECODE_KEYS, TILE_SCORES // (r * block_q)))))
    return block_q, block_k


def batched_blocks(lay: Layout, mask) -> tuple[int, int] | None:
    """The batched regime's tile sizes for a small problem, else None. Small: Lq <= BATCHED_ROWS query rows per
    head, or Lq <= BATCHED_MASKED_ROWS under a Mask that the per-head path would cut into slices everywhere
    (``fragmented``); at least FOLD_MIN_ROWS rows per head group. Tiles: BATCHED_BLOCK_Q rows per head by
    BATCHED_KEYS keys, or BATCHED_MASKED_KEYS with a mask (a Mask or a boolean array), fewer keys when every
    head's tile together would pass BATCHED_SCORES scores, and None below BATCHED_MASKED_KEYS keys (so many heads
    run per head).

    Measured (docs/performance.md, "Small problems"), H = 8, 2 threads: at n = 512 without a mask one 512-key
    block ran in 2.5-3.0 ms, 128 x 256 tiles in 2.9-3.4 and 128 x 128 in 3.4-4.2; with a mask 128 x 128 tiles
    beat 128 x 256 for every mask kind (causal 2.5 against 2.9 ms), since a partial tile computes all of its
    cells."""
    masked = mask is not None
    rows = BATCHED_MASKED_ROWS if isinstance(mask, masks_mod.Mask) else BATCHED_ROWS
    if not (0 < lay.Lq <= rows and lay.r * lay.Lq >= FOLD_MIN_ROWS and lay.Lk > 0):
        return None
    bq = min(lay.Lq, BATCHED_BLOCK_Q)
    fits = BATCHED_SCORES // max(1, math.prod(lay.lead) * lay.r * bq)   # keys of every head's tile (no head: any)
    bk = min(lay.Lk, BATCHED_MASKED_KEYS if masked else BATCHED_KEYS, fits)
    if bk < min(lay.Lk, BATCHED_MASKED_KEYS) or (lay.Lq > BATCHED_ROWS and not fragmented(lay, mask)):
        return None
    return bq, bk


def fragmented(lay: Layout, mask) -> bool:
    """Whether the per-head path would cut every tile of ``mask`` (a Mask) into row slices: every non-empty tile
    of its default tile map is partial, and the band regime does not take the mask. There a task per head runs a
    dozen NumPy calls per 128-row slice of one head; the batched regime runs them once per tile of every head.
    Measured at n = 1024 (H = 8, 2 threads, docs/performance.md): document (8 documents) 5.8 ms per head, 1.8
    batched; causal 8.6 and 7.8; prefix LM (full tiles per head) 7.1 per head, 8.1 batched, so it stays."""
    bq, bk = default_blocks(lay.r, lay.Lq, lay.Lk)
    rows = min(bq, lay.Lq)
    if band_mod.band_of(mask, lay.Lq, lay.Lk, rows, lay.r * rows * min(bk, lay.Lk), lay.r) is not None:
        return False
    counts = TileMaps(mask, lay, bq, bk).counts()
    return counts.full == 0 and counts.partial > 0


def blocks(lay: Layout, block_q=None, block_k=None, *, mask) -> tuple[int, int]:
    """The tile sizes of a call under ``mask`` (None, a Mask or a boolean array): the ones given (checked), else
    ``batched_blocks`` for a small problem, else ``default_blocks``."""
    given = block_q is not None or block_k is not None
    bq, bk = (not given and batched_blocks(lay, mask)) or default_blocks(lay.r, lay.Lq, lay.Lk)
    bq = positive_int(block_q, "block_q", allow_none=True) or bq
    bk = positive_int(block_k, "block_k", allow_none=True) or bk
    return bq, bk


def threads_of(threads) -> int:
    """The threads of a call: the ones given (checked) or every usable core."""
    return default_threads() if threads is None else positive_int(threads, "threads")


# --- tile maps -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileCounts:
    """Tiles of one run. A tile is block_q queries x block_k keys of one key/value head, its r query heads
    together. ``empty`` tiles are skipped, ``full`` ones computed without evaluating the mask, ``partial`` ones
    computed with it."""

    empty: int = 0
    partial: int = 0
    full: int = 0

    @property
    def total(self) -> int:
        return self.empty + self.partial + self.full

    @property
    def computed(self) -> int:
        return self.partial + self.full

    def __str__(self) -> str:
        return (f"{self.total} tiles: {self.computed} computed ({self.full} full, {self.partial} partial), "
                f"{self.empty} empty skipped")


class TileMaps:
    """Which tiles a task visits: EMPTY (skip), PARTIAL (evaluate the mask), FULL (no mask).

    Built from ``mask.blocks`` once per (batch, head) the mask depends on; the r heads of a group are merged
    (EMPTY only when empty for all of them, FULL only when full for all). Boolean-array masks are classified per
    tile while running (``by_array``), so their map says PARTIAL everywhere.
    """

    def __init__(self, mask, lay: Layout, block_q: int, block_k: int):
        self.nqb, self.nkb = math.ceil(lay.Lq / block_q), math.ceil(lay.Lk / block_k)
        self.by_array = mask is not None and not isinstance(mask, masks_mod.Mask)
        self._maps = {}
        self._shared = None
        if mask is None or self.by_array:
            self._shared = np.full((self.nqb, self.nkb), PARTIAL if self.by_array else FULL, np.int8)
        elif mask.batch is None and mask.heads is None:
            self._shared = mask.blocks(lay.Lq, lay.Lk, block_q, block_k)
        else:
            per_head = {}
            for idx in np.ndindex(*lay.lead):
                b, h = mask_heads(mask, lay, *lay.heads_of(idx))
                keys = [(int(bi) if mask.batch else 0, int(hi) if mask.heads else 0) for bi, hi in zip(b, h)]
                for key in keys:
                    if key not in per_head:
                        per_head[key] = mask.blocks(lay.Lq, lay.Lk, block_q, block_k, b=key[0], h=key[1])
                self._maps[idx] = merge_group_maps([per_head[key] for key in dict.fromkeys(keys)])
        self.n_lead = math.prod(lay.lead)

    @property
    def shared(self) -> np.ndarray | None:
        """The one (nqb, nkb) map of every task group when they share it (no mask, a boolean array, or a Mask that
        depends on neither batch nor head); None when the map differs by group."""
        return self._shared

    def __getitem__(self, idx) -> np.ndarray:
        """The (nqb, nkb) int8 map of task group ``idx``."""
        return self._shared if self._shared is not None else self._maps[idx]

    def counts(self) -> TileCounts:
        maps = [self._shared] * self.n_lead if self._shared is not None else list(self._maps.values())
        if self.by_array:
            return TileCounts()
        tally = [sum(int(np.count_nonzero(m == state)) for m in maps) for state in (EMPTY, PARTIAL, FULL)]
        return TileCounts(*tally)


def merge_group_maps(maps):
    """One tile map for the r heads of a group: EMPTY where all are empty, FULL where all are full."""
    stack = np.stack(maps)
    return np.where((stack == EMPTY).all(0), EMPTY, np.where((stack == FULL).all(0), FULL, PARTIAL)).astype(np.int8)


# --- the schedule --------------------------------------------------------------------------------------------------
def decode_regime(lay: Layout, block_q: int, block_k: int, *, mask, mods: bool = False) -> bool:
    """Whether the kernel runs in the decode regime (``attnlab.kernel.decode``): every head together, one task per
    key split (decoding: one query block of fewer than FOLD_MIN_ROWS rows per head group) or per query block (a
    small problem on the batched regime's tiles, ``batched_blocks``), where a task per head would spend its time
    in Python: n = 512 causal ran in 7.6 ms per head and 3.9 ms batched (docs/performance.md). Never with a
    score modifier or a bias. ``mask``: the call's (``batched_blocks``' tiles depend on it)."""
    if mods:
        return False
    if math.ceil(lay.Lq / block_q) <= 1 and lay.r * lay.Lq < FOLD_MIN_ROWS:
        return True
    return (block_q, block_k) == batched_blocks(lay, mask)


def kv_splits(threads: int, pairs: int, n_key_blocks: int) -> int:
    """How many parts the keys are split into: more than one only when there are fewer (head group, query block)
    pairs than threads, as when decoding one token (split-KV; the parts are merged by their log-sum-exp)."""
    if not pairs or n_key_blocks < 2 or pairs >= threads:
        return 1
    return min(n_key_blocks, math.ceil(threads / pairs))


def schedule(lay: Layout, block_q: int, block_k: int, threads: int, decode: bool) -> tuple[int, int]:
    """(key splits, threads used) of a kernel call. Decode regime: one task per key split, the keys split among
    the threads their bytes pay for (``kv_bytes``); with several query blocks (the batched regime), one task
    per query block and no split. Otherwise a task per (head group, query block, key split), the keys split
    when there are fewer (head group, query block) pairs than threads."""
    n_key_blocks = math.ceil(lay.Lk / block_k)
    n_query_blocks = math.ceil(lay.Lq / block_q)
    if decode and n_query_blocks > 1:                 # the batched regime: one task per query block
        return 1, used_threads(threads, n_query_blocks, work(lay))
    if decode:
        splits = max(1, min(threads, n_key_blocks, kv_bytes(lay) // DECODE_BYTES_PER_THREAD))
        return splits, splits
    pairs = math.prod(lay.lead) * math.ceil(lay.Lq / block_q)
    splits = kv_splits(threads, pairs, n_key_blocks)
    return splits, used_threads(threads, pairs * splits, work(lay))


def kv_bytes(lay: Layout) -> int:
    """Bytes of keys and values a call reads, every key/value head once: a decode step is bound by them (one
    multiply-add per element read), so its threads are sized by them (``DECODE_BYTES_PER_THREAD``), not by
    multiply-adds. Measured on the 2-core machine (docs/performance.md, "Decode step"): a second thread paid
    from 64 MiB (8 heads, 16k keys) and lost up to 32 MiB (8 heads at 4k-8k, 2 key/value heads at 4k-32k)."""
    dtype = lay.q.dtype                                                 # plan() also takes other libraries'
    itemsize = dtype.itemsize if isinstance(dtype, np.dtype) else accumulation_itemsize(dtype)
    return math.prod(lay.lead) * lay.Lk * (lay.k.shape[-1] + lay.v.shape[-1]) * itemsize


def work(lay: Layout) -> int:
    """Multiply-adds of the dense problem: scores x (D + Dv)."""
    return math.prod(lay.scores_shape) * (lay.q.shape[-1] + lay.v.shape[-1])


def used_threads(threads: int, tasks: int, work_: int) -> int:
    """At most one thread per task, and fewer for small problems (WORK_PER_THREAD multiply-adds per thread at
    least): waking a worker costs more than it saves there."""
    return max(1, min(threads, tasks, work_ // WORK_PER_THREAD))


def tasks(maps: TileMaps, lay: Layout, splits: int, decode: bool) -> list[Task]:
    """The tasks of a call, biggest first for load balance; in the decode regime one per query block and key
    split, every head together (``Task.group`` None)."""
    nkb = maps.nkb
    bounds = [(s * nkb // splits, (s + 1) * nkb // splits) for s in range(splits)]
    if decode:                                        # the later query blocks first: under a causal mask the
        return [Task(None, i, lo, hi, s) for i in reversed(range(maps.nqb))   # longest
                for s, (lo, hi) in enumerate(bounds)]
    pairs = [(idx, i) for idx in np.ndindex(*lay.lead) for i in range(maps.nqb)]
    todo = [Task(idx, i, lo, hi, s) for idx, i in pairs for s, (lo, hi) in enumerate(bounds)]
    visited = lambda t: int(np.count_nonzero(maps[t.group][t.block, t.key_lo:t.key_hi] != EMPTY))
    return sorted(todo, key=visited, reverse=True)
