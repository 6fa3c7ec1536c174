"""Stable, masked softmax and log-sum-exp.

softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m) with m = max_j x_j: subtracting the row maximum changes
nothing mathematically and keeps exp() from overflowing. Masked entries (mask False) get weight exactly 0; a row
whose every entry is masked gets all zeros (and log-sum-exp -inf), never NaN.
"""

from __future__ import annotations

from ._array import as_array, broadcast_shapes, downcast, namespace, to_namespace, to_numpy, upcast
from .checks import flag


def _prepare(x, mask, axis):
    x = as_array(x, "x")
    xp = namespace(x)
    if not isinstance(axis, int) or isinstance(axis, bool) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an integer in [-{x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}, "
                         f"got {axis!r}")
    if not xp.isdtype(x.dtype, "real floating"):
        if xp.isdtype(x.dtype, ("integral", "bool")):
            x = xp.astype(x, xp.float64)  # integers are promoted, as NumPy's exp would
        else:
            raise TypeError(f"x must be a real floating or integer array, got {x.dtype}")
    if mask is not None:
        mask = as_array(mask, "mask")
        if namespace(mask) is not xp:
            mask = to_namespace(to_numpy(mask), xp, x)
        if mask.dtype != xp.bool:
            raise TypeError(f"mask must be boolean (True = keep), got dtype {mask.dtype}")
        try:
            fits = broadcast_shapes(mask.shape, x.shape) == tuple(x.shape)   # a larger mask would reshape the result
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to x of shape "
                             f"{tuple(x.shape)}")
    return xp, x, mask


def _masked_max(xp, x, axis):
    """Row maximum with -inf rows (fully masked) replaced by 0 so that x - m stays -inf, not NaN."""
    m = xp.max(x, axis=axis, keepdims=True)
    return xp.where(xp.isfinite(m), m, xp.zeros_like(m))


def softmax(x, axis: int = -1, mask=None):
    """Numerically stable softmax along ``axis``; masked entries and fully masked rows are 0.

    x: at least 1-D (integers and booleans are promoted to float64; a 0-d x has no axis and raises ValueError).
    mask: boolean, broadcastable to x, True = keep. An empty axis gives an empty result. -inf entries get weight
    0 like masked ones (a row of only -inf gives zeros); NaN in a kept entry makes its whole row NaN and +inf
    in a kept entry makes (at least) that entry NaN, as in PyTorch; NaN or inf in a masked entry is ignored.

    >>> softmax([1.0, 2.0, 3.0]).round(4)
    array([0.09  , 0.2447, 0.6652])
    >>> softmax([[1.0, 2.0], [3.0, 4.0]], mask=[[True, False], [False, False]])
    array([[1., 0.],
           [0., 0.]])
    """
    xp, x, mask = _prepare(x, mask, axis)
    if x.shape[axis] == 0:
        return xp.zeros_like(x)
    dtype, x = x.dtype, upcast(xp, x)                # float16/bfloat16: computed in float32, returned as given
    if mask is not None:
        x = xp.where(mask, x, xp.asarray(-xp.inf, dtype=x.dtype))
    e = xp.exp(x - _masked_max(xp, x, axis))    # masked entries are -inf here, so exactly 0 (NaN/inf cleared)
    total = xp.sum(e, axis=axis, keepdims=True)
    return downcast(xp, e / xp.where(total == 0, xp.ones_like(total), total), dtype)


def logsumexp(x, axis: int = -1, mask=None, keepdims: bool = False):
    """log(sum(exp(x))) along ``axis``, stable; a fully masked (or empty, or all -inf) row gives -inf.

    Inputs are validated and promoted as in ``softmax``; NaN in a kept entry gives NaN, +inf gives +inf.

    >>> float(logsumexp([0.0, 0.0]))  # log 2
    0.6931471805599453
    """
    xp, x, mask = _prepare(x, mask, axis)
    keepdims = flag(keepdims, "keepdims")
    dtype, x = x.dtype, upcast(xp, x)
    if mask is not None:
        x = xp.where(mask, x, xp.asarray(-xp.inf, dtype=x.dtype))
    if x.shape[axis] == 0:
        shape = list(x.shape)
        shape[axis] = 1
        out = xp.full(tuple(shape), -xp.inf, dtype=dtype)
        return out if keepdims else xp.squeeze(out, axis=axis)
    m = _masked_max(xp, x, axis)
    total = xp.sum(xp.exp(x - m), axis=axis, keepdims=True)
    empty = total == 0                                            # every entry masked or -inf: log 0 without warning
    out = xp.where(empty, xp.full_like(total, -xp.inf), xp.log(xp.where(empty, xp.ones_like(total), total)) + m)
    out = downcast(xp, out, dtype)
    return out if keepdims else xp.squeeze(out, axis=axis)
