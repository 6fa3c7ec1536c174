"""The kernel's threads: a process-wide pool, a shared task queue, and BLAS held to one thread inside each worker.

NumPy releases the GIL inside BLAS and ufuncs, so tasks on a thread pool run in parallel; BLAS itself is held to
one thread while the pool runs so the two do not oversubscribe the cores.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
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

    if getattr(_WORKER, "active", False):
        # Nested use (a score modifier calling the kernel, on a worker or in a caller running tasks): run inline.
        # Submitting to the shared pool from inside it could leave every worker waiting on tasks none can run.
        return work() if tasks else np.zeros(3, np.int64), 1

    def work_marked():
        _WORKER.active = True
        try:
            return work()
        finally:
            _WORKER.active = False

    with blas_threads(1 if n > 1 else threads):     # one thread of ours: BLAS may use the others
        futures = [pool(n - 1).submit(work_marked) for _ in range(n - 1)]
        try:
            mine = work_marked() if tasks else np.zeros(3, np.int64)
        finally:
            if futures:
                wait(futures)
        for f in futures:
            mine = mine + f.result()
        return mine, n


_WORKER = threading.local()          # .active: this thread is running a kernel call's tasks


_POOL = {"executor": None, "size": 0}
_POOL_LOCK = threading.Lock()


def pool(size: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``size`` workers (created on first use, grown when needed)."""
    with _POOL_LOCK:                 # several user threads may call at once
        if _POOL["size"] < size:
            old = _POOL["executor"]
            _POOL["executor"], _POOL["size"] = ThreadPoolExecutor(size, thread_name_prefix="attnlab-flash"), size
            if old is not None:
                old.shutdown(wait=False)
        return _POOL["executor"]


_BLAS = {"libs": None, "active": 0, "saved": None}
_BLAS_LOCK = threading.Lock()


@contextmanager
def blas_threads(limit: int):
    """A context limiting BLAS (OpenBLAS, MKL, BLIS) to ``limit`` threads while the kernel runs.

    BLAS thread counts are process-wide, so concurrent calls from several user threads share one state: the first
    call to enter saves the original limits and sets its own, later ones entering meanwhile keep it, and the last
    to leave restores the original, whatever the order they finish in (threadpoolctl's own contexts restore what
    each saw on entry, which leaves BLAS at 1 thread when they end out of order). The libraries' own get/set calls
    are used directly, and only where the count differs: a decode step is ~100 us, and threadpoolctl's ``limit()``
    (which re-inspects every loaded library) costs tens of microseconds per call."""
    with _BLAS_LOCK:
        if _BLAS["libs"] is None:
            from threadpoolctl import ThreadpoolController

            _BLAS["libs"] = ThreadpoolController().select(user_api="blas").lib_controllers
        if _BLAS["active"] == 0:
            saved = []
            for lib in _BLAS["libs"]:
                before = lib.get_num_threads()
                if before != limit:
                    lib.set_num_threads(limit)
                    saved.append((lib, before))
            _BLAS["saved"] = saved
        _BLAS["active"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS["active"] -= 1
            if _BLAS["active"] == 0:
                for lib, before in _BLAS["saved"]:
                    lib.set_num_threads(before)
                _BLAS["saved"] = None
