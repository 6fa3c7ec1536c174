"""The band regime of the tiled kernel (``attnlab.kernel.band``, issue 17): narrow relative masks (sliding windows,
dilated windows) computed in row slices that see their whole band, dilated ones regrouped by residue. Checked
against softmax attention written here in float64 from the formula, with the masks' cells written from their
definitions (not attnlab's), on odd sizes, Lq < Lk and Lq > Lk, GQA and MQA, and the careful redo."""

import numpy as np
import pytest

import attnlab
from attnlab import masks as M
from attnlab.kernel import RunStats, band, flash_attention
from attnlab.kernel import forward


def reference(q, k, v, allowed, scale=None):
    """out, lse of masked softmax(q k^T scale) v in float64; q (B, H, Lq, D), k/v (B, G, Lk, D), allowed (Lq, Lk);
    rows with nothing allowed give 0 and -inf."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    H, G = q.shape[1], k.shape[1]
    k, v = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)
    s = q @ np.swapaxes(k, -1, -2) * (1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.where(allowed, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
    l = e.sum(axis=-1, keepdims=True)
    if np.isfinite(v).all():
        sums = e @ v
    else:                          # a non-finite value reaches only the rows that put weight on it (0 * inf: 0)
        with np.errstate(invalid="ignore"):
            sums = np.where(e[..., None] > 0, e[..., None] * v[..., None, :, :], 0).sum(axis=-2)
        sums[~np.isfinite(sums)] = np.nan          # such a row is NaN, as attnlab's reference path gives it
    out = np.where(l > 0, sums / np.where(l > 0, l, 1), 0)
    with np.errstate(divide="ignore"):
        lse = np.where(l[..., 0] > 0, m[..., 0] + np.log(l[..., 0]), -np.inf)
    return out, lse


def cells(Lq, Lk, left=None, right=0, stride=None, causal=False, top_left=False):
    """The allowed cells written from the definitions: position p = q + (Lk - Lq) (bottom-right) or q (top-left);
    a window p - left <= kv <= p + right, a dilation (p - kv) % stride == 0, causal kv <= p."""
    p = np.arange(Lq)[:, None] + (0 if top_left else Lk - Lq)
    kv = np.arange(Lk)[None, :]
    ok = np.ones((Lq, Lk), bool)
    if left is not None:
        ok &= (kv >= p - left) & (kv <= p + right)
    if stride is not None:
        ok &= (p - kv) % stride == 0
    if causal:
        ok &= kv <= p
    return ok


CASES = {  # name: (mask, cells(Lq, Lk) keyword arguments, regrouping stride)
    "window": (M.sliding_window(37), dict(left=37), 1),
    "window_both_sides": (M.sliding_window(20, 9), dict(left=20, right=9), 1),
    "window_top_left": (M.sliding_window(25, align="top_left"), dict(left=25, top_left=True), 1),
    "dilated_window": (M.sliding_window(95) & M.dilated(3), dict(left=95, stride=3), 3),
    "dilated_causal_window": (M.dilated(4) & M.causal() & M.sliding_window(120), dict(left=120, stride=4,
                                                                                        causal=True), 4),
}
SHAPES = {"odd_square": (1, 4, 4, 203, 203), "short_queries": (1, 4, 2, 131, 389), "long_queries": (2, 2, 2, 389, 131),
          "gqa": (1, 8, 2, 250, 250), "mqa": (1, 4, 1, 177, 300)}


@pytest.fixture(autouse=True)
def no_batched_regime(monkeypatch):
    """These problems are small (n <= 512): the batched regime (``layout.batched_blocks``) would take them, so it
    is switched off here and the band regime runs (the batched regime has its own tests in test_flash.py)."""
    from attnlab.kernel import layout

    monkeypatch.setattr(layout, "BATCHED_ROWS", 0)


@pytest.fixture
def band_calls(monkeypatch):
    """Counts the kernel's band tasks, and those whose optimistic pass was redone by the careful tiled pass."""
    calls = {"ok": 0, "redo": 0}
    run = band.band_task

    def counting(*args):
        ok = run(*args)
        calls["ok" if ok else "redo"] += 1
        return ok
    monkeypatch.setattr(forward.band_mod, "band_task", counting)
    return calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_band_regime_equals_the_float64_reference(case, shape, dtype, band_calls):
    mask, spec, stride = CASES[case]
    B, H, G, Lq, Lk = SHAPES[shape]
    rng = np.random.default_rng(7)
    q = rng.standard_normal((B, H, Lq, 16)).astype(dtype)
    k = rng.standard_normal((B, G, Lk, 16)).astype(dtype)
    v = rng.standard_normal((B, G, Lk, 12)).astype(dtype)
    stats = RunStats()
    out, lse = flash_attention(q, k, v, mask, block_q=128, block_k=128, return_lse=True, stats=stats)
    ref, ref_lse = reference(q, k, v, cells(Lq, Lk, **spec))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out, ref, atol=tol, rtol=tol)
    assert (np.isinf(lse) == np.isinf(ref_lse)).all()
    np.testing.assert_allclose(np.where(np.isinf(ref_lse), 0, lse), np.where(np.isinf(ref_lse), 0, ref_lse),
                               atol=tol * 10, rtol=tol)
    assert band_calls["ok"] > 0 and band_calls["redo"] == 0                  # the band regime ran, optimistically
    plan = attnlab.plan(q.shape, k.shape, mask=mask, impl="tiled", block_q=128, block_k=128)
    assert stats.tiles == plan.tiles                                          # plan() says what ran
    got = band.band_of(mask, Lq, Lk, min(128 // (H // G), Lq), (H // G) * 128 * 128, H // G)
    assert got is not None and got.stride == stride


def test_overflow_and_non_finite_values_are_redone_by_the_careful_pass(band_calls):
    """A score far above the probe overflows exp2 in the optimistic pass; an inf in v must reach only the rows
    that attend to it. Both are redone by the careful tiled pass and equal the reference."""
    rng = np.random.default_rng(3)
    Lq = Lk = 300
    q, k, v = (rng.standard_normal((1, 2, n, 8)) for n in (Lq, Lk, Lk))
    k[0, :, 150] *= 400                                       # key 150: scores ~1000 above the others
    v[0, 1, 40] = np.inf
    mask = M.sliding_window(50)
    out = flash_attention(q, k, v, mask)
    ref, _ = reference(q, k, v, cells(Lq, Lk, left=50))
    np.testing.assert_allclose(out, ref, atol=1e-12)
    assert band_calls["redo"] > 0


def test_band_of_declines_what_the_tiled_pass_fits_better():
    assert band.band_of(M.causal(), 512, 512, 512, 512 * 256, 1) is None                   # not narrow
    assert band.band_of(M.sliding_window(300), 512, 512, 512, 512 * 256, 1) is None        # wider than Lk / 2
    assert band.band_of(M.sliding_window(31), 512, 512, 512, 512 * 256, 1).stride == 1
    assert band.band_of(M.sliding_window(31) & ~M.dilated(2), 512, 512, 512, 512 * 256, 1) is not None
    assert band.band_of(M.sliding_window(99) & M.dilated(9) | M.sliding_window(3), 512, 512, 512, 512 * 256,
                        1) is None                                                           # sparse band
    assert band.band_of(M.key_prefix(4), 512, 512, 512, 512 * 256, 1) is None              # not relative
    assert band.band_of(M.sliding_window(31), 512, 512, 512, 16 * 16, 1) is None           # slices too big
    got = band.band_of(M.sliding_window(1023) & M.dilated(4), 4096, 4096, 1024, 1024 * 256, 1)
    assert got.stride == 4 and [(r.lo, r.hi) for r in got.residues] == [(0, 255)] * 4


def test_a_row_with_no_key_in_the_band_gives_zero_and_minus_inf(band_calls):
    """Bottom-right alignment with Lq > Lk: the first Lq - Lk rows see no key at all."""
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((1, 2, 260, 8)), rng.standard_normal((1, 2, 120, 8)), rng.standard_normal(
        (1, 2, 120, 8))
    out, lse = flash_attention(q, k, v, M.sliding_window(10), return_lse=True)
    ref, ref_lse = reference(q, k, v, cells(260, 120, left=10))
    np.testing.assert_allclose(out, ref, atol=1e-12)
    assert np.isneginf(lse[..., :140]).all() and (out[..., :140, :] == 0).all()
    assert np.isfinite(lse[..., 140:]).all() and band_calls["ok"] > 0


@pytest.mark.parametrize("mask", [M.dilated(3), M.sliding_window(40) & M.dilated(4), ~M.dilated(2) & M.causal(),
                                  M.dilated(5, align="top_left") | M.sliding_window(2)],
                         ids=["dilated", "dilated_window", "not_dilated_causal", "dilated_or_window"])
@pytest.mark.parametrize("Lq, Lk, bq, bk", [(203, 203, 32, 48), (131, 389, 64, 16), (389, 131, 17, 128)])
def test_relative_masks_without_a_tile_fn_classify_tiles_from_their_profile(mask, Lq, Lk, bq, bk):
    """Mask.blocks of a relative mask with no tile_fn (dilated) reads its 1-D profile: O(Lq + Lk), so the tile map
    of a dilated window at n = 16384 fits the budget; equal to counting the cells of every tile."""
    assert mask.tile_fn is None and mask.relative
    cells_ = mask.to_array(Lq, Lk)
    nqb, nkb = -(-Lq // bq), -(-Lk // bk)
    want = np.zeros((nqb, nkb), np.int8)
    for i in range(nqb):
        for j in range(nkb):
            tile = cells_[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            want[i, j] = 2 if tile.all() else (1 if tile.any() else 0)
    np.testing.assert_array_equal(mask.blocks(Lq, Lk, bq, bk), want)


def test_a_dilated_window_at_16384_has_a_tile_map_within_the_budget():
    m = M.sliding_window(1023) & M.dilated(4)
    tile_map = m.blocks(16384, 16384, 1024, 256)
    # query block i (rows 1024 i ..) sees keys 1024 i - 1023 .. 1024 i + 1023: 8 key tiles, 4 for the first block;
    # every fourth key only, so none is full
    assert tile_map.shape == (16, 64) and (tile_map == 1).sum() == 4 + 15 * 8 and not (tile_map == 2).any()
