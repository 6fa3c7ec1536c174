"""The non-attention pieces of a transformer block, in NumPy: norms, activations, linear maps.

Shapes: x (..., d). Weights in PyTorch Linear layout (out, in), so linear(x) = x @ w.T + b.
"""

from __future__ import annotations

import numpy as np

from ..kernel.threads import blas_threads


def linear(x, w, b=None):
    """x (..., in) @ w.T (in, out) [+ b] as one 2-D GEMM (NumPy's stacked 3-D @ 2-D matmul is ~10x slower)."""
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(x.shape[:-1] + (w.shape[0],))
    return y if b is None else y + b


def one_row_steps():
    """A context for decoding loops: BLAS held to one thread.

    A decoding step multiplies one row by every weight matrix (matrix-vector products, a few microseconds of work
    each), where BLAS's thread hand-offs cost more than the second thread gives: measured here, (1, 576) @ (576,
    1536) took 50 us on one OpenBLAS thread and 1.6 ms on two with the cores shared, and SmolLM2's decoding ran
    3-6x faster on one thread. The prefill (many rows) keeps every thread."""
    return blas_threads(1)


def layer_norm(x, weight, bias, eps: float):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (Ba et al. 2016); biased variance."""
    mu = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mu).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def rms_norm(x, weight, eps: float):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), computed in at least float32 as Llama does."""
    x32 = x.astype(np.promote_types(x.dtype, np.float32))
    normed = x32 / np.sqrt(np.square(x32).mean(axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def gelu(x):
    """x * Phi(x) with the exact normal CDF via erf (Hendrycks & Gimpel 2016): BERT's "gelu"."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)).astype(x.dtype))


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
