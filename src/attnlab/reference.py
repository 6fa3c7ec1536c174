"""The reference path: attention written the way the formula reads, and nothing else.

    scores  = score(q, k)                 (..., Lq, Lk)   e.g. q k^T / sqrt(d_k)
    scores += bias; scores = mod(scores)                  ALiBi, soft-capping, relative bias
    weights = softmax(scores where mask)  (..., Lq, Lk)   blocked cells get exactly 0
    output  = weights @ v                 (..., Lq, Dv)

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

from typing import NamedTuple

from ._inputs import Prepared, group_heads, resolve_bias, resolve_mask, score_mod_indices, ungroup_heads
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
    """The formula on prepared inputs (``attnlab._inputs.prepare``); ``scorer(q, k)`` gives the raw scores."""
    xp = p.xp
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
    return Attended(ungroup_heads(xp, out, p.groups), ungroup_heads(xp, w, p.groups) if weights else None,
                    row_lse, ungroup_heads(xp, s, p.groups) if scores else None, resolved if scores else None)


def weighted_sum(xp, weights, v):
    """weights @ v, where a non-finite value only reaches the rows that put weight on it."""
    finite = xp.isfinite(v)
    if bool(xp.all(finite)):
        return xp.matmul(weights, v)
    clean = xp.where(finite, v, xp.zeros_like(v))
    out = xp.matmul(weights, clean)
    reached = xp.matmul(xp.astype(weights > 0, v.dtype), xp.astype(~finite, v.dtype)) > 0   # (..., Lq, Dv)
    return xp.where(reached, xp.full_like(out, xp.nan), out)
