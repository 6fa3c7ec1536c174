"""The shared validators for user input: each raises ValueError naming the argument, what was expected and what
was given, and returns the value in its plain Python form.

>>> positive_int(3, "n_heads")
3
>>> positive_int(0, "n_heads")
Traceback (most recent call last):
    ...
ValueError: n_heads must be a positive integer, got 0
"""

from __future__ import annotations

import math

import numpy as np


def is_int(value) -> bool:
    """An int (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(value, name: str, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """``value`` as an int >= ``minimum`` (default 1); None passes through when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def non_negative_int(value, name: str) -> int:
    """``value`` as an int >= 0."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def int_list(values, name: str, *, minimum: int = 1) -> list[int]:
    """A non-empty sequence of ints >= ``minimum`` as a list."""
    values = list(values) if isinstance(values, (list, tuple)) else None
    if not values or any(not is_int(v) or v < minimum for v in values):
        what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {values!r}")
    return [int(v) for v in values]


def finite_real(value, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite real number (``positive``: > 0)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(value) or (positive and not value > 0):
        what = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def in_range(value, name: str, low, high) -> float:
    """``value`` as a number with low <= value <= high."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or \
            not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return value


def choice(value, name: str, options) -> str:
    """``value`` when it is one of ``options``."""
    if value not in tuple(options):
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def int_arg(low: int, high: int):
    """An argparse ``type=`` for an integer in [low, high]: a bad value is argparse's one-line error (exit 2).

    >>> int_arg(1, 8)("3")
    3
    """
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value
    parse.__name__ = f"integer in [{low}, {high}]"
    return parse
