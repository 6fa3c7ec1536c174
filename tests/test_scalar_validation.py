"""Every scalar a public function takes is validated (issue 14): NaN/inf/out-of-range values raise ValueError and
non-numbers TypeError, each message naming the argument, what was expected and what was given. Values that are
meaningful (scale 0 or negative) are accepted and checked against the float64 loop oracle (tests/oracles.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import attnlab
from attnlab import masks as M
from attnlab import scores as S
from attnlab.checks import integer_array, real

import oracles as O

NONFINITE = [math.nan, math.inf, -math.inf, np.float32("nan")]


def _qkv(Lq=5, Lk=6, D=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, 2, Lq, D)), rng.standard_normal((1, 2, Lk, D)),
            rng.standard_normal((1, 2, Lk, 3)))


def _scale_entry_points():
    q, k, v = _qkv()
    out, lse = attnlab.flash_attention(q, k, v, return_lse=True)
    dout = np.ones_like(out)
    return {
        "scaled_dot_product_attention": lambda s: attnlab.scaled_dot_product_attention(q, k, v, scale=s),
        "sdpa tiled": lambda s: attnlab.scaled_dot_product_attention(q, k, v, scale=s, impl="tiled"),
        "attention scaled_dot": lambda s: attnlab.attention(q, k, v, "scaled_dot", scale=s),
        "flash_attention": lambda s: attnlab.flash_attention(q, k, v, scale=s),
        "attention_weights_for": lambda s: attnlab.attention_weights_for(q, k, [0], lse, scale=s),
        "flash_attention_backward": lambda s: attnlab.flash_attention_backward(dout, q, k, v, out, lse, scale=s),
        "attention_backward": lambda s: attnlab.attention_backward(dout, q, k, v, scale=s),
        "scores.scaled_dot": lambda s: S.scaled_dot(q, k, s),
    }


@pytest.mark.parametrize("entry", sorted(_scale_entry_points()))
def test_nonfinite_or_junk_scale_is_refused_on_every_entry_point(entry):
    call = _scale_entry_points()[entry]
    for bad in NONFINITE:
        with pytest.raises(ValueError, match=r"^scale must be a finite number or None, got (nan|inf|-inf)$"):
            call(bad)
    for junk in ("0.5", [1.0], True, np.ones(1)):
        with pytest.raises(TypeError, match=r"^scale must be a number \(a finite number or None\), got "):
            call(junk)


def test_zero_and_negative_scale_are_meaningful_and_exact():
    q, k, v = _qkv(seed=1)
    for s in (0.0, -0.7, 3):
        want, w_want, _ = O.attention(q, k, v, lambda a, b: s * float(a @ b))
        for impl in ("reference", "tiled"):
            got = attnlab.scaled_dot_product_attention(q, k, v, scale=s, impl=impl)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        got = attnlab.attention(q, k, v, "scaled_dot", scale=s)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    _, w = attnlab.scaled_dot_product_attention(q, k, v, scale=0.0, return_weights=True)
    np.testing.assert_allclose(w, 1 / k.shape[-2])                # scale 0: uniform weights


# --- soft-capping ------------------------------------------------------------------------------------------
def test_softcap_refuses_infinite_nan_and_non_positive_caps():
    for bad in (math.inf, math.nan, 0, -1.0, -math.inf):
        with pytest.raises(ValueError, match=r"^cap must be a finite number > 0, got "):
            S.softcap(bad)
    with pytest.raises(TypeError, match=r"^cap must be a number \(a finite number > 0\), got str '50'$"):
        S.softcap("50")


def _minus_inf_bias(Lq, Lk, seed=3):
    rng = np.random.default_rng(seed)
    bias = np.where(rng.random((Lq, Lk)) < 0.4, -np.inf, rng.standard_normal((Lq, Lk)))
    bias[1] = -np.inf                                             # one row with nothing left to attend to
    return bias


def test_minus_inf_bias_under_softcap_stays_masked():
    """The documented behaviour: a bias of -inf masks like mask=False, also under soft-capping (cap * tanh(-inf)
    would be -cap, a finite score that gets weight). Oracle: the float64 loop skipping -inf cells."""
    q, k, v = _qkv(Lq=5, Lk=7, seed=2)
    bias = _minus_inf_bias(5, 7)
    cap = 1.5
    want, w_want, _ = O.attention(q, k, v, lambda a, b: float(a @ b) / 2, allowed=lambda b, h, i, j, Lq, Lk:
                                  bias[i, j] != -np.inf, bias=lambda b, h, i, j: bias[i, j] if bias[i, j] != -np.inf
                                  else 0.0, mod=O.softcap(cap))
    out, w = attnlab.scaled_dot_product_attention(q, k, v, bias=bias, score_mod=S.softcap(cap), return_weights=True)
    np.testing.assert_allclose(out, want, atol=1e-12)
    np.testing.assert_allclose(w, w_want, atol=1e-12)
    assert (w[..., bias == -np.inf] == 0).all() and (out[:, :, 1] == 0).all()
    tiled = attnlab.flash_attention(q, k, v, bias=bias, score_mod=S.softcap(cap))
    np.testing.assert_allclose(tiled, want, atol=1e-12)
    # gradients: equal to the same call with those cells masked instead, and finite
    allowed = bias != -np.inf
    clean = np.where(allowed, bias, 0.0)
    dout = np.random.default_rng(4).standard_normal(out.shape)
    ref = attnlab.attention_backward(dout, q, k, v, allowed, bias=clean, score_mod=S.softcap(cap))
    got = attnlab.attention_backward(dout, q, k, v, bias=bias, score_mod=S.softcap(cap))
    for a, b in zip(got[:3], ref[:3]):
        np.testing.assert_allclose(a, b, atol=1e-12)
    out_t, lse_t = attnlab.flash_attention(q, k, v, bias=bias, score_mod=S.softcap(cap), return_lse=True)
    fast = attnlab.flash_attention_backward(dout, q, k, v, out_t, lse_t, bias=bias, score_mod=S.softcap(cap))
    for a, b in zip(fast[:3], ref[:3]):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-10)


# --- rotary ------------------------------------------------------------------------------------------------
def test_rotary_base_positions_and_dtype_are_checked():
    x = np.random.default_rng(5).standard_normal((3, 4))
    for bad in (0, -10000.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^base must be a finite number > 0, got "):
            S.rotary(x, base=bad)
    with pytest.raises(TypeError, match=r"^base must be a number"):
        S.rotary(x, base="10000")
    with pytest.raises(ValueError, match=r"^positions must be integers, got 0.5$"):
        S.rotary(x, positions=[0, 0.5, 1])
    with pytest.raises(ValueError, match=r"^positions must be integers, got nan$"):
        S.rotary(x, positions=[0, np.nan, 1])
    with pytest.raises(TypeError, match=r"^positions must be integers, got list \['a', 'b', 'c'\]"):
        S.rotary(x, positions=["a", "b", "c"])
    with pytest.raises(TypeError, match=r"^x must have a floating dtype .* got int64"):
        S.rotary(np.arange(12).reshape(3, 4))                    # used to return zeros
    # whole-valued float positions mean what the integers mean; checked against the rotation-matrix oracle
    got = S.rotary(x, positions=np.array([2.0, 0.0, 7.0]))
    assert np.array_equal(got, S.rotary(x, positions=[2, 0, 7]))
    for i, p in enumerate((2, 0, 7)):
        np.testing.assert_allclose(got[i], O.rotation_matrix(p, 4) @ x[i], atol=1e-12)


# --- masks -------------------------------------------------------------------------------------------------
def test_global_tokens_refuses_fractions_and_junk():
    with pytest.raises(ValueError, match=r"^indices must be integers, got 1.7$"):
        M.global_tokens([1.7])                                    # used to be silently token 1
    with pytest.raises(TypeError, match=r"^indices must be integers"):
        M.global_tokens(["x"])
    with pytest.raises(TypeError, match=r"^indices must be integers"):
        M.global_tokens([2**70])
    with pytest.raises(ValueError, match=r"^indices must be non-negative positions"):
        M.global_tokens([-2])
    assert np.array_equal(M.global_tokens([1.0]).to_array(4, 4), M.global_tokens([1]).to_array(4, 4))


def test_global_token_beyond_the_sequence_marks_nothing():
    """Documented: a mask is a function of the lengths, so an index past the end marks no token."""
    want = O.grid(O.global_tokens([1]), 5, 5)
    assert np.array_equal(M.global_tokens([1, 40]).to_array(5, 5), want)
    q, k, v = _qkv(Lq=5, Lk=5, seed=6)
    np.testing.assert_allclose(attnlab.flash_attention(q, k, v, mask=M.global_tokens([1, 40])),
                               attnlab.scaled_dot_product_attention(q, k, v, mask=want), atol=1e-12)


def test_relative_bias_checks_table_and_max_distance():
    table = np.linspace(-1, 1, 2 * 5).reshape(2, 5)               # distances -2..2
    with pytest.raises(ValueError, match=r"^max_distance must match the table: .* so max_distance = 2, got 7$"):
        S.relative_bias(table, max_distance=7)                    # used to raise IndexError inside attention
    with pytest.raises(ValueError, match=r"^max_distance must match the table: .* got 1$"):
        S.relative_bias(table, max_distance=1)                    # used to index off-centre: a wrong answer
    with pytest.raises(ValueError, match=r"^max_distance must be a non-negative integer, got 1.5$"):
        S.relative_bias(table, max_distance=1.5)
    with pytest.raises(ValueError, match=r"^table must hold at least one head \(H >= 1\), got shape \(0, 5\)$"):
        S.relative_bias(np.ones((0, 5)))
    with pytest.raises(TypeError, match=r"^table must be a float array .* got dtype <U1$"):
        S.relative_bias([["a", "b", "c"]])
    q, k, v = _qkv(Lq=6, Lk=6, seed=7)
    want, _, _ = O.attention(q, k, v, lambda a, b: float(a @ b) / 2, mod=O.relative_bias(table, 2))
    got = attnlab.scaled_dot_product_attention(q, k, v, score_mod=S.relative_bias(table, max_distance=2))
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_softmax_mask_must_broadcast_to_the_scores():
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(ValueError, match=r"^mask of shape \(4, 2, 3\) does not broadcast to x of shape \(2, 3\)$"):
        attnlab.softmax(x, mask=np.ones((4, 2, 3), bool))        # used to return shape (4, 2, 3)
    with pytest.raises(ValueError, match=r"^mask of shape \(2, 3\) does not broadcast to x of shape \(2, 3\)$|"
                                         r"does not broadcast"):
        attnlab.logsumexp(x[:, :1], mask=np.ones((2, 3), bool))
    row = [True, False, True]
    got = attnlab.softmax(x, mask=np.array(row))                  # a smaller mask still broadcasts
    for i in range(2):
        np.testing.assert_allclose(got[i], O.softmax_row(x[i], row), atol=1e-15)


def test_mask_lengths_seeds_and_layer_scalars():
    for bad in ("4", None, 2.5, -1):
        with pytest.raises(ValueError, match=r"^Lq and Lk must be non-negative integers"):
            M.causal().to_array(bad, 3)
    with pytest.raises(ValueError, match=r"^seed must be a non-negative integer, got -1$"):
        M.random_blocks(2, 1, seed=-1)
    for bad in (math.nan, math.inf, 0):
        with pytest.raises(ValueError, match=r"^rope_base must be a finite number > 0 or None, got "):
            attnlab.MultiHeadAttention(8, 2, rope_base=bad)
    with pytest.raises(ValueError, match=r"^seed must be a non-negative integer, got -3$"):
        attnlab.MultiHeadAttention(8, 2, seed=-3)


def test_shared_validators():
    assert real(3, "x") == 3.0 and real(None, "x", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^x must be a finite number in \[0, 1\], got 2$"):
        real(2, "x", low=0, high=1)
    with pytest.raises(ValueError, match=r"^x must be a finite number, got 1000"):
        real(10**400, "x")
    with pytest.raises(TypeError, match=r"^x must be a number \(a finite number\), got bool True$"):
        real(True, "x")
    assert integer_array([3, 1.0], "p").tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"^p must be integers >= 0, got -1$"):
        integer_array([-1], "p", minimum=0)
