"""Backward benchmark: attnlab's tiled forward + backward against PyTorch's CPU SDPA forward + backward.

    .venv/bin/python benchmarks/backward.py                                   # n = 1024 .. 16384, dense and causal
    .venv/bin/python benchmarks/backward.py --sizes 1024,2048,4096 --repeats 3 --memory 32768

B=1, H=8, D=64, float32. For each n and case the measurements run interleaved, --repeats rounds (the order
within a round alternates, so neither side always runs first), and the table shows medians: attnlab forward
(``flash_attention(..., return_lse=True)``) and backward (``flash_attention_backward``), torch
``scaled_dot_product_attention`` forward + ``backward()`` (its fused CPU kernel), the ratio (the median over
rounds of attnlab's fwd + bwd over torch's in the same round: paired, so a load spike hits both sides of one
ratio), and the floor: the backward's five matrix products alone (S = q k^T, dP = dO v^T, dV = P^T dO,
dq = dS k, dK = dS^T q) on the same tiles and threads, no exp, no mask, nothing else. The last column is the
1-minute load average when the row finished. "best" is the ratio of each side's fastest round: a loaded
machine slows either side at random, and the fastest rounds are closest to what a quiet machine gives
(PyTorch's OpenMP threads split the work statically, so one core taken by another process can double its
time, where attnlab's threads pull tasks from a queue). ``--memory N`` also measures the peak extra memory of the
backward at n = N (tracemalloc, causal; the outputs dq, dk, dv themselves not counted) beside the prediction
of ``attnlab.plan(..., backward=True)``.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set, are unset for this script (both sides share the one process and
its BLAS); the machine's CPU and BLAS kernel are printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import openblas_env

if __name__ == "__main__":
    openblas_env.restart_without_overrides()                   # before NumPy loads OpenBLAS

import numpy as np                                               # noqa: E402  (after the environment is final)
import torch                                                     # noqa: E402
from threadpoolctl import threadpool_limits                      # noqa: E402

import attnlab                                                   # noqa: E402
from attnlab import masks                                        # noqa: E402
from attnlab.bench import format_header, machine_info            # noqa: E402
from attnlab.kernel.backward import backward_blocks              # noqa: E402
from attnlab.kernel.layout import default_threads                # noqa: E402

B, H, D = 1, 8, 64


def machine() -> str:
    meta = machine_info(torch)
    meta["load_before"] = os.getloadavg()
    lines = format_header(meta).splitlines()[1:]               # the title line is main()'s
    return "\n".join(lines + [openblas_env.unset_note()])


def inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, H, n, D), dtype=np.float32) for _ in range(4)]          # q, k, v, dout


def floor(q, k, v, dout, causal, threads):
    """The backward's five matrix products on the backward's tiles, every head on the kernel's threads (BLAS one
    thread each), nothing else."""
    n = q.shape[-2]
    bq, bk = backward_blocks(1, n, n)

    def head(h):
        Q, K, V, dO = q[0, h], k[0, h], v[0, h], dout[0, h]
        S, dP = np.empty((bq, bk), np.float32), np.empty((bq, bk), np.float32)
        tq, tk, tv = np.empty((bq, D), np.float32), np.empty((bk, D), np.float32), np.empty((bk, D), np.float32)
        for j in range(0, n, bk):
            for i in range(0, n, bq):
                if causal and i + bq <= j:                     # a tile above the diagonal: skipped
                    continue
                qi, kj, vj, doi = Q[i:i + bq], K[j:j + bk], V[j:j + bk], dO[i:i + bq]
                np.matmul(qi, kj.T, out=S)
                np.matmul(doi, vj.T, out=dP)
                np.matmul(S.T, doi, out=tv)
                np.matmul(dP, kj, out=tq)
                np.matmul(dP.T, qi, out=tk)

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        list(pool.map(head, range(H)))


def measure(n, causal, repeats, threads):
    q, k, v, dout = inputs(n)
    mask = masks.causal() if causal else None
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    tdo = torch.from_numpy(dout)
    state = {}

    def ours_forward():
        state["out"], state["lse"] = attnlab.flash_attention(q, k, v, mask, return_lse=True)

    def ours_backward():
        attnlab.flash_attention_backward(dout, q, k, v, state["out"], state["lse"], mask)

    def torch_both():
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        out.backward(tdo)
        for t in (tq, tk, tv):
            t.grad = None

    steps = [("fwd", ours_forward), ("bwd", ours_backward), ("torch", torch_both),
             ("floor", lambda: floor(q, k, v, dout, causal, threads))]
    times = {name: [] for name, _ in steps}
    for round_ in range(repeats):
        for name, fn in steps if round_ % 2 == 0 else steps[2:] + steps[:2]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values) for name, values in times.items()}
    result["ratio"] = statistics.median((f + b) / t for f, b, t in zip(times["fwd"], times["bwd"], times["torch"]))
    result["best"] = (min(times["fwd"]) + min(times["bwd"])) / min(times["torch"])
    return result


def peak_memory(n, threads):
    q, k, v, dout = inputs(n)
    mask = masks.causal()
    out, lse = attnlab.flash_attention(q, k, v, mask, return_lse=True, threads=threads)
    tracemalloc.start()
    try:
        grads = attnlab.flash_attention_backward(dout, q, k, v, out, lse, mask, threads=threads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    predicted = attnlab.plan(q.shape, k.shape, mask=mask, backward=True, threads=threads, impl="tiled").tiled_bytes
    return peak - sum(g.nbytes for g in grads), predicted, B * H * n * n * 4


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="comma-separated n")
    parser.add_argument("--cases", default="dense,causal", help="dense, causal or both")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per measurement (median)")
    parser.add_argument("--memory", type=int, default=0, help="also the backward's peak extra memory at this n")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = args.cases.split(",")
    threads = default_threads()
    torch.set_num_threads(threads)
    print(f"attnlab backward benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, B={B} H={H} D={D} "
          f"float32, median of {args.repeats} interleaved runs")
    print(machine())
    measure(256, True, 1, threads)                             # warm-up: thread pools, first calls; not shown
    print(f"{'n':>6} {'case':>7} {'fwd s':>8} {'bwd s':>8} {'fwd+bwd s':>10} {'torch s':>8} {'ratio':>6} "
          f"{'best':>5} {'floor s':>8} {'bwd/floor':>9} {'load':>5}")
    for n in sizes:
        for case in cases:
            t = measure(n, case == "causal", args.repeats, threads)
            both = t["fwd"] + t["bwd"]
            print(f"{n:6d} {case:>7} {t['fwd']:8.3f} {t['bwd']:8.3f} {both:10.3f} {t['torch']:8.3f} "
                  f"{t['ratio']:6.2f} {t['best']:5.2f} {t['floor']:8.3f} {t['bwd'] / t['floor']:9.2f} {os.getloadavg()[0]:5.1f}",
                  flush=True)
    print("ratio = attnlab (fwd + bwd) / torch SDPA (fwd + bwd), median of the per-round ratios; best = the same "
          "from each side's fastest round; floor = the backward's five matrix products alone; load = 1-minute load "
          "average at the row's end")
    if args.memory:
        extra, predicted, scores = peak_memory(args.memory, threads)
        print(f"peak extra memory of the backward at n = {args.memory} (causal, tracemalloc, outputs not counted): "
              f"{extra / 2**20:.1f} MiB (plan(..., backward=True) predicts {predicted / 2**20:.1f} MiB); the "
              f"score matrix alone would be {scores / 2**30:.1f} GiB")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
