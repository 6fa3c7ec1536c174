"""``cost_figure``: predicted cost curves with measured points on top, log-log, with n^2 and n slopes marked.

Arrays in, figure out: the numbers come from ``attnlab.cost`` (or anywhere), so this module knows nothing about
how they were made.
"""

from __future__ import annotations

import textwrap

import numpy as np

from ._figure import new_figure

REFERENCE_STYLE = dict(color="#8a8a8a", linestyle=(0, (4, 3)), linewidth=1.0, zorder=1)
# One style per curve: colour, dash pattern, marker and width all differ, and the first curves are drawn widest,
# so two curves with the same values (the reference and tiled paths both compute every cell of a dense mask) still
# both show: the later, thinner, dashed one on top of the earlier, wider one.
CURVE_DASHES = ("-", "--", ":", "-.")
CURVE_MARKERS = ("s", "D", "^", "v", "P", "X")
MEASURED_MARKER = "o"


def curve_style(i: int, color: str) -> dict:
    """The ``plot`` keywords of the i-th predicted curve: distinct dashes and hollow markers, narrowing widths."""
    return dict(color=color, linestyle=CURVE_DASHES[i % len(CURVE_DASHES)],
                marker=CURVE_MARKERS[i % len(CURVE_MARKERS)], markersize=5, markerfacecolor="none",
                markeredgewidth=1.1, linewidth=max(3.0 - 0.5 * i, 1.2), zorder=2 + 0.1 * i)


def cost_figure(predicted, measured=None, ylabel: str = "cost", title: str | None = None,
                caption: str | None = None):
    """Plot cost against sequence length n on log-log axes.

    ``predicted``: {name: (n_values, values)} curves (lines), or {panel: {name: (n_values, values)}} for several
    panels side by side, e.g. {"time (s)": {...}, "memory (bytes)": {...}}. ``measured``: the same structure,
    drawn as points in the colour of the curve with the same name. Dashed grey lines mark the slopes of n^2 and n.
    ``ylabel`` labels the single panel of a flat dict. ``title`` goes above the panels, ``caption`` (wrapped
    text: what the reader needs to read the curves) below them.

    >>> n = [256, 512, 1024]
    >>> fig = cost_figure({"naive": (n, [1.0, 4.0, 16.0])}, {"naive": (n, [1.1, 4.2, 15.0])}, ylabel="time (ms)")
    >>> fig.axes[0].get_yscale()
    'log'
    """
    panels = _panels(predicted, "predicted", ylabel)
    points = _panels(measured, "measured", ylabel) if measured is not None else {}
    names = list(dict.fromkeys([name for p in panels.values() for name in p] +
                               [name for p in points.values() for name in p]))
    styles = {name: curve_style(i, f"C{i % 10}") for i, name in enumerate(names)}
    panel_names = list(dict.fromkeys(list(panels) + list(points)))
    width = 4.6 * len(panel_names) + 0.4                                           # inches
    wrapped = textwrap.wrap(caption, int(width * 14)) if caption else []           # ~14 characters an inch at 8 pt
    fig = new_figure(width, 4.0 + 0.3 * bool(title) + 0.16 * len(wrapped))
    axes = fig.subplots(1, len(panel_names), squeeze=False)[0]
    for ax, panel in zip(axes, panel_names):
        curves, dots = panels.get(panel, {}), points.get(panel, {})
        for name, (n, y) in curves.items():
            ax.plot(n, y, label=f"{name} (model)", **styles[name])
        for name, (n, y) in dots.items():
            ax.plot(n, y, MEASURED_MARKER, color=styles[name]["color"], markersize=5, markeredgecolor="white",
                    markeredgewidth=0.6, label=f"{name} (measured)", zorder=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(panel)
        ax.grid(True, which="major", color="#e6e6e6", linewidth=0.6)
        _reference_slopes(ax, list(curves.values()) + list(dots.values()))
        ax.legend(fontsize=7, frameon=False, loc="upper left", handlelength=3.2)
    if title:
        fig.suptitle(title, fontsize=11)
    if caption:
        fig.supxlabel("\n".join(wrapped), fontsize=8, ha="left", x=0.01, color="#333333")
    return fig


def _panels(data, name, ylabel) -> dict:
    """{panel: {series: (n, y)}} from a flat or nested dict, every series checked."""
    if not isinstance(data, dict) or not data:
        raise TypeError(f"{name} must be a non-empty dict name -> (n_values, values), or panel -> such a dict; "
                        f"got {type(data).__name__}")
    nested = all(isinstance(v, dict) for v in data.values())
    raw = data if nested else {ylabel: data}
    return {panel: {series: _series(xy, f"{name}[{panel!r}][{series!r}]" if nested else f"{name}[{series!r}]")
                    for series, xy in curves.items()}
            for panel, curves in raw.items()}


def _series(xy, name):
    try:
        n, y = xy
        n, y = np.asarray(n, dtype=np.float64), np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (n_values, values) of numbers") from None
    if n.ndim != 1 or n.shape != y.shape or n.size == 0:
        raise ValueError(f"{name}: n_values and values must be 1-D of the same non-zero length, "
                         f"got shapes {n.shape} and {y.shape}")
    if not (np.isfinite(n).all() and np.isfinite(y).all() and (n > 0).all() and (y > 0).all()):
        raise ValueError(f"{name}: log-log axes need finite positive n_values and values")
    return n, y


def _reference_slopes(ax, series) -> None:
    """Dashed lines through the lowest first point, growing as n^2 and n, labelled where they leave the plot."""
    n0 = min(float(n.min()) for n, _ in series)
    n1 = max(float(n.max()) for n, _ in series)
    y0 = min(float(y[np.argmin(n)]) for n, y in series) * 0.6
    ax.autoscale_view()
    top = ax.get_ylim()[1]
    ax.set_ylim(min(ax.get_ylim()[0], y0 * 0.8), top)
    ax.set_autoscale_on(False)
    for power, label in ((2, "\u221d n\u00b2"), (1, "\u221d n")):
        end = min(n1, n0 * (top / y0) ** (1 / power))
        xs = np.geomspace(n0, end, 32)
        ax.plot(xs, y0 * (xs / n0) ** power, **REFERENCE_STYLE)
        ax.annotate(label, (end, y0 * (end / n0) ** power), textcoords="offset points", xytext=(2, -10),
                    fontsize=8, color="#6b6b6b", ha="right" if end < n1 else "left")
