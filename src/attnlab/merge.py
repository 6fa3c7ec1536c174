"""Merging partial attention results exactly, by their log-sum-exp.

If out_a is attention over one part of the keys with log-sum-exp lse_a, and out_b over the rest with lse_b, then
attention over all keys is

    lse = log(exp(lse_a) + exp(lse_b))
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

(the online-softmax rescaling of Milakov & Gimelshein 2018, used by FlashAttention's split-KV decoding and by
ring attention). A part with nothing to attend to has lse = -inf and weight 0.
"""

from __future__ import annotations

from ._array import as_array, namespace, require_floating


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Combine two partial results: out (..., Lq, Dv), lse (..., Lq) -> (out, lse).

    >>> import numpy as np, attnlab
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((4, 8)) for _ in range(3))
    >>> a = attnlab.scaled_dot_product_attention(q, k[:3], v[:3], return_lse=True)
    >>> b = attnlab.scaled_dot_product_attention(q, k[3:], v[3:], return_lse=True)
    >>> out, lse = merge_attention(*a, *b)
    >>> bool(np.allclose(out, attnlab.scaled_dot_product_attention(q, k, v)))
    True
    """
    out_a, lse_a, out_b, lse_b = (as_array(x, n) for x, n in
                                  ((out_a, "out_a"), (lse_a, "lse_a"), (out_b, "out_b"), (lse_b, "lse_b")))
    xp = namespace(out_a, lse_a, out_b, lse_b)
    for x, name in ((out_a, "out_a"), (lse_a, "lse_a"), (out_b, "out_b"), (lse_b, "lse_b")):
        require_floating(xp, x, name)
    if out_a.shape != out_b.shape:
        raise ValueError(f"out_a has shape {tuple(out_a.shape)} but out_b has {tuple(out_b.shape)}")
    for lse, name in ((lse_a, "lse_a"), (lse_b, "lse_b")):
        if tuple(lse.shape) != tuple(out_a.shape[:-1]):
            raise ValueError(f"{name} must have shape {tuple(out_a.shape[:-1])} (the output without its last "
                             f"axis), got {tuple(lse.shape)}")
    m = xp.maximum(lse_a, lse_b)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))           # both -inf: keep the weights at 0, not NaN
    wa, wb = xp.exp(lse_a - m), xp.exp(lse_b - m)
    total = wa + wb
    safe = xp.where(total == 0, xp.ones_like(total), total)
    out = (wa / safe)[..., None] * out_a + (wb / safe)[..., None] * out_b
    lse = xp.where(total == 0, xp.full_like(total, -xp.inf), xp.log(safe) + m)
    return out, lse
