"""The kernel's threads: a process-wide pool, a shared task queue, and BLAS held to one thread inside each worker.

NumPy releases the GIL inside BLAS and ufuncs, so tasks on a thread pool run in parallel; BLAS itself is held to
one thread while the pool runs so the two do not oversubscribe the cores.
"""

from __future__ import annotations

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

    def work():
        ws, counts = make_workspace(), np.zeros(3, np.int64)
        try:   # overflow and 0 * inf are detected and handled in the tiles; NaN inputs propagate as in the reference
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for task in queue:
                    run_one(ws, task, counts)
        except BaseException:
            queue.stopped = True
            raise
        return counts

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


_BLAS = {"controller": None}


def blas_threads(limit: int):
    """A context limiting BLAS (OpenBLAS, MKL, BLIS) to ``limit`` threads while the kernel runs."""
    from threadpoolctl import ThreadpoolController

    if _BLAS["controller"] is None:
        _BLAS["controller"] = ThreadpoolController()
    return _BLAS["controller"].limit(limits=limit, user_api="blas")
