"""Mask figures: which cells a mask allows, the tile map a kernel sees, and how a causal mask changes attention."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap, Normalize, TwoSlopeNorm
from matplotlib.patches import Patch

from .. import masks as masks_mod
from ..api import scaled_dot_product_attention
from ..checks import is_int, positive_int
from ..scores import scaled_dot
from ._figure import (CROSS_UP_TO, SCORE_CMAP, WEIGHT_CMAP, as_matrix, blocked_legend_handle, draw_blocked,
                      draw_matrix, new_figure, set_token_ticks)

ALLOWED_FACE = "#3b6ea8"                                    # cells a query may attend
TILE_COLORS = ("#f2f2f2", "#f0a04b", "#3b6ea8")             # empty (skipped), partial (mask evaluated), full
TILE_NAMES = ("empty: skipped", "partial: mask evaluated", "full: no mask needed")


def mask_figure(mask, Lq: int, Lk: int, block=None):
    """Draw which cells ``mask`` allows for Lq queries and Lk keys, and (with ``block``) its tile map.

    ``mask``: an ``attnlab.masks.Mask`` or a bool array (Lq, Lk), True = may attend. ``block``: a tile size
    (int) or (block_q, block_k): adds the map of empty / partial / full tiles that a tiled kernel sees
    (``Mask.blocks``). When Lq != Lk and the mask is causal, both query alignments are drawn side by side
    (top-left, as PyTorch's ``is_causal``, and bottom-right, attnlab's default and the KV-cache convention).

    >>> fig = mask_figure(masks_mod.causal(), 4, 6, block=2)
    >>> len(fig.axes)   # two alignments, each with its tile map
    4
    """
    Lq, Lk = positive_int(Lq, "Lq"), positive_int(Lk, "Lk")
    variants = _variants(mask, Lq, Lk)
    bq, bk = _block(block)
    rows = 1 if block is None else 2                       # the cells, then the tile map, under each other
    cell = min(0.42, 6.0 / max(Lq, Lk))
    fig = new_figure(len(variants) * (Lk * cell + 1.3) + 0.4, rows * (Lq * cell + 1.5) + 0.5)
    axes = fig.subplots(rows, len(variants), squeeze=False)
    for col, (label, m, allowed) in enumerate(variants):   # causal alignments side by side
        _draw_allowed(axes[0, col], allowed, label)
        if block is not None:
            _draw_tiles(axes[1, col], m.blocks(Lq, Lk, bq, bk), Lq, Lk, bq, bk)
    handles = [Patch(facecolor=ALLOWED_FACE, label="may attend"), blocked_legend_handle("blocked")]
    if block is not None:
        handles += [Patch(facecolor=c, edgecolor="#999999", label=f"tile {n}")
                    for c, n in zip(TILE_COLORS, TILE_NAMES)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8, frameon=False)
    return fig


def _block(block):
    if block is None:
        return None, None
    bq, bk = (block, block) if np.isscalar(block) else tuple(block)
    for b in (bq, bk):
        if not is_int(b) or b < 1:
            raise ValueError(f"block must be a positive integer or a pair (block_q, block_k), got {block!r}")
    return int(bq), int(bk)


def _variants(mask, Lq, Lk):
    """[(label, Mask, allowed (Lq, Lk))]: the mask itself, or both causal alignments when Lq != Lk and the mask
    is causal. A mask defined per batch row (padding) or head is drawn for row 0, head 0."""
    if isinstance(mask, masks_mod.Mask):
        allowed = mask.evaluate(Lq, Lk, np.arange(Lq)[:, None], np.arange(Lk)[None, :])
        label = mask.name + (" (batch row 0)" if mask.batch else "") + (" (head 0)" if mask.heads else "")
    else:
        allowed = np.asarray(mask)
        if allowed.dtype != bool or allowed.shape != (Lq, Lk):
            raise ValueError(f"mask must be an attnlab.masks.Mask or a bool array of shape ({Lq}, {Lk}), "
                             f"got {allowed.dtype} {allowed.shape}")
        label, mask = "mask", masks_mod.from_array(allowed)
    if Lq != Lk:
        for align in masks_mod.ALIGNS:
            if np.array_equal(allowed, masks_mod.causal(align).to_array(Lq, Lk)):
                both = [masks_mod.causal(a) for a in ("top_left", "bottom_right")]
                return [(_causal_label(m.name, Lq, Lk), m, m.to_array(Lq, Lk)) for m in both]
    return [(label, mask, np.array(allowed, dtype=bool))]


def _causal_label(name, Lq, Lk):
    if "top_left" in name:
        return "causal, top-left: query i at position i"
    return f"causal, bottom-right: query i at position i + {Lk - Lq}"


def _draw_allowed(ax, allowed, label):
    Lq, Lk = allowed.shape
    ax.imshow(np.ones((Lq, Lk)), cmap=ListedColormap([ALLOWED_FACE]), interpolation="nearest", aspect="equal")
    draw_blocked(ax, ~allowed)
    if max(Lq, Lk) <= CROSS_UP_TO:
        _grid(ax, Lq, Lk, 1, 1, "white", 0.6)
    ax.set_title(f"{label}\n{int(allowed.sum())} of {allowed.size} cells allowed "
                 f"({100 * allowed.mean():.0f}%)", fontsize=9)
    _index_ticks(ax, Lq, Lk)


def _draw_tiles(ax, tiles, Lq, Lk, bq, bk):
    cells = np.repeat(np.repeat(tiles, bq, axis=0), bk, axis=1)[:Lq, :Lk]        # (Lq, Lk) tile kind per cell
    ax.imshow(cells, cmap=ListedColormap(TILE_COLORS), norm=Normalize(-0.5, 2.5), interpolation="nearest",
              aspect="equal")
    _grid(ax, Lq, Lk, bq, bk, "#333333", 1.2)
    counts = np.bincount(tiles.ravel(), minlength=3)
    ax.set_title(f"tiles {bq}x{bk}: {counts[0]} empty, {counts[1]} partial, {counts[2]} full\n"
                 f"a kernel computes {counts[1] + counts[2]} of {tiles.size}", fontsize=9)
    _index_ticks(ax, Lq, Lk)


def _grid(ax, Lq, Lk, step_q, step_k, color, width):
    for y in np.arange(step_q, Lq, step_q):
        ax.axhline(y - 0.5, color=color, linewidth=width, zorder=5)
    for x in np.arange(step_k, Lk, step_k):
        ax.axvline(x - 0.5, color=color, linewidth=width, zorder=5)


def _index_ticks(ax, Lq, Lk):
    size = 8 if max(Lq, Lk) <= 16 else 7
    set_token_ticks(ax, "y", [f"q{i}" for i in range(Lq)], size)
    set_token_ticks(ax, "x", [f"k{j}" for j in range(Lk)], size)


def causal_effect(q, k, v):
    """How a causal mask changes the attention matrix, for one head of toy vectors.

    q (Lq, D), k (Lk, D), v (Lk, Dv). Four panels, computed with attnlab: the scaled scores q.k/sqrt(D), the
    same scores with the causal mask applied (blocked cells are -inf), the softmax weights with each row's sum
    written beside it (1 for every row), and the output weights @ v.

    >>> import numpy as np
    >>> x = np.eye(3)
    >>> [a.get_title(loc="left").split(".")[0] for a in causal_effect(x, x, x).axes[:4]]
    ['1', '2', '3', '4']
    """
    q, k, v = as_matrix(q, "q"), as_matrix(k, "k"), as_matrix(v, "v")
    mask = masks_mod.causal()
    scores = scaled_dot(q, k)                                                    # (Lq, Lk)
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    allowed = mask.to_array(*scores.shape)
    Lq, Lk = scores.shape
    Dv = v.shape[-1]
    cell = min(0.45, 4.0 / max(Lq, Lk))
    fig = new_figure(3 * Lk * cell + Dv * cell + 6.0, Lq * cell + 1.9)
    axes = fig.subplots(1, 4, width_ratios=[Lk, Lk, Lk + 1.2, Dv + 0.6])
    limit = float(np.abs(scores).max()) or 1.0
    score_norm = TwoSlopeNorm(0.0, -limit, limit)
    tokens_q, tokens_k = [f"q{i}" for i in range(Lq)], [f"k{j}" for j in range(Lk)]
    image = draw_matrix(axes[0], scores, cmap=SCORE_CMAP, norm=score_norm, q_labels=tokens_q, k_labels=tokens_k)
    draw_matrix(axes[1], np.where(allowed, scores, -np.inf), blocked=~allowed, cmap=SCORE_CMAP, norm=score_norm,
                q_labels=tokens_q, k_labels=tokens_k, marks=max(Lq, Lk) > 16)
    _write_minus_inf(axes[1], ~allowed)
    fig.colorbar(image, ax=axes[:2], shrink=0.8, label="score", pad=0.02, location="bottom", aspect=30)
    w_image = draw_matrix(axes[2], weights, blocked=~allowed, norm=Normalize(0, 1), cmap=WEIGHT_CMAP,
                          q_labels=tokens_q, k_labels=tokens_k)
    _write_row_sums(axes[2], weights.sum(axis=-1))
    fig.colorbar(w_image, ax=axes[2], shrink=0.8, label="weight", pad=0.02, location="bottom", aspect=15)
    o_limit = float(np.abs(out).max()) or 1.0
    o_image = draw_matrix(axes[3], out, cmap=SCORE_CMAP, norm=TwoSlopeNorm(0.0, -o_limit, o_limit),
                          q_labels=tokens_q, k_labels=[f"v{d}" for d in range(Dv)])
    fig.colorbar(o_image, ax=axes[3], shrink=0.8, label="output", pad=0.02, location="bottom", aspect=8)
    titles = ("1. scores = q\u00b7k / \u221aD", "2. causal mask: future = \u2212\u221e",
              "3. softmax: weights", "4. output = weights @ V")
    for ax, title in zip(axes, titles):
        ax.set_title(title, loc="left", fontsize=10)
    axes[0].set_ylabel("query")
    for ax in axes[:3]:
        ax.set_xlabel("key")
    axes[3].set_xlabel("value dim")
    return fig


def _write_minus_inf(ax, blocked):
    if max(blocked.shape) > 16:
        return
    for r, c in zip(*np.nonzero(blocked)):
        ax.text(c, r, "\u2212\u221e", ha="center", va="center", fontsize=9, color="#333333", zorder=4)


def _write_row_sums(ax, sums):
    x = ax.get_xlim()[1] + 0.7
    ax.text(x, -0.6, "row\nsum", ha="center", va="bottom", fontsize=7)
    for r, s in enumerate(sums):
        ax.text(x, r, f"{s:.2f}", ha="center", va="center", fontsize=8)
