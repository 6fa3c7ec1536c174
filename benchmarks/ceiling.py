"""How fast can a NumPy tiled kernel be on this machine? The floor under attnlab.flash_attention, next to PyTorch.

    .venv/bin/python benchmarks/ceiling.py                      # n = 4096, B = 1, H = 8, D = 64, float32
    .venv/bin/python benchmarks/ceiling.py --sizes 2048,4096,8192 --unset-openblas-env

Exact attention needs, per head, two matrix products of 2 n^2 D FLOPs each (S = q k^T and P v) and n^2
exponentials. A tiled NumPy kernel hands the products to BLAS and the exponentials to a ufunc; everything else it
does (the running max, masks, bookkeeping, Python) comes on top. This script times, in one run, interleaved, the
median of --repeat runs after a warm-up:

  torch      torch.nn.functional.scaled_dot_product_attention on the CPU (its fused kernel, all cores)
  attnlab    attnlab.flash_attention, default tiles and threads
  floor      the same tiles with nothing but the unavoidable NumPy calls: the score matmul (with the folded
             shift column), exp2 in place, the P v matmul, the row-sum matrix-vector product and the accumulator
             add; no max, no masks, no checks; spread over the same threads, BLAS held to one thread each
  matmuls    the floor without exp2, the row sums and the add: the two BLAS products alone
  sgemm      one large square float32 matrix product per thread, for the machine's BLAS ceiling in GFLOP/s

For causal attention the floor is the dense floor times the fraction of score cells a causal mask allows,
(n + 1) / 2n: a kernel that skipped exactly the blocked cells at no cost. "x torch" is time / torch's time: the
floor's ratio is the lowest any kernel built from these NumPy calls can reach here.
"""

import argparse
import os
import sys
import time

import numpy as np
import openblas_env

import attnlab
from attnlab import bench, planner
from attnlab.commands.bench import comma_ints
from attnlab.measure import time_calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=comma_ints, default=(4096,),
                        help="sequence lengths, comma-separated (default 4096)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--unset-openblas-env", action="store_true",
                        help="if OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE are set, restart without them (for every "
                             "path of the run: PyTorch does not use OpenBLAS)")
    args = parser.parse_args(argv)
    openblas_env.restart_without_overrides(args.unset_openblas_env)
    import torch

    meta = bench.machine_info(torch)
    meta["load_before"] = os.getloadavg()
    print(bench.format_header(meta, title="kernel ceiling"))
    print(openblas_env.unset_note())
    threads = planner.default_threads()
    print(f"sgemm 2048^3 per thread, {threads} threads at once: {_sgemm_gflops(threads):.1f} GFLOP/s each")
    print(f"{'case':8s} {'n':>6s} {'path':9s} {'median ms':>10s} {'GFLOP/s':>8s} {'x torch':>8s}")
    for n in args.sizes:
        for line in _rows(n, args.heads, args.head_dim, args.repeat, threads, torch):
            print(line)
    print(f"load average after {bench.format_load(os.getloadavg())}")
    return 0


def _rows(n, H, D, repeat, threads, torch):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, H, n, D), dtype=np.float32) for _ in range(3))
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    block_q, block_k = planner.default_blocks(1, n, n)
    fns = {
        ("dense", "torch"): lambda: sdpa(tq, tk, tv),
        ("dense", "attnlab"): lambda: attnlab.flash_attention(q, k, v),
        ("dense", "floor"): _floor(H, n, D, block_q, block_k, threads, exp=True),
        ("dense", "matmuls"): _floor(H, n, D, block_q, block_k, threads, exp=False),
        ("causal", "torch"): lambda: sdpa(tq, tk, tv, is_causal=True),
        ("causal", "attnlab"): lambda: attnlab.flash_attention(q, k, v, attnlab.masks.causal()),
    }
    times = dict(zip(fns, (t.median_s for t in time_calls(*fns.values(), repeat=repeat))))
    times["causal", "floor"] = times["dense", "floor"] * (n + 1) / (2 * n)
    for case in ("dense", "causal"):
        useful = 4 * H * D * (n * n if case == "dense" else n * (n + 1) // 2)
        for path in ("torch", "attnlab", "floor", "matmuls"):
            if (case, path) in times:
                t = times[case, path]
                yield (f"{case:8s} {n:6d} {path:9s} {t * 1e3:10.2f} {useful / t / 1e9:8.1f} "
                       f"{t / times[case, 'torch']:8.3f}")


def _floor(H, n, D, block_q, block_k, threads, *, exp):
    """A callable doing the kernel's unavoidable per-tile NumPy work for H heads of n x n, on ``threads``
    threads (the kernel's pool), each with its own buffers; without ``exp`` only the two matmuls."""
    rng = np.random.default_rng(1)
    tiles = [(h, i, j) for h in range(H) for i in range(-(-n // block_q)) for j in range(-(-n // block_k))]

    def worker(share):
        qa = rng.standard_normal((block_q, D + 1), dtype=np.float32) * 0.1         # [q * scale | -m]
        ka = np.ones((block_k, D + 1), np.float32)                                  # [k | 1]
        ka[:, :D] = rng.standard_normal((block_k, D), dtype=np.float32) * 0.1
        v = rng.standard_normal((block_k, D), dtype=np.float32)
        s, ones = np.empty((block_q, block_k), np.float32), np.ones(block_k, np.float32)
        acc, pv = np.zeros((block_q, D + 1), np.float32), np.empty((block_q, D + 1), np.float32)

        def run():
            for _ in share:
                np.matmul(qa, ka.T, out=s)
                if exp:
                    np.exp2(s, out=s)
                np.matmul(s, v, out=pv[:, :D])
                if exp:
                    np.matmul(s, ones, out=pv[:, D])
                    np.add(acc, pv, out=acc)
        return run

    runs = [worker(tiles[t::threads]) for t in range(threads)]

    def call():
        from attnlab.kernel.threads import blas_threads, pool

        with blas_threads(1):
            futures = [pool(threads - 1).submit(run) for run in runs[1:]]
            runs[0]()
            for f in futures:
                f.result()
    return call


def _sgemm_gflops(threads) -> float:
    """GFLOP/s of one thread's 2048^3 float32 product while every thread runs one."""
    from attnlab.kernel.threads import blas_threads, pool

    a = np.random.default_rng(2).standard_normal((2048, 2048), dtype=np.float32)
    outs = [np.empty_like(a) for _ in range(threads)]

    def one(out):
        np.matmul(a, a, out=out)
        start = time.perf_counter()
        for _ in range(3):
            np.matmul(a, a, out=out)
        return 3 * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9

    with blas_threads(1):
        futures = [pool(threads - 1).submit(one, out) for out in outs[1:]] if threads > 1 else []
        rates = [one(outs[0])] + [f.result() for f in futures]
    return min(rates)


if __name__ == "__main__":
    sys.exit(main())
