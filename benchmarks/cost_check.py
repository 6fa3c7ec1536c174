"""Check attnlab.cost against measurement: time ratios for n -> 2n and peak memory, predicted vs measured.

For the naive reference path, the tiled kernel and the tiled kernel with a sliding window, at sizes large enough
that per-call overheads do not dominate, it measures time (median of >= 5 runs after a warm-up, the runs at n and
2n interleaved so that a change in the machine's load hits both alike) and peak memory (tracemalloc) at n and 2n,
and prints the model's prediction next to the measurement with the relative error. The target is agreement
within 25%.

    .venv/bin/python benchmarks/cost_check.py                 # B=1, H=8, D=64, float32, window 256, 1 thread
    .venv/bin/python benchmarks/cost_check.py --quick         # small sizes, seconds
    .venv/bin/python benchmarks/cost_check.py --json out.json

The predicted time ratio is the ratio of the FLOPs the path computes (time is proportional to work when the
sizes are large enough); the predicted memory is ``attnlab.cost``'s peak-memory model for that path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from attnlab.learn.experiments.cost_doubling import measure

TARGET = 0.25
# (variant, n): each is measured at n and 2n
PAIRS = [("naive", 1024), ("naive", 2048), ("tiled", 2048), ("tiled", 4096), ("window", 8192), ("window", 16384)]
QUICK_PAIRS = [("naive", 256), ("tiled", 256), ("window", 1024)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=256, help="keys each query sees in the window variant")
    parser.add_argument("--block", type=int, default=128, help="tile size of the tiled kernel")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes (overheads dominate: not the check)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    shape = dict(heads=args.heads, head_dim=args.head_dim, window=args.window, block=args.block)
    print(f"cost model check: batch 1, {args.heads} heads x {args.head_dim}, float32, window {args.window}, "
          f"tiles {args.block}x{args.block}, 1 thread, median of {args.repeat} interleaved runs; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start")
    rows, failures = [], 0
    print(f"{'variant':<8} {'n -> 2n':>13} {'ms at n':>9} {'at 2n':>9} {'time x':>7} {'(min)':>6} {'model':>6} "
          f"{'error':>7}   {'peak n':>10} {'model':>10} {'error':>7}   {'peak 2n':>10} {'model':>10} {'error':>7}")
    for variant, n in QUICK_PAIRS if args.quick else PAIRS:
        a, b = measure(variant, [n, 2 * n], seed=args.seed, repeat=args.repeat, **shape)   # runs interleaved
        t_ratio, t_model = b["time_s"] / a["time_s"], b["predicted_flops"] / a["predicted_flops"]
        t_min = b["time_min_s"] / a["time_min_s"]
        errors = [t_ratio / t_model - 1, a["peak_bytes"] / a["predicted_peak_bytes"] - 1,
                  b["peak_bytes"] / b["predicted_peak_bytes"] - 1]
        failures += any(abs(e) > TARGET for e in errors)
        print(f"{variant:<8} {n:>6}->{2 * n:<6} {a['time_s'] * 1e3:>9.1f} {b['time_s'] * 1e3:>9.1f} "
              f"{t_ratio:>7.2f} {t_min:>6.2f} {t_model:>6.2f} {errors[0]:>+7.1%}   "
              f"{_mib(a['peak_bytes']):>10} {_mib(a['predicted_peak_bytes']):>10} {errors[1]:>+7.1%}   "
              f"{_mib(b['peak_bytes']):>10} {_mib(b['predicted_peak_bytes']):>10} {errors[2]:>+7.1%}")
        rows.append({"variant": variant, "n": n, "at_n": a, "at_2n": b, "time_ratio": t_ratio,
                     "min_time_ratio": t_min, "predicted_time_ratio": t_model, "errors": errors})
    print(f"load average {os.getloadavg()[0]:.1f} at end; {failures} of {len(rows)} pairs outside {TARGET:.0%} "
          f"(time: ratio of medians; '(min)' is the ratio of the fastest runs, less sensitive to a busy machine)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "time": time.time()}, f, indent=2)
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
