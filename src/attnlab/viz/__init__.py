"""See attention: paper-quality figures (matplotlib) and an offline interactive explorer page.

Figures (each returns a ``matplotlib.figure.Figure``; ``save(fig, "name.png" | ".svg" | ".pdf")``):

- ``heatmap(weights, q_tokens, k_tokens, mask=None)``: one weight matrix, blocked cells hatched with a cross;
- ``softmax_steps(E, Z, A)``: the softmax cell by cell, E = exp(S - max), Z its row sums, A = E / Z;
- ``mask_figure(mask, Lq, Lk, block=None)``: allowed / blocked cells and the kernel's tile map;
- ``causal_effect(q, k, v)``: scores -> causal mask -> softmax -> output, side by side;
- ``heads_grid(weights)`` and ``entropy_figure(weights)``: every head of every layer;
- ``cost_figure(predicted, measured)``: cost model curves with measured points, log-log.

The explorer (``attnlab.viz.explorer``: ``ExplorerData``, ``write_explorer``, ``serve``) needs no matplotlib;
the figure functions are imported on first use so that ``import attnlab.viz`` stays cheap.
"""

from __future__ import annotations

import importlib

_HOME = {
    "heatmap": "weights",
    "softmax_steps": "weights",
    "mask_figure": "masks",
    "causal_effect": "masks",
    "heads_grid": "heads",
    "entropy_figure": "heads",
    "cost_figure": "cost",
    "save": "_figure",
    "new_figure": "_figure",
    "ExplorerData": "explorer",
    "explorer_html": "explorer",
    "write_explorer": "explorer",
    "serve": "explorer",
    "attention_view": "explorer",
    "cross_attention_figure": "cross",
}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOME))
