"""PyTorch autograd bridge: train a CPU model on attnlab's tiled kernel, forward and backward.

``flash_attention(q, k, v, mask=..., score_mod=...)`` is attnlab's ``flash_attention`` on tensors, with gradients:
its forward runs ``attnlab.flash_attention`` and its backward ``attnlab.flash_attention_backward`` (recomputing the
weights tile by tile from the stored log-sum-exp, never the Lq x Lk matrix), both on the tensors' own memory
(``Tensor.numpy()`` shares it: no copies of q, k, v or of the results). ``scaled_dot_product_attention`` takes
``torch.nn.functional.scaled_dot_product_attention``'s arguments, so a model can switch with one import.

Only CPU tensors of dtype float32 or float64 are accepted: a CUDA tensor, another dtype or mixed dtypes raise
TypeError naming the argument; nothing falls back silently to another implementation.

>>> import torch, attnlab
>>> from attnlab.integrations.torch import flash_attention
>>> q, k, v = (torch.randn(2, 4, 16, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
>>> out = flash_attention(q, k, v, mask=attnlab.masks.causal())
>>> out.sum().backward()
>>> ref = torch.nn.functional.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), is_causal=True)
>>> bool(torch.allclose(out.detach(), ref)), tuple(q.grad.shape)
(True, (2, 4, 16, 8))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .. import masks as masks_mod
from ..kernel import flash_attention_backward
from ..kernel import flash_attention as kernel_forward
from ..scores import ScoreMod

DTYPES = (torch.float32, torch.float64)


class Options(NamedTuple):
    """What the forward and backward share besides the tensors: the mask (a Mask, a boolean NumPy array or
    None), the additive bias (a NumPy array or None) and the kernel's settings."""

    mask: object
    bias: object
    scale: float | None
    score_mod: ScoreMod | None
    block_q: int | None
    block_k: int | None
    threads: int | None


class FlashAttentionFunction(torch.autograd.Function):
    """``torch.autograd.Function`` over attnlab's tiled forward and backward: apply(q, k, v, options)."""

    @staticmethod
    def forward(ctx, q, k, v, options: Options):
        out, lse = kernel_forward(q.detach().numpy(), k.detach().numpy(), v.detach().numpy(), options.mask,
                                  scale=options.scale, score_mod=options.score_mod, bias=options.bias,
                                  block_q=options.block_q, block_k=options.block_k, threads=options.threads,
                                  return_lse=True)
        out_t, lse_t = torch.from_numpy(out), torch.from_numpy(lse)
        ctx.save_for_backward(q, k, v, out_t, lse_t)
        ctx.options = options
        ctx.mark_non_differentiable(lse_t)
        return out_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        o = ctx.options
        dout = _tensor(dout, "dout", q.dtype)
        grads = flash_attention_backward(dout.detach().numpy(), q.detach().numpy(), k.detach().numpy(),
                                         v.detach().numpy(), out.numpy(), lse.numpy(), o.mask, scale=o.scale,
                                         score_mod=o.score_mod, bias=o.bias, block_q=o.block_q,
                                         block_k=o.block_k, threads=o.threads)
        return tuple(torch.from_numpy(g) for g in grads) + (None,)


def flash_attention(q, k, v, mask=None, *, scale=None, score_mod=None, bias=None, block_q=None, block_k=None,
                    threads=None):
    """softmax(q k^T * scale [+ bias], masked) @ v on CPU tensors through attnlab's tiled kernel, differentiable
    in q, k and v.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> (..., Lq, Dv), float32 or float64, one dtype; grouped-query
    heads (Hq a multiple of the key/value heads) work without copying k or v. ``mask``: an ``attnlab.masks.Mask``
    or a boolean tensor/array (True = may attend); ``score_mod``: an ``attnlab.scores.ScoreMod`` with a derivative
    (ALiBi, softcap, relative_bias); ``bias``: an additive float tensor/array broadcastable to the scores (it gets
    no gradient: a bias that requires grad raises TypeError).
    """
    q, k, v = (_tensor(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        raise TypeError(f"score_mod must be an attnlab.scores.ScoreMod, got {type(score_mod).__name__}")
    if score_mod is not None and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        score_mod.require_derivative()
    options = Options(_mask(mask), _bias(bias, q.dtype), scale, score_mod, block_q, block_k, threads)
    return FlashAttentionFunction.apply(q, k, v, options)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention``'s signature on attnlab's kernel (CPU, float32/64).

    ``attn_mask``: boolean (True = takes part, as in PyTorch) or float (added to the scores); ``is_causal``: the
    causal mask aligned top-left, as PyTorch does; ``enable_gqa``: allow fewer key/value heads than query heads.
    ``dropout_p`` must be 0 (the kernel has no dropout).
    """
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0: attnlab's kernel has no dropout, got {dropout_p!r}")
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as torch's "
                         "scaled_dot_product_attention)")
    heads_q, heads_kv = (query.shape[-3] if query.dim() >= 3 else 1), (key.shape[-3] if key.dim() >= 3 else 1)
    if heads_q != heads_kv and not enable_gqa:
        raise ValueError(f"query has {heads_q} heads but key has {heads_kv}: pass enable_gqa=True for "
                         f"grouped-query attention")
    mask = bias = None
    if is_causal:
        mask = masks_mod.causal(align="top_left")
    elif attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor, got {type(attn_mask).__name__}")
        if attn_mask.dtype == torch.bool:
            mask = attn_mask
        else:
            bias = attn_mask
    return flash_attention(query, key, value, mask, scale=scale, bias=bias)


def _tensor(x, name, dtype=None):
    """``x`` checked to be a CPU tensor of a dtype the kernel runs (and of ``dtype`` when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise TypeError(f"{name} is on {x.device}: attnlab's kernel runs on the CPU; use "
                        f"torch.nn.functional.scaled_dot_product_attention on {x.device.type}, or move the "
                        f"tensors with .cpu()")
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}: attnlab's kernel supports float32 and float64; cast with "
                        f".float() or .double()")
    if dtype is not None and x.dtype != dtype:
        return x.to(dtype)
    return x


def _mask(mask):
    """A Mask stays a Mask; a boolean tensor or array becomes a boolean NumPy array (a view for CPU tensors)."""
    if mask is None or isinstance(mask, masks_mod.Mask):
        return mask
    if isinstance(mask, torch.Tensor):
        if mask.device.type != "cpu":
            raise TypeError(f"mask is on {mask.device}: attnlab's kernel runs on the CPU")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}; pass an additive float "
                            f"mask as bias=")
        return mask.numpy()
    return np.asarray(mask)


def _bias(bias, dtype):
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        if bias.requires_grad and torch.is_grad_enabled():
            raise TypeError("bias requires grad, but the tiled backward does not return the gradient of a bias "
                            "(a score-sized matrix); use attnlab.attention_backward for it or detach the bias")
        bias = _tensor(bias, "bias", dtype).detach().numpy()
    return bias
