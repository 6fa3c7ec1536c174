"""attnlab against PyTorch: F.scaled_dot_product_attention and nn.MultiheadAttention with the same inputs and
weights. Max abs error <= 1e-5 in float32 and <= 1e-12 in float64, over sizes 1, 7, 97 and 1023.

Causal conventions: PyTorch's ``is_causal=True`` is top-left aligned (query i sees keys 0..i); attnlab's default
``masks.causal()`` is bottom-right aligned (query i sees keys 0..i + Lk - Lq, the KV-cache convention, PyTorch's
``causal_lower_right``). Both are checked explicitly with Lq < Lk and Lq > Lk.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from attnlab import MultiHeadAttention, masks as M, scaled_dot_product_attention

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def _qkv(rng, dtype, B, H, G, Lq, Lk, D, Dv=None):
    q = rng.standard_normal((B, H, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, G, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, G, Lk, Dv or D)).astype(dtype)
    return q, k, v


def _t(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def _close(got, want, dtype):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    assert got.dtype == want.dtype
    err = np.abs(got.astype(np.float64) - want.astype(np.float64)).max() if got.size else 0.0
    assert err <= TOL[dtype], f"max abs error {err:.3g} > {TOL[dtype]:.0e}"


# --- F.scaled_dot_product_attention ----------------------------------------------------------------------------
SIZES = [(1, 1), (7, 7), (97, 97), (1, 97), (7, 97), (97, 7), (1023, 1023), (1, 1023)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq, Lk", SIZES)
def test_sdpa_plain_and_bool_mask(rng, dtype, Lq, Lk):
    B, H = (1, 2) if max(Lq, Lk) > 100 else (2, 3)
    q, k, v = _qkv(rng, dtype, B, H, H, Lq, Lk, 16, 8)
    _close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(*_t(q, k, v)), dtype)
    keep = rng.random((B, 1, Lq, Lk)) < 0.7                        # True = may attend, as in PyTorch's bool mask
    keep[..., 0, :] = False                                        # one fully masked row: both give zeros
    got = scaled_dot_product_attention(q, k, v, keep)
    _close(got, F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=torch.from_numpy(keep)), dtype)
    assert (got[..., 0, :] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq, Lk", [(7, 7), (7, 97), (97, 7), (1023, 1023)])
def test_sdpa_float_mask_is_attnlab_bias(rng, dtype, Lq, Lk):
    q, k, v = _qkv(rng, dtype, 1, 2, 2, Lq, Lk, 8)
    bias = rng.standard_normal((2, Lq, Lk)).astype(dtype) * 3
    bias[:, :, Lk // 2:] = -np.inf                                  # -inf in a float mask blocks, as in PyTorch
    want = F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=torch.from_numpy(bias))
    _close(scaled_dot_product_attention(q, k, v, bias=bias), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_sdpa_scale(rng, dtype, scale):
    q, k, v = _qkv(rng, dtype, 2, 2, 2, 7, 97, 16)
    want = F.scaled_dot_product_attention(*_t(q, k, v), scale=scale)
    _close(scaled_dot_product_attention(q, k, v, scale=scale), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H, G", [(8, 2), (6, 3), (4, 1)])
@pytest.mark.parametrize("Lq, Lk", [(7, 7), (7, 97), (97, 7), (1, 1023)])
def test_sdpa_gqa_matches_enable_gqa(rng, dtype, H, G, Lq, Lk):
    q, k, v = _qkv(rng, dtype, 2, H, G, Lq, Lk, 8, 4)
    keep = rng.random((2, H, Lq, Lk)) < 0.8
    want = F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=torch.from_numpy(keep), enable_gqa=True)
    _close(scaled_dot_product_attention(q, k, v, keep), want, dtype)
    want = F.scaled_dot_product_attention(*_t(q, k, v), enable_gqa=True, scale=0.3)
    _close(scaled_dot_product_attention(q, k, v, scale=0.3), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq, Lk", [(7, 7), (7, 97), (97, 7), (1, 97), (97, 97)])
def test_causal_top_left_is_torch_is_causal(rng, dtype, Lq, Lk):
    q, k, v = _qkv(rng, dtype, 2, 2, 2, Lq, Lk, 8)
    want = F.scaled_dot_product_attention(*_t(q, k, v), is_causal=True)
    _close(scaled_dot_product_attention(q, k, v, M.causal("top_left")), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq, Lk", [(7, 7), (7, 97), (1, 97), (97, 97), (97, 7), (1023, 1023)])
def test_causal_bottom_right_is_torch_lower_right(rng, dtype, Lq, Lk):
    q, k, v = _qkv(rng, dtype, 1, 2, 2, Lq, Lk, 8)
    if Lq <= Lk:
        want = F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=causal_lower_right(Lq, Lk))
    else:                                                          # rows before the first key are fully masked
        lower_right = torch.ones(Lq, Lk, dtype=torch.bool).tril(diagonal=Lk - Lq)
        want = F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=lower_right)
    got = scaled_dot_product_attention(q, k, v, M.causal())
    _close(got, want, dtype)
    if Lq != Lk:                                                    # the two conventions really differ here
        top_left = scaled_dot_product_attention(q, k, v, M.causal("top_left"))
        assert np.abs(top_left - got).max() > 1e-3


# --- nn.MultiheadAttention -------------------------------------------------------------------------------------
def _torch_mha(dtype, d, heads, seed, **kwargs):
    torch.manual_seed(seed)
    module = torch.nn.MultiheadAttention(d, heads, batch_first=True, **kwargs)
    with torch.no_grad():                                  # non-zero biases so that they are really compared
        for name, p in module.named_parameters():
            if "bias" in name:
                p.normal_()
    return module.to(torch.float64 if dtype == np.float64 else torch.float32).eval()


def _torch_weights(module, query, key, value, **kwargs):
    with torch.no_grad():
        return module(*_t(query, key, value), need_weights=True, average_attn_weights=False, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 7, 97])
def test_mha_self_attention(rng, dtype, L):
    module = _torch_mha(dtype, 16, 4, seed=L)
    layer = MultiHeadAttention.from_torch(module)
    x = rng.standard_normal((2, L, 16)).astype(dtype)
    want, want_w = _torch_weights(module, x, x, x)
    got, got_w = layer(x, return_weights=True)
    _close(got, want, dtype)
    _close(got_w, want_w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [7, 97, 1023])
def test_mha_causal_attn_mask(rng, dtype, L):
    module = _torch_mha(dtype, 8, 2, seed=L)
    layer = MultiHeadAttention.from_torch(module)
    x = rng.standard_normal((1, L, 8)).astype(dtype)
    blocked = torch.ones(L, L, dtype=torch.bool).triu(1)                     # PyTorch: True = NOT allowed
    want, _ = _torch_weights(module, x, x, x, attn_mask=blocked)
    _close(layer(x, mask=M.causal()), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [7, 97])
def test_mha_key_padding_mask_is_masks_padding(rng, dtype, L):
    module = _torch_mha(dtype, 12, 3, seed=L)
    layer = MultiHeadAttention.from_torch(module)
    x = rng.standard_normal((3, L, 12)).astype(dtype)
    lengths = [L, max(L // 2, 1), 1]
    ignored = torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]     # PyTorch: True = padding
    want, want_w = _torch_weights(module, x, x, x, key_padding_mask=ignored)
    got, got_w = layer(x, mask=M.padding(lengths), return_weights=True)
    _close(got, want, dtype)
    _close(got_w, want_w, dtype)
    # padding and causal together
    blocked = torch.ones(L, L, dtype=torch.bool).triu(1)
    want, _ = _torch_weights(module, x, x, x, key_padding_mask=ignored, attn_mask=blocked)
    _close(layer(x, mask=M.padding(lengths) & M.causal()), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq, Lk", [(1, 7), (7, 97), (97, 7)])
def test_mha_cross_attention(rng, dtype, Lq, Lk):
    module = _torch_mha(dtype, 16, 4, seed=Lq + Lk)
    layer = MultiHeadAttention.from_torch(module)
    x, ctx = rng.standard_normal((2, Lq, 16)).astype(dtype), rng.standard_normal((2, Lk, 16)).astype(dtype)
    want, want_w = _torch_weights(module, x, ctx, ctx)
    got, got_w = layer(x, context=ctx, return_weights=True)
    _close(got, want, dtype)
    _close(got_w, want_w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kdim, vdim", [(10, 10), (6, 20)])
@pytest.mark.parametrize("Lq, Lk", [(7, 97), (97, 7)])
def test_mha_cross_attention_kdim_vdim(rng, dtype, kdim, vdim, Lq, Lk):
    module = _torch_mha(dtype, 16, 2, seed=kdim * vdim, kdim=kdim, vdim=vdim)
    layer = MultiHeadAttention.from_torch(module)
    assert (layer.kdim, layer.vdim) == (kdim, vdim)
    x = rng.standard_normal((2, Lq, 16)).astype(dtype)
    key_in, value_in = rng.standard_normal((2, Lk, kdim)).astype(dtype), rng.standard_normal((2, Lk, vdim)).astype(
        dtype)
    lengths = [Lk, 3]
    ignored = torch.arange(Lk)[None, :] >= torch.tensor(lengths)[:, None]
    want, _ = _torch_weights(module, x, key_in, value_in, key_padding_mask=ignored)
    _close(layer(x, context=(key_in, value_in), mask=M.padding(lengths)), want, dtype)
    if kdim == vdim:                                                   # one context for keys and values
        want, _ = _torch_weights(module, x, key_in, key_in, key_padding_mask=ignored)
        _close(layer(x, context=key_in, mask=M.padding(lengths)), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq, Lk", [(7, 97), (97, 7)])
def test_mha_cross_attention_causal_both_alignments(rng, dtype, Lq, Lk):
    module = _torch_mha(dtype, 8, 2, seed=3)
    layer = MultiHeadAttention.from_torch(module)
    x, ctx = rng.standard_normal((1, Lq, 8)).astype(dtype), rng.standard_normal((1, Lk, 8)).astype(dtype)
    for align, diagonal in (("top_left", 0), ("bottom_right", Lk - Lq)):
        allowed = torch.ones(Lq, Lk, dtype=torch.bool).tril(diagonal=diagonal)
        seen = allowed.any(-1).numpy()                     # rows with at least one key
        allowed[~allowed.any(-1)] = True                   # nn.MultiheadAttention gives NaN on fully masked rows
        want, _ = _torch_weights(module, x, ctx, ctx, attn_mask=~allowed)
        got = layer(x, context=ctx, mask=M.causal(align))
        _close(got[:, seen], want[:, seen], dtype)
        np.testing.assert_array_equal(got[:, ~seen], np.broadcast_to(layer.b_o, got[:, ~seen].shape))  # 0 @ w_o + b_o


def test_mha_without_bias_and_unbatched_sequence_first(rng):
    module = torch.nn.MultiheadAttention(8, 2, bias=False).double().eval()         # batch_first=False
    layer = MultiHeadAttention.from_torch(module)
    assert layer.b_q is None and layer.b_o is None
    x = rng.standard_normal((5, 3, 8))                                              # (L, B, E)
    with torch.no_grad():
        want, _ = module(*_t(x, x, x))
    got = layer(x.transpose(1, 0, 2))                                               # attnlab is batch-first
    _close(got.transpose(1, 0, 2), want, np.float64)
    _close(layer(x[:, 0]), want[:, 0], np.float64)                                  # (L, E): unbatched


# --- the tiled kernel behind impl="auto" at large sizes, against PyTorch directly ---------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq, Lk", [(7, 97), (97, 7), (1023, 1023)])
def test_tiled_kernel_matches_torch(rng, dtype, Lq, Lk):
    q, k, v = _qkv(rng, dtype, 1, 4, 2, Lq, Lk, 16, 8)
    keep = rng.random((1, 4, Lq, Lk)) < 0.7
    keep[..., 0, :] = False                                                   # a fully masked row: zeros in both
    want = F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=torch.from_numpy(keep), enable_gqa=True)
    _close(scaled_dot_product_attention(q, k, v, keep, impl="tiled"), want, dtype)
    bias = rng.standard_normal((4, Lq, Lk)).astype(dtype)
    want = F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=torch.from_numpy(bias), enable_gqa=True, scale=0.5)
    _close(scaled_dot_product_attention(q, k, v, bias=bias, scale=0.5, impl="tiled"), want, dtype)
    lower_right = torch.ones(Lq, Lk, dtype=torch.bool).tril(diagonal=Lk - Lq)
    want = F.scaled_dot_product_attention(*_t(q, k, v), attn_mask=lower_right, enable_gqa=True)
    _close(scaled_dot_product_attention(q, k, v, M.causal(), impl="tiled"), want, dtype)
