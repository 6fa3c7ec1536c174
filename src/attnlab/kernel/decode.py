"""The decode regime: few query rows (one new token), every head at once, the keys split among the threads; and
the batched regime, the same code on the query blocks of a small problem (``layout.batched_blocks``).

When a head group has fewer than FOLD_MIN_ROWS query rows in one query block (``layout.decode_regime``), a task
per head would spend its time in Python. Instead one task per key split runs the online softmax of all query rows
of every head with one batched matmul per key block; the splits are merged exactly by their log-sum-exp
(``attnlab.merge_attention``), as FlashAttention's split-KV decoding does.

The r query heads that share a key/value head (GQA, MQA) and their Lq rows are stacked into one (r * Lq, D) block
per key/value head, so each key block is read once per key/value head, by one matrix product, not r
matrix-vector products (no copy of the keys). A context of at most ``layout.DECODE_KEYS`` keys is one block: the
plain softmax, no running rescale.

With KEYS_FIRST_ROWS rows or more per key/value head (the batched regime's query blocks), a tile's scores are
computed as K q^T and stored keys first, then read through their (rows, keys) view: the same values, but the row
max reduces over the outer axis, which NumPy vectorises across rows (1024 rows x 128 keys: 33 us against 75 us
stored by row; causal n = 1024, H = 8: 9.5 -> 8.3 ms a call, docs/performance.md). The elementwise steps and BLAS
take either layout as it lies.

``step`` is the same regime on its shortest road, for the call a KV-cache loop makes every token (no mask, no
score modifier, no bias, default tiles): the schedule is a few lines of arithmetic on the shapes (the one
``layout.schedule``, so ``plan()`` still says what runs), one thread runs inline (no pool, no BLAS limit to set:
BLAS keeps the caller's thread count, one inside ``models._blocks.one_row_steps``), and the softmax is the
plain one per key block: about 15 NumPy calls around the two matrix products, where the general route (the
problem, its tile maps, the call plan, the task queue) cost ~45 us more per call, a third of a 1k-context step.
"""

from __future__ import annotations

import math

import numpy as np

from .._array import default_scale
from ..masks import EMPTY, FULL, PARTIAL
from ..merge import merge_attention
from . import layout as layout_mod
from .ops import LOG2E, exp2_masked, masked_pv, normalise
from .threads import run_tasks

KEYS_FIRST_ROWS = 16                 # rows of every head from which a tile's scores are stored keys first: a row max
                                     # over 128 keys took 75 us for 1024 rows stored by row, 33 us stored by key


def step(p, mask, scale, score_mod, bias, block_q, block_k, threads, stats):
    """The decode step of prepared inputs ``p`` (``attnlab._inputs.Prepared``) on the short road, as (out, lse)
    shaped (..., Lq, Dv) and (..., Lq); None when the call is not one (a mask, a modifier, a bias, tile sizes
    given, more rows than the decode regime takes, an empty axis, not NumPy float32/float64): the caller
    (``forward.tiled``) then takes the general route, which computes the same. ``stats`` (a
    ``forward.RunStats`` or None) is filled as the general route fills it."""
    if mask is not None or score_mod is not None or bias is not None or block_q is not None or block_k is not None:
        return None
    q = p.q
    if type(q) is not np.ndarray or type(p.k) is not np.ndarray or type(p.v) is not np.ndarray or \
            q.dtype not in (np.float32, np.float64):
        return None
    lay = layout_mod.layout(p)
    Lq, Lk = lay.Lq, lay.Lk
    if 0 in lay.scores_shape:
        return None
    bq, bk = layout_mod.default_blocks(lay.r, Lq, Lk)
    if lay.r * Lq >= layout_mod.FOLD_MIN_ROWS or not layout_mod.decode_regime(lay, bq, bk, mask=None):
        return None                                                   # not a decoding step
    threads = layout_mod.threads_of(threads)
    splits, n_threads = layout_mod.schedule(lay, bq, bk, threads, True)
    dtype, D, lead, R = q.dtype, q.shape[-1], lay.lead, lay.r * Lq
    if lay.q.shape[:-3] != lead:                                      # q broadcast over some leading axis
        qv = np.broadcast_to(lay.q, lead + lay.q.shape[-3:])
    else:
        qv = lay.q
    qs = np.multiply(qv, dtype.type((default_scale(D) if scale is None else scale) * LOG2E))   # (*lead, r, Lq, D)
    qs = qs.reshape(lead + (1, R, D))                                   # (*lead, 1, R, D), log2 units
    kt, v = np.swapaxes(lay.k, -1, -2), lay.v                           # (*lead', 1, D, Lk), (*lead', 1, Lk, Dv)
    nkb = -(-Lk // bk)
    bounds = [(s * nkb // splits * bk, min(Lk, (s + 1) * nkb // splits * bk)) for s in range(splits)]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if n_threads == 1:
            parts = [_keys(qs, kt, v, lo, hi, bk) for lo, hi in bounds]
        else:
            tasks = [layout_mod.Task(None, 0, lo, hi, s) for s, (lo, hi) in enumerate(bounds)]
            parts = [None] * splits

            def run_one(ws, task, counts):
                parts[task.split] = _keys(qs, kt, v, task.key_lo, task.key_hi, bk)

            run_tasks(tasks, run_one, lambda: None, n_threads, threads)
        out, lse = parts[0]
        for more in parts[1:]:
            out, lse = merge_attention(out, lse, *more)
    if stats is not None:
        stats.tiles = layout_mod.TileCounts(0, 0, math.prod(lead) * nkb)
        stats.block_q, stats.block_k, stats.threads, stats.tasks, stats.kv_splits = bq, bk, n_threads, splits, \
            splits
    outer = lay.scores_shape[:-2]
    return out.reshape(outer + (Lq, out.shape[-1])), lse.reshape(outer + (Lq,))


def _keys(qs, kt, v, lo, hi, bk):
    """(out, lse) of the rows qs (*lead, 1, R, D) (scaled, log2 units) over keys lo:hi, one batched matmul per
    block of bk keys; out (*lead, 1, R, Dv), lse (*lead, 1, R) in natural units. Non-finite inputs reach only the
    rows that attend to them (``masked_pv``; a row whose max is inf or NaN stays NaN, as in the reference)."""
    lowest = np.finfo(qs.dtype).min
    m = l = sums = pv = None
    scores = np.empty(qs.shape[:-1] + (min(bk, hi - lo),), qs.dtype)           # (*lead, 1, R, bk)
    for ks in range(lo, hi, bk):
        ke = min(hi, ks + bk)
        S = np.matmul(qs, kt[..., ks:ke], out=scores[..., :ke - ks])            # (*lead, 1, R, cols)
        m_tile = S.max(axis=-1)                                                   # (*lead, 1, R)
        np.maximum(m_tile, lowest, out=m_tile)
        if m is not None:
            np.maximum(m_tile, m, out=m_tile)
        S -= m_tile[..., None]
        np.exp2(S, out=S)                                                        # P = 2^(S - m)
        if sums is None:
            sums = np.empty(S.shape[:-1] + (v.shape[-1],), S.dtype)              # (*lead, 1, R, Dv)
        l, pv = fold_block(S, v[..., ks:ke, :], m, m_tile, l, sums, pv)
        m = m_tile
    out, lse = np.empty_like(sums), np.empty_like(l)
    normalise(sums, l, m, lowest, out, lse)
    return out, lse


def fold_block(P, vb, m, m_new, l, sums, pv):
    """One key block into the running online softmax (FlashAttention's recurrence, in log2 units): P (*lead, 1, R,
    cols) holds 2^(S - m_new) of the block, vb (*lead', 1, cols, Dv) its values; the row sums l and the weighted
    values ``sums`` (*lead, 1, R, Dv) of the earlier blocks (max m; None for the first block) are rescaled by
    2^(m - m_new) and the block's added (``sums`` in place). ``pv`` is scratch the size of ``sums`` (None: made
    here). Returns (l, pv)."""
    if m is None:                                    # the first block: nothing to rescale
        masked_pv(P, vb, sums)
        return P.sum(axis=-1), pv
    alpha = np.exp2(m - m_new)
    l = l * alpha + P.sum(axis=-1)
    sums *= alpha[..., None]
    np.copyto(sums, 0, where=(alpha == 0)[..., None])                          # weights that underflow to 0
    if pv is None:
        pv = np.empty_like(sums)
    masked_pv(P, vb, pv)
    sums += pv
    return l, pv


def decode_task(pb, i, j_lo, j_hi, out, lse, counts):
    """The online softmax of the query rows of query block i of every head over the key blocks j_lo:j_hi, one
    batched matmul per key block: the decode regime (few rows, or a small problem on the batched regime's tiles),
    where a task per head would spend its time in Python. Checked as the careful pass of ``forward.run_task``:
    non-finite values reach only the rows that attend to them. Rows qs:qe of out (*lead, r, Lq, Dv) and lse
    (*lead, r, Lq) are written."""
    lay, bk, lowest = pb.lay, pb.block_k, np.finfo(pb.dtype).min
    qs, qe = i * pb.block_q, min(lay.Lq, (i + 1) * pb.block_q)
    lead, R = lay.lead, lay.r * (qe - qs)
    q = np.multiply(pb.q[..., qs:qe, :], pb.q_scale).reshape(lead + (1, R, pb.D))   # (*lead, 1, R, D), log2
    width = min(bk, lay.Lk)
    keys_first = R >= KEYS_FIRST_ROWS
    if keys_first:                                   # S stored (cols, R): its row max reduces over the outer axis
        qt = np.swapaxes(q, -1, -2)                                              # (*lead, 1, D, R)
        scores = np.empty(lead + (1, width, R), pb.dtype)                        # (*lead, 1, block_k, R)
    else:
        scores = np.empty(lead + (1, R, width), pb.dtype)                        # (*lead, 1, R, block_k)
    sums = np.empty(lead + (1, R, pb.Dv), pb.dtype)                              # (*lead, 1, R, Dv): sum p v
    m = l = pv = None
    for j in range(j_lo, j_hi):
        ks, ke = j * bk, min(lay.Lk, (j + 1) * bk)
        blocked = decode_blocked(pb, i, qs, qe, j, ks, ke, counts)
        if blocked is True:
            continue
        if keys_first:                               # the (R, cols) view of K q^T: NumPy's reductions, ufuncs and
            S = np.swapaxes(np.matmul(pb.k[..., ks:ke, :], qt, out=scores[..., :ke - ks, :]), -1, -2)   # BLAS
        else:                                        # take it as it lies in memory
            S = np.matmul(q, np.swapaxes(pb.k[..., ks:ke, :], -1, -2), out=scores[..., :ke - ks])   # (.., R, cols)
        if blocked is not None:
            np.copyto(S, -np.inf, where=blocked)
        m_tile = np.maximum(S.max(axis=-1), lowest)                             # fully masked so far: stay finite
        if m is not None:
            m_tile = np.maximum(m_tile, m)
        exp2_masked(np.subtract(S, m_tile[..., None], out=S), blocked)          # P = 2^(S - m_new)
        l, pv = fold_block(S, pb.v[..., ks:ke, :], m, m_tile, l, sums, pv)
        m = m_tile
    rows_out, rows_lse = out[..., qs:qe, :], lse[..., qs:qe]                     # (*lead, r, rows, Dv), (.., rows)
    if m is None:                                    # every block empty: nothing to attend to
        rows_out[...] = 0
        rows_lse[...] = -np.inf
        return
    if qe - qs == lay.Lq:                            # every row: out and lse viewed in the sums' shape
        normalise(sums, l, m, lowest, out.reshape(sums.shape), lse.reshape(m.shape))
        return
    o, s = np.empty_like(sums), np.empty_like(l)      # a query block's rows are not one view of that shape
    normalise(sums, l, m, lowest, o, s)
    rows_out[...] = o.reshape(rows_out.shape)
    rows_lse[...] = s.reshape(rows_lse.shape)


def decode_blocked(pb, i, qs, qe, j, ks, ke, counts):
    """The cells of tile (i, j) (query rows qs:qe, keys ks:ke) to set to -inf for every head: None (none), True
    (all: skip the tile) or a boolean array broadcastable to (*lead, 1, r * rows, cols); counts the tiles (one
    per head group, as the tile map has them)."""
    lay = pb.lay
    n_groups = pb.maps.n_lead
    shared = pb.maps.shared
    rows = qe - qs
    if shared is not None:                            # one map for every head group
        state = int(shared[i, j])
        if state == FULL or state == EMPTY:
            counts[state] += n_groups
            return None if state == FULL else True
        if pb.mask_arr is None:                       # a Mask that depends on neither batch nor head
            allowed = pb.mask.evaluate(lay.Lq, lay.Lk, np.arange(qs, qe)[:, None], np.arange(ks, ke)[None, :])
            counts[PARTIAL] += n_groups
            blocked = np.broadcast_to(~allowed, (lay.r, rows, ke - ks))         # (r, rows, cols): the r heads share it
            return blocked.reshape(lay.r * rows, ke - ks)                       # (R, cols), broadcast over *lead
    states = {idx: int(pb.maps[idx][i, j]) for idx in np.ndindex(*lay.lead)}
    if all(state == FULL for state in states.values()):
        counts[FULL] += len(states)
        return None
    blocked = np.zeros(lay.lead + (lay.r, rows, ke - ks), bool)
    q_sel, q_pos, empty = slice(qs, qe), np.arange(qs, qe), 0
    for idx, state in states.items():
        state, allowed = pb.classify(idx, q_sel, q_pos, ks, ke, state)
        counts[state] += 1
        empty += state == EMPTY
        if state != FULL:
            blocked[idx] = True if state == EMPTY else ~allowed
    if empty == len(states):
        return True
    return blocked.reshape(lay.lead + (1, lay.r * rows, ke - ks))
