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

With --masks (issue 17) a second table times the kernel on each mask kind (MASK_KINDS), the dense kernel and the
floors, interleaved in the same rounds:

  x dense    the kernel's useful GFLOP/s (4 B H D x allowed pairs / time) over the dense kernel's (target >= 0.8)
  floor      the dense floor times the mask's allowed fraction of cells: the same per-cell NumPy work on the
             allowed cells only, at the dense floor's speed (a kernel that skipped every blocked cell for free)
  x floor    the kernel's time over that floor (target <= 1.2)
  tiles      the floor's calls on the non-empty tiles of the mask's default tile map (1024 x 256): what a kernel
             that computed whole tiles, and nothing else, would take
  slices     for a mask the kernel runs in its band regime (``attnlab.kernel.band``): the same unavoidable calls
             on the band's row slices as the kernel cuts them (batched score matmul over key windows, exp2, P v,
             row sums): the floor of that way of skipping blocked cells; "-" for the other masks
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
from attnlab.kernel import band
from attnlab.measure import time_calls


def on_threads(runs):
    """A call that runs runs[0] here and the others on the kernel's pool at once, BLAS held to one thread each."""
    def call():
        from attnlab.kernel.threads import blas_threads, pool

        with blas_threads(1):
            futures = [pool(len(runs) - 1).submit(run) for run in runs[1:]]
            runs[0]()
            for f in futures:
                f.result()
    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=comma_ints, default=(4096,),
                        help="sequence lengths, comma-separated (default 4096)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--masks", type=lambda t: tuple(x for x in t.split(",") if x), default=(),
                        help=f"mask kinds for the masks table, comma-separated, 'all' for every one "
                             f"({','.join(MASK_KINDS)}); default: no masks table")
    parser.add_argument("--no-torch-table", action="store_true", help="skip the dense/causal table with PyTorch")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds each call runs untimed before each timed run (attnlab.measure.time_calls), "
                             "so no call is timed against the idle threads of the one before it; default 0")
    parser.add_argument("--unset-openblas-env", action="store_true",
                        help="if OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE are set, restart without them (for every "
                             "path of the run: PyTorch does not use OpenBLAS)")
    args = parser.parse_args(argv)
    if not args.settle >= 0:                                          # NaN too
        parser.error(f"--settle must be a non-negative number of seconds, got {args.settle}")
    openblas_env.restart_without_overrides(args.unset_openblas_env)
    import torch

    meta = bench.machine_info(torch)
    meta["load_before"] = os.getloadavg()
    print(bench.format_header(meta, title="kernel ceiling"))
    print(openblas_env.unset_note())
    if args.settle:
        print(f"each timed run follows {args.settle:g} s of untimed runs of the same call (--settle)")
    threads = planner.default_threads()
    print(f"sgemm 2048^3 per thread, {threads} threads at once: {_sgemm_gflops(threads):.1f} GFLOP/s each")
    if not args.no_torch_table:
        print(f"{'case':8s} {'n':>6s} {'path':9s} {'median ms':>10s} {'GFLOP/s':>8s} {'x torch':>8s}")
        for n in args.sizes:
            for line in _rows(n, args.heads, args.head_dim, args.repeat, args.settle, threads, torch):
                print(line, flush=True)
    kinds = MASK_KINDS if args.masks == ("all",) else args.masks
    unknown = [kind for kind in kinds if kind not in MASK_KINDS]
    if unknown:
        parser.error(f"--masks: unknown kind(s) {', '.join(unknown)}; known: {', '.join(MASK_KINDS)}")
    if kinds:
        print(f"masks (B=1, H={args.heads}, D={args.head_dim}, float32; median of {args.repeat} interleaved rounds)")
        print(f"{'mask':11s} {'n':>6s} {'kernel ms':>10s} {'GFLOP/s':>8s} {'x dense':>8s} {'floor ms':>9s} "
              f"{'x floor':>8s} {'tiles ms':>9s} {'slices ms':>9s} {'load':>5s}")
        for n in args.sizes:
            for line in _mask_rows(n, kinds, args.heads, args.head_dim, args.repeat, args.settle, threads):
                print(line, flush=True)
    print(f"load average after {bench.format_load(os.getloadavg())}")
    return 0


def _rows(n, H, D, repeat, settle, threads, torch):
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
    times = dict(zip(fns, (t.median_s for t in time_calls(*fns.values(), repeat=repeat, settle=settle))))
    times["causal", "floor"] = times["dense", "floor"] * (n + 1) / (2 * n)
    for case in ("dense", "causal"):
        useful = 4 * H * D * (n * n if case == "dense" else n * (n + 1) // 2)
        for path in ("torch", "attnlab", "floor", "matmuls"):
            if (case, path) in times:
                t = times[case, path]
                yield (f"{case:8s} {n:6d} {path:9s} {t * 1e3:10.2f} {useful / t / 1e9:8.1f} "
                       f"{t / times[case, 'torch']:8.3f}")


MASK_KINDS = ("causal", "window256", "window1024", "document", "prefix_lm", "dilated")


def mask_of(kind, n):
    """The masks of the issue-17 table: a causal mask, sliding windows of 256 and 1024 keys (the query's own
    included), 8 packed documents of n / 8 tokens, a prefix LM with an n / 4 prefix, and a dilated window (1024 keys,
    every 4th: Child et al. 2019)."""
    return {"causal": lambda: attnlab.masks.causal(),
            "window256": lambda: attnlab.masks.sliding_window(255),
            "window1024": lambda: attnlab.masks.sliding_window(1023),
            "document": lambda: attnlab.masks.document(np.repeat(np.arange(8), -(-n // 8))[:n]),
            "prefix_lm": lambda: attnlab.masks.prefix_lm(n // 4),
            "dilated": lambda: attnlab.masks.sliding_window(1023) & attnlab.masks.dilated(4)}[kind]()


def allowed_pairs(mask, n) -> int:
    """Cells (query, key) the mask allows at n x n, counted in stripes of rows."""
    rows = max(1, 2**22 // n)
    return sum(int(mask.evaluate(n, n, np.arange(a, min(n, a + rows))[:, None], np.arange(n)[None, :]).sum())
               for a in range(0, n, rows))


def _mask_rows(n, kinds, H, D, repeat, settle, threads):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, H, n, D), dtype=np.float32) for _ in range(3))
    block_q, block_k = planner.default_blocks(1, n, n)
    mask_objs = {kind: mask_of(kind, n) for kind in kinds}
    fns = {"dense": lambda: attnlab.flash_attention(q, k, v), "floor": _floor(H, n, D, block_q, block_k, threads,
                                                                             exp=True)}
    for kind, mask in mask_objs.items():
        fns[kind] = lambda mask=mask: attnlab.flash_attention(q, k, v, mask)
        tile_map = mask.blocks(n, n, block_q, block_k)
        fns[kind + " tiles"] = _floor(H, n, D, block_q, block_k, threads, exp=True,
                                      tiles=[(i, j) for i, j in zip(*np.nonzero(tile_map))])
        found = band.band_of(mask, n, n, block_q, block_q * block_k, 1)
        if found is not None:
            fns[kind + " slices"] = _slice_floor(H, n, D, found, block_q, block_q * block_k, threads)
    times = dict(zip(fns, (t.median_s for t in time_calls(*fns.values(), repeat=repeat, settle=settle))))
    load = os.getloadavg()[0]
    dense_rate = 4 * H * D * n * n / times["dense"]
    yield (f"{'dense':11s} {n:6d} {times['dense'] * 1e3:10.2f} {dense_rate / 1e9:8.1f} {1:8.2f} "
           f"{times['floor'] * 1e3:9.2f} {times['dense'] / times['floor']:8.2f} {times['floor'] * 1e3:9.2f} "
           f"{'-':>9s} {load:5.1f}")
    for kind, mask in mask_objs.items():
        pairs = allowed_pairs(mask, n)
        t, floor = times[kind], times["floor"] * pairs / (n * n)
        rate = 4 * H * D * pairs / t
        slices = f"{times[kind + ' slices'] * 1e3:.2f}" if kind + " slices" in times else "-"
        yield (f"{kind:11s} {n:6d} {t * 1e3:10.2f} {rate / 1e9:8.1f} {rate / dense_rate:8.2f} {floor * 1e3:9.2f} "
               f"{t / floor:8.2f} {times[kind + ' tiles'] * 1e3:9.2f} {slices:>9s} {load:5.1f}")


def _floor(H, n, D, block_q, block_k, threads, *, exp, tiles=None):
    """A callable doing the kernel's unavoidable per-tile NumPy work for H heads of n x n, on ``threads``
    threads (the kernel's pool), each with its own buffers; without ``exp`` only the two matmuls. ``tiles``:
    the (query block, key block) pairs of one head to do (default: all)."""
    rng = np.random.default_rng(1)
    if tiles is None:
        tiles = [(i, j) for i in range(-(-n // block_q)) for j in range(-(-n // block_k))]
    tiles = [(h, i, j) for h in range(H) for i, j in tiles]

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

    return on_threads(runs)


def _slice_floor(H, n, D, found, block_q, tile_cells, threads):
    """A callable doing the band regime's unavoidable NumPy work for H heads of n x n: per query block and residue
    class, batches of row slices (as many as the kernel's score tile holds), each one batched score matmul against
    overlapping key windows, exp2, the P v matmul and the row sums; no probe, mask or output. On ``threads``
    threads like ``_floor``."""
    rng = np.random.default_rng(1)
    h, s = found.rows, found.stride
    width = found.keys()
    per_call = max(1, tile_cells // (h * width))
    sub_rows = -(-block_q // s)                                   # rows of one residue class in a query block
    batches = []
    for _ in range(H):
        for _ in range(-(-n // block_q)):
            for _ in range(s):
                slices = -(-sub_rows // h)
                batches += [min(per_call, slices - b) for b in range(0, slices, per_call)]

    def worker(share):
        keys = rng.standard_normal((n + width, D), dtype=np.float32) * 0.1
        q = rng.standard_normal((per_call, h, D), dtype=np.float32) * 0.1
        scores = np.empty((per_call, h, width), np.float32)
        out, ones = np.empty((per_call, h, D), np.float32), np.ones(width, np.float32)
        sums = np.empty((per_call, h), np.float32)
        windows = np.lib.stride_tricks.as_strided(keys, (per_call, width, D), (h * keys.strides[0],) + keys.strides)

        def run():
            for nb in share:
                S = scores[:nb]
                np.matmul(q[:nb], np.swapaxes(windows[:nb], -1, -2), out=S)
                np.exp2(S, out=S)
                np.matmul(S, windows[:nb], out=out[:nb])
                np.matmul(S, ones, out=sums[:nb])
        return run

    runs = [worker(batches[t::threads]) for t in range(threads)]

    return on_threads(runs)


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
