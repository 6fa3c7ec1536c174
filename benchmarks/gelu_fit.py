"""Where the coefficients of attnlab's float32 GELU come from (``attnlab.models._blocks.GELU_COEFFICIENTS``).

    .venv/bin/python benchmarks/gelu_fit.py        # needs scipy (float64 normal CDF) and torch (the float32 check)

GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), and erf(x / sqrt 2) = tanh(x g(x^2)) for the even function
g(x^2) = atanh(2 Phi(x) - 1) / x (GPT-2's tanh GELU is the degree-1 polynomial g = sqrt(2/pi) (1 + 0.044715 x^2)).
This script fits g as a degree-6 polynomial in s = x^2 on 0 < x <= 6 by least squares weighted by how much an error
in g moves GELU (d GELU / d g = 0.5 x^2 sech^2(x g)), reweighted towards the largest errors (an approximate
minimax), then prints the float32 coefficients and the largest error against float64 GELU and against torch's
float32 erf GELU on [-12, 12]. Past x^2 = 36 the polynomial is held at its value there (tanh is then +-1 in float32).
"""

import numpy as np
import torch
from scipy.special import ndtr

X, DEGREE = 6.0, 6


def fit():
    x = np.linspace(1e-4, X, 200_001)
    g = np.arctanh(2 * ndtr(x) - 1) / x
    sensitivity = 0.5 * x * x * (1 - np.tanh(x * g) ** 2)
    A = np.vander((x / X) ** 2, DEGREE + 1, increasing=True)            # scaled powers: a well-conditioned fit
    weights = sensitivity
    for _ in range(40):
        coef, *_ = np.linalg.lstsq(A * weights[:, None], g * weights, rcond=None)
        err = np.abs((A @ coef - g) * sensitivity)
        weights = sensitivity * np.sqrt(err / err.max() + 1e-3)
    return (coef / X ** (2 * np.arange(DEGREE + 1))).astype(np.float32)


def gelu32(x, c):
    s = np.minimum(x * x, np.float32(X * X))
    g = np.full_like(x, c[-1])
    for ci in c[-2::-1]:
        g = g * s + ci
    with np.errstate(over="ignore"):
        return x / (np.float32(1) + np.exp(np.float32(-2) * x * g))      # = 0.5 x (1 + tanh(x g))


if __name__ == "__main__":
    c = fit()
    xt = torch.linspace(-12, 12, 2_000_001, dtype=torch.float32)
    exact = xt.double().numpy() * ndtr(xt.double().numpy())
    theirs = torch.nn.functional.gelu(xt).numpy()
    ours = gelu32(xt.numpy(), c)
    print("coefficients (float32, s^0 .. s^6):", ", ".join(repr(float(v)) for v in c))
    print(f"max |ours - float64 GELU| = {np.abs(ours - exact).max():.3g}; "
          f"max |torch float32 - float64 GELU| = {np.abs(theirs - exact).max():.3g}; "
          f"max |ours - torch| = {np.abs(ours - theirs).max():.3g}")
