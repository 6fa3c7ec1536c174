"""Run a benchmark without the OpenBLAS kernel overrides: restart the process without OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE when they are set.

OpenBLAS reads these variables once, when it loads, to choose its kernel (CORETYPE) and its blocking (L2_SIZE);
some environments set them for a machine other than this one. NumPy, and so both the reference path and the tiled
kernel, share the one process and its BLAS, so the only way to measure without them is a fresh process. The
restart records what it removed in ATTNLAB_OPENBLAS_UNSET, and ``unset_note()`` prints it in the header.

This module imports nothing but the standard library, so a script may call ``restart_without_overrides()`` before
it imports NumPy.
"""

from __future__ import annotations

import os
import sys

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MARKER = "ATTNLAB_OPENBLAS_UNSET"


def restart_without_overrides(enabled: bool = True) -> None:
    """If ``enabled`` and an OpenBLAS override is set, replace this process by the same command without them
    (never returns then); otherwise return at once."""
    present = [name for name in OPENBLAS_VARS if name in os.environ]
    if not enabled or not present:
        return
    env = {key: value for key, value in os.environ.items() if key not in OPENBLAS_VARS}
    env[MARKER] = ",".join(f"{name}={os.environ[name]}" for name in present)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def unset_note() -> str:
    """One line for the header: which overrides were removed for this run (or that none were)."""
    unset = os.environ.get(MARKER)
    return f"OpenBLAS overrides unset for this run: {unset}" if unset else "OpenBLAS overrides: none unset"
