"""The fast tiled forward: exact attention without the Lq x Lk score matrix (FlashAttention on the CPU).

It computes what ``attnlab.kernel.simple`` computes, Algorithm 1 of Dao et al. 2022 ("FlashAttention"; the online
softmax of Milakov & Gimelshein 2018): for one block of queries, walk over the key tiles keeping per row the
running max m, the running sum l of exp(score - m) and the running output acc, then out = acc / l,
lse = m + log l. Read ``simple.py`` first; this module changes how, never what, and each change is tested equal:

- all r query heads that share a key/value head (GQA, MQA) form one tall (r * block_q, D) block of queries, so
  one matmul serves them all (``layout.Layout``);
- scores are kept in log2 units (q scaled by scale * log2(e) once), so probabilities are exp2(), which NumPy
  computes about twice as fast as exp(); lse is turned back into natural units at the end;
- l lives beside the output as one more column, acc = [sum p v | sum p], so one matmul with a column of ones
  updates both;
- once a row has a finite shift, -m is folded into the score matmul as an extra column of q (against a column
  of ones beside the keys): its tiles need no max, subtraction or rescaling, just exp2 and the P v matmul;
- the first pass is optimistic: a row's first shift comes from a probe (the max over a few of the tile's keys,
  a score the row really has, so l >= 1) and nothing is checked per tile; if the accumulators end non-finite
  (a later score rose far above the shift, or an input holds inf/NaN), or a row that met an allowed key ends
  with l < eps (scores so huge, ~1e24, that the probe and the folded matmul round one score apart by more than
  exp2 can absorb), the task is redone carefully, every tile
  checked and rescaled as in Algorithm 1, non-finite values reaching only the rows that attend to them;
- tiles the mask leaves empty are skipped, full tiles never evaluate the mask, partial tiles evaluate it on
  the tile's indices only (``layout.TileMaps``), once per diagonal for a relative mask (``Mask.relative``), and
  are cut into row slices narrowed to the keys they may see (``Part``);
- score modifiers (ALiBi, soft-capping, relative bias) see each tile with its absolute indices, in natural
  units (no fold then);
- tasks (key/value head group, query block[, key split]) run on a thread pool (``threads``); when there are
  fewer tasks than threads the keys are split and the parts merged exactly by their log-sum-exp
  (``attnlab.merge_attention``); one query block of few rows runs in the decode regime (``decode``).
- a narrow relative mask (a sliding or dilated window) runs in the band regime (``band``): row slices that see
  their whole band at once, batched over overlapping key windows, dilated windows regrouped by residue; the same
  tiles are counted, and a non-finite result is redone by the careful pass here.

Extra memory: per thread a few (R, block_k) tiles and (R, D) rows, plus the (..., Lq) log-sum-exp; never Lq x Lk.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .. import budget
from .. import masks as masks_mod
from .._array import accumulation_itemsize, as_array, default_scale
from .._inputs import Prepared, prepare, resolve_bias, resolve_mask
from ..checks import flag
from ..masks import EMPTY, FULL, PARTIAL
from ..merge import merge_attention
from . import band as band_mod
from . import layout as layout_mod
from .decode import decode_task
from .decode import step as decode_step
from .layout import FOLD_MIN_ROWS, PARTIAL_ROWS, Part, TileCounts, TileMaps
from .ops import LOG2E, exp2_masked, masked_pv, normalise
from .threads import run_tasks

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class RunStats:
    """What one ``flash_attention`` call did; pass ``stats=RunStats()`` to have it filled in."""

    tiles: TileCounts = field(default_factory=TileCounts)
    block_q: int = 0
    block_k: int = 0
    threads: int = 0
    tasks: int = 0
    kv_splits: int = 1


def score_mod_alias(score_mod, bias_fn, fn_name):
    """``bias_fn=``, the old name of ``score_mod=``: warn, and use it. Returns (score_mod, the argument's name)."""
    if bias_fn is None:
        return score_mod, "score_mod"
    warnings.warn(f"{fn_name}(bias_fn=...) is deprecated; pass score_mod=... (the same ScoreMod)",
                  DeprecationWarning, stacklevel=3)
    if score_mod is not None:
        raise TypeError(f"{fn_name}: pass score_mod= only (bias_fn= is its deprecated name), not both")
    return bias_fn, "bias_fn"


def flash_attention(q, k, v, mask=None, *, scale=None, score_mod=None, bias=None, block_q=None, block_k=None,
                    return_lse=False, threads=None, stats: RunStats | None = None, bias_fn=None):
    """Exact softmax(q k^T * scale [+ bias], masked) @ v computed tile by tile, on NumPy arrays.

    Same shapes and semantics as ``attnlab.scaled_dot_product_attention``: q (..., Lq, D), k (..., Lk, D),
    v (..., Lk, Dv) -> (..., Lq, Dv) with broadcasting leading dims and grouped-query heads; ``mask`` a Mask or a
    boolean array (True = may attend); a row with nothing to attend to gives 0 (lse -inf). ``score_mod``: an
    ``attnlab.scores.ScoreMod`` applied to each tile (``bias_fn`` is its deprecated name); ``bias``: an additive
    float array broadcastable to the scores (sliced per tile). ``block_q``/``block_k``: tile sizes (default:
    ``attnlab.kernel.layout.default_blocks``); ``threads``: the cores to use (default: the usable cores): the
    kernel's own threads, BLAS held to one thread inside each, or, when the work fits one thread
    (``layout.schedule``), BLAS's threads. ``return_lse``: also return the log-sum-exp of each row, (..., Lq).
    ``stats``: a ``RunStats`` to fill with tile counts.

    >>> import numpy as np, attnlab
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((2, 50, 8)) for _ in range(3))
    >>> ref = attnlab.scaled_dot_product_attention(q, k, v, mask=attnlab.masks.causal())
    >>> out = flash_attention(q, k, v, mask=attnlab.masks.causal(), block_q=16, block_k=16)
    >>> float(np.abs(out - ref).max()) < 1e-12
    True
    """
    score_mod, name = score_mod_alias(score_mod, bias_fn, "flash_attention")
    p = prepare(q, k, v, "flash_attention", dot=True, scale=scale, score_mod=score_mod, score_mod_name=name)
    return tiled(p, mask, scale=scale, score_mod=score_mod, bias=bias, block_q=block_q, block_k=block_k,
                 return_lse=return_lse, threads=threads, stats=stats)


def tiled(p: Prepared, mask=None, *, scale=None, score_mod=None, bias=None, block_q=None, block_k=None,
          return_lse=False, threads=None, stats: RunStats | None = None, fn_name="flash_attention"):
    """``flash_attention`` on inputs already checked by ``attnlab._inputs.prepare`` (with ``dot=True``)."""
    return_lse = flag(return_lse, "return_lse")
    short = decode_step(p, mask, scale, score_mod, bias, block_q, block_k, threads, stats)   # the decode step's
    if short is not None:                                                                     # short road
        return short if return_lse else short[0]
    pb = problem(p, mask, scale, score_mod, bias, fn_name)
    lay = pb.lay
    threads = layout_mod.threads_of(threads)
    outer = lay.scores_shape[:-2]
    if 0 in lay.scores_shape[:-1]:               # no query row at all (Lq, B or H is 0): the empty result
        if stats is not None:
            stats.block_q, stats.block_k, stats.threads, stats.tasks = 0, 0, 0, 0
        empty_out = np.zeros(outer + (lay.Lq, pb.Dv), pb.dtype)
        return (empty_out, np.zeros(outer + (lay.Lq,), pb.dtype)) if return_lse else empty_out
    plan = call_plan(pb, mask, block_q, block_k, threads)
    pb.block_q, pb.block_k, pb.maps, pb.decode = plan.block_q, plan.block_k, plan.maps, plan.decode
    pb.band = plan.band
    splits, n_threads, tasks = plan.splits, plan.threads, plan.tasks
    out = np.empty((splits,) + lay.lead + (lay.r, lay.Lq, pb.Dv), pb.dtype)     # (S, *lead, r, Lq, Dv)
    lse = np.empty((splits,) + lay.lead + (lay.r, lay.Lq), pb.dtype)            # (S, *lead, r, Lq)
    counts, used = run_tasks(tasks, lambda ws, task, c: run_task(pb, ws, task, out, lse, c),
                             lambda: None if pb.decode else Workspace(pb), n_threads, threads)
    final_out, final_lse = out[0], lse[0]
    for s in range(1, splits):
        final_out, final_lse = merge_attention(final_out, final_lse, out[s], lse[s])
    if stats is not None:
        stats.tiles = TileCounts(*map(int, counts))
        stats.block_q, stats.block_k, stats.threads = pb.block_q, pb.block_k, used
        stats.tasks, stats.kv_splits = len(tasks), splits
    final_out = final_out.reshape(outer + (lay.Lq, pb.Dv))
    return (final_out, final_lse.reshape(outer + (lay.Lq,))) if return_lse else final_out


@dataclass
class CallPlan:
    """What ``tiled`` decides for one call from shapes alone: tile sizes, tile maps, the regime, the schedule and
    its tasks. A decode step calls with the same shapes every
    token, so the plan is kept (``call_plan``) and the next call of the same shape, mask object and settings
    reuses it instead of rebuilding it (tens of microseconds, a third of a short step). The partial-tile
    patterns of a relative mask stay per call (``Problem``): the cost model counts evaluating them in every call's
    peak memory."""

    block_q: int
    block_k: int
    maps: TileMaps
    decode: bool
    splits: int
    threads: int
    tasks: list
    mask: object                 # held so that the key's id(mask) is not reused by another mask while kept
    band: band_mod.Band | None = None    # the band regime (``band``): a narrow relative mask, in row slices


PLAN_CACHE = 8                   # call plans kept (the most recently used)
_PLANS: OrderedDict = OrderedDict()
_PLANS_LOCK = threading.Lock()


def call_plan(pb, mask, block_q, block_k, threads: int) -> CallPlan:
    """The ``CallPlan`` of a call: a kept one for the same shapes, mask object, tile sizes, threads and layout
    settings (``layout``'s tunables are part of the key, so changing one never reuses a stale plan), else a new
    one. Boolean-array masks are keyed as "an array": their plan depends on their shape only (they are
    classified per tile while running)."""
    lay = pb.lay
    tunables = (layout_mod.BATCHED_ROWS, layout_mod.BATCHED_MASKED_ROWS, layout_mod.BATCHED_BLOCK_Q, layout_mod.BATCHED_KEYS,
                layout_mod.BATCHED_MASKED_KEYS, layout_mod.BATCHED_SCORES,
                layout_mod.WORK_PER_THREAD, layout_mod.TILE_ROWS, layout_mod.TILE_SCORES, layout_mod.DECODE_KEYS,
                layout_mod.DECODE_BYTES_PER_THREAD, layout_mod.PARTIAL_ROWS, layout_mod.MASK_PATTERNS, FOLD_MIN_ROWS,
                band_mod.BAND_ROWS, band_mod.BAND_KEYS, band_mod.BAND_DENSITY)
    mask_key = "array" if pb.mask_arr is not None else id(mask)
    key = (lay.q.shape, lay.k.shape, lay.v.shape, lay.lead, lay.r, lay.scores_shape, pb.dtype, mask_key,
           pb.mods is not None, block_q, block_k, threads, tunables)
    keyable = all(b is None or isinstance(b, (int, np.integer)) for b in (block_q, block_k))
    if not keyable:                  # junk tile sizes: layout.blocks names them below
        return _new_plan(pb, mask, block_q, block_k, threads)
    with _PLANS_LOCK:
        plan = _PLANS.get(key)
        if plan is not None and (pb.mask_arr is not None or plan.mask is mask):
            _PLANS.move_to_end(key)
            return plan
    plan = _new_plan(pb, mask, block_q, block_k, threads)
    with _PLANS_LOCK:
        _PLANS[key] = plan
        while len(_PLANS) > PLAN_CACHE:
            _PLANS.popitem(last=False)
    return plan


def _new_plan(pb, mask, block_q, block_k, threads: int) -> CallPlan:
    lay = pb.lay
    bq, bk = layout_mod.blocks(lay, block_q, block_k, mask=mask)
    maps = TileMaps(mask, lay, bq, bk)
    decode = layout_mod.decode_regime(lay, bq, bk, mask=mask, mods=pb.mods is not None)
    splits, n_threads = layout_mod.schedule(lay, bq, bk, threads, decode)
    tasks = layout_mod.tasks(maps, lay, splits, decode)
    band = None
    rows = min(bq, lay.Lq)
    if not decode and splits == 1 and pb.mods is None and lay.r * rows >= FOLD_MIN_ROWS:
        band = band_mod.band_of(mask, lay.Lq, lay.Lk, rows, lay.r * rows * min(bk, lay.Lk), lay.r)
    return CallPlan(bq, bk, maps, decode, splits, n_threads, tasks, None if pb.mask_arr is not None else mask,
                    band)


def attention_weights_for(q, k, rows, lse, mask=None, *, scale=None, score_mod=None, bias=None, bias_fn=None):
    """The attention weights of chosen query rows, recomputed from the stored log-sum-exp.

    weights[i, j] = exp(score[i, j] - lse[i]) for the rows ``rows`` (an int, a slice or a list of row indices)
    with ``lse`` (..., Lq) as returned by ``flash_attention(..., return_lse=True)``; masked keys and fully masked
    rows get 0. Memory is O(len(rows) * Lk): the full matrix is never built. Returns (..., len(rows), Lk).
    ``score_mod`` (``bias_fn``, its deprecated name) and ``bias`` as in ``flash_attention``.

    >>> import numpy as np, attnlab
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((6, 4)) for _ in range(3))
    >>> out, lse = flash_attention(q, k, v, return_lse=True)
    >>> w = attention_weights_for(q, k, rows=[0, 5], lse=lse)
    >>> _, ref = attnlab.scaled_dot_product_attention(q, k, v, return_weights=True)
    >>> bool(np.allclose(w, ref[[0, 5]]))
    True
    """
    score_mod, name = score_mod_alias(score_mod, bias_fn, "attention_weights_for")
    p = prepare(q, k, k, "attention_weights_for", dot=True, scale=scale, score_mod=score_mod,
                score_mod_name=name)
    pb = problem(p, mask, scale, score_mod, bias, "attention_weights_for")
    lay = pb.lay
    rows = _rows(rows, lay.Lq)
    n = len(rows)
    check_weights_budget(lay, n, pb.dtype)
    lse = as_array(lse, "lse")
    if not isinstance(lse, np.ndarray) or tuple(lse.shape) != lay.scores_shape[:-1]:
        raise ValueError(f"lse must be a NumPy array of shape {lay.scores_shape[:-1]} (the scores without the key "
                         f"axis), got {type(lse).__name__} of shape {tuple(getattr(lse, 'shape', ()))}")
    lse = lse.reshape(lay.lead + (lay.r, lay.Lq))                                 # (*lead, r, Lq)
    weights = np.zeros(lay.lead + (lay.r, n, lay.Lk), pb.dtype)                  # (*lead, r, n, Lk)
    for idx in np.ndindex(*lay.lead):
        state, allowed = pb.classify(idx, rows, rows, 0, lay.Lk, FULL if mask is None else PARTIAL)
        if state == EMPTY:
            continue
        s = np.matmul(pb.q[idx][:, rows] * pb.scale, np.swapaxes(pb.k[idx], -1, -2))   # (r, n, Lk)
        s = pb.modify(s, idx, rows, rows, 0, lay.Lk, None if allowed is None else ~allowed)
        row_lse = lse[idx][:, rows, None]                                          # (r, n, 1)
        finite = np.isfinite(row_lse)
        w = weights[idx]
        with np.errstate(over="ignore"):                                      # repaired below
            np.exp(s - np.where(finite, row_lse, 0), out=w, where=finite)
        _renormalise(w, s, finite)
    return weights.reshape(lay.scores_shape[:-2] + (n, lay.Lk))


def check_weights_budget(lay, n: int, dtype) -> None:
    """Refuse (``attnlab.budget``), before allocating, an ``attention_weights_for`` call whose result
    (..., n, Lk) and per-group scores (r, n, Lk) twice (the scores and their exponentials) exceed the budget:
    ``rows=slice(None)`` asks for the whole matrix. The kernel's entry point checks it, so ``attnlab.kernel``
    callers are held to the budget as ``attnlab.attention_weights_for`` callers are."""
    scores = math.prod(lay.scores_shape[:-2]) * n * lay.Lk
    budget.check((scores + 2 * lay.r * n * lay.Lk) * accumulation_itemsize(dtype),
                 f"attention_weights_for with {n} rows x {lay.Lk} keys of scores {tuple(lay.scores_shape)}",
                 instead="ask for fewer rows at a time")


def _renormalise(w, s, finite):
    """Rows of weights w = exp(s - lse) (r, n, Lk) whose sum is not 1 to within sqrt(eps) (or that hold a weight
    above 1) recomputed as the softmax of their own scores s. At huge scores (float32 near 1e30) the recomputed s
    rounds differently from the forward's, so exp(s - lse) can be inf or 0; the weights of a row must stay in
    [0, 1] and sum to 1. Rows with a non-finite lse (nothing to attend to, or NaN) are left as they are."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = w.sum(axis=-1, keepdims=True)                                  # (r, n, 1)
        tol = np.sqrt(np.finfo(w.dtype).eps)
        bad = finite & ~(np.abs(total - 1) <= tol) & ~np.isnan(total)
        bad |= finite & (w.max(axis=-1, keepdims=True, initial=0) > 1)
    for h, i in zip(*np.nonzero(bad[..., 0])):
        row = s[h, i].astype(np.float64)
        top = row.max(initial=-np.inf)
        if not np.isfinite(top):
            continue
        e = np.exp(row - top)
        w[h, i] = e / e.sum()


def supports_tiled(*arrays) -> bool:
    """True when the tiled kernel accepts these arrays: NumPy, float32 or float64."""
    return all(isinstance(x, np.ndarray) and x.dtype in DTYPES for x in arrays)


# --- the problem: inputs in the kernel's layout, with their mask and score modifiers --------------------------------
class Problem:
    """Inputs broadcast to the kernel layout (views) plus how to mask and modify one tile of scores."""

    def __init__(self, lay, mask, mask_arr, scale, score_mod, bias_arr):
        shape = lambda x: lay.lead + x.shape[-3:]
        self.lay = lay
        view = lambda x: x if x.shape == shape(x) else np.broadcast_to(x, shape(x))    # broadcast_to costs us
        self.q, self.k, self.v = view(lay.q), view(lay.k), view(lay.v)
        self.dtype = lay.q.dtype
        self.D, self.Dv = lay.q.shape[-1], lay.v.shape[-1]
        self.scale = self.dtype.type(scale)
        self.mask, self.mask_arr, self.score_mod, self.bias_arr = mask, mask_arr, score_mod, bias_arr
        self.mods = None if score_mod is None and bias_arr is None else (score_mod, bias_arr)
        self.q_scale = self.dtype.type(scale if self.mods else scale * LOG2E)   # modifiers need natural units
        self.block_q = self.block_k = 0
        self.maps = None
        self.decode = False                                      # the decode regime (``decode``)
        self.band = None                                         # the band regime (``band.Band``) or None
        self._heads = {}
        shared = isinstance(mask, masks_mod.Mask) and mask.batch is None and mask.heads is None
        self._relative = shared and mask.relative
        self._patterns = {} if shared else None                  # (rows, cols, q_start - k_start) -> pattern
        self._tiles = {} if shared and not mask.relative else None    # (q_start, rows, k_start, cols) -> pattern

    def heads(self, idx):
        """(b, h) of the task's r heads, shaped (r, 1, 1) for score modifiers and for masks."""
        if idx not in self._heads:
            b, h = self.lay.heads_of(idx)
            mods = (b[:, None, None], h[:, None, None])
            masks = None
            if isinstance(self.mask, masks_mod.Mask):
                mb, mh = layout_mod.mask_heads(self.mask, self.lay, b, h)
                masks = (mb[:, None, None] if self.mask.batch else 0, mh[:, None, None] if self.mask.heads else 0)
            self._heads[idx] = (mods, masks)
        return self._heads[idx]

    def classify(self, idx, q_sel, q_pos, ks, ke, state):
        """(state, allowed) of one tile: allowed is the boolean (r or 1, rows, cols) mask of a PARTIAL tile."""
        if state != PARTIAL:
            return state, None
        if self.mask_arr is not None:
            m = self.mask_arr[idx]                                             # (r, Lq, Lk), maybe stride 0 on r
            tile = (m[:1] if m.strides[0] == 0 else m)[:, q_sel, ks:ke]
            if not tile.any():
                return EMPTY, None
            return (FULL, None) if tile.all() else (PARTIAL, tile)
        b, h = self.heads(idx)[1]
        allowed = self.mask.evaluate(self.lay.Lq, self.lay.Lk, q_pos[:, None], np.arange(ks, ke)[None, :], b, h)
        return PARTIAL, allowed

    def tile(self, idx, q_sel, q_pos, ks, ke, state):
        """(state, parts) of a tile to compute: ``Part`` s with absolute key ranges, each narrowed to the columns
        some of its rows may attend to, its ``blocked`` cells (r or 1, rows, cols) set to -inf (None: none).

        A relative mask (``Mask.relative``) has the same pattern on every tile of a diagonal: it is evaluated once
        per (rows, cols, q_start - k_start) and reused, up to ``layout.MASK_PATTERNS`` patterns per call. Any other
        Mask of every batch and head (a document mask, a prefix LM) has the same pattern on a tile in every head
        group: a pattern without blocked cells (rows slices that see all or none of the tile's keys, as where a
        document's tile holds one document's keys) is kept per tile position for the call and reused by the other
        groups, since it costs no memory but its few ``Part`` s; with blocked cells it is kept under the same
        ``MASK_PATTERNS`` bound."""
        if state != PARTIAL:
            return state, [Part(0, len(q_pos), None, ks, ke)]
        if self._patterns is None:
            key = None
        elif self._relative:
            key = (len(q_pos), int(ke - ks), int(q_pos[0] - ks))
        else:
            key = (int(q_pos[0]), len(q_pos), int(ks), int(ke - ks))
        kept = self._patterns if self._relative else self._tiles
        pattern = None if key is None else kept.get(key)
        if pattern is None:
            pattern = self._pattern(idx, q_sel, q_pos, ks, ke)
            if key is None:
                pass
            elif not self._relative and all(part.blocked is None for part in pattern[1]):
                kept[key] = pattern
            elif len(self._patterns) < layout_mod.MASK_PATTERNS:     # counts the blocked ones kept, either kind
                self._patterns[key] = pattern
                kept[key] = pattern
        state, parts = pattern
        return state, [part._replace(key_lo=ks + part.key_lo, key_hi=ks + part.key_hi) for part in parts]

    def _pattern(self, idx, q_sel, q_pos, ks, ke):
        """(state, parts) of a PARTIAL tile: ``Part`` s, rows row_lo:row_hi computed over the columns
        key_lo:key_hi (relative to ks), the cells ``blocked`` set to -inf.

        The rows are cut into slices of ``layout.PARTIAL_ROWS`` (all r heads together), each narrowed to the
        columns its rows may attend to: on the diagonal of a causal mask this leaves a staircase of rectangles
        around the triangle instead of the whole tile."""
        state, allowed = self.classify(idx, q_sel, q_pos, ks, ke, PARTIAL)
        if allowed is None:
            return state, [Part(0, len(q_pos), None, 0, ke - ks)]
        allowed = allowed.reshape((-1,) + allowed.shape[-2:])                 # (r or 1, rows, cols)
        step = max(1, PARTIAL_ROWS // self.lay.r)
        parts = []
        for part in (_narrow(allowed[:, a:a + step], a) for a in range(0, allowed.shape[1], step)):
            if part is None:
                continue
            if parts and _joinable(parts[-1], part):                      # one taller matmul for full slices
                part = part._replace(row_lo=parts.pop().row_lo)
            parts.append(part)
        return (PARTIAL, parts) if parts else (EMPTY, [])

    def modify(self, s3, idx, q_sel, q_pos, ks, ke, blocked):
        """Add the bias, apply the score modifier and the mask (-inf where ``blocked``) to a tile of scaled scores
        s3 (r, rows, cols)."""
        if self.bias_arr is not None:
            b = self.bias_arr[idx]
            np.add(s3, (b[:1] if b.strides[0] == 0 else b)[:, q_sel, ks:ke], out=s3, casting="same_kind")
        if self.score_mod is not None:
            (b, h), _ = self.heads(idx)
            modified = self.score_mod.apply(s3, b, h, q_pos[:, None], np.arange(ks, ke)[None, :], self.lay.Lq,
                                          self.lay.Lk)
            np.copyto(s3, modified, casting="same_kind")
        if blocked is not None:
            np.copyto(s3, -np.inf, where=blocked)
        return s3


def _narrow(allowed, a):
    """The ``Part`` of the row slice ``allowed`` (r or 1, rows, cols) that starts at row a, narrowed to the columns
    some row may attend to (relative to the tile); None when no cell is allowed."""
    cols = allowed.any(axis=(0, 1))                                            # (cols,)
    first = int(cols.argmax())
    if not cols[first]:
        return None
    stop = len(cols) - int(cols[::-1].argmax())
    blocked = ~allowed[..., first:stop]                                        # (r or 1, rows, stop - first)
    return Part(a, a + allowed.shape[1], (blocked if blocked.any() else None), first, stop)


def _joinable(part, after) -> bool:
    """Whether two adjacent row slices are both free of blocked cells over the same key columns."""
    return (part.blocked is None and after.blocked is None and (part.key_lo, part.key_hi) == (after.key_lo, after.key_hi))


def problem(p: Prepared, mask, scale, score_mod, bias, fn_name) -> Problem:
    """The kernel's problem for inputs checked by ``prepare``: NumPy float32/float64 only (the kernel's own
    limits), the mask checked against the scores or resolved to an array, the bias resolved as the reference does."""
    if p.xp.__name__.split(".")[-1] != "numpy" or not all(isinstance(x, np.ndarray) for x in (p.q, p.k, p.v)):
        raise TypeError(f"{fn_name} runs on NumPy arrays, got {type(p.q).__module__}.{type(p.q).__name__}; "
                        f"use attnlab.scaled_dot_product_attention(..., impl='reference') for other arrays")
    if p.q.dtype not in DTYPES:
        raise TypeError(f"{fn_name} supports float32 and float64, got {p.q.dtype}; cast the inputs or use "
                        f"impl='reference'")
    lay = layout_mod.layout(p)
    mask_arr = None
    if isinstance(mask, masks_mod.Mask):
        layout_mod.check_mask_axes(mask, lay.scores_shape)
    elif mask is not None:
        mask_arr = lay.to_internal(resolve_mask(mask, lay.scores_shape, np, p.q))
    bias_arr = None if bias is None else lay.to_internal(resolve_bias(bias, p))
    scale = default_scale(p.q.shape[-1]) if scale is None else scale
    return Problem(lay, mask, mask_arr, scale, score_mod, bias_arr)


def _rows(rows, Lq):
    try:
        picked = np.arange(Lq)[rows]
    except (IndexError, TypeError) as err:
        raise ValueError(f"rows must be an int, a slice or a list of query indices in [0, {Lq}), got {rows!r}: "
                         f"{err}") from None
    return np.atleast_1d(picked)


# --- one task -----------------------------------------------------------------------------------------------------
class Workspace:
    """Preallocated per-thread buffers, viewed at the size of each tile."""

    def __init__(self, pb):
        rows = pb.lay.r * min(pb.block_q, max(pb.lay.Lq, 1))
        cols = min(pb.block_k, max(pb.lay.Lk, 1))
        D, Dv = pb.D, pb.Dv
        self.s = np.empty(rows * cols, pb.dtype)                      # scores, then probabilities (R, bk)
        self.qa = np.empty(rows * (D + 1), pb.dtype)                  # [scaled q | -shift]       (R, D + 1)
        self.ka = np.ones((cols, D + 1), pb.dtype) if rows >= FOLD_MIN_ROWS else None   # [k tile | 1] (bk, D+1)
        self.acc, self.pv, self.tmp = np.empty((3, rows * (Dv + 1)), pb.dtype)   # [sum p v | sum p] (R, Dv + 1)
        self.m, self.m_new, self.alpha = np.empty((3, rows), pb.dtype)
        self.ones = np.ones(cols, pb.dtype)
        self.band = {}                                                # the band regime's patterns and ones


def run_task(pb, ws, task: layout_mod.Task, out, lse, counts):
    """One ``Task`` (head group, query block[, key split]): the online softmax over its key tiles, in base 2.

    Scores are kept in log2 units (q is scaled by scale * log2(e) once) so that probabilities are exp2(), which
    NumPy computes twice as fast as exp(). Row statistics live beside the output: acc[:, :Dv] is sum p v and
    acc[:, Dv] is l = sum p, both relative to a per-row shift m. Once a row has a finite shift, -m is folded
    into the score matmul as an extra column of q (against a column of ones beside the keys), so its tiles need
    no max, subtraction or rescaling: exp2, then the P v matmul.

    The first pass is optimistic: it checks nothing per tile, and a row's first unmasked tile takes its shift
    from a probe (the max over a few of the tile's keys: a score the row really has, so l >= 1 and nothing
    underflows to a wrong zero). If the accumulators end non-finite (a later score rose so far above the shift
    that exp2 overflowed, or an input holds inf/NaN), the task is redone carefully: every row starts from its
    tile max, every tile is checked, an overflowing tile takes the rescaling step and non-finite values reach
    only the rows that attend to them, as in the reference. The result is exact either way.
    """
    idx, i, j_lo, j_hi, split = task.group, task.block, task.key_lo, task.key_hi, task.split
    if idx is None:                                           # the decode regime: every head at once
        return decode_task(pb, i, j_lo, j_hi, out[split], lse[split], counts)
    qs, qe = i * pb.block_q, min(pb.lay.Lq, (i + 1) * pb.block_q)
    row_map = pb.maps[idx][i, j_lo:j_hi]
    if pb.band is not None:                                   # a narrow relative mask: row slices, whole bands
        band_mod.tile_states(row_map, counts)
        if band_mod.band_task(pb, ws, pb.band, idx, qs, qe, out[split][idx], lse[split][idx]):
            return
        visit = np.flatnonzero(row_map != EMPTY)
        tiles = list(zip((visit + j_lo).tolist(), row_map[visit].tolist()))
        st = _tiles(pb, ws, idx, qs, qe, tiles, np.zeros(3, np.int64), careful=True)
        st.finish(out[split][idx][:, qs:qe], lse[split][idx][:, qs:qe])
        return
    visit = np.flatnonzero(row_map != EMPTY)                  # empty tiles are skipped without a Python step
    counts[EMPTY] += len(row_map) - len(visit)
    tiles = list(zip((visit + j_lo).tolist(), row_map[visit].tolist()))
    st = _tiles(pb, ws, idx, qs, qe, tiles, counts, careful=False)
    if not st.finite() or st.lost():
        st = _tiles(pb, ws, idx, qs, qe, tiles, np.zeros(3, np.int64), careful=True)
    st.finish(out[split][idx][:, qs:qe], lse[split][idx][:, qs:qe])       # (r, rows, Dv), (r, rows)


def _tiles(pb, ws, idx, qs, qe, tiles, counts, careful):
    """Run the online softmax of query rows qs:qe (all r heads) over ``tiles`` [(key block, state)]; returns the
    row state."""
    lay, r, D, bk = pb.lay, pb.lay.r, pb.D, pb.block_k
    q_sel, q_pos, R = slice(qs, qe), np.arange(qs, qe), r * (qe - qs)
    qa = ws.qa[:R * (D + 1)].reshape(R, D + 1)
    np.multiply(pb.q[idx][:, q_sel], pb.q_scale, out=qa[:, :D].reshape(r, qe - qs, D))
    qa[:, D] = 0
    fold = pb.mods is None and R >= FOLD_MIN_ROWS          # tall enough to pay for copying the key tile
    st = RowState(ws, r, qe - qs, pb.Dv, pb.dtype, careful, fold)
    for j, state in tiles:
        state, parts = pb.tile(idx, q_sel, q_pos, j * bk, min(lay.Lk, (j + 1) * bk), state)
        counts[state] += 1
        for part in parts if state != EMPTY else ():
            _tile(pb, ws, st, idx, qs, part)
    return st


def _tile(pb, ws, st, idx, qs, part: Part):
    """Add the scores of query rows qs + row_lo : qs + row_hi (all r heads) against keys key_lo:key_hi of ``part``
    to the row state st."""
    a, b, blocked, ks, ke = part.row_lo, part.row_hi, part.blocked, part.key_lo, part.key_hi
    r, D, n, cols = pb.lay.r, pb.D, b - a, ke - ks
    K, V = pb.k[idx][0, ks:ke], pb.v[idx][0, ks:ke]                            # (cols, D), (cols, Dv)
    qa = st.rows(ws.qa, D + 1, a, b)                                            # (r, n, D + 1)
    S = ws.s[:r * n * cols].reshape(r, n, cols)
    if st.fold:
        if blocked is None and not st.careful and not st.started(a, b):
            st.probe(qa, K, a, b)
        if st.started(a, b):
            ka = ws.ka[:cols]
            np.copyto(ka[:, :D], K)
            np.matmul(qa, ka.T, out=S)                                          # S - m, (r, n, cols)
            if st.add_unshifted(S, V, a, b, blocked):
                return
    np.matmul(qa[..., :D], K.T, out=S)                                          # S, (r, n, cols)
    q_sel = slice(qs + a, qs + b)
    if pb.mods is not None:
        pb.modify(S, idx, q_sel, np.arange(q_sel.start, q_sel.stop), ks, ke, blocked)
        S *= LOG2E
    elif blocked is not None:
        np.copyto(S, -np.inf, where=blocked)
    st.add_rescaled(S, V, a, b, blocked)
    if st.fold:
        st.fold_shift(qa, a, b)


class RowState:
    """Per-row shift m (log2 units; -inf until the row has met an allowed key), and acc = [sum p v | l]
    (R, Dv + 1) relative to it, for one task; R = r * rows (r query heads of ``rows`` queries). The steps update
    the query rows a:b of every head.

    ``careful``: check every tile for overflow and for non-finite values (the second pass of a task whose first,
    unchecked pass ended non-finite). ``fold``: started rows carry -m in the last column of the scaled queries."""

    PROBE_KEYS = 16                                  # keys a probe scores to pick a row's first shift

    def __init__(self, ws, r, rows, Dv, dtype, careful, fold):
        R = r * rows
        self.r, self.n, self.Dv, self.lowest = r, rows, Dv, np.finfo(dtype).min
        self.careful, self.fold = careful, fold
        self.acc, self.pv, self.tmp = (b[:R * (Dv + 1)].reshape(R, Dv + 1) for b in (ws.acc, ws.pv, ws.tmp))
        self.m, self.m_new, self.alpha = ws.m[:R], ws.m_new[:R], ws.alpha[:R]
        self.ones = ws.ones
        self.product = masked_pv if careful else np.matmul
        self.m.fill(-np.inf)
        self.acc.fill(0)
        self.all_started = False

    def rows(self, buf, width, a, b):
        """The (r, b - a, width) view of rows a:b of a buffer laid out (r, rows, width)."""
        return buf[:self.r * self.n * width].reshape(self.r, self.n, width)[:, a:b]

    def _vec(self, x, a, b):
        return x.reshape(self.r, self.n)[:, a:b]                                # (r, b - a)

    def started(self, a, b) -> bool:
        """Whether rows a:b all have a finite shift."""
        if not self.all_started:
            self.all_started = bool((self.m > self.lowest).all())
        return self.all_started or bool((self._vec(self.m, a, b) > self.lowest).all())

    def probe(self, qa, K, a, b):
        """Start the rows of a:b that have not started (their acc is still 0), which may attend to every key of
        K (cols, D), at the max of their scores against a few of those keys: a real score of the row, so the
        row's sum l will be >= 1."""
        step = max(1, len(K) // self.PROBE_KEYS)
        m = self._vec(self.m, a, b)                                             # (r, b - a)
        scores = np.matmul(K[::step], np.swapaxes(qa[..., :-1], -1, -2))       # (r, probes, b - a): keys first,
        np.copyto(m, scores.max(axis=-2), where=m <= self.lowest)               # the max is a vectorised reduction
        qa[..., -1] = -m

    def fold_shift(self, qa, a, b):
        """Fold -m of rows a:b into the last column of their scaled queries, where the row has started."""
        m = self._vec(self.m, a, b)
        np.negative(m, out=qa[..., -1], where=m > self.lowest)

    def _products(self, P, v, pv):
        """pv = [P v | rowsum P] (r, n, Dv + 1); the row sums by BLAS (a matrix-vector product beats np.sum)."""
        self.product(P, v, out=pv[..., :self.Dv])
        np.matmul(P, self.ones[:P.shape[-1]], out=pv[..., self.Dv])

    def add_rescaled(self, S, v, a, b, blocked=None):
        """The online-softmax step for a tile of scores S (r, b - a, cols) of rows a:b, log2 units, -inf at the
        cells ``blocked``; S is overwritten with P. The blocked cells enter exp2 as 0 and leave as 0
        (``exp2_masked``): NumPy's float32 exp2 of -inf takes a path ~8x slower (78 us against 9 us for a
        128 x 383 window slice, a third of it blocked)."""
        m, m_tile, alpha = (self._vec(x, a, b) for x in (self.m, self.m_new, self.alpha))
        acc, pv = (self.rows(x.reshape(-1), self.Dv + 1, a, b) for x in (self.acc, self.pv))
        np.max(S, axis=-1, out=m_tile)
        np.maximum(m_tile, m, out=m_tile)
        np.maximum(m_tile, self.lowest, out=m_tile)                             # fully masked so far: stay finite
        np.subtract(S, m_tile[..., None], out=S)
        exp2_masked(S, blocked)                                                 # P = 2^(S - m_new)
        self._products(S, v, pv)
        np.subtract(m, m_tile, out=alpha)
        np.exp2(alpha, out=alpha)                                               # 2^(m_old - m_new)
        np.multiply(acc, alpha[..., None], out=acc)
        if self.careful:            # weights that underflow to 0 no longer reach their values, inf or NaN
            np.copyto(acc, 0, where=(alpha == 0)[..., None])
        acc += pv
        np.copyto(m, m_tile)

    def add_unshifted(self, S, v, a, b, blocked=None) -> bool:
        """Add a tile of already shifted scores S - m (r, b - a, cols) of rows a:b, the cells ``blocked`` masked.
        Careful: False (state untouched) if it would overflow."""
        acc, pv = (self.rows(x.reshape(-1), self.Dv + 1, a, b) for x in (self.acc, self.pv))
        exp2_masked(S, blocked)                                                # P = 2^(S - m), may be inf
        if not self.careful:
            self._products(S, v, pv)
            acc += pv
            return True
        if not np.isfinite(np.matmul(S, self.ones[:S.shape[-1]], out=pv[..., self.Dv])).all():
            return False                                                        # overflow (or NaN scores)
        masked_pv(S, v, pv[..., :self.Dv])
        tmp = self.rows(self.tmp.reshape(-1), self.Dv + 1, a, b)
        np.add(acc, pv, out=tmp)
        if np.isinf(tmp).any():                                                 # the sums overflowed
            return False
        np.copyto(acc, tmp)
        return True

    def finite(self) -> bool:
        return bool(np.isfinite(self.acc).all())

    def lost(self) -> bool:
        """Whether a row that met an allowed key ends with a sum l below eps: its shift (the probe's max, or a
        tile max) overshot the folded scores by more than the mantissa holds. That happens only when the scores
        are so large that their rounding error exceeds 1 (float64 |q|, |k| ~ 1e12): the two matmuls round the same
        score differently, exp2 of the difference underflows and the row would end 0 with lse -inf. The careful
        pass starts every row from its own tile max, so l >= 1 there."""
        l = self.acc[:, self.Dv]
        return bool(((self.m > self.lowest) & (l < np.finfo(l.dtype).eps)).any())

    def finish(self, dest_out, dest_lse):
        """out = acc / l, 0 where l = 0 (nothing to attend to); lse = (m + log2 l) * ln 2, -inf where l = 0.

        dest_out (r, rows, Dv) and dest_lse (r, rows) are views into the output."""
        acc = self.acc.reshape(dest_out.shape[:-1] + (self.Dv + 1,))            # (r, rows, Dv + 1)
        normalise(acc[..., :self.Dv], acc[..., self.Dv], self.m.reshape(dest_lse.shape), self.lowest, dest_out,
                   dest_lse)


