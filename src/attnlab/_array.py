"""Array-API helpers: one place that decides which namespace an input belongs to.

attnlab's reference path is written against the Python array API standard, so the same code runs on NumPy
(the default), PyTorch (gradients flow), array-api-strict, CuPy or JAX. Plain Python lists and scalars are
turned into NumPy arrays: NumPy-first simplicity.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np


def is_array(x) -> bool:
    """True when ``x`` is an array of a library that array-api-compat knows."""
    return array_api_compat.is_array_api_obj(x)


def as_array(x, name: str):
    """Return ``x`` as an array; lists, tuples and scalars become NumPy arrays.

    >>> as_array([[1.0, 2.0]], "query").shape
    (1, 2)
    """
    if is_array(x):
        return x
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array or nested list of numbers, got {type(x).__name__}: {err}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an array or nested list of numbers, got {type(x).__name__} "
                        f"(NumPy dtype {arr.dtype})")
    return arr


def namespace(*arrays):
    """The array-API namespace shared by ``arrays`` (``None`` entries are ignored)."""
    present = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in present})
        raise TypeError(f"inputs come from different array libraries ({', '.join(kinds)}); convert them to one "
                        f"library first") from None


def device(x):
    return array_api_compat.device(x)


def to_namespace(x_np, xp, like, dtype=None):
    """Move a NumPy array (a materialized mask, a bias) into namespace ``xp`` on ``like``'s device, cast to
    ``dtype`` (an ``xp`` dtype, e.g. ``like.dtype``) when given. The cast happens in ``xp``, so a dtype NumPy does
    not have (torch.bfloat16) works."""
    if array_api_compat.is_numpy_array(like):
        return x_np if dtype is None else x_np.astype(dtype, copy=False)
    out = xp.asarray(x_np, device=device(like))
    return out if dtype is None else xp.astype(out, dtype)


def to_numpy(x) -> np.ndarray:
    """Copy any supported array to NumPy (detaching PyTorch tensors)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)     # CPU arrays of any DLPack library (array-api-strict, JAX, ...)
        except (BufferError, RuntimeError, TypeError, ValueError):
            x = array_api_compat.to_device(x, "cpu")     # a GPU array (CuPy): copy it to the host first
    return np.asarray(x)


# --- dtypes: the one place that knows them ---------------------------------------------------------------------
LOW_PRECISION = ("float16", "bfloat16")     # computed in float32, returned in the input dtype
FLOAT_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}     # bytes per element, by name


def dtype_name(dtype) -> str:
    """A library-neutral dtype name: ``torch.bfloat16`` -> "bfloat16", ``np.dtype("float16")`` -> "float16", and
    the same for a name ("f4" -> "float32") or a scalar type (``np.float32``, ``jnp.bfloat16``, ``float``).
    Never needs NumPy to know the dtype, so it works for dtypes NumPy lacks."""
    if isinstance(dtype, (str, type)):
        try:
            return np.dtype(dtype).name       # "f4", "double", np.float32, float; jnp/ml_dtypes scalar types
        except TypeError:
            return dtype if isinstance(dtype, str) else dtype.__name__
    return str(dtype).split(".")[-1]


def float_dtype_name(dtype, name: str = "dtype") -> str:
    """``dtype_name`` of a real floating dtype (float16, bfloat16, float32, float64); ValueError naming ``name``
    for anything else."""
    found = dtype_name(dtype)
    if found not in FLOAT_ITEMSIZE:
        raise ValueError(f"{name} must be a floating dtype ({', '.join(FLOAT_ITEMSIZE)}) of any library or its "
                         f"name, got {dtype!r}")
    return found


def is_low_precision(x) -> bool:
    """True for float16 and bfloat16 arrays of any library."""
    return dtype_name(x.dtype) in LOW_PRECISION


def upcast(xp, x):
    """``x`` in its accumulation dtype: float16/bfloat16 become float32 (as PyTorch's math attention does),
    anything else is returned as is. ``xp.astype`` keeps autograd graphs (torch) and traces (jax) intact."""
    return xp.astype(x, xp.float32) if x is not None and is_low_precision(x) else x


def downcast(xp, x, dtype):
    """``x`` (computed by ``upcast``-ed inputs) back in the caller's ``dtype``; None stays None."""
    return x if x is None or x.dtype == dtype else xp.astype(x, dtype)


def itemsize(xp, x) -> int:
    """Bytes per element of ``x``'s dtype in any library (``xp.finfo``/``xp.iinfo``, the array API's own)."""
    if xp.isdtype(x.dtype, "bool"):
        return 1
    info = xp.finfo(x.dtype) if xp.isdtype(x.dtype, "real floating") else xp.iinfo(x.dtype)
    return info.bits // 8


def accumulation_itemsize(dtype) -> int:
    """Bytes per element the reference path computes a floating ``dtype`` (any library's, or its name) in: 4 for
    float16/bfloat16 (``upcast``), else the dtype's own size."""
    found = float_dtype_name(dtype)
    return FLOAT_ITEMSIZE["float32"] if found in LOW_PRECISION else FLOAT_ITEMSIZE[found]


def known_all(xp, x) -> bool:
    """True when every element of the boolean array ``x`` is True and that can be read now. False for a lazy
    array (``array_api_compat.is_lazy_array``: every JAX array, since inside ``jax.jit`` its values do not exist
    yet), so a caller that branches on it for speed takes the path that is right either way."""
    return not array_api_compat.is_lazy_array(x) and bool(xp.all(x))


def is_real_number(x) -> bool:
    """True for a Python or NumPy int/float scalar (not a bool, a string or an array)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def is_floating(xp, x) -> bool:
    return xp.isdtype(x.dtype, "real floating")


def require_floating(xp, x, name: str) -> None:
    """Raise a TypeError naming ``name`` unless ``x`` has a real floating dtype."""
    if not is_floating(xp, x):
        raise TypeError(
            f"{name} must have a floating dtype (float16/32/64), got {x.dtype}; "
            f"cast it first, e.g. {name}.astype(float32)"
        )


def require_ndim(x, name: str, at_least: int, what: str) -> None:
    if x.ndim < at_least:
        raise ValueError(f"{name} must have shape {what} (at least {at_least} dims), got shape {tuple(x.shape)}")


def broadcast_shapes(*shapes) -> tuple[int, ...]:
    """NumPy broadcasting of shapes, raising ValueError with the shapes named."""
    first = tuple(shapes[0]) if shapes else ()
    if all(tuple(s) == first for s in shapes[1:]):          # the common case, without np.broadcast_shapes' ~2 us
        return first
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ValueError(f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast") from None


def default_scale(head_dim: int) -> float:
    """1/sqrt(d_k), Vaswani et al. 2017, eq. 1."""
    return 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0
