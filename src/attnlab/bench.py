"""Benchmark the attention paths in one run: attnlab's reference path, attnlab's tiled kernel, PyTorch's CPU SDPA.

Cases, for B=1, H=8, D=64, float32 (``heads``/``head_dim`` change them):

- ``dense``, ``causal``, ``window`` (sliding window of 256 keys, the query's own included) and ``gqa`` (8 query
  heads sharing 2 key/value heads, dense) at sequence lengths n;
- ``decode``: one query (Lq = 1) against a context of n keys, the step of token-by-token generation, repeated
  on the same keys and values, which stay in the CPU caches as long as they fit;
- ``decode_cold``: the same step with the caches emptied before each timed run (``measure.evict_caches``), as in
  a real model, where the other layers' steps push a layer's KV cache out between two of its steps.

Every number is the median of ``repeat`` (>= 5; at least DECODE_REPEAT for the millisecond decode steps) timed
runs after a warm-up. The paths of one case and size share their inputs and their timed runs are interleaved
(``attnlab.measure.time_calls``: reference, tiled, torch, torch, tiled, ...), so "x torch", a row's time over
PyTorch's, compares runs taken side by side, whatever the machine's load does meanwhile. GFLOP/s counts the useful work
4 * B * H * D * (number of (query, key) pairs the mask allows): the matmuls q k^T and p v. The header names the
machine, the BLAS library and the kernel it chose. Peak memory is measured during the warm-up run (see
MEMORY_NOTE for what it means for each path: for PyTorch, a lower bound).

The reference path is skipped (and the table says so) where its score matrices would exceed ``reference_limit``
GiB; PyTorch has no sliding-window SDPA, so its window case runs dense attention with a boolean mask and is skipped
above ``torch_mask_limit`` keys. ``write`` saves ``OUT/attention.json`` and ``OUT/attention.png``.

This module is what ``attnlab bench`` needs; the project's own speed targets, and the scripts that check them,
live in the repository's ``benchmarks/`` folder.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import masks, planner
from .api import scaled_dot_product_attention
from .checks import choice, finite_real, int_list, non_negative_real, positive_int
from .kernel import flash_attention
from .measure import evict_caches, peak_memory, time_calls

CASES = ("dense", "causal", "window", "gqa", "decode", "decode_cold")
DECODE = ("decode", "decode_cold")
IMPLS = ("reference", "tiled", "torch")
QUICK_SIZES = (512, 1024, 2048)
FULL_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
QUICK_CONTEXTS = (1024, 2048, 4096, 8192)
FULL_CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768)
WINDOW = 256
DECODE_REPEAT = 25          # a decode step takes milliseconds: more runs so the median resists a busy machine
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")    # override OpenBLAS's kernel choice: printed, never set

MEMORY_NOTE = "\n".join([
    "peak MiB: the memory a call needs beyond its inputs and its output, measured in its warm-up run.",
    "  reference, tiled: tracemalloc (NumPy reports its buffers to it), the peak above the level at the call's start.",
    "  torch (>=): a lower bound. tracemalloc does not see PyTorch's C++ allocations, so this is the growth of the",
    "  process's peak resident set (VmHWM, reset through /proc/self/clear_refs) minus the output; memory PyTorch's",
    "  allocator reuses, or pages the process already holds, do not raise it (it can read 0). n/a: /proc refused."])


@dataclass(frozen=True)
class Settings:
    """What to measure. ``reference_limit``: GiB of score matrices above which the reference path is skipped;
    ``torch_mask_limit``: the largest n for PyTorch's masked (window) run; ``threads``: the attnlab kernel's
    (None: all cores); ``single_core``: one thread for every path (kernel, BLAS, torch); ``settle``: seconds each
    path runs untimed in a loop before each of its timed runs (``attnlab.measure.time_calls``)."""

    sizes: tuple[int, ...] = QUICK_SIZES
    contexts: tuple[int, ...] = QUICK_CONTEXTS
    cases: tuple[str, ...] = CASES
    impls: tuple[str, ...] = IMPLS
    heads: int = 8
    head_dim: int = 64
    repeat: int = 5
    threads: int | None = None
    single_core: bool = False
    reference_limit: float = 3.0
    torch_mask_limit: int = 8192
    settle: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int_list(self.sizes, "sizes")))
        object.__setattr__(self, "contexts", tuple(int_list(self.contexts, "contexts")))
        for name, allowed in (("cases", CASES), ("impls", IMPLS)):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"{name} must be a non-empty subset of {','.join(allowed)}, got none")
            for value in values:
                choice(value, name, allowed)
            object.__setattr__(self, name, values)
        positive_int(self.heads, "heads")
        positive_int(self.head_dim, "head_dim")
        positive_int(self.repeat, "repeat (timed runs per measurement; the median needs enough)", minimum=5)
        positive_int(self.threads, "threads", allow_none=True)
        finite_real(self.reference_limit, "reference_limit", positive=True)
        positive_int(self.torch_mask_limit, "torch_mask_limit")
        non_negative_real(self.settle, "settle (seconds)")


@dataclass
class Result:
    """One row of the table: ``case`` at size ``n`` on path ``impl`` (median_s None: skipped, ``note`` says why)."""

    case: str
    n: int
    impl: str
    median_s: float | None = None
    runs: tuple = ()
    gflops: float | None = None
    peak_bytes: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Call:
    """The call that runs one path on one case's inputs: ``fn`` (None when skipped, ``note`` says why) and the
    bytes of its output (left out of its peak memory)."""

    fn: object
    note: str
    out_bytes: int


@dataclass
class Report:
    """A run: ``meta`` (machine, BLAS, versions, load, command) and the table's ``results``."""

    meta: dict
    results: list[Result] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"meta": self.meta, "results": [asdict(r) for r in self.results]}


# --- running -----------------------------------------------------------------------------------------------------
def run(settings: Settings, echo=print) -> Report:
    """Measure every (case, n, path) of ``settings``; echo the header, each row as it is measured, then the table
    and what its memory column means."""
    torch = load_torch() if "torch" in settings.impls else None
    if settings.single_core:
        _one_thread_everywhere(torch)
    meta = machine_info(torch)
    meta["attnlab_threads"] = 1 if settings.single_core else (settings.threads or meta["attnlab_threads"])
    meta["command"] = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
    meta["load_before"] = os.getloadavg()
    meta["settle_s"] = settings.settle
    echo(format_header(meta))
    report = Report(meta)
    for case in settings.cases:
        for n in (settings.contexts if case in DECODE else settings.sizes):
            rows = measure(case, n, settings, torch)
            report.results.extend(rows)
            for result in rows:
                echo(_row(result, report.results))
    meta["load_after"] = os.getloadavg()
    echo("")
    echo(format_table(report.results))
    echo(MEMORY_NOTE)
    echo(f"load average before {format_load(meta['load_before'])}, after {format_load(meta['load_after'])}")
    return report


def _one_thread_everywhere(torch):
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)                  # the reference path's BLAS, for the rest of the process
    if torch is not None:
        torch.set_num_threads(1)


def load_torch():
    """The torch module, or None when it is not installed (its rows then say so)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@dataclass(frozen=True)
class Inputs:
    """One case's inputs: q, k, v (NumPy float32), the attnlab mask (or None) and the keyword arguments PyTorch's
    SDPA needs for the same attention."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: object
    torch_kw: dict


def inputs(case, n, heads, head_dim, seed=0) -> Inputs:
    """The inputs of ``case`` at size ``n`` (random normal, seeded)."""
    rng = np.random.default_rng(seed)
    kv_heads = 2 if case == "gqa" else heads
    Lq = 1 if case in DECODE else n
    q = rng.standard_normal((1, heads, Lq, head_dim), dtype=np.float32)          # (B, H, Lq, D)
    k = rng.standard_normal((1, kv_heads, n, head_dim), dtype=np.float32)        # (B, G, Lk, D)
    v = rng.standard_normal((1, kv_heads, n, head_dim), dtype=np.float32)
    mask = {"causal": masks.causal(), "window": masks.sliding_window(WINDOW - 1)}.get(case)
    torch_kw = {"causal": {"is_causal": True}, "gqa": {"enable_gqa": True}}.get(case, {})
    return Inputs(q, k, v, mask, torch_kw)


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


def call(case, n, impl, settings: Settings, torch=None, data: Inputs | None = None) -> Call:
    """The call that runs path ``impl`` on the inputs of ``case`` at size ``n`` (fn None when it is skipped);
    ``data``: those inputs, when several paths share them (default: made here)."""
    data = data or inputs(case, n, settings.heads, settings.head_dim)
    q, k, v, mask, torch_kw = data.q, data.k, data.v, data.mask, data.torch_kw
    out_bytes = q.shape[-2] * q.shape[-3] * v.shape[-1] * 4
    threads = 1 if settings.single_core else settings.threads
    if impl == "reference":
        need = planner.plan(q.shape, k.shape, mask=mask, impl="reference", budget=2**62).reference_bytes
        if need > settings.reference_limit * 2**30:
            return Call(None, f"skipped: needs ~{need / 2**30:.1f} GiB > --reference-limit "
                              f"{settings.reference_limit:g}", out_bytes)
        return Call(lambda: _with_budget(need, lambda: scaled_dot_product_attention(q, k, v, mask,
                                                                                      impl="reference")),
                    "", out_bytes)
    if impl == "tiled":
        return Call(lambda: flash_attention(q, k, v, mask, threads=threads), "", out_bytes)
    if torch is None:
        return Call(None, "skipped: torch is not installed", out_bytes)
    fn, note = _torch_call(torch, case, n, q, k, v, mask, torch_kw, settings)
    return Call(fn, note, out_bytes)


def measure(case, n, settings: Settings, torch=None) -> list[Result]:
    """The rows of one case and size, one per path of ``settings.impls``: each path's peak memory in its warm-up
    run, then the timed runs of all paths interleaved, on the same inputs."""
    data = inputs(case, n, settings.heads, settings.head_dim)
    rows, timed = [], []
    for impl in settings.impls:
        result, c = Result(case, n, impl), call(case, n, impl, settings, torch, data)
        result.note = c.note
        if c.fn is not None:
            peak = _rss_growth(c.fn) if impl == "torch" else peak_memory(c.fn, warmup=False)   # the warm-up run
            result.peak_bytes = None if peak is None else max(0, peak - c.out_bytes)
            timed.append((result, c.fn))
        rows.append(result)
    if timed:
        repeat = max(settings.repeat, DECODE_REPEAT) if case in DECODE else settings.repeat
        timings = time_calls(*(fn for _, fn in timed), repeat=repeat, warmup=0,
                             before=evict_caches if case == "decode_cold" else None, settle=settings.settle)
        for (result, _), timing in zip(timed, timings):
            result.median_s, result.runs = timing.median_s, timing.runs
            result.gflops = 4 * settings.heads * settings.head_dim * allowed_pairs(case, n) / timing.median_s / 1e9
    return rows


def _with_budget(budget, fn):
    saved = planner.MEMORY_BUDGET
    planner.MEMORY_BUDGET = max(saved, budget)
    try:
        return fn()
    finally:
        planner.MEMORY_BUDGET = saved


def _torch_call(torch, case, n, q, k, v, mask, torch_kw, settings):
    F = torch.nn.functional
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    note = ""
    if case == "window":
        if n > settings.torch_mask_limit:
            return None, f"skipped: no sliding-window SDPA; a dense masked run above --torch-mask-limit " \
                         f"{settings.torch_mask_limit}"
        torch_kw = {"attn_mask": torch.from_numpy(mask.to_array(n, n))}
        note = "dense with a boolean mask"

    def fn():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, **torch_kw)
    return fn, note


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


def _status_kib(name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise OSError(f"{name} not in /proc/self/status")


# --- machine and environment -------------------------------------------------------------------------------------
def machine_info(torch=None) -> dict:
    """CPU, cores, versions, the BLAS libraries NumPy loaded (with the kernel each chose) and the OpenBLAS
    overrides in the environment."""
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
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def format_header(meta, title: str = "attention benchmark") -> str:
    """The lines that say when, on what machine and with which BLAS kernel a run was made."""
    blas = "; ".join(f"{b['internal_api']} {b['version']} kernel {b['architecture']} ({b['num_threads']} threads)"
                     for b in meta["blas"]) or "unknown"
    env = ", ".join(f"{k}={v}" for k, v in meta["openblas_env"].items() if v is not None) or "not set"
    lines = [f"attnlab {title}, {meta['date_utc']}",
             f"machine: {meta['cpu']}, {meta['cores']} cores; numpy {meta['numpy']}, torch {meta['torch']} "
             f"({meta['torch_threads']} threads); attnlab kernel threads {meta['attnlab_threads']}",
             f"BLAS: {blas}; OPENBLAS_CORETYPE/L2_SIZE: {env}"]
    if "load_before" in meta:
        lines.append(f"load average before: {format_load(meta['load_before'])}")
    if meta.get("settle_s"):
        lines.append(f"each timed run follows {meta['settle_s']:g} s of untimed runs of the same call (--settle)")
    return "\n".join(lines)


def format_load(load) -> str:
    """A load-average triple as "1.00 0.90 0.80"."""
    return " ".join(f"{x:.2f}" for x in load)


# --- reporting -----------------------------------------------------------------------------------------------------
def _torch_time(results, case, n):
    for r in results:
        if r.case == case and r.n == n and r.impl == "torch" and r.median_s:
            return r.median_s
    return None


def _row(r: Result, results) -> str:
    if r.median_s is None:
        return f"{r.case:11s} {r.n:>6d} {r.impl:9s} {'-':>10s} {'-':>8s} {'-':>10s} {'-':>8s}  {r.note}"
    ref = _torch_time(results, r.case, r.n)
    ratio = f"{r.median_s / ref:.2f}" if ref else "-"
    peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}"
    if r.impl == "torch" and r.peak_bytes is not None:
        peak = ">=" + peak                                         # a lower bound: see MEMORY_NOTE
    return (f"{r.case:11s} {r.n:>6d} {r.impl:9s} {r.median_s * 1e3:>10.2f} {r.gflops:>8.1f} {peak:>10s} "
            f"{ratio:>8s}  {r.note}")


def format_table(results) -> str:
    """The table: one row per (case, n, path), "x torch" the row's time over PyTorch's in the same run."""
    head = (f"{'case':11s} {'n':>6s} {'impl':9s} {'median ms':>10s} {'GFLOP/s':>8s} {'peak MiB':>10s} "
            f"{'x torch':>8s}  note")
    return "\n".join([head, "-" * len(head)] + [_row(r, results) for r in results])


def write(report: Report, out_dir, extra: dict | None = None) -> list[str]:
    """Write OUT/attention.json (the report, plus ``extra`` keys) and OUT/attention.png; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "attention.json"), os.path.join(out_dir, "attention.png")]
    with open(paths[0], "w") as f:
        json.dump({**report.to_dict(), **(extra or {})}, f, indent=1)
    plot(report.results, paths[1])
    return paths


def plot(results, path) -> None:
    """Median time against n, one panel per case, one line per path (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in CASES if any(r.case == c for r in results)]
    fig, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 3.6), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for impl, style in zip(IMPLS, ("o--", "s-", "^-.")):
            pts = [(r.n, r.median_s) for r in results if r.case == case and r.impl == impl and r.median_s]
            if pts:
                ax.plot(*zip(*pts), style, label=impl)
        ax.set(xscale="log", yscale="log", title=case, xlabel="context n" if case in DECODE else "n",
               ylabel="median seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
