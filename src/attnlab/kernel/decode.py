"""The decode regime: few query rows (one new token), every head at once, the keys split among the threads.

When a head group has fewer than FOLD_MIN_ROWS query rows in one query block (``layout.decode_regime``), a task
per head would spend its time in Python. Instead one task per key split runs the online softmax of all query rows
of every head with one batched matmul per key block; the splits are merged exactly by their log-sum-exp
(``attnlab.merge_attention``), as FlashAttention's split-KV decoding does.
"""

from __future__ import annotations

import numpy as np

from ..masks import EMPTY, FULL
from .ops import exp2_masked, masked_pv, normalise

def decode_task(pb, j_lo, j_hi, out, lse, counts):
    """The online softmax of all query rows of every head over the key blocks j_lo:j_hi, one batched matmul per
    key block: the decode regime (r * Lq < FOLD_MIN_ROWS rows per head group), where a task per head would spend
    its time in Python. Checked as the careful pass of ``forward.run_task``: non-finite values reach only the rows that
    attend to them. out (*lead, r, Lq, Dv) and lse (*lead, r, Lq) are written."""
    lay, bk, lowest = pb.lay, pb.block_k, np.finfo(pb.dtype).min
    q = pb.q * pb.q_scale                                                      # (*lead, r, Lq, D), log2 units
    m = np.full(q.shape[:-1], -np.inf, pb.dtype)                               # (*lead, r, Lq)
    l, acc, pv = np.zeros_like(m), np.zeros(m.shape + (pb.Dv,), pb.dtype), np.empty(m.shape + (pb.Dv,), pb.dtype)
    scores = np.empty(m.shape + (min(bk, lay.Lk),), pb.dtype)                  # (*lead, r, Lq, block_k)
    for j in range(j_lo, j_hi):
        ks, ke = j * bk, min(lay.Lk, (j + 1) * bk)
        blocked = decode_blocked(pb, j, ks, ke, counts)
        if blocked is True:
            continue
        S = np.matmul(q, np.swapaxes(pb.k[..., ks:ke, :], -1, -2), out=scores[..., :ke - ks])   # (.., cols)
        if blocked is not None:
            np.copyto(S, -np.inf, where=blocked)
        m_new = np.maximum(np.maximum(S.max(axis=-1), m), lowest)             # fully masked so far: stay finite
        exp2_masked(np.subtract(S, m_new[..., None], out=S), blocked)         # P = 2^(S - m_new)
        alpha = np.exp2(m - m_new)
        l = l * alpha + S.sum(axis=-1)
        acc *= alpha[..., None]
        np.copyto(acc, 0, where=(alpha == 0)[..., None])                       # weights that underflow to 0
        masked_pv(S, pb.v[..., ks:ke, :], pv)                                        # sum p v (*lead, r, Lq, Dv)
        acc += pv
        m = m_new
    normalise(acc, l, m, lowest, out, lse)


def decode_blocked(pb, j, ks, ke, counts):
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


