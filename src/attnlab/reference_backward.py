"""The readable backward: the gradient of softmax attention written the way the formulas read.

Forward (per head; ``attnlab.scaled_dot_product_attention``):

    S = q k^T * scale  (+ bias)          (Lq, Lk)
    Z = mod(S)                           ALiBi / relative bias add a term; soft-capping is cap * tanh(S / cap)
    P = softmax(Z where mask)            (Lq, Lk)   blocked cells get exactly 0
    O = P v                              (Lq, Dv)

Backward, from the gradient dO of the output (Dao 2023, FlashAttention-2, section 2.2 / Algorithm 2):

    dV = P^T dO                          (Lk, Dv)
    dP = dO v^T                          (Lq, Lk)
    Delta = rowsum(dO * O)               (Lq,)      = rowsum(P * dP), the softmax Jacobian's correction
    dZ = P * (dP - Delta)                (Lq, Lk)   0 wherever P is 0 (blocked cells, fully masked rows)
    dS = dZ * mod'(S)                    chain rule: 1 for additive modifiers, 1 - tanh^2(S / cap) for soft-capping
    dbias = dS                           summed over the axes the bias was broadcast along
    dq = dS k * scale                    (Lq, D)
    dk = dS^T q * scale                  (Lk, D)    summed over the query heads of a group (GQA / MQA)

This module holds the whole (..., Lq, Lk) matrices: it is the specification the tiled backward
(``attnlab.flash_attention_backward``) is tested against, not a path for long sequences. NumPy, float32 or
float64.

>>> import numpy as np
>>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((3, 2)) for _ in range(3))
>>> dq, dk, dv = attention_backward(np.ones((3, 2)), q, k, v)
>>> dv.sum(axis=0).round(6).tolist()                  # each row of P sums to 1, so dV's rows sum to dO's
[3.0, 3.0]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._array import as_array, default_scale, is_real_number
from .attention import _merge_heads, _prepare, _resolve_bias, _score_mod_indices, _split_heads, resolve_mask
from .scores import ScoreMod, scaled_dot
from .softmax import softmax


class Grads(NamedTuple):
    """Gradients of attention with respect to its inputs, each shaped like its input."""

    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray


class GradsWithBias(NamedTuple):
    """Gradients of attention with an additive bias: ``dbias`` is shaped like the bias that was given."""

    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    dbias: np.ndarray


def attention_backward(dout, q, k, v, mask=None, *, scale=None, bias=None, score_mod=None):
    """Gradients of ``scaled_dot_product_attention(q, k, v, mask, scale=, bias=, score_mod=)`` given dout.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), dout (..., Lq, Dv) shaped like the output; leading dims,
    grouped-query heads, masks, bias and score modifiers as in the forward. Returns ``Grads(dq, dk, dv)``, or
    ``GradsWithBias(dq, dk, dv, dbias)`` when a bias was given; each gradient has its input's shape (summed over
    the axes the input was broadcast along). A fully masked row has zero gradients; a masked key gets dk = dv = 0
    and its values, even NaN, reach no gradient.
    """
    p = _prepare(q, k, v, "attention_backward")
    if not all(isinstance(x, np.ndarray) for x in (p.q, p.k, p.v)):
        raise TypeError(f"attention_backward runs on NumPy arrays, got {type(p.q).__module__}."
                        f"{type(p.q).__name__}; use torch autograd for tensors")
    if p.k.shape[-1] != p.q.shape[-1]:
        raise ValueError(f"key has head dim {p.k.shape[-1]} but query has {p.q.shape[-1]}")
    if scale is not None and not is_real_number(scale):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        raise TypeError(f"score_mod must be an attnlab.scores.ScoreMod, got {type(score_mod).__name__}")
    out_shape = p.scores_shape[:-1] + (p.v.shape[-1],)
    dout = as_array(dout, "dout")
    if not isinstance(dout, np.ndarray) or tuple(dout.shape) != out_shape:
        raise ValueError(f"dout must be a NumPy array shaped like the output {out_shape}, got "
                         f"{type(dout).__name__} of shape {tuple(getattr(dout, 'shape', ()))}")
    dtype = p.q.dtype
    dO = _split_heads(np, dout.astype(dtype, copy=False), p.groups)          # (..., [G, r,] Lq, Dv)

    # the forward, kept whole
    scale = default_scale(p.q.shape[-1]) if scale is None else float(scale)
    S = scaled_dot(p.q, p.k, scale)                                           # (..., [G, r,] Lq, Lk)
    bias_arr = None if bias is None else _resolve_bias(bias, p)
    if bias_arr is not None:
        S = S + _split_heads(np, bias_arr, p.groups)
    index = _score_mod_indices(p)
    Z = S if score_mod is None else score_mod.apply(S, *index, *p.scores_shape[-2:])
    allowed = None if mask is None else _split_heads(np, resolve_mask(mask, p.scores_shape, np, p.q), p.groups)
    P = softmax(Z, axis=-1, mask=allowed)                                     # (..., [G, r,] Lq, Lk)
    if allowed is not None:
        P = np.where(allowed, P, 0)                      # exactly 0 on blocked cells, even in a row with NaN
    O = product(P, p.v)                                                       # (..., [G, r,] Lq, Dv)

    # the backward, formula by formula
    dV = product(np.swapaxes(P, -1, -2), dO)                                  # (..., [G, r,] Lk, Dv)
    with np.errstate(invalid="ignore", over="ignore"):    # non-finite values are kept where P is 0 below
        dP = np.matmul(dO, np.swapaxes(p.v, -1, -2))                          # (..., [G, r,] Lq, Lk)
        delta = np.sum(dO * O, axis=-1, keepdims=True)                        # (..., [G, r,] Lq, 1)
        dZ = np.where(P == 0, 0, P * (dP - delta))                            # (..., [G, r,] Lq, Lk)
    dS = dZ
    if score_mod is not None:
        slope = score_mod.derivative(S, Z, *index, *p.scores_shape[-2:])
        dS = dZ if slope is None else np.where(dZ == 0, 0, dZ * slope)        # mod'(S) may be inf where Z = -inf
    dQ = product(dS, p.k) * scale                                             # (..., [G, r,] Lq, D)
    dK = product(np.swapaxes(dS, -1, -2), p.q) * scale                        # (..., [G, r,] Lk, D)

    grads = Grads(dq=_to_input(dQ, p.q.shape, np.shape(q)), dk=_to_input(dK, p.k.shape, np.shape(k)),
                  dv=_to_input(dV, p.v.shape, np.shape(v)))
    if bias is None:
        return grads
    return GradsWithBias(*grads, dbias=_to_input(_merge_heads(np, dS, p.groups), bias_arr.shape, bias_arr.shape))


def product(a, b):
    """a @ b where a non-finite value of b only reaches the outputs whose row of ``a`` is non-zero on it.

    BLAS turns 0 * NaN into NaN; in attention a 0 coefficient is a masked cell, which must not see the value."""
    bad = ~np.isfinite(b)
    if not bad.any():
        return np.matmul(a, b)
    out = np.matmul(a, np.where(bad, 0, b))
    reached = np.matmul((a != 0).astype(b.dtype), bad.astype(b.dtype)) > 0
    return np.where(reached, np.nan, out)


def sum_to_shape(x, shape):
    """Sum ``x`` over the axes it was broadcast along to reach it from ``shape`` (the inverse of broadcasting)."""
    extra = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(extra))) if extra else x
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def _to_input(grad, layout_shape, shape):
    """A gradient computed in the grouped, broadcast layout, summed to the input's layout and reshaped to it."""
    return np.ascontiguousarray(sum_to_shape(grad, layout_shape).reshape(shape))
