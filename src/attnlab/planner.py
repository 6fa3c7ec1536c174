"""Choosing how to run attention: the reference path or the tiled kernel, with which blocks, in how much memory.

The reference path materializes the (..., Lq, Lk) score matrix several times over (scores, masked scores,
exponentials, weights); the tiled kernel (``attnlab.flash``) never holds more than one block_q x block_k tile per
thread. ``plan(...)`` answers, from shapes alone, which path ``scaled_dot_product_attention(..., impl=...)`` takes,
why, how much extra memory it is expected to need, and how many tiles a mask lets the kernel skip:

>>> import attnlab
>>> p = attnlab.plan((1, 8, 4096, 64), (1, 8, 4096, 64), mask=attnlab.masks.causal())
>>> p.impl, p.tiles.empty > 0
('tiled', True)

``MEMORY_BUDGET`` (bytes, default 256 MiB) bounds the memory the reference path may take for its score-sized
intermediates. Above it, NumPy inputs go to the tiled kernel; for other arrays, or when full weights are asked for,
there is no path that fits and a ``MemoryBudgetError`` says why and what to do. Change the budget by assigning
``attnlab.planner.MEMORY_BUDGET`` or pass ``budget=`` to ``plan``.

This module also owns the layout the kernel works in (``layout``) and the tile maps it follows (``TileMaps``),
so the plan's tile counts are exactly the tiles the kernel computes, masks and skips.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from . import masks as masks_mod
from .attention import _prepare
from .masks import EMPTY, FULL, PARTIAL

MEMORY_BUDGET = 256 * 2**20          # bytes the reference path may use for score-sized intermediates
TILED_FROM_SCORES = 2**21            # impl="auto" on NumPy picks the tiled kernel from this many scores (B*H*Lq*Lk)
FOLD_MIN_ROWS = 16                   # tiles of this many rows fold the running max into the score matmul
WORK_PER_THREAD = 2**21              # multiply-adds (scores x (D + Dv)) a thread must get, else fewer threads
REFERENCE_COPIES = (3.25, 4.0)       # score-sized float arrays alive at once in the reference path, without / with
                                     # a mask (tracemalloc peaks, B=2 H=4 n=1024 float32, see tests/test_plan.py)
TILE_ROWS = 1024                     # rows per tile (r * block_q)
PARTIAL_ROWS = 128                   # rows per slice of a partial tile, each slice narrowed to its own keys
MASK_PATTERNS = 8                    # partial-tile patterns of a relative mask a kernel call keeps (per diagonal)
TILE_SCORES = 2**17                  # scores per tile when the rows are few: 512 KiB in float32
DECODE_KEYS = 2048                   # keys per tile at most when the rows are few (decoding): blocks to split
IMPLS = ("auto", "reference", "tiled")


class MemoryBudgetError(ValueError):
    """No attention path fits the memory budget for these inputs."""


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
    """The kernel's view of inputs prepared by ``attention._prepare`` (which validated shapes and dtypes)."""
    q, k, v = p.q, p.k, p.v
    if p.groups > 1:                                          # (..., G, r, Lq, D) and (..., G, 1, Lk, D)
        r = p.groups
    elif q.ndim >= 3 and q.shape[-3] > 1 and all(x.ndim < 3 or x.shape[-3] == 1 for x in (k, v)):
        r = q.shape[-3]                                       # every query head shares one key/value head (MQA)
        k, v = (x if x.ndim >= 3 else x[None] for x in (k, v))
    else:
        r = 1
        q, k, v = q[..., None, :, :], k[..., None, :, :], v[..., None, :, :]
    lead = tuple(np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3]))
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


def check_block(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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
                self._maps[idx] = _merge_heads([per_head[key] for key in dict.fromkeys(keys)])
        self.n_lead = math.prod(lay.lead)

    def __getitem__(self, idx) -> np.ndarray:
        """The (nqb, nkb) int8 map of task group ``idx``."""
        return self._shared if self._shared is not None else self._maps[idx]

    def counts(self) -> TileCounts:
        maps = [self._shared] * self.n_lead if self._shared is not None else list(self._maps.values())
        if self.by_array:
            return TileCounts()
        tally = [sum(int(np.count_nonzero(m == state)) for m in maps) for state in (EMPTY, PARTIAL, FULL)]
        return TileCounts(*tally)


def _merge_heads(maps):
    stack = np.stack(maps)
    return np.where((stack == EMPTY).all(0), EMPTY, np.where((stack == FULL).all(0), FULL, PARTIAL)).astype(np.int8)


# --- the plan ------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Which path runs, why, and the estimated extra memory (beyond inputs and outputs) of each path."""

    impl: str | None              # "reference", "tiled", or None when no path fits the budget
    reason: str
    scores_shape: tuple
    dtype: str
    reference_bytes: int          # score-sized intermediates of the reference path
    tiled_bytes: int              # per-thread tiles and row statistics of the tiled kernel
    budget: int
    block_q: int
    block_k: int
    threads: int
    r: int
    tiles: TileCounts | None      # for the tiled kernel; None when the reference runs or the mask is an array

    @property
    def peak_bytes(self) -> int | None:
        """Estimated extra memory of the chosen path (None when no path fits)."""
        return {"reference": self.reference_bytes, "tiled": self.tiled_bytes}.get(self.impl)

    def __str__(self) -> str:
        lines = [f"attention plan for scores {self.scores_shape} {self.dtype}",
                 f"  path:      {self.impl or 'none fits'}",
                 f"  why:       {self.reason}",
                 f"  reference: ~{_mib(self.reference_bytes)} of score-sized intermediates "
                 f"(budget {_mib(self.budget)})",
                 f"  tiled:     ~{_mib(self.tiled_bytes)} ({self.threads} thread(s), tiles of "
                 f"{self.r} head(s) x {self.block_q} queries x {self.block_k} keys)"]
        if self.impl == "tiled" and self.tiles is not None:
            lines.append(f"  tiles:     {self.tiles}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        peak = "n/a" if self.peak_bytes is None else _mib(self.peak_bytes)
        return f"Plan(impl={self.impl!r}, peak~{peak}, reason={self.reason!r})"

    def require(self) -> str:
        """The chosen impl, or raise MemoryBudgetError with the reason."""
        if self.impl is None:
            raise MemoryBudgetError(self.reason)
        return self.impl


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def plan(q_shape, k_shape, v_shape=None, *, mask=None, dtype="float32", impl: str = "auto",
         return_weights: bool = False, numpy: bool = True, threads: int | None = None,
         block_q: int | None = None, block_k: int | None = None, budget: int | None = None) -> Plan:
    """Explain what ``scaled_dot_product_attention(q, k, v, mask, impl=impl)`` would do for these shapes.

    ``mask``: None, an ``attnlab.masks.Mask`` or a boolean array (for tile counts of Mask objects).
    ``numpy=False`` plans for PyTorch or other array-API inputs, which only the reference path accepts.
    """
    dtype = np.dtype(dtype)
    shapes = [_shape(s, name) for s, name in ((q_shape, "q_shape"), (k_shape, "k_shape"),
                                              (k_shape if v_shape is None else v_shape, "v_shape"))]
    arrays = [np.lib.stride_tricks.as_strided(np.zeros(1, dtype), s, (0,) * len(s)) for s in shapes]
    return decide(_prepare(*arrays, "plan"), mask, impl=impl, return_weights=return_weights, numpy=numpy,
                  threads=threads, block_q=block_q, block_k=block_k, budget=budget)


def decide(p, mask, *, impl="auto", return_weights=False, numpy=True, threads=None, block_q=None,
           block_k=None, budget=None, count_tiles=True) -> Plan:
    """The plan for inputs prepared by ``attention._prepare`` (``count_tiles=False``: skip the tile census)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    budget = MEMORY_BUDGET if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer, float)) or not budget > 0:
        raise ValueError(f"budget must be a positive number of bytes, got {budget!r}")
    threads = default_threads() if threads is None else check_threads(threads)
    lay = layout(p)
    itemsize = np.dtype(str(p.q.dtype).split(".")[-1]).itemsize
    bq, bk = default_blocks(lay.r, lay.Lq, lay.Lk)
    bq, bk = check_block(block_q, "block_q") or bq, check_block(block_k, "block_k") or bk
    n_scores = math.prod(lay.scores_shape)
    ref_bytes = int(REFERENCE_COPIES[mask is not None] * n_scores * itemsize)
    tiled_bytes = tiled_memory(lay, bq, bk, threads, itemsize, masked=mask is not None)
    blocker = _tiled_blocker(numpy, p.q.dtype)
    chosen, reason = _choose(impl, return_weights, blocker, ref_bytes, n_scores, budget)
    tiles = None
    if count_tiles and chosen == "tiled" and (mask is None or isinstance(mask, masks_mod.Mask)):
        if isinstance(mask, masks_mod.Mask):
            check_mask_axes(mask, lay.scores_shape)
        tiles = TileMaps(mask, lay, bq, bk).counts()
    used = schedule(lay, bq, bk, threads, batched_heads(lay, bq))[1]
    return Plan(chosen, reason, lay.scores_shape, str(p.q.dtype), ref_bytes, tiled_bytes, budget, bq, bk, used,
                lay.r, tiles)


def _shape(shape, name) -> tuple:
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else None
    if dims is None or len(dims) < 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                                and d >= 0 for d in dims):
        raise ValueError(f"{name} must be a tuple of at least 2 non-negative integers (..., L, D), got {shape!r}")
    return tuple(int(d) for d in dims)


def kv_splits(threads: int, pairs: int, n_key_blocks: int) -> int:
    """How many parts the keys are split into: more than one only when there are fewer (head group, query block)
    pairs than threads, as when decoding one token (split-KV; the parts are merged by their log-sum-exp)."""
    if not pairs or n_key_blocks < 2 or pairs >= threads:
        return 1
    return min(n_key_blocks, math.ceil(threads / pairs))


def batched_heads(lay: Layout, block_q: int, mods: bool = False) -> bool:
    """Whether the kernel runs every head in one task per key split (``flash._light_task``): one query block
    of fewer than FOLD_MIN_ROWS rows per head group and no score modifier, the decoding regime, where a task per
    head would spend its time in Python."""
    return not mods and math.ceil(lay.Lq / block_q) <= 1 and lay.r * lay.Lq < FOLD_MIN_ROWS


def schedule(lay: Layout, block_q: int, block_k: int, threads: int, batched: bool) -> tuple[int, int]:
    """(key splits, threads used) of a kernel call. Batched heads: one task per key split, the keys split among
    the threads the work pays for. Otherwise a task per (head group, query block, key split), the keys split
    when there are fewer (head group, query block) pairs than threads."""
    n_key_blocks = math.ceil(lay.Lk / block_k)
    if batched:
        splits = max(1, min(n_key_blocks, used_threads(threads, n_key_blocks, work(lay))))
        return splits, splits
    pairs = math.prod(lay.lead) * math.ceil(lay.Lq / block_q)
    splits = kv_splits(threads, pairs, n_key_blocks)
    return splits, used_threads(threads, pairs * splits, work(lay))


def work(lay: Layout) -> int:
    """Multiply-adds of the dense problem: scores x (D + Dv)."""
    return math.prod(lay.scores_shape) * (lay.q.shape[-1] + lay.v.shape[-1])


def used_threads(threads: int, tasks: int, work_: int) -> int:
    """At most one thread per task, and fewer for small problems (WORK_PER_THREAD multiply-adds per thread at
    least): waking a worker costs more than it saves there."""
    return max(1, min(threads, tasks, work_ // WORK_PER_THREAD))


def check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


def tiled_memory(lay: Layout, block_q: int, block_k: int, threads: int, itemsize: int, masked: bool = True) -> int:
    """Extra bytes of ``attnlab.flash_attention`` beyond inputs and output: per thread the score tile, the scaled
    queries, the key tile with its column of ones, the accumulators and row statistics (and on a partial tile
    the evaluated mask and its negation); once the log-sum-exp rows and, with split keys, the partial outputs.
    Not counted: the partial-tile patterns a relative mask keeps for the call (``_Problem.tile``), at most
    MASK_PATTERNS boolean tiles of rows x cols bytes shared by the threads; causal and sliding-window masks keep 2
    or 3 (plus 2 for the shorter last blocks when the lengths are not multiples of the blocks)."""
    rows = lay.r * min(block_q, max(lay.Lq, 1))
    cols = min(block_k, max(lay.Lk, 1))
    D, Dv = lay.q.shape[-1], lay.v.shape[-1]
    per_thread = itemsize * (rows * cols + rows * (D + 1) + 3 * rows * (Dv + 1) + 3 * rows + cols)
    per_thread += itemsize * cols * (D + 1) if rows >= FOLD_MIN_ROWS else 0
    per_thread += 2 * rows * cols if masked else 0
    batched = batched_heads(lay, block_q)
    if batched:             # every head at once: the tile (and its mask), the scaled queries, sums, row statistics
        rows *= math.prod(lay.lead)
        per_thread = itemsize * (rows * cols + rows * D + 2 * rows * Dv + 6 * rows + min(rows * cols, 8192))
        per_thread += rows * cols if masked else 0
    splits, used = schedule(lay, block_q, block_k, threads, batched)
    rows_out = math.prod(lay.scores_shape[:-1])
    return used * per_thread + splits * rows_out * itemsize + (splits - 1) * rows_out * (Dv + 1) * itemsize


def _tiled_blocker(numpy, dtype):
    """Why the tiled kernel cannot run these inputs, or None."""
    if not numpy:
        return "the tiled kernel runs on NumPy arrays only"
    if str(dtype) not in ("float32", "float64"):
        return f"the tiled kernel supports float32 and float64, not {dtype}"
    return None


def _choose(impl, return_weights, blocker, ref_bytes, n_scores, budget):
    fits = ref_bytes <= budget
    size = f"the reference path needs ~{_mib(ref_bytes)} for its score matrices, budget {_mib(budget)}"
    raise_hint = "or raise attnlab.planner.MEMORY_BUDGET"
    if return_weights:
        if impl == "tiled":
            return None, ("impl='tiled' cannot return the full weight matrix; use return_lse=True and "
                          "attnlab.attention_weights_for(q, k, rows=..., lse=...) for chosen rows")
        if fits:
            return "reference", f"return_weights=True needs the full weight matrix; {size}"
        return None, (f"return_weights=True needs the full weight matrix but {size}; run without it "
                      f"(return_lse=True) and recompute chosen rows with attnlab.attention_weights_for, "
                      f"{raise_hint}")
    if impl == "tiled":
        if blocker:
            return None, f"impl='tiled' was asked for, but {blocker}; use impl='reference' or convert the inputs"
        return "tiled", "impl='tiled' was asked for"
    if impl == "reference" or blocker:
        why = "impl='reference' was asked for" if impl == "reference" else f"{blocker}, so impl='auto' uses the " \
            f"reference path"
        if fits:
            return "reference", f"{why}; {size}"
        hint = "use impl='auto' or 'tiled'" if not blocker else "convert the inputs to NumPy float32/float64 " \
            "for the tiled kernel"
        return None, f"{why}, but {size}; {hint}, {raise_hint}"
    if not fits:
        return "tiled", f"{size}, so the tiled kernel runs"
    if n_scores >= TILED_FROM_SCORES:
        return "tiled", (f"{n_scores} scores >= TILED_FROM_SCORES={TILED_FROM_SCORES}: the tiled kernel is faster "
                         f"at this size")
    return "reference", (f"{n_scores} scores < TILED_FROM_SCORES={TILED_FROM_SCORES}: the reference path is "
                         f"faster for small inputs; {size}")
