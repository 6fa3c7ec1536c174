"""attnlab.models.entropy_length against float64 loops over the rows, on constructed weights, on a recorded
attnlab layer and on all-MiniLM-L6-v2."""

import math

import numpy as np
import pytest

from attnlab import MultiHeadAttention, masks, models
from attnlab.models.entropy_length import (EntropyRecorder, entropy_by_length, entropy_figure, first_tokens,
                                           layer_entropy)


def loop_entropy(w, allowed):
    """(nats, normalized, reference) per head: plain loops, rows that see >= 2 keys."""
    H, Lq, _ = w.shape
    out = np.zeros((3, H))
    for h in range(H):
        rows = []
        for i in range(Lq):
            keys = [j for j in range(w.shape[2]) if allowed[i, j]]
            if len(keys) < 2:
                continue
            e = -sum(float(w[h, i, j]) * math.log(float(w[h, i, j])) for j in keys if w[h, i, j] > 0)
            rows.append((e, e / math.log(len(keys)), math.log(len(keys))))
        out[:, h] = np.mean(rows, axis=0)
    return out


def test_layer_entropy_equals_a_loop_causal_and_full(rng):
    s = rng.normal(size=(3, 7, 7)) * 2
    causal = np.tril(np.ones((7, 7), bool))
    for allowed in (causal, np.ones((7, 7), bool)):
        z = np.where(allowed, s, -np.inf)
        w = np.exp(z - z.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        e = layer_entropy(w, allowed if not allowed.all() else None)
        want = loop_entropy(w, allowed)
        np.testing.assert_allclose([e.nats, e.normalized, e.reference], want, rtol=0, atol=1e-12)
    one_hot = np.eye(4)[None]                                           # every row on itself: entropy 0
    e = layer_entropy(one_hot, np.tril(np.ones((4, 4), bool)))
    assert e.nats == pytest.approx([0.0]) and e.reference == pytest.approx([np.mean(np.log([2, 3, 4]))])
    with pytest.raises(ValueError, match="2 or more keys"):
        layer_entropy(np.ones((1, 3, 1)))


def test_recorder_reduces_what_the_layer_computed(rng):
    mha = MultiHeadAttention(16, n_heads=4, n_kv_heads=2, seed=0)
    x = rng.normal(size=(1, 9, 16))
    _, w = mha(x, mask=masks.causal(), return_weights=True)             # (1, H, L, L)
    rec = EntropyRecorder()
    mha.attach(rec, layer=0, kind="causal")
    mha(x, mask=masks.causal())
    mha.detach()
    want = loop_entropy(np.asarray(w[0], np.float64), np.tril(np.ones((9, 9), bool)))
    e = rec.entropy[0]
    np.testing.assert_allclose([e.nats, e.normalized, e.reference], want, rtol=1e-6, atol=1e-7)
    assert rec.records == []                                            # nothing (H, L, L) is kept


@pytest.fixture(scope="module")
def minilm():
    return models.load("all-MiniLM-L6-v2")


def test_entropy_by_length_on_minilm_equals_its_weights(minilm):
    text = "The river rose every spring and the meadows turned brown. " * 6
    r = entropy_by_length(minilm, (8, 24), text=text)
    assert r.nats.shape == (2, 6, 12) and r.reference.shape == (2, 6)
    np.testing.assert_allclose(r.reference[:, 0], np.log([8, 24]))      # an encoder: every row sees all n keys
    ids = first_tokens(minilm, text, 24)
    assert len(ids) == 24 and ids[0] == minilm.tokenize(text)[0] and ids[-1] == minilm.tokenize(text)[-1]
    w = minilm.attentions(ids)[1]                                       # (layers, H, L, L)
    for layer in (0, 5):
        want = loop_entropy(w[layer].astype(np.float64), np.ones((24, 24), bool))
        np.testing.assert_allclose(r.nats[1, layer], want[0], rtol=1e-5)
        np.testing.assert_allclose(r.normalized[1, layer], want[1], rtol=1e-5)
    assert "L5 norm / nats" in r.table()
    assert entropy_figure([r]) is not None
    with pytest.raises(ValueError, match="n = 9999 tokens asked"):
        first_tokens(minilm, text, 9999)
