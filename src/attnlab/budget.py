"""The one memory budget: every allocation whose size comes from user input is checked against it first.

A call whose estimated allocation exceeds the budget (and 1 MiB, ``FLOOR``) raises ``MemoryBudgetError`` (a
``ValueError``, so the command line prints it as one line, and a ``MemoryError``, so ``except MemoryError`` sees it
too) saying how much it needed, the budget, and what to use instead, before anything of that size is allocated.

The budget, in bytes, is ``attnlab.budget.MEMORY_BUDGET`` (the planner's ``attnlab.planner.MEMORY_BUDGET`` is the
same value under its older name: assigning either changes both). Left at None it is the environment variable
``ATTNLAB_MEMORY_BUDGET`` (bytes, or a number with KiB/MiB/GiB, e.g. ``64MiB``) when set, else 256 MiB; the
variable is read at each check, so a malformed value is reported where it is used.

>>> import attnlab.budget as budget
>>> budget.check(2**20, "a 1 MiB table")          # within the budget: nothing happens
>>> budget.check(2**40, "a 1 TiB table", instead="use a smaller n", limit=2**30)
Traceback (most recent call last):
    ...
attnlab.budget.MemoryBudgetError: a 1 TiB table needs ~1.0 TiB, over the memory budget of 1.0 GiB; use a smaller n (or raise attnlab.budget.MEMORY_BUDGET or the environment variable ATTNLAB_MEMORY_BUDGET)
"""

from __future__ import annotations

import math
import os
import re

DEFAULT = 256 * 2**20
FLOOR = 2**20                          # allocations estimated below 1 MiB are never refused, whatever the budget:
                                       # the budget is about the sizes input can blow up, not a small table
ENV = "ATTNLAB_MEMORY_BUDGET"
MEMORY_BUDGET: int | None = None       # bytes; None: $ATTNLAB_MEMORY_BUDGET or DEFAULT
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6,
          "gb": 10**9, "tb": 10**12}


class MemoryBudgetError(ValueError, MemoryError):
    """An allocation sized by the input would exceed the memory budget; raised before it is made."""


def parse(text: str, name: str = ENV) -> int:
    """A budget written as text: "268435456", "1e9", "64MiB", "2 GiB" -> bytes.

    >>> parse("64MiB")
    67108864
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS or not float(m.group(1)) * _UNITS[unit] >= 1 or \
            not math.isfinite(float(m.group(1))):
        raise ValueError(f"{name} must be a positive number of bytes, optionally with a unit (KiB, MiB, GiB), "
                         f"e.g. 256MiB; got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def limit() -> int:
    """The budget in bytes now: ``MEMORY_BUDGET`` when set, else the environment variable, else 256 MiB."""
    if MEMORY_BUDGET is not None:
        value = MEMORY_BUDGET
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"attnlab.budget.MEMORY_BUDGET must be a positive number of bytes, got {value!r}")
        return int(value)
    text = os.environ.get(ENV)
    return DEFAULT if text is None or not text.strip() else parse(text)


def set_limit(nbytes) -> None:
    """Set the budget (bytes; None: back to the environment variable or the default)."""
    global MEMORY_BUDGET
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, (int, float)) or not nbytes > 0):
        raise ValueError(f"the memory budget must be a positive number of bytes or None, got {nbytes!r}")
    MEMORY_BUDGET = nbytes


def size(nbytes: float) -> str:
    """Bytes as text: "512 B", "3.0 KiB", "1.5 GiB"."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= factor:
            return f"{nbytes / factor:.1f} {unit}"
    return f"{int(nbytes)} B"


def check(nbytes: float, what: str, *, instead: str = "", limit: int | None = None) -> None:
    """Raise MemoryBudgetError when ``nbytes`` (an estimate of what ``what`` will allocate) exceeds the budget
    (``limit``, default the current one). ``instead`` says what to do about it. Estimates below FLOOR pass."""
    budget = globals()["limit"]() if limit is None else limit        # a malformed variable is reported at once
    if nbytes > budget and nbytes >= FLOOR:
        advice = f"; {instead}" if instead else ""
        raise MemoryBudgetError(f"{what} needs ~{size(nbytes)}, over the memory budget of {size(budget)}{advice} "
                                f"(or raise attnlab.budget.MEMORY_BUDGET or the environment variable {ENV})")
