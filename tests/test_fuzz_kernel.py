"""A seeded random fuzz of the kernel's entry points against a float64 reference written here from the formula.

flash_attention, scaled_dot_product_attention(impl=...), attention_weights_for and flash_attention_backward, on
random shapes (GQA, empty sizes), masks (fully masked rows included), dtypes and magnitudes (float64 up to
|q|, |k| ~ 1e12, float32 near overflow). The reference below is plain NumPy float64 from the definition of
softmax attention and its gradient; it shares no code with attnlab.

Where scores are so large that their own rounding exceeds 1 (ill-conditioned: the answer depends on the rounding
order), the checks are the invariants every correct implementation keeps: finite, weights in [0, 1] summing to 1,
rows with no allowed key exactly 0; elsewhere the values are compared.
"""

import numpy as np
import pytest

import attnlab
from attnlab.kernel import attention_weights_for, flash_attention, flash_attention_backward

CASES = 400


def formula(q, k, v, allowed, scale, dout):
    """softmax(q k^T * scale) over allowed keys @ v, float64, and its gradients (dq, dk, dv) for dout.

    q (B, H, Lq, D), k/v (B, G, Lk, D/Dv), allowed (Lq, Lk); query head h reads key/value head h // (H // G)."""
    q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
    H, G = q.shape[1], k.shape[1]
    kk, vv = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)       # (B, H, Lk, D)
    s = np.einsum("bhid,bhjd->bhij", q, kk) * scale
    s = np.where(allowed, s, -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    safe = np.where(np.isfinite(top), top, 0)
    e = np.exp(s - safe)
    total = e.sum(axis=-1, keepdims=True)
    p = np.where(total > 0, e / np.where(total > 0, total, 1), 0)
    out = p @ vv
    lse = np.where(total[..., 0] > 0, np.log(np.where(total[..., 0] > 0, total[..., 0], 1)) + safe[..., 0],
                   -np.inf)
    dp = dout @ np.swapaxes(vv, -1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = ds @ kk * scale
    dkk = np.swapaxes(ds, -1, -2) @ q * scale
    dvv = np.swapaxes(p, -1, -2) @ dout
    B, Lk = k.shape[0], k.shape[2]
    dk = dkk.reshape(B, G, H // G, Lk, k.shape[3]).sum(axis=2)
    dv = dvv.reshape(B, G, H // G, Lk, v.shape[3]).sum(axis=2)
    return out, lse, p, (dq, dk, dv)


def _case(rng):
    dtype = np.float64 if rng.random() < 0.6 else np.float32
    B, G = int(rng.integers(0, 3)) if rng.random() < 0.1 else int(rng.integers(1, 3)), int(rng.integers(1, 3))
    H = G * int(rng.choice([1, 2, 4]))
    Lq = 0 if rng.random() < 0.08 else int(rng.integers(1, 40))
    Lk = 0 if rng.random() < 0.08 else int(rng.integers(1, 40))
    D, Dv = int(rng.integers(1, 24)), int(rng.integers(1, 8))
    if dtype == np.float64:
        mag = float(10 ** rng.choice([0, 0, 3, 6, 12]))
    else:
        mag = float(rng.choice([1, 1, 1e3, 3e15]))          # 3e15: float32 scores near 1e30
    q = (rng.standard_normal((B, H, Lq, D)) * mag).astype(dtype)
    k = (rng.standard_normal((B, G, Lk, D)) * mag).astype(dtype)
    v = rng.standard_normal((B, G, Lk, Dv)).astype(dtype)
    kind = rng.integers(0, 4)
    if kind == 0:
        allowed = np.ones((Lq, Lk), bool)
    elif kind == 1:
        allowed = rng.random((Lq, Lk)) < 0.5
        if Lq:
            allowed[rng.integers(0, Lq)] = False                 # a fully masked row
    elif kind == 2:
        allowed = np.tril(np.ones((Lq, Lk), bool), Lk - Lq)      # causal, bottom-right (empty rows if Lq > Lk)
    else:
        allowed = np.zeros((Lq, Lk), bool)                        # one allowed key per row
        if Lk:
            allowed[np.arange(Lq), rng.integers(0, Lk, Lq)] = True
    scale = float(1 / np.sqrt(D))
    return q, k, v, allowed, scale, mag


def _score_error(q, k, scale):
    """A bound on a score's rounding error: D * eps * max|q| * max|k| * scale."""
    eps = np.finfo(q.dtype).eps
    nq = np.sqrt((q.astype(np.float64) ** 2).sum(-1).max(initial=0))
    nk = np.sqrt((k.astype(np.float64) ** 2).sum(-1).max(initial=0))
    return q.shape[-1] * eps * nq * nk * scale


@pytest.mark.parametrize("seed", range(4))
def test_random_calls_match_the_formula(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(CASES // 4):
        q, k, v, allowed, scale, mag = _case(rng)
        dout = rng.standard_normal(q.shape[:-1] + (v.shape[-1],)).astype(q.dtype)
        want, want_lse, want_p, want_grads = formula(q, k, v, allowed, scale, dout)
        empty_rows = ~allowed.any(axis=-1)                        # (Lq,)
        err = _score_error(q, k, scale)
        ill = err > 1e-2                                          # the answer depends on the rounding order
        tol = (1e-10 if q.dtype == np.float64 else 2e-5) + 10 * err
        out, lse = flash_attention(q, k, v, allowed, return_lse=True, block_q=int(rng.integers(1, 20)),
                                   block_k=int(rng.integers(1, 20)), threads=int(rng.integers(1, 3)))
        outs = [out] + [attnlab.scaled_dot_product_attention(q, k, v, allowed, impl=impl)
                        for impl in ("tiled", "reference", "auto")]
        for got in outs:
            assert got.shape == want.shape and got.dtype == q.dtype
            assert np.isfinite(got).all()
            assert not got[..., empty_rows, :].any()              # exactly 0, never NaN
            if not ill:
                np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        assert np.array_equal(np.isneginf(lse), np.broadcast_to(empty_rows, lse.shape))
        if not ill:
            np.testing.assert_allclose(lse[np.isfinite(lse)], want_lse[np.isfinite(want_lse)], rtol=tol, atol=tol)
        elif (allowed.sum(-1) <= 1).all():                        # one key: the output is its value at any size
            np.testing.assert_allclose(out, want, rtol=0, atol=tol)
        w = attention_weights_for(q, k, slice(None), lse, allowed)
        assert np.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()
        assert not w[..., ~allowed].any()
        sums = w.sum(-1)
        np.testing.assert_allclose(sums[..., ~empty_rows], 1, atol=1e-3)
        assert not sums[..., empty_rows].any()
        if not ill:
            np.testing.assert_allclose(w, want_p, rtol=0, atol=tol)
        grads = flash_attention_backward(dout, q, k, v, out, lse, allowed)
        for g, w_ in zip(grads, want_grads):
            assert g.shape == w_.shape
            assert np.isfinite(g).all()
            if not ill:
                np.testing.assert_allclose(g, w_, rtol=0, atol=tol * 100 * max(1.0, mag) ** 2)
