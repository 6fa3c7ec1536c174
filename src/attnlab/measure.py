"""Measure a callable: median wall time over repeated runs, and peak memory with tracemalloc.

Small and general on purpose: the benchmarks and the experiments share these two functions so that every number
they print is taken the same way.

- ``time_call(fn)``: warm-up runs first (caches, lazy imports, BLAS buffers), then the median of ``repeat >= 5``
  timed runs with ``time.perf_counter``. The median resists the outliers a busy machine produces.
- ``time_calls(f, g, ...)``: the same for several callables, their runs interleaved, the order reversed every
  other round (f, g, g, f, f, g, ...), so that a change in the machine's load hits all of them alike and no call
  always runs right after the same other one (PyTorch's OpenMP threads spin for a few milliseconds after each
  call, slowing whatever runs next by up to 13% here): the way to measure a ratio such as time(2n) / time(n).
  ``settle=`` seconds runs each callable untimed in a loop before each of its timed runs, so that the other
  callables' idle threads have stopped spinning and a timed run is one of a loop of the same call.
- ``peak_memory(fn)``: the highest number of bytes allocated through Python's allocator hooks during one call,
  above what was allocated when the call started. NumPy reports its array buffers to tracemalloc, so for NumPy code
  this is the extra memory the call needed, its output included. PyTorch tensors are not seen. A warm-up call runs
  first, outside the measurement, so one-time allocations do not count.

>>> t = time_call(lambda: sum(range(100)), repeat=5)
>>> len(t.runs), t.median_s > 0
(5, True)
>>> import numpy as np
>>> peak_memory(lambda: np.ones(1_000_000)) >= 8_000_000
True
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from dataclasses import dataclass

from .checks import is_int, non_negative_int, non_negative_real


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of the timed runs, in seconds."""

    runs: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs)

    @property
    def min_s(self) -> float:
        return min(self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the runs were."""
        return (max(self.runs) - min(self.runs)) / self.median_s if self.median_s > 0 else 0.0


def time_call(fn, *, repeat: int = 5, warmup: int = 1, before=None, clock=time.perf_counter) -> Timing:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeat`` (>= 5) times timed; return the times.
    ``before``: a callable run untimed before each timed run (``evict_caches``, say). ``clock``: wall time
    (``time.perf_counter``, the default) or ``time.thread_time``, the CPU time of the calling thread, which on a
    loaded machine does not count the time other programs held the core (single-threaded work only)."""
    return time_calls(fn, repeat=repeat, warmup=warmup, before=before, clock=clock)[0]


def time_calls(*fns, repeat: int = 5, warmup: int = 1, before=None, clock=time.perf_counter,
               settle: float = 0.0) -> list[Timing]:
    """Like ``time_call`` for each of ``fns``, with the runs interleaved round by round.

    ``settle`` (seconds, default 0): before each timed run its callable runs untimed again and again until
    ``settle`` seconds have passed, so the timed run is one of a loop of the same call. Interleaving two
    libraries' runs otherwise times the first one's idle threads against the second: after a parallel region
    PyTorch's OpenMP workers (libgomp) spin for milliseconds, and OpenBLAS's threads for up to ~0.1 s, holding
    the cores the next call's threads need (docs/performance.md, "Interleaved runs and idle threads")."""
    settle = non_negative_real(settle, "settle (seconds)")
    for fn in fns + (() if before is None else (before,)):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds (time.perf_counter), got {clock!r}")
    if not is_int(repeat) or repeat < 5:
        raise ValueError(f"repeat must be an integer >= 5 (the median needs enough runs), got {repeat!r}")
    non_negative_int(warmup, "warmup")
    for _ in range(warmup):
        for fn in fns:
            fn()
    runs = [[] for _ in fns]
    gc.collect()
    gc.freeze()            # what is alive now (torch's objects, say) is not rescanned by the collections below
    try:
        for round_ in range(repeat):
            order = list(zip(fns, runs))
            for fn, times in (order if round_ % 2 == 0 else order[::-1]):
                run_for(fn, settle)
                gc.collect()   # garbage from the last run is not collected inside the next timed one
                if before is not None:
                    before()
                start = clock()
                fn()
                times.append(clock() - start)
    finally:
        gc.unfreeze()
    return [Timing(tuple(times)) for times in runs]


def run_for(fn, seconds: float) -> None:
    """Run ``fn()`` again and again until ``seconds`` have passed (not at all for 0): a loop of the same call."""
    end = time.perf_counter() + seconds
    while seconds and time.perf_counter() < end:
        fn()


_EVICT = {}


def evict_caches(nbytes: int = 256 * 2**20) -> None:
    """Read and write ``nbytes`` of memory (larger than any CPU cache here), so that the next call finds its
    inputs in main memory, not in cache: a decoding step of a real model reads a KV cache that the other layers'
    steps have pushed out of the caches since its last step."""
    import numpy as np

    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 64:
        raise ValueError(f"nbytes must be an integer >= 64 (bytes to read), got {nbytes!r}")
    if nbytes not in _EVICT:
        _EVICT[nbytes] = np.ones(nbytes // 8, np.int64)
    _EVICT[nbytes][::8].sum()                               # one read per 64-byte cache line


def peak_memory(fn, *, warmup: bool = True) -> int:
    """Peak bytes allocated (as tracemalloc sees them) during one call of ``fn()``, above the level at its start."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if warmup:
        fn()
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        if not was_tracing:
            tracemalloc.stop()
