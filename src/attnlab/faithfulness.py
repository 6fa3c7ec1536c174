"""Is attention an explanation? Token importance by attention against importance by intervention.

For one sentence and a BERT-family sentence encoder (mean-pooled, normalized embeddings), the importance of each
content token (every token but [CLS] and [SEP]) by six methods:

- ``attention_cls``:  last-layer attention from [CLS] to the token, mean over heads;
- ``attention_mean``: last-layer attention to the token, mean over heads and over all queries;
- ``rollout_cls`` / ``rollout_mean``: attention rollout (Abnar & Zuidema 2020; ``diagnostics.rollout``), row of
  [CLS] / mean over rows;
- ``leave_one_out``:  1 - cos(e(sentence), e(sentence without the token)) (the token is dropped, positions
  shift; Jain & Wallace 2019 remove words the same way);
- ``grad_input``:     gradient x input for the vector output: || J_i x_i ||, the directional derivative of the
  embedding e along the token's own word embedding x_i (for a scalar output this is exactly sum_d grad_d * x_d,
  Shrikumar et al. 2017; here each of the 384 outputs has one and we take the L2 norm). It is the first-order
  Taylor estimate of how much e moves when the token's word embedding is scaled to zero. Computed EXACTLY up to
  O(eps^2) by central finite differences in NumPy, (e(x + eps x_i) - e(x - eps x_i)) / (2 eps), in float64: two
  forward passes per token and no second implementation of the model (checked against torch autograd through
  Hugging Face's BertModel in the tests).

Agreement between methods, per sentence: Kendall tau-b and Spearman rho over the content tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .budget import check as check_budget
from .checks import text as check_text
from .diagnostics import rollout
from .models.bert import pool

METHODS = ("attention_cls", "attention_mean", "rollout_cls", "rollout_mean", "leave_one_out", "grad_input")
FD_EPS = 1e-4


# --- rank correlations ---------------------------------------------------------------------------------------
def _vector(x, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array of finite numbers (a NaN would make every comparison with it false)."""
    try:
        arr = np.asarray(x)
    except ValueError as err:
        raise ValueError(f"{name} must be a 1-D list of numbers, got a ragged sequence: {err}") from None
    if arr.dtype == object or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a 1-D list of numbers, got {type(x).__name__} (dtype {arr.dtype})")
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite numbers, got {arr[~np.isfinite(arr)][0]}")
    return arr


def _pair(x, y):
    x, y = _vector(x, "x"), _vector(y, "y")
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"x and y must be 1-D of one length >= 2, got shapes {x.shape} and {y.shape}")
    return x, y


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties corrected): (C - D) / sqrt((P - Tx) (P - Ty)) over all P pairs (Kendall 1945).

    >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])
    0.6666666666666666
    """
    x, y = _pair(x, y)
    # the pair index arrays, the (n, n) sign differences and their upper triangles: about 6 n^2 doubles
    check_budget(48 * x.size ** 2, f"Kendall tau over {x.size} values (all {x.size} x {x.size} pairs)",
                 instead="use spearman_rho, which is O(n log n)")
    iu = np.triu_indices(x.size, 1)
    sign = lambda a: (a[:, None] > a[None, :]).astype(np.int8) - (a[:, None] < a[None, :])   # no a - b: 1e308
    dx, dy = sign(x)[iu], sign(y)[iu]                                                       # - (-1e308) is inf
    denom = np.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
    if denom == 0:
        raise ValueError("Kendall tau is undefined when x or y is constant")
    return float((dx * dy).sum() / denom)


def rankdata(x) -> np.ndarray:
    """Ranks 1..n, ties get their average rank.

    >>> rankdata([10, 30, 20, 20])
    array([1. , 4. , 2.5, 2.5])
    """
    x = _vector(x, "x")
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)   # distinct values, ascending
    last = np.cumsum(counts)                                                    # rank of each value's last copy
    return (last - (counts - 1) / 2.0)[inverse]                                 # ties: the mean of their ranks


def spearman_rho(x, y) -> float:
    """Spearman's rho: the Pearson correlation of the (average) ranks.

    >>> round(spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]), 4)
    0.8
    """
    x, y = _pair(x, y)
    rx, ry = rankdata(x) - (x.size + 1) / 2, rankdata(y) - (y.size + 1) / 2
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    if denom == 0:
        raise ValueError("Spearman rho is undefined when x or y is constant")
    return float((rx * ry).sum() / denom)


# --- token importance ----------------------------------------------------------------------------------------
@dataclass
class SentenceImportance:
    text: str
    tokens: list[str]                  # content tokens only ([CLS]/[SEP] removed)
    scores: dict[str, np.ndarray]      # method -> (n_tokens,)

    def top(self, method: str) -> str:
        return self.tokens[int(np.argmax(self.scores[method]))]


def _embed_batch(model, ids):
    """Sentence embeddings (B, d) of equal-length id rows (B, L)."""
    h, _, _ = model.forward(ids)
    return pool(h, np.full(len(ids), ids.shape[1]))


def leave_one_out(model, ids) -> np.ndarray:
    """1 - cos(e(ids), e(ids without token i)) for each content position i = 1..L-2: (L-2,)."""
    L = len(ids)
    full = _embed_batch(model, ids[None, :])[0]
    dropped = np.stack([np.delete(ids, i) for i in range(1, L - 1)])            # (L-2, L-1), no padding
    return 1.0 - _embed_batch(model, dropped) @ full


def grad_input(model, ids, eps: float = FD_EPS) -> np.ndarray:
    """|| d e / d t (x + t x_i) at t=0 || for each content position i, by central differences: (L-2,)."""
    words = model.embed_words(ids[None, :])                                       # (1, L, d)
    L = len(ids)
    n = L - 2
    batch = np.repeat(words, 2 * n, axis=0)                                       # (2n, L, d)
    for k, i in enumerate(range(1, L - 1)):
        batch[k, i] += eps * words[0, i]
        batch[n + k, i] -= eps * words[0, i]
    e = pool(model.forward_from_words(batch), np.full(2 * n, L))                  # (2n, d)
    return np.linalg.norm((e[:n] - e[n:]) / (2 * eps), axis=-1)


def importance(model, text: str) -> SentenceImportance:
    """All six importances of the content tokens of ``text`` (see the module docstring)."""
    if not hasattr(model, "forward_from_words"):
        raise TypeError(f"faithfulness needs a BERT-family sentence encoder, got {type(model).__name__}")
    text = check_text(text, "text")
    ids = model.tokenize(text)
    if len(ids) < 5:
        raise ValueError(f"text must have at least 3 content tokens to rank, {text!r} has {len(ids) - 2}")
    _, w, _ = model.forward(ids[None, :], return_weights=True)
    w = w[:, 0]                                                                   # (layers, H, L, L)
    last = w[-1].mean(axis=0)                                                     # (L, L)
    r = rollout(w)                                                                # (L, L)
    content = slice(1, len(ids) - 1)
    scores = {"attention_cls": last[0, content], "attention_mean": last.mean(axis=0)[content],
              "rollout_cls": r[0, content], "rollout_mean": r.mean(axis=0)[content],
              "leave_one_out": leave_one_out(model, ids), "grad_input": grad_input(model, ids)}
    return SentenceImportance(text, model.token_strings(ids)[content], {k: np.asarray(v, np.float64)
                                                                         for k, v in scores.items()})


# --- agreement over a corpus ---------------------------------------------------------------------------------
@dataclass
class PairAgreement:
    a: str
    b: str
    tau: np.ndarray      # (sentences,)
    rho: np.ndarray

    def summary(self) -> dict:
        return {"a": self.a, "b": self.b, "tau_mean": float(self.tau.mean()), "tau_median": float(np.median(self.tau)),
                "tau_q25": float(np.quantile(self.tau, 0.25)), "tau_q75": float(np.quantile(self.tau, 0.75)),
                "rho_mean": float(self.rho.mean()), "rho_median": float(np.median(self.rho))}


@dataclass
class Agreement:
    sentences: list[SentenceImportance]
    pairs: list[PairAgreement] = field(default_factory=list)

    def pair(self, a: str, b: str) -> PairAgreement:
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise ValueError(f"no method pair ({a}, {b}); methods: {', '.join(METHODS)}")

    def top1_agreement(self, a: str, b: str) -> float:
        """Fraction of sentences whose top token by ``a`` is also the top token by ``b``."""
        return float(np.mean([np.argmax(s.scores[a]) == np.argmax(s.scores[b]) for s in self.sentences]))

    def mismatches(self, attention: str = "attention_cls", influence: str = "leave_one_out"):
        """(sentence, most-attended token, most-influential token) where the two differ."""
        return [(s.text, s.top(attention), s.top(influence)) for s in self.sentences
                if np.argmax(s.scores[attention]) != np.argmax(s.scores[influence])]

    def table(self) -> str:
        lines = [f"{'method a':<15} {'method b':<15} {'tau mean':>8} {'median':>7} {'IQR':>13} "
                 f"{'rho mean':>8} {'top-1 same':>10}"]
        for p in self.pairs:
            s = p.summary()
            lines.append(f"{p.a:<15} {p.b:<15} {s['tau_mean']:>8.3f} {s['tau_median']:>7.3f} "
                         f"{s['tau_q25']:>6.2f}..{s['tau_q75']:<5.2f} {s['rho_mean']:>8.3f} "
                         f"{self.top1_agreement(p.a, p.b):>10.0%}")
        return "\n".join(lines)


def compare(model, texts, progress=None) -> Agreement:
    """Importance by every method for each text, and Kendall tau / Spearman rho for every method pair.
    ``progress(i, n, text)``, if given, is called before text i of n (a status line for a long run)."""
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a non-empty list of sentences (strings), got {type(texts).__name__} "
                        f"{texts!r}"[:300])
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a function progress(i, n, text) or None, got {type(progress).__name__}")
    sentences = []
    for i, t in enumerate(texts):
        if progress is not None:
            progress(i, len(texts), t)
        sentences.append(importance(model, t))
    out = Agreement(sentences)
    for a, b in itertools.combinations(METHODS, 2):
        tau = np.array([kendall_tau(s.scores[a], s.scores[b]) for s in sentences])
        rho = np.array([spearman_rho(s.scores[a], s.scores[b]) for s in sentences])
        out.pairs.append(PairAgreement(a, b, tau, rho))
    return out


def figure(agreement: Agreement):
    """Left: Kendall tau of each method against leave-one-out, one dot per sentence, with the median and the
    Jain & Wallace (2019) BiLSTM range shaded. Right: mean tau for every method pair."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.25, 1])
    others = [m for m in METHODS if m != "leave_one_out"]
    rng = np.random.default_rng(0)
    ax.axhspan(0.0, 0.5, color="0.9", zorder=0, label="Jain & Wallace 2019 BiLSTM range (attn vs LOO)")
    for k, m in enumerate(others):
        tau = agreement.pair(m, "leave_one_out").tau
        ax.scatter(k + rng.uniform(-0.18, 0.18, tau.size), tau, s=10, alpha=0.6, color="C0")
        ax.plot([k - 0.3, k + 0.3], [np.median(tau)] * 2, color="C3", lw=2)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(range(len(others)), [m.replace("_", "\n") for m in others], fontsize=8)
    ax.set_ylabel("Kendall tau vs leave-one-out")
    ax.set_ylim(-1, 1)
    ax.set_title(f"per sentence (n={len(agreement.sentences)}); red: median", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    n = len(METHODS)
    grid = np.eye(n)
    for p in agreement.pairs:
        i, j = METHODS.index(p.a), METHODS.index(p.b)
        grid[i, j] = grid[j, i] = p.tau.mean()
    im = ax2.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1)
    for i in range(n):
        for j in range(n):
            ax2.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
    labels = [m.replace("_", " ") for m in METHODS]
    ax2.set_xticks(range(n), labels, rotation=40, ha="right", fontsize=7)
    ax2.set_yticks(range(n), labels, fontsize=7)
    ax2.set_title("mean Kendall tau between methods", fontsize=10)
    fig.colorbar(im, ax=ax2, shrink=0.8)
    return fig
