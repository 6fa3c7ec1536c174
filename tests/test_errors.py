"""Bad input raises ValueError / TypeError naming the argument, what was expected and what was given; and the
documented behaviour for mixed dtypes, integer inputs, empty key sequences and NaN/Inf inputs."""

import math

import numpy as np
import pytest
import torch

from attnlab import (KVCache, MultiHeadAttention, additive_attention, attention, masks as M, merge_attention,
                     scaled_dot_product_attention as sdpa, scores as S, softmax)


def _qkv(rng, *lead, Lq=4, Lk=5, D=3, Dv=2):
    return (rng.standard_normal(lead + (Lq, D)), rng.standard_normal(lead + (Lk, D)),
            rng.standard_normal(lead + (Lk, Dv)))


# --- messages that name argument, expectation and received value ----------------------------------------------
def test_attention_shape_messages(rng):
    q, k, v = _qkv(rng)
    cases = [
        (lambda: sdpa(np.ones((2, 4, 5, 64)), np.ones((2, 4, 6, 32)), np.ones((2, 4, 6, 32))),
         ValueError, r"^key has head dim 32 but query has 64$"),
        (lambda: attention(q, k[:, :2], v, "dot"), ValueError, r"^key has head dim 2 but query has 3$"),
        (lambda: sdpa(q[0], k, v), ValueError,
         r"^query must have shape \(\.\.\., Lq, D\) \(at least 2 dims\), got shape \(3,\)$"),
        (lambda: sdpa(q, k, v[:4]), ValueError, r"^value has 4 positions but key has 5$"),
        (lambda: sdpa(np.ones((2, 4, 3)), np.ones((2, 5, 3)), np.ones((3, 5, 2))), ValueError,
         r"^key leading dims \(2,\) and value leading dims \(3,\) do not broadcast$"),
        (lambda: sdpa(np.ones((2, 8, 5, 4)), np.ones((2, 3, 6, 4)), np.ones((2, 3, 6, 4))), ValueError,
         r"^query has 8 heads but key/value have 3: for grouped-query attention"),
        (lambda: sdpa(np.ones((2, 4, 5, 4)), np.ones((2, 4, 6, 4)), np.ones((2, 4, 6, 4)), np.ones((5, 7), bool)),
         ValueError, r"^mask of shape \(5, 7\) does not broadcast to scores \(2, 4, 5, 6\)$"),
        (lambda: sdpa(q, k, v, bias=np.ones((4, 6))), ValueError,
         r"^bias of shape \(4, 6\) does not broadcast to scores \(4, 5\)$"),
        (lambda: sdpa(np.ones((2, 4, 5, 4)), np.ones((2, 4, 6, 4)), np.ones((2, 4, 6, 4)),
                      M.from_array(np.ones((5, 7), bool))), ValueError,
         r"^mask array has shape \(5, 7\) but the scores are \(\.\.\., 5, 6\)$"),
        (lambda: sdpa(np.ones((3, 4, 5, 4)), np.ones((3, 4, 6, 4)), np.ones((3, 4, 6, 4)), M.padding([1, 2])),
         ValueError, r"^mask padding\(lengths=\[1, 2\]\) is defined for batch size 2, but the input has 3$"),
        (lambda: sdpa(np.ones((1, 4, 5, 4)), np.ones((1, 4, 6, 4)), np.ones((1, 4, 6, 4)), score_mod=S.alibi(2)),
         ValueError, r"^alibi\(2\) has parameters for 2 heads but the scores have head index 3"),
        (lambda: sdpa(np.ones((3, 4, 2)), np.ones((3, 5, 2)), np.ones((3, 5, 2)),
                      M.from_array(np.ones((2, 3, 4, 5), bool))), ValueError,
         r"^mask from_array\(2x3x4x5\) depends on batch and head, but the scores \(3, 4, 5\) have no batch axis$"),
        (lambda: attention(q, k, v, "general", weight=np.ones((3, 2))), ValueError,
         r"^weight must have shape \(Dq, Dk\) = \(3, 3\), got \(3, 2\)$"),
        (lambda: additive_attention(q, k, v, np.ones((2, 3)), np.ones((3, 3)), np.ones(2)), ValueError,
         r"w_q \(A, Dq\), w_k \(A, Dk\), w_v \(A,\) with Dq=3, Dk=3; got w_q \(2, 3\), w_k \(3, 3\), w_v \(2,\)"),
        (lambda: attention(q, k, v, lambda a, b: a @ a.T), ValueError,
         r"^the score function returned shape \(4, 4\), expected \(\.\.\., Lq=4, Lk=5\)$"),
    ]
    for call, err, pattern in cases:
        with pytest.raises(err, match=pattern):
            call()


def test_attention_type_messages(rng):
    q, k, v = _qkv(rng)
    cases = [
        (lambda: sdpa(q.astype(np.float32), k, v),
         r"query, key and value must share one dtype, got float32, float64, float64; cast them first"),
        (lambda: sdpa(np.ones((2, 3), int), np.ones((2, 3), int), np.ones((2, 3), int)),
         r"^query must have a floating dtype \(float16/32/64\), got int64"),
        (lambda: sdpa(q, k.astype(np.int32), v), r"^key must have a floating dtype .* got int32"),
        (lambda: sdpa(torch.from_numpy(q), k, v), r"^inputs come from different array libraries "
                                                  r"\(numpy.ndarray, torch.Tensor\)"),
        (lambda: sdpa(q, k, v, np.ones((4, 5), int)),
         r"^mask must be boolean with True = may attend, got dtype int64; pass an additive float mask as bias="),
        (lambda: sdpa(q, k, v, np.zeros((4, 5))), r"^mask must be boolean .* got dtype float64"),
        (lambda: sdpa(q, k, v, bias=np.ones((4, 5), bool)), r"^bias must be a floating array .* got dtype bool"),
        (lambda: sdpa(q, k, v, scale="0.5"), r"^scale must be a number \(a finite number or None\), got str '0.5'$"),
        (lambda: attention(q, k, v, "scaled_dot", scale=[1.0]), r"^scale must be a number \(a finite number or None\), got list \[1.0\]$"),
        (lambda: sdpa(q, k, v, score_mod=lambda s: s), r"^score_mod must be an attnlab.scores.ScoreMod"),
        (lambda: sdpa(q, k, v, "causal"), r"^mask must be an array or nested list of numbers, got str"),
        (lambda: attention(q, k, v, "general"), r"score='general' needs parameters \['weight'\]"),
    ]
    for call, pattern in cases:
        with pytest.raises(TypeError, match=pattern):
            call()
    with pytest.raises(ValueError, match=r"^score must be one of \['additive', 'dot', 'general', 'scaled_dot'\] "
                                         r"or a callable, got 'cosine'$"):
        attention(q, k, v, "cosine")


def test_layer_messages():
    cases = [
        (lambda: MultiHeadAttention(8, 3), ValueError, r"^d_model=8 is not a multiple of n_heads=3$"),
        (lambda: MultiHeadAttention(8, 8, 3), ValueError, r"^n_heads=8 is not a multiple of n_kv_heads=3$"),
        (lambda: MultiHeadAttention(8, 0), ValueError, r"^n_heads must be a positive integer, got 0$"),
        (lambda: MultiHeadAttention(8, 2, kdim=0), ValueError, r"^kdim must be a positive integer, got 0$"),
        (lambda: MultiHeadAttention(8, 2, head_dim=2.5), ValueError, r"^head_dim must be a positive integer"),
        (lambda: MultiHeadAttention(6, 2, rope_base=10.0), ValueError,
         r"^rotary embedding \(rope_base\) needs an even head_dim, got 3$"),
        (lambda: MultiHeadAttention(8, 2, rope_base=-1.0), ValueError, r"^rope_base must be a finite number > 0 or None, got -1.0$"),
        (lambda: MultiHeadAttention(8, 2)(np.ones((2, 3, 7), np.float32)), ValueError,
         r"^x must have shape \(B, L, d_model=8\) or \(L, d_model\), got \(2, 3, 7\)$"),
        (lambda: MultiHeadAttention(8, 2)(np.ones((2, 3, 8), int)), TypeError, r"^x must have a floating dtype"),
        (lambda: MultiHeadAttention(8, 2)(np.ones((2, 3, 8), np.float32), context=np.ones((3, 3, 8), np.float32)),
         ValueError, r"^context must have shape \(B=2, Lk, kdim=8\), got \(3, 3, 8\)$"),
        (lambda: MultiHeadAttention(8, 2)(np.ones((2, 3, 8), np.float32), context=np.ones((2, 3, 5), np.float32)),
         ValueError, r"^context has feature dim 5 but the layer expects kdim=8$"),
        (lambda: MultiHeadAttention(8, 2, kdim=3, vdim=5)(np.ones((1, 2, 8)), context=np.ones((1, 4, 3))),
         ValueError, r"^the value input has feature dim 3 but the layer expects vdim=5; pass context=\(key_input, "),
        (lambda: MultiHeadAttention(8, 2, kdim=3, vdim=5)(np.ones((1, 2, 8)), context=(np.ones((1, 4, 3)),
                                                                                      np.ones((1, 6, 5)))),
         ValueError, r"^value context has 6 positions but the key context has 4$"),
        (lambda: MultiHeadAttention.from_torch(torch.nn.Linear(2, 2)), TypeError,
         r"^expected torch.nn.MultiheadAttention, got Linear$"),
        (lambda: MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(4, 2, add_bias_kv=True)), ValueError,
         r"^add_bias_kv and add_zero_attn are not supported$"),
    ]
    for call, err, pattern in cases:
        with pytest.raises(err, match=pattern):
            call()
    cache = KVCache()
    cache.append(np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"^cache holds keys of shape \(\.\.\., 4\)"):
        cache.append(np.zeros((1, 2, 1, 5)), np.zeros((1, 2, 1, 5)))


def test_mask_messages():
    cases = [
        (lambda: M.causal() & np.ones((2, 2), bool), TypeError,
         r"^masks combine with & only with other masks, got ndarray; wrap arrays with masks.from_array$"),
        (lambda: M.causal() | 1, TypeError, r"^masks combine with \| only with other masks, got int"),
        (lambda: M.padding([1, 2]) & M.padding([1, 2, 3]), ValueError,
         r"^cannot combine masks defined for batch size 2 and 3$"),
        (lambda: M.causal("left"), ValueError, r"^align must be one of \('bottom_right', 'top_left'\), got 'left'$"),
        (lambda: M.sliding_window(-1), ValueError, r"^left must be a non-negative integer, got -1$"),
        (lambda: M.sliding_window(2, 1.5), ValueError, r"^right must be a non-negative integer, got 1.5$"),
        (lambda: M.padding([[1]]), ValueError, r"^lengths must be a non-empty 1-D list of non-negative integers"),
        (lambda: M.padding([1, -2]), ValueError, r"^lengths must be .* got \[1, -2\]$"),
        (lambda: M.padding([1, 2], [1]), ValueError, r"^q_lengths has 1 entries but lengths has 2$"),
        (lambda: M.prefix_lm(-3), ValueError, r"^n must be a non-negative integer, got -3$"),
        (lambda: M.document([0.5]), ValueError, r"^doc_ids must be integers of shape \(Lk,\) or \(B, Lk\)"),
        (lambda: M.document([0, 1]).to_array(2, 3), ValueError, r"^document mask has 2 key ids but Lk=3$"),
        (lambda: M.document([0, 1]).to_array(3, 2), ValueError, r"^document mask needs q_doc_ids when Lq=3 > Lk=2$"),
        (lambda: M.dilated(0), ValueError, r"^stride must be >= 1, got 0$"),
        (lambda: M.global_tokens([-1]), ValueError, r"^indices must be non-negative positions, got \[-1\]$"),
        (lambda: M.random_blocks(0, 1), ValueError, r"^block_size must be >= 1, got 0$"),
        (lambda: M.from_array(np.ones((2, 2))), TypeError, r"^mask array must be boolean .* got dtype float64$"),
        (lambda: M.from_array(np.ones(2, bool)), ValueError,
         r"^mask array must have shape \(Lq, Lk\), \(H, Lq, Lk\) or \(B, H, Lq, Lk\), got \(2,\)$"),
        (lambda: M.from_function(3), TypeError, r"^fn must be callable \(b, h, q_idx, kv_idx\) -> bool, got int$"),
        (lambda: M.from_function(lambda *a: True, heads=0), ValueError, r"^heads must be a positive integer"),
        (lambda: M.causal().to_array(-1, 2), ValueError, r"^Lq and Lk must be non-negative integers, got Lq=-1"),
        (lambda: M.causal().blocks(4, 4, 0, 2), ValueError, r"^block sizes must be >= 1, got block_q=0, block_k=2$"),
        (lambda: M.from_array(np.ones((2, 3, 3), bool)).to_array(3, 3, heads=4), ValueError,
         r"is defined for 2 heads, but the input has 4$"),
    ]
    for call, err, pattern in cases:
        with pytest.raises(err, match=pattern):
            call()


def test_score_and_merge_messages():
    cases = [
        (lambda: S.alibi_slopes(0), ValueError, r"^n_heads must be a positive integer, got 0$"),
        (lambda: S.softcap(0), ValueError, r"^cap must be a finite number > 0, got 0$"),
        (lambda: S.relative_bias(np.ones((2, 4))), ValueError,
         r"^table must have shape \(H, 2 \* max_distance \+ 1\), got \(2, 4\)$"),
        (lambda: S.score_mod(1), TypeError, r"^fn must be callable, got int$"),
        (lambda: S.rotary(np.ones((2, 3))), ValueError, r"^rotary embedding needs an even feature dim, got D=3$"),
        (lambda: merge_attention(np.ones((2, 2), int), np.ones(2), np.ones((2, 2)), np.ones(2)), TypeError,
         r"^out_a must have a floating dtype"),
        (lambda: merge_attention(np.ones((2, 3)), np.ones(3), np.ones((2, 3)), np.ones(2)), ValueError,
         r"^lse_a must have shape \(2,\)"),
        (lambda: softmax(np.ones(3), axis=1), ValueError, r"^axis must be an integer in \[-1, 1\)"),
    ]
    for call, err, pattern in cases:
        with pytest.raises(err, match=pattern):
            call()


# --- documented behaviours -------------------------------------------------------------------------------------
def test_integer_inputs_softmax_promotes_attention_refuses():
    w = softmax(np.array([[1, 2, 3]]))
    assert w.dtype == np.float64
    np.testing.assert_allclose(w.sum(), 1.0)
    with pytest.raises(TypeError, match="cast it first"):
        sdpa(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64), np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match="query must have a floating dtype"):
        attention([[1, 2]], [[1, 2]], [[1.0]])                                      # nested lists of ints too


def test_mixed_dtypes_are_refused_not_promoted(rng):
    q, k, v = _qkv(rng)
    for dtypes in ((np.float32, np.float64, np.float64), (np.float64, np.float64, np.float16)):
        with pytest.raises(TypeError, match="must share one dtype"):
            sdpa(q.astype(dtypes[0]), k.astype(dtypes[1]), v.astype(dtypes[2]))
        with pytest.raises(TypeError, match="must share one dtype"):
            attention(q.astype(dtypes[0]), k.astype(dtypes[1]), v.astype(dtypes[2]), "dot")


def test_empty_key_sequence_gives_zeros(rng):
    q = rng.standard_normal((2, 3, 4))
    out, w, lse = sdpa(q, np.zeros((2, 0, 4)), np.zeros((2, 0, 5)), return_weights=True, return_lse=True)
    assert out.shape == (2, 3, 5) and (out == 0).all()
    assert w.shape == (2, 3, 0) and lse.shape == (2, 3) and (lse == -np.inf).all()
    out, lse = sdpa(q, np.zeros((2, 0, 4)), np.zeros((2, 0, 5)), M.causal(), return_lse=True, impl="tiled")
    assert out.shape == (2, 3, 5) and (out == 0).all() and (lse == -np.inf).all()
    out = attention(q, np.zeros((2, 0, 4)), np.zeros((2, 0, 5)), "dot", M.causal())
    assert out.shape == (2, 3, 5) and (out == 0).all()
    layer = MultiHeadAttention(4, 2)
    assert (layer(np.ones((1, 2, 4), np.float32), context=np.zeros((1, 0, 4), np.float32)) == layer.b_o).all()
    assert sdpa(np.zeros((0, 4)), np.ones((3, 4)), np.ones((3, 2))).shape == (0, 2)           # Lq = 0


def test_fully_masked_row_gives_zero_output_zero_weights_and_minus_inf_lse(rng):
    q, k, v = _qkv(rng)
    keep = np.ones((4, 5), bool)
    keep[2] = False
    out, w, lse = sdpa(q, k, v, keep, return_weights=True, return_lse=True)
    assert (out[2] == 0).all() and (w[2] == 0).all() and lse[2] == -np.inf
    assert np.isfinite(out).all() and np.isfinite(lse[[0, 1, 3]]).all()
    out2 = sdpa(q, k, v, bias=np.where(keep, 0.0, -np.inf))                       # -inf bias masks the same
    np.testing.assert_array_equal(out2, out)
    tiled, tiled_lse = sdpa(q, k, v, keep, return_lse=True, impl="tiled")
    assert (tiled[2] == 0).all() and tiled_lse[2] == -np.inf
    np.testing.assert_allclose(tiled, out, rtol=1e-13, atol=1e-15)


IMPLS = ["reference", "tiled"]                    # the documented behaviour holds on both paths


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_in_masked_keys_and_values_never_leaks(rng, impl):
    q, k, v = _qkv(rng)
    keep = np.ones((4, 5), bool)
    keep[:, 3] = False
    k_bad, v_bad = k.copy(), v.copy()
    k_bad[3], v_bad[3] = np.nan, np.inf
    want = sdpa(q, k, v, keep)
    np.testing.assert_allclose(sdpa(q, k_bad, v_bad, keep, impl=impl), want, rtol=1e-13)
    np.testing.assert_allclose(sdpa(q, k_bad, v_bad, M.padding([3]), impl=impl), sdpa(q, k[:3], v[:3]), rtol=1e-13)


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_in_an_attended_value_reaches_only_the_rows_that_attend_to_it(rng, impl):
    q, k, v = _qkv(rng, Lq=5, Lk=5)
    v_bad = v.copy()
    v_bad[2, 1] = np.nan                                                          # key 2, value column 1
    out = sdpa(q, k, v_bad, M.causal(), impl=impl)                                # rows 0, 1 cannot see key 2
    clean = sdpa(q, k, v, M.causal())
    np.testing.assert_allclose(out[:2], clean[:2], rtol=1e-13)
    assert np.isnan(out[2:, 1]).all()
    np.testing.assert_allclose(out[2:, 0], clean[2:, 0], rtol=1e-13)              # other value columns intact
    v_inf = v.copy()
    v_inf[4, 0] = np.inf                                                          # Inf reached: NaN, as documented
    out = sdpa(q, k, v_inf, M.causal(), impl=impl)
    assert np.isnan(out[4, 0]) and np.isfinite(out[:4]).all() and out[4, 1] == pytest.approx(clean[4, 1])


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_in_queries_and_attended_keys(rng, impl):
    q, k, v = _qkv(rng, Lq=5, Lk=5)
    q_bad = q.copy()
    q_bad[1, 0] = np.nan
    out = sdpa(q_bad, k, v, impl=impl)
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(np.delete(out, 1, 0), np.delete(sdpa(q, k, v), 1, 0), rtol=1e-13)
    k_bad = k.copy()
    k_bad[3, 2] = np.nan
    out = sdpa(q, k_bad, v, M.causal(), impl=impl)
    np.testing.assert_allclose(out[:3], sdpa(q, k, v, M.causal())[:3], rtol=1e-13)   # rows before key 3
    assert np.isnan(out[3:]).all()


def test_torch_nan_semantics_match_numpy(rng):
    q, k, v = _qkv(rng, Lq=5, Lk=5)
    v[2, 1] = np.nan
    keep = np.tri(5, dtype=bool)
    keep[0] = False
    got = sdpa(*(torch.from_numpy(x) for x in (q, k, v)), torch.from_numpy(keep)).numpy()
    np.testing.assert_array_equal(got, sdpa(q, k, v, keep))
    assert (got[0] == 0).all() and math.isnan(got[3, 1])
