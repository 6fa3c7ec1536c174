"""Cost when n doubles (``attnlab experiment cost``): does doubling the sequence quadruple the cost?

The study guide says "doubling the sequence roughly quadruples the cost". This experiment checks it on this
machine: it times and measures the peak memory of attention at n, 2n and 4n for

- ``naive``:        the reference path ``attnlab.scaled_dot_product_attention(..., impl="reference")`` (builds
                    the n x n matrix; the memory budget that guards it is raised for the measurement),
- ``tiled``:        ``attnlab.flash_attention`` (online softmax, tile by tile, never n x n),
- ``window``:       the tiled kernel with a sliding window of ``window`` keys (skips empty tiles),
- ``naive-window``: the reference path with the same window mask (it still builds the n x n matrix),

and puts each measurement next to ``attnlab.cost``'s prediction: time ratios against the ratio of the FLOPs the
path computes, memory against the modelled peak. Doubling quadruples time for naive and tiled, and the naive
path's memory; it does *not* quadruple the tiled path's memory (linear) or a window's time (linear once n > w).

Entry point, called by ``attnlab experiment cost``::

    run(n=512, out="attnlab-experiments", seed=0, quick=False, *, heads=4, head_dim=64, window=128,
        block=128, repeat=5, echo=print) -> dict

``n``: the smallest length (the run uses n, 2n, 4n). ``out``: folder for ``cost.json`` and ``cost.png``
(created). ``seed``: the random q, k, v (everything but the timings is deterministic given it). ``quick``: tiny
sizes for the test suite (n=64, 2 heads of 16, window 16, tiles of 32). ``echo``: where lines are printed.
The returned dict is what ``cost.json`` holds: ``config``, ``sizes``, ``rows`` (one per variant and n),
``ratios`` (measured vs predicted for each step), ``conclusion`` (lines of text) and ``files`` (names inside ``out``).
"""

from __future__ import annotations

import json
import platform
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ... import cost, planner
from ...api import scaled_dot_product_attention
from ...budget import check as check_budget, limit as budget_limit
from ...checks import non_negative_int, positive_int
from . import check_run
from ...kernel import flash_attention
from ...measure import peak_memory, time_calls

VARIANTS = ("naive", "tiled", "window", "naive-window")
QUICK = dict(n=64, heads=2, head_dim=16, window=16, block=32)
MAX_REPEAT = 1000                # timed runs per size: more would run for hours
REFERENCE_LIMIT = 3 * 2**30      # bytes the measured naive path may take (bench's --reference-limit default, 3 GiB)


def inputs(n: int, heads: int, head_dim: int, seed: int, dtype=np.float32):
    """q, k, v of shape (1, heads, n, head_dim) from a seeded generator."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, heads, n, head_dim)).astype(dtype) for _ in range(3))


def window_spec(window: int) -> str:
    """The mask spec (``attnlab.masks.SPEC_GRAMMAR``) of a window of ``window`` keys: the query and the
    window - 1 keys before it."""
    return f"window:{window - 1}"


def attention_call(variant: str, q, k, v, *, window: int, block: int):
    """A zero-argument callable running one variant on q, k, v (the tiled kernel on 1 thread, as modelled)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    mask = cost.to_mask(window_spec(window)) if variant.endswith("window") else None
    if variant.startswith("naive"):
        return lambda: scaled_dot_product_attention(q, k, v, mask=mask, impl="reference")
    return lambda: flash_attention(q, k, v, mask=mask, block_q=block, block_k=block, threads=1)


def predict(variant: str, n: int, *, heads: int, head_dim: int, window: int, block: int) -> cost.Cost:
    """The cost model's estimate for one variant at length n (float32, batch 1, one layer)."""
    mask = window_spec(window) if variant.endswith("window") else "full"
    cfg = cost.model_config(head_dim=head_dim, n_heads=heads)
    return cost.estimate(cfg, n, dtype="float32", mask=mask, block_q=block, block_k=block, threads=1)


def measure(variant: str, sizes, *, heads: int, head_dim: int, window: int, block: int, seed: int,
            repeat: int = 5) -> list[dict]:
    """Time and peak memory of one variant at each of ``sizes``, with the model's predictions: one dict per size.

    Time: the median of ``repeat`` runs after a warm-up, the sizes' runs interleaved (n, 2n, 4n, n, 2n, ...) so a
    change in the machine's load cannot fake a ratio. BLAS runs on one thread, as the model assumes: on a shared
    machine a multi-threaded BLAS waiting for a busy core adds a fixed delay per call that hides the n^2 growth.
    """
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    data = [inputs(n, heads, head_dim, seed) for n in sizes]
    calls = [attention_call(variant, *qkv, window=window, block=block) for qkv in data]
    models = [predict(variant, n, heads=heads, head_dim=head_dim, window=window, block=block) for n in sizes]
    budget = 2 * max(m.reference.peak_bytes for m in models)
    with _blas_controller().limit(limits=1, user_api="blas"), memory_budget(budget):
        timings = time_calls(*calls, repeat=repeat)
        peaks = [peak_memory(call) for call in calls]
    rows = []
    for n, timing, peak, model in zip(sizes, timings, peaks, models):
        path = model.reference if variant.startswith("naive") else model.tiled
        rows.append({"variant": variant, "n": n, "time_s": timing.median_s, "time_min_s": timing.min_s,
                     "time_runs_s": list(timing.runs), "peak_bytes": peak, "predicted_flops": path.flops,
                     "useful_flops": model.useful_flops, "predicted_peak_bytes": path.peak_bytes})
    return rows


@contextmanager
def memory_budget(nbytes: int):
    """Raise ``attnlab.planner.MEMORY_BUDGET`` to at least ``nbytes`` for the block, so that the reference path,
    asked for explicitly, runs at sizes where it would otherwise refuse (it is the thing being measured)."""
    old = planner.MEMORY_BUDGET
    planner.MEMORY_BUDGET = max(old, nbytes)
    try:
        yield
    finally:
        planner.MEMORY_BUDGET = old


def _blas_controller():
    """One threadpoolctl controller for the process (building one scans the loaded libraries: slow)."""
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER.get("blas") is None:
        _CONTROLLER["blas"] = ThreadpoolController()
    return _CONTROLLER["blas"]


_CONTROLLER = {}


def step_ratios(rows: list[dict]) -> list[dict]:
    """For each variant and each step n -> 2n: measured and predicted ratios of time and peak memory."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["n"])
        for a, b in zip(mine, mine[1:]):
            out.append({"variant": variant, "n": a["n"], "to": b["n"],
                        "time_ratio": b["time_s"] / a["time_s"],
                        "predicted_time_ratio": b["predicted_flops"] / a["predicted_flops"],
                        "memory_ratio": b["peak_bytes"] / a["peak_bytes"],
                        "predicted_memory_ratio": b["predicted_peak_bytes"] / a["predicted_peak_bytes"]})
    return out


def run(n: int = 512, out="attnlab-experiments", seed: int = 0, quick: bool = False, *, heads: int = 4,
        head_dim: int = 64, window: int = 128, block: int = 128, repeat: int = 5, echo=print) -> dict:
    """Measure n, 2n, 4n for every variant, print the table and conclusion, write cost.json and cost.png.

    The inputs are checked against the memory budget; the naive path, the thing measured, may use up to
    ``REFERENCE_LIMIT`` (or the budget, when larger) at 4n, and is refused before anything runs beyond that."""
    out, quick = check_run(out, quick, allow_none=False)
    seed, repeat = non_negative_int(seed, "seed"), positive_int(repeat, "repeat")
    if repeat > MAX_REPEAT:
        raise ValueError(f"repeat must be at most {MAX_REPEAT} runs per size (each runs every variant), got {repeat}")
    if not callable(echo):
        raise TypeError(f"echo must be a function of one line of text (e.g. print), got {type(echo).__name__}")
    if quick:
        n, heads, head_dim, window, block = (QUICK[key] for key in ("n", "heads", "head_dim", "window", "block"))
    for value, name in ((n, "n"), (heads, "heads"), (head_dim, "head_dim"), (window, "window"), (block, "block")):
        positive_int(value, name)
    sizes = [n, 2 * n, 4 * n]
    # q, k, v and the output at every size, float32 (float64 while drawn)
    check_budget(24 * heads * head_dim * sum(sizes), f"the inputs at n = {sizes}", instead="use a smaller n")
    naive = 2 * predict("naive", 4 * n, heads=heads, head_dim=head_dim, window=window, block=block).reference.peak_bytes
    check_budget(naive, f"the naive path at n = {4 * n}", instead="use a smaller n",
                 limit=max(budget_limit(), REFERENCE_LIMIT))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = dict(heads=heads, head_dim=head_dim, window=window, block=block)
    echo(f"attention at n = {sizes}: batch 1, {heads} heads x {head_dim}, float32, window {window} keys, "
         f"tiles {block}x{block}, 1 thread; median of {repeat} interleaved runs after a warm-up; peak memory by "
         f"tracemalloc")
    rows = []
    for variant in VARIANTS:
        rows += measure(variant, sizes, seed=seed, repeat=repeat, **shape)
        for r in rows[-len(sizes):]:
            echo(f"  {variant:<13} n={r['n']:<6} {r['time_s'] * 1e3:9.2f} ms  peak {r['peak_bytes'] / 2**20:9.2f} "
                 f"MiB  (model {r['predicted_peak_bytes'] / 2**20:9.2f} MiB)")
    ratios = step_ratios(rows)
    echo(format_ratios(ratios))
    conclusion = conclude(ratios)
    if quick:
        conclusion.insert(0, "quick mode: sizes this small measure per-call overheads, not n^2; run without --quick")
    for line in conclusion:
        echo(line)
    result = {"experiment": "cost", "config": dict(shape, n=n, seed=seed, quick=quick, repeat=repeat,
                                                   dtype="float32", batch=1, threads=1,
                                                   machine=f"{platform.machine()} {platform.processor()}".strip()),
              "sizes": sizes, "rows": rows, "ratios": ratios, "conclusion": conclusion,
              "files": ["cost.json", "cost.png"]}
    plot(rows, out / "cost.png")
    (out / "cost.json").write_text(json.dumps(result, indent=2))
    echo(f"wrote {out / 'cost.json'} and {out / 'cost.png'}")
    return result


def format_ratios(ratios: list[dict]) -> str:
    lines = [f"{'variant':<13} {'n -> 2n':>13} {'time x':>7} {'model':>6} {'error':>7} "
             f"{'memory x':>9} {'model':>6} {'error':>7}"]
    for r in ratios:
        t_err = r["time_ratio"] / r["predicted_time_ratio"] - 1
        m_err = r["memory_ratio"] / r["predicted_memory_ratio"] - 1
        lines.append(f"{r['variant']:<13} {r['n']:>6}->{r['to']:<6} {r['time_ratio']:>7.2f} "
                     f"{r['predicted_time_ratio']:>6.2f} {t_err:>+7.0%} {r['memory_ratio']:>9.2f} "
                     f"{r['predicted_memory_ratio']:>6.2f} {m_err:>+7.0%}")
    return "\n".join(lines)


def conclude(ratios: list[dict]) -> list[str]:
    """Where "doubling quadruples" holds and where it does not, with the measured numbers of the last step."""
    last = {r["variant"]: r for r in ratios}          # the largest step of each variant
    lines = []
    for variant, what in (("naive", "the naive path"), ("tiled", "the tiled kernel"),
                          ("window", "a sliding window (tiled)"), ("naive-window", "a window on the naive path")):
        r = last[variant]
        lines.append(f"{what}, n={r['n']} -> {r['to']}: time {_growth(r['time_ratio'])} ({r['time_ratio']:.2f}x, "
                     f"model {r['predicted_time_ratio']:.2f}x), memory {_growth(r['memory_ratio'])} "
                     f"({r['memory_ratio']:.2f}x, model {r['predicted_memory_ratio']:.2f}x)")
    lines.append("The model: doubling n quadruples what grows with the n x n score matrix, the time of dense "
                 "attention on either path and the memory of the naive path. The tiled kernel's memory only "
                 "doubles (it never stores the matrix), and a window of w keys makes the tiled work n*w, so "
                 "doubling n doubles it once n >> w. A window mask on the naive path saves nothing: it still "
                 "builds the whole matrix.")
    return lines


def _growth(ratio: float) -> str:
    if 3.0 <= ratio <= 5.5:
        return "quadruples"
    if 1.5 <= ratio < 3.0:
        return "doubles" if ratio <= 2.6 else "grows"
    return "barely grows" if 1.0 <= ratio < 1.5 else ("shrinks (noise)" if ratio < 1.0 else "grows")


def plot(rows: list[dict], path: Path) -> Path:
    """Log-log time and peak memory against n for each variant (dots: measured, crosses: the cost model; the
    model's time is scaled to the first measured point), with n^2 and n reference slopes."""
    from ...viz._figure import new_figure, save

    fig = new_figure(12, 4)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], "time_s", "time (s, median)", 1.0), (axes[1], "peak_bytes", "peak memory (MiB)", 2.0 ** -20))
    for ax, key, label, scale in panels:
        for variant in VARIANTS:
            mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["n"])
            ns = [r["n"] for r in mine]
            line, = ax.loglog(ns, [r[key] * scale for r in mine], "o-", label=variant)
            if key == "time_s":
                model = [mine[0]["time_s"] * r["predicted_flops"] / mine[0]["predicted_flops"] for r in mine]
            else:
                model = [r["predicted_peak_bytes"] * scale for r in mine]
            ax.loglog(ns, model, "x:", color=line.get_color(), alpha=0.7, ms=8)
        ns = np.array(sorted({r["n"] for r in rows}), dtype=float)
        top = 1.6 * max(r[key] for r in rows if r["n"] == ns[0]) * scale        # the guides run above the data
        for power, style, name in ((2, "--", "n^2"), (1, ":", "n")):
            ax.loglog(ns, top * (ns / ns[0]) ** power, "k" + style, lw=0.8,
                      label=f"slope {name} (doubling = {2 ** power}x)")
            ax.annotate(name, (ns[-1], top * (ns[-1] / ns[0]) ** power), fontsize=8, xytext=(3, 0),
                        textcoords="offset points", va="center")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.minorticks_off()
        ax.set_xticks(ns, [str(int(x)) for x in ns])
    axes[0].set_title("time: measured (o) and cost model (x)")
    axes[1].set_title("peak memory (tracemalloc, o) and cost model (x)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, path)
