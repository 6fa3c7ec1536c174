"""Ring attention demo: exactness against single-process attention, per-rank work, traffic, memory and time.

    torchrun --nproc-per-node 4 -m attnlab.distributed.demo --seq 4096 --mask causal
    python -m attnlab.distributed.demo --seq 4096 --nproc 4          # same, processes started from Python

Every rank builds the same random q, k, v (B, H, L, D) from ``--seed``, keeps its shard, runs ring attention
``--repeat`` times, and rank 0 prints one row per rank and the largest |ring - single-process attnlab attention|
over the gathered output (``--no-check`` skips the single-process reference and builds only the shard, for
memory measurements).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from .. import masks
from ..api import scaled_dot_product_attention
from ..planner import plan
from . import launch
from .comm import gather
from .layout import LAYOUTS, positions, shard
from .ring import ring_attention, work_balance

MASKS = ("dense", "causal", "window", "document")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m attnlab.distributed.demo", description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, required=True, help="sequence length L (need not divide the world size)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4, help="query heads H")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads G (default H; H %% G == 0)")
    p.add_argument("--dim", type=int, default=32, help="head dim D")
    p.add_argument("--mask", choices=MASKS, default="causal")
    p.add_argument("--window", type=int, default=256, help="left window of --mask window")
    p.add_argument("--docs", type=int, default=4, help="documents packed in the sequence for --mask document")
    p.add_argument("--layout", choices=LAYOUTS, default="zigzag")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up (medians are printed)")
    p.add_argument("--backward", action="store_true", help="also time the backward ring")
    p.add_argument("--no-check", action="store_true", help="skip the single-process reference")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds any wait on a peer may take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=None, help="start this many local processes (not under torchrun)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--json", default=None, help="write rank 0's summary to this JSON file")
    args = p.parse_args(argv)
    if args.seq < 1 or args.repeat < 1 or args.dim < 1 or args.heads < 1:
        p.error("--seq, --repeat, --dim and --heads must be positive")
    if args.heads % (args.kv_heads or args.heads):
        p.error(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    return args


def build_mask(args):
    if args.mask == "dense":
        return None
    if args.mask == "causal":
        return masks.causal()
    if args.mask == "window":
        return masks.sliding_window(args.window)
    doc_ids = np.repeat(np.arange(args.docs), -(-args.seq // args.docs))[: args.seq]   # equal-length documents
    return masks.document(doc_ids) & masks.causal()


def run(args) -> dict | None:
    """One rank's part; rank 0 returns the summary (others None)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, args.dtype)
    G = args.kv_heads or args.heads
    shapes = ((args.batch, args.heads, args.seq, args.dim), (args.batch, G, args.seq, args.dim),
              (args.batch, G, args.seq, args.dim))
    if args.no_check:                        # only this rank's shard ever exists here
        gen = torch.Generator().manual_seed(args.seed + rank)
        full = None
        n = len(positions(rank, world, args.seq, args.layout))
        q, k, v = (torch.randn(s[:2] + (n,) + s[3:], generator=gen, dtype=dtype) for s in shapes)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        full = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
        q, k, v = (shard(x, rank, world, args.layout) for x in full)
    mask = build_mask(args)
    rss0 = _max_rss()
    times, back_times, parts, stats = [], [], [], {}
    for _ in range(args.repeat + 1):                              # one warm-up run
        dist.barrier()
        qg, kg, vg = (x.detach().requires_grad_(args.backward) for x in (q, k, v))
        t0 = time.perf_counter()
        out = ring_attention(qg, kg, vg, mask=mask, layout=args.layout, timeout=args.timeout, stats=stats)
        times.append(time.perf_counter() - t0)
        parts.append((stats["compute_s"], stats["wait_s"]))
        if args.backward:
            t0 = time.perf_counter()
            out.sum().backward()
            back_times.append(time.perf_counter() - t0)
    row = dict(stats, forward_ms=1e3 * statistics.median(times[1:]),
               compute_s=statistics.median(c for c, _ in parts[1:]), wait_s=statistics.median(w for _, w in parts[1:]),
               backward_ms=1e3 * statistics.median(back_times[1:]) if args.backward else None,
               rss_growth_mib=(_max_rss() - rss0) / 2**20)
    error, ref_ms, ref_impl = _check(args, full, out.detach(), mask) if not args.no_check else (None, None, None)
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank != 0:
        return None
    balance = work_balance(args.seq, world, args.layout, mask, B=args.batch, H=args.heads)
    summary = {"args": {k: v for k, v in vars(args).items() if k != "json"}, "world": world,
               "backend": dist.get_backend(), "rows": rows, "max_abs_error": error, "single_process_ms": ref_ms,
               "single_process_impl": ref_impl, "imbalance": balance["imbalance"]}
    print(report(summary))
    return summary


def _check(args, full, out, mask):
    whole = gather(out, args.layout, timeout=args.timeout)
    if dist.get_rank() != 0:
        return None, None, None
    arrays = [x.numpy() for x in full]                    # NumPy: impl="auto" may pick the tiled kernel
    impl = plan(*(x.shape for x in arrays), mask=mask, dtype=args.dtype).impl
    t0 = time.perf_counter()
    ref = scaled_dot_product_attention(*arrays, mask)
    ms = 1e3 * (time.perf_counter() - t0)
    return float(np.abs(whole.numpy() - ref).max()), ms, impl


def _max_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report(summary: dict) -> str:
    a = summary["args"]
    lines = [f"ring attention: P={summary['world']} backend={summary['backend']} layout={a['layout']} "
             f"mask={a['mask']} L={a['seq']} B={a['batch']} H={a['heads']} G={a['kv_heads'] or a['heads']} "
             f"D={a['dim']} {a['dtype']} threads/rank={a['threads']}",
             f"{'rank':>4} {'L_local':>7} {'blocks':>6} {'pieces':>6} {'allowed':>10} {'computed':>10} "
             f"{'KV own KiB':>10} {'KV peak KiB':>11} {'sent KiB':>9} {'fwd ms':>8} {'compute ms':>10} "
             f"{'wait ms':>8} {'bwd ms':>8} {'RSS+ MiB':>8}"]
    for r in summary["rows"]:
        bwd = f"{r['backward_ms']:8.1f}" if r["backward_ms"] is not None else f"{'-':>8}"
        lines.append(f"{r['rank']:>4} {r['L_local']:>7} {r['blocks_computed']:>6} {r['sub_blocks']:>6} "
                     f"{r['cells']:>10} {r['computed']:>10} "
                     f"{r['kv_bytes_own'] / 1024:>10.1f} {r['kv_bytes_peak'] / 1024:>11.1f} "
                     f"{r['bytes_sent'] / 1024:>9.1f} {r['forward_ms']:>8.1f} {1e3 * r['compute_s']:>10.1f} "
                     f"{1e3 * r['wait_s']:>8.1f} {bwd} {r['rss_growth_mib']:>8.1f}")
    lines.append(f"work imbalance (max/mean computed score cells): {summary['imbalance']:.3f}")
    if summary["max_abs_error"] is not None:
        lines.append(f"max |ring - single-process attnlab| = {summary['max_abs_error']:.3e}   "
                     f"(single process, impl={summary['single_process_impl']}: "
                     f"{summary['single_process_ms']:.1f} ms)")
    return "\n".join(lines)


def _rank_main(args):
    torch.set_num_threads(args.threads)
    return run(args)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.nproc is not None:
        results = launch.run_local(_rank_main, args.nproc, args, timeout=max(600.0, 10 * args.timeout),
                                   init_timeout=args.timeout, threads=args.threads,
                                   grace=2 * args.timeout)
        failed = [r for r in results if not r.ok]
        for r in failed:
            print(f"rank {r.rank} failed: {r.error}", file=sys.stderr)
        summary = results[0].value if not failed else None
    else:
        launch.init(timeout=args.timeout)
        summary = _rank_main(args)
        dist.destroy_process_group()
        failed = []
    if summary is not None and args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
