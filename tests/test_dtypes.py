"""Every dtype PyTorch users have: float16/bfloat16 tensors (and NumPy float16) on every public function,
computed in float32 and returned in the input dtype, with error within flash-attention's rule: at most 2x
PyTorch's own error for that dtype against a float64 reference (the oracle). Gradients flow."""

import numpy as np
import pytest
import torch

import attnlab
from attnlab import masks, scores

LOW = [torch.float16, torch.bfloat16]


def _qkv(dtype, shape=(2, 4, 48, 32), seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad) for _ in range(3)]


def _err(x, ref):
    return (x.detach().double() - ref).abs().max().item()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_error_within_twice_torch(dtype, causal):
    q, k, v = _qkv(dtype)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    ours = attnlab.scaled_dot_product_attention(q, k, v, mask=masks.causal() if causal else None)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert ours.dtype == dtype
    assert _err(ours, ref) <= 2 * _err(theirs, ref)
    assert _err(ours, ref) > 0          # the result really is in the low-precision dtype


@pytest.mark.parametrize("dtype", LOW)
def test_score_modifiers_and_scorers_run_in_low_precision(dtype):
    q, k, v = _qkv(dtype, (1, 4, 16, 8))
    q64, k64, v64 = (x.double() for x in (q, k, v))
    for mod in (scores.alibi(4), scores.softcap(5.0), scores.relative_bias(np.ones((4, 5)) * 0.1)):
        ours = attnlab.scaled_dot_product_attention(q, k, v, score_mod=mod)
        ref = attnlab.scaled_dot_product_attention(q64, k64, v64, score_mod=mod)
        assert ours.dtype == dtype and _err(ours, ref) < (2e-2 if dtype == torch.bfloat16 else 3e-3), mod.name
    out = attnlab.attention(q, k, v, "dot", score_mod=scores.alibi(4))
    assert out.dtype == dtype
    rot = scores.rotary(q)
    assert rot.dtype == dtype and _err(rot, scores.rotary(q64)) < 5e-2


@pytest.mark.parametrize("dtype", LOW)
def test_weights_lse_and_softmax_dtypes(dtype):
    q, k, v = _qkv(dtype, (1, 2, 8, 4))
    out, w, lse = attnlab.scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True)
    assert (out.dtype, w.dtype, lse.dtype) == (dtype, dtype, torch.float32)     # lse stays float32, as in torch
    x = torch.randn(3, 7, dtype=torch.float64)
    sm = attnlab.softmax(x.to(dtype))
    assert sm.dtype == dtype
    assert _err(sm, torch.softmax(x.to(dtype).double(), -1)) <= 2 * _err(torch.softmax(x.to(dtype), -1),
                                                                            torch.softmax(x.to(dtype).double(), -1))
    assert attnlab.logsumexp(x.to(dtype)).dtype == dtype


@pytest.mark.parametrize("dtype", LOW)
def test_gradients_flow_and_match_float64(dtype):
    q, k, v = _qkv(dtype, (1, 2, 16, 8), grad=True)
    attnlab.scaled_dot_product_attention(q, k, v, mask=masks.causal()).sum().backward()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, is_causal=True).sum().backward()
    tol = 5e-2 if dtype == torch.bfloat16 else 5e-3
    for a, b in ((q, q64), (k, k64), (v, v64)):
        assert a.grad.dtype == dtype and _err(a.grad, b.grad) < tol


def test_numpy_float16_accumulates_in_float32():
    """Before: float16 was computed in float16 (1.5-3.5x PyTorch's error). Now float32 inside, float16 out."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 64, 32)).astype(np.float16) for _ in range(3))
    ref = attnlab.scaled_dot_product_attention(*(x.astype(np.float64) for x in (q, k, v)))
    ours = attnlab.scaled_dot_product_attention(q, k, v)
    theirs = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(x) for x in (q, k, v)))
    assert ours.dtype == np.float16
    assert np.abs(ours.astype(np.float64) - ref).max() <= 2 * (theirs.double().numpy() - ref).__abs__().max()


@pytest.mark.parametrize("dtype", LOW)
def test_multi_head_attention_layer(dtype):
    """The layer's NumPy float32 weights are cast to the input's dtype; float64 the oracle."""
    layer = attnlab.MultiHeadAttention(16, 4, n_kv_heads=2, seed=0)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    ref = layer(x)
    out = layer(x.to(dtype).requires_grad_())
    assert out.dtype == dtype and _err(out, ref) < (5e-2 if dtype == torch.bfloat16 else 5e-3)


def test_plan_counts_float32_bytes_for_half_inputs():
    half = attnlab.plan((1, 1, 256, 64), (1, 1, 256, 64), dtype="float16", impl="reference")
    full = attnlab.plan((1, 1, 256, 64), (1, 1, 256, 64), dtype="float32", impl="reference")
    assert half.reference_bytes == full.reference_bytes


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", torch.bfloat16, torch.float16])
def test_plan_takes_every_half_dtype_and_counts_float32_accumulation(dtype):
    """Before: plan(dtype="bfloat16") raised (np.dtype). The oracle: the plan decided on real torch tensors of
    that dtype (the planner's own path for them) and the float32 plan's bytes (the reference upcasts)."""
    from attnlab import planner
    from attnlab._inputs import prepare

    shape, big = (1, 2, 256, 64), (1, 8, 2048, 64)
    half = attnlab.plan(shape, shape, dtype=dtype, numpy=False, mask=masks.causal())
    tensors = [torch.zeros(shape, dtype=dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype))] * 3
    real = planner.decide(prepare(*tensors, "test"), masks.causal(), numpy=False)
    full = attnlab.plan(shape, shape, dtype="float32", numpy=False, mask=masks.causal())
    double = attnlab.plan(shape, shape, dtype="float64", numpy=False, mask=masks.causal())
    name = str(dtype).split(".")[-1]
    assert (half.impl, half.dtype, half.reference_bytes) == (real.impl, real.dtype, real.reference_bytes)
    assert half.dtype == name and half.reference_bytes == full.reference_bytes == double.reference_bytes // 2
    assert half.reference_bytes == 4 * 256 * 256 * 2 * 4          # REFERENCE_LIVE with a mask x scores x 4 bytes
    assert f"supports float32 and float64, not {name}" in attnlab.plan(shape, shape, dtype=dtype, impl="tiled").reason
    # a budget that 2-byte scores would fit but float32 accumulation does not: no path for non-NumPy inputs
    need = attnlab.plan(big, big, dtype="float32", numpy=False).reference_bytes
    assert attnlab.plan(big, big, dtype=dtype, numpy=False, budget=need - 1).impl is None
    assert attnlab.plan(big, big, dtype=dtype, numpy=False, budget=need).impl == "reference"


def test_plan_rejects_a_dtype_that_is_not_floating():
    for bad in ("int32", "complex64", "nonsense", torch.int8):
        with pytest.raises(ValueError, match="dtype must be a floating dtype"):
            attnlab.plan((1, 4, 2), (1, 4, 2), dtype=bad)
