"""Benchmark the attention paths in one run: attnlab's reference path, attnlab's tiled kernel, PyTorch's CPU SDPA.

Cases, for B=1, H=8, D=64, float32 (``--heads``/``--head-dim`` change them):

- ``dense``, ``causal``, ``window`` (sliding window of 256 keys, the query's own included) and ``gqa`` (8 query
  heads sharing 2 key/value heads, dense) at sequence lengths n;
- ``decode``: one query (Lq = 1) against a context of n keys, the step of token-by-token generation, repeated
  on the same keys and values, which stay in the CPU caches as long as they fit (32 MiB of L3 here: up to 8k keys);
- ``decode_cold``: the same step with the caches emptied before each timed run (``measure.evict_caches``), as in
  a real model, where the other layers' steps push a layer's KV cache out between two of its steps.

Every number is the median of ``--repeat`` (>= 5; at least DECODE_REPEAT for the millisecond decode steps) timed
runs after a warm-up (``attnlab.measure.time_call``), all
paths measured in the same process, interleaved by size. GFLOP/s counts the useful work 4 * B * H * D * (number of
(query, key) pairs the mask allows): the matmuls q k^T and p v. Peak memory is measured during the warm-up run:

- NumPy paths: ``tracemalloc`` (NumPy reports its buffers to it) - the peak above the level at the call's start,
  minus the output, i.e. the memory the call needs beyond its inputs and outputs;
- PyTorch: the growth of the process's peak resident set (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``) minus the output; "n/a" where /proc does not allow it.

The reference path is skipped (and the table says so) where its score matrices would exceed ``--reference-limit`` GiB;
PyTorch has no sliding-window SDPA, so its window case runs dense attention with a boolean mask and is skipped
above ``--torch-mask-limit`` keys. Results go to ``OUT/attention.json`` and ``OUT/attention.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import masks, planner
from .api import scaled_dot_product_attention
from .kernel import flash_attention
from .measure import evict_caches, peak_memory, time_call, time_calls

CASES = ("dense", "causal", "window", "gqa", "decode", "decode_cold")
DECODE = ("decode", "decode_cold")
IMPLS = ("reference", "tiled", "torch")
QUICK_SIZES = (512, 1024, 2048)
FULL_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
QUICK_CONTEXTS = (1024, 2048, 4096, 8192)
FULL_CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768)
WINDOW = 256
DECODE_REPEAT = 25          # a decode step takes milliseconds: more runs so the median resists a busy machine
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class Result:
    case: str
    n: int
    impl: str
    median_s: float | None = None
    runs: tuple = ()
    gflops: float | None = None
    peak_bytes: int | None = None
    note: str = ""


def add_arguments(parser: argparse.ArgumentParser, *, full: bool) -> None:
    sizes, contexts = (FULL_SIZES, FULL_CONTEXTS) if full else (QUICK_SIZES, QUICK_CONTEXTS)
    parser.add_argument("--sizes", type=_ints, default=sizes,
                        help=f"sequence lengths, comma-separated (default {','.join(map(str, sizes))})")
    parser.add_argument("--contexts", type=_ints, default=contexts,
                        help=f"decode context lengths (default {','.join(map(str, contexts))})")
    parser.add_argument("--cases", type=_names, default=CASES, help=f"subset of {','.join(CASES)}")
    parser.add_argument("--impls", type=_impls, default=IMPLS, help=f"subset of {','.join(IMPLS)}")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (>= 5)")
    parser.add_argument("--threads", type=int, default=None, help="attnlab kernel threads (default: all cores)")
    parser.add_argument("--single-core", action="store_true",
                        help="one thread for every path (attnlab kernel, BLAS, torch): a per-core comparison")
    parser.add_argument("--reference-limit", "--naive-limit", dest="reference_limit", type=float, default=3.0,
                        help="skip the reference path above this many GiB of score matrices (default 3; "
                             "--naive-limit is its old name)")
    parser.add_argument("--torch-mask-limit", type=int, default=8192,
                        help="largest n for PyTorch's masked (window) run (default 8192)")
    parser.add_argument("--unset-openblas-env", action="store_true",
                        help=f"if {' or '.join(OPENBLAS_VARS)} are set, restart without them (both paths share "
                             f"the process, so both run without them)")
    parser.add_argument("--out", default=None, help="folder for attention.json and attention.png")


def _ints(text):
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _subset(text, allowed, what):
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in values if x not in allowed]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"{what} must be a subset of {','.join(allowed)}, got {text!r}")
    return values


def _names(text):
    return _subset(text, CASES, "cases")


def _impls(text):
    return _subset(text, IMPLS, "impls")


# --- running -----------------------------------------------------------------------------------------------------
def run(args, echo=print) -> dict:
    """Run the benchmark described by parsed ``args``; print the table; write JSON and the plot to ``args.out``."""
    if args.repeat < 5:
        raise ValueError(f"--repeat must be >= 5 (the median needs enough runs), got {args.repeat}")
    _maybe_restart_without_openblas_env(args)
    torch = _torch() if "torch" in args.impls else None
    if args.single_core:
        _one_thread_everywhere(args, torch)
    meta = machine_info(torch)
    meta["attnlab_threads"] = args.threads or meta["attnlab_threads"]
    meta["command"] = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
    meta["load_before"] = os.getloadavg()
    echo(_header(meta))
    results = []
    for case in args.cases:
        for n in (args.contexts if case in DECODE else args.sizes):
            for impl in args.impls:
                result = _measure(case, n, impl, args, torch)
                results.append(result)
                echo(_row(result, results))
    echo("re-measuring the targets' ratios with their runs interleaved ...")
    pairs = paired(args, torch)
    meta["load_after"] = os.getloadavg()
    report = {"meta": meta, "results": [asdict(r) for r in results], "targets": targets(results, pairs)}
    echo("")
    echo(format_table(results))
    echo("")
    echo(format_targets(report["targets"]))
    echo(f"load average before {_load(meta['load_before'])}, after {_load(meta['load_after'])}")
    if args.out:
        write(report, args.out)
        echo(f"wrote {os.path.join(args.out, 'attention.json')} and {os.path.join(args.out, 'attention.png')}")
    return report


def _maybe_restart_without_openblas_env(args):
    present = [name for name in OPENBLAS_VARS if name in os.environ]
    if args.unset_openblas_env and present:
        env = {key: value for key, value in os.environ.items() if key not in OPENBLAS_VARS}
        env["ATTNLAB_BENCH_UNSET"] = ",".join(f"{name}={os.environ[name]}" for name in present)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def _one_thread_everywhere(args, torch):
    from threadpoolctl import threadpool_limits

    args.threads = 1
    threadpool_limits(limits=1)                  # the reference path's BLAS, for the rest of the process
    if torch is not None:
        torch.set_num_threads(1)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _inputs(case, n, heads, head_dim, seed=0):
    """q, k, v (NumPy float32), the attnlab mask and the kwargs PyTorch needs for the same attention."""
    rng = np.random.default_rng(seed)
    kv_heads = 2 if case == "gqa" else heads
    Lq = 1 if case in DECODE else n
    q = rng.standard_normal((1, heads, Lq, head_dim), dtype=np.float32)
    k = rng.standard_normal((1, kv_heads, n, head_dim), dtype=np.float32)
    v = rng.standard_normal((1, kv_heads, n, head_dim), dtype=np.float32)
    mask = {"causal": masks.causal(), "window": masks.sliding_window(WINDOW - 1)}.get(case)
    torch_kw = {"causal": {"is_causal": True}, "gqa": {"enable_gqa": True}}.get(case, {})
    return q, k, v, mask, torch_kw


def allowed_pairs(case, n) -> int:
    """(query, key) pairs the case's mask allows, per head."""
    if case in DECODE:
        return n
    if case == "causal":
        return n * (n + 1) // 2
    if case == "window":
        w = min(WINDOW, n)
        return n * w - w * (w - 1) // 2
    return n * n


def _call(case, n, impl, args, torch):
    """(fn, note, output bytes): the call that runs ``impl`` on the case's inputs; fn None when it is skipped."""
    q, k, v, mask, torch_kw = _inputs(case, n, args.heads, args.head_dim)
    out_bytes = q.shape[-2] * q.shape[-3] * v.shape[-1] * 4
    if impl == "reference":
        need = planner.plan(q.shape, k.shape, mask=mask, impl="reference", budget=2**62).reference_bytes
        if need > args.reference_limit * 2**30:
            return (None, f"skipped: needs ~{need / 2**30:.1f} GiB > --reference-limit {args.reference_limit:g}",
                    out_bytes)
        return (lambda: _with_budget(need, lambda: scaled_dot_product_attention(q, k, v, mask, impl="reference")),
                "", out_bytes)
    if impl == "tiled":
        return lambda: flash_attention(q, k, v, mask, threads=args.threads), "", out_bytes
    if torch is None:
        return None, "skipped: torch is not installed", out_bytes
    return _torch_call(torch, case, n, q, k, v, mask, torch_kw, args) + (out_bytes,)


def _measure(case, n, impl, args, torch) -> Result:
    result = Result(case, n, impl)
    fn, result.note, out_bytes = _call(case, n, impl, args, torch)
    if fn is None:
        return result
    if impl == "torch":
        result.peak_bytes = _rss_growth(fn)
    else:
        result.peak_bytes = peak_memory(fn, warmup=False)
    result.peak_bytes = None if result.peak_bytes is None else max(0, result.peak_bytes - out_bytes)
    timing = time_call(fn, repeat=max(args.repeat, DECODE_REPEAT) if case in DECODE else args.repeat, warmup=0,
                       before=evict_caches if case == "decode_cold" else None)
    result.median_s, result.runs = timing.median_s, timing.runs
    result.gflops = 4 * args.heads * args.head_dim * allowed_pairs(case, n) / timing.median_s / 1e9
    return result


# (target, its two calls): the target is the ratio of their median times, re-measured with their runs interleaved
# (measure.time_calls), so that a change in the machine's load between the table's rows cannot decide it
PAIRS = (
    ("dense_4096_tiled_over_torch", [("dense", 4096, "tiled"), ("dense", 4096, "torch")]),
    ("causal_4096_tiled_over_torch", [("causal", 4096, "tiled"), ("causal", 4096, "torch")]),
    ("causal_4096_over_dense_4096_tiled", [("causal", 4096, "tiled"), ("dense", 4096, "tiled")]),
    ("window_32768_over_16384_tiled", [("window", 32768, "tiled"), ("window", 16384, "tiled")]),
)


def paired(args, torch) -> dict:
    """{target: ratio} for the targets whose two calls this run's cases and sizes include, each pair's runs
    interleaved; and the worst n -> 2n growth of the cold decode step, all its contexts interleaved (not of the
    hot one: interleaving other contexts would push its keys out of the caches it is meant to find them in)."""
    values = {}
    for name, calls in PAIRS:
        if all(case in args.cases and n in args.sizes and impl in args.impls for case, n, impl in calls):
            fns = [_call(*c, args, torch)[0] for c in calls]
            if None not in fns:
                a, b = time_calls(*fns, repeat=args.repeat)
                values[name] = a.median_s / b.median_s
    contexts = [n for n in args.contexts if 2 * n in args.contexts]
    if "decode_cold" in args.cases and "tiled" in args.impls and contexts:
        ns = sorted(set(contexts) | {2 * n for n in contexts})
        times = time_calls(*(_call("decode_cold", n, "tiled", args, torch)[0] for n in ns), repeat=DECODE_REPEAT,
                           before=evict_caches)
        median = dict(zip(ns, (t.median_s for t in times)))
        values["decode_cold_worst_2n_over_n_tiled"] = max(median[2 * n] / median[n] for n in contexts)
    return values


def _with_budget(budget, fn):
    saved = planner.MEMORY_BUDGET
    planner.MEMORY_BUDGET = max(saved, budget)
    try:
        return fn()
    finally:
        planner.MEMORY_BUDGET = saved


def _torch_call(torch, case, n, q, k, v, mask, torch_kw, args):
    F = torch.nn.functional
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    note = ""
    if case == "window":
        if n > args.torch_mask_limit:
            return None, f"skipped: no sliding-window SDPA; a dense masked run above --torch-mask-limit " \
                         f"{args.torch_mask_limit}"
        torch_kw = {"attn_mask": torch.from_numpy(mask.to_array(n, n))}
        note = "dense with a boolean mask"

    def call():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, **torch_kw)
    return call, note


def _rss_growth(fn):
    """Growth of the peak resident set during fn() (VmHWM reset through /proc/self/clear_refs), or None."""
    try:
        rss = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        fn()
        return None
    fn()
    return max(0, (_status_kib("VmHWM") - rss) * 1024)


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


# --- machine and environment -------------------------------------------------------------------------------------
def machine_info(torch=None) -> dict:
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = [{key: info.get(key) for key in ("internal_api", "architecture", "version", "num_threads", "prefix")}
            for info in threadpool_info() if info.get("user_api") == "blas"]
    return {"cpu": cpu, "cores": planner.default_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "attnlab_threads": planner.default_threads(), "blas": blas,
            "openblas_env": {name: os.environ.get(name) for name in OPENBLAS_VARS},
            "openblas_env_unset_for_this_run": os.environ.get("ATTNLAB_BENCH_UNSET"),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _header(meta) -> str:
    blas = "; ".join(f"{b['internal_api']} {b['version']} kernel {b['architecture']} ({b['num_threads']} threads)"
                     for b in meta["blas"]) or "unknown"
    env = ", ".join(f"{k}={v}" for k, v in meta["openblas_env"].items() if v is not None) or "not set"
    unset = meta["openblas_env_unset_for_this_run"]
    return "\n".join([
        f"attnlab attention benchmark, {meta['date_utc']}",
        f"machine: {meta['cpu']}, {meta['cores']} cores; numpy {meta['numpy']}, torch {meta['torch']} "
        f"({meta['torch_threads']} threads); attnlab kernel threads {meta['attnlab_threads']}",
        f"BLAS: {blas}; OPENBLAS_CORETYPE/L2_SIZE: {env}" + (f" (unset for this run: {unset})" if unset else ""),
        f"load average before: {_load(meta['load_before'])}"])


def _load(load) -> str:
    return " ".join(f"{x:.2f}" for x in load)


# --- reporting -----------------------------------------------------------------------------------------------------
def _torch_time(results, case, n):
    for r in results:
        if r.case == case and r.n == n and r.impl == "torch" and r.median_s:
            return r.median_s
    return None


def _row(r: Result, results) -> str:
    if r.median_s is None:
        return f"{r.case:7s} {r.n:>6d} {r.impl:6s} {'-':>10s} {'-':>8s} {'-':>10s} {'-':>8s}  {r.note}"
    ref = _torch_time(results, r.case, r.n)
    ratio = f"{r.median_s / ref:.2f}" if ref else "-"
    peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}"
    return (f"{r.case:7s} {r.n:>6d} {r.impl:6s} {r.median_s * 1e3:>10.2f} {r.gflops:>8.1f} {peak:>10s} "
            f"{ratio:>8s}  {r.note}")


def format_table(results) -> str:
    head = (f"{'case':7s} {'n':>6s} {'impl':6s} {'median ms':>10s} {'GFLOP/s':>8s} {'peak MiB':>10s} "
            f"{'x torch':>8s}  note")
    return "\n".join([head, "-" * len(head)] + [_row(r, results) for r in results])


def targets(results, pairs=None) -> dict:
    """The issue's targets, from this run's numbers (None where the run did not measure what a target needs):
    ``value`` from the interleaved re-measurement ``pairs`` where there is one, else from the table;
    ``table`` from the table's rows."""
    t = {(r.case, r.n, r.impl): r for r in results if r.median_s is not None}
    time_of = lambda case, n, impl: t[(case, n, impl)].median_s if (case, n, impl) in t else None
    ratio = lambda a, b: None if a is None or b is None else a / b

    def worst_growth(case):
        contexts = sorted(n for (c, n, impl) in t if c == case and impl == "tiled")
        growth = [time_of(case, 2 * n, "tiled") / time_of(case, n, "tiled") for n in contexts if 2 * n in contexts]
        return max(growth) if growth else None
    peak = t.get(("dense", 32768, "tiled"))
    checks = {
        "dense_4096_tiled_over_torch": (ratio(time_of("dense", 4096, "tiled"), time_of("dense", 4096, "torch")), 0.8),
        "causal_4096_tiled_over_torch": (ratio(time_of("causal", 4096, "tiled"), time_of("causal", 4096, "torch")),
                                         0.8),
        "causal_4096_over_dense_4096_tiled": (ratio(time_of("causal", 4096, "tiled"),
                                                    time_of("dense", 4096, "tiled")), 0.6),
        "window_32768_over_16384_tiled": (ratio(time_of("window", 32768, "tiled"),
                                                time_of("window", 16384, "tiled")), 2.2),
        "window_32768_over_dense_32768_tiled": (ratio(time_of("window", 32768, "tiled"),
                                                      time_of("dense", 32768, "tiled")), 1 / 15),
        "peak_MiB_dense_32768_tiled": (None if peak is None else peak.peak_bytes / 2**20, 64),
        "decode_worst_2n_over_n_tiled": (worst_growth("decode"), 2.3),
        "decode_cold_worst_2n_over_n_tiled": (worst_growth("decode_cold"), 2.3),
    }
    pairs = pairs or {}
    report = {}
    for name, (table, limit) in checks.items():
        value = pairs.get(name, table)
        report[name] = {"value": value, "table": table, "paired": name in pairs, "limit": limit,
                        "met": None if value is None else value <= limit}
    return report


def format_targets(checks) -> str:
    lines = ["targets (value <= limit; value from interleaved runs where marked *, the table's ratio beside it):"]
    for name, c in checks.items():
        verdict = "not measured" if c["value"] is None else ("met" if c["met"] else "NOT met")
        value = "-" if c["value"] is None else f"{c['value']:.3f}" + ("*" if c["paired"] else " ")
        table = "" if not c["paired"] or c["table"] is None else f"  (table {c['table']:.3f})"
        lines.append(f"  {name:38s} {value:>9s}  <= {c['limit']:.3f}  {verdict}{table}")
    return "\n".join(lines)


def write(report, out_dir) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "attention.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot(report["results"], os.path.join(out_dir, "attention.png"))


def plot(results, path) -> None:
    """Median time against n, one panel per case, one line per path (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in CASES if any(r["case"] == c for r in results)]
    fig, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 3.6), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for impl, style in zip(IMPLS, ("o--", "s-", "^-.")):
            pts = [(r["n"], r["median_s"]) for r in results
                   if r["case"] == case and r["impl"] == impl and r["median_s"]]
            if pts:
                ax.plot(*zip(*pts), style, label=impl)
        ax.set(xscale="log", yscale="log", title=case, xlabel="context n" if case in DECODE else "n",
               ylabel="median seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None, *, full: bool = True) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, full=full)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
