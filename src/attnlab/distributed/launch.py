"""Starting the processes of a ring: under torchrun, or P local processes from Python.

One machine, 4 processes (gloo on CPU, nccl when CUDA is there):

    torchrun --nproc-per-node 4 -m attnlab.distributed.demo --seq 4096 --mask causal

Several machines, 4 processes each: the same command on every machine, with a rendezvous endpoint that all of
them reach (one of the machines, any free port):

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id job1 \\
        -m attnlab.distributed.demo --seq 65536 --mask causal

In your own script, call ``init()`` once per process (it reads the RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
that torchrun sets) and then ``attnlab.distributed.ring_attention`` on each rank's shard.

From Python, ``run_local(fn, P, *args)`` spawns P processes on 127.0.0.1, forms a gloo group with a timeout, runs
``fn(*args)`` in each and returns every rank's result or error; a process still running at the deadline is killed.
``fn`` must be importable (a module-level function), as for any spawned process.
"""

from __future__ import annotations

import datetime
import multiprocessing.connection
import os
import socket
import time
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..checks import choice, is_int, positive_int, real
from .comm import RingError, timeout_seconds


def init(backend: str | None = None, timeout=None, *, rank: int | None = None, world_size: int | None = None,
         master_addr: str | None = None, master_port: int | None = None) -> tuple[int, int]:
    """Join the default process group (once) and return (rank, world_size).

    Without arguments it reads torchrun's environment. ``backend``: "gloo" or "nccl" (default: nccl when CUDA
    is available, else gloo). ``timeout`` (seconds, default 60) bounds the rendezvous and every collective: a rank
    that never joins makes the others raise RingError after it, instead of waiting forever.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank = _env_int("RANK", rank)
    world_size = _env_int("WORLD_SIZE", world_size)
    addr = master_addr or os.environ.get("MASTER_ADDR")
    port = master_port or os.environ.get("MASTER_PORT")
    if addr is None or port is None:
        raise ValueError("init needs MASTER_ADDR and MASTER_PORT (torchrun sets them) or master_addr=/master_port=")
    backend = backend or ("nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1))))
    seconds = timeout_seconds(timeout)
    explicit = master_addr is not None or master_port is not None
    init_method = f"tcp://{addr}:{port}" if explicit else "env://"      # env://: torchrun's own store
    try:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=seconds))
    except RuntimeError as err:              # DistStoreError and gloo connection errors are RuntimeErrors
        raise RingError(f"rank {rank} of {world_size}: the process group at {addr}:{port} did not form within "
                        f"{seconds:g} s (timeout): a rank never joined or died before joining. "
                        f"[{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]",
                        timeout_s=seconds) from err
    return rank, world_size


def _env_int(name: str, given: int | None) -> int:
    if given is not None:
        return int(given)
    if name not in os.environ:
        raise ValueError(f"init needs {name} (torchrun sets it) or the matching argument; not running under "
                         f"torchrun? use attnlab.distributed.launch.run_local to start local processes")
    return int(os.environ[name])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RankResult:
    """What one spawned rank did: its return value, or the error it raised, or how it ended."""

    rank: int
    ok: bool
    value: object = None
    error: str | None = None          # "ExceptionType: message" when the rank raised
    exitcode: int | None = None       # the process exit code (None if it had to be killed)
    seconds: float = 0.0              # from the start of the process group set-up to the end of fn


MAX_LOCAL_WORLD = 256       # processes run_local starts on one machine: a typo of 10^6 would be a fork bomb


def run_local(fn, world: int, *args, timeout: float = 120.0, init_timeout: float = 30.0, backend: str = "gloo",
              threads: int = 1, ranks=None, grace: float | None = None) -> list[RankResult]:
    """Run ``fn(*args)`` on ``world`` spawned processes forming a process group on 127.0.0.1.

    Every process gets ``torch.set_num_threads(threads)``. Processes alive after ``timeout`` seconds are killed
    (never a hang); their RankResult has ok=False and says so. Once a rank has failed (raised or died), the ranks
    still silent ``grace`` seconds after the last report (default: ``init_timeout``) are killed too: a stalled rank
    does not hold the others' errors until the deadline. ``ranks``: start only these ranks (a fault drill: the
    others never join). Returns one RankResult per started rank, in rank order.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function to run on every rank, got {type(fn).__name__}")
    world = positive_int(world, "world")
    if world > MAX_LOCAL_WORLD:
        raise ValueError(f"world must be at most {MAX_LOCAL_WORLD} processes on one machine, got {world}")
    timeout, init_timeout = real(timeout, "timeout", positive=True), real(init_timeout, "init_timeout", positive=True)
    grace = None if grace is None else real(grace, "grace", low=0)
    threads = positive_int(threads, "threads")
    choice(backend, "backend", ("gloo", "nccl"))
    if ranks is not None and (not isinstance(ranks, (list, tuple, range)) or not all(is_int(r) for r in ranks)):
        raise TypeError(f"ranks must be a list of rank numbers or None, got {type(ranks).__name__} {ranks!r}"[:200])
    ranks = list(range(world)) if ranks is None else sorted(ranks)
    if not ranks or any(not 0 <= r < world for r in ranks):
        raise ValueError(f"ranks must be a non-empty subset of range({world}), got {ranks!r}")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs, readers = [], {}
    for rank in ranks:
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(rank, world, port, fn, args, writer, backend, init_timeout, threads),
                        daemon=True)
        p.start()
        writer.close()
        procs.append(p)
        readers[reader] = rank
    deadline = time.monotonic() + timeout
    grace = float(init_timeout if grace is None else grace)
    messages, cut_short = _collect(procs, readers, deadline, grace)
    results = []
    for rank, p in zip(ranks, procs):
        if not cut_short:
            p.join(max(0.5, deadline - time.monotonic()))
        kind, value, error, seconds = messages.get(rank, ("dead", None, None, 0.0))
        exitcode = p.exitcode
        if p.is_alive():
            p.kill()
            p.join(5)
            exitcode = None
            if kind == "dead":
                error = (f"killed: still running {grace:g} s after another rank failed (stalled?)" if cut_short
                         else f"killed after the {timeout:g} s timeout of run_local")
        elif kind == "dead":
            error = f"process ended with exit code {p.exitcode} without reporting a result"
        results.append(RankResult(rank, kind == "ok", value, error, exitcode, seconds))
    return results


def _collect(procs, readers: dict, deadline: float, grace: float) -> tuple[dict, bool]:
    """Read each rank's one message until all processes end or the deadline passes; once a rank has failed, stop
    waiting ``grace`` seconds after the last report. Returns (messages by rank, whether the grace cut it short)."""
    messages, pending = {}, dict(readers)
    failed, last = False, time.monotonic()
    while pending and time.monotonic() < deadline:
        until = min(deadline, last + grace) if failed else deadline
        if time.monotonic() >= until:
            return messages, True
        alive = [p.sentinel for p in procs if p.is_alive()]
        ready = multiprocessing.connection.wait(list(pending) + alive, timeout=max(0.0, until - time.monotonic()))
        for obj in ready:
            if obj in pending:
                rank = pending.pop(obj)
                last = time.monotonic()
                message = _receive(obj)
                if message is None or message[0] != "ok":        # died before sending, or raised
                    failed = True
                if message is not None:
                    messages[rank] = message
        if not any(p.is_alive() for p in procs):
            for reader, rank in list(pending.items()):
                message = _receive(reader) if reader.poll() else None
                if message is not None:
                    messages[rank] = message
            break
    return messages, False


def _receive(reader):
    """One rank's message, or None if its process ended without sending one."""
    try:
        return reader.recv()
    except (EOFError, OSError):
        return None


def _worker(rank, world, port, fn, args, writer, backend, init_timeout, threads):
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        init(backend, init_timeout, rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port)
        message = ("ok", fn(*args), None)
    except BaseException as err:                                  # report every failure to the parent
        message = ("error", None, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}")
    writer.send(message + (time.perf_counter() - start,))
    writer.close()
    if dist.is_initialized() and message[0] == "ok":
        dist.destroy_process_group()
