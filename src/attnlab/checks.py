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


LARGEST = 2**62      # no size, count or index is larger: above it NumPy's int64 arithmetic would overflow


def positive_int(value, name: str, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """``value`` as an int >= ``minimum`` (default 1) and <= LARGEST; None passes through when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    if value > LARGEST:
        raise ValueError(f"{name} must be at most 2**62, got {value!r}")
    return int(value)


def non_negative_int(value, name: str) -> int:
    """``value`` as an int in [0, LARGEST]."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value > LARGEST:
        raise ValueError(f"{name} must be at most 2**62, got {value!r}")
    return int(value)


def non_negative_real(value, name: str) -> float:
    """``value`` as a finite real number >= 0 (seconds, say)."""
    value = finite_real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


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


def _given(value) -> str:
    """How a rejected value is shown: its repr, with the type for anything that is not a plain number."""
    text = repr(value.item() if isinstance(value, np.generic) else value)      # 0.5, not np.float32(0.5)
    text = text if len(text) <= 60 else text[:57] + "..."
    plain = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return text if plain else f"{type(value).__name__} {text}"


def real(value, name: str, *, allow_none: bool = False, positive: bool = False, low=None, high=None,
         what: str = "") -> float | None:
    """``value`` as a finite float: the one validator for user scalars (scale, cap, base, ...).

    TypeError when it is not a real number (a bool, a string, an array, None unless ``allow_none``); ValueError
    when it is NaN or infinite, not > 0 (``positive``) or outside [``low``, ``high``]. ``what`` adds why the
    range matters. Both messages name the argument, the expectation and the value given.

    >>> real(0.5, "scale")
    0.5
    >>> real(float("nan"), "scale")
    Traceback (most recent call last):
        ...
    ValueError: scale must be a finite number, got nan
    """
    if value is None and allow_none:
        return None
    expected = "a finite number > 0" if positive else "a finite number"
    if low is not None or high is not None:
        expected = f"a finite number in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    expected += " or None" if allow_none else ""
    if not (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))):
        raise TypeError(f"{name} must be a number ({expected}), got {_given(value)}")
    try:
        number = float(value)
    except OverflowError:                       # an int beyond float range
        raise ValueError(f"{name} must be {expected}, got {_given(value)}") from None
    bad = not math.isfinite(number) or (positive and not number > 0) or \
        (low is not None and number < low) or (high is not None and number > high)
    if bad:
        raise ValueError(f"{name} must be {expected}{what}, got {_given(value)}")
    return number


def integer_array(values, name: str, *, ndim: int | None = None, minimum: int | None = None) -> np.ndarray:
    """``values`` (a list or array of integers) as an int64 array; whole-valued floats are accepted, 1.7, NaN,
    booleans, strings and values beyond int64 are refused (ValueError/TypeError naming ``name``).

    >>> integer_array([0, 2.0], "positions").tolist()
    [0, 2]
    """
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be integers, got {type(values).__name__}: {err}") from None
    if arr.dtype == object or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be integers, got {_given(values)} (dtype {arr.dtype})")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D integers, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) < 2.0**63)
        if not whole.all():
            raise ValueError(f"{name} must be integers, got {_given(arr.ravel()[~whole.ravel()][0].item())}")
    elif arr.dtype.kind == "u" and arr.size and arr.max() >= 2**63:
        raise ValueError(f"{name} must fit in int64, got {arr.max()}")
    out = arr.astype(np.int64)
    if minimum is not None and out.size and out.min() < minimum:
        raise ValueError(f"{name} must be integers >= {minimum}, got {out.min()}")
    return out


def in_range(value, name: str, low, high) -> float:
    """``value`` as a number with low <= value <= high."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or \
            not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return value


def choice(value, name: str, options) -> str:
    """``value`` when it is one of ``options`` (compared by type and value: an array or a list never matches,
    and never raises NumPy's "truth value is ambiguous")."""
    options = tuple(options)
    if not any(type(value) is type(o) and value == o for o in options):
        given = repr(value) if isinstance(value, str) else _given(value)
        raise ValueError(f"{name} must be one of {options}, got {given}")
    return value


def flag(value, name: str) -> bool:
    """``value`` as a bool: True/False (Python or NumPy); anything else is a TypeError naming ``name`` (an array
    would otherwise fail inside ``if`` with NumPy's "truth value is ambiguous").

    >>> flag(True, "return_weights")
    True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_given(value)}")
    return bool(value)


def text(value, name: str, *, non_empty: bool = True) -> str:
    """``value`` when it is a str (non-empty unless ``non_empty=False``)."""
    if not isinstance(value, str) or (non_empty and not value):
        raise TypeError(f"{name} must be a {'non-empty ' if non_empty else ''}string, got {_given(value)}")
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
