"""The same results on NumPy, PyTorch and array-api-strict; gradients through PyTorch checked with gradcheck."""

import array_api_strict as xps
import numpy as np
import pytest
import torch

from attnlab import (KVCache, MultiHeadAttention, additive_attention, attention, logsumexp, masks as M,
                     merge_attention, scaled_dot_product_attention as sdpa, scores as S, softmax)
from attnlab._array import to_numpy

BACKENDS = {
    "torch": lambda a: torch.from_numpy(np.ascontiguousarray(a)),
    "array_api_strict": lambda a: xps.asarray(a),
}


def _same(got, want, like, tol=1e-13):
    """got comes from backend `like`'s namespace and equals the NumPy result ``want``."""
    assert type(got) is type(like), f"result is {type(got).__name__}, expected {type(like).__name__}"
    got = to_numpy(got)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _case(rng):
    return (rng.standard_normal((2, 4, 5, 8)), rng.standard_normal((2, 2, 7, 8)), rng.standard_normal((2, 2, 7, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdpa_with_masks_bias_mods_and_gqa(backend, rng):
    to = BACKENDS[backend]
    q, k, v = _case(rng)
    keep = rng.random((2, 4, 5, 7)) < 0.6
    bias = rng.standard_normal((4, 5, 7))
    table = rng.standard_normal((4, 9))
    for kwargs in ({}, {"mask": M.causal()}, {"mask": M.padding([7, 2]) & M.sliding_window(3, 1)},
                   {"mask": M.document([0, 0, 1, 1, 1, 2, 2])}, {"mask": keep}, {"bias": bias, "mask": ~M.causal()},
                   {"score_mod": S.alibi(4).then(S.softcap(5.0))}, {"score_mod": S.relative_bias(table)},
                   {"scale": 0.2, "mask": M.global_tokens([0]) | M.causal()}):
        want = sdpa(q, k, v, return_weights=True, return_lse=True, **kwargs)
        args = {key: (to(val) if isinstance(val, np.ndarray) else val) for key, val in kwargs.items()}
        got = sdpa(to(q), to(k), to(v), return_weights=True, return_lse=True, **args)
        for g, w in zip(got, want):
            _same(g, w, to(q))


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_masks_and_biases_move_to_the_backend(backend, rng):
    to = BACKENDS[backend]
    q, k, v = _case(rng)
    keep, bias = rng.random((5, 7)) < 0.5, rng.standard_normal((5, 7))
    _same(sdpa(to(q), to(k), to(v), keep, bias=bias), sdpa(q, k, v, keep, bias=bias), to(q))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_scorer(backend, rng):
    to = BACKENDS[backend]
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 2))
    W = rng.standard_normal((4, 4))
    w_q, w_k, w_v = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    cases = [("dot", {}), ("scaled_dot", {"scale": 0.5}), ("general", {"weight": W}),
             ("additive", {"w_q": w_q, "w_k": w_k, "w_v": w_v})]
    for score, params in cases:
        want = attention(q, k, v, score, M.causal(), return_weights=True, **params)
        got = attention(to(q), to(k), to(v), score, M.causal(), return_weights=True,
                        **{n: (to(p) if isinstance(p, np.ndarray) else p) for n, p in params.items()})
        for g, w in zip(got, want):
            _same(g, w, to(q))
    _same(additive_attention(to(q), to(k), to(v), to(w_q), to(w_k), to(w_v), M.padding([6, 3])),
          additive_attention(q, k, v, w_q, w_k, w_v, M.padding([6, 3])), to(q))


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_rotary_and_merge(backend, rng):
    to = BACKENDS[backend]
    x, keep = rng.standard_normal((3, 5)), rng.random((3, 5)) < 0.5
    _same(softmax(to(x), mask=to(keep)), softmax(x, mask=keep), to(x))
    _same(logsumexp(to(x), axis=0, mask=to(keep)), logsumexp(x, axis=0, mask=keep), to(x))
    y = rng.standard_normal((2, 6, 8))
    for style in ("half", "interleaved"):
        _same(S.rotary(to(y), np.arange(3, 9), style=style), S.rotary(y, np.arange(3, 9), style=style), to(y))
    q, k, v = _case(rng)
    a, b = sdpa(q, k[..., :3, :], v[..., :3, :], return_lse=True), sdpa(q, k[..., 3:, :], v[..., 3:, :],
                                                                         return_lse=True)
    got = merge_attention(*(to(t) for t in (*a, *b)))
    for g, w in zip(got, merge_attention(*a, *b)):
        _same(g, w, to(q))


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_and_cache(backend, rng):
    to = BACKENDS[backend]
    layer = MultiHeadAttention(8, 4, 2, seed=0, dtype=np.float64, rope_base=10000.0)
    x = rng.standard_normal((2, 6, 8))
    want = layer(x, mask=M.causal())
    _same(layer(to(x), mask=M.causal()), want, to(x), tol=1e-12)
    cache = KVCache()
    steps = [layer(to(x[:, :3]), mask=M.causal(), cache=cache)] + \
        [layer(to(x[:, t:t + 1]), mask=M.causal(), cache=cache) for t in range(3, 6)]
    got = np.concatenate([to_numpy(s) for s in steps], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert cache.nbytes == 2 * 2 * 2 * 6 * 2 * 8


def test_float32_backends_agree(rng):
    q, k, v = (a.astype(np.float32) for a in _case(rng))
    want = sdpa(q, k, v, M.causal())
    for to in BACKENDS.values():
        got = sdpa(to(q), to(k), to(v), M.causal())
        assert to_numpy(got).dtype == np.float32
        np.testing.assert_allclose(to_numpy(got), want, atol=2e-6)


# --- gradients -------------------------------------------------------------------------------------------------
def _leaf(rng, shape):
    return torch.tensor(rng.standard_normal(shape), dtype=torch.float64, requires_grad=True)


def test_gradcheck_sdpa_with_fully_masked_row(rng):
    q, k, v = _leaf(rng, (2, 4, 3, 4)), _leaf(rng, (2, 2, 5, 4)), _leaf(rng, (2, 2, 5, 2))
    bias = _leaf(rng, (4, 3, 5))
    keep = torch.tensor(rng.random((2, 4, 3, 5)) < 0.6)
    keep[0, 1, 2] = False                                                         # a fully masked query row
    fn = lambda q_, k_, v_, b_: sdpa(q_, k_, v_, keep, bias=b_, score_mod=S.softcap(3.0))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, bias))
    out = fn(q, k, v, bias)
    assert (out[0, 1, 2] == 0).all()
    out.square().sum().backward()
    for t in (q, k, v, bias):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0, 1, 2] == 0).all()                                           # nothing flows from nowhere


def test_gradcheck_sdpa_with_mask_objects(rng):
    q, k, v = _leaf(rng, (1, 2, 4, 3)), _leaf(rng, (1, 2, 6, 3)), _leaf(rng, (1, 2, 6, 3))
    for mask in (M.causal(), M.causal() & M.sliding_window(1), M.causal("top_left") & ~M.global_tokens([0])):
        assert torch.autograd.gradcheck(lambda a, b, c: sdpa(a, b, c, mask, score_mod=S.alibi(2)), (q, k, v))


def test_gradcheck_additive_attention(rng):
    q, k, v = _leaf(rng, (2, 3, 4)), _leaf(rng, (2, 5, 3)), _leaf(rng, (2, 5, 2))
    w_q, w_k, w_v = _leaf(rng, (6, 4)), _leaf(rng, (6, 3)), _leaf(rng, (6,))
    keep = torch.tensor(rng.random((2, 3, 5)) < 0.6)
    keep[1, 0] = False                                                            # fully masked row
    fn = lambda *a: additive_attention(*a, mask=keep)                             # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, w_q, w_k, w_v))
    fn(q, k, v, w_q, w_k, w_v).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, w_q, w_k, w_v))


def test_gradients_ignore_nan_in_masked_values(rng):
    q, k = _leaf(rng, (3, 4)), _leaf(rng, (4, 4))
    v_data = rng.standard_normal((4, 2))
    v_data[3] = np.nan
    v = torch.tensor(v_data, requires_grad=True)
    keep = torch.tensor([[True, True, True, False]] * 3)
    out = sdpa(q, k, v, keep)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
