"""The non-attention pieces of a transformer block, in NumPy: norms, activations, linear maps.

Shapes: x (..., d). Weights in PyTorch Linear layout (out, in), so linear(x) = x @ w.T + b.
"""

from __future__ import annotations

import numpy as np

from ..kernel.layout import default_threads
from ..kernel.threads import blas_threads, pool

PARALLEL_MIN = 2**17          # elements below which a second thread costs more than it saves


def linear(x, w, b=None):
    """x (..., in) @ w.T (in, out) [+ b] as one 2-D GEMM (NumPy's stacked 3-D @ 2-D matmul is ~10x slower)."""
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(x.shape[:-1] + (w.shape[0],))
    if b is not None:
        y += b                                   # y is the product's fresh array: no second allocation
    return y


def one_row_steps():
    """A context for decoding loops: BLAS held to one thread.

    A decoding step multiplies one row by every weight matrix (matrix-vector products, a few microseconds of work
    each), where BLAS's thread hand-offs cost more than the second thread gives: measured here, (1, 576) @ (576,
    1536) took 50 us on one OpenBLAS thread and 1.6 ms on two with the cores shared, and SmolLM2's decoding ran
    3-6x faster on one thread. The prefill (many rows) keeps every thread."""
    return blas_threads(1)


def layer_norm(x, weight, bias, eps: float):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (Ba et al. 2016); biased variance."""
    xc = x - x.mean(axis=-1, keepdims=True)                          # the one full-size temporary, then in place
    var = np.mean(np.square(xc), axis=-1, keepdims=True)
    xc /= np.sqrt(var + eps)
    xc *= weight
    xc += bias
    return xc


def rms_norm(x, weight, eps: float):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), computed in at least float32 as Llama does."""
    x32 = x.astype(np.promote_types(x.dtype, np.float32))
    normed = x32 / np.sqrt(np.square(x32).mean(axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


# g(s) = c0 + c1 s + ... + c6 s^6 with erf(x / sqrt 2) = tanh(x g(x^2)), fitted by benchmarks/gelu_fit.py (weighted
# least squares on 0 < x <= 6; s held at 36 beyond): float32 GELU within 6e-7 of the float64 one on [-12, 12]
# (torch's float32 erf GELU is within 1.2e-6 of it)
GELU_COEFFICIENTS = (0.7978849411010742, 0.03633284941315651, -3.224384636268951e-05, -5.547672844841145e-05,
                     3.998984539066441e-06, -1.3518355501673796e-07, 1.842660135586982e-09)
GELU_S_MAX = 36.0


def _rows_in_two(fn, x):
    """fn (elementwise, returning a new array) on x (..., d), the first half of the rows on a pool thread while the
    caller does the second: NumPy's ufuncs run on one core and release the GIL, so a large activation takes half
    the time on two cores (torch's do the same with OpenMP). Small inputs, or one core, run inline."""
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    if rows.size < PARALLEL_MIN or rows.shape[0] < 2 or default_threads() < 2:
        return fn(x)
    half = rows.shape[0] // 2
    first = pool(1).submit(fn, rows[:half])
    second = fn(rows[half:])
    return np.concatenate([first.result(), second]).reshape(x.shape)


def gelu(x):
    """x * Phi(x), Phi the normal CDF (Hendrycks & Gimpel 2016): BERT's and Whisper's "gelu" (the erf one).

    float64 input: Phi from scipy's erf (exact). Otherwise computed in float32 as x / (1 + exp(-2 x g(x^2))) (that is
    0.5 x (1 + tanh(x g)) without the cancellation of 1 + tanh near -1), g the degree-6 polynomial of
    ``GELU_COEFFICIENTS``: within 6e-7 of the float64 GELU, closer than torch's float32 erf GELU (1.2e-6; tested
    against it), and ~10x faster than scipy's erf, which works in float64 element by element (17.6 ms
    against ~2 ms for a (608, 1536) block here; GELU was 40% of MiniLM's encoding time).

    >>> gelu(np.array([-1.0, 0.0, 1.0], np.float32))
    array([-0.15865526,  0.        ,  0.8413448 ], dtype=float32)
    """
    if x.dtype == np.float64:
        from scipy.special import erf

        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    return _rows_in_two(_gelu32, x)


def _gelu32(x):
    x32 = np.asarray(x, dtype=np.float32)
    s = np.square(x32)
    np.minimum(s, np.float32(GELU_S_MAX), out=s)
    c = [np.float32(-2.0 * v) for v in GELU_COEFFICIENTS]           # -2 g: exact in float32
    u = s * c[6]                                                      # Horner, in place: one buffer besides s
    for ci in c[5:0:-1]:
        u += ci
        u *= s
    u += c[0]
    u *= x32                                                          # u = -2 x g(x^2)
    with np.errstate(over="ignore"):                                  # x << 0: exp(u) = inf, x / inf = -0
        np.exp(u, out=u)
    u += np.float32(1.0)
    np.divide(x32, u, out=u)
    return u.astype(x.dtype, copy=False)


def gelu_tanh(x):
    """The tanh approximation of GELU: GPT-2's "gelu_new"."""
    c = np.asarray(np.sqrt(2.0 / np.pi), dtype=x.dtype)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x ** 3)))


def silu(x):
    """x * sigmoid(x) (Elfwing et al. 2018), the gate of SwiGLU (Shazeer 2020)."""
    return x / (1.0 + np.exp(-x))


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "silu": silu, "swish": silu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
