"""The kernel's threads: a process-wide pool, a shared task queue, and BLAS held to one thread inside each worker.

NumPy releases the GIL inside BLAS and ufuncs, so tasks on a thread pool run in parallel; BLAS itself is held to
one thread while the pool runs so the two do not oversubscribe the cores.

Two rules keep this safe under any use:
- nested calls (a score modifier, or anything running inside a kernel task, that calls the kernel again) run
  inline on the calling thread: a worker waiting on the pool it belongs to would wait forever;
- the BLAS thread limit is process-wide state shared by concurrent calls from several user threads: the first
  call to enter saves the original limits and the last to leave restores them (a per-call save/restore would
  restore out of order and leave BLAS at one thread for good).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np


class TaskQueue:
    """The tasks of one call, handed out to the workers one at a time; ``stopped`` ends every worker's loop."""

    def __init__(self, tasks):
        self._it, self._lock, self.stopped = iter(tasks), threading.Lock(), False

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self.stopped:
                raise StopIteration
            return next(self._it)


def run_tasks(tasks, run_one, make_workspace, n: int, threads: int):
    """Run ``run_one(workspace, task, counts)`` for every task on ``n`` threads (the caller's plus pool workers),
    BLAS held to one thread inside each; when ``n`` is 1, BLAS may use ``threads`` (a long decoding step's
    matrix-vector products do). Each worker makes its own workspace. Returns the tile counts
    [empty, partial, full] and the number of threads used."""
    queue = TaskQueue(tasks)
    nested = getattr(_INSIDE, "depth", 0) > 0
    if nested:
        n = 1                                       # inside a kernel task: inline, no pool, BLAS left as it is

    def work():
        ws, counts = make_workspace(), np.zeros(3, np.int64)
        _INSIDE.depth = getattr(_INSIDE, "depth", 0) + 1
        try:   # overflow and 0 * inf are detected and handled in the tiles; NaN inputs propagate as in the reference
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for task in queue:
                    run_one(ws, task, counts)
        except BaseException:
            queue.stopped = True
            raise
        finally:
            _INSIDE.depth -= 1
        return counts

    if nested:
        return (work() if tasks else np.zeros(3, np.int64)), 1
    with blas_threads(1 if n > 1 else threads):     # one thread of ours: BLAS may use the others
        futures = [pool(n - 1).submit(work) for _ in range(n - 1)]
        try:
            mine = work() if tasks else np.zeros(3, np.int64)
        finally:
            wait(futures)
        return mine + sum((f.result() for f in futures), np.zeros(3, np.int64)), n


_POOL = {"executor": None, "size": 0}


def pool(size: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``size`` workers (created on first use, grown when needed)."""
    if _POOL["size"] < size:
        old = _POOL["executor"]
        _POOL["executor"], _POOL["size"] = ThreadPoolExecutor(size, thread_name_prefix="attnlab-flash"), size
        if old is not None:
            old.shutdown(wait=False)
    return _POOL["executor"]


_INSIDE = threading.local()       # depth: how many kernel tasks this thread is running (nested calls: > 1)
_BLAS = {"controller": None, "active": [], "original": None}
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def blas_threads(limit: int):
    """A context limiting BLAS (OpenBLAS, MKL, BLIS) to ``limit`` threads while the kernel runs.

    Concurrent calls share one process-wide state: the limit is the smallest any running call asked for, the
    first call in saves the original limits and the last call out restores them, whatever the interleaving."""
    from threadpoolctl import ThreadpoolController

    with _BLAS_LOCK:
        if _BLAS["controller"] is None:
            _BLAS["controller"] = ThreadpoolController()
        active = _BLAS["active"]
        if not active:
            _BLAS["original"] = _BLAS["controller"].limit(limits=limit, user_api="blas")   # saves the originals
        elif limit < min(active):
            _BLAS["controller"].limit(limits=limit, user_api="blas")
        active.append(limit)
    try:
        yield
    finally:
        with _BLAS_LOCK:
            active.remove(limit)
            if not active:
                _BLAS["original"].restore_original_limits()
                _BLAS["original"] = None
            elif limit < min(active):
                _BLAS["controller"].limit(limits=min(active), user_api="blas")
