"""MultiHeadAttention (MHA / GQA / MQA) and KVCache against the float64 loop oracle of Vaswani et al. sec. 3.2.2."""

import numpy as np
import pytest
import torch

import oracles as O
from attnlab import KVCache, MultiHeadAttention, masks as M

TOL = dict(rtol=1e-11, atol=1e-12)


def _layer(d_model, H, G=None, seed=0, **kwargs):
    layer = MultiHeadAttention(d_model, H, G, seed=seed, dtype=np.float64, **kwargs)
    rng = np.random.default_rng(seed + 1)
    for name in ("b_q", "b_k", "b_v", "b_o"):                         # non-zero biases, so they are tested
        if getattr(layer, name) is not None:
            setattr(layer, name, rng.standard_normal(getattr(layer, name).shape))
    return layer


@pytest.mark.parametrize("H, G", [(4, 4), (4, 2), (4, 1)])
def test_self_attention_matches_oracle(rng, H, G):
    layer = _layer(8, H, G)
    assert layer.kind == {4: "MHA", 2: "GQA", 1: "MQA"}[G]
    x = rng.standard_normal((2, 5, 8))
    lengths = [5, 3]
    out, w = layer(x, mask=M.causal() & M.padding(lengths), return_weights=True)
    assert out.shape == (2, 5, 8) and w.shape == (2, H, 5, 5)
    for b in range(2):
        allowed = lambda b_, h, i, j, Lq, Lk, n=lengths[b]: j <= i and j < n                  # noqa: E731
        want, want_w = O.multi_head_attention(x[b], x[b], layer, allowed)
        np.testing.assert_allclose(out[b], want, **TOL)
        np.testing.assert_allclose(w[b], want_w, **TOL)


@pytest.mark.parametrize("H, G", [(6, 6), (6, 3), (6, 1)])
def test_cross_attention_matches_oracle(rng, H, G):
    layer = _layer(12, H, G, kdim=7, vdim=7)
    x, ctx = rng.standard_normal((2, 4, 12)), rng.standard_normal((2, 9, 7))
    out = layer(x, context=ctx)
    for b in range(2):
        want, _ = O.multi_head_attention(x[b], ctx[b], layer)
        np.testing.assert_allclose(out[b], want, **TOL)


def test_cross_attention_with_separate_key_and_value_inputs(rng):
    layer = _layer(8, 2, kdim=3, vdim=5)
    x, key_in, value_in = rng.standard_normal((1, 4, 8)), rng.standard_normal((1, 6, 3)), rng.standard_normal((1, 6, 5))
    want, _ = O.multi_head_attention(x[0], key_in[0], layer, value_context=value_in[0])
    np.testing.assert_allclose(layer(x, context=(key_in, value_in))[0], want, **TOL)
    np.testing.assert_allclose(layer(x[0], context=(key_in[0], value_in[0])), want, **TOL)   # unbatched


def test_rope_layer_matches_rotation_oracle(rng):
    layer = _layer(8, 4, 2, rope_base=100.0)
    x = rng.standard_normal((1, 6, 8))
    want, _ = O.multi_head_attention(x[0], x[0], layer, O.causal(), rope_base=100.0)
    np.testing.assert_allclose(layer(x, mask=M.causal())[0], want, **TOL)


def test_head_dim_and_no_bias(rng):
    layer = _layer(6, 4, 2, head_dim=5, bias=False)
    assert layer.w_q.shape == (20, 6) and layer.w_k.shape == (10, 6) and layer.w_o.shape == (6, 20)
    assert layer.b_q is None and layer.b_o is None
    x = rng.standard_normal((3, 6))
    want, _ = O.multi_head_attention(x, x, layer)
    np.testing.assert_allclose(layer(x), want, **TOL)


def test_unbatched_equals_batched_and_float32(rng):
    layer = MultiHeadAttention(8, 2, seed=3)
    assert layer.w_q.dtype == np.float32
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    batched = layer(x, mask=M.causal())
    assert batched.dtype == np.float32
    np.testing.assert_allclose(layer(x[1], mask=M.causal()), batched[1], rtol=1e-6, atol=1e-7)
    w = layer(x[0], return_weights=True)[1]
    assert w.shape == (2, 5, 5)


def test_bias_argument_reaches_the_scores(rng):
    layer = _layer(4, 2)
    x = rng.standard_normal((1, 3, 4))
    bias = np.where(np.tri(3, dtype=bool), 0.0, -np.inf)
    np.testing.assert_allclose(layer(x, bias=bias), layer(x, mask=M.causal()), rtol=1e-15)


def test_seeded_init_and_repr():
    a, b = MultiHeadAttention(8, 4, 2, seed=5), MultiHeadAttention(8, 4, 2, seed=5)
    np.testing.assert_array_equal(a.w_k, b.w_k)
    assert not np.array_equal(a.w_q, MultiHeadAttention(8, 4, 2, seed=6).w_q)
    bound = np.sqrt(6 / (8 + 8))                                               # Xavier uniform for w_q (8, 8)
    assert np.abs(a.w_q).max() <= bound and a.w_k.shape == (4, 8)
    assert repr(a) == "MultiHeadAttention(GQA, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2)"
    assert a.kv_bytes_per_token() == 2 * 2 * 2 * 4 and a.kv_bytes_per_token(itemsize=2) == 16


def test_torch_tensors_through_the_layer(rng):
    layer = _layer(8, 4, 2)
    x = rng.standard_normal((2, 5, 8))
    got = layer(torch.from_numpy(x), mask=M.causal())
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), layer(x, mask=M.causal()), rtol=1e-13, atol=1e-14)


# --- KV cache ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H, G, rope", [(4, 4, None), (4, 2, None), (4, 1, 50.0), (4, 2, 10000.0)])
def test_cache_decoding_equals_full_causal_pass(rng, H, G, rope):
    layer = _layer(8, H, G, rope_base=rope)
    x = rng.standard_normal((2, 9, 8))
    full = layer(x, mask=M.causal())
    cache = KVCache()
    steps = [layer(x[:, :4], mask=M.causal(), cache=cache)]                # prefill 4 tokens
    for t in range(4, 9):                                                  # then one token at a time
        steps.append(layer(x[:, t:t + 1], mask=M.causal(), cache=cache))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, **TOL)
    assert len(cache) == 9 and cache.keys.shape == (2, G, 9, 2)


def test_cache_decoding_with_padding_and_window_masks(rng):
    layer = _layer(8, 4, 2)
    x = rng.standard_normal((2, 7, 8))
    mask = M.causal() & M.sliding_window(3) & M.padding([7, 5])       # right-padded second row
    full = layer(x, mask=mask)
    cache = KVCache()
    steps = [layer(x[:, :2], mask=mask, cache=cache)] + [layer(x[:, t:t + 1], mask=mask, cache=cache)
                                                         for t in range(2, 7)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, **TOL)
    for b, n in enumerate([7, 5]):
        allowed = lambda b_, h, i, j, Lq, Lk, n=n: i - 3 <= j <= i and j < n                  # noqa: E731
        np.testing.assert_allclose(full[b], O.multi_head_attention(x[b], x[b], layer, allowed)[0], **TOL)


def test_cache_sizes_and_growth():
    cache = KVCache()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.bytes_per_token == 0 and cache.keys is None
    k = np.ones((2, 3, 4, 5), np.float32)
    keys, values = cache.append(k, 2 * k)
    assert keys.shape == (2, 3, 4, 5) and (values == 2).all()
    assert cache.nbytes == 2 * (2 * 3 * 4 * 5) * 4 and cache.bytes_per_token == 2 * 2 * 3 * 5 * 4
    for t in range(10):
        cache.append(np.full((2, 3, 1, 5), t, np.float32), np.full((2, 3, 1, 5), -t, np.float32))
    assert len(cache) == 14 and cache.keys.shape == (2, 3, 14, 5)
    np.testing.assert_array_equal(cache.keys[0, 0, 4:, 0], np.arange(10))
    np.testing.assert_array_equal(cache.values[1, 2, 4:, 4], -np.arange(10))
    assert cache.nbytes == 2 * 2 * 3 * 14 * 5 * 4                           # counts tokens, not buffer capacity
    assert repr(cache) == f"KVCache(length=14, nbytes={cache.nbytes})"
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_torch_cache_concatenates(rng):
    cache = KVCache()
    a, b = torch.from_numpy(rng.standard_normal((1, 2, 3, 4))), torch.from_numpy(rng.standard_normal((1, 2, 2, 4)))
    cache.append(a, a)
    keys, _ = cache.append(b, b)
    assert torch.equal(keys, torch.cat([a, b], dim=-2))
    assert cache.nbytes == 2 * 1 * 2 * 5 * 4 * 8


def test_cross_attention_cache_projects_context_once(rng):
    layer = _layer(8, 2, 1)
    x, ctx = rng.standard_normal((1, 3, 8)), rng.standard_normal((1, 6, 8))
    full = layer(x, context=ctx)
    cache = KVCache()
    steps = [layer(x[:, t:t + 1], context=ctx, cache=cache) for t in range(3)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, **TOL)
    assert cache.static and len(cache) == 6                                 # the context, cached once
    again = layer(x[:, :1], context=ctx * 0, cache=cache)                    # documented: cached context wins
    np.testing.assert_allclose(again, steps[0], **TOL)


def test_cache_rejects_mismatched_appends():
    cache = KVCache()
    cache.append(np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"cache holds keys of shape \(\.\.\., 4\) with leading dims \(1, 2\), "
                                         r"got \(1, 3, 1, 4\)"):
        cache.append(np.zeros((1, 3, 1, 4)), np.zeros((1, 3, 1, 4)))
