"""FlashAttention, Algorithm 1 as written (Dao et al. 2022): the readable tiled path, one head, natural exp.

Split the queries into blocks of ``block_q`` rows and the keys/values into blocks of ``block_k``. For every key
block j (outer loop) and query block i (inner loop), with per-row running max m, running sum l and output O kept
normalised (lines 9-13 of the paper's Algorithm 1):

    S      = scale * Q_i K_j^T                         (Bq, Bk)
    m~     = rowmax(S);  P = exp(S - m~);  l~ = rowsum(P)
    m_new  = max(m_i, m~);  l_new = exp(m_i - m_new) l_i + exp(m~ - m_new) l~
    O_i    = (l_i exp(m_i - m_new) O_i + exp(m~ - m_new) P V_j) / l_new
    m_i, l_i = m_new, l_new

At the end lse = m + log l. Masks use the same tile map as the fast kernel (``Mask.blocks``): EMPTY tiles are
skipped, PARTIAL ones get -inf where the mask blocks. A row that has seen only blocked keys keeps m = -inf and
l = 0 and ends with output 0 and lse -inf. ``attnlab.kernel.forward`` computes the same numbers faster; the tests
check all three (this, the fast kernel, the reference) equal.

>>> import numpy as np, attnlab
>>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((7, 4)) for _ in range(3))
>>> out, lse = simple_attention(q, k, v, mask=attnlab.masks.causal(), block_q=3, block_k=2)
>>> bool(np.allclose(out, attnlab.scaled_dot_product_attention(q, k, v, mask=attnlab.masks.causal())))
True
"""

from __future__ import annotations

import math

import numpy as np

from .. import masks as masks_mod
from ..masks import EMPTY, PARTIAL


def simple_attention(q, k, v, mask=None, *, scale=None, block_q=16, block_k=16):
    """q (Lq, D), k (Lk, D), v (Lk, Dv) NumPy arrays; ``mask`` None, a Mask or a bool (Lq, Lk) array (True = may
    attend). Returns (out (Lq, Dv), lse (Lq,))."""
    (Lq, D), (Lk, Dv) = q.shape, v.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    tiles = tile_map(mask, Lq, Lk, block_q, block_k)                       # (Tr, Tc): EMPTY / PARTIAL / FULL
    O = np.zeros((Lq, Dv), q.dtype)
    l, m = np.zeros(Lq, q.dtype), np.full(Lq, -np.inf, q.dtype)
    for j in range(tiles.shape[1]):                                        # outer loop: key/value blocks
        ks, ke = j * block_k, min(Lk, (j + 1) * block_k)
        K, V = k[ks:ke], v[ks:ke]                                          # (Bk, D), (Bk, Dv)
        for i in range(tiles.shape[0]):                                    # inner loop: query blocks
            if tiles[i, j] == EMPTY:
                continue
            qs, qe = i * block_q, min(Lq, (i + 1) * block_q)
            S = scale * (q[qs:qe] @ K.T)                                   # (Bq, Bk)
            if tiles[i, j] == PARTIAL:
                S = np.where(allowed(mask, Lq, Lk, qs, qe, ks, ke), S, -np.inf)
            m_tile = S.max(axis=1)                                         # (Bq,)
            P = exp_minus(S, m_tile[:, None])                              # exp(S - m~), 0 where blocked
            l_tile = P.sum(axis=1)
            m_i, l_i = m[qs:qe], l[qs:qe]
            m_new = np.maximum(m_i, m_tile)
            a, b = exp_minus(m_i, m_new), exp_minus(m_tile, m_new)         # rescale old and new parts
            l_new = a * l_i + b * l_tile
            safe = np.where(l_new > 0, l_new, 1)                           # a row with nothing seen yet stays 0
            O[qs:qe] = ((l_i * a)[:, None] * O[qs:qe] + b[:, None] * (P @ V)) / safe[:, None]
            m[qs:qe], l[qs:qe] = m_new, l_new
    with np.errstate(divide="ignore"):
        lse = np.where(l > 0, m + np.log(l), -np.inf)
    return O, lse


def exp_minus(x, shift):
    """exp(x - shift), 0 where x is -inf (also when shift is -inf: a row that has seen no allowed key)."""
    with np.errstate(invalid="ignore"):
        return np.where(x == -np.inf, 0, np.exp(x - np.where(np.isfinite(shift), shift, 0)))


def tile_map(mask, Lq, Lk, block_q, block_k) -> np.ndarray:
    """The (Tr, Tc) map of tile states the fast kernel follows: ``Mask.blocks`` for a Mask, every tile PARTIAL
    for a boolean array, FULL without a mask."""
    shape = (math.ceil(Lq / block_q), math.ceil(Lk / block_k))
    if mask is None:
        return np.full(shape, masks_mod.FULL, np.int8)
    if isinstance(mask, masks_mod.Mask):
        return mask.blocks(Lq, Lk, block_q, block_k)
    return np.full(shape, PARTIAL, np.int8)


def allowed(mask, Lq, Lk, qs, qe, ks, ke) -> np.ndarray:
    """The (qe - qs, ke - ks) cells of one tile that may attend."""
    if isinstance(mask, masks_mod.Mask):
        return mask.evaluate(Lq, Lk, np.arange(qs, qe)[:, None], np.arange(ks, ke)[None, :])
    return np.asarray(mask, bool)[qs:qe, ks:ke]
