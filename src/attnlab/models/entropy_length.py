"""Diffuse or over-concentrated as the context grows: attention entropy per layer against sequence length on real
text (the first n tokens of ``attnlab.data.passage()``), beside the uniform reference log(n).

A query row that may see n keys has entropy between 0 (all weight on one key) and log(n) (uniform). If a head
keeps its normalized entropy H / log(n) constant while n grows, its weight spreads over more and more tokens; if
its entropy in nats stays flat, it keeps attending to about the same number of tokens (exp H) however long the
text is. ``entropy_by_length`` records one forward pass per length and reduces each layer's weights to these
numbers as they are computed (``EntropyRecorder``), so a 2,048-token pass never holds all layers' (H, L, L) weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import diagnostics
from ..record import AttentionRecord, Recorder


@dataclass
class LayerEntropy:
    """Per head (H,), means over the query rows that may see at least 2 keys (a row with one key has no choice):
    ``nats``: entropy in nats; ``normalized``: entropy / log(keys the row may see); ``reference``: mean
    log(keys the row may see), the entropy of uniform attention (the same for every head)."""

    nats: np.ndarray
    normalized: np.ndarray
    reference: np.ndarray


def layer_entropy(weights, mask=None) -> LayerEntropy:
    """``LayerEntropy`` of weights (H, Lq, Lk) under ``mask`` (bool, broadcastable; None: every key allowed).

    >>> w = np.array([[[1.0, 0.0], [0.5, 0.5]]])              # causal, H = 1: row 0 sees one key
    >>> e = layer_entropy(w, np.tril(np.ones((2, 2), bool)))
    >>> e.nats.round(4), e.normalized, e.reference.round(4)   # only row 1 counts
    (array([0.6931]), array([1.]), array([0.6931]))
    """
    w = np.asarray(weights, dtype=np.float64)
    allowed = np.broadcast_to(np.ones((1, 1), bool) if mask is None else np.asarray(mask, bool), w.shape)
    n = allowed.sum(axis=-1)                                                     # (H, Lq) keys each row sees
    rows = n >= 2
    if not rows.any():
        raise ValueError(f"no query row may see 2 or more keys (weights of shape {w.shape})")
    nats = diagnostics.row_entropy(w, allowed, normalized=False)                 # (H, Lq)
    ref = np.log(np.maximum(n, 1))                                               # (H, Lq)
    normalized = nats / np.where(rows, ref, 1.0)                                 # as row_entropy(normalized=True)

    def mean(x):
        return np.where(rows, x, 0.0).sum(axis=-1) / rows.sum(axis=-1)           # (H,)
    return LayerEntropy(mean(nats), mean(normalized), mean(ref))


class EntropyRecorder(Recorder):
    """A recorder that keeps, per layer, only the ``LayerEntropy`` of the weights the pass computed (B = 1),
    dropping the (H, L, L) arrays as soon as each layer has run."""

    def __init__(self):
        super().__init__(fields=("weights", "mask"))
        self.entropy: dict = {}

    def add(self, record: AttentionRecord) -> None:
        mask = None if record.mask is None else record.mask[0]
        self.entropy[record.layer] = layer_entropy(record.weights[0], mask)


def first_tokens(model, text: str, n: int) -> np.ndarray:
    """The first ``n`` token ids of ``text`` as the model reads it (an encoder keeps its closing [SEP])."""
    ids = model.tokenize(text, truncate=True)
    if len(ids) < n:
        raise ValueError(f"n = {n} tokens asked, but the text is {len(ids)} tokens for {model.name}")
    return ids[:n] if model.causal else np.concatenate([ids[: n - 1], ids[-1:]])


@dataclass
class EntropyByLength:
    """Per length n (lengths,): per layer and head (lengths, layers, H) nats and normalized entropy, and the
    uniform reference (lengths, layers) (mean log of the keys a row may see: log n for an encoder, about
    log(n) - 1 for a causal model)."""

    model: str
    lengths: np.ndarray
    nats: np.ndarray
    normalized: np.ndarray
    reference: np.ndarray

    def table(self, layers=None) -> str:
        """Mean over heads per layer: normalized entropy and nats / uniform nats, one row per length."""
        layers = range(self.nats.shape[1]) if layers is None else layers
        lines = [f"{'n':>5} {'uniform':>7} | " + " ".join(f"{'L' + str(l) + ' norm / nats':>16}" for l in layers)]
        for i, n in enumerate(self.lengths):
            lines.append(f"{n:>5} {self.reference[i, 0]:>7.2f} | " + " ".join(
                f"{self.normalized[i, l].mean():>9.3f} / {self.nats[i, l].mean():>4.2f}" for l in layers))
        return "\n".join(lines)


def entropy_by_length(model, lengths, text: str | None = None, on_length=None) -> EntropyByLength:
    """One forward pass over the first n tokens of ``text`` (default ``attnlab.data.passage()``) for each n in
    ``lengths``; every layer's ``LayerEntropy``."""
    from ..data import passage

    text = passage() if text is None else text
    nats, norm, ref = [], [], []
    for n in lengths:
        ids = first_tokens(model, text, int(n))
        with model.recording(EntropyRecorder()) as rec:
            model.forward(ids[None, :])
        per_layer = [rec.entropy[layer] for layer in range(model.n_layers)]
        nats.append([e.nats for e in per_layer])
        norm.append([e.normalized for e in per_layer])
        ref.append([e.reference[0] for e in per_layer])
        if on_length is not None:
            on_length(int(n))
    return EntropyByLength(model.name, np.asarray(lengths), np.array(nats), np.array(norm), np.array(ref))


def entropy_figure(results):
    """One row per model: normalized entropy per layer against n (left), entropy in nats per layer against n
    with the uniform reference log(keys seen) dashed (right); layers coloured shallow (light) to deep (dark)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (ax, ax2), r in zip(axes, results):
        n_layers = r.nats.shape[1]
        cmap = colormaps["viridis_r"]
        for layer in range(n_layers):
            c = cmap(0.1 + 0.85 * layer / max(n_layers - 1, 1))
            label = f"layer {layer}" if layer in (0, n_layers // 2, n_layers - 1) else None
            ax.plot(r.lengths, r.normalized[:, layer].mean(-1), color=c, marker="o", ms=2, lw=1, label=label)
            ax2.plot(r.lengths, r.nats[:, layer].mean(-1), color=c, marker="o", ms=2, lw=1, label=label)
        ax2.plot(r.lengths, r.reference[:, 0], "k--", lw=1.2, label="uniform: mean log(keys seen)")
        for a in (ax, ax2):
            a.set_xscale("log", base=2)
            a.set_xlabel("tokens of real text (n)")
            a.legend(fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("normalized entropy H / log(keys)")
        ax2.set_ylabel("entropy H (nats)")
        ax.set_title(f"{r.model}: normalized entropy, mean of heads per layer", fontsize=9)
        ax2.set_title(f"{r.model}: entropy in nats against the uniform reference", fontsize=9)
    return fig
