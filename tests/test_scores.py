"""attnlab.scores: scorers and score modifiers against loop oracles, ALiBi slopes against the paper, RoPE against
an explicit rotation matrix."""

import math

import numpy as np
import pytest

import oracles as O
from attnlab import scores as S


def _loop_scores(score, q, k):
    """(Lq, Lk) scores by calling the scalar oracle scorer cell by cell."""
    return np.array([[score(qi, kj) for kj in k] for qi in q])


# --- scorers ---------------------------------------------------------------------------------------------------
def test_scorers_match_loops(rng):
    q, k = rng.standard_normal((5, 4)), rng.standard_normal((7, 4))
    W = rng.standard_normal((4, 4))
    w_q, w_k, w_v = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    np.testing.assert_allclose(S.dot(q, k), _loop_scores(O.dot, q, k), rtol=1e-13)
    np.testing.assert_allclose(S.scaled_dot(q, k), _loop_scores(O.scaled_dot(), q, k), rtol=1e-13)
    np.testing.assert_allclose(S.scaled_dot(q, k, 0.3), _loop_scores(O.scaled_dot(0.3), q, k), rtol=1e-13)
    np.testing.assert_allclose(S.general(q, k, W), _loop_scores(O.general(W), q, k), rtol=1e-12)
    np.testing.assert_allclose(S.additive(q, k, w_q, w_k, w_v), _loop_scores(O.additive(w_q, w_k, w_v), q, k),
                               rtol=1e-12, atol=1e-14)


def test_general_and_additive_with_different_query_and_key_dims(rng):
    q, k = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 4, 2))             # Dq=5, Dk=2
    W = rng.standard_normal((5, 2))
    got = S.general(q, k, W)
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(got[1], _loop_scores(O.general(W), q[1], k[1]), rtol=1e-12)
    w_q, w_k, w_v = rng.standard_normal((6, 5)), rng.standard_normal((6, 2)), rng.standard_normal(6)
    np.testing.assert_allclose(S.additive(q, k, w_q, w_k, w_v)[0],
                               _loop_scores(O.additive(w_q, w_k, w_v), q[0], k[0]), rtol=1e-12, atol=1e-14)


def test_get_scorer(rng):
    q, k = rng.standard_normal((2, 3)), rng.standard_normal((4, 3))
    np.testing.assert_array_equal(S.get_scorer("dot")(q, k), S.dot(q, k))
    np.testing.assert_array_equal(S.get_scorer("scaled_dot", scale=2.0)(q, k), S.dot(q, k) * 2.0)
    fn = lambda a, b: a @ b.T                                                           # noqa: E731
    assert S.get_scorer(fn) is fn
    with pytest.raises(ValueError, match=r"score must be one of \['additive', 'dot', 'general', 'scaled_dot'\]"):
        S.get_scorer("cosine")
    with pytest.raises(TypeError, match=r"score='general' needs parameters \['weight'\]; missing \['weight'\]"):
        S.get_scorer("general")
    with pytest.raises(TypeError, match=r"unexpected \['scale'\]"):
        S.get_scorer("dot", scale=1.0)
    with pytest.raises(TypeError, match="a callable score takes no extra parameters"):
        S.get_scorer(fn, weight=1)


# --- ALiBi slopes ----------------------------------------------------------------------------------------------
def test_alibi_slopes_paper_values():
    """Press et al. 2022, sec. 3: for 8 heads the slopes are 1/2, 1/4, ..., 1/256."""
    assert S.alibi_slopes(8).tolist() == [1 / 2 ** i for i in range(1, 9)]
    assert S.alibi_slopes(16).tolist() == pytest.approx([2 ** (-0.5 * i) for i in range(1, 17)], rel=1e-15)
    assert S.alibi_slopes(1).tolist() == [1 / 256]
    assert S.alibi_slopes(2).tolist() == [1 / 16, 1 / 256]


def test_alibi_slopes_non_power_of_two():
    # 12 heads: the 8-head slopes, then every other 16-head slope: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    want = [1 / 2 ** i for i in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    assert S.alibi_slopes(12).tolist() == pytest.approx(want, rel=1e-15)
    for n in (3, 5, 6, 7, 12, 20, 24):
        assert S.alibi_slopes(n).tolist() == pytest.approx([O.alibi_slope(h, n) for h in range(n)], rel=1e-15)
    with pytest.raises(ValueError, match="n_heads must be a positive integer, got 0"):
        S.alibi_slopes(0)


# --- score modifiers on the full matrix -----------------------------------------------------------------------
def _apply(mod, scores, Lq, Lk):
    """Apply a ScoreMod to (H, Lq, Lk) scores with the index arrays the reference path passes."""
    H = scores.shape[0]
    return mod.apply(scores, 0, np.arange(H)[:, None, None], np.arange(Lq)[:, None], np.arange(Lk)[None, :],
                     Lq, Lk)


def _loop_mod(mod, scores):
    H, Lq, Lk = scores.shape
    return np.array([[[mod(scores[h, i, j], 0, h, i, j, Lq, Lk) for j in range(Lk)] for i in range(Lq)]
                     for h in range(H)])


@pytest.mark.parametrize("Lq, Lk", [(4, 4), (3, 6), (6, 3)])
def test_score_mods_match_oracle(rng, Lq, Lk):
    s = rng.standard_normal((3, Lq, Lk)) * 5
    table = rng.standard_normal((3, 5))
    cases = [(S.alibi(3), O.alibi(3)), (S.alibi(3, symmetric=True), O.alibi(3, symmetric=True)),
             (S.softcap(2.5), O.softcap(2.5)), (S.relative_bias(table), O.relative_bias(table, 2)),
             (S.relative_bias(table[:, 1:4], max_distance=1), O.relative_bias(table[:, 1:4], 1))]
    for mod, oracle in cases:
        np.testing.assert_allclose(_apply(mod, s, Lq, Lk), _loop_mod(oracle, s), rtol=1e-13, atol=1e-14,
                                   err_msg=repr(mod))


def test_score_mod_composition_and_wrapper(rng):
    s = rng.standard_normal((2, 3, 3)) * 10
    both = S.alibi(2).then(S.softcap(1.0))
    want = _loop_mod(lambda x, *a: O.softcap(1.0)(O.alibi(2)(x, *a), *a), s)
    np.testing.assert_allclose(_apply(both, s, 3, 3), want, rtol=1e-13)
    assert repr(both) == "alibi(2) -> softcap(1.0)"
    assert np.abs(_apply(S.softcap(1.0), s, 3, 3)).max() < 1.0
    custom = S.score_mod(lambda sc, b, h, q, kv: sc + 10.0 * (q == kv), name="diag_bonus")
    np.testing.assert_allclose(_apply(custom, s, 3, 3), s + 10.0 * np.eye(3))
    assert repr(custom) == "diag_bonus"
    assert S.alibi(2).apply(np.float32(s), 0, np.arange(2)[:, None, None], np.arange(3)[:, None],
                            np.arange(3)[None, :], 3, 3).dtype == np.float32


def test_alibi_matches_hand_values():
    s = np.zeros((1, 3, 3))
    got = _apply(S.alibi(1), s, 3, 3)[0]                                             # slope 1/256
    np.testing.assert_allclose(got, -np.array([[0, -1, -2], [1, 0, -1], [2, 1, 0]]) / 256)


# --- rotary position embedding --------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rotary_equals_rotation_matrix(rng, style):
    x = rng.standard_normal((2, 5, 8))                                               # (H, L, D)
    pos = np.array([0, 1, 4, 17, 1000])
    got = S.rotary(x, pos, base=500.0, style=style)
    for h in range(2):
        for t, p in enumerate(pos):
            want = O.rotation_matrix(p, 8, base=500.0, style=style) @ x[h, t]
            np.testing.assert_allclose(got[h, t], want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(S.rotary(x, style=style), S.rotary(x, np.arange(5), style=style), rtol=0)
    np.testing.assert_allclose(S.rotary(x, np.zeros(5, int), style=style), x, rtol=0)   # position 0: identity


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rotary_scores_depend_only_on_relative_position(rng, style):
    q, k = rng.standard_normal(16), rng.standard_normal(16)
    def score(m, n):
        qr = S.rotary(q[None, :], [m], style=style)[0]
        kr = S.rotary(k[None, :], [n], style=style)[0]
        return float(qr @ kr)
    for m, n, shift in [(5, 2, 7), (0, 9, 100), (3, 3, 41)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-10, abs=1e-12)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)
    # norms are preserved: a rotation
    np.testing.assert_allclose(np.linalg.norm(S.rotary(q[None, :], [123], style=style)), np.linalg.norm(q))


def test_rotary_styles_differ_by_a_feature_permutation(rng):
    x = rng.standard_normal((4, 6))
    perm = np.array([0, 2, 4, 1, 3, 5])                         # half layout [x0 x2 x4 | x1 x3 x5]
    half = S.rotary(x[:, perm], style="half")
    inter = S.rotary(x, style="interleaved")
    np.testing.assert_allclose(half, inter[:, perm], rtol=1e-13, atol=1e-15)


def test_rotary_keeps_dtype_and_validates():
    assert S.rotary(np.ones((3, 4), np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="rotary embedding needs an even feature dim, got D=3"):
        S.rotary(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"positions must have shape \(L,\) = \(2,\), got \(3,\)"):
        S.rotary(np.ones((2, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="style must be 'half' or 'interleaved', got 'gptj'"):
        S.rotary(np.ones((2, 4)), style="gptj")
    assert math.isfinite(float(S.rotary(np.ones((1, 2)), [10 ** 9]).sum()))
