"""A one-page cheat sheet generated from the code: formula, shapes, masks, MHA/MQA/GQA, cost formulas.

Nothing on the page is typed by hand where the code can say it: the shapes come from running
``MultiHeadAttention`` and ``scaled_dot_product_attention`` on a small example whose sizes are all different (so
each number maps back to one symbol), the mask drawings from ``attnlab.masks``, the cache sizes and the n -> 2n
ratios from ``attnlab.cost``. If the code changes, the sheet changes with it.

>>> sheet = build()
>>> dict((s.name, s.symbols) for s in sheet.shapes)["weights"]
'(B, H, Lq, Lk)'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import cost, masks
from ..api import scaled_dot_product_attention
from ..layers import MultiHeadAttention
from ..scores import scaled_dot

FORMULA = "Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V"
FORMULA_TEX = r"$\mathrm{Attention}(Q,K,V) = \mathrm{softmax}\left(\frac{QK^\top}{\sqrt{d_k}} + M\right)V$"
MASK_NOTE = "M[i, j] = 0 where query i may attend key j, -inf where blocked (True = may attend in attnlab)"
# The example: every size distinct, so a shape can be read back into symbols.
EXAMPLE = {"B": 2, "Lq": 5, "Lk": 7, "H": 6, "G": 3, "Dh": 4}
COST_FORMULAS = [
    ("FLOPs", "4 B H Lq Lk Dh  (Q K^T and P V, 2 FLOPs per multiply-add)"),
    ("score memory, reference", "B H Lq Lk x bytes  -> O(n^2)"),
    ("memory, tiled (Flash)", "O(B H (Lq + Lk) Dh) + fixed tiles  -> O(n)"),
    ("sliding window w", "FLOPs ~ 4 B H n w Dh  -> O(n w)"),
    ("causal", "about half the dense FLOPs (tiles above the diagonal skipped)"),
    ("KV cache per token", "2 (K and V) x layers x G x Dh x bytes"),
]

RECIPE = ["1. s_j = q . k_j / sqrt(d_k)", "2. s_j = -inf where the mask blocks j",
          "3. e_j = exp(s_j - max s)   (stable, same weights)", "4. a_j = e_j / sum e   (all blocked -> 0)",
          "5. out = sum_j a_j v_j"]
KINDS = [("self", "context = x", "encoders (BERT)"), ("cross", "context = encoder output", "decoders of T5"),
         ("causal", "mask = masks.causal()", "GPT, Llama"), ("", "", ""),
         ("MHA", "n_kv_heads = n_heads", "GPT-2, Llama-2-7B"), ("GQA", "1 < n_kv_heads < n_heads", "Llama-2-70B"),
         ("MQA", "n_kv_heads = 1", "PaLM, Falcon")]


@dataclass
class ShapeStep:
    name: str
    formula: str
    shape: tuple
    symbols: str


@dataclass
class Sheet:
    shapes: list
    masks: list            # (title, bool array (L, L) or (Lq, Lk))
    heads: list            # rows: kind, G, KV bytes per token, KV cache
    heads_setting: str
    doubling: dict         # quantity -> ratio, dense and window
    doubling_setting: str


def _symbols(shape, names) -> str:
    return "(" + ", ".join(names.get(n, str(n)) for n in shape) + ")"


def shape_steps() -> list[ShapeStep]:
    """Run grouped-query cross-attention on the EXAMPLE sizes and record every intermediate shape."""
    B, Lq, Lk, H, G, Dh = (EXAMPLE[k] for k in ("B", "Lq", "Lk", "H", "G", "Dh"))
    d_model = H * Dh
    names = {B: "B", Lq: "Lq", Lk: "Lk", H: "H", G: "G", Dh: "Dh", d_model: "d_model"}
    rng = np.random.default_rng(0)
    layer = MultiHeadAttention(d_model, n_heads=H, n_kv_heads=G, seed=0)
    x = rng.standard_normal((B, Lq, d_model)).astype(np.float32)                 # (B, Lq, d_model)
    context = rng.standard_normal((B, Lk, d_model)).astype(np.float32)           # (B, Lk, d_model)
    q, k, v = layer.project(x, context)                                          # (B, H, Lq, Dh), (B, G, Lk, Dh)
    scores = scaled_dot(q, np.repeat(k, H // G, axis=1))                         # (B, H, Lq, Lk)
    mask = masks.causal().to_array(Lq, Lk)                                       # (Lq, Lk)
    heads, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    concat = np.moveaxis(heads, 1, 2).reshape(B, Lq, H * Dh)                     # (B, Lq, H*Dh)
    out = layer(x, context, mask=mask)                                           # (B, Lq, d_model)
    steps = [("x", "input (queries' side)", x), ("context", "keys'/values' side (= x for self-attention)",
                                                 context),
             ("q", "x W_q^T, split into H heads", q), ("k, v", "context W_k^T, W_v^T, G kv heads", k),
             ("scores", "q k^T / sqrt(Dh)", scores), ("mask", "True = may attend", mask),
             ("weights", "softmax over the keys", weights), ("heads", "weights @ v", heads),
             ("concat", "heads side by side (H Dh = d_model)", concat), ("output", "concat W_o^T", out)]
    return [ShapeStep(n, f, tuple(a.shape), _symbols(a.shape, names)) for n, f, a in steps]


def _mask_gallery() -> list:
    n = 6
    return [("causal", masks.causal().to_array(n, n)),
            ("sliding_window(2)", masks.sliding_window(2).to_array(n, n)),
            ("padding([4])", masks.padding([4]).to_array(n, n)[0, 0]),
            ("prefix_lm(2)", masks.prefix_lm(2).to_array(n, n)),
            ("document([0,0,1,1,1,2])", masks.document([0, 0, 1, 1, 1, 2]).to_array(n, n)),
            ("causal, Lq=3 < Lk=6 (KV cache)", masks.causal().to_array(3, n))]


def _heads_rows():
    layers, H, Dh, n = 32, 32, 128, 4096
    rows = []
    for kind, G in (("MHA", H), ("GQA", 8), ("MQA", 1)):
        cfg = cost.model_config(n_heads=H, head_dim=Dh, n_kv_heads=G, n_layers=layers, mask="causal")
        c = cost.estimate(cfg, n, dtype="float16")
        rows.append((kind, G, f"{c.kv_bytes_per_token // 1024} KiB", f"{c.kv_cache_bytes / 2**30:.2f} GiB"))
    return rows, f"{layers} layers, H={H} query heads, Dh={Dh}, float16, {n} tokens"


def build() -> Sheet:
    cfg = cost.model_config(n_heads=8, head_dim=64)
    dense = cost.doubling(cfg, 4096, mask="causal", dtype="float16").ratios
    window = cost.doubling(cfg, 4096, mask="window:512", dtype="float16").ratios
    doubling = {"FLOPs, causal": dense["useful FLOPs"], "reference memory": dense["reference peak memory"],
                "tiled memory": dense["tiled peak memory"], "FLOPs, window 512": window["tiled FLOPs"],
                "KV cache": dense["KV cache"]}
    rows, setting = _heads_rows()
    return Sheet(shape_steps(), _mask_gallery(), rows, setting, doubling,
                 "n = 4096 -> 8192, 8 heads x 64 (attnlab.cost.doubling)")


# --- outputs ----------------------------------------------------------------------------------------------------
def _check_sheet(sheet) -> None:
    if not isinstance(sheet, Sheet):
        raise TypeError(f"sheet must be a Sheet (from cheatsheet.build()), got {type(sheet).__name__}")


def to_markdown(sheet: Sheet) -> str:
    _check_sheet(sheet)
    ex = ", ".join(f"{k}={v}" for k, v in EXAMPLE.items())
    lines = ["# Attention cheat sheet", "", "Generated by `attnlab cheatsheet --out docs/cheatsheet.md` from the code "
             "(shapes from running the functions, sizes from `attnlab.cost`).", "", "## The formula", "",
             f"    {FORMULA}", "", MASK_NOTE + ".", "",
             f"## Shapes at every step (grouped-query cross-attention, example {ex})", "",
             "| step | what | shape | example |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.formula} | `{s.symbols}` | `{s.shape}` |" for s in sheet.shapes]
    lines += ["", "## Mask types (`#` may attend, `.` blocked)", ""]
    for title, grid in sheet.masks:
        lines += ["```", title] + ["".join("#" if c else "." for c in row) for row in np.asarray(grid)] + ["```"]
    lines += ["", f"## MHA / GQA / MQA ({sheet.heads_setting})", "",
              "| kind | kv heads G | KV cache per token | KV cache |", "|---|---|---|---|"]
    lines += [f"| {k} | {g} | {b} | {t} |" for k, g, b, t in sheet.heads]
    lines += ["", "Query head h reads key/value head h // (H / G); MQA is G = 1, MHA is G = H.", "",
              "## One query row, step by step", ""] + [f"    {r}" for r in RECIPE] + [
              "", "## Who attends to what", "", "| kind | setting | used in |", "|---|---|---|"]
    lines += [f"| {a} | `{b}` | {c} |" for a, b, c in KINDS if a] + ["",
              "## Cost", "", "| quantity | formula |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in COST_FORMULAS]
    lines += ["", f"When n doubles ({sheet.doubling_setting}): "
              + ", ".join(f"{k} x{v:.2f}" for k, v in sheet.doubling.items()) + "."]
    return "\n".join(lines) + "\n"


def figure(sheet: Sheet):
    """The page as one A4-landscape matplotlib Figure."""
    _check_sheet(sheet)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.69, 8.27))
    FigureCanvasAgg(fig)
    mono = dict(family="DejaVu Sans Mono", fontsize=7.4, va="top")
    fig.text(0.03, 0.965, "Attention cheat sheet", fontsize=17, weight="bold", va="top")
    fig.text(0.97, 0.962, "generated by attnlab from the code", fontsize=8, color="#666", ha="right", va="top")
    fig.text(0.03, 0.905, FORMULA_TEX, fontsize=15, va="top")
    fig.text(0.45, 0.905, FORMULA, fontsize=8.5, va="top", family="DejaVu Sans Mono")
    fig.text(0.45, 0.875, MASK_NOTE, fontsize=7.5, va="top", color="#333")

    ex = " ".join(f"{k}={v}" for k, v in EXAMPLE.items())
    fig.text(0.03, 0.815, f"Shapes at every step (run on {ex})", fontsize=10, weight="bold", va="top")
    table = [f"{'step':<9}{'shape':<17}{'example':<15}what"]
    table += [f"{s.name:<9}{s.symbols:<17}{str(s.shape):<15}{s.formula}" for s in sheet.shapes]
    fig.text(0.03, 0.785, "\n".join(table), linespacing=1.45, **mono)

    fig.text(0.03, 0.545, "One query row, step by step", fontsize=10, weight="bold", va="top")
    fig.text(0.03, 0.515, "\n".join(RECIPE), linespacing=1.45, **mono)
    fig.text(0.31, 0.545, "Who attends to what", fontsize=10, weight="bold", va="top")
    fig.text(0.31, 0.515, "\n".join(f"{a:<7}{b:<26}{c}" for a, b, c in KINDS), linespacing=1.45, **mono)

    fig.text(0.03, 0.36, "Cost", fontsize=10, weight="bold", va="top")
    width = max(len(k) for k, _ in COST_FORMULAS) + 2                 # every label clear of its value
    cost_lines = [f"{k:<{width}}{v}" for k, v in COST_FORMULAS]
    cost_lines += ["", f"n -> 2n ({sheet.doubling_setting}):",
                   "  " + ", ".join(f"{k} x{v:.2f}" for k, v in sheet.doubling.items())]
    fig.text(0.03, 0.33, "\n".join(cost_lines), linespacing=1.45, **mono)

    _draw_masks(fig, sheet.masks)
    _draw_heads(fig, sheet)
    return fig


def _draw_masks(fig, gallery):
    fig.text(0.60, 0.815, "Mask types (dark = may attend, light = blocked)", fontsize=10, weight="bold", va="top")
    for i, (title, grid) in enumerate(gallery):
        r, c = divmod(i, 3)
        ax = fig.add_axes([0.60 + c * 0.13, 0.60 - r * 0.185, 0.10, 0.14])
        grid = np.asarray(grid)
        ax.imshow(grid, cmap="Blues", vmin=-0.3, vmax=1.2, aspect="equal")
        ax.set_xticks(np.arange(grid.shape[1]) - 0.5, minor=True)
        ax.set_yticks(np.arange(grid.shape[0]) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="both", length=0, labelsize=5)
        ax.set_xticks([0, grid.shape[1] - 1])
        ax.set_yticks([0, grid.shape[0] - 1])
        ax.set_title(title, fontsize=6.5, pad=2)


def _draw_heads(fig, sheet):
    fig.text(0.60, 0.395, "MHA / GQA / MQA: which kv head each query head reads", fontsize=10, weight="bold",
             va="top")
    H = 8
    for col, (kind, G) in enumerate((("MHA", 8), ("GQA", 2), ("MQA", 1))):
        ax = fig.add_axes([0.60 + col * 0.13, 0.24, 0.115, 0.12])
        ax.set_xlim(-0.5, H - 0.5)
        ax.set_ylim(-0.6, 1.6)
        ax.axis("off")
        group = H // G
        for h in range(H):
            color = f"C{h // group}"
            ax.add_patch(_box(h, 1.0, color))
            kv = (h // group) * group + (group - 1) / 2                        # centre of its kv head
            ax.plot([h, kv], [0.9, 0.1], color=color, linewidth=0.7)
        for g in range(G):
            ax.add_patch(_box(g * group + (group - 1) / 2, 0.0, f"C{g}", width=min(group, 1.6) * 0.7))
        ax.set_title(f"{kind}: H={H}, G={G}", fontsize=7.5, pad=1)
    fig.text(0.60, 0.225, "top: query heads, bottom: key/value heads", fontsize=6.5, color="#555", va="top")
    lines = [f"{'kind':<6}{'G':>4}{'KV/token':>11}{'KV cache':>11}"]
    lines += [f"{k:<6}{g:>4}{b:>11}{t:>11}" for k, g, b, t in sheet.heads]
    fig.text(0.60, 0.195, sheet.heads_setting + ":\n" + "\n".join(lines), linespacing=1.4,
             family="DejaVu Sans Mono", fontsize=7.2, va="top")


def _box(x, y, color, width=0.7):
    from matplotlib.patches import Rectangle

    return Rectangle((x - width / 2, y - 0.2), width, 0.4, facecolor=color, edgecolor="none", alpha=0.85)


def write(path) -> Path:
    """Write the sheet as .pdf (one page), .png or .md, chosen by the suffix."""
    import matplotlib

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pdf", ".png", ".md"):
        raise ValueError(f"--out must end in .pdf, .png or .md, got {str(path)!r}")
    sheet = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".md":
        path.write_text(to_markdown(sheet), encoding="utf-8")
        return path
    fig = figure(sheet)
    with matplotlib.rc_context({"pdf.fonttype": 42}):     # TrueType: the PDF's text can be searched and copied
        fig.savefig(path, dpi=150 if suffix == ".png" else None)
    return path
