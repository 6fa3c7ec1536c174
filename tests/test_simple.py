"""kernel/simple.py, FlashAttention Algorithm 1 as written, equals the float64 loop oracle, the reference and the
fast kernel: odd sizes, Lq != Lk both ways, masks (fully masked rows included), blocks that do not divide n."""

from __future__ import annotations

import numpy as np
import pytest

import attnlab
from attnlab import masks as M
from attnlab.kernel import flash_attention, simple_attention

import oracles

SIZES = [(1, 1), (7, 7), (13, 29), (29, 13), (33, 40)]
BLOCKS = [(1, 1), (4, 5), (7, 3), (64, 64)]
MASKS = {
    "none": (None, None),
    "causal": (M.causal(), oracles.causal()),
    "causal_top_left": (M.causal("top_left"), oracles.causal("top_left")),   # Lq > Lk: rows with no key
    "window": (M.sliding_window(3, 1), oracles.sliding_window(3, 1)),
    "dilated|causal": (M.dilated(3) | M.causal(), oracles.either(oracles.dilated(3), oracles.causal())),
}


def _qkv(rng, Lq, Lk, D=6, Dv=5, scale=1.0):
    return (scale * rng.standard_normal((Lq, D)), scale * rng.standard_normal((Lk, D)),
            rng.standard_normal((Lk, Dv)))


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("Lq, Lk", SIZES)
def test_simple_equals_the_oracle_the_reference_and_the_fast_kernel(Lq, Lk, mask_name, rng):
    mask, allowed = MASKS[mask_name]
    q, k, v = _qkv(rng, Lq, Lk)
    want, _, want_lse = oracles.attention(q[None, None], k[None, None], v[None, None],
                                          oracles.scaled_dot(), allowed)
    ref, ref_lse = attnlab.scaled_dot_product_attention(q, k, v, mask, impl="reference", return_lse=True)
    fast, fast_lse = flash_attention(q, k, v, mask, block_q=4, block_k=3, return_lse=True)
    for bq, bk in BLOCKS:
        out, lse = simple_attention(q, k, v, mask, block_q=bq, block_k=bk)
        np.testing.assert_allclose(out, want[0, 0], atol=1e-12)
        np.testing.assert_allclose(lse, want_lse[0, 0], atol=1e-12)
        np.testing.assert_allclose(out, ref, atol=1e-12)
        np.testing.assert_allclose(lse, ref_lse, atol=1e-12)
        np.testing.assert_allclose(out, fast, atol=1e-12)
        np.testing.assert_allclose(lse, fast_lse, atol=1e-12)


def test_fully_masked_rows_give_zero_and_minus_inf(rng):
    q, k, v = _qkv(rng, 9, 4)
    mask = M.causal("top_left")                          # rows 4.. see keys, rows 0..3 see some; make some empty:
    arr = mask.to_array(9, 4).copy()
    arr[[2, 6]] = False                                  # rows 2 and 6 see nothing
    out, lse = simple_attention(q, k, v, arr, block_q=4, block_k=3)
    assert (out[[2, 6]] == 0).all() and (lse[[2, 6]] == -np.inf).all()
    ref, ref_lse = attnlab.scaled_dot_product_attention(q, k, v, arr, return_lse=True)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))
    np.testing.assert_allclose(lse[np.isfinite(lse)], ref_lse[np.isfinite(ref_lse)], atol=1e-12)


def test_large_scores_rescale_exactly(rng):
    """Scores in the hundreds: the running max must rescale earlier tiles (exp would overflow without it)."""
    q, k, v = _qkv(rng, 17, 23, scale=12.0)
    out, lse = simple_attention(q, k, v, M.causal(), block_q=5, block_k=4, scale=1.0)
    ref, ref_lse = attnlab.scaled_dot_product_attention(q, k, v, M.causal(), scale=1.0, return_lse=True)
    assert np.abs(lse).max() > 100
    np.testing.assert_allclose(out, ref, atol=1e-10)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12)


def test_float32_stays_within_twice_torchs_error(rng):
    import torch

    q, k, v = (x.astype(np.float32) for x in _qkv(rng, 31, 37))
    exact, _, _ = oracles.attention(q[None, None], k[None, None], v[None, None], oracles.scaled_dot(),
                                    oracles.causal())
    mask = torch.from_numpy(M.causal().to_array(31, 37))
    theirs = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                                              attn_mask=mask).numpy()
    ours, _ = simple_attention(q, k, v, M.causal(), block_q=8, block_k=5)
    assert ours.dtype == np.float32
    assert np.abs(ours - exact[0, 0]).max() <= 2 * max(np.abs(theirs - exact[0, 0]).max(), 1e-7)
