"""The layers' recorder keeps exactly what the forward pass computed (checked against a float64 loop oracle)."""

import numpy as np
import pytest

from attnlab import MultiHeadAttention, masks
from attnlab.record import AttentionRecord, Recorder


def loop_attention(q, k, v, allowed, scale):
    """One (Lq, D) head by loops: scores, masked softmax, weighted sum (float64)."""
    Lq, Lk = q.shape[0], k.shape[0]
    scores = np.array([[float(q[i] @ k[j]) * scale for j in range(Lk)] for i in range(Lq)])
    w = np.zeros_like(scores)
    for i in range(Lq):
        ok = allowed[i]
        if ok.any():
            e = np.exp(scores[i, ok] - scores[i, ok].max())
            w[i, ok] = e / e.sum()
    return scores, w, w @ v


@pytest.mark.parametrize("n_heads, n_kv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("Lq, Lk", [(5, 5), (3, 6), (6, 2)])
def test_recorded_values_equal_loops_and_output_unchanged(n_heads, n_kv, Lq, Lk):
    rng = np.random.default_rng(0)
    mha = MultiHeadAttention(16, n_heads, n_kv, seed=1, dtype=np.float64)
    x, ctx = rng.standard_normal((2, Lq, 16)), rng.standard_normal((2, Lk, 16))
    mask = masks.causal()
    rec = Recorder()
    out = mha(x, ctx, mask=mask, recorder=rec, layer=3)
    np.testing.assert_allclose(out, mha(x, ctx, mask=mask), atol=1e-12)
    r = rec.get(3)
    assert r.kind == "cross" and r.groups == n_heads // n_kv
    allowed = masks.causal().to_array(Lq, Lk)
    for b in range(2):
        for h in range(n_heads):
            g = h // (n_heads // n_kv)
            s, w, o = loop_attention(r.q[b, h], r.k[b, g], r.v[b, g], allowed, r.scale)
            np.testing.assert_allclose(r.scores[b, h], s, atol=1e-12)
            np.testing.assert_allclose(r.weights[b, h], w, atol=1e-12)
            np.testing.assert_allclose(r.out[b, h], o, atol=1e-12)
    np.testing.assert_array_equal(r.mask[0, 0], allowed)


def test_lse_only_recorder_keeps_no_square_matrix():
    mha = MultiHeadAttention(8, 2, seed=0)
    rec = Recorder(fields=("q", "k", "v", "lse", "out"))
    mha(np.ones((1, 4, 8), np.float32), mask=masks.causal(), recorder=rec, kind="causal")
    r = rec.get(0, "causal")
    assert r.weights is None and r.scores is None and r.lse.shape == (1, 2, 4)


def test_recorder_skips_unwanted_layers_and_rejects_bad_fields():
    rec = Recorder(layers=[1])
    MultiHeadAttention(8, 2, seed=0)(np.ones((1, 3, 8), np.float32), recorder=rec, layer=0)
    assert rec.records == []
    with pytest.raises(ValueError, match="fields must be among"):
        Recorder(fields=("weights", "nope"))
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionRecord(layer=0, kind="sideways", scale=1.0)
    with pytest.raises(KeyError, match="no record of layer 5"):
        rec.get(5)
