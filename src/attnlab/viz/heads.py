"""Many heads at once: a layers x heads grid of small heatmaps, and the entropy of every head."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize

from ..diagnostics import entropy
from ._figure import WEIGHT_CMAP, annotate_cells, as_matrix, new_figure, set_token_ticks, token_labels

ENTROPY_CMAP = "magma"


def _layers_heads(weights) -> np.ndarray:
    """weights (H, Lq, Lk) or (layers, H, Lq, Lk) as a 4-D float64 array."""
    w = as_matrix(weights, "weights", ndims=(3, 4))
    return w[None] if w.ndim == 3 else w


def heads_grid(weights, tokens=None):
    """A grid of small heatmaps, one per head: rows are layers, columns heads; one shared colour scale.

    weights: (heads, L, L) or (layers, heads, Lq, Lk). ``tokens`` label the outer axes (thinned when long).

    >>> import numpy as np
    >>> fig = heads_grid(np.full((2, 3, 4, 4), 0.25))
    >>> len(fig.axes)   # 6 heads and the colour bar
    7
    """
    w = _layers_heads(weights)
    n_layers, n_heads, Lq, Lk = w.shape
    q_labels = token_labels(tokens, Lq, "q", "tokens") if tokens is not None else None
    k_labels = token_labels(tokens, Lk, "k", "tokens") if tokens is not None and Lq == Lk else None
    size = 1.35 if tokens is None else 1.9
    fig = new_figure(n_heads * size + 1.2, n_layers * size + 0.9)
    axes = fig.subplots(n_layers, n_heads, squeeze=False, sharex=True, sharey=True)
    norm = Normalize(0.0, float(w.max()) if w.max() > 0 else 1.0)
    for (layer, head), ax in np.ndenumerate(axes):
        image = ax.imshow(w[layer, head], cmap=WEIGHT_CMAP, norm=norm, interpolation="nearest", aspect="equal")
        ax.tick_params(length=0, labelbottom=False, labelleft=False)
        if layer == 0:
            ax.set_title(f"head {head}", fontsize=9)
        if head == 0:
            ax.set_ylabel(f"layer {layer}" if n_layers > 1 else "query", fontsize=9)
    if q_labels:   # the axes share x and y, so one locator serves the whole grid
        set_token_ticks(axes[0, 0], "y", q_labels, 6)
        for ax in axes[:, 0]:
            ax.tick_params(labelleft=True, labelsize=6)
    if k_labels:
        set_token_ticks(axes[-1, 0], "x", k_labels, 6)
        for ax in axes[-1]:
            ax.tick_params(axis="x", labelbottom=True, labelsize=6, labelrotation=90)
    if not q_labels:
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.6, label="weight", pad=0.01, aspect=30)
    fig.suptitle(f"attention weights: {n_layers} layer{'s' * (n_layers > 1)} x {n_heads} heads, "
                 f"{Lq} queries x {Lk} keys", fontsize=11)
    return fig


def entropy_figure(weights, mask=None):
    """Normalized entropy of every head (``attnlab.diagnostics.entropy``): 0 = all weight on one key,
    1 = spread evenly over the keys a query may see.

    weights: (heads, Lq, Lk) or (layers, heads, Lq, Lk); ``mask`` as in ``diagnostics.entropy`` (it sets the
    number of keys each row may spread over).

    >>> import numpy as np
    >>> fig = entropy_figure(np.full((1, 2, 3, 3), 1 / 3))
    >>> fig.axes[0].texts[0].get_text()
    '1.00'
    """
    w = _layers_heads(weights)
    values = entropy(w, mask=mask, normalized=True)                                # (layers, heads)
    n_layers, n_heads = values.shape
    fig = new_figure(max(0.55 * n_heads + 1.8, 4.0), 0.5 * n_layers + 1.6)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=ENTROPY_CMAP, norm=Normalize(0.0, 1.0), interpolation="nearest",
                      aspect="equal")
    if n_layers * n_heads <= 400:
        annotate_cells(ax, values, np.ones(values.shape, bool), image, ".2f", fontsize=7)
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.tick_params(labelsize=8, length=0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("mean normalized entropy of each head's rows", loc="left", fontsize=10, pad=10)
    # The colour bar lives in an inset exactly as tall as the (aspect-equal) heatmap, so it can never reach up
    # into the title; constrained layout makes room for it because inset axes count in the axes' extent.
    bar = ax.inset_axes([1.03, 0.0, 0.05 if n_heads > 6 else 0.08, 1.0])
    fig.colorbar(image, cax=bar).set_label("entropy /\nlog(allowed keys)", fontsize=8)
    return fig
