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
        return ", ".join(f"{diagnostics.head_id(layer, head)} {s:.2f}" for layer, head, s in self.top[:n])


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


# --- weights vs explanation on next-token prediction --------------------------------------------------------
DECODER_METHODS = ("attention_last", "rollout_last", "leave_one_out")


@dataclass
class NextTokenImportance:
    """Importance of each context token 0..L-2 for the model's own next-token choice after the last token."""

    text: str
    tokens: list                 # the L-1 ranked tokens (the last token, the query, is left out)
    target: int                  # the argmax next token of the full text
    scores: dict                 # method -> (L-1,)


def next_token_importance(model, text: str) -> NextTokenImportance:
    """Three importances of the context tokens for the argmax next token t after ``text`` (L tokens):

    attention_last: last-layer weight from the last query to each key, mean over heads; rollout_last: the last
    row of ``diagnostics.rollout``; leave_one_out: log p(t | text) - log p(t | text without token i) (the token
    is dropped and later positions shift, as in ``attnlab.faithfulness.leave_one_out``)."""
    ids = model.tokenize(text)
    L = len(ids)
    if L < 4:
        raise ValueError(f"need at least 4 tokens to rank 3, {text!r} has {L}")
    tokens, w = model.attentions(ids)                                              # w (layers, H, L, L)
    full = _log_softmax(model.logits(ids)[-1])                                     # (vocab,)
    target = int(np.argmax(full))
    dropped = np.stack([np.delete(ids, i) for i in range(L - 1)])                  # (L-1, L-1), no padding
    without = _log_softmax(model.logits(dropped)[:, -1])                           # (L-1, vocab)
    scores = {"attention_last": w[-1, :, -1, : L - 1].mean(axis=0),
              "rollout_last": diagnostics.rollout(w)[-1, : L - 1],
              "leave_one_out": full[target] - without[:, target]}
    return NextTokenImportance(text, tokens[: L - 1], target,
                               {k: np.asarray(v, np.float64) for k, v in scores.items()})


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class NextTokenAgreement:
    items: list                  # NextTokenImportance per text
    tau: dict                    # "a vs b" -> (texts,) Kendall tau-b

    def table(self) -> str:
        lines = [f"{'pair':<32} {'tau mean':>8} {'median':>7} {'top-1 same':>10}"]
        for pair, t in self.tau.items():
            a, b = pair.split(" vs ")
            same = np.mean([np.argmax(s.scores[a]) == np.argmax(s.scores[b]) for s in self.items])
            lines.append(f"{pair:<32} {t.mean():>8.3f} {np.median(t):>7.3f} {same:>10.0%}")
        return "\n".join(lines)


def next_token_agreement(model, texts) -> NextTokenAgreement:
    """``next_token_importance`` for each text and Kendall tau-b of attention and rollout against leave-one-out
    (texts whose leave-one-out scores are all equal are skipped: tau is undefined there)."""
    from ..faithfulness import kendall_tau

    items = [next_token_importance(model, t) for t in texts]
    items = [s for s in items if np.ptp(s.scores["leave_one_out"]) > 0]
    tau = {f"{m} vs leave_one_out": np.array([kendall_tau(s.scores[m], s.scores["leave_one_out"]) for s in items])
           for m in ("attention_last", "rollout_last")}
    tau["attention_last vs rollout_last"] = np.array(
        [kendall_tau(s.scores["attention_last"], s.scores["rollout_last"]) for s in items])
    return NextTokenAgreement(items, tau)
