"""merge_attention: attention over two key splits, merged by log-sum-exp, equals attention over all keys."""

import math

import numpy as np
import pytest
import torch

import oracles as O
from attnlab import masks as M, merge_attention, scaled_dot_product_attention as sdpa


def _split(q, k, v, mask_arr, cut):
    a = sdpa(q, k[..., :cut, :], v[..., :cut, :], None if mask_arr is None else mask_arr[..., :cut],
             return_lse=True)
    b = sdpa(q, k[..., cut:, :], v[..., cut:, :], None if mask_arr is None else mask_arr[..., cut:],
             return_lse=True)
    return a, b


@pytest.mark.parametrize("cut", [0, 1, 4, 7])
def test_two_splits_equal_the_whole(rng, cut):
    q, k, v = rng.standard_normal((2, 4, 5, 8)), rng.standard_normal((2, 2, 7, 8)), rng.standard_normal((2, 2, 7, 3))
    causal = M.causal().to_array(5, 7)
    for mask_arr in (None, causal):
        (out_a, lse_a), (out_b, lse_b) = _split(q, k, v, mask_arr, cut)
        out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
        want_out, _, want_lse = O.attention(q, k, v, O.scaled_dot(), None if mask_arr is None else O.causal())
        np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(lse, want_lse, rtol=1e-12)
        out_r, lse_r = merge_attention(out_b, lse_b, out_a, lse_a)                       # order does not matter
        np.testing.assert_allclose(out_r, out, rtol=1e-14, atol=1e-15)


def test_three_splits_any_grouping(rng):
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((9, 4)), rng.standard_normal((9, 2))
    parts = [sdpa(q, k[s], v[s], return_lse=True) for s in (slice(0, 2), slice(2, 5), slice(5, 9))]
    left = merge_attention(*merge_attention(*parts[0], *parts[1]), *parts[2])
    right = merge_attention(*parts[0], *merge_attention(*parts[1], *parts[2]))
    whole = sdpa(q, k, v, return_lse=True)
    for got in (left, right):
        np.testing.assert_allclose(got[0], whole[0], rtol=1e-13)
        np.testing.assert_allclose(got[1], whole[1], rtol=1e-13)


def test_empty_parts_have_no_weight():
    out_a, lse_a = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -math.inf])
    out_b, lse_b = np.zeros((2, 2)), np.array([-math.inf, -math.inf])
    out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
    np.testing.assert_array_equal(out, [[1.0, 2.0], [0.0, 0.0]])                         # never NaN
    assert lse.tolist() == [0.5, -math.inf]


def test_merge_by_hand():
    out, lse = merge_attention(np.array([[2.0]]), np.array([math.log(1.0)]), np.array([[5.0]]),
                               np.array([math.log(3.0)]))
    assert out[0, 0] == pytest.approx(0.25 * 2 + 0.75 * 5) and lse[0] == pytest.approx(math.log(4.0))


def test_merge_torch(rng):
    q, k, v = (torch.from_numpy(rng.standard_normal((2, 6, 4))) for _ in range(3))
    a, b = sdpa(q, k[:, :2], v[:, :2], return_lse=True), sdpa(q, k[:, 2:], v[:, 2:], return_lse=True)
    out, lse = merge_attention(*a, *b)
    assert isinstance(out, torch.Tensor)
    assert (out - sdpa(q, k, v)).abs().max() < 1e-13


def test_merge_validates_shapes():
    with pytest.raises(ValueError, match=r"out_a has shape \(2, 3\) but out_b has \(2, 4\)"):
        merge_attention(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match=r"lse_b must have shape \(2,\) \(the output without its last axis\), "
                                         r"got \(3,\)"):
        merge_attention(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 3)), np.zeros(3))
