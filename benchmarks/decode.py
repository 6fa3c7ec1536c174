"""The decode step (issue 17): one new token's attention against a KV cache, attnlab against PyTorch, with its floor.

    .venv/bin/python benchmarks/decode.py --unset-openblas-env                         # contexts 1k .. 32k, H = 8
    .venv/bin/python benchmarks/decode.py --contexts 1024,2048 --kv-heads 2 --repeat 41  # GQA, 4 query heads per kv

A decode step is query length 1 per head (B = 1, H query heads, G key/value heads, D = 64, float32) against a
context of n cached keys and values. For each n, three calls run on the same arrays, their timed runs interleaved
round by round (the order alternating), median of --repeat runs after two warm-up rounds:

  attnlab  attnlab.flash_attention(q, k, v): the kernel's decode regime, default threads
  torch    torch.nn.functional.scaled_dot_product_attention (its fused CPU kernel, its default threads), no_grad
  floor    the step's two matrix products alone, q k^T and p v for every head (GQA: the query heads of a key/value
           head stacked as rows), into preallocated outputs, split over the same threads and key ranges as the
           kernel's call (``RunStats``), BLAS held to one thread per thread when there are two or more: no
           softmax, no checks, no Python around them. No kernel built on these BLAS calls can be faster.

Two cache states:

  hot   each timed run directly follows --settle seconds (0.2) of untimed runs of the same call, as in a loop of
        steps: K and V stay in
        the CPU caches as far as they fit (8 heads take 4 MiB per 1k keys: past ~8k keys they do not fit this
        machine's 32 MiB L3 and "hot" reads memory) and the path's threads are awake
  cold  before every timed run ``attnlab.measure.evict_caches()`` reads a 256 MiB buffer (one load per 64-byte
        line, 8x the L3), then the same path runs once on other arrays of n / 4 keys (its threads awake, this
        call's K and V not cached): a model's step, where the other layers' steps (same library, same threads)
        have pushed this layer's cache out since its last step.

Why untimed calls before each timed run: interleaving two libraries' calls on 2 cores otherwise times one
library's idle threads against the other: after a parallel region PyTorch's OpenMP workers (libgomp) spin for
milliseconds and OpenBLAS's for up to ~0.1 s, holding the core the next call's second thread needs, and a worker
asleep for long wakes slowly (up to 6 ms on a loaded machine). No loop of steps of one library pays either. The
Python garbage collector is frozen while timing (``gc.freeze``, as ``attnlab.measure.time_calls`` does): a full
collection walks every object of the process (torch's included) and leaves the caches cold for the next call,
which tripled both sides' "hot" times at 1k keys before 2026-12-03 16:30 UTC.

Columns: the medians in microseconds, ``x torch`` = attnlab / torch (medians), ``paired`` = the median over rounds
of attnlab / torch within one round (a load spike hits both sides of one ratio), ``best`` = attnlab's fastest run
over torch's fastest (on a loaded machine the fastest runs are the closest to a quiet one's), ``floor x torch`` = the floor's
ratio (where it is above 1, no NumPy kernel reaches PyTorch on this machine at that size), ``x floor`` = attnlab
over its floor, ``n->2n`` = attnlab's (and torch's) time at n over its time at n / 2 in the same run. The header
prints the machine, the BLAS library and kernel, the threads, the load average before and after.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import openblas_env

if __name__ == "__main__":
    openblas_env.restart_without_overrides("--unset-openblas-env" in sys.argv)   # before NumPy loads OpenBLAS

import numpy as np                                                # noqa: E402  (after the environment is final)

import attnlab                                                    # noqa: E402
from attnlab import bench                                         # noqa: E402
from attnlab.commands.bench import comma_ints                     # noqa: E402
from attnlab.kernel import RunStats                               # noqa: E402
from attnlab.kernel.threads import blas_threads, pool            # noqa: E402
from attnlab.measure import evict_caches, run_for                 # noqa: E402

CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768)
PRIMER = 4                    # a cold timed run at n follows a call of the same path at n / PRIMER keys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=comma_ints, default=CONTEXTS, help="context lengths n, comma-separated")
    parser.add_argument("--heads", type=int, default=8, help="query heads H (default 8)")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads G (default H: no grouping)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=31, help="timed runs per call and cache state (>= 5)")
    parser.add_argument("--caches", default="hot,cold", help="hot, cold or both (comma-separated)")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds each call runs untimed in a loop before each of its timed runs (default 0.2; "
                             "0: one call, as before 2026-12-03 16:30 UTC)")
    parser.add_argument("--unset-openblas-env", action="store_true",
                        help="if OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE are set, restart without them")
    args = parser.parse_args(argv)
    import torch

    H, G, D = args.heads, args.kv_heads or args.heads, args.head_dim
    caches = [c for c in args.caches.split(",") if c]
    if H % G or not set(caches) <= {"hot", "cold"}:
        parser.error(f"--heads must be a multiple of --kv-heads and --caches hot and/or cold, got H={H}, G={G}, "
                     f"caches={args.caches!r}")
    meta = bench.machine_info(torch)
    meta["load_before"] = os.getloadavg()
    print(bench.format_header(meta, title="decode step"))
    print(openblas_env.unset_note())
    print(f"B=1, H={H}, G={G}, D={D}, float32, query length 1; median of {args.repeat} interleaved runs, each "
          f"after {args.settle:g} s of untimed runs of the same call")
    head = (f"{'cache':5s} {'n':>6s} {'attnlab us':>10s} {'torch us':>9s} {'floor us':>9s} {'x torch':>8s} "
            f"{'paired':>7s} {'best':>5s} {'floor x torch':>13s} {'x floor':>8s} {'n->2n':>6s} {'torch n->2n':>11s} "
            f"{'thr':>3s} {'load':>5s}")
    print(head)
    print("-" * len(head))
    for cache in caches:
        previous = None
        for n in args.contexts:
            row = measure(n, H, G, D, args.repeat, cache, torch, args.settle)
            growth = ("-", "-") if previous is None or n != 2 * previous["n"] else (
                f"{row['attnlab'] / previous['attnlab']:.2f}", f"{row['torch'] / previous['torch']:.2f}")
            print(f"{cache:5s} {n:6d} {row['attnlab'] * 1e6:10.1f} {row['torch'] * 1e6:9.1f} "
                  f"{row['floor'] * 1e6:9.1f} {row['attnlab'] / row['torch']:8.2f} {row['paired']:7.2f} {row['best']:5.2f} "
                  f"{row['floor'] / row['torch']:13.2f} {row['attnlab'] / row['floor']:8.2f} {growth[0]:>6s} "
                  f"{growth[1]:>11s} {row['threads']:3d} {os.getloadavg()[0]:5.2f}", flush=True)
            previous = row
    print(f"load average after {bench.format_load(os.getloadavg())}")
    return 0


def measure(n, H, G, D, repeat, cache, torch, settle=0.2) -> dict:
    """The three calls at context n, interleaved; medians in seconds, the paired ratio and the kernel's threads."""
    calls = {}
    primer = max(16, n // PRIMER)
    for size in (n, primer):
        rng = np.random.default_rng(size)
        q = rng.standard_normal((1, H, 1, D), dtype=np.float32)                 # (B, H, 1, D)
        k = rng.standard_normal((1, G, size, D), dtype=np.float32)              # (B, G, n, D)
        v = rng.standard_normal((1, G, size, D), dtype=np.float32)
        calls[size] = three_calls(q, k, v, torch)
    threads = calls[n]["threads"]
    runs = {name: [] for name in ("attnlab", "torch", "floor")}
    order = list(runs)
    gc.collect()
    gc.freeze()        # what is alive now (torch's objects) is not rescanned: a full collection walks every object,
    try:               # evicting the caches a hot step would find warm (attnlab.measure.time_calls does the same)
        rounds(runs, order, repeat, cache, calls[n], calls[primer], settle)
    finally:
        gc.unfreeze()
    return {"n": n, "threads": threads, **{name: statistics.median(t) for name, t in runs.items()},
            "best": min(runs["attnlab"]) / min(runs["torch"]),
            "paired": statistics.median(a / b for a, b in zip(runs["attnlab"], runs["torch"]))}


def rounds(runs, order, repeat, cache, calls, primers, settle) -> None:
    """The interleaved timed runs (two warm-up rounds first), appended to ``runs`` per call name; before each,
    ``settle`` seconds of the same call untimed (``attnlab.measure.run_for``)."""
    for round_ in range(repeat + 2):                                            # the first two: warm-up
        for name in (order if round_ % 2 == 0 else order[::-1]):
            run_for(calls[name], settle)         # the other library's idle threads stop spinning meanwhile
            gc.collect()                         # only what the last runs left (the rest is frozen)
            if cache == "cold":
                evict_caches()
                primers[name]()                  # wakes the path's threads; other arrays: this K, V stay uncached
            else:
                calls[name]()                    # hot: the same call has just run, as in a loop of steps
            start = time.perf_counter()
            calls[name]()
            if round_ >= 2:
                runs[name].append(time.perf_counter() - start)


def three_calls(q, k, v, torch) -> dict:
    """The attnlab, torch and floor callables on q, k, v (checked equal first), and the kernel's threads."""
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}

    def torch_step():
        with torch.no_grad():
            return sdpa(tq, tk, tv, **gqa)

    stats = RunStats()
    ours = attnlab.flash_attention(q, k, v, stats=stats)
    expected = torch_step().numpy()
    if not np.allclose(ours, expected, rtol=1e-4, atol=1e-5):                 # a wrong answer is not timed
        raise SystemExit(f"attnlab and torch differ at n={k.shape[2]}: max |diff| "
                         f"{np.abs(ours - expected).max():.3g}")
    return {"attnlab": lambda: attnlab.flash_attention(q, k, v), "torch": torch_step,
            "floor": products(q, k, v, stats.threads, stats.kv_splits), "threads": stats.threads}


def products(q, k, v, threads, splits):
    """A callable doing the step's two matrix products alone, S = q k^T and S v for every head, the keys cut into
    ``splits`` ranges run on ``threads`` threads (the kernel's pool), each with its own preallocated outputs."""
    B, H, _, D = q.shape
    G, n = k.shape[1], k.shape[2]
    r = H // G
    qg = (q * np.float32(D ** -0.5)).reshape(B, G, r, D)                         # (B, G, r, D): r rows per kv head
    bounds = [(s * n // splits, (s + 1) * n // splits) for s in range(splits)]

    def part(lo, hi):
        s = np.empty((B, G, r, hi - lo), np.float32)                             # (B, G, r, keys)
        o = np.empty((B, G, r, v.shape[-1]), np.float32)                         # (B, G, r, Dv)
        kt, vs = np.swapaxes(k[:, :, lo:hi], -1, -2), v[:, :, lo:hi]

        def run():
            np.matmul(qg, kt, out=s)
            np.matmul(s, vs, out=o)
        return run

    runs = [part(lo, hi) for lo, hi in bounds]
    per_thread = [runs[t::threads] for t in range(threads)]

    def work(mine):
        for run in mine:
            run()

    if threads == 1:
        return lambda: work(per_thread[0])

    def call():
        with blas_threads(1):
            futures = [pool(threads - 1).submit(work, mine) for mine in per_thread[1:]]
            work(per_thread[0])
            for f in futures:
                f.result()
    return call


if __name__ == "__main__":
    sys.exit(main())
