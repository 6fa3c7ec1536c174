"""Number formatting shared by the worked examples, the practice feedback and the tour report."""

from __future__ import annotations

import math

import numpy as np

SIG = 4   # significant digits shown to the learner


def sig(x) -> str:
    """``x`` with 4 significant digits; infinities as -inf / inf, no negative zero.

    >>> sig(0.123456), sig(-float("inf")), sig(-0.0)
    ('0.1235', '-inf', '0')
    """
    x = float(x)
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    s = f"{x:.{SIG}g}"
    return "0" if s == "-0" else s


def vec(a) -> str:
    """A flat list of numbers: [0.1235, 2, -inf]."""
    return "[" + ", ".join(sig(x) for x in np.ravel(a)) + "]"
