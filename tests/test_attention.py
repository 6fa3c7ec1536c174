"""The reference path against the float64 loop oracle: every scorer x every mask kind (MHA and GQA layouts, Lq
equal to, shorter and longer than Lk), score modifiers, additive biases, weights and log-sum-exp."""

import math
import zlib

import numpy as np
import pytest

import oracles as O
from attnlab import additive_attention, attention, masks as M, scaled_dot_product_attention, scores as S
from attnlab._inputs import resolve_mask

TOL = dict(rtol=1e-12, atol=1e-13)


# --- scorers: attnlab keyword arguments and the matching oracle scorer ----------------------------------------
def _neg_sq_distance(q, k):
    """A callable scorer: -|q - k|^2 (vectorized, broadcasting like matmul)."""
    return -((q[..., :, None, :] - k[..., None, :, :]) ** 2).sum(-1)


def _scorer(name, D, rng):
    if name == "dot":
        return {"score": "dot"}, O.dot
    if name == "scaled_dot":
        return {"score": "scaled_dot", "scale": 0.7}, O.scaled_dot(0.7)
    if name == "general":
        W = rng.standard_normal((D, D))
        return {"score": "general", "weight": W}, O.general(W)
    if name == "additive":
        w_q, w_k, w_v = rng.standard_normal((3, D)), rng.standard_normal((3, D)), rng.standard_normal(3)
        return {"score": "additive", "w_q": w_q, "w_k": w_k, "w_v": w_v}, O.additive(w_q, w_k, w_v)
    return {"score": _neg_sq_distance}, lambda a, b: -sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


SCORER_NAMES = ["dot", "scaled_dot", "general", "additive", "callable"]


# --- every mask kind: (attnlab mask, oracle predicate) for given sizes -----------------------------------------
def _mask(name, B, H, Lq, Lk, rng):
    if name == "none":
        return None, None
    ids = np.sort(rng.integers(0, 3, (B, Lk)), axis=1)
    q_ids = np.sort(rng.integers(0, 3, (B, Lq)), axis=1)
    arr = rng.random((B, H, Lq, Lk)) < 0.6
    lengths, q_lengths = [Lk, max(Lk - 3, 1)], [Lq - 1, Lq]
    glob = [1, Lk - 1]
    fn = lambda b, h, q, kv: (q + 2 * kv + h) % 3 != 0                                          # noqa: E731
    table = {
        "causal": (M.causal(), O.causal()),
        "causal_top_left": (M.causal("top_left"), O.causal("top_left")),
        "sliding_window": (M.sliding_window(2, 1), O.sliding_window(2, 1)),
        "sliding_window_top_left": (M.sliding_window(1, 0, "top_left"), O.sliding_window(1, 0, "top_left")),
        "padding": (M.padding(lengths), O.padding(lengths)),
        "padding_q_lengths": (M.padding(lengths, q_lengths), O.padding(lengths, q_lengths)),
        "prefix_lm": (M.prefix_lm(2), O.prefix_lm(2)),
        "document": (M.document(ids, q_doc_ids=q_ids), O.document(ids.tolist(), q_ids.tolist())),
        "dilated": (M.dilated(2), O.dilated(2)),
        "global_tokens": (M.global_tokens(glob), O.global_tokens(glob)),
        "from_array": (M.from_array(arr), O.from_array(arr)),
        "from_function": (M.from_function(fn, heads=H), lambda b, h, i, j, Lq_, Lk_: fn(b, h, i, j)),
        "bool_array": (arr, O.from_array(arr)),
        "causal&window": (M.causal() & M.sliding_window(1, 3), O.both(O.causal(), O.sliding_window(1, 3))),
        "global|window": (M.global_tokens([0]) | M.sliding_window(1, 1),
                          O.either(O.global_tokens([0]), O.sliding_window(1, 1))),
        "~causal": (~M.causal(), O.negate(O.causal())),              # has fully masked rows
        "~prefix&padding": (~M.prefix_lm(1) & M.padding(lengths), O.both(O.negate(O.prefix_lm(1)),
                                                                          O.padding(lengths))),
    }
    if name == "random_blocks":                                       # its structure is checked in test_masks
        mask = M.random_blocks(2, 1, seed=3)
        return mask, O.from_array(mask.to_array(Lq, Lk))
    return table[name]


MASK_NAMES = ["none", "causal", "causal_top_left", "sliding_window", "sliding_window_top_left", "padding",
              "padding_q_lengths", "prefix_lm", "document", "dilated", "global_tokens", "random_blocks",
              "from_array", "from_function", "bool_array", "causal&window", "global|window", "~causal",
              "~prefix&padding"]

# (B, H, G, Lq, Lk): MHA with Lq < Lk, GQA with Lq > Lk, GQA square
LAYOUTS = [(2, 2, 2, 4, 6), (2, 4, 2, 6, 4), (2, 4, 1, 5, 5)]


@pytest.mark.parametrize("mask_name", MASK_NAMES)
@pytest.mark.parametrize("scorer_name", SCORER_NAMES)
def test_every_scorer_and_mask_matches_oracle(scorer_name, mask_name):
    rng = np.random.default_rng(zlib.crc32(f"{scorer_name}/{mask_name}".encode()))
    layouts = LAYOUTS if scorer_name == "scaled_dot" else LAYOUTS[:2]
    for B, H, G, Lq, Lk in layouts:
        D, Dv = 4, 3
        q, k, v = rng.standard_normal((B, H, Lq, D)), rng.standard_normal((B, G, Lk, D)), \
            rng.standard_normal((B, G, Lk, Dv))
        kwargs, oracle_score = _scorer(scorer_name, D, rng)
        mask, pred = _mask(mask_name, B, H, Lq, Lk, rng)
        out, w = attention(q, k, v, mask=mask, return_weights=True, **kwargs)
        want_out, want_w, _ = O.attention(q, k, v, oracle_score, pred)
        assert out.shape == (B, H, Lq, Dv) and w.shape == (B, H, Lq, Lk)
        np.testing.assert_allclose(w, want_w, **TOL, err_msg=f"{scorer_name} {mask_name} {(B, H, G, Lq, Lk)}")
        np.testing.assert_allclose(out, want_out, **TOL, err_msg=f"{scorer_name} {mask_name} {(B, H, G, Lq, Lk)}")


@pytest.mark.parametrize("mask_name", ["none", "causal", "padding_q_lengths", "document", "~causal"])
def test_sdpa_weights_and_lse_match_oracle(mask_name, rng):
    for B, H, G, Lq, Lk in LAYOUTS:
        q, k, v = rng.standard_normal((B, H, Lq, 8)), rng.standard_normal((B, G, Lk, 8)), \
            rng.standard_normal((B, G, Lk, 5))
        mask, pred = _mask(mask_name, B, H, Lq, Lk, rng)
        out, w, lse = scaled_dot_product_attention(q, k, v, mask, return_weights=True, return_lse=True)
        want_out, want_w, want_lse = O.attention(q, k, v, O.scaled_dot(), pred)
        np.testing.assert_allclose(out, want_out, **TOL)
        np.testing.assert_allclose(w, want_w, **TOL)
        np.testing.assert_allclose(lse, want_lse, **TOL)                             # -inf where fully masked
        lse_only = scaled_dot_product_attention(q, k, v, mask, return_lse=True)
        assert len(lse_only) == 2 and np.array_equal(lse_only[1], lse)


# --- score modifiers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B, H, G, Lq, Lk", LAYOUTS)
def test_score_mods_match_oracle(B, H, G, Lq, Lk, rng):
    q, k, v = rng.standard_normal((B, H, Lq, 4)) * 2, rng.standard_normal((B, G, Lk, 4)) * 2, \
        rng.standard_normal((B, G, Lk, 3))
    table = rng.standard_normal((H, 7))
    mods = [(S.alibi(H), O.alibi(H)), (S.alibi(H, symmetric=True), O.alibi(H, symmetric=True)),
            (S.softcap(1.5), O.softcap(1.5)), (S.relative_bias(table), O.relative_bias(table, 3)),
            (S.alibi(H).then(S.softcap(2.0)), lambda s, *a: O.softcap(2.0)(O.alibi(H)(s, *a), *a)),
            (S.score_mod(lambda s, b, h, qi, ki: s + 0.5 * h - 0.25 * b * (qi == ki)),
             lambda s, b, h, i, j, Lq_, Lk_: s + 0.5 * h - 0.25 * b * (i == j))]
    for mod, oracle_mod in mods:
        for mask, pred in ((None, None), (M.causal(), O.causal())):
            out, w, lse = scaled_dot_product_attention(q, k, v, mask, score_mod=mod, return_weights=True,
                                                       return_lse=True)
            want_out, want_w, want_lse = O.attention(q, k, v, O.scaled_dot(), pred, mod=oracle_mod)
            np.testing.assert_allclose(w, want_w, **TOL, err_msg=repr(mod))
            np.testing.assert_allclose(out, want_out, **TOL, err_msg=repr(mod))
            np.testing.assert_allclose(lse, want_lse, **TOL, err_msg=repr(mod))


def test_score_mod_through_every_scorer(rng):
    q, k, v = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 5, 3)), rng.standard_normal((1, 2, 5, 2))
    for name in SCORER_NAMES:
        kwargs, oracle_score = _scorer(name, 3, rng)
        out = attention(q, k, v, mask=M.causal(), score_mod=S.alibi(2), **kwargs)
        want, _, _ = O.attention(q, k, v, oracle_score, O.causal(), mod=O.alibi(2))
        np.testing.assert_allclose(out, want, **TOL, err_msg=name)


@pytest.mark.parametrize("bias_shape", [(2, 4, 5, 6), (4, 5, 6), (5, 6), (1, 4, 1, 6)])
def test_bias_matches_oracle(bias_shape, rng):
    q, k, v = rng.standard_normal((2, 4, 5, 4)), rng.standard_normal((2, 2, 6, 4)), rng.standard_normal((2, 2, 6, 3))
    bias = rng.standard_normal(bias_shape)
    full = np.broadcast_to(bias, (2, 4, 5, 6))
    out, w = scaled_dot_product_attention(q, k, v, M.causal(), bias=bias, return_weights=True)
    want_out, want_w, _ = O.attention(q, k, v, O.scaled_dot(), O.causal(), bias=lambda b, h, i, j: full[b, h, i, j])
    np.testing.assert_allclose(w, want_w, **TOL)
    np.testing.assert_allclose(out, want_out, **TOL)


def test_bias_minus_inf_acts_as_a_mask(rng):
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    keep = rng.random((3, 5)) < 0.5
    keep[:, 0] = True
    bias = np.where(keep, 0.0, -np.inf)
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, bias=bias),
                               scaled_dot_product_attention(q, k, v, keep), rtol=1e-15)


def test_additive_attention_function_matches_oracle(rng):
    q, k, v = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 2))
    w_q, w_k, w_v = rng.standard_normal((7, 5)), rng.standard_normal((7, 6)), rng.standard_normal(7)
    lengths = [4, 2]
    out, w = additive_attention(q, k, v, w_q, w_k, w_v, M.padding(lengths), return_weights=True)
    want_out, want_w, _ = O.attention(q[:, None], k[:, None], v[:, None], O.additive(w_q, w_k, w_v),
                                      O.padding(lengths))
    np.testing.assert_allclose(out, want_out[:, 0], **TOL)
    np.testing.assert_allclose(w, want_w[:, 0], **TOL)


# --- shapes and broadcasting ---------------------------------------------------------------------------------
def test_unbatched_and_broadcast_leading_dims(rng):
    q, k, v = rng.standard_normal((4, 3)), rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    want, _, _ = O.attention(q[None, None], k[None, None], v[None, None], O.scaled_dot(), O.causal())
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, M.causal()), want[0, 0], **TOL)
    # q shared by a batch of keys: (Lq, D) against (B, Lk, D)
    kb, vb = rng.standard_normal((3, 6, 3)), rng.standard_normal((3, 6, 2))
    got = scaled_dot_product_attention(q, kb, vb)
    assert got.shape == (3, 4, 2)
    for b in range(3):
        np.testing.assert_allclose(got[b], scaled_dot_product_attention(q, kb[b], vb[b]), rtol=1e-14)
    # (3, 1, Lq, D) x (1, 2, Lk, D): batch from q, heads from k
    q4, k4, v4 = rng.standard_normal((3, 1, 4, 3)), rng.standard_normal((1, 2, 6, 3)), rng.standard_normal((1, 2, 6, 2))
    got = scaled_dot_product_attention(q4, k4, v4)
    assert got.shape == (3, 2, 4, 2)
    np.testing.assert_allclose(got[2, 1], scaled_dot_product_attention(q4[2, 0], k4[0, 1], v4[0, 1]), rtol=1e-14)
    # 5-D leading dims with GQA on axis -3
    q5, k5 = rng.standard_normal((2, 1, 6, 2, 3)), rng.standard_normal((2, 1, 3, 4, 3))
    got = scaled_dot_product_attention(q5, k5, k5)
    np.testing.assert_allclose(got[1, 0, 5], scaled_dot_product_attention(q5[1, 0, 5], k5[1, 0, 2], k5[1, 0, 2]),
                               rtol=1e-14)


def test_padding_mask_on_three_dim_scores_uses_axis_minus_3_as_batch(rng):
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 2))
    got = scaled_dot_product_attention(q, k, v, M.padding([5, 2]))
    np.testing.assert_allclose(got[1], scaled_dot_product_attention(q[1], k[1, :2], v[1, :2]), rtol=1e-14)
    np.testing.assert_allclose(got[0], scaled_dot_product_attention(q[0], k[0], v[0]), rtol=1e-14)


def test_padding_mask_on_unbatched_scores(rng):
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    got = scaled_dot_product_attention(q, k, v, M.padding([2], q_lengths=[2]))
    np.testing.assert_allclose(got[:2], scaled_dot_product_attention(q[:2], k[:2], v[:2]), rtol=1e-14)
    assert (got[2] == 0).all()


def test_resolve_mask_shapes():
    assert resolve_mask(M.causal(), (2, 4, 3, 5), np, np.zeros(1)).shape == (3, 5)
    assert resolve_mask(M.padding([1, 2]), (2, 4, 3, 5), np, np.zeros(1)).shape == (2, 1, 3, 5)
    assert resolve_mask(M.from_array(np.ones((4, 3, 5), bool)), (2, 4, 3, 5), np, np.zeros(1)).shape == \
        (1, 4, 3, 5)
    assert resolve_mask(None, (3, 5), np, np.zeros(1)) is None
    assert resolve_mask([[True] * 5] * 3, (3, 5), np, np.zeros(1)).dtype == bool


def test_default_scale_is_one_over_sqrt_d(rng):
    q, k, v = rng.standard_normal((3, 9)), rng.standard_normal((4, 9)), rng.standard_normal((4, 2))
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v),
                               scaled_dot_product_attention(q, k, v, scale=1 / 3), rtol=1e-15)
    want, _, _ = O.attention(q[None, None], k[None, None], v[None, None], O.scaled_dot(0.1))
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, scale=0.1), want[0, 0], **TOL)


def test_float32_stays_float32_and_is_close_to_float64(rng):
    q, k, v = (rng.standard_normal((2, 2, 7, 8)) for _ in range(3))
    got = scaled_dot_product_attention(*(x.astype(np.float32) for x in (q, k, v)), M.causal())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, scaled_dot_product_attention(q, k, v, M.causal()), atol=1e-6)


def test_lse_is_log_of_softmax_normalizer(rng):
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    _, lse = scaled_dot_product_attention(q, k, v, return_lse=True)
    for i in range(3):
        assert lse[i] == pytest.approx(math.log(sum(math.exp(float(q[i] @ k[j]) / 2) for j in range(5))), rel=1e-13)
