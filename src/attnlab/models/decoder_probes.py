"""The guide's claims about causal attention, measured on a trained decoder (SmolLM2-135M).

- ``sink_shares``: attention sinks (Xiao et al. 2023): the weight each head puts on the first token, with and
  without a leading BOS token. Query 0 is left out (in a causal model it can only look at itself).
- ``induction_survey``: induction heads (Olsson et al. 2022): score per head on repeated random tokens
  (``attnlab.diagnostics.induction_score``) and the top heads.
- ``fact_retrieval``: position sensitivity: k facts ("The code of Anna is 4821.") planted before a run of real
  prose, then one asked back by name; the model must produce that code's digits (teacher forced, one pass) and
  not a distractor's, at growing distances (``read_answer`` scores one trial).

Each function takes any attnlab causal model with ``attentions``/``logits``/``tokenize``.
"""

from __future__ import annotations

import re
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


NAMES = ("Anna", "Boris", "David", "Hugo", "Maria", "Peter", "Laura", "Oscar", "Nina", "Victor", "Emma", "Felix")


@dataclass
class AnswerRead:
    """What the model predicted for one planted-fact question (teacher forced on the true answer).

    correct: every answer token was the argmax; picked: index of the fact whose code the model started with
    (compared at the first token where the facts' answers differ), None when it started with none of them."""

    correct: bool
    picked: int | None


def read_answer(predicted, answers, target: int) -> AnswerRead:
    """Score the argmax predictions at the answer positions against the facts' answers.

    predicted: (T,) argmax token at each answer position, teacher forced on ``answers[target]`` (T tokens);
    answers: one token-id sequence per fact, all of length T, differing at some first position p (the codes
    start with distinct digits). ``picked`` compares predicted[p] with each fact's token p: before p the answers
    agree, so the teacher-forced prefix is every fact's prefix and the choice at p is the model's pick.

    >>> read_answer([5, 1, 2], [[5, 1, 2], [5, 3, 4]], target=0)
    AnswerRead(correct=True, picked=0)
    >>> read_answer([5, 3, 9], [[5, 1, 2], [5, 3, 4]], target=0)    # started the distractor's code
    AnswerRead(correct=False, picked=1)
    """
    predicted = np.asarray(predicted)
    answers = [np.asarray(a) for a in answers]
    if not 0 <= target < len(answers):
        raise ValueError(f"target must index one of the {len(answers)} answers, got {target}")
    if any(a.shape != predicted.shape for a in answers):
        raise ValueError(f"every answer must have the {predicted.shape} shape of predicted, got "
                         f"{[a.shape for a in answers]}")
    correct = bool((predicted == answers[target]).all())
    if len(answers) == 1:
        return AnswerRead(correct, 0 if correct else None)
    stack = np.stack(answers)                                                   # (facts, T)
    differs = (stack != stack[0]).any(axis=0)
    if not differs.any():
        raise ValueError("the facts' answers are identical: the pick cannot be read")
    p = int(np.argmax(differs))
    firsts = stack[:, p]
    if len(set(firsts.tolist())) != len(firsts):
        raise ValueError(f"the facts' answers must differ at their first differing token {p}, got {firsts}")
    hit = np.flatnonzero(firsts == predicted[p])
    return AnswerRead(correct, int(hit[0]) if hit.size else None)


@dataclass
class RetrievalPoint:
    """One filler length of ``fact_retrieval``: means over its trials."""

    filler: int                  # requested filler tokens between the facts and the question
    distance: float              # measured filler tokens (whole sentences, >= filler)
    length: float                # whole prompt + answer, tokens
    accuracy: float              # every answer token right (teacher forced)
    picked_target: float         # share of trials whose first code digit was the asked fact's
    picked_distractor: float     # ... another fact's (chance with k facts: (k - 1) / k of the picks)
    trials: int


@dataclass
class FactRetrieval:
    facts: int                   # facts listed (1 = no distractor)
    trials: int | None           # trials per point (None when the points differ: see each point's trials)
    points: list                 # RetrievalPoint per filler length
    pad_to: int = 0              # prose before the facts filled each prompt to about this many tokens (0: none)

    def table(self) -> str:
        lines = [f"{'filler tokens':>13} {'prompt':>7} {'trials':>6} {'accuracy':>9} "
                 f"{'first digit: asked fact':>24} {'a distractor':>13}"]
        for p in self.points:
            lines.append(f"{p.distance:>13.0f} {p.length:>7.0f} {p.trials:>6d} {p.accuracy:>9.2f} "
                         f"{p.picked_target:>24.2f} {p.picked_distractor:>13.2f}")
        return "\n".join(lines)


def filler_text(sentences, start: int, tokens: int, count) -> str:
    """Whole sentences from ``sentences`` (read from index ``start``, wrapping round to the first) until
    ``count(text)`` reaches ``tokens``; "" for 0. Never repeats a sentence: a request longer than all the
    sentences together is a ValueError.

    >>> filler_text(["a b.", "c.", "d e f."], 1, 3, lambda s: len(s.split()))
    'c. d e f.'
    """
    if tokens <= 0:
        return ""
    parts = []
    for i in range(len(sentences)):
        parts.append(sentences[(start + i) % len(sentences)])
        text = " ".join(parts)
        if count(text) >= tokens:
            return text
    raise ValueError(f"filler of {tokens} tokens asked, but the text has only {count(text)}")


def split_sentences(text: str) -> list[str]:
    """Sentences of a prose text: split after '.', '!' or '?' followed by white space.

    >>> split_sentences("One. Two!  Three?\\nFour")
    ['One.', 'Two!', 'Three?', 'Four']
    """
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def fact_prompt(names, codes, asked: int, filler: str) -> str:
    """The facts (one sentence each), the filler, then "Remember: the code of NAME is" whose answer is " " +
    codes[asked]. (Of the wordings tried on SmolLM2-135M, "Remember: ..." is the one it completes best at short
    range; a "Question: what is ...? Answer: ..." wording and its chat template fail already at 64 tokens.)

    >>> fact_prompt(["Anna", "Hugo"], ["4821", "1937"], 1, "It rained.")
    'The code of Anna is 4821. The code of Hugo is 1937.\\n\\nIt rained.\\n\\nRemember: the code of Hugo is'
    """
    facts = " ".join(f"The code of {n} is {c}." for n, c in zip(names, codes))
    middle = f"\n\n{filler}\n\n" if filler else "\n\n"
    return f"{facts}{middle}Remember: the code of {names[asked]} is"


def fact_retrieval(model, filler_tokens=(0, 64, 256), facts: int = 4, trials: int = 8, seed: int = 0,
                   text: str | None = None, on_trial=None, pad_to: int = 0) -> FactRetrieval:
    """Key-value retrieval against distance: ``facts`` sentences "The code of NAME is DDDD." (random names from
    NAMES, random 4-digit codes whose first digits differ), then about ``filler_tokens`` tokens of real prose
    (whole sentences of ``text``, default ``attnlab.data.passage()``, from a random sentence on), then
    "Remember: the code of NAME is" for one of the facts chosen at random (``fact_prompt``).

    One teacher-forced pass per trial: the argmax at each answer position is read by ``read_answer``. With one
    fact this is the easy probe (the question repeats the fact's wording: an induction head can copy the code);
    with distractors the model must match the name, and a wrong pick shows as ``picked_distractor``.

    ``pad_to``: put prose before the facts too (the sentences that precede the filler, ``pad_to - filler``
    tokens of them), so that every prompt is about ``pad_to`` tokens long whatever the distance: separates the
    distance from the facts from the length of the context and the facts' position in it."""
    from ..data import passage

    if not 1 <= facts <= min(len(NAMES), 10):
        raise ValueError(f"facts must be in 1..{min(len(NAMES), 10)} (distinct first digits), got {facts}")
    sentences = split_sentences(passage() if text is None else text)
    rng = np.random.default_rng(seed)

    def count(s):
        return len(model.tokenize(s))

    points = []
    for n_filler in filler_tokens:
        dist, length, reads = [], [], []
        for _ in range(trials):
            names = [NAMES[i] for i in rng.choice(len(NAMES), facts, replace=False)]
            firsts = rng.choice(np.arange(1, 10), facts, replace=False)
            codes = [f"{d}{''.join(str(x) for x in rng.integers(0, 10, 3))}" for d in firsts]
            asked = int(rng.integers(facts))
            lead_n = max(pad_to - n_filler, 0)
            prose = split_sentences(filler_text(sentences, int(rng.integers(len(sentences))), lead_n + n_filler,
                                                count))
            cut = len(prose)                                  # the filler: the last sentences, >= n_filler tokens
            while n_filler and cut > 0 and count(" ".join(prose[cut:])) < n_filler:
                cut -= 1
            cut = cut if lead_n else 0
            lead, filler = " ".join(prose[:cut]), " ".join(prose[cut:])
            head = model.tokenize((f"{lead}\n\n" if lead else "") + fact_prompt(names, codes, asked, filler))
            answers = [model.tokenize(f" {c}") for c in codes]
            ids = np.concatenate([head, answers[asked]])
            pred = model.logits(ids)[len(head) - 1: len(ids) - 1].argmax(-1)        # predictions of the answer
            reads.append((read_answer(pred, answers, asked), asked))
            dist.append(count(filler) if filler else 0)
            length.append(len(ids))
            if on_trial is not None:
                on_trial()
        points.append(RetrievalPoint(int(n_filler), float(np.mean(dist)), float(np.mean(length)),
                                     float(np.mean([r.correct for r, _ in reads])),
                                     float(np.mean([r.picked == a for r, a in reads])),
                                     float(np.mean([r.picked is not None and r.picked != a for r, a in reads])),
                                     trials))
    return FactRetrieval(facts, trials, points, pad_to)


def pool_retrievals(runs) -> FactRetrieval:
    """One ``FactRetrieval`` from runs with the same number of facts (e.g. different seeds, or different filler
    lengths): the points of equal filler length merged, every mean weighted by its trials, trials summed; points
    sorted by filler length.

    >>> a = FactRetrieval(1, 2, [RetrievalPoint(0, 0.0, 20.0, 1.0, 1.0, 0.0, 2)])
    >>> b = FactRetrieval(1, 6, [RetrievalPoint(0, 0.0, 22.0, 0.5, 0.5, 0.0, 6)])
    >>> p = pool_retrievals([a, b]).points[0]
    >>> p.trials, p.accuracy, p.length
    (8, 0.625, 21.5)
    """
    runs = list(runs)
    if not runs:
        raise ValueError("pool_retrievals needs at least one run")
    if len({(r.facts, r.pad_to) for r in runs}) != 1:
        raise ValueError(f"pool_retrievals: the runs differ in facts or pad_to: "
                         f"{[(r.facts, r.pad_to) for r in runs]}")
    by_filler = {}
    for r in runs:
        for point in r.points:
            by_filler.setdefault(point.filler, []).append(point)
    points = []
    for filler in sorted(by_filler):
        group = by_filler[filler]
        n = sum(q.trials for q in group)
        mean = {k: sum(getattr(q, k) * q.trials for q in group) / n
                for k in ("distance", "length", "accuracy", "picked_target", "picked_distractor")}
        points.append(RetrievalPoint(filler, **mean, trials=n))
    trials = {q.trials for q in points}
    return FactRetrieval(runs[0].facts, trials.pop() if len(trials) == 1 else None, points, runs[0].pad_to)


def retrieval_figure(results, model_name: str):
    """Accuracy (solid; dashed for padded prompts) and the share of trials that started a distractor's code
    (dotted) against the filler tokens between the facts and the question, one colour per ``FactRetrieval``;
    grey: 1/k, what picking one of k listed codes at random would score."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.2), layout="constrained")
    ax = fig.add_subplot()
    for r in results:
        d = [p.distance for p in r.points]
        n = r.trials if r.trials is not None else "/".join(str(p.trials) for p in r.points)
        pad = f", padded to ~{r.pad_to} tokens" if r.pad_to else ""
        what = f"{r.facts} fact{'s' if r.facts > 1 else ''}{pad}"
        style = dict(ls="--", marker="s", ms=4 + r.pad_to / 500, fillstyle="none") if r.pad_to else dict(marker="o")
        line, = ax.plot(d, [p.accuracy for p in r.points], **style,
                        label=f"{what}: all digits right ({n} trials per point)")
        if r.facts > 1:
            ax.plot(d, [p.picked_distractor for p in r.points], ls=":", marker="x", color=line.get_color(),
                    label=f"{what}: started a distractor's code")
            ax.axhline(1 / r.facts, color="grey", lw=0.8, ls=":")
            ax.text(d[0], 1 / r.facts + 0.01, f"1/{r.facts}: a random pick of the {r.facts} codes", fontsize=7,
                    color="grey")
    ax.set_xscale("symlog", linthresh=64)
    ax.set_xlim(0, max(p.distance for r in results for p in r.points) * 1.15)
    ticks = [0, 64, 256, 1024, 2048, 4096, 8192]
    ax.set_xticks([t for t in ticks if t <= ax.get_xlim()[1]], [str(t) for t in ticks if t <= ax.get_xlim()[1]])
    ax.set_xlabel("filler tokens between the facts and the question (linear below 64, log above)")
    ax.set_ylabel("share of trials")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"planted facts on {model_name}: \"The code of NAME is DDDD.\" + real prose + \"Remember: the "
                 f"code of NAME is\"", fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    return fig


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
