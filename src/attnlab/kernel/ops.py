"""The kernel's elementwise steps, shared by the tiled forward and the decode regime (log2 units throughout)."""

from __future__ import annotations

import math

import numpy as np

LOG2E, LN2 = 1.0 / math.log(2.0), math.log(2.0)


def normalise(sums, l, m, lowest, out, lse):
    """out = sums / l, 0 where l = 0 (nothing to attend to; NaN rows stay NaN); lse = (m + log2 l) * ln 2, -inf
    where l = 0. sums (..., Dv); l, m (...) in log2 units relative to the shift m."""
    np.divide(sums, np.where(l == 0, 1, l)[..., None], out=out)
    np.multiply(np.log2(l) + np.maximum(m, lowest), LN2, out=lse)


def exp2_masked(S, blocked):
    """S = exp2(S) in place, 0 where ``blocked`` (None: no cell). Blocked cells enter exp2 as 0 and leave as
    weight 0: NumPy's float32 exp2 takes a path 5x slower for -inf and other underflowing inputs."""
    if blocked is not None:
        np.copyto(S, 0, where=blocked)
    np.exp2(S, out=S)
    if blocked is not None:
        np.copyto(S, 0, where=blocked)


def masked_pv(p, v, out):
    """out = p @ v, where a non-finite value in v only reaches rows that put weight on it (as the reference).

    BLAS turns 0 * inf into NaN, so a non-finite product is the (cheap, (R, Dv)) sign that v needs care."""
    np.matmul(p, v, out=out)
    if np.isfinite(out).all():
        return
    bad = ~np.isfinite(v)
    np.matmul(p, np.where(bad, 0, v), out=out)
    out[np.matmul(p > 0, bad.astype(p.dtype)) > 0] = np.nan
