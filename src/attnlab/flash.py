"""The tiled online-softmax kernel: exact attention without the Lq x Lk score matrix (FlashAttention on the CPU).

For one block of queries the kernel walks over the key tiles keeping, per query row, the running maximum m, the
running sum l of exp(score - m) and the running output acc (Milakov & Gimelshein 2018, "Online normalizer
calculation for softmax"; Dao et al. 2022, "FlashAttention", Algorithm 1):

    S     = (q * scale) k_j^T            (R, bk)   R = r * block_q rows: the r query heads sharing key/value head
    m_new = max(m, rowmax(S))
    P     = exp(S - m_new)
    l     = l * exp(m - m_new) + rowsum(P)
    acc   = acc * exp(m - m_new) + P v_j   (R, Dv)
    out   = acc / l,  lse = m + log(l)     after the last tile

Tiles the mask leaves empty are skipped, full tiles never evaluate the mask, partial tiles evaluate it on the
tile's indices only (``attnlab.planner.TileMaps``), once per diagonal for a relative mask (``Mask.relative``).
Score modifiers (ALiBi, soft-capping, relative bias) see each tile with its absolute indices. Tasks (key/value
head group, query block[, key split]) run on a thread pool: NumPy releases the GIL inside BLAS and ufuncs, and BLAS
itself is held to one thread so the pool does not oversubscribe the cores. When there are fewer tasks than
threads (decoding one token) the keys are split and the partial results merged exactly by
their log-sum-exp (``attnlab.merge_attention``).

Extra memory: per thread a few (R, block_k) tiles and (R, D) rows, plus the (..., Lq) log-sum-exp; never Lq x Lk.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from . import masks as masks_mod
from . import planner
from ._array import as_array, broadcast_shapes, default_scale, is_real_number
from .attention import _prepare, resolve_mask
from .masks import EMPTY, FULL, PARTIAL
from .merge import merge_attention
from .scores import ScoreMod

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
LOG2E, LN2 = 1.0 / math.log(2.0), math.log(2.0)


@dataclass
class RunStats:
    """What one ``flash_attention`` call did; pass ``stats=RunStats()`` to have it filled in."""

    tiles: planner.TileCounts = field(default_factory=planner.TileCounts)
    block_q: int = 0
    block_k: int = 0
    threads: int = 0
    tasks: int = 0
    kv_splits: int = 1


def flash_attention(q, k, v, mask=None, *, scale=None, bias_fn=None, bias=None, block_q=None, block_k=None,
                    return_lse=False, threads=None, stats: RunStats | None = None):
    """Exact softmax(q k^T * scale [+ bias], masked) @ v computed tile by tile, on NumPy arrays.

    Same shapes and semantics as ``attnlab.scaled_dot_product_attention``: q (..., Lq, D), k (..., Lk, D),
    v (..., Lk, Dv) -> (..., Lq, Dv) with broadcasting leading dims and grouped-query heads; ``mask`` a Mask or a
    boolean array (True = may attend); a row with nothing to attend to gives 0 (lse -inf). ``bias_fn``: an
    ``attnlab.scores.ScoreMod`` applied to each tile; ``bias``: an additive float array broadcastable to the
    scores (sliced per tile). ``block_q``/``block_k``: tile sizes (default: ``attnlab.planner.default_blocks``);
    ``threads``: the cores to use (default: the usable cores): the kernel's own threads, BLAS held to one thread
    inside each, or, when the work fits one thread (``planner.schedule``), BLAS's threads. ``return_lse``: also
    return the log-sum-exp of each row, (..., Lq). ``stats``: a ``RunStats`` to fill with tile counts.

    >>> import numpy as np, attnlab
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((2, 50, 8)) for _ in range(3))
    >>> ref = attnlab.scaled_dot_product_attention(q, k, v, mask=attnlab.masks.causal())
    >>> out = flash_attention(q, k, v, mask=attnlab.masks.causal(), block_q=16, block_k=16)
    >>> float(np.abs(out - ref).max()) < 1e-12
    True
    """
    pb = _problem(q, k, v, mask, scale, bias_fn, bias, "flash_attention")
    lay = pb.lay
    threads = planner.default_threads() if threads is None else planner.check_threads(threads)
    bq, bk = planner.default_blocks(lay.r, lay.Lq, lay.Lk)
    pb.block_q = planner.check_block(block_q, "block_q") or bq
    pb.block_k = planner.check_block(block_k, "block_k") or bk
    pb.maps = planner.TileMaps(mask, lay, pb.block_q, pb.block_k)
    pb.light = planner.batched_heads(lay, pb.block_q, mods=pb.mods is not None)
    tasks, splits, n_threads = _tasks(pb, threads)
    out = np.empty((splits,) + lay.lead + (lay.r, lay.Lq, pb.Dv), pb.dtype)     # (S, *lead, r, Lq, Dv)
    lse = np.empty((splits,) + lay.lead + (lay.r, lay.Lq), pb.dtype)            # (S, *lead, r, Lq)
    counts, used = _run(pb, tasks, out, lse, n_threads, threads)
    final_out, final_lse = out[0], lse[0]
    for s in range(1, splits):
        final_out, final_lse = merge_attention(final_out, final_lse, out[s], lse[s])
    if stats is not None:
        stats.tiles = planner.TileCounts(*map(int, counts))
        stats.block_q, stats.block_k, stats.threads = pb.block_q, pb.block_k, used
        stats.tasks, stats.kv_splits = len(tasks), splits
    outer = lay.scores_shape[:-2]
    final_out = final_out.reshape(outer + (lay.Lq, pb.Dv))
    return (final_out, final_lse.reshape(outer + (lay.Lq,))) if return_lse else final_out


def attention_weights_for(q, k, rows, lse, mask=None, *, scale=None, bias_fn=None, bias=None):
    """The attention weights of chosen query rows, recomputed from the stored log-sum-exp.

    weights[i, j] = exp(score[i, j] - lse[i]) for the rows ``rows`` (an int, a slice or a list of row indices)
    with ``lse`` (..., Lq) as returned by ``flash_attention(..., return_lse=True)``; masked keys and fully masked
    rows get 0. Memory is O(len(rows) * Lk): the full matrix is never built. Returns (..., len(rows), Lk).

    >>> import numpy as np, attnlab
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((6, 4)) for _ in range(3))
    >>> out, lse = flash_attention(q, k, v, return_lse=True)
    >>> w = attention_weights_for(q, k, rows=[0, 5], lse=lse)
    >>> _, ref = attnlab.scaled_dot_product_attention(q, k, v, return_weights=True)
    >>> bool(np.allclose(w, ref[[0, 5]]))
    True
    """
    pb = _problem(q, k, k, mask, scale, bias_fn, bias, "attention_weights_for")
    lay = pb.lay
    rows = _rows(rows, lay.Lq)
    lse = as_array(lse, "lse")
    if not isinstance(lse, np.ndarray) or tuple(lse.shape) != lay.scores_shape[:-1]:
        raise ValueError(f"lse must be a NumPy array of shape {lay.scores_shape[:-1]} (the scores without the key "
                         f"axis), got {type(lse).__name__} of shape {tuple(getattr(lse, 'shape', ()))}")
    lse = lse.reshape(lay.lead + (lay.r, lay.Lq))                                 # (*lead, r, Lq)
    n = len(rows)
    weights = np.zeros(lay.lead + (lay.r, n, lay.Lk), pb.dtype)                  # (*lead, r, n, Lk)
    for idx in np.ndindex(*lay.lead):
        state, allowed = pb.classify(idx, rows, rows, 0, lay.Lk, FULL if mask is None else PARTIAL)
        if state == EMPTY:
            continue
        s = np.matmul(pb.q[idx][:, rows] * pb.scale, np.swapaxes(pb.k[idx], -1, -2))   # (r, n, Lk)
        s = pb.modify(s, idx, rows, rows, 0, lay.Lk, None if allowed is None else ~allowed)
        row_lse = lse[idx][:, rows, None]                                          # (r, n, 1)
        finite = np.isfinite(row_lse)
        np.exp(s - np.where(finite, row_lse, 0), out=weights[idx], where=finite)
    return weights.reshape(lay.scores_shape[:-2] + (n, lay.Lk))


def supports_tiled(*arrays) -> bool:
    """True when the tiled kernel accepts these arrays: NumPy, float32 or float64."""
    return all(isinstance(x, np.ndarray) and x.dtype in DTYPES for x in arrays)


# --- the problem: inputs in the kernel's layout, with their mask and score modifiers --------------------------------
class _Problem:
    """Inputs broadcast to the kernel layout (views) plus how to mask and modify one tile of scores."""

    def __init__(self, lay, mask, mask_arr, scale, bias_fn, bias_arr):
        shape = lambda x: lay.lead + x.shape[-3:]
        self.lay = lay
        self.q, self.k, self.v = (np.broadcast_to(x, shape(x)) for x in (lay.q, lay.k, lay.v))
        self.dtype = lay.q.dtype
        self.D, self.Dv = lay.q.shape[-1], lay.v.shape[-1]
        self.scale = self.dtype.type(scale)
        self.mask, self.mask_arr, self.bias_fn, self.bias_arr = mask, mask_arr, bias_fn, bias_arr
        self.mods = None if bias_fn is None and bias_arr is None else (bias_fn, bias_arr)
        self.q_scale = self.dtype.type(scale if self.mods else scale * LOG2E)   # modifiers need natural units
        self.block_q = self.block_k = 0
        self.maps = None
        self.light = False
        self._heads = {}
        relative = isinstance(mask, masks_mod.Mask) and mask.relative and mask.batch is None and mask.heads is None
        self._patterns = {} if relative else None                # (rows, cols, q_start - k_start) -> pattern

    def heads(self, idx):
        """(b, h) of the task's r heads, shaped (r, 1, 1) for score modifiers and for masks."""
        if idx not in self._heads:
            b, h = self.lay.heads_of(idx)
            mods = (b[:, None, None], h[:, None, None])
            masks = None
            if isinstance(self.mask, masks_mod.Mask):
                mb, mh = planner.mask_heads(self.mask, self.lay, b, h)
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
        """(state, blocked, ks, ke) of a tile to compute: ``blocked`` the boolean (r or 1, rows, cols) cells to set
        to -inf, or None when there are none; the key range narrowed to the columns some row may attend to.

        A relative mask (``Mask.relative``) has the same pattern on every tile of a diagonal: it is evaluated once
        per (rows, cols, q_start - k_start) and reused, up to ``planner.MASK_PATTERNS`` patterns per call."""
        if state != PARTIAL:
            return state, [(0, len(q_pos), None, ks, ke)]
        key = None if self._patterns is None else (len(q_pos), int(ke - ks), int(q_pos[0] - ks))
        pattern = None if key is None else self._patterns.get(key)
        if pattern is None:
            pattern = self._pattern(idx, q_sel, q_pos, ks, ke)
            if key is not None and len(self._patterns) < planner.MASK_PATTERNS:
                self._patterns[key] = pattern
        state, parts = pattern
        return state, [(a, b, blocked, ks + first, ks + stop) for a, b, blocked, first, stop in parts]

    def _pattern(self, idx, q_sel, q_pos, ks, ke):
        """(state, parts) of a PARTIAL tile: parts are (a, b, blocked, first, stop), its rows a:b computed over
        the columns first:stop (relative to ks), the cells ``blocked`` set to -inf.

        The rows are cut into slices of ``planner.PARTIAL_ROWS`` (all r heads together), each narrowed to the
        columns its rows may attend to: on the diagonal of a causal mask this leaves a staircase of rectangles
        around the triangle instead of the whole tile."""
        state, allowed = self.classify(idx, q_sel, q_pos, ks, ke, PARTIAL)
        if allowed is None:
            return state, [(0, len(q_pos), None, 0, ke - ks)]
        allowed = allowed.reshape((-1,) + allowed.shape[-2:])                 # (r or 1, rows, cols)
        step = max(1, planner.PARTIAL_ROWS // self.lay.r)
        parts = []
        for part in (_narrow(allowed[:, a:a + step], a) for a in range(0, allowed.shape[1], step)):
            if part is None:
                continue
            if parts and _joinable(parts[-1], part):                      # one taller matmul for full slices
                part = (parts.pop()[0],) + part[1:]
            parts.append(part)
        return (PARTIAL, parts) if parts else (EMPTY, [])

    def modify(self, s3, idx, q_sel, q_pos, ks, ke, blocked):
        """Add the bias, apply the score modifier and the mask (-inf where ``blocked``) to a tile of scaled scores
        s3 (r, rows, cols)."""
        if self.bias_arr is not None:
            b = self.bias_arr[idx]
            np.add(s3, (b[:1] if b.strides[0] == 0 else b)[:, q_sel, ks:ke], out=s3, casting="same_kind")
        if self.bias_fn is not None:
            (b, h), _ = self.heads(idx)
            modified = self.bias_fn.apply(s3, b, h, q_pos[:, None], np.arange(ks, ke)[None, :], self.lay.Lq,
                                          self.lay.Lk)
            np.copyto(s3, modified, casting="same_kind")
        if blocked is not None:
            np.copyto(s3, -np.inf, where=blocked)
        return s3


def _narrow(allowed, a):
    """(a, a + rows, blocked, first, stop) of the row slice ``allowed`` (r or 1, rows, cols) that starts at row a,
    narrowed to the columns first:stop some row may attend to; None when no cell is allowed."""
    cols = allowed.any(axis=(0, 1))                                            # (cols,)
    first = int(cols.argmax())
    if not cols[first]:
        return None
    stop = len(cols) - int(cols[::-1].argmax())
    blocked = ~allowed[..., first:stop]                                        # (r or 1, rows, stop - first)
    return a, a + allowed.shape[1], (blocked if blocked.any() else None), first, stop


def _joinable(part, after) -> bool:
    """Whether two adjacent row slices are both free of blocked cells over the same key columns."""
    return part[2] is None and after[2] is None and part[3:] == after[3:]


def _problem(q, k, v, mask, scale, bias_fn, bias, fn_name) -> _Problem:
    p = _prepare(q, k, v, fn_name)
    if p.xp.__name__.split(".")[-1] != "numpy" or not all(isinstance(x, np.ndarray) for x in (p.q, p.k, p.v)):
        raise TypeError(f"{fn_name} runs on NumPy arrays, got {type(p.q).__module__}.{type(p.q).__name__}; "
                        f"use attnlab.scaled_dot_product_attention(..., impl='reference') for other arrays")
    if p.q.dtype not in DTYPES:
        raise TypeError(f"{fn_name} supports float32 and float64, got {p.q.dtype}; cast the inputs or use "
                        f"impl='reference'")
    if p.k.shape[-1] != p.q.shape[-1]:
        raise ValueError(f"key has head dim {p.k.shape[-1]} but query has {p.q.shape[-1]}")
    if scale is not None and not is_real_number(scale):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    if bias_fn is not None and not isinstance(bias_fn, ScoreMod):
        raise TypeError(f"bias_fn must be an attnlab.scores.ScoreMod (alibi, softcap, relative_bias, score_mod), "
                        f"got {type(bias_fn).__name__}")
    lay = planner.layout(p)
    mask_arr = None
    if isinstance(mask, masks_mod.Mask):
        planner.check_mask_axes(mask, lay.scores_shape)
    elif mask is not None:
        mask_arr = lay.to_internal(resolve_mask(mask, lay.scores_shape, np, p.q))
    bias_arr = None if bias is None else lay.to_internal(_check_bias(bias, lay.scores_shape))
    scale = default_scale(p.q.shape[-1]) if scale is None else scale
    return _Problem(lay, mask, mask_arr, scale, bias_fn, bias_arr)


def _check_bias(bias, scores_shape):
    bias = as_array(bias, "bias")
    if not isinstance(bias, np.ndarray) or bias.dtype.kind != "f":
        raise TypeError(f"bias must be a floating NumPy array added to the scores, got "
                        f"{type(bias).__name__} of dtype {bias.dtype}; pass boolean masks as mask=")
    if broadcast_shapes(bias.shape, scores_shape) != tuple(scores_shape):
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not broadcast to scores {tuple(scores_shape)}")
    return bias


def _rows(rows, Lq):
    try:
        picked = np.arange(Lq)[rows]
    except (IndexError, TypeError) as err:
        raise ValueError(f"rows must be an int, a slice or a list of query indices in [0, {Lq}), got {rows!r}: "
                         f"{err}") from None
    return np.atleast_1d(picked)


# --- tasks and threads ---------------------------------------------------------------------------------------------
def _tasks(pb, threads):
    """(tasks, key splits, threads): tasks (idx, query block, first key block, last key block, split), biggest
    first for load balance; idx None is every head at once (``_light_task``). ``planner.schedule`` decides."""
    nkb = pb.maps.nkb
    splits, used = planner.schedule(pb.lay, pb.block_q, pb.block_k, threads, pb.light)
    bounds = [(s * nkb // splits, (s + 1) * nkb // splits) for s in range(splits)]
    if pb.light:
        return [(None, 0, lo, hi, s) for s, (lo, hi) in enumerate(bounds)], splits, used
    pairs = [(idx, i) for idx in np.ndindex(*pb.lay.lead) for i in range(pb.maps.nqb)]
    tasks = [(idx, i, lo, hi, s) for idx, i in pairs for s, (lo, hi) in enumerate(bounds)]
    work = lambda t: int(np.count_nonzero(pb.maps[t[0]][t[1], t[2]:t[3]] != EMPTY))
    return sorted(tasks, key=work, reverse=True), splits, used


class _TaskQueue:
    def __init__(self, tasks):
        self._it, self._lock, self.stopped = iter(tasks), threading.Lock(), False

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self.stopped:
                raise StopIteration
            return next(self._it)


def _run(pb, tasks, out, lse, n, threads) -> np.ndarray:
    """Run the tasks on ``n`` threads (the caller's plus pool workers), BLAS held to one thread inside each;
    when ``n`` is 1, BLAS may use ``threads`` (a long decoding step's matrix-vector products do). Returns the tile
    counts [empty, partial, full] and the number of threads used."""
    queue = _TaskQueue(tasks)

    def work():
        ws, counts = None if pb.light else _Workspace(pb), np.zeros(3, np.int64)
        try:   # overflow and 0 * inf are detected and handled in the tiles; NaN inputs propagate as in the reference
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for task in queue:
                    _task(pb, ws, task, out, lse, counts)
        except BaseException:
            queue.stopped = True
            raise
        return counts

    with _blas_threads(1 if n > 1 else threads):     # one thread of ours: BLAS may use the others
        futures = [_pool(n - 1).submit(work) for _ in range(n - 1)]
        try:
            mine = work() if tasks else np.zeros(3, np.int64)
        finally:
            wait(futures)
        return mine + sum((f.result() for f in futures), np.zeros(3, np.int64)), n


_POOL = {"executor": None, "size": 0}


def _pool(size: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``size`` workers (created on first use, grown when needed)."""
    if _POOL["size"] < size:
        old = _POOL["executor"]
        _POOL["executor"], _POOL["size"] = ThreadPoolExecutor(size, thread_name_prefix="attnlab-flash"), size
        if old is not None:
            old.shutdown(wait=False)
    return _POOL["executor"]


_BLAS = {"controller": None}


def _blas_threads(limit: int):
    """A context limiting BLAS (OpenBLAS, MKL, BLIS) to ``limit`` threads while the kernel runs."""
    from threadpoolctl import ThreadpoolController

    if _BLAS["controller"] is None:
        _BLAS["controller"] = ThreadpoolController()
    return _BLAS["controller"].limit(limits=limit, user_api="blas")


# --- one task -----------------------------------------------------------------------------------------------------
class _Workspace:
    """Preallocated per-thread buffers, viewed at the size of each tile."""

    def __init__(self, pb):
        rows = pb.lay.r * min(pb.block_q, max(pb.lay.Lq, 1))
        cols = min(pb.block_k, max(pb.lay.Lk, 1))
        D, Dv = pb.D, pb.Dv
        self.s = np.empty(rows * cols, pb.dtype)                      # scores, then probabilities (R, bk)
        self.qa = np.empty(rows * (D + 1), pb.dtype)                  # [scaled q | -shift]       (R, D + 1)
        self.ka = np.ones((cols, D + 1), pb.dtype) if rows >= planner.FOLD_MIN_ROWS else None   # [k tile | 1] (bk, D+1)
        self.acc, self.pv, self.tmp = np.empty((3, rows * (Dv + 1)), pb.dtype)   # [sum p v | sum p] (R, Dv + 1)
        self.m, self.m_new, self.alpha = np.empty((3, rows), pb.dtype)
        self.ones = np.ones(cols, pb.dtype)


def _task(pb, ws, task, out, lse, counts):
    """One (head group, query block[, key split]): the online softmax over its key tiles, in base 2.

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
    idx, i, j_lo, j_hi, split = task
    if idx is None:
        return _light_task(pb, j_lo, j_hi, out[split], lse[split], counts)
    qs, qe = i * pb.block_q, min(pb.lay.Lq, (i + 1) * pb.block_q)
    row_map = pb.maps[idx][i, j_lo:j_hi]
    visit = np.flatnonzero(row_map != EMPTY)                  # empty tiles are skipped without a Python step
    counts[EMPTY] += len(row_map) - len(visit)
    tiles = list(zip((visit + j_lo).tolist(), row_map[visit].tolist()))
    st = _tiles(pb, ws, idx, qs, qe, tiles, counts, careful=False)
    if not st.finite():
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
    fold = pb.mods is None and R >= planner.FOLD_MIN_ROWS          # tall enough to pay for copying the key tile
    st = _RowState(ws, r, qe - qs, pb.Dv, pb.dtype, careful, fold)
    for j, state in tiles:
        state, parts = pb.tile(idx, q_sel, q_pos, j * bk, min(lay.Lk, (j + 1) * bk), state)
        counts[state] += 1
        for a, b, blocked, ks, ke in parts if state != EMPTY else ():
            _tile(pb, ws, st, idx, qs, a, b, blocked, ks, ke)
    return st


def _tile(pb, ws, st, idx, qs, a, b, blocked, ks, ke):
    """Add the scores of query rows qs + a : qs + b (all r heads) against keys ks:ke to the row state st."""
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
    st.add_rescaled(S, V, a, b)
    if st.fold:
        st.fold_shift(qa, a, b)


class _RowState:
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
        self.product = _pv if careful else np.matmul
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

    def add_rescaled(self, S, v, a, b):
        """The online-softmax step for a tile of scores S (r, b - a, cols) of rows a:b, log2 units; S is
        overwritten with P."""
        m, m_tile, alpha = (self._vec(x, a, b) for x in (self.m, self.m_new, self.alpha))
        acc, pv = (self.rows(x.reshape(-1), self.Dv + 1, a, b) for x in (self.acc, self.pv))
        np.max(S, axis=-1, out=m_tile)
        np.maximum(m_tile, m, out=m_tile)
        np.maximum(m_tile, self.lowest, out=m_tile)                             # fully masked so far: stay finite
        np.subtract(S, m_tile[..., None], out=S)
        np.exp2(S, out=S)                                                       # P = 2^(S - m_new)
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
        _exp2_masked(S, blocked)                                                # P = 2^(S - m), may be inf
        if not self.careful:
            self._products(S, v, pv)
            acc += pv
            return True
        if not np.isfinite(np.matmul(S, self.ones[:S.shape[-1]], out=pv[..., self.Dv])).all():
            return False                                                        # overflow (or NaN scores)
        _pv(S, v, pv[..., :self.Dv])
        tmp = self.rows(self.tmp.reshape(-1), self.Dv + 1, a, b)
        np.add(acc, pv, out=tmp)
        if np.isinf(tmp).any():                                                 # the sums overflowed
            return False
        np.copyto(acc, tmp)
        return True

    def finite(self) -> bool:
        return bool(np.isfinite(self.acc).all())

    def finish(self, dest_out, dest_lse):
        """out = acc / l, 0 where l = 0 (nothing to attend to); lse = (m + log2 l) * ln 2, -inf where l = 0.

        dest_out (r, rows, Dv) and dest_lse (r, rows) are views into the output."""
        acc = self.acc.reshape(dest_out.shape[:-1] + (self.Dv + 1,))            # (r, rows, Dv + 1)
        _normalise(acc[..., :self.Dv], acc[..., self.Dv], self.m.reshape(dest_lse.shape), self.lowest, dest_out,
                   dest_lse)


def _normalise(sums, l, m, lowest, out, lse):
    """out = sums / l, 0 where l = 0 (nothing to attend to; NaN rows stay NaN); lse = (m + log2 l) * ln 2, -inf
    where l = 0. sums (..., Dv); l, m (...) in log2 units relative to the shift m."""
    np.divide(sums, np.where(l == 0, 1, l)[..., None], out=out)
    np.multiply(np.log2(l) + np.maximum(m, lowest), LN2, out=lse)


# --- few query rows (decoding): every head at once ------------------------------------------------------------------
def _light_task(pb, j_lo, j_hi, out, lse, counts):
    """The online softmax of all query rows of every head over the key blocks j_lo:j_hi, one batched matmul per
    key block: the decoding regime (r * Lq < FOLD_MIN_ROWS rows per head group), where a task per head would spend
    its time in Python. Checked as the careful pass of ``_task``: non-finite values reach only the rows that
    attend to them. out (*lead, r, Lq, Dv) and lse (*lead, r, Lq) are written."""
    lay, bk, lowest = pb.lay, pb.block_k, np.finfo(pb.dtype).min
    q = pb.q * pb.q_scale                                                      # (*lead, r, Lq, D), log2 units
    m = np.full(q.shape[:-1], -np.inf, pb.dtype)                               # (*lead, r, Lq)
    l, acc, pv = np.zeros_like(m), np.zeros(m.shape + (pb.Dv,), pb.dtype), np.empty(m.shape + (pb.Dv,), pb.dtype)
    scores = np.empty(m.shape + (min(bk, lay.Lk),), pb.dtype)                  # (*lead, r, Lq, block_k)
    for j in range(j_lo, j_hi):
        ks, ke = j * bk, min(lay.Lk, (j + 1) * bk)
        blocked = _light_blocked(pb, j, ks, ke, counts)
        if blocked is True:
            continue
        S = np.matmul(q, np.swapaxes(pb.k[..., ks:ke, :], -1, -2), out=scores[..., :ke - ks])   # (.., cols)
        if blocked is not None:
            np.copyto(S, -np.inf, where=blocked)
        m_new = np.maximum(np.maximum(S.max(axis=-1), m), lowest)             # fully masked so far: stay finite
        _exp2_masked(np.subtract(S, m_new[..., None], out=S), blocked)         # P = 2^(S - m_new)
        alpha = np.exp2(m - m_new)
        l = l * alpha + S.sum(axis=-1)
        acc *= alpha[..., None]
        np.copyto(acc, 0, where=(alpha == 0)[..., None])                       # weights that underflow to 0
        _pv(S, pb.v[..., ks:ke, :], pv)                                        # sum p v (*lead, r, Lq, Dv)
        acc += pv
        m = m_new
    _normalise(acc, l, m, lowest, out, lse)


def _light_blocked(pb, j, ks, ke, counts):
    """The cells of key block j to set to -inf for every head: None (none), True (all: skip the block) or a
    boolean (*lead, r or 1, Lq, cols) array; counts the tiles."""
    lay = pb.lay
    states = {idx: int(pb.maps[idx][0, j]) for idx in np.ndindex(*lay.lead)}
    if all(state == FULL for state in states.values()):
        counts[FULL] += len(states)
        return None
    blocked = np.zeros(lay.lead + (lay.r, lay.Lq, ke - ks), bool)
    q_sel, q_pos, empty = slice(0, lay.Lq), np.arange(lay.Lq), 0
    for idx, state in states.items():
        state, allowed = pb.classify(idx, q_sel, q_pos, ks, ke, state)
        counts[state] += 1
        empty += state == EMPTY
        if state != FULL:
            blocked[idx] = True if state == EMPTY else ~allowed
    return True if empty == len(states) else blocked


def _exp2_masked(S, blocked):
    """S = exp2(S) in place, 0 where ``blocked`` (None: no cell). Blocked cells enter exp2 as 0 and leave as
    weight 0: NumPy's float32 exp2 takes a path 5x slower for -inf and other underflowing inputs."""
    if blocked is not None:
        np.copyto(S, 0, where=blocked)
    np.exp2(S, out=S)
    if blocked is not None:
        np.copyto(S, 0, where=blocked)


def _pv(p, v, out):
    """out = p @ v, where a non-finite value in v only reaches rows that put weight on it (as the reference).

    BLAS turns 0 * inf into NaN, so a non-finite product is the (cheap, (R, Dv)) sign that v needs care."""
    np.matmul(p, v, out=out)
    if np.isfinite(out).all():
        return
    bad = ~np.isfinite(v)
    np.matmul(p, np.where(bad, 0, v), out=out)
    out[np.matmul(p > 0, bad.astype(p.dtype)) > 0] = np.nan
