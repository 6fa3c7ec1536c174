"""attnlab.models.decoder_probes against float64 loops and against fake models whose answers are known."""

import numpy as np
import pytest

from attnlab import diagnostics
from attnlab.models.decoder_probes import first_token_share, induction_survey, planted_fact, sink_shares


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


def test_planted_fact_reads_the_predictions_of_the_answer():
    r = planted_fact(Fake(), filler_sentences=(0, 2), trials=3)     # off by one position would score 0
    assert r.trials == 3 and r.distances[0] == 0 < r.distances[1] and r.accuracy == [1.0, 1.0]
    assert planted_fact(Blind(), filler_sentences=(0, 2), trials=3).accuracy == [0.0, 0.0]


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
