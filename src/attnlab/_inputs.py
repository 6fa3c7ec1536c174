"""Inputs prepared once for every attention path: shapes, dtypes, GQA grouping, mask and bias resolution.

``prepare(q, k, v, fn_name)`` validates q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) and returns a
``Prepared``: the arrays in the grouped layout (q (..., G, r, Lq, D), k and v (..., G, 1, Lk, D) when r = Hq // G
query heads share one key/value head; unchanged otherwise), their namespace and the reference's score shape
(..., Hq, Lq, Lk). The reference (``attnlab.reference``), the planner and the tiled kernel (``attnlab.kernel``)
all start from it, so an input is checked once whichever path runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import masks as masks_mod
from ._array import (as_array, broadcast_shapes, namespace, require_floating, require_ndim,
                     to_namespace, to_numpy)
from .checks import real
from .scores import ScoreMod


@dataclass
class Prepared:
    """Validated inputs in the grouped layout (views of the caller's arrays, never copies)."""

    xp: object
    q: object
    k: object
    v: object
    groups: int            # r = Hq // G query heads per key/value head; 1 when there is no grouping
    scores_shape: tuple    # (..., Hq, Lq, Lk) before grouping


def prepare(q, k, v, fn_name, *, dot=False, scale=None, score_mod=None, score_mod_name="score_mod") -> Prepared:
    """Check q, k, v (and, for a dot-product scorer, ``dot=True``: equal head dims, a numeric ``scale`` and a
    ``ScoreMod``) and bring them into the grouped layout. Raises TypeError/ValueError naming the argument."""
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
    if dot:
        if k.shape[-1] != q.shape[-1]:
            raise ValueError(f"key has head dim {k.shape[-1]} but query has {q.shape[-1]}")
        real(scale, "scale", allow_none=True)      # NaN/inf would turn every score into NaN
    check_score_mod(score_mod, score_mod_name)
    groups = query_groups(q, k)
    lead = _broadcast_lead(q, k, v, groups)
    scores_shape = lead + (q.shape[-2], k.shape[-2])
    if groups > 1:
        G = k.shape[-3]
        q = xp.reshape(q, q.shape[:-3] + (G, groups) + q.shape[-2:])    # (..., G, r, Lq, D)
        k, v = xp.expand_dims(k, axis=-3), xp.expand_dims(v, axis=-3)     # (..., G, 1, Lk, D)
    return Prepared(xp, q, k, v, groups, scores_shape)


def check_score_mod(score_mod, name="score_mod") -> None:
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        raise TypeError(f"{name} must be an attnlab.scores.ScoreMod (alibi, softcap, relative_bias, score_mod), "
                        f"got {type(score_mod).__name__}")


def query_groups(q, k) -> int:
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


def group_heads(xp, x, groups):
    """Bring an array shaped like the scores (..., Hq, Lq, Lk) into the grouped layout (..., G, r, Lq, Lk)."""
    if groups == 1:
        return x
    if x.ndim < 3 or x.shape[-3] == 1:
        return xp.expand_dims(x, axis=-3) if x.ndim >= 3 else x
    return xp.reshape(x, x.shape[:-3] + (x.shape[-3] // groups, groups) + x.shape[-2:])


def ungroup_heads(xp, x, groups):
    """Inverse of ``group_heads``: (..., G, r, L, X) -> (..., G * r, L, X)."""
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
        arr = mask.to_array(Lq, Lk, batch=batch, heads=heads, checked=False)   # the caller budgets the call
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


def resolve_bias(bias, p: Prepared):
    """An additive bias (float array broadcastable to the scores) in ``p``'s namespace and dtype."""
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


def score_mod_indices(p: Prepared):
    """b, h, q_idx, kv_idx index arrays for a ScoreMod on the full score matrix (grouped layout)."""
    shape = p.scores_shape
    Lq, Lk = shape[-2:]
    h = np.arange(shape[-3])[:, None, None] if len(shape) >= 3 else np.zeros((1, 1), np.int64)
    b = np.arange(shape[-4])[:, None, None, None] if len(shape) >= 4 else np.zeros((1, 1), np.int64)
    if p.groups > 1:
        h = h.reshape(-1, p.groups, 1, 1)                      # (G, r, 1, 1)
        b = b[..., None] if len(shape) >= 4 else b
    return b, h, np.arange(Lq)[:, None], np.arange(Lk)[None, :]
