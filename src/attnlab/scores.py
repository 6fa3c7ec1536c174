"""Scoring functions and score modifiers.

Scorers map queries (..., Lq, Dq) and keys (..., Lk, Dk) to raw scores (..., Lq, Lk):

- dot:         q . k                                   (Luong et al. 2015)
- scaled_dot:  q . k / sqrt(d_k)                       (Vaswani et al. 2017)
- general:     q^T W k,  W of shape (Dq, Dk)           (Luong et al. 2015)
- additive:    w_v . tanh(W_q q + W_k k)               (Bahdanau et al. 2015), W_q (A, Dq), W_k (A, Dk), w_v (A,)

Score modifiers change scores after scaling, one small function per idea (FlexAttention's ``score_mod``):
ALiBi (Press et al. 2022), tanh soft-capping (Gemma 2), a learned relative position bias (Shaw et al. 2018 / T5).
They are objects with ``apply(scores, b, h, q_idx, kv_idx, Lq, Lk)`` so the reference path can apply them to the
whole matrix and the tiled kernel to one tile. Rotary position embedding (Su et al. 2021) transforms q and k
instead.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ._array import as_array, default_scale, namespace, to_namespace
from .budget import check as check_budget
from .checks import flag, integer_array, non_negative_int, positive_int, real


# --- scorers ---------------------------------------------------------------------------------------------------
def dot(q, k):
    """Raw dot products q . k: (..., Lq, D) x (..., Lk, D) -> (..., Lq, Lk)."""
    xp = namespace(q, k)
    return xp.matmul(q, xp.matrix_transpose(k))


def scaled_dot(q, k, scale: float | None = None):
    """q . k * scale, scale defaulting to 1/sqrt(D); scale must be finite (0 and negative values are allowed:
    0 gives uniform weights, a negative scale prefers the least similar keys)."""
    scale = real(scale, "scale", allow_none=True)
    return dot(q, k) * (default_scale(q.shape[-1]) if scale is None else scale)


def general(q, k, weight):
    """Luong's "general" score q^T W k with W of shape (Dq, Dk)."""
    xp = namespace(q, k, weight)
    if weight.ndim != 2 or weight.shape != (q.shape[-1], k.shape[-1]):
        raise ValueError(f"weight must have shape (Dq, Dk) = ({q.shape[-1]}, {k.shape[-1]}), "
                         f"got {tuple(weight.shape)}")
    return xp.matmul(xp.matmul(q, weight), xp.matrix_transpose(k))


def additive(q, k, w_q, w_k, w_v):
    """Bahdanau's score w_v . tanh(W_q q + W_k k).

    q (..., Lq, Dq), k (..., Lk, Dk), w_q (A, Dq), w_k (A, Dk), w_v (A,) -> (..., Lq, Lk).
    Memory is O(Lq * Lk * A): this is the readable form of the paper's formula.
    """
    xp = namespace(q, k, w_q, w_k, w_v)
    A = w_v.shape[0] if w_v.ndim == 1 else -1
    if A >= 0:
        lead = np.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2])) if q.ndim >= 2 and k.ndim >= 2 else ()
        hidden = math.prod(lead) * q.shape[-2] * k.shape[-2] * A * (xp.finfo(q.dtype).bits // 8 if
                                                                     xp.isdtype(q.dtype, "real floating") else 8)
        check_budget(ADDITIVE_LIVE * hidden, f"additive scoring of {q.shape[-2]} queries x {k.shape[-2]} keys x "
                     f"A={A} (the (..., Lq, Lk, A) tanh tensor)", instead="use fewer positions or a smaller A, "
                     "or a dot-product scorer (attnlab.flash_attention never builds the score matrix)")
    if w_v.ndim != 1 or w_q.shape != (A, q.shape[-1]) or w_k.shape != (A, k.shape[-1]):
        raise ValueError(f"additive attention needs w_q (A, Dq), w_k (A, Dk), w_v (A,) with Dq={q.shape[-1]}, "
                         f"Dk={k.shape[-1]}; got w_q {tuple(w_q.shape)}, w_k {tuple(w_k.shape)}, "
                         f"w_v {tuple(w_v.shape)}")
    qp = xp.matmul(q, xp.matrix_transpose(w_q))                  # (..., Lq, A)
    kp = xp.matmul(k, xp.matrix_transpose(w_k))                  # (..., Lk, A)
    hidden = xp.tanh(qp[..., :, None, :] + kp[..., None, :, :])  # (..., Lq, Lk, A)
    return xp.sum(hidden * w_v, axis=-1)                         # (..., Lq, Lk)


ADDITIVE_LIVE = 3      # (..., Lq, Lk, A) arrays alive at once in ``additive`` (tracemalloc: 2.04-2.68 of them)

SCORERS = {"dot": dot, "scaled_dot": scaled_dot, "general": general, "additive": additive}


def get_scorer(score, **params) -> Callable:
    """Resolve ``score`` (a name in SCORERS or a callable (q, k) -> scores) with its parameters bound."""
    if callable(score):
        if params:
            raise TypeError(f"a callable score takes no extra parameters, got {sorted(params)}")
        return score
    if not isinstance(score, str) or score not in SCORERS:
        raise ValueError(f"score must be one of {sorted(SCORERS)} or a callable, got {str(score)[:60]!r}")
    needed = {"general": {"weight"}, "additive": {"w_q", "w_k", "w_v"}}.get(score, set())
    allowed = needed | ({"scale"} if score == "scaled_dot" else set())
    missing, extra = needed - set(params), set(params) - allowed
    if missing or extra:
        raise TypeError(f"score={score!r} needs parameters {sorted(needed) or 'none'}"
                        + (f"; missing {sorted(missing)}" if missing else "")
                        + (f"; unexpected {sorted(extra)}" if extra else ""))
    if "scale" in params:
        real(params["scale"], "scale", allow_none=True)
    fn = SCORERS[score]
    return lambda q, k: fn(q, k, **params)


# --- score modifiers ---------------------------------------------------------------------------------------
class ScoreMod:
    """A function ``fn(scores, b, h, q_idx, kv_idx, Lq, Lk) -> scores`` applied after scaling.

    ``scores`` has shape (..., H, lq, lk) for a tile (or the whole matrix); h has shape (H, 1, 1) (or is 0 when
    there is no head axis), q_idx (lq, 1) and kv_idx (1, lk) hold absolute indices. Positions follow the
    bottom-right alignment of attnlab.masks: query i sits at key position i + Lk - Lq.

    For gradients (the backward pass) a modifier says how it changes with the scores: ``additive=True`` when it
    only adds a term that does not depend on them (ALiBi, relative bias: derivative 1), or ``grad(scores,
    modified, b, h, q_idx, kv_idx, Lq, Lk) -> d modified / d scores`` elementwise (soft-capping: 1 - tanh^2).
    A modifier with neither has no known derivative and the backward refuses it.
    """

    parts: tuple = ()        # (first, second) for a modifier made by ``then``

    def __init__(self, fn, name: str, *, grad=None, additive: bool = False):
        if grad is not None and not callable(grad):
            raise TypeError(f"grad must be callable (scores, modified, b, h, q_idx, kv_idx, Lq, Lk) -> derivative, "
                            f"got {type(grad).__name__}")
        self.fn = fn
        self.name = name
        self.grad = grad
        self.additive = bool(additive)

    def __repr__(self) -> str:
        return self.name

    @property
    def differentiable(self) -> bool:
        """Whether the backward pass knows this modifier's derivative."""
        return self.additive or self.grad is not None

    def apply(self, scores, b, h, q_idx, kv_idx, Lq: int, Lk: int):
        return self.fn(scores, b, h, q_idx, kv_idx, Lq, Lk)

    def require_derivative(self) -> None:
        """Raise TypeError when the backward pass cannot differentiate through this modifier."""
        if not self.differentiable:
            raise TypeError(f"score_mod {self.name} has no derivative for the backward pass; build it with "
                            f"attnlab.scores.score_mod(fn, grad=...) or additive=True")

    def derivative(self, scores, modified, b, h, q_idx, kv_idx, Lq: int, Lk: int):
        """d modified / d scores, elementwise; None when it is 1 everywhere (an additive modifier)."""
        if self.additive:
            return None
        self.require_derivative()
        return self.grad(scores, modified, b, h, q_idx, kv_idx, Lq, Lk)

    def then(self, other: "ScoreMod") -> "ScoreMod":
        """Apply ``self`` then ``other`` (the derivative by the chain rule)."""
        grad = None
        if self.differentiable and other.differentiable and not (self.additive and other.additive):
            def grad(s, out, *a):
                mid = self.fn(s, *a)
                d1, d2 = self.derivative(s, mid, *a), other.derivative(mid, out, *a)
                return d2 if d1 is None else d1 if d2 is None else d1 * d2
        composed = ScoreMod(lambda s, *a: other.fn(self.fn(s, *a), *a), f"{self.name} -> {other.name}", grad=grad,
                            additive=self.additive and other.additive)
        composed.parts = (self, other)          # kept so converters (integrations.flex) can translate each part
        return composed


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes: the geometric series 2^(-8/n), 2^(-16/n), ... (Press et al. 2022, section 3).

    For n not a power of two the paper takes the slopes of the closest lower power of two and fills in every other
    slope of the next one.

    >>> alibi_slopes(4).tolist()
    [0.25, 0.0625, 0.015625, 0.00390625]
    """
    positive_int(n_heads, "n_heads")
    check_budget(16 * n_heads, f"ALiBi slopes for n_heads={n_heads}", instead="use the model's number of heads")

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return np.array(power_of_two(n_heads))
    lower = 2 ** math.floor(math.log2(n_heads))
    return np.array(power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower])


def alibi(n_heads: int, *, symmetric: bool = False) -> ScoreMod:
    """ALiBi: add -slope_h * (query position - key position) to the scores.

    Causal form as in the paper (future keys are masked anyway); ``symmetric=True`` uses -slope * |distance| for
    bidirectional encoders.
    """
    slopes = alibi_slopes(n_heads)
    symmetric = flag(symmetric, "symmetric")

    def fn(scores, b, h, q_idx, kv_idx, Lq, Lk):
        _check_heads(h, n_heads, f"alibi({n_heads})")
        xp = namespace(scores)
        dist = (q_idx + (Lk - Lq)) - kv_idx                   # (lq, lk)
        dist = np.abs(dist) if symmetric else dist
        bias = -slopes[np.asarray(h) % n_heads] * dist        # (H, lq, lk) or (lq, lk)
        return scores + to_namespace(bias, xp, scores, dtype=scores.dtype)

    return ScoreMod(fn, f"alibi({n_heads}{', symmetric' if symmetric else ''})", additive=True)


def softcap(cap: float) -> ScoreMod:
    """Soft-capping cap * tanh(scores / cap) keeps logits in (-cap, cap) (Gemma 2 uses cap = 50).

    ``cap`` must be a finite number > 0 (an infinite cap would be the identity but computes inf * 0 = NaN). A score
    of -inf (a bias of -inf, a masked cell) stays -inf: masked stays masked, never lifted to -cap; its derivative
    is 0.
    """
    cap = real(cap, "cap", positive=True)

    def fn(scores, b, h, q_idx, kv_idx, Lq, Lk):
        xp = namespace(scores)
        capped = cap * xp.tanh(scores / cap)
        return xp.where(scores == -math.inf, scores, capped)

    def grad(scores, modified, b, h, q_idx, kv_idx, Lq, Lk):
        xp = namespace(modified)
        slope = 1 - (modified / cap) ** 2                     # d/ds cap tanh(s / cap) = 1 - tanh^2(s / cap)
        return xp.where(modified == -math.inf, xp.zeros_like(slope), slope)

    return ScoreMod(fn, f"softcap({cap})", grad=grad)


def relative_bias(table, max_distance: int | None = None) -> ScoreMod:
    """A learned bias per head and relative distance (Shaw et al. 2018; T5 buckets distances, here each
    distance has its own entry).

    ``table`` has shape (H, 2 * max_distance + 1); entry [h, max_distance + d] is added for distance
    d = key position - query position, clipped to [-max_distance, max_distance].
    """
    try:
        table = np.asarray(table)
    except (TypeError, ValueError) as err:
        raise TypeError(f"table must be a float array of shape (H, 2 * max_distance + 1), got "
                        f"{type(table).__name__}: {err}") from None
    if table.dtype.kind not in "iuf":
        raise TypeError(f"table must be a float array of shape (H, 2 * max_distance + 1), got dtype {table.dtype}")
    if table.ndim != 2 or table.shape[1] % 2 != 1:
        raise ValueError(f"table must have shape (H, 2 * max_distance + 1), got {table.shape}")
    if table.shape[0] < 1:
        raise ValueError(f"table must hold at least one head (H >= 1), got shape {table.shape}")
    max_d = table.shape[1] // 2
    if max_distance is not None:
        given = non_negative_int(max_distance, "max_distance")
        if given != max_d:
            raise ValueError(f"max_distance must match the table: a table of {table.shape[1]} columns holds "
                             f"distances -{max_d}..{max_d}, so max_distance = {max_d}, got {given}")

    def fn(scores, b, h, q_idx, kv_idx, Lq, Lk):
        _check_heads(h, table.shape[0], f"relative_bias with a table of {table.shape[0]} heads")
        xp = namespace(scores)
        dist = np.clip(kv_idx - (q_idx + (Lk - Lq)), -max_d, max_d) + max_d    # (lq, lk)
        bias = table[np.asarray(h) % table.shape[0], dist]                    # (H, lq, lk)
        return scores + to_namespace(bias, xp, scores, dtype=scores.dtype)

    return ScoreMod(fn, f"relative_bias({table.shape[0]} heads, max_distance={max_d})", additive=True)


def score_mod(fn, name: str | None = None, *, grad=None, additive: bool = False) -> ScoreMod:
    """Wrap a FlexAttention-style ``fn(scores, b, h, q_idx, kv_idx)`` (vectorized) as a ScoreMod.

    For the backward pass give ``grad(scores, modified, b, h, q_idx, kv_idx) -> d modified / d scores`` or
    ``additive=True`` (fn only adds a term independent of the scores)."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    wrapped = None if grad is None else (lambda s, m, b, h, q, kv, Lq, Lk: grad(s, m, b, h, q, kv))
    if grad is not None and not callable(grad):
        raise TypeError(f"grad must be callable, got {type(grad).__name__}")
    return ScoreMod(lambda s, b, h, q, kv, Lq, Lk: fn(s, b, h, q, kv), name or getattr(fn, "__name__", "custom"),
                    grad=wrapped, additive=additive)


def _check_heads(h, n_heads, what):
    """A per-head modifier must not silently reuse head 0's parameters for head n_heads and beyond."""
    top = int(np.max(h)) if np.size(h) else 0
    if top >= n_heads:
        raise ValueError(f"{what} has parameters for {n_heads} heads but the scores have head index {top} "
                         f"(query heads on axis -3); build it for the number of query heads")


# --- rotary position embedding -----------------------------------------------------------------------------
def rotary(x, positions=None, *, base: float = 10000.0, style: str = "half"):
    """Rotate pairs of features of q or k by position-dependent angles (RoPE, Su et al. 2021).

    x: (..., L, D) with D even; positions: (L,) integers (default 0..L-1). Pair i is rotated by
    positions * base^(-2i/D). ``style="half"`` pairs feature i with i + D/2 (GPT-NeoX, Hugging Face Llama);
    ``style="interleaved"`` pairs 2i with 2i+1 (the paper, GPT-J). The dot product of two rotated vectors depends
    only on their relative position.
    """
    x = as_array(x, "x")
    xp = namespace(x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., L, D) (at least 2 dims), got shape {tuple(x.shape)}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must have a floating dtype (rotated features are not integers), got {x.dtype}; cast "
                        f"it first, e.g. x.astype(float32)")
    L, D = x.shape[-2], x.shape[-1]
    if D % 2:
        raise ValueError(f"rotary embedding needs an even feature dim, got D={D}")
    if not isinstance(style, str) or style not in ("half", "interleaved"):
        given = repr(style) if isinstance(style, str) else str(style)[:60]
        raise ValueError(f"style must be 'half' or 'interleaved', got {given}")
    base = real(base, "base", positive=True)
    pos = np.arange(L) if positions is None else integer_array(positions, "positions")
    if pos.shape != (L,):
        raise ValueError(f"positions must have shape (L,) = ({L},), got {pos.shape}")
    inv_freq = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)                # (D/2,)
    angles = pos[:, None].astype(np.float64) * inv_freq[None, :]                   # (L, D/2)
    cos = to_namespace(np.cos(angles), xp, x, dtype=x.dtype)                      # (L, D/2), x's dtype
    sin = to_namespace(np.sin(angles), xp, x, dtype=x.dtype)
    if style == "half":
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return xp.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = xp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)      # (..., L, D/2, 2)
    return xp.reshape(rotated, x.shape)
