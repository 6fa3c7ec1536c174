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


def rope_loop(x, base):
    """Rotate-half RoPE (Su et al. 2021; the Llama layout) of one (L, D) head, by loops in float64."""
    L, D = x.shape
    out = np.empty_like(x, dtype=np.float64)
    for p in range(L):
        for i in range(D // 2):
            angle = p * base ** (-2 * i / D)
            a, b = x[p, i], x[p, i + D // 2]
            out[p, i] = a * np.cos(angle) - b * np.sin(angle)
            out[p, i + D // 2] = b * np.cos(angle) + a * np.sin(angle)
    return out


def test_recorded_queries_keys_and_scores_include_rope_and_the_bias():
    rng = np.random.default_rng(2)
    H, G, Dh, L = 4, 2, 4, 5
    mha = MultiHeadAttention(16, H, G, seed=3, rope_base=100.0, dtype=np.float64)
    mha.b_q, mha.b_k = rng.standard_normal(H * Dh), rng.standard_normal(G * Dh)
    x, bias = rng.standard_normal((1, L, 16)), rng.standard_normal((H, L, L))
    rec = Recorder()
    out = mha(x, mask=masks.causal(), bias=bias, recorder=rec, kind="causal")
    np.testing.assert_allclose(out, mha(x, mask=masks.causal(), bias=bias), atol=1e-12)
    r = rec.get(0, "causal")
    q_lin = (x[0] @ mha.w_q.T + mha.b_q).reshape(L, H, Dh)                          # before RoPE, (L, H, Dh)
    k_lin = (x[0] @ mha.w_k.T + mha.b_k).reshape(L, G, Dh)
    allowed = np.tril(np.ones((L, L), bool))
    for h in range(H):
        q, k = rope_loop(q_lin[:, h], 100.0), rope_loop(k_lin[:, h // 2], 100.0)
        np.testing.assert_allclose(r.q[0, h], q, atol=1e-12)
        np.testing.assert_allclose(r.k[0, h // 2], k, atol=1e-12)
        s = loop_attention(q, k, r.v[0, h // 2], allowed, r.scale)[0] + bias[h]    # q.k * scale + bias
        np.testing.assert_allclose(r.scores[0, h], s, atol=1e-12)                   # the bias is in the scores
        e = np.where(allowed, np.exp(s - s.max(-1, keepdims=True)), 0)
        np.testing.assert_allclose(r.weights[0, h], e / e.sum(-1, keepdims=True), atol=1e-12)
        np.testing.assert_allclose(r.out[0, h], (e / e.sum(-1, keepdims=True)) @ r.v[0, h // 2], atol=1e-12)


def test_an_attached_recorder_records_until_detached_and_a_passed_one_wins():
    mha, x = MultiHeadAttention(8, 2, seed=0), np.ones((1, 3, 8), np.float32)
    attached, passed = Recorder(), Recorder()
    mha.attach(attached, layer="decoder.1", kind="causal")
    mha(x, mask=masks.causal())
    mha(x, recorder=passed, layer=7)
    mha.detach()
    mha(x)
    assert [(r.layer, r.kind) for r in attached.records] == [("decoder.1", "causal")]
    assert [(r.layer, r.kind) for r in passed.records] == [(7, "self")]


def test_project_is_what_the_call_attends_with():
    rng = np.random.default_rng(4)
    mha = MultiHeadAttention(8, 4, 2, seed=0, rope_base=50.0, dtype=np.float64)
    x, ctx = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 6, 8))
    for context in (None, ctx):
        rec = Recorder(fields=("q", "k", "v"))
        mha(x, context, recorder=rec)
        q, k, v = mha.project(x, context)
        r = rec.get(0)
        np.testing.assert_array_equal(q, r.q)
        np.testing.assert_array_equal(k, r.k)
        np.testing.assert_array_equal(v, r.v)
    assert mha.project(x[0])[0].shape == (1, 4, 3, 2)                               # unbatched: B = 1
