"""Choosing how to run attention: the reference path or the tiled kernel, with which blocks, in how much memory.

The reference path materializes the (..., Lq, Lk) score matrix several times over (scores, masked scores,
exponentials, weights); the tiled kernel (``attnlab.kernel``) never holds more than one block_q x block_k tile per
thread. ``plan(...)`` answers, from shapes alone, which path ``scaled_dot_product_attention(..., impl=...)`` takes,
why, how much extra memory it is expected to need, and how many tiles a mask lets the kernel skip:

>>> import attnlab
>>> p = attnlab.plan((1, 8, 4096, 64), (1, 8, 4096, 64), mask=attnlab.masks.causal())
>>> p.impl, p.tiles.empty > 0
('tiled', True)

``MEMORY_BUDGET`` (bytes, default 256 MiB; the one budget of ``attnlab.budget``, under its older name) bounds the
memory the reference path may take for its score-sized intermediates. Above it, NumPy inputs go to the tiled
kernel; for other arrays, or when full weights are asked for, there is no path that fits and a ``MemoryBudgetError`` says why and what to do. Change the budget by assigning
``attnlab.planner.MEMORY_BUDGET`` or pass ``budget=`` to ``plan``.

The planner is the one policy: reference vs tiled vs the kernel's decode regime (``decode_regime``; a layer
decoding one token asks ``decode_impl``), and the memory budget. It reads the kernel's own layout, tile maps and
schedule (``attnlab.kernel.layout``, re-exported here), so the plan's tile counts are exactly the tiles the
kernel computes, masks and skips.
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass

import numpy as np

from . import budget as budget_mod
from . import cost
from . import masks as masks_mod
from ._array import LOW_PRECISION, accumulation_itemsize, dtype_name, float_dtype_name
from ._inputs import Prepared, prepare
from .budget import MemoryBudgetError  # noqa: F401  (raised by Plan.require; its home is attnlab.budget)
from .checks import choice, flag
from .kernel import backward as kernel_backward
from .kernel.forward import supports_tiled
# the kernel's layout and schedule, re-exported: plan() reads exactly what the kernel runs
from .kernel.layout import (DECODE_KEYS, FOLD_MIN_ROWS, MASK_PATTERNS, PARTIAL_ROWS, TILE_ROWS, TILE_SCORES,  # noqa
                            WORK_PER_THREAD, Layout, TileCounts, TileMaps, blocks, check_mask_axes, decode_regime,
                            default_blocks, default_threads, kv_splits, layout, schedule, threads_of, used_threads,
                            work)

TILED_FROM_SCORES = 2**21            # impl="auto" on NumPy picks the tiled kernel from this many scores (B*H*Lq*Lk)
REFERENCE_COPIES = cost.REFERENCE_LIVE  # score-sized arrays alive in the reference path (the cost model's; old name)
tiled_memory = cost.tiled_peak            # the tiled kernel's peak memory (the cost model's; old name)
REFERENCE_BACKWARD_COPIES = 5.5     # score-sized float arrays alive at once in attention_backward (tracemalloc peak,
                                     # B=2 H=4 n=1024 float32, with and without a mask: 5.25-5.5; tests/test_backward.py)
IMPLS = ("auto", "reference", "tiled")


class _PlannerModule(types.ModuleType):
    """``attnlab.planner.MEMORY_BUDGET``, the budget's documented older name, reads and assigns the one budget of
    ``attnlab.budget`` (so ``monkeypatch.setattr(planner, "MEMORY_BUDGET", n)`` and code that saves and restores it
    keep working, and every check sees the same value)."""

    @property
    def MEMORY_BUDGET(self) -> int:
        return budget_mod.limit()

    @MEMORY_BUDGET.setter
    def MEMORY_BUDGET(self, value) -> None:
        # restoring a value read from here (saved = planner.MEMORY_BUDGET; ...; planner.MEMORY_BUDGET = saved) while
        # the budget followed the environment keeps it following the environment
        unset = budget_mod.MEMORY_BUDGET is None
        budget_mod.set_limit(None if unset and value == budget_mod.limit() else value)


sys.modules[__name__].__class__ = _PlannerModule


# --- the plan ------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Which path runs, why, and the estimated memory of each path (``attnlab.cost``: one model for both).
    "call peak" in ``print(plan)`` is that model's peak: above the inputs, the output included.

    ``peak_bytes`` is the chosen path's peak extra memory as ``attnlab.cost`` defines it: bytes allocated during
    the call above its inputs, the returned output included. ``reference_bytes`` is only the reference path's
    score-sized intermediates, the part the memory budget bounds."""

    impl: str | None              # "reference", "tiled", or None when no path fits the budget
    reason: str
    scores_shape: tuple
    dtype: str
    reference_bytes: int          # score-sized intermediates of the reference path
    tiled_bytes: int              # peak of the tiled kernel: output, row statistics, per-thread tiles
    budget: int
    block_q: int
    block_k: int
    threads: int
    r: int
    tiles: TileCounts | None      # for the tiled kernel; None when the reference runs or the mask is an array
    backward: bool = False        # a plan for the gradients: attention_backward / flash_attention_backward
    reference_peak: int | None = None   # peak of the reference path (cost.reference_peak); None: the scores only

    @property
    def peak_bytes(self) -> int | None:
        """Peak extra memory of the chosen path, output included (None when no path fits)."""
        ref = self.reference_bytes if self.reference_peak is None else self.reference_peak
        return {"reference": ref, "tiled": self.tiled_bytes}.get(self.impl)

    def __str__(self) -> str:
        what = "attention backward plan" if self.backward else "attention plan"
        lines = [f"{what} for scores {self.scores_shape} {self.dtype}",
                 f"  path:      {self.impl or 'none fits'}",
                 f"  why:       {self.reason}",
                 f"  reference: ~{_mib(self.reference_bytes)} of score-sized intermediates "
                 f"(budget {_mib(self.budget)})" + ("" if self.reference_peak is None else
                                                   f", call peak ~{_mib(self.reference_peak)}"),
                 f"  tiled:     ~{_mib(self.tiled_bytes)} call peak ({self.threads} thread(s), tiles of "
                 f"{self.r} head(s) x {self.block_q} queries x {self.block_k} keys)"]
        if self.impl == "tiled" and self.tiles is not None:
            lines.append(f"  tiles:     {self.tiles}")
        if self.backward:
            lines.append("  functions: reference = attnlab.attention_backward, tiled = attnlab.flash_attention_backward "
                         "(the torch bridge runs the tiled one)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Notebook display: the same text as ``print(plan)``."""
        import html
        return f"<pre>{html.escape(str(self))}</pre>"

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
         block_q: int | None = None, block_k: int | None = None, budget: int | None = None,
         backward: bool = False) -> Plan:
    """Explain what ``scaled_dot_product_attention(q, k, v, mask, impl=impl)`` would do for these shapes.

    ``mask``: None, an ``attnlab.masks.Mask`` or a boolean array (for tile counts of Mask objects).
    ``numpy=False`` plans for PyTorch or other array-API inputs, which only the reference path accepts.
    ``dtype``: any library's floating dtype or its name ("bfloat16", ``torch.float16``, ``np.float32``);
    float16/bfloat16 are planned with float32's bytes, the dtype the reference computes them in.
    ``backward=True`` plans the gradients instead: the readable ``attention_backward`` ("reference", whole
    score-sized matrices) or the tiled ``flash_attention_backward`` ("tiled"), with the backward's own tiles,
    threads and memory (``attnlab.kernel.backward``).

    >>> print(plan((1, 8, 4096, 64), (1, 8, 4096, 64), mask=masks_mod.causal(), backward=True).tiles)
    1024 tiles: 576 computed (448 full, 128 partial), 448 empty skipped
    """
    dtype = float_dtype_name(dtype)     # any library's dtype or its name: "bfloat16", torch.float16, np.float32
    stand_in = np.dtype("float32" if dtype in LOW_PRECISION else dtype)     # NumPy has no bfloat16; only shapes count
    shapes = [_shape(s, name) for s, name in ((q_shape, "q_shape"), (k_shape, "k_shape"),
                                              (k_shape if v_shape is None else v_shape, "v_shape"))]
    arrays = [np.lib.stride_tricks.as_strided(np.zeros(1, stand_in), s, (0,) * len(s)) for s in shapes]
    return decide(prepare(*arrays, "plan"), mask, impl=impl, return_weights=return_weights, numpy=numpy,
                  threads=threads, block_q=block_q, block_k=block_k, budget=budget, backward=backward, dtype=dtype)


def decide(p: Prepared, mask, *, impl="auto", return_weights=False, numpy=True, threads=None, block_q=None,
           block_k=None, budget=None, count_tiles=True, backward=False, dtype=None) -> Plan:
    """The plan for inputs prepared by ``attnlab._inputs.prepare`` (``count_tiles=False``: skip the tile
    census; ``backward``: the plan of the gradients, see ``plan``; ``dtype``: the inputs' dtype name when ``p``
    holds stand-ins of another dtype, as ``plan`` does for bfloat16)."""
    choice(impl, "impl", IMPLS)
    return_weights, backward = flag(return_weights, "return_weights"), flag(backward, "backward")
    budget = budget_mod.limit() if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer, float)) or not budget > 0:
        raise ValueError(f"budget must be a positive number of bytes, got {budget!r}")
    threads = threads_of(threads)
    lay = layout(p)
    dtype = dtype_name(p.q.dtype) if dtype is None else dtype
    itemsize = accumulation_itemsize(dtype)     # the reference computes float16/bfloat16 in float32
    n_scores = math.prod(lay.scores_shape)
    if backward:
        bq, bk = kernel_backward.blocks(lay, block_q, block_k)
        ref_bytes = int(REFERENCE_BACKWARD_COPIES * n_scores * itemsize)
        ref_peak = None
        tiled_bytes = kernel_backward.backward_memory(lay, bq, bk, threads, itemsize, masked=mask is not None)
    else:                                 # the cost model's peaks: one formula for plan() and attnlab cost
        bq, bk = blocks(lay, block_q, block_k, mask=mask)
        ref_bytes = cost.reference_scores_bytes(lay, itemsize, mask is not None)
        ref_peak = cost.reference_peak(lay, itemsize, mask is not None)
        tiled_bytes = cost.tiled_peak(lay, bq, bk, threads, itemsize, mask)
    blocker = _tiled_blocker(numpy, dtype)
    chosen, reason = _choose(impl, return_weights, blocker, ref_bytes, n_scores, budget)
    tiles = None
    if count_tiles and chosen == "tiled" and (mask is None or isinstance(mask, masks_mod.Mask)):
        if isinstance(mask, masks_mod.Mask):
            check_mask_axes(mask, lay.scores_shape)
        tiles = TileMaps(mask, lay, bq, bk).counts()
    used = kernel_backward.schedule(lay, bk, threads)[1] if backward else \
        schedule(lay, bq, bk, threads, decode_regime(lay, bq, bk, mask=mask))[1]
    return Plan(chosen, reason, lay.scores_shape, dtype, ref_bytes, tiled_bytes, budget, bq, bk, used,
                lay.r, tiles, backward, ref_peak)


def _shape(shape, name) -> tuple:
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else None
    if dims is None or len(dims) < 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                                and d >= 0 for d in dims):
        raise ValueError(f"{name} must be a tuple of at least 2 non-negative integers (..., L, D), got {shape!r}")
    return tuple(int(d) for d in dims)


def decode_impl(q, k, v, *, cached: bool, return_weights: bool) -> str:
    """The impl a layer asks for: "tiled" when it decodes one new token against a KV cache (``cached``, one query
    row, no full weights, inputs the kernel takes), where the kernel's decode regime costs O(context); else
    "auto"."""
    decode = cached and q.shape[-2] == 1 and not return_weights and supports_tiled(q, k, v)
    return "tiled" if decode else "auto"


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
