"""The guide's claims about causal attention, measured on a trained decoder (SmolLM2-135M).

- ``sink_shares``: attention sinks (Xiao et al. 2023): the weight each head puts on the first token, with and
  without a leading BOS token. Query 0 is left out (in a causal model it can only look at itself).
- ``induction_survey``: induction heads (Olsson et al. 2022): score per head on repeated random tokens
  (``attnlab.diagnostics.induction_score``) and the top heads.
- ``planted_fact``: position sensitivity: a fact ("The code is 4821.") planted before a run of filler, then asked
  back ("The code is"); the model must produce the digits (teacher forced, one pass) at growing distances.

Each function takes any attnlab causal model with ``attentions``/``logits``/``tokenize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import diagnostics


@dataclass
class SinkShares:
    """Mean weight on position 0 per (layer, head), over queries 1.. of the texts: with_bos when a BOS token
    is position 0, without when the text's first token is."""

    without_bos: np.ndarray      # (layers, H)
    with_bos: np.ndarray         # (layers, H)


def first_token_share(weights) -> np.ndarray:
    """Weights (..., H, L, L) -> mean weight on key 0 over queries 1..L-1, (..., H).

    >>> w = np.array([[[1, 0, 0], [0.5, 0.5, 0], [0.25, 0.25, 0.5]]])
    >>> first_token_share(w)
    array([0.375])
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[-1] < 2:
        raise ValueError(f"need at least 2 positions, got weights of shape {w.shape}")
    return diagnostics.sink_score(w[..., 1:, :], indices=(0,))


def sink_shares(model, texts, bos_id: int) -> SinkShares:
    """``first_token_share`` of every head averaged over ``texts``, run without and with ``bos_id`` in front."""
    without, with_ = [], []
    for text in texts:
        ids = model.tokenize(text)
        without.append(first_token_share(model.attentions(ids)[1]))
        with_.append(first_token_share(model.attentions(np.concatenate([[bos_id], ids]))[1]))
    return SinkShares(np.mean(without, axis=0), np.mean(with_, axis=0))


@dataclass
class InductionSurvey:
    scores: np.ndarray           # (layers, H): mean over seeds of the induction score
    top: list                    # [(layer, head, score)] best first

    def format(self, n: int = 5) -> str:
        return ", ".join(f"L{layer}H{head} {s:.2f}" for layer, head, s in self.top[:n])


def induction_survey(model, n: int = 30, seeds=(0, 1, 2), prefix=(), top: int = 5) -> InductionSurvey:
    """Induction score of every head on ``prefix`` + n random tokens + the same n again, averaged over seeds."""
    runs = []
    for seed in seeds:
        ids = diagnostics.repeated_random_tokens(model.vocab_size, n, seed, prefix)
        runs.append(diagnostics.induction_score(model.attentions(ids)[1], ids))
    scores = np.mean(runs, axis=0)
    order = np.argsort(scores, axis=None)[::-1][:top]
    best = [(int(i // scores.shape[1]), int(i % scores.shape[1]), float(scores.flat[i])) for i in order]
    return InductionSurvey(scores, best)


FILLER = ("The weather was mild and the streets were quiet. ", "A farmer walked his dog along the river. ",
          "Children played in the park until the evening. ", "The market sold bread, apples and fresh fish. ",
          "An old clock struck the hour in the square. ", "Birds sang in the trees behind the library. ")


@dataclass
class FactRetrieval:
    distances: list              # filler tokens between the fact and the question
    accuracy: list               # share of trials whose digits were all predicted (teacher forced)
    trials: int


def planted_fact(model, filler_sentences=(0, 4, 16, 64), trials: int = 4, seed: int = 0) -> FactRetrieval:
    """Plant "The secret code is DDDD." before k filler sentences, ask "The secret code is" and check, in one
    teacher-forced pass, that the model's argmax predicts each digit token of the answer."""
    rng = np.random.default_rng(seed)
    distances, accuracy = [], []
    for k in filler_sentences:
        hits, dist = 0, []
        for t in range(trials):
            code = "".join(str(d) for d in rng.integers(0, 10, size=4))
            filler = "".join(FILLER[(t + i) % len(FILLER)] for i in range(k))
            head = model.tokenize(f"The secret code is {code}. {filler}Remember: the secret code is")
            answer = model.tokenize(f" {code}")
            ids = np.concatenate([head, answer])
            pred = model.logits(ids)[len(head) - 1: len(ids) - 1].argmax(-1)      # predictions of the answer
            hits += bool((pred == answer).all())
            dist.append(len(model.tokenize(filler)) if filler else 0)
        distances.append(int(np.mean(dist)))
        accuracy.append(hits / trials)
    return FactRetrieval(distances, accuracy, trials)
