"""Shared pieces of every attnlab figure: the figure itself, saving, token tick labels, blocked cells.

Figures are plain ``matplotlib.figure.Figure`` objects with an Agg canvas attached (no pyplot state, so nothing
leaks between calls and ``fig.canvas.draw()`` renders to pixels). Blocked cells are drawn the same way in every
figure: a light grey fill with a dark grey cross, so they read as "not allowed", never as "a small weight".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, Locator

from .._array import as_array, to_numpy

WEIGHT_CMAP = "viridis"
SCORE_CMAP = "RdBu_r"
BLOCKED_FACE = "#d4d4d4"           # RGB (212, 212, 212): the blocked colour the pixel tests look for
BLOCKED_MARK = "#6b6b6b"
CROSS_UP_TO = 48                   # draw one x per blocked cell up to this many rows/columns, hatch beyond
FORMATS = (".png", ".svg", ".pdf")


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure of ``width`` x ``height`` inches that can render to pixels."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path) -> Path:
    """Save ``fig`` as PNG (200 dpi), SVG or PDF, chosen by the suffix of ``path``; returns the path."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path = figure_path(path)
    fig.savefig(path, dpi=200 if path.suffix.lower() == ".png" else None, bbox_inches="tight")
    return path


def figure_path(path) -> Path:
    """``path`` as a Path, checked to end in .png, .svg or .pdf."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"path must end in one of {', '.join(FORMATS)}, got {str(path)!r}")
    return path


def as_matrix(x, name: str, ndims: tuple[int, ...] = (2,)) -> np.ndarray:
    """``x`` as a float64 NumPy array with one of ``ndims`` dimensions."""
    arr = to_numpy(as_array(x, name))
    if arr.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def token_labels(tokens, n: int, prefix: str, name: str) -> list[str]:
    """Labels for ``n`` positions: the given tokens (shortened to 14 characters) or prefix + index."""
    if tokens is None:
        return [f"{prefix}{i}" for i in range(n)]
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise ValueError(f"{name} has {len(tokens)} entries but the matrix has {n} along that axis")
    return [t if len(t) <= 14 else t[:13] + "\u2026" for t in tokens]


class _TokenLocator(Locator):
    """Ticks on every k-th position, k the smallest of 1, 2, 5, 10, 20, 50, ... that keeps labels apart.

    Decided at draw time from the real axis length, so labels never overlap whatever the figure size.
    """

    def __init__(self, n: int, fontsize: float):
        self.n, self.fontsize, self.step = n, fontsize, 1

    def __call__(self):
        axes = self.axis.axes
        length = axes.bbox.width if self.axis is axes.xaxis else axes.bbox.height   # pixels
        per_label = self.fontsize * 1.45 * axes.figure.dpi / 72                      # one text line + gap
        fits = max(1, int(length // per_label))
        self.step = _nice_step(math.ceil(self.n / fits))
        return np.arange(0, self.n, self.step)


def _nice_step(k: int) -> int:
    for decade in (1, 10, 100, 1000, 10000):
        for m in (1, 2, 5):
            if m * decade >= k:
                return m * decade
    return k


def set_token_ticks(ax, axis: str, labels: list[str], fontsize: float) -> None:
    """Label ``axis`` ("x" or "y") with ``labels``, thinned to fit; thinned labels carry their index."""
    locator = _TokenLocator(len(labels), fontsize)

    numbered = all(label == f"{labels[0][:-1]}{i}" for i, label in enumerate(labels))   # q0, q1, ... already

    def fmt(value, _pos):
        i = int(round(value))
        if not 0 <= i < len(labels):
            return ""
        return labels[i] if locator.step == 1 or numbered else f"{i} {labels[i]}"

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(locator)
    target.set_major_formatter(FuncFormatter(fmt))
    ax.tick_params(axis=axis, labelsize=fontsize, length=2)
    if axis == "x":
        ax.tick_params(axis="x", labelrotation=90)


def draw_blocked(ax, blocked: np.ndarray, marks: bool = True) -> None:
    """Mark the True cells of ``blocked`` (Lq, Lk): grey fill and (``marks``) an x per cell on small grids or
    hatching on large ones."""
    rows, cols = np.nonzero(blocked)
    if rows.size == 0:
        return
    Lq, Lk = blocked.shape
    ax.add_collection(PatchCollection([Rectangle((c - 0.5, r - 0.5), n, 1) for r, c, n in _runs(blocked)],
                                      facecolor=BLOCKED_FACE, edgecolor="none", zorder=2))
    if not marks:
        return
    if max(Lq, Lk) <= CROSS_UP_TO:
        d = 0.22   # the cross stays inside the cell; its arms run corner to corner
        segments = np.concatenate([
            np.stack([np.c_[cols - d, rows - d], np.c_[cols + d, rows + d]], axis=1),
            np.stack([np.c_[cols - d, rows + d], np.c_[cols + d, rows - d]], axis=1)])
        ax.add_collection(LineCollection(segments, colors=BLOCKED_MARK, linewidths=0.9, zorder=3))
    else:
        ax.add_collection(PatchCollection([Rectangle((c - 0.5, r - 0.5), n, 1) for r, c, n in _runs(blocked)],
                                          facecolor="none", edgecolor=BLOCKED_MARK, hatch="xx", linewidth=0,
                                          zorder=3))


def _runs(blocked: np.ndarray):
    """(row, first column, length) of every horizontal run of True cells."""
    for r, row in enumerate(blocked):
        padded = np.diff(np.r_[0, row.astype(np.int8), 0])
        starts, stops = np.flatnonzero(padded == 1), np.flatnonzero(padded == -1)
        yield from ((r, s, e - s) for s, e in zip(starts, stops))


def blocked_legend_handle(label: str = "blocked by the mask") -> Patch:
    return Patch(facecolor=BLOCKED_FACE, edgecolor=BLOCKED_MARK, hatch="xx", label=label)


def annotate_cells(ax, values: np.ndarray, show: np.ndarray, image, fmt: str, fontsize: float) -> None:
    """Write ``values`` into the cells where ``show`` is True, white on dark colours and black on light ones."""
    for r, c in zip(*np.nonzero(show)):
        rgba = image.cmap(image.norm(values[r, c]))
        luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
        ax.text(c, r, format(values[r, c], fmt), ha="center", va="center", fontsize=fontsize,
                color="black" if luminance > 0.45 else "white", zorder=4)


def draw_matrix(ax, values: np.ndarray, *, blocked=None, cmap=WEIGHT_CMAP, norm=None, annotate="auto",
                fmt: str = ".2f", q_labels=None, k_labels=None, marks: bool = True):
    """imshow ``values`` (Lq, Lk) with blocked cells marked, optional numbers and token tick labels.

    Returns the image (for a colour bar). ``annotate``: True, False or "auto" (numbers when both sides <= 16).
    """
    Lq, Lk = values.shape
    blocked = np.zeros((Lq, Lk), bool) if blocked is None else blocked
    shown = np.ma.masked_array(values, mask=blocked | ~np.isfinite(values))
    image = ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
    draw_blocked(ax, blocked, marks)
    if annotate not in (True, False, "auto"):
        raise ValueError(f"annotate must be True, False or 'auto', got {annotate!r}")
    n = max(Lq, Lk)
    if annotate is True or (annotate == "auto" and n <= 16):
        annotate_cells(ax, values, ~shown.mask, image, fmt, fontsize=_cell_fontsize(n))
    tick_size = 9 if n <= 16 else 7
    set_token_ticks(ax, "y", q_labels or [f"q{i}" for i in range(Lq)], tick_size)
    set_token_ticks(ax, "x", k_labels or [f"k{j}" for j in range(Lk)], tick_size)
    ax.set_xlim(-0.5, Lk - 0.5)
    ax.set_ylim(Lq - 0.5, -0.5)
    return image


def _cell_fontsize(n: int) -> float:
    return 9 if n <= 8 else 7 if n <= 12 else 6


def matrix_size(Lq: int, Lk: int, extra_width: float = 1.9, extra_height: float = 1.4) -> tuple[float, float]:
    """Figure size in inches for one matrix: about half an inch per cell, at most 7 inches a side."""
    n = max(Lq, Lk, 1)
    side = min(max(0.5 * n, 2.8), 7.0)
    return side * Lk / n + extra_width, side * Lq / n + extra_height
