"""``heatmap``: one attention weight matrix with token labels, a colour bar and the blocked cells marked."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize

from .. import masks as masks_mod
from ._figure import (WEIGHT_CMAP, as_matrix, blocked_legend_handle, draw_matrix, matrix_size, new_figure,
                      token_labels)


def blocked_cells(mask, Lq: int, Lk: int) -> np.ndarray:
    """The cells a mask blocks, as a boolean (Lq, Lk) array (True = blocked); ``mask`` is a Mask or a bool array
    with True = may attend.

    >>> blocked_cells(masks_mod.padding([2]), 2, 3).astype(int).tolist()
    [[0, 0, 1], [0, 0, 1]]
    """
    if mask is None:
        return np.zeros((Lq, Lk), bool)
    if isinstance(mask, masks_mod.Mask):   # batch row 0 and head 0 of masks that depend on them (padding)
        allowed = np.array(mask.evaluate(Lq, Lk, np.arange(Lq)[:, None], np.arange(Lk)[None, :]), dtype=bool)
    else:
        allowed = np.asarray(mask)
        if allowed.dtype != bool:
            raise TypeError(f"mask must be boolean (True = may attend) or an attnlab.masks.Mask, "
                            f"got dtype {allowed.dtype}")
    if allowed.shape != (Lq, Lk):
        raise ValueError(f"mask must have shape (Lq, Lk) = ({Lq}, {Lk}) for one heatmap, got {allowed.shape}")
    return ~allowed


def heatmap(weights, q_tokens=None, k_tokens=None, mask=None, annotate="auto", ax=None, title=None):
    """Draw an attention weight matrix (Lq, Lk) and return the Figure.

    Rows are queries, columns keys. ``mask`` (an ``attnlab.masks.Mask`` or a bool array, True = may attend)
    marks blocked cells with grey and a cross. ``annotate``: write the weights in the cells (True / False /
    "auto" = when both sides are at most 16). Long inputs get every k-th token label (with its index) so labels
    never overlap. ``ax``: draw into an existing Axes instead of a new figure.

    >>> fig = heatmap([[1.0, 0.0], [0.4, 0.6]], ["a", "b"], mask=masks_mod.causal())
    >>> fig.axes[0].get_title(loc="left")
    'attention weights'
    """
    w = as_matrix(weights, "weights")
    Lq, Lk = w.shape
    blocked = blocked_cells(mask, Lq, Lk)
    q_labels = token_labels(q_tokens, Lq, "q", "q_tokens")
    k_labels = token_labels(k_tokens if k_tokens is not None else (q_tokens if Lq == Lk else None), Lk, "k",
                            "k_tokens")
    if ax is None:
        fig = new_figure(*matrix_size(Lq, Lk))
        ax = fig.add_subplot()
    fig = ax.figure
    allowed = w[~blocked & np.isfinite(w)]
    vmax = float(allowed.max()) if allowed.size and allowed.max() > 0 else 1.0
    vmin = min(0.0, float(allowed.min())) if allowed.size else 0.0
    image = draw_matrix(ax, w, blocked=blocked, cmap=WEIGHT_CMAP, norm=Normalize(vmin, vmax), annotate=annotate,
                        q_labels=q_labels, k_labels=k_labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title or "attention weights", loc="left", fontsize=11)
    if blocked.any():
        ax.legend(handles=[blocked_legend_handle()], loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8,
                  frameon=False, borderaxespad=0.2, handlelength=1.4)
    fig.colorbar(image, ax=ax, shrink=0.85, label="weight", pad=0.02)
    return fig


def softmax_steps(exps, sums, weights, q_tokens=None, k_tokens=None):
    """The softmax of one matrix in three panels: E = exp(S - max_j S) (Lq, Lk), Z_i = sum_j E[i, j] (Lq,) and
    A = E / Z (Lq, Lk), each cell written in, so "A[i, j] = E[i, j] / Z_i" can be checked cell by cell.

    >>> fig = softmax_steps([[1.0, 0.5]], [1.5], [[2 / 3, 1 / 3]])
    >>> [ax.get_title(loc="left").split(".")[0] for ax in fig.axes[:3]]
    ['1', '2', '3']
    """
    e, a = as_matrix(exps, "exps"), as_matrix(weights, "weights")
    z = as_matrix(np.asarray(sums, dtype=np.float64).reshape(-1, 1), "sums")                    # (Lq, 1)
    if e.shape != a.shape or z.shape[0] != e.shape[0]:
        raise ValueError(f"exps {e.shape}, sums {z.shape[:1]} and weights {a.shape} must share Lq (and Lk)")
    Lq, Lk = e.shape
    q_labels = token_labels(q_tokens, Lq, "q", "q_tokens")
    k_labels = token_labels(k_tokens if k_tokens is not None else (q_tokens if Lq == Lk else None), Lk, "k",
                            "k_tokens")
    width, height = matrix_size(Lq, Lk)
    fig = new_figure(2 * width + 1.6, height)
    axes = fig.subplots(1, 3, width_ratios=[Lk, 1.3, Lk])
    panels = ((e, "1. E = exp(S - max)", k_labels), (z, "2. Z = row sum of E", ["Z"]),
              (a, "3. A = E / Z", k_labels))
    for ax, (values, title, cols) in zip(axes, panels):
        draw_matrix(ax, values, norm=Normalize(0.0, max(float(values.max()), 1e-12)), annotate=True, fmt=".3g",
                    q_labels=q_labels, k_labels=cols)
        ax.set_title(title, loc="left", fontsize=10)
    axes[0].set_ylabel("query")
    return fig
