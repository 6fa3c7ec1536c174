"""Additive vs dot-product attention: ``attnlab experiment scorers``.

Two ways to score a query against a key (Bahdanau et al. 2015; Vaswani et al. 2017):

    additive     w_v . tanh(W_q q + W_k k)     an (Lq, Lk, A) hidden tensor, one tanh per cell and unit
    dot-product  q . k / sqrt(d_k)             one matrix product, (Lq, Lk)

Vaswani et al. (2017, section 3.2.1) note that the two are similar in theory, but dot-product attention "is much
faster and more space-efficient in practice, since it can be implemented using highly optimized matrix
multiplication code". This experiment times attnlab's own two implementations (``additive_attention`` with
A = d, and ``scaled_dot_product_attention``) on the same float32 NumPy inputs at growing n = Lq = Lk and d, in
the same run (median of 5 timed runs after a warm-up, ``attnlab.measure.time_call``, one BLAS thread), measures
the extra memory each call allocates (``attnlab.measure.peak_memory``), and puts next to that their accuracy on
the bottleneck task, read from the JSON that ``attnlab experiment bottleneck`` wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ...api import additive_attention, scaled_dot_product_attention
from ...budget import check as check_budget
from ...checks import int_list, non_negative_int
from . import check_run
from ...measure import peak_memory, time_call

NS, DS = (64, 128, 256, 512), (16, 64, 128)
QUICK_NS, QUICK_DS = (32, 64, 128), (16, 64)
REPEAT = 5


def inputs(n: int, d: int, rng: np.random.Generator) -> dict:
    """float32 q, k, v (n, d) and additive weights w_q, w_k (A, d), w_v (A,) with A = d."""
    q, k, v = (rng.standard_normal((n, d), dtype=np.float32) for _ in range(3))
    w_q, w_k = (rng.standard_normal((d, d), dtype=np.float32) / np.float32(np.sqrt(d)) for _ in range(2))
    w_v = rng.standard_normal(d, dtype=np.float32) / np.float32(np.sqrt(d))
    return {"q": q, "k": k, "v": v, "w_q": w_q, "w_k": w_k, "w_v": w_v}


def measure(n: int, d: int, rng: np.random.Generator, repeat: int = REPEAT) -> dict:
    """Median time and peak extra memory of both scorers' attention on the same inputs."""
    x = inputs(n, d, rng)
    calls = {"dot": lambda: scaled_dot_product_attention(x["q"], x["k"], x["v"]),
             "additive": lambda: additive_attention(x["q"], x["k"], x["v"], x["w_q"], x["w_k"], x["w_v"])}
    row = {"n": n, "d": d}
    for name, fn in calls.items():
        timing = time_call(fn, repeat=repeat)
        row[f"{name}_s"] = timing.median_s
        row[f"{name}_min_s"] = timing.min_s
        row[f"{name}_spread"] = round(timing.spread, 3)
        row[f"{name}_peak_bytes"] = peak_memory(fn, warmup=False)
    row["time_ratio"] = row["additive_s"] / row["dot_s"]
    row["memory_ratio"] = row["additive_peak_bytes"] / max(1, row["dot_peak_bytes"])
    return row


def bottleneck_accuracy(path: Path) -> dict | None:
    """Longest-bucket and all-length accuracy of the additive and dot models from a bottleneck.json."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("experiment") != "bottleneck":
        raise ValueError(f"bottleneck results must come from `attnlab experiment bottleneck`, {path} holds "
                         f"{data.get('experiment')!r}")
    acc = {"file": str(path), "seed": data["seed"], "steps": data["config"]["steps"],
           "max_len": data["config"]["max_len"]}
    for name in ("none", "additive", "dot"):
        m = data["models"][name]
        per = m["per_length"]
        acc[name] = {"longest_bucket": m["buckets"][-1],
                     "mean_token_accuracy": float(np.mean(per["token_accuracy"])),
                     "mean_exact_match": float(np.mean(per["exact_match"])),
                     "train_s": data["timing"][f"{name}_train_s"],
                     "anti_diagonal_mass": data["alignment"].get(name, {}).get("anti_diagonal_mass")}
    return acc


def run(out=None, seed: int = 0, quick: bool = False, bottleneck=None, ns=None, ds=None) -> dict:
    """Time both scorers at every (n, d); read the bottleneck accuracy; write scorers.json / scorers.png.

    ``bottleneck``: path of a bottleneck.json; by default ``out``/bottleneck.json. When there is none the
    accuracy part is left out and ``result["accuracy_note"]`` says why.
    """
    out, quick = check_run(out, quick)
    non_negative_int(seed, "seed")
    for name, sizes in (("ns", ns), ("ds", ds)):
        if sizes is not None:
            int_list(sizes, name)
    if bottleneck is not None and not isinstance(bottleneck, (str, os.PathLike)):
        raise TypeError(f"bottleneck must be the path of a bottleneck.json, got {type(bottleneck).__name__}")
    ns = tuple(ns or (QUICK_NS if quick else NS))
    ds = tuple(ds or (QUICK_DS if quick else DS))
    # the largest (n, d): q, k, v, the weights, and additive scoring's (n, n, d) tanh tensor (budgeted again there)
    check_budget(4 * (3 * max(ns) * max(ds) + 2 * max(ds) ** 2), f"the scorers' inputs at n = {max(ns)}, "
                 f"d = {max(ds)}", instead="use smaller ns and ds")
    if bottleneck is None and out is None:
        source = None
    else:
        source = Path(bottleneck) if bottleneck is not None else Path(out) / "bottleneck.json"
        if bottleneck is not None and not source.is_file():
            raise FileNotFoundError(f"bottleneck results {source} not found; write them with "
                                    f"`attnlab experiment bottleneck --out DIR`")
    accuracy = bottleneck_accuracy(source) if source is not None else None
    rng = np.random.default_rng(seed)
    with threadpool_limits(limits=1):        # one BLAS thread: both scorers on equal terms, steadier times
        rows = [measure(n, d, rng) for d in ds for n in ns]
    result = {"experiment": "scorers", "seed": seed, "repeat": REPEAT, "dtype": "float32", "blas_threads": 1,
              "rows": rows, "accuracy": accuracy}
    if result["accuracy"] is None:
        result["accuracy_note"] = (f"no bottleneck results at {source}" if source is not None else
                                   "no bottleneck results given") + \
            ": run `attnlab experiment bottleneck --out DIR` first, or pass --bottleneck FILE"
    if out is not None:
        result["files"] = write(result, Path(out))
    return result


def table(result: dict) -> str:
    head = (f"{'n':>5} {'d=A':>4} | {'dot ms':>8} {'(min)':>7} {'additive ms':>12} {'(min)':>8} {'ratio':>6} "
            f"{'(min)':>6} | {'dot MiB':>8} {'additive MiB':>13} {'ratio':>6}")
    rows = [head, "-" * len(head)]
    for r in result["rows"]:
        rows.append(f"{r['n']:>5} {r['d']:>4} | {1e3 * r['dot_s']:>8.3f} {1e3 * r['dot_min_s']:>7.3f} "
                    f"{1e3 * r['additive_s']:>12.3f} {1e3 * r['additive_min_s']:>8.3f} {r['time_ratio']:>6.1f} "
                    f"{r['additive_min_s'] / r['dot_min_s']:>6.1f} | {r['dot_peak_bytes'] / 2**20:>8.2f} "
                    f"{r['additive_peak_bytes'] / 2**20:>13.2f} {r['memory_ratio']:>6.1f}")
    rows.append(f"median (and fastest) of {result['repeat']} runs after a warm-up, {result['dtype']} NumPy, one head, "
                f"{result['blas_threads']} BLAS thread; memory = peak extra bytes allocated by one call (tracemalloc)")
    acc = result["accuracy"]
    if acc is None:
        rows.append(result["accuracy_note"])
        return "\n".join(rows)
    rows.append(f"bottleneck task ({acc['file']}, seed {acc['seed']}, {acc['steps']} batches, lengths up to "
                f"{acc['max_len']}):")
    for name, label in (("none", "no attention"), ("additive", "additive"), ("dot", "scaled dot")):
        a = acc[name]
        lb = a["longest_bucket"]
        rows.append(f"  {label:<13} token acc {a['mean_token_accuracy']:.3f} over all lengths, "
                    f"{lb['token_accuracy']:.3f} (exact {lb['exact_match']:.3f}) at lengths {lb['lengths']}; "
                    f"trained in {a['train_s']:.0f} s")
    return "\n".join(rows)


def conclusion(result: dict) -> str:
    ratios = [r["time_ratio"] for r in result["rows"]]
    big = max(result["rows"], key=lambda r: (r["n"], r["d"]))
    return (f"additive attention took {min(ratios):.1f}x to {max(ratios):.1f}x the time of scaled dot-product "
            f"attention (n={big['n']}, d={big['d']}: {1e3 * big['additive_s']:.1f} ms vs "
            f"{1e3 * big['dot_s']:.1f} ms, {big['memory_ratio']:.0f}x the memory)")


def write(result: dict, out: Path) -> list[str]:
    """scorers.json and scorers.png in ``out``; returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_t, ax_r = fig.subplots(1, 2)
    for i, d in enumerate(sorted({r["d"] for r in result["rows"]})):
        rows = [r for r in result["rows"] if r["d"] == d]
        n = [r["n"] for r in rows]
        shade = 0.35 + 0.65 * i / max(1, len({r["d"] for r in result["rows"]}) - 1)
        ax_t.plot(n, [1e3 * r["additive_s"] for r in rows], "o-", color=(0.84, 0.15, 0.16, shade),
                  label=f"additive, d=A={d}")
        ax_t.plot(n, [1e3 * r["dot_s"] for r in rows], "s--", color=(0.12, 0.47, 0.71, shade),
                  label=f"scaled dot, d={d}")
        ax_r.plot(n, [r["time_ratio"] for r in rows], "o-", color=(0.3, 0.3, 0.3, shade),
                  label=f"d=A={d}, medians")
        ax_r.plot(n, [r["additive_min_s"] / r["dot_min_s"] for r in rows], "^:", color=(0.3, 0.3, 0.3, shade),
                  label=f"d=A={d}, fastest runs")
    ax_t.set(xscale="log", yscale="log", xlabel="n = Lq = Lk", ylabel="median ms per call",
             title="attnlab's two scorers, same inputs")
    ax_r.set(xscale="log", yscale="log", xlabel="n = Lq = Lk", ylabel="additive time / dot time",
             title="how much slower additive is")
    ns = sorted({r["n"] for r in result["rows"]})
    for ax in (ax_t, ax_r):
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    names = ["scorers.json", "scorers.png"]
    fig.savefig(out / names[1], dpi=130)
    (out / names[0]).write_text(json.dumps({**result, "files": names}, indent=1))
    return names
