"""The public attention functions: prepare the inputs, let the planner decide, run the reference or the kernel.

    scaled_dot_product_attention  softmax(q k^T * scale + bias, masked) @ v, any array-API library
    attention                     the same with any scorer ("dot", "scaled_dot", "general", "additive", a callable)
    additive_attention            Bahdanau's scorer
    attention_backward            the gradients of scaled_dot_product_attention, written as the formulas read

Inputs are checked once (``attnlab._inputs.prepare``); ``attnlab.planner`` picks the path (``attnlab.plan``
explains it); the formula is ``attnlab.reference``, the tiled kernel ``attnlab.kernel``.
"""

from __future__ import annotations

import math

import numpy as np

from . import budget, cost, planner
from ._array import accumulation_itemsize, as_array
from .checks import flag, integer_array, is_int
from ._inputs import prepare
from .kernel import forward as kernel_forward
from .reference import Attended, attend, attend_backward, to_input
from .scores import get_scorer, scaled_dot


def scaled_dot_product_attention(q, k, v, mask=None, *, scale=None, bias=None, score_mod=None,
                                 return_weights=False, return_lse=False, impl="auto"):
    """softmax(q k^T * scale + bias, masked) @ v.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> output (..., Lq, Dv) [, weights (..., Lq, Lk)].
    ``scale`` defaults to 1/sqrt(D). ``bias``: additive float array broadcastable to the scores.
    ``score_mod``: an ``attnlab.scores.ScoreMod`` (ALiBi, softcap, ...).
    ``return_lse``: also return the log-sum-exp of each row's (masked) scores, (..., Lq), -inf for a row with
    nothing to attend to; ``attnlab.merge_attention`` combines partial results with it.
    Returns ``output``, then ``weights`` if asked, then ``lse`` if asked.
    ``impl``: "reference" (``attnlab.reference``), "tiled" (``attnlab.flash_attention``: NumPy float32/float64, no full
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
    p = prepare(q, k, v, "scaled_dot_product_attention", dot=True, scale=scale, score_mod=score_mod)
    return_weights, return_lse = flag(return_weights, "return_weights"), flag(return_lse, "return_lse")
    chosen = planner.decide(p, mask, impl=impl, return_weights=return_weights, count_tiles=False,
                            numpy=all(isinstance(x, np.ndarray) for x in (p.q, p.k, p.v))).require()
    if chosen == "tiled":
        return kernel_forward.tiled(p, mask, scale=scale, score_mod=score_mod, bias=bias, return_lse=return_lse,
                                    fn_name="scaled_dot_product_attention")
    res = attend(p, lambda q_, k_: scaled_dot(q_, k_, scale), mask, bias, score_mod, weights=return_weights,
                 lse=return_lse)
    return _results(res, return_weights, return_lse)


def attention(q, k, v, score="scaled_dot", mask=None, *, bias=None, score_mod=None, return_weights=False,
              **score_params):
    """Attention with any scorer: "dot", "scaled_dot" (``scale=``), "general" (``weight=`` of shape (Dq, Dk)),
    "additive" (``w_q=, w_k=, w_v=``) or a callable (q, k) -> scores (..., Lq, Lk).

    Shapes, masks, GQA and edge cases (dtypes, Lk = 0, fully masked rows, NaN/Inf) as in
    ``scaled_dot_product_attention``.
    """
    dot = isinstance(score, str) and score in ("dot", "scaled_dot")       # q . k needs equal head dims
    p = prepare(q, k, v, "attention", dot=dot, score_mod=score_mod)
    return_weights = flag(return_weights, "return_weights")
    params = {name: as_array(value, name) if name != "scale" else value for name, value in score_params.items()}
    n_scores = math.prod(p.scores_shape)
    budget.check(cost.REFERENCE_LIVE[mask is not None] * n_scores * accumulation_itemsize(p.q.dtype)
                 + (n_scores if mask is not None else 0),
                 f"attention(score={score if isinstance(score, str) else 'callable'!r}) on scores "
                 f"{tuple(p.scores_shape)} (the whole score matrix, several times)",
                 instead="use attnlab.flash_attention for dot-product scores, or fewer positions")
    res = attend(p, get_scorer(score, **params), mask, bias, score_mod, weights=return_weights)
    return _results(res, return_weights, False)


def attention_steps(q, k, v, mask=None, *, scale=None, bias=None, score_mod=None) -> Attended:
    """The reference path of ``scaled_dot_product_attention`` returning every intermediate (an
    ``attnlab.reference.Attended``: out, weights, lse, pre-mask scores, resolved mask): what a layer's recorder
    keeps, so views show the numbers the forward pass computed.

    >>> import numpy as np, attnlab
    >>> s = attention_steps(np.eye(2), np.eye(2), np.eye(2), mask=attnlab.masks.causal())
    >>> s.scores.round(3).tolist(), s.weights.round(3).tolist(), s.mask.tolist()
    ([[0.707, 0.0], [0.0, 0.707]], [[1.0, 0.0], [0.33, 0.67]], [[True, False], [True, True]])
    """
    p = prepare(q, k, v, "attention_steps", dot=True, scale=scale, score_mod=score_mod)
    return attend(p, lambda q_, k_: scaled_dot(q_, k_, scale), mask, bias, score_mod, weights=True, lse=True,
                  scores=True)


def additive_attention(q, k, v, w_q, w_k, w_v, mask=None, *, return_weights=False):
    """Bahdanau (additive) attention: scores w_v . tanh(W_q q + W_k k) (Bahdanau et al. 2015, eq. 6 / A.1.2).

    q (..., Lq, Dq), k (..., Lk, Dk), v (..., Lk, Dv), w_q (A, Dq), w_k (A, Dk), w_v (A,).
    """
    return attention(q, k, v, "additive", mask, return_weights=return_weights,
                     w_q=w_q, w_k=w_k, w_v=w_v)


def attention_backward(dout, q, k, v, mask=None, *, scale=None, bias=None, score_mod=None):
    """Gradients of ``scaled_dot_product_attention(q, k, v, mask, scale=, bias=, score_mod=)`` given dout, by the
    formulas as written (``attnlab.reference.attend_backward``; the whole Lq x Lk matrices, NumPy float32/64).

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), dout (..., Lq, Dv) shaped like the output; leading dims,
    grouped-query heads, masks, bias and score modifiers as in the forward (a modifier needs a derivative:
    ``ScoreMod.differentiable``). Returns ``Grads(dq, dk, dv)``, or ``GradsWithBias(dq, dk, dv, dbias)`` when a
    bias was given; each gradient has its input's shape (summed over the axes it was broadcast along). A fully
    masked row has zero gradients; a masked key gets dk = dv = 0 and its values, even NaN, reach no gradient.
    ``attnlab.flash_attention_backward`` computes the same tile by tile.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((3, 2)) for _ in range(3))
    >>> dq, dk, dv = attention_backward(np.ones((3, 2)), q, k, v)
    >>> dv.sum(axis=0).round(6).tolist()                  # each row of P sums to 1, so dV's rows sum to dO's
    [3.0, 3.0]
    """
    p = prepare(q, k, v, "attention_backward", dot=True, scale=scale, score_mod=score_mod)
    budget.check(planner.REFERENCE_BACKWARD_COPIES * math.prod(p.scores_shape) * accumulation_itemsize(p.q.dtype),
                 f"attention_backward on scores {tuple(p.scores_shape)} (it holds the whole matrices)",
                 instead="use attnlab.flash_attention_backward, which works tile by tile")
    if not all(isinstance(x, np.ndarray) for x in (p.q, p.k, p.v)):
        raise TypeError(f"attention_backward runs on NumPy arrays, got {type(p.q).__module__}."
                        f"{type(p.q).__name__}; use torch autograd for tensors")
    if score_mod is not None:
        score_mod.require_derivative()
    out_shape = p.scores_shape[:-1] + (p.v.shape[-1],)
    dout = as_array(dout, "dout")
    if not isinstance(dout, np.ndarray) or tuple(dout.shape) != out_shape:
        raise ValueError(f"dout must be a NumPy array shaped like the output {out_shape}, got "
                         f"{type(dout).__name__} of shape {tuple(getattr(dout, 'shape', ()))}")
    grads = attend_backward(p, dout.astype(p.q.dtype, copy=False), mask, bias, score_mod, scale)
    shaped = [to_input(g, g.shape, np.shape(x)) for g, x in zip(grads[:3], (q, k, v))]
    return type(grads)(*shaped, *grads[3:])


def attention_weights_for(q, k, rows, lse, mask=None, **options):
    """``attnlab.kernel.attention_weights_for`` (the weights of chosen query rows, recomputed from the stored
    log-sum-exp; same arguments). The kernel checks that its result, (..., len(rows), Lk), and its per-group
    scores fit the memory budget (``attnlab.budget``) first: ``rows=slice(None)`` asks for the whole matrix.

    >>> import numpy as np, attnlab
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((6, 4)) for _ in range(3))
    >>> out, lse = attnlab.flash_attention(q, k, v, return_lse=True)
    >>> attention_weights_for(q, k, rows=[0, 5], lse=lse).shape
    (2, 6)
    """
    if not (is_int(rows) or isinstance(rows, slice)):
        rows = integer_array(rows, "rows (an int, a slice or a list of query indices)", ndim=1)
    return kernel_forward.attention_weights_for(q, k, rows, lse, mask, **options)


def _results(res, return_weights, return_lse):
    """output, then weights if asked, then lse if asked: the public functions' return convention."""
    results = [res.out] + ([res.weights] if return_weights else []) + ([res.lse] if return_lse else [])
    return results[0] if len(results) == 1 else tuple(results)
