"""Cost when n doubles (``attnlab experiment cost``): does doubling the sequence quadruple the cost?

The study guide says "doubling the sequence roughly quadruples the cost". This experiment checks it on this
machine: it times and measures the peak memory of attention at n, 2n and 4n for

- ``naive``:        the reference path ``attnlab.scaled_dot_product_attention`` (builds the n x n matrix),
- ``tiled``:        ``attnlab.flash_attention`` (online softmax, tile by tile, never n x n),
- ``window``:       the tiled kernel with a sliding window of ``window`` keys (skips empty tiles),
- ``naive-window``: the reference path with the same window mask (it still builds the n x n matrix),

and puts each measurement next to ``attnlab.cost``'s prediction: time ratios against the ratio of the FLOPs the
path computes, memory against the modelled peak. Doubling quadruples time for naive and tiled, and the naive
path's memory; it does *not* quadruple the tiled path's memory (linear) or a window's time (linear once n > w).

Entry point, called by ``attnlab experiment cost``::

    run(n=512, out="attnlab-experiments/cost", seed=0, quick=False, *, heads=4, head_dim=64, window=128,
        block=128, repeat=5, echo=print) -> dict

``n``: the smallest length (the run uses n, 2n, 4n). ``out``: folder for ``cost.json`` and ``cost.png``
(created). ``seed``: the random q, k, v (everything but the timings is deterministic given it). ``quick``: tiny
sizes for the test suite (n=64, 2 heads of 16, window 16, tiles of 32). ``echo``: where lines are printed.
The returned dict is what ``cost.json`` holds: ``config``, ``sizes``, ``rows`` (one per variant and n),
``ratios`` (measured vs predicted for each step), ``conclusion`` (lines of text) and ``files``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from ... import cost
from ...attention import scaled_dot_product_attention
from ...measure import peak_memory, time_call

VARIANTS = ("naive", "tiled", "window", "naive-window")
QUICK = dict(n=64, heads=2, head_dim=16, window=16, block=32)


def inputs(n: int, heads: int, head_dim: int, seed: int, dtype=np.float32):
    """q, k, v of shape (1, heads, n, head_dim) from a seeded generator."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, heads, n, head_dim)).astype(dtype) for _ in range(3))


def attention_call(variant: str, q, k, v, *, window: int, block: int):
    """A zero-argument callable running one variant on q, k, v (the tiled kernel on 1 thread, as modelled)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    mask = cost.to_mask(("window", window)) if variant.endswith("window") else None
    if variant.startswith("naive"):
        return lambda: scaled_dot_product_attention(q, k, v, mask=mask)
    try:
        from ...flash import flash_attention
    except ImportError as err:
        raise ImportError(f"the {variant!r} variant needs attnlab.flash_attention (the tiled kernel): {err}") from err
    return lambda: flash_attention(q, k, v, mask=mask, block_q=block, block_k=block, threads=1)


def predict(variant: str, n: int, *, heads: int, head_dim: int, window: int, block: int) -> cost.Cost:
    """The cost model's estimate for one variant at length n (float32, batch 1, one layer)."""
    mask = ("window", window) if variant.endswith("window") else "dense"
    cfg = cost.model_config(head_dim=head_dim, n_heads=heads)
    return cost.estimate(cfg, n, dtype="float32", mask=mask, block_q=block, block_k=block, threads=1)


def measure(variant: str, n: int, *, heads: int, head_dim: int, window: int, block: int, seed: int,
            repeat: int = 5) -> dict:
    """Time (median of ``repeat`` runs after a warm-up) and peak memory of one variant at n, with predictions.

    BLAS runs on one thread for every variant, as the model assumes: on a shared machine a multi-threaded BLAS
    waiting for a busy core adds a fixed delay per call that hides the n^2 growth.
    """
    q, k, v = inputs(n, heads, head_dim, seed)
    call = attention_call(variant, q, k, v, window=window, block=block)
    with _blas_controller().limit(limits=1, user_api="blas"):
        timing = time_call(call, repeat=repeat)
        peak = peak_memory(call)
    model = predict(variant, n, heads=heads, head_dim=head_dim, window=window, block=block)
    path = model.naive if variant.startswith("naive") else model.tiled
    return {"variant": variant, "n": n, "time_s": timing.median_s, "time_min_s": timing.min_s,
            "time_runs_s": list(timing.runs),
            "peak_bytes": peak, "predicted_flops": path.flops, "useful_flops": model.useful_flops,
            "predicted_peak_bytes": path.peak_bytes}


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


def run(n: int = 512, out="attnlab-experiments/cost", seed: int = 0, quick: bool = False, *, heads: int = 4,
        head_dim: int = 64, window: int = 128, block: int = 128, repeat: int = 5, echo=print) -> dict:
    """Measure n, 2n, 4n for every variant, print the table and conclusion, write cost.json and cost.png."""
    if quick:
        n, heads, head_dim, window, block = (QUICK[key] for key in ("n", "heads", "head_dim", "window", "block"))
    for value, name in ((n, "n"), (heads, "heads"), (head_dim, "head_dim"), (window, "window"), (block, "block")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [n, 2 * n, 4 * n]
    shape = dict(heads=heads, head_dim=head_dim, window=window, block=block)
    echo(f"attention at n = {sizes}: batch 1, {heads} heads x {head_dim}, float32, window {window} keys, "
         f"tiles {block}x{block}, 1 thread; median of {repeat} runs after a warm-up; peak memory by tracemalloc")
    rows = []
    for variant in VARIANTS:
        for size in sizes:
            rows.append(measure(variant, size, seed=seed, repeat=repeat, **shape))
            r = rows[-1]
            echo(f"  {variant:<13} n={size:<6} {r['time_s'] * 1e3:9.2f} ms  peak {r['peak_bytes'] / 2**20:9.2f} MiB"
                 f"  (model {r['predicted_peak_bytes'] / 2**20:9.2f} MiB)")
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
              "files": {"json": str(out / "cost.json"), "png": str(out / "cost.png")}}
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
    """Log-log time and peak memory against n for each variant, with n^2 and n reference slopes."""
    from ...viz._figure import new_figure, save

    fig = new_figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "time_s", "time (s)"), (axes[1], "peak_bytes", "peak memory (MiB)")):
        scale = 1.0 if key == "time_s" else 2.0 ** -20
        for variant in VARIANTS:
            mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["n"])
            ax.loglog([r["n"] for r in mine], [r[key] * scale for r in mine], "o-", label=variant)
        ns = np.array(sorted({r["n"] for r in rows}), dtype=float)
        top = max(r[key] for r in rows if r["n"] == ns[0]) * scale
        ax.loglog(ns, top * (ns / ns[0]) ** 2, "k--", lw=0.8, label="slope n^2 (doubling = 4x)")
        ax.loglog(ns, top * (ns / ns[0]), "k:", lw=0.8, label="slope n (doubling = 2x)")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.set_xticks(ns, [str(int(x)) for x in ns])
    axes[0].set_title("time: measured")
    axes[1].set_title("peak memory (tracemalloc)")
    axes[1].legend(fontsize=7)
    return save(fig, path)
