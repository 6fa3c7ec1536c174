"""The reference path: attention written the way the formula reads, forward and backward, and nothing else.

    scores  = score(q, k)                 (..., Lq, Lk)   e.g. q k^T / sqrt(d_k)
    scores += bias; scores = mod(scores)                  ALiBi, soft-capping, relative bias
    weights = softmax(scores where mask)  (..., Lq, Lk)   blocked cells get exactly 0
    output  = weights @ v                 (..., Lq, Dv)

The backward (``attend_backward``), from the gradient dO of the output, per head (Dao 2023, "FlashAttention-2",
section 2.2 / Algorithm 2), P the weights, S the scores before the modifier, Z = mod(S):

    dV    = P^T dO                        (Lk, Dv)
    dP    = dO v^T                        (Lq, Lk)
    Delta = rowsum(dO * O)                (Lq,)       = rowsum(P * dP), the softmax Jacobian's correction
    dZ    = P * (dP - Delta)              (Lq, Lk)    0 wherever P is 0 (blocked cells, fully masked rows)
    dS    = dZ * mod'(S)                  chain rule: 1 for additive modifiers, 1 - tanh^2(S / cap) for soft-capping
    dbias = dS                            summed over the axes the bias was broadcast along
    dq    = dS k * scale,  dk = dS^T q * scale   (dk, dv summed over the query heads of a group: GQA / MQA)

It depends only on the array-API namespace, so it runs on NumPy, PyTorch (gradients flow), array-api-strict and
the rest. It is the specification every fast path (the tiled kernel, KV-cache decoding, ring attention) is tested
against. Which path runs is decided elsewhere (``attnlab.planner``); the public functions live in ``attnlab.api``.

Conventions:

- leading dims broadcast; when q has Hq heads on axis -3 and k/v have G < Hq heads with Hq % G == 0, query head
  h uses key/value head h // (Hq // G) (grouped-query attention; MQA is G = 1) without copying k or v;
- a mask is boolean with True = "may attend", or an ``attnlab.masks.Mask``;
- a query row with nothing to attend to gets output 0 and weights 0 (never NaN), and masked keys never leak a
  NaN/Inf from v; a non-finite value in a key that *is* attended makes that output cell NaN.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from ._array import default_scale, downcast, known_all, upcast
from ._inputs import Prepared, group_heads, resolve_bias, resolve_mask, score_mod_indices, ungroup_heads
from .scores import scaled_dot
from .softmax import logsumexp, softmax


class Attended(NamedTuple):
    """What one reference pass computed, heads ungrouped: out (..., Hq, Lq, Dv); weights (..., Hq, Lq, Lk),
    lse (..., Hq, Lq) and scores (..., Hq, Lq, Lk, scaled, bias and score modifier applied, before the mask)
    when asked for, else None; with the scores, ``mask`` is the resolved boolean mask (broadcastable to the
    scores, True = may attend) or None when nothing is masked."""

    out: object
    weights: object = None
    lse: object = None
    scores: object = None
    mask: object = None


def attend(p: Prepared, scorer, mask=None, bias=None, score_mod=None, *, weights=False, lse=False,
           scores=False) -> Attended:
    """The formula on prepared inputs (``attnlab._inputs.prepare``); ``scorer(q, k)`` gives the raw scores.

    float16/bfloat16 inputs are computed in float32 (``attnlab._array.upcast``) and out, weights and scores come
    back in the input dtype; the log-sum-exp stays float32, as PyTorch's fused kernels return it."""
    xp, dtype = p.xp, p.q.dtype
    p = replace(p, q=upcast(xp, p.q), k=upcast(xp, p.k), v=upcast(xp, p.v))
    s = scorer(p.q, p.k)                                                       # (..., [G, r,] Lq, Lk)
    Lq, Lk = p.scores_shape[-2:]
    if tuple(s.shape[-2:]) != (Lq, Lk):
        raise ValueError(f"the score function returned shape {tuple(s.shape)}, expected (..., Lq={Lq}, "
                         f"Lk={Lk})")
    if bias is not None:
        s = s + group_heads(xp, resolve_bias(bias, p), p.groups)
    if score_mod is not None:
        s = score_mod.apply(s, *score_mod_indices(p), Lq, Lk)
    resolved = resolve_mask(mask, p.scores_shape, xp, p.q) if mask is not None else None
    mask_arr = group_heads(xp, resolved, p.groups) if mask is not None else None
    w = softmax(s, axis=-1, mask=mask_arr)                                     # (..., [G, r,] Lq, Lk)
    out = weighted_sum(xp, w, p.v)                                             # (..., [G, r,] Lq, Dv)
    row_lse = None
    if lse:
        row_lse = ungroup_heads(xp, logsumexp(s, axis=-1, mask=mask_arr, keepdims=True), p.groups)[..., 0]
    return Attended(downcast(xp, ungroup_heads(xp, out, p.groups), dtype),
                    downcast(xp, ungroup_heads(xp, w, p.groups), dtype) if weights else None,
                    row_lse, downcast(xp, ungroup_heads(xp, s, p.groups), dtype) if scores else None,
                    resolved if scores else None)


def weighted_sum(xp, weights, v):
    """weights @ v, where a non-finite value only reaches the rows that put a non-zero weight on it (BLAS turns
    0 * NaN into NaN; a 0 coefficient is a masked cell, which must not see the value). Any signed weights: the
    backward multiplies by dS too. The shortcut for all-finite values is taken only where that can be read
    without evaluating a lazy array (``known_all``), so the function traces under ``jax.jit``."""
    finite = xp.isfinite(v)
    if known_all(xp, finite):
        return xp.matmul(weights, v)
    clean = xp.where(finite, v, xp.zeros_like(v))
    out = xp.matmul(weights, clean)
    reached = xp.matmul(xp.astype(weights != 0, v.dtype), xp.astype(~finite, v.dtype)) > 0   # (..., Lq, Dv)
    return xp.where(reached, xp.full_like(out, xp.nan), out)


# --- the backward ----------------------------------------------------------------------------------------------
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


def attend_backward(p: Prepared, dout, mask=None, bias=None, score_mod=None, scale=None):
    """The gradients of the scaled dot-product formula on prepared NumPy inputs, the whole (..., Lq, Lk)
    matrices held: ``Grads(dq, dk, dv)``, or ``GradsWithBias`` when a bias was given, each summed to the shape of
    its input's prepared layout (``to_input`` brings it back to the input's own shape). dout (..., Hq, Lq, Dv)
    is shaped like the output."""
    dO = group_heads(np, dout, p.groups)                                      # (..., [G, r,] Lq, Dv)
    # the forward, kept whole
    S = scaled_dot(p.q, p.k, scale)                                           # (..., [G, r,] Lq, Lk)
    if bias is not None:
        bias = resolve_bias(bias, p)
        S = S + group_heads(np, bias, p.groups)
    index = score_mod_indices(p)
    Z = S if score_mod is None else score_mod.apply(S, *index, *p.scores_shape[-2:])
    allowed = None if mask is None else group_heads(np, resolve_mask(mask, p.scores_shape, np, p.q), p.groups)
    P = softmax(Z, axis=-1, mask=allowed)                                     # (..., [G, r,] Lq, Lk)
    if allowed is not None:
        P = np.where(allowed, P, 0)                      # exactly 0 on blocked cells, even in a row with NaN
    O = weighted_sum(np, P, p.v)                                              # (..., [G, r,] Lq, Dv)
    # the backward, formula by formula
    dV = weighted_sum(np, np.swapaxes(P, -1, -2), dO)                         # (..., [G, r,] Lk, Dv)
    with np.errstate(invalid="ignore", over="ignore"):    # non-finite values are kept where P is 0 below
        dP = np.matmul(dO, np.swapaxes(p.v, -1, -2))                          # (..., [G, r,] Lq, Lk)
        delta = np.sum(dO * O, axis=-1, keepdims=True)                        # (..., [G, r,] Lq, 1)
        dZ = np.where(P == 0, 0, P * (dP - delta))                            # (..., [G, r,] Lq, Lk)
    dS = dZ
    if score_mod is not None:
        slope = score_mod.derivative(S, Z, *index, *p.scores_shape[-2:])
        dS = dZ if slope is None else np.where(dZ == 0, 0, dZ * slope)        # mod'(S) may be inf where Z = -inf
    scale = default_scale(p.q.shape[-1]) if scale is None else float(scale)
    dQ = weighted_sum(np, dS, p.k) * scale                                    # (..., [G, r,] Lq, D)
    dK = weighted_sum(np, np.swapaxes(dS, -1, -2), p.q) * scale               # (..., [G, r,] Lk, D)
    grads = Grads(sum_to_shape(dQ, p.q.shape), sum_to_shape(dK, p.k.shape), sum_to_shape(dV, p.v.shape))
    if bias is None:
        return grads
    return GradsWithBias(*grads, dbias=sum_to_shape(ungroup_heads(np, dS, p.groups), bias.shape))


def sum_to_shape(x, shape):
    """Sum ``x`` over the axes it was broadcast along to reach it from ``shape`` (the inverse of broadcasting)."""
    extra = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(extra))) if extra else x
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def to_input(grad, layout_shape, shape):
    """A gradient computed in a broadcast layout, summed to the input's ``layout_shape`` (a view of the input,
    as ``prepare`` or the kernel's layout hold it) and reshaped to the input's own ``shape``."""
    return np.ascontiguousarray(sum_to_shape(grad, layout_shape).reshape(shape))
