"""The decode regime: few query rows (one new token), every head at once, the keys split among the threads.

When a head group has fewer than FOLD_MIN_ROWS query rows in one query block (``layout.decode_regime``), a task
per head would spend its time in Python. Instead one task per key split runs the online softmax of all query rows
of every head with one batched matmul per key block; the splits are merged exactly by their log-sum-exp
(``attnlab.merge_attention``), as FlashAttention's split-KV decoding does.

The r query heads that share a key/value head (GQA, MQA) and their Lq rows are stacked into one (r * Lq, D) block
per key/value head, so each key block is read once per key/value head, by one matrix product, not r
matrix-vector products (no copy of the keys). A context of at most ``layout.DECODE_KEYS`` keys is one block: the
plain softmax, no running rescale.
"""

from __future__ import annotations

import numpy as np

from ..masks import EMPTY, FULL, PARTIAL
from .ops import exp2_masked, masked_pv, normalise


def decode_task(pb, j_lo, j_hi, out, lse, counts):
    """The online softmax of all query rows of every head over the key blocks j_lo:j_hi, one batched matmul per
    key block: the decode regime (r * Lq < FOLD_MIN_ROWS rows per head group), where a task per head would spend
    its time in Python. Checked as the careful pass of ``forward.run_task``: non-finite values reach only the rows
    that attend to them. out (*lead, r, Lq, Dv) and lse (*lead, r, Lq) are written."""
    lay, bk, lowest = pb.lay, pb.block_k, np.finfo(pb.dtype).min
    lead, R = lay.lead, lay.r * lay.Lq
    q = np.multiply(pb.q, pb.q_scale).reshape(lead + (1, R, pb.D))              # (*lead, 1, r Lq, D), log2 units
    width = min(bk, lay.Lk)
    scores = np.empty(lead + (1, R, width), pb.dtype)                            # (*lead, 1, R, block_k)
    sums = np.empty(lead + (1, R, pb.Dv), pb.dtype)                              # (*lead, 1, R, Dv): sum p v
    m = l = pv = None
    for j in range(j_lo, j_hi):
        ks, ke = j * bk, min(lay.Lk, (j + 1) * bk)
        blocked = decode_blocked(pb, j, ks, ke, counts)
        if blocked is True:
            continue
        S = np.matmul(q, np.swapaxes(pb.k[..., ks:ke, :], -1, -2), out=scores[..., :ke - ks])   # (.., R, cols)
        if blocked is not None:
            np.copyto(S, -np.inf, where=blocked)
        m_tile = np.maximum(S.max(axis=-1), lowest)                             # fully masked so far: stay finite
        if m is not None:
            m_tile = np.maximum(m_tile, m)
        exp2_masked(np.subtract(S, m_tile[..., None], out=S), blocked)          # P = 2^(S - m_new)
        if m is None:                                # the first block: nothing to rescale
            l = S.sum(axis=-1)
            masked_pv(S, pb.v[..., ks:ke, :], sums)                             # sum p v (*lead, 1, R, Dv)
        else:
            alpha = np.exp2(m - m_tile)
            l = l * alpha + S.sum(axis=-1)
            sums *= alpha[..., None]
            np.copyto(sums, 0, where=(alpha == 0)[..., None])                  # weights that underflow to 0
            if pv is None:
                pv = np.empty_like(sums)
            masked_pv(S, pb.v[..., ks:ke, :], pv)
            sums += pv
        m = m_tile
    if m is None:                                    # every block empty: nothing to attend to
        out[...] = 0
        lse[...] = -np.inf
        return
    normalise(sums, l, m, lowest, out.reshape(sums.shape), lse.reshape(m.shape))


def decode_blocked(pb, j, ks, ke, counts):
    """The cells of key block j to set to -inf for every head: None (none), True (all: skip the block) or a
    boolean array broadcastable to (*lead, 1, r * Lq, cols); counts the tiles (one per head group, as the tile
    map has them)."""
    lay = pb.lay
    n_groups = pb.maps.n_lead
    shared = pb.maps.shared
    if shared is not None:                            # one map for every head group
        state = int(shared[0, j])
        if state == FULL or state == EMPTY:
            counts[state] += n_groups
            return None if state == FULL else True
        if pb.mask_arr is None:                       # a Mask that depends on neither batch nor head
            allowed = pb.mask.evaluate(lay.Lq, lay.Lk, np.arange(lay.Lq)[:, None], np.arange(ks, ke)[None, :])
            counts[PARTIAL] += n_groups
            blocked = np.broadcast_to(~allowed, (lay.r, lay.Lq, ke - ks))      # (r, Lq, cols): the r heads share it
            return blocked.reshape(lay.r * lay.Lq, ke - ks)                    # (R, cols), broadcast over *lead
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
    if empty == len(states):
        return True
    return blocked.reshape(lay.lead + (1, lay.r * lay.Lq, ke - ks))
