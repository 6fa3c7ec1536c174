"""Failure modes of attention measured on a real model: diffuse and over-concentrated heads, attention sinks,
and position sensitivity. Library functions that return numbers; ``attnlab failure-modes`` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import diagnostics

PUNCTUATION = set(".,;:!?")


@dataclass
class HeadSurvey:
    """Per head (layers, H): the fraction of texts on which each failure flag fired (diffuse, over_concentrated),
    on which the head was typed a sink head (``sink``: a recognised function, not a failure flag), and mean
    statistics."""
    diffuse: np.ndarray
    over_concentrated: np.ndarray
    sink: np.ndarray
    entropy: np.ndarray
    sink_mass: np.ndarray
    texts: int


def head_survey(model, texts, sink_indices=(0, -1)) -> HeadSurvey:
    """Run ``diagnostics.head_table`` on every text and count how often each head gets each flag (and the sink
    type)."""
    shape = (model.n_layers, model.n_heads)
    acc = {k: np.zeros(shape) for k in ("diffuse", "over_concentrated", "sink", "entropy", "sink_mass")}
    for text in texts:
        tokens, w = model.attentions(text)
        for r in diagnostics.head_table(w, sink_indices=sink_indices,
                                        delimiters=diagnostics.delimiter_positions(tokens), ids=tokens):
            for flag in ("diffuse", "over_concentrated"):
                acc[flag][r.layer, r.head] += flag in r.flags
            acc["sink"][r.layer, r.head] += r.type == "sink"
            acc["entropy"][r.layer, r.head] += r.entropy
            acc["sink_mass"][r.layer, r.head] += r.sink
    n = max(len(texts), 1)
    return HeadSurvey(**{k: v / n for k, v in acc.items()}, texts=len(texts))


def sink_breakdown(model, texts) -> dict[str, np.ndarray]:
    """Mean attention mass per layer (averaged over heads, queries and texts) landing on [CLS], [SEP],
    punctuation, and every other token: {category: (layers,)}."""
    out = {k: np.zeros(model.n_layers) for k in ("[CLS]", "[SEP]", "punctuation", "other tokens")}
    for text in texts:
        tokens, w = model.attentions(text)
        to_key = w.mean(axis=(1, 2))                                              # (layers, L)
        punct = np.array([t in PUNCTUATION for t in tokens])
        punct[[0, -1]] = False
        out["[CLS]"] += to_key[:, 0]
        out["[SEP]"] += to_key[:, -1]
        out["punctuation"] += to_key[:, punct].sum(-1)
        out["other tokens"] += to_key[:, 1:-1][:, ~punct[1:-1]].sum(-1)
    return {k: v / max(len(texts), 1) for k, v in out.items()}


# Each template: (subject phrase, subject token, verb token, rest). Filler phrases go between subject and verb;
# every prefix of FILLER keeps the sentence grammatical.
TEMPLATES = (("The keys", "keys", "are", "on the kitchen table."),
             ("The dogs", "dogs", "were", "barking all night."),
             ("The letters", "letters", "have", "finally arrived."))
FILLER = ("to the cabinet", "in the hallway", "of the old house", "by the lake", "behind the school",
          "on the hill", "across the bridge", "near the station", "beyond the forest", "at the edge",
          "of the town", "under the clock", "beside the river", "next to the mill", "past the church",
          "inside the gate", "around the corner", "below the tower", "outside the hall", "along the road")


@dataclass
class PositionSweep:
    """Weight from the verb (query) to its subject (key) as filler pushes them apart.

    distance: (n,) token distance; length: (n,) sequence length; weight: (n, layers, H), averaged over templates.
    """
    distance: np.ndarray
    length: np.ndarray
    weight: np.ndarray


def position_sweep(model, max_phrases: int = len(FILLER), templates=TEMPLATES) -> PositionSweep:
    """For k = 0..max_phrases filler phrases: attention from the verb to the subject noun in every head."""
    if not 1 <= max_phrases <= len(FILLER):
        raise ValueError(f"max_phrases must be in 1..{len(FILLER)}, got {max_phrases}")
    dist, length, weight = [], [], []
    for k in range(max_phrases + 1):
        d_k, l_k, w_k = [], [], []
        for subject, noun, verb, rest in templates:
            text = " ".join([subject, *FILLER[:k], verb, rest])
            tokens, w = model.attentions(text)
            i_noun, i_verb = tokens.index(noun), tokens.index(verb, tokens.index(noun) + 1)
            d_k.append(i_verb - i_noun)
            l_k.append(len(tokens))
            w_k.append(w[:, :, i_verb, i_noun])                                   # (layers, H)
        dist.append(np.mean(d_k))
        length.append(np.mean(l_k))
        weight.append(np.mean(w_k, axis=0))
    return PositionSweep(np.array(dist), np.array(length), np.array(weight))


def best_heads(sweep: PositionSweep) -> np.ndarray:
    """Per layer, the head with the largest mean verb -> subject weight once filler separates them (k >= 1;
    at k = 0 the subject is the previous token and a previous-token head would win): (layers,)."""
    return sweep.weight[1:].mean(axis=0).argmax(axis=-1)


# --- figures (matplotlib, imported on use) -------------------------------------------------------------------
def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def survey_figure(survey: HeadSurvey):
    """Three layers x heads maps: how often each head is flagged diffuse / over-concentrated, typed sink."""
    fig = _figure(13, 3.4)
    axes = fig.subplots(1, 3)
    for ax, name in zip(axes, ("diffuse", "over_concentrated", "sink")):
        values = getattr(survey, name)
        what = "flagged" if name != "sink" else "typed"
        im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(values):
            r = round(float(v), 1)
            ax.text(j, i, "1" if r >= 1 else f"{r:.1f}".lstrip("0"), ha="center", va="center", fontsize=6,
                    color="white" if v < 0.6 else "black")
        ax.set_title(f"{name}: {what} on this fraction of {survey.texts} sentences", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8)
    return fig


def sinks_figure(breakdown: dict[str, np.ndarray]):
    """Stacked bars per layer: where the attention mass goes ([CLS], [SEP], punctuation, other tokens)."""
    fig = _figure(7.5, 3.6)
    ax = fig.add_subplot()
    bottom = None
    for name, values in breakdown.items():
        layers = np.arange(values.size)
        ax.bar(layers, values, bottom=bottom, label=name)
        bottom = values if bottom is None else bottom + values
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention mass")
    ax.set_ylim(0, 1)
    ax.set_title("where the attention mass goes (mean over heads, queries, sentences)", fontsize=9)
    fig.legend(fontsize=8, loc="outside right upper")
    return fig


def position_figure(sweep: PositionSweep):
    """Weight from the verb to its subject against their distance: per layer mean over heads (left), and the
    head of each layer that attends to the subject most (right); dashed: uniform 1/L."""
    fig = _figure(11, 3.8)
    ax, ax2 = fig.subplots(1, 2)
    n_layers = sweep.weight.shape[1]
    best = best_heads(sweep)
    for layer in range(n_layers):
        ax.plot(sweep.distance, sweep.weight[:, layer].mean(-1), marker="o", ms=3, label=f"layer {layer}")
        ax2.plot(sweep.distance, sweep.weight[:, layer, best[layer]], marker="o", ms=3,
                 label=diagnostics.head_id(layer, best[layer]))
    for a in (ax, ax2):
        a.plot(sweep.distance, 1.0 / sweep.length, "k--", lw=1, label="uniform 1/L")
        a.set_xlabel("tokens between subject and verb")
        a.set_ylim(bottom=0)
        a.legend(fontsize=7)
    ax.set_ylabel("attention weight verb -> subject")
    ax.set_title("mean over heads", fontsize=9)
    ax2.set_title("the head of each layer that attends to the subject most", fontsize=9)
    return fig
