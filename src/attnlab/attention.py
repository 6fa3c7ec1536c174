"""The reference path: attention written the way the formula reads.

    scores  = score(q, k)                 (..., Lq, Lk)   e.g. q k^T / sqrt(d_k)
    scores += bias; scores = mod(scores)                  ALiBi, soft-capping, relative bias
    weights = softmax(scores where mask)  (..., Lq, Lk)   blocked cells get exactly 0
    output  = weights @ v                 (..., Lq, Dv)

It depends only on the array-API namespace, so it runs on NumPy, PyTorch (gradients flow), array-api-strict and
the rest. It is the specification every fast path (the tiled kernel, KV-cache decoding, ring attention) is tested
against.

Conventions shared by every function here:

- leading dims broadcast; when q has Hq heads on axis -3 and k/v have G < Hq heads with Hq % G == 0, query head
  h uses key/value head h // (Hq // G) (grouped-query attention; MQA is G = 1) without copying k or v;
- a mask is boolean with True = "may attend", or an ``attnlab.masks.Mask``;
- a query row with nothing to attend to gets output 0 and weights 0 (never NaN), and masked keys never leak a
  NaN/Inf from v; a non-finite value in a key that *is* attended makes that output cell NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import masks as masks_mod
from ._array import (as_array, broadcast_shapes, is_real_number, namespace, require_floating, require_ndim,
                     to_namespace, to_numpy)
from .scores import ScoreMod, get_scorer, scaled_dot
from .softmax import logsumexp, softmax


def scaled_dot_product_attention(q, k, v, mask=None, *, scale=None, bias=None, score_mod=None,
                                 return_weights=False, return_lse=False, impl="auto"):
    """softmax(q k^T * scale + bias, masked) @ v.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> output (..., Lq, Dv) [, weights (..., Lq, Lk)].
    ``scale`` defaults to 1/sqrt(D). ``bias``: additive float array broadcastable to the scores.
    ``score_mod``: an ``attnlab.scores.ScoreMod`` (ALiBi, softcap, ...).
    ``return_lse``: also return the log-sum-exp of each row's (masked) scores, (..., Lq), -inf for a row with
    nothing to attend to; ``attnlab.merge_attention`` combines partial results with it.
    Returns ``output``, then ``weights`` if asked, then ``lse`` if asked.
    ``impl``: "reference" (this module), "tiled" (``attnlab.flash_attention``: NumPy float32/float64, no full
    weights) or "auto", which picks by size and never lets the reference path exceed
    ``attnlab.planner.MEMORY_BUDGET``; ``attnlab.plan(...)`` explains the choice.

    Edge cases (tested in tests/test_errors.py):

    - q, k, v must share one real floating dtype: mixed dtypes and integer inputs raise TypeError (cast first);
      arrays from different libraries raise TypeError.
    - an empty key sequence (Lk = 0) gives output zeros (..., Lq, Dv), weights (..., Lq, 0) and lse -inf;
      Lq = 0 gives an empty output.
    - a fully masked query row gives output 0, weights 0 and lse -inf, never NaN; a bias of -inf masks like
      ``mask`` False does.
    - NaN/Inf in a masked key or value never reaches the output. A non-finite value v[j, c] makes out[i, c] NaN
      exactly in the rows i that give key j a non-zero weight; NaN in query row i makes only row i NaN; NaN in an
      attended key j makes every row that attends to j NaN.

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]]); k = np.array([[1.0, 0.0], [0.0, 1.0]]); v = np.array([[1.0], [3.0]])
    >>> out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    >>> w.round(4), out.round(4)
    (array([[0.6698, 0.3302]]), array([[1.6605]]))
    """
    p = _prepare(q, k, v, "scaled_dot_product_attention")
    if p.k.shape[-1] != p.q.shape[-1]:
        raise ValueError(f"key has head dim {p.k.shape[-1]} but query has {p.q.shape[-1]}")
    if scale is not None and not is_real_number(scale):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    from . import planner        # imported here: the planner and the kernel build on this module

    chosen = planner.decide(p, mask, impl=impl, return_weights=return_weights, count_tiles=False,
                            numpy=all(isinstance(x, np.ndarray) for x in (p.q, p.k, p.v))).require()
    if chosen == "tiled":
        from .flash import flash_attention

        return flash_attention(q, k, v, mask, scale=scale, bias_fn=score_mod, bias=bias, return_lse=return_lse)
    return _attend(p, lambda q_, k_: scaled_dot(q_, k_, scale), mask, bias, score_mod, return_weights, return_lse)


def attention(q, k, v, score="scaled_dot", mask=None, *, bias=None, score_mod=None, return_weights=False,
              **score_params):
    """Attention with any scorer: "dot", "scaled_dot" (``scale=``), "general" (``weight=`` of shape (Dq, Dk)),
    "additive" (``w_q=, w_k=, w_v=``) or a callable (q, k) -> scores (..., Lq, Lk).

    Shapes, masks, GQA and edge cases (dtypes, Lk = 0, fully masked rows, NaN/Inf) as in
    ``scaled_dot_product_attention``.
    """
    p = _prepare(q, k, v, "attention")
    if isinstance(score, str) and score in ("dot", "scaled_dot") and p.k.shape[-1] != p.q.shape[-1]:
        raise ValueError(f"key has head dim {p.k.shape[-1]} but query has {p.q.shape[-1]}")
    params = {name: as_array(value, name) if name != "scale" else value for name, value in score_params.items()}
    return _attend(p, get_scorer(score, **params), mask, bias, score_mod, return_weights)


def additive_attention(q, k, v, w_q, w_k, w_v, mask=None, *, return_weights=False):
    """Bahdanau (additive) attention: scores w_v . tanh(W_q q + W_k k) (Bahdanau et al. 2015, eq. 6 / A.1.2).

    q (..., Lq, Dq), k (..., Lk, Dk), v (..., Lk, Dv), w_q (A, Dq), w_k (A, Dk), w_v (A,).
    """
    return attention(q, k, v, "additive", mask, return_weights=return_weights,
                     w_q=w_q, w_k=w_k, w_v=w_v)


# --- the pieces ------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    xp: object
    q: object
    k: object
    v: object
    groups: int            # r = Hq // G query heads per key/value head; 1 when there is no grouping
    scores_shape: tuple    # (..., Hq, Lq, Lk) before grouping


def _prepare(q, k, v, fn_name) -> _Prepared:
    q, k, v = as_array(q, "query"), as_array(k, "key"), as_array(v, "value")
    xp = namespace(q, k, v)
    for x, name, what in ((q, "query", "(..., Lq, D)"), (k, "key", "(..., Lk, D)"), (v, "value", "(..., Lk, Dv)")):
        require_ndim(x, name, 2, what)
        require_floating(xp, x, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{fn_name}: query, key and value must share one dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}; cast them first")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"value has {v.shape[-2]} positions but key has {k.shape[-2]}")
    try:
        broadcast_shapes(k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"key leading dims {tuple(k.shape[:-2])} and value leading dims {tuple(v.shape[:-2])} "
                         f"do not broadcast") from None
    groups = _query_groups(q, k)
    lead = _broadcast_lead(q, k, v, groups)
    scores_shape = lead + (q.shape[-2], k.shape[-2])
    if groups > 1:
        G = k.shape[-3]
        q = xp.reshape(q, q.shape[:-3] + (G, groups) + q.shape[-2:])    # (..., G, r, Lq, D)
        k, v = xp.expand_dims(k, axis=-3), xp.expand_dims(v, axis=-3)     # (..., G, 1, Lk, D)
    return _Prepared(xp, q, k, v, groups, scores_shape)


def _query_groups(q, k) -> int:
    """Query heads per key/value head (GQA); 1 when the head axes simply broadcast."""
    if q.ndim < 3 or k.ndim < 3:
        return 1
    Hq, G = q.shape[-3], k.shape[-3]
    if Hq == G or G == 1 or Hq == 1:
        return 1
    if Hq % G:
        raise ValueError(f"query has {Hq} heads but key/value have {G}: for grouped-query attention the query "
                         f"heads must be a multiple of the key/value heads")
    return Hq // G


def _broadcast_lead(q, k, v, groups) -> tuple:
    q_lead = q.shape[:-2]
    k_lead = k.shape[:-2] if groups == 1 else k.shape[:-3] + (q.shape[-3],)
    try:
        return broadcast_shapes(q_lead, k_lead, v.shape[:-2] if groups == 1 else k_lead)
    except ValueError:
        raise ValueError(f"leading dims of query {tuple(q_lead)}, key {tuple(k.shape[:-2])} and value "
                         f"{tuple(v.shape[:-2])} do not broadcast") from None


def _split_heads(xp, x, groups):
    """Bring an array shaped like the scores (..., Hq, Lq, Lk) into the grouped layout (..., G, r, Lq, Lk)."""
    if groups == 1:
        return x
    if x.ndim < 3 or x.shape[-3] == 1:
        return xp.expand_dims(x, axis=-3) if x.ndim >= 3 else x
    return xp.reshape(x, x.shape[:-3] + (x.shape[-3] // groups, groups) + x.shape[-2:])


def _merge_heads(xp, x, groups):
    """Inverse of the grouping: (..., G, r, L, X) -> (..., G * r, L, X)."""
    if groups == 1:
        return x
    return xp.reshape(x, x.shape[:-4] + (x.shape[-4] * x.shape[-3],) + x.shape[-2:])


def resolve_mask(mask, scores_shape, xp, like, name="mask"):
    """A mask argument (bool array or Mask) as a boolean array in ``xp`` broadcastable to ``scores_shape``."""
    if mask is None:
        return None
    Lq, Lk = scores_shape[-2:]
    if isinstance(mask, masks_mod.Mask):
        batch = scores_shape[-4] if len(scores_shape) >= 4 else None
        heads = scores_shape[-3] if len(scores_shape) >= 3 else None
        if len(scores_shape) == 3 and mask.heads is None:   # (B, Lq, Lk): axis -3 is the batch
            batch, heads = heads, None
        arr = mask.to_array(Lq, Lk, batch=batch, heads=heads)
        if arr.ndim == 4 and len(scores_shape) < 4:
            drop = 1 if mask.heads is None else 0               # drop the axis the scores do not have
            if arr.shape[drop] != 1:
                raise ValueError(f"{name} {mask.name} depends on batch and head, but the scores "
                                 f"{tuple(scores_shape)} have no batch axis")
            arr = arr[:, 0] if drop == 1 else arr[0]
        while arr.ndim > len(scores_shape) and arr.shape[0] == 1:
            arr = arr[0]                                          # padding([n]) on unbatched (Lq, Lk) scores
        mask = to_namespace(arr, xp, like)
    else:
        mask = as_array(mask, name)
        if namespace(mask) is not xp:
            mask = to_namespace(to_numpy(mask), xp, like)
        if mask.dtype != xp.bool:
            raise TypeError(f"{name} must be boolean with True = may attend, got dtype {mask.dtype}; "
                            f"pass an additive float mask as bias=")
    try:
        broadcast_shapes(mask.shape, scores_shape)
        if broadcast_shapes(mask.shape, scores_shape) != tuple(scores_shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to scores "
                         f"{tuple(scores_shape)}") from None
    return mask


def _resolve_bias(bias, p: _Prepared):
    bias = as_array(bias, "bias")
    xp = p.xp
    if namespace(bias) is not xp:
        bias = to_namespace(to_numpy(bias), xp, p.q)
    if not xp.isdtype(bias.dtype, "real floating"):
        raise TypeError(f"bias must be a floating array added to the scores, got dtype {bias.dtype}; "
                        f"pass boolean masks as mask=")
    try:
        fits = broadcast_shapes(bias.shape, p.scores_shape) == tuple(p.scores_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not broadcast to scores {p.scores_shape}")
    return xp.astype(bias, p.q.dtype)


def _score_mod_indices(p: _Prepared):
    """b, h, q_idx, kv_idx index arrays for a ScoreMod on the full score matrix (grouped layout)."""
    shape = p.scores_shape
    Lq, Lk = shape[-2:]
    h = np.arange(shape[-3])[:, None, None] if len(shape) >= 3 else np.zeros((1, 1), np.int64)
    b = np.arange(shape[-4])[:, None, None, None] if len(shape) >= 4 else np.zeros((1, 1), np.int64)
    if p.groups > 1:
        h = h.reshape(-1, p.groups, 1, 1)                      # (G, r, 1, 1)
        b = b[..., None] if len(shape) >= 4 else b
    return b, h, np.arange(Lq)[:, None], np.arange(Lk)[None, :]


@dataclass
class Steps:
    """Every intermediate of one reference pass, heads on axis -3 (H query heads; GQA not repeated in k/v).

    scores (..., H, Lq, Lk): scaled logits with bias and score_mod, before masking; mask (..., Lq, Lk) bool
    broadcastable to scores, or None; weights (..., H, Lq, Lk); lse (..., H, Lq); out (..., H, Lq, Dv)."""
    out: object
    weights: object
    lse: object
    scores: object
    mask: object


def attention_steps(q, k, v, mask=None, *, scale=None, bias=None, score_mod=None) -> Steps:
    """The reference path of ``scaled_dot_product_attention`` returning every intermediate (``Steps``): what a
    layer's recorder keeps, so views show the numbers the forward pass computed.

    >>> import numpy as np
    >>> s = attention_steps(np.eye(2), np.eye(2), np.eye(2), mask=masks_mod.causal())
    >>> s.scores.round(3).tolist(), s.weights.round(3).tolist(), s.mask.tolist()
    ([[0.707, 0.0], [0.0, 0.707]], [[1.0, 0.0], [0.33, 0.67]], [[True, False], [True, True]])
    """
    p = _prepare(q, k, v, "attention_steps")
    if p.k.shape[-1] != p.q.shape[-1]:
        raise ValueError(f"key has head dim {p.k.shape[-1]} but query has {p.q.shape[-1]}")
    if scale is not None and not is_real_number(scale):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    return _attend(p, lambda q_, k_: scaled_dot(q_, k_, scale), mask, bias, score_mod, True, True, steps=True)


def _attend(p: _Prepared, scorer, mask, bias, score_mod, return_weights, return_lse=False, steps=False):
    xp = p.xp
    scores = scorer(p.q, p.k)                                                  # (..., [G, r,] Lq, Lk)
    Lq, Lk = p.scores_shape[-2:]
    if tuple(scores.shape[-2:]) != (Lq, Lk):
        raise ValueError(f"the score function returned shape {tuple(scores.shape)}, expected (..., Lq={Lq}, "
                         f"Lk={Lk})")
    if bias is not None:
        scores = scores + _split_heads(xp, _resolve_bias(bias, p), p.groups)
    if score_mod is not None:
        if not isinstance(score_mod, ScoreMod):
            raise TypeError(f"score_mod must be an attnlab.scores.ScoreMod (see attnlab.scores.score_mod), "
                            f"got {type(score_mod).__name__}")
        scores = score_mod.apply(scores, *_score_mod_indices(p), Lq, Lk)
    mask_arr = _split_heads(xp, resolve_mask(mask, p.scores_shape, xp, p.q), p.groups) if mask is not None else None
    weights = softmax(scores, axis=-1, mask=mask_arr)                          # (..., [G, r,] Lq, Lk)
    out = weighted_sum(xp, weights, p.v)                                       # (..., [G, r,] Lq, Dv)
    if steps:
        lse = logsumexp(scores, axis=-1, mask=mask_arr, keepdims=True)[..., 0]
        merge = lambda x: None if x is None else _merge_heads(xp, x, p.groups)
        return Steps(out=merge(out), weights=merge(weights), lse=_merge_heads(xp, lse[..., None], p.groups)[..., 0],
                     scores=merge(scores), mask=None if mask is None else resolve_mask(mask, p.scores_shape, xp, p.q))
    results = [_merge_heads(xp, out, p.groups)]
    if return_weights:
        results.append(_merge_heads(xp, weights, p.groups))
    if return_lse:
        lse = logsumexp(scores, axis=-1, mask=mask_arr, keepdims=True)          # (..., [G, r,] Lq, 1)
        results.append(_merge_heads(xp, lse, p.groups)[..., 0])
    return results[0] if len(results) == 1 else tuple(results)


def weighted_sum(xp, weights, v):
    """weights @ v, where a non-finite value only reaches the rows that put weight on it."""
    finite = xp.isfinite(v)
    if bool(xp.all(finite)):
        return xp.matmul(weights, v)
    clean = xp.where(finite, v, xp.zeros_like(v))
    out = xp.matmul(weights, clean)
    reached = xp.matmul(xp.astype(weights > 0, v.dtype), xp.astype(~finite, v.dtype)) > 0   # (..., Lq, Dv)
    return xp.where(reached, xp.full_like(out, xp.nan), out)
