"""The PyTorch autograd bridge: gradients by finite differences (gradcheck, float64), parity with SDPA, zero copies,
and clear errors for what the kernel does not run."""

import numpy as np
import pytest
import torch

import attnlab
from attnlab import masks as M, scores
from attnlab.integrations import torch as bridge


def _qkv(B, H, G, Lq, Lk, D=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=dtype, requires_grad=True)
    return make(B, H, Lq, D), make(B, G, Lk, D), make(B, G, Lk, D)


@pytest.mark.parametrize("mask,score_mod,heads", [
    (None, None, (2, 2)),
    (M.causal(), None, (4, 2)),
    (M.sliding_window(2), scores.softcap(1.5), (4, 1)),
    (M.causal(), scores.alibi(4), (4, 4)),
])
def test_gradcheck_float64(mask, score_mod, heads):
    q, k, v = _qkv(1, heads[0], heads[1], 6, 7)
    fn = lambda q, k, v: bridge.flash_attention(q, k, v, mask, score_mod=score_mod, block_q=2, block_k=3)
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8)


def test_bool_mask_tensor_and_bias_through_gradcheck():
    q, k, v = _qkv(2, 2, 2, 5, 6)
    allowed = torch.rand(2, 2, 5, 6, generator=torch.Generator().manual_seed(1)) < 0.7
    allowed[..., 0] = True
    bias = torch.randn(2, 1, 6, dtype=torch.float64)
    fn = lambda q, k, v: bridge.flash_attention(q, k, v, allowed, bias=bias, block_q=2, block_k=4)
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_drop_in_sdpa_matches_torch(dtype, tol):
    q, k, v = _qkv(2, 8, 2, 33, 33, D=16, dtype=dtype)
    grads = []
    for sdpa in (bridge.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention):
        out = sdpa(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
        grads.append((out.detach().clone(),) + torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    for ours, theirs in zip(*grads):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, rtol=0, atol=tol)
    float_mask = torch.randn(33, 33, dtype=dtype)
    a = bridge.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, enable_gqa=True)
    b = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, enable_gqa=True)
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_fully_masked_rows_get_zero_finite_gradients():
    q, k, v = _qkv(2, 2, 2, 6, 6)
    mask = M.padding([6, 3], q_lengths=[6, 2])                 # batch 1: query rows 2.. see nothing
    out = bridge.flash_attention(q, k, v, mask, block_q=4, block_k=4)
    out.sum().backward()
    assert not out[1, :, 2:].any() and not q.grad[1, :, 2:].any()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    allowed = torch.from_numpy(M.materialize(mask, 6, 6, batch=2, heads=2))
    sees = allowed.any(-1, keepdim=True)                       # (2, 2, 6, 1)
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, attn_mask=allowed | ~sees)
    (ref * sees).sum().backward()                              # SDPA's empty rows are NaN: let them see all, weight 0
    for ours, theirs in zip((q, k, v), (q2, k2, v2)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-10)


def test_no_copies_of_the_inputs(monkeypatch):
    q, k, v = _qkv(1, 2, 2, 8, 8, dtype=torch.float32)
    seen = {}
    forward, backward = bridge.kernel_forward, bridge.flash_attention_backward

    def spy_forward(*arrays, **kw):
        seen["forward"] = [a.ctypes.data for a in arrays[:3]]
        return forward(*arrays, **kw)

    def spy_backward(dout, q_, k_, v_, out, lse, *a, **kw):
        seen["backward"] = [x.ctypes.data for x in (q_, k_, v_)]
        grads = backward(dout, q_, k_, v_, out, lse, *a, **kw)
        seen["grads"] = [g.ctypes.data for g in grads]
        return grads

    monkeypatch.setattr(bridge, "kernel_forward", spy_forward)
    monkeypatch.setattr(bridge, "flash_attention_backward", spy_backward)
    out = bridge.flash_attention(q, k, v, M.causal())
    out.sum().backward()
    pointers = [x.data_ptr() for x in (q, k, v)]
    assert seen["forward"] == pointers and seen["backward"] == pointers
    assert [x.grad.data_ptr() for x in (q, k, v)] == seen["grads"]     # the kernel's arrays become the grads


def test_unsupported_tensors_raise_clearly():
    q, k, v = _qkv(1, 2, 2, 4, 4)
    with pytest.raises(TypeError, match="q is on meta: attnlab's kernel runs on the CPU"):
        bridge.flash_attention(q.to("meta"), k, v)
    with pytest.raises(TypeError, match="k has dtype torch.float16: attnlab's kernel supports float32 and float64"):
        bridge.flash_attention(q, k.half(), v)
    with pytest.raises(TypeError, match="must share one dtype"):
        bridge.flash_attention(q, k, v.float())
    with pytest.raises(TypeError, match="has no derivative"):
        bridge.flash_attention(q, k, v, score_mod=scores.score_mod(lambda s, b, h, i, j: s, name="same"))
    with pytest.raises(TypeError, match="bias requires grad"):
        bridge.flash_attention(q, k, v, bias=torch.zeros(4, 4, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ValueError, match="dropout_p must be 0"):
        bridge.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        bridge.scaled_dot_product_attention(q, k[:, :1], v[:, :1])


def test_importing_attnlab_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, attnlab, attnlab.integrations; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
