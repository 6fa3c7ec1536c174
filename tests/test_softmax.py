"""attnlab.softmax / logsumexp against the loop oracle, PyTorch and the documented edge cases."""

import math

import numpy as np
import pytest
import torch

import oracles as O
from attnlab import logsumexp, softmax


@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax_matches_oracle_along_each_axis(rng, axis):
    x = rng.standard_normal((3, 4, 5)) * 4
    keep = rng.random((3, 4, 5)) < 0.6
    got, got_masked = softmax(x, axis=axis), softmax(x, axis=axis, mask=keep)
    xm, km = np.moveaxis(x, axis, -1), np.moveaxis(keep, axis, -1)
    want = np.array([O.softmax_row(r) for r in xm.reshape(-1, xm.shape[-1])]).reshape(xm.shape)
    want_masked = np.array([O.softmax_row(r, k) for r, k in zip(xm.reshape(-1, xm.shape[-1]),
                                                                km.reshape(-1, km.shape[-1]))]).reshape(xm.shape)
    np.testing.assert_allclose(got, np.moveaxis(want, -1, axis), atol=1e-15, rtol=1e-13)
    np.testing.assert_allclose(got_masked, np.moveaxis(want_masked, -1, axis), atol=1e-15, rtol=1e-13)


def test_logsumexp_matches_oracle(rng):
    x = rng.standard_normal((4, 6)) * 10
    keep = rng.random((4, 6)) < 0.5
    keep[0] = False
    want = [math.log(sum(math.exp(v) for v in row)) for row in x]
    np.testing.assert_allclose(logsumexp(x), want, rtol=1e-14)
    want_masked = [math.log(sum(math.exp(v) for v, k in zip(r, kr) if k)) if kr.any() else -math.inf
                   for r, kr in zip(x, keep)]
    np.testing.assert_allclose(logsumexp(x, mask=keep), want_masked, rtol=1e-14)
    assert logsumexp(x, axis=0, keepdims=True).shape == (1, 6)
    np.testing.assert_allclose(logsumexp(x, axis=0), [math.log(sum(math.exp(v) for v in c)) for c in x.T])


def test_stable_for_huge_scores():
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    w = softmax(x)
    np.testing.assert_allclose(w[0], O.softmax_row([0.0, 1.0, 2.0]), rtol=1e-14)
    np.testing.assert_allclose(w[1], O.softmax_row([0.0, -1.0, -2.0]), rtol=1e-14)
    np.testing.assert_allclose(logsumexp(x)[0], 1002 + math.log(1 + math.exp(-1) + math.exp(-2)), rtol=1e-15)
    assert softmax(np.float32([3e38, 3e38])).tolist() == [0.5, 0.5]


def test_fully_masked_rows_are_zero_and_lse_minus_inf():
    x = np.arange(6.0).reshape(2, 3)
    keep = np.array([[False] * 3, [True, False, True]])
    w = softmax(x, mask=keep)
    assert w[0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(w[1], O.softmax_row([3.0, 4.0, 5.0], [True, False, True]))
    lse = logsumexp(x, mask=keep)
    assert lse[0] == -math.inf and np.isfinite(lse[1])
    assert softmax(np.full(3, -np.inf)).tolist() == [0.0, 0.0, 0.0]          # a row of -inf counts as masked
    assert logsumexp(np.full(3, -np.inf)) == -math.inf


def test_non_finite_entries():
    keep = np.array([True, True, False])
    assert softmax(np.array([1.0, 2.0, np.nan]), mask=keep).tolist() == pytest.approx(O.softmax_row([1, 2]) + [0])
    assert np.isnan(softmax(np.array([1.0, np.nan, 2.0]))).all()                 # NaN kept: whole row NaN
    with np.errstate(invalid="ignore"):
        assert np.isnan(softmax(np.array([np.inf, 1.0]))[0])                     # as torch.softmax
    assert math.isnan(torch.softmax(torch.tensor([math.inf, 1.0]), -1)[0].item())
    assert softmax(np.array([-np.inf, 0.0])).tolist() == [0.0, 1.0]
    assert logsumexp(np.array([np.inf, 1.0])) == math.inf
    assert math.isnan(logsumexp(np.array([np.nan, 1.0])))


def test_dtypes_promotion_and_preservation():
    assert softmax(np.float32([1, 2])).dtype == np.float32
    assert softmax(np.float16([1, 2])).dtype == np.float16
    ints = softmax(np.array([1, 2, 3]))
    assert ints.dtype == np.float64
    np.testing.assert_allclose(ints, O.softmax_row([1, 2, 3]), rtol=1e-15)
    assert logsumexp([0, 0]).dtype == np.float64 and float(logsumexp([0, 0])) == pytest.approx(math.log(2))
    np.testing.assert_allclose(softmax([True, False]), O.softmax_row([1.0, 0.0]))


def test_empty_axis_and_lists():
    assert softmax(np.zeros((2, 0))).shape == (2, 0)
    lse = logsumexp(np.zeros((2, 0)))
    assert lse.shape == (2,) and (lse == -np.inf).all()
    assert logsumexp(np.zeros((2, 0)), keepdims=True).shape == (2, 1)
    np.testing.assert_allclose(softmax([[0.0, 0.0]]), [[0.5, 0.5]])


def test_mask_broadcasts_against_x(rng):
    x = rng.standard_normal((2, 3, 4))
    keep = np.array([True, False, True, True])                                  # (Lk,) for every row
    w = softmax(x, mask=keep)
    assert (w[..., 1] == 0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-15)


def test_torch_tensors_match_torch_softmax(rng):
    x = torch.tensor(rng.standard_normal((3, 7)))
    keep = torch.tensor(rng.random((3, 7)) < 0.7)
    keep[:, 0] = True
    got = softmax(x, mask=keep)
    assert isinstance(got, torch.Tensor)
    want = torch.softmax(x.masked_fill(~keep, -math.inf), -1)
    assert (got - want).abs().max().item() < 1e-15
    assert (logsumexp(x, mask=keep) - torch.logsumexp(x.masked_fill(~keep, -math.inf), -1)).abs().max() < 1e-14
    numpy_mask = softmax(x, mask=keep.numpy())                                  # a NumPy mask is moved to torch
    assert torch.equal(numpy_mask, got)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"axis must be an integer in \[-2, 2\) for x of shape \(2, 3\), got 2"):
        softmax(np.zeros((2, 3)), axis=2)
    with pytest.raises(ValueError, match="axis"):
        logsumexp(np.float64(1.0))                                              # 0-d: no axis to reduce
    with pytest.raises(TypeError, match="mask must be boolean .* got dtype int64"):
        softmax(np.zeros(3), mask=np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"mask of shape \(4,\) does not broadcast to x of shape \(3,\)"):
        softmax(np.zeros(3), mask=np.ones(4, bool))
    with pytest.raises(TypeError, match="x must be a real floating or integer array, got complex128"):
        softmax(np.zeros(3, complex))
    with pytest.raises(TypeError, match="x must be an array"):
        softmax({"a": 1})
