"""attnlab.models.decoder_probes against float64 loops and against fake models whose answers are known."""

import numpy as np
import pytest

from attnlab import diagnostics
import re

from attnlab.models.decoder_probes import (NAMES, AnswerRead, fact_prompt, fact_retrieval, filler_text,
                                           first_token_share, induction_survey, read_answer, sink_shares,
                                           split_sentences)


def causal_weights(rng, layers, H, L):
    s = rng.normal(size=(layers, H, L, L))
    s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


def test_first_token_share_equals_a_loop():
    rng = np.random.default_rng(0)
    w = causal_weights(rng, 2, 3, 6)
    loop = np.zeros((2, 3))
    for layer in range(2):
        for h in range(3):
            loop[layer, h] = sum(w[layer, h, q, 0] for q in range(1, 6)) / 5
    np.testing.assert_allclose(first_token_share(w), loop, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 positions"):
        first_token_share(np.ones((1, 1, 1, 1)))


class Fake:
    """A 'model' with 2 layers x 2 heads: head (1, 1) is a perfect induction head, the rest uniform; position 0
    gets all the weight of every row when it is the BOS id 7."""

    vocab_size = 50

    def tokenize(self, text):
        return np.array([ord(c) % 40 + 8 for c in text])

    def attentions(self, ids):
        ids = np.asarray(ids)
        L = len(ids)
        w = np.tril(np.ones((L, L))) / np.arange(1, L + 1)[:, None]
        w = np.broadcast_to(w, (2, 2, L, L)).copy()
        if ids[0] == 7:
            w[:] = 0.0
            w[..., 0] = 1.0
        for i in range(L):                                     # induction: the token after the last copy
            prev = [j + 1 for j in range(i) if ids[j] == ids[i] and j + 1 <= i]
            if prev:
                w[1, 1, i] = 0.0
                w[1, 1, i, prev[-1]] = 1.0
        return [str(i) for i in ids], w

    def logits(self, ids):                                     # a model that always knows the next token
        ids = np.asarray(ids)
        out = np.zeros((len(ids), self.vocab_size))
        out[np.arange(len(ids) - 1), ids[1:]] = 1.0
        return out


class Blind(Fake):
    def logits(self, ids):                                     # always predicts token 0 (never in the answer)
        out = np.zeros((len(ids), self.vocab_size))
        out[:, 0] = 1.0
        return out


def test_sink_shares_with_and_without_bos():
    s = sink_shares(Fake(), ["abcdef", "hello"], bos_id=7)
    np.testing.assert_allclose(s.with_bos[0], 1.0)             # layer 0: every row on the BOS
    assert (s.without_bos[0] < 0.6).all()                      # uniform causal rows: mean of 1/(q+1) < 0.6


def test_induction_survey_finds_the_induction_head():
    fake = Fake()
    ind = induction_survey(fake, n=12, seeds=(0, 1))
    assert ind.top[0][:2] == (1, 1) and ind.top[0][2] == pytest.approx(1.0)
    ids = diagnostics.repeated_random_tokens(fake.vocab_size, 12, 0)
    np.testing.assert_allclose(ind.scores[0, 0], diagnostics.induction_score(fake.attentions(ids)[1], ids)[0, 0]
                               / 2 + diagnostics.induction_score(
                                   fake.attentions(diagnostics.repeated_random_tokens(50, 12, 1))[1],
                                   diagnostics.repeated_random_tokens(50, 12, 1))[0, 0] / 2)
    assert "L1.H1 1.00" in ind.format(1)


def test_read_answer_on_constructed_cases():
    answers = [[9, 4, 8, 2], [9, 1, 3, 7], [9, 6, 0, 0]]                  # a shared space token, then digits
    assert read_answer([9, 4, 8, 2], answers, 0) == AnswerRead(True, 0)
    assert read_answer([9, 4, 8, 5], answers, 0) == AnswerRead(False, 0)   # right fact, a wrong later digit
    assert read_answer([9, 6, 8, 2], answers, 0) == AnswerRead(False, 2)   # started the third fact's code
    assert read_answer([9, 6, 0, 0], answers, 2) == AnswerRead(True, 2)
    assert read_answer([3, 5, 5, 5], answers, 1) == AnswerRead(False, None)  # none of the codes
    assert read_answer([9, 4], [[9, 4]], 0) == AnswerRead(True, 0)
    assert read_answer([9, 5], [[9, 4]], 0) == AnswerRead(False, None)
    with pytest.raises(ValueError, match="target"):
        read_answer([9, 4], [[9, 4]], 1)
    with pytest.raises(ValueError, match="shape"):
        read_answer([9, 4], [[9, 4, 1]], 0)
    with pytest.raises(ValueError, match="identical"):
        read_answer([9, 4], [[9, 4], [9, 4]], 0)
    with pytest.raises(ValueError, match="differ"):
        read_answer([9, 4, 1], [[9, 4, 1], [9, 3, 1], [9, 3, 2]], 0)


def test_filler_is_whole_sentences_never_repeated():
    s = split_sentences("One two. Three four five! Six?\nSeven eight nine ten.")
    assert s == ["One two.", "Three four five!", "Six?", "Seven eight nine ten."]
    words = lambda t: len(t.split())                                        # noqa: E731
    assert filler_text(s, 0, 0, words) == ""
    assert filler_text(s, 3, 5, words) == "Seven eight nine ten. One two."   # wraps round, whole sentences
    with pytest.raises(ValueError, match="only 10"):
        filler_text(s, 0, 11, words)
    prompt = fact_prompt(["Anna", "Hugo"], ["4821", "1937"], 1, "It rained.")
    assert prompt.startswith("The code of Anna is 4821. The code of Hugo is 1937.")
    assert prompt.endswith("It rained.\n\nRemember: the code of Hugo is")


class Reader:
    """A word-level 'model' that reads the planted facts back: at each position of the answer after "Remember:
    the code of NAME is" it predicts the code of the fact chosen by ``policy`` ("asked": NAME's own, "last": the
    last fact listed, a distractor whenever NAME is not last); everywhere else it predicts token 0."""

    vocab_size = 4000
    TOKEN = re.compile(r" ?[A-Za-z]+| |\d|[^\w\s]|\s+")

    def __init__(self, policy):
        self.policy, self.vocab = policy, {}

    def tokenize(self, text):
        return np.array([self.vocab.setdefault(t, len(self.vocab) + 1) for t in self.TOKEN.findall(text)])

    def logits(self, ids):
        words = {v: k for k, v in self.vocab.items()}
        toks = [words[int(i)] for i in ids]
        out = np.zeros((len(ids), self.vocab_size))
        out[:, 0] = 1.0
        r = max(i for i, t in enumerate(toks) if t == "Remember")
        name, is_at = toks[r + 5].strip(), r + 6
        facts = {toks[i + 2].strip(): [self.vocab[t] for t in toks[i + 4: i + 9]]      # ' code',' of',' N',' is'
                 for i in range(r) if toks[i] == " code" and toks[i + 3] == " is"}
        code = facts[name] if self.policy == "asked" else list(facts.values())[-1]
        for j, tok in enumerate(code):
            if is_at + j < len(ids):
                out[is_at + j] = 0.0
                out[is_at + j, tok] = 1.0
        return out


def test_fact_retrieval_tells_the_asked_fact_from_a_distractor():
    text = " ".join(f"Sentence number {w} is here." for w in ("one", "two", "three", "four", "five", "six"))
    good = fact_retrieval(Reader("asked"), (0, 8, 20), facts=4, trials=6, text=text)
    assert good.facts == 4 and good.trials == 6 and len(good.points) == 3
    for p in good.points:
        assert (p.accuracy, p.picked_target, p.picked_distractor) == (1.0, 1.0, 0.0)
    assert good.points[0].distance == 0 and 8 <= good.points[1].distance < good.points[2].distance
    assert good.points[2].length > good.points[0].length + 20
    last = fact_retrieval(Reader("last"), (0, 8), facts=4, trials=12, text=text)
    for p in last.points:                                       # right exactly when the asked fact is the last
        assert p.accuracy == p.picked_target and p.accuracy + p.picked_distractor == 1.0
        assert 0 < p.picked_distractor < 1
    padded = fact_retrieval(Reader("asked"), (0, 8), facts=2, trials=4, text=text, pad_to=24)
    assert padded.pad_to == 24 and [p.accuracy for p in padded.points] == [1.0, 1.0]
    assert padded.points[1].distance >= 8 and abs(padded.points[0].length - padded.points[1].length) < 10
    assert padded.points[0].length > fact_retrieval(Reader("asked"), (0,), facts=2, trials=4,
                                                    text=text).points[0].length + 15   # prose before the facts
    one = fact_retrieval(Reader("last"), (0,), facts=1, trials=3, text=text)
    assert one.points[0].accuracy == 1.0                        # one fact: the last is the asked one
    assert "first digit: asked fact" in last.table()
    blind = fact_retrieval(Blind(), (0, 2), facts=2, trials=3, text=text)
    assert [(p.accuracy, p.picked_target, p.picked_distractor) for p in blind.points] == [(0, 0, 0)] * 2
    with pytest.raises(ValueError, match="facts must be in"):
        fact_retrieval(Fake(), (0,), facts=11, text=text)
    assert len(set(NAMES)) == len(NAMES) >= 10


class Counter(Fake):
    """Logits of position i: how often each token occurs in ids[..., :i+1] (a 'model' whose leave-one-out is
    known: dropping one copy of the target lowers its logit by 1)."""

    vocab_size = 50

    def logits(self, ids):
        ids = np.asarray(ids)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        onehot = np.eye(self.vocab_size)[ids]                     # (B, L, V)
        out = np.cumsum(onehot, axis=1) * 3.0
        return out[0] if single else out


def test_next_token_leave_one_out_equals_a_loop():
    from attnlab.models.decoder_probes import next_token_agreement, next_token_importance

    m = Counter()
    s = next_token_importance(m, "abcabca")
    ids = m.tokenize("abcabca")
    def logp(seq):
        z = m.logits(seq)[-1].astype(np.float64)
        return z - np.log(np.exp(z).sum())
    assert s.target == int(np.argmax(m.logits(ids)[-1]))
    loop = [logp(ids)[s.target] - logp(np.delete(ids, i))[s.target] for i in range(len(ids) - 1)]
    np.testing.assert_allclose(s.scores["leave_one_out"], loop, rtol=0, atol=1e-12)
    _, w = m.attentions(ids)
    np.testing.assert_allclose(s.scores["attention_last"], w[-1, :, -1, :-1].mean(0))
    assert len(s.tokens) == len(ids) - 1
    agree = next_token_agreement(m, ["abcabca", "hello there"])
    assert set(agree.tau) == {"attention_last vs leave_one_out", "rollout_last vs leave_one_out",
                              "attention_last vs rollout_last"}
    assert "tau mean" in agree.table()


def test_pool_retrievals_weights_by_trials_and_refuses_mixed_facts():
    from attnlab.models.decoder_probes import FactRetrieval, RetrievalPoint, pool_retrievals

    a = FactRetrieval(4, 2, [RetrievalPoint(0, 0.0, 50.0, 1.0, 1.0, 0.0, 2),
                             RetrievalPoint(64, 70.0, 120.0, 0.5, 0.5, 0.5, 2)])
    b = FactRetrieval(4, 6, [RetrievalPoint(64, 66.0, 116.0, 0.0, 0.5, 0.5, 6)])
    pooled = pool_retrievals([b, a])
    assert [p.filler for p in pooled.points] == [0, 64] and pooled.trials is None
    p = pooled.points[1]
    assert p.trials == 8 and p.accuracy == pytest.approx(0.125) and p.distance == pytest.approx(67.0)
    assert pooled.points[0] == a.points[0]
    with pytest.raises(ValueError, match="differ in facts"):
        pool_retrievals([a, FactRetrieval(1, 2, a.points)])
    with pytest.raises(ValueError, match="at least one"):
        pool_retrievals([])
