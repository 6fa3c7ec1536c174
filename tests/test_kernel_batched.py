"""The kernel's batched regime: a small problem (Lq <= layout.BATCHED_ROWS query rows per head) runs every head of
a query block in one task, one batched matmul per key block (``kernel.decode.decode_task``).

Oracles: the float64 loop oracle written from the formulas (tests/oracles.py) on a few shapes, the float64
reference (itself checked against PyTorch and the loops elsewhere) on the sweep; ``plan()`` and ``RunStats`` must
say what ran.
"""

import numpy as np
import pytest

import attnlab
from attnlab import masks as M
from attnlab.kernel import RunStats, flash_attention
from attnlab.kernel import layout

import oracles

TOL = {np.float32: 2e-6, np.float64: 1e-12}


@pytest.fixture
def batched(monkeypatch):
    """Counts the batched regime's tasks (decode_task calls with more than one query block in the call)."""
    from attnlab.kernel import decode, forward

    calls = []
    real = decode.decode_task

    def counting(pb, i, *args):
        calls.append(i)
        return real(pb, i, *args)
    monkeypatch.setattr(forward, "decode_task", counting)
    return calls


def _reference(q, k, v, mask):
    return attnlab.scaled_dot_product_attention(*(x.astype(np.float64) for x in (q, k, v)), mask,
                                                impl="reference", return_lse=True)


def _check(q, k, v, mask=None, **kw):
    want, want_lse = _reference(q, k, v, mask)
    got, lse = flash_attention(q, k, v, mask, return_lse=True, **kw)
    tol = TOL[q.dtype.type]
    assert got.shape == want.shape and got.dtype == q.dtype
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.abs(np.nan_to_num(got - want)).max(initial=0) <= tol
    assert np.array_equal(np.isneginf(lse), np.isneginf(want_lse))
    finite = np.isfinite(want_lse)
    assert np.abs(lse[finite] - want_lse[finite]).max(initial=0) <= 4 * tol
    return got, lse


def test_equals_the_loop_oracle_causal_gqa_odd_sizes(rng, batched):
    q, k, v = oracles.qkv(rng, 1, 4, 2, 150, 181, D=8)                 # Lq < Lk, 2 query blocks, r = 2
    got = flash_attention(q, k, v, M.causal())
    want, _, _ = oracles.attention(q, k, v, oracles.scaled_dot(), allowed=oracles.causal())
    assert np.abs(got - want).max() <= 1e-12
    assert sorted(batched) == [0, 1]


def test_equals_the_loop_oracle_window_more_queries_than_keys(rng, batched):
    q, k, v = oracles.qkv(rng, 2, 2, 2, 200, 97, D=8)                  # Lq > Lk: top rows see no key
    got, lse = flash_attention(q, k, v, M.sliding_window(20), return_lse=True)
    want, _, want_lse = oracles.attention(q, k, v, oracles.scaled_dot(), allowed=oracles.sliding_window(20))
    assert np.abs(got - want).max() <= 1e-12
    assert np.array_equal(np.isneginf(lse), np.isneginf(want_lse)) and np.isneginf(lse).any()
    assert len(batched) == 2


MASKS = {"dense": None, "causal": M.causal(), "window": M.sliding_window(31), "document": M.document([0, 1]),
         "prefix": M.prefix_lm(40), "padding": M.padding([300, 12]), "causal_padding": M.causal() & M.padding([0, 200]),
         "array": "array"}


@pytest.mark.parametrize("mask", list(MASKS.values()), ids=list(MASKS))
@pytest.mark.parametrize("H, G, Lq, Lk", [(4, 4, 300, 367), (4, 1, 257, 129), (8, 2, 129, 300), (2, 2, 512, 512),
                                          (3, 3, 17, 367)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_mask_gqa_and_shape_equals_the_reference(mask, H, G, Lq, Lk, dtype, rng, batched):
    q, k, v = (x.astype(dtype) for x in oracles.qkv(rng, 2, H, G, Lq, Lk, D=16))
    if isinstance(mask, str):
        mask = rng.random((2, 1, Lq, Lk)) < 0.2
    if isinstance(mask, M.Mask) and mask.name.startswith("document"):
        ids = lambda n: [0] * (n // 3) + [1] * (n // 3) + [2] * (n - 2 * (n // 3))    # three documents
        mask = M.document(ids(Lk), ids(Lq)) if Lq > Lk else M.document(ids(Lk))
    stats = RunStats()
    _check(q, k, v, mask, stats=stats)
    n_blocks = -(-Lq // 128)
    assert len(batched) == stats.tasks == n_blocks and sorted(batched) == list(range(n_blocks))
    keys = 128 if mask is not None else min(512, 2**19 // (2 * H * min(Lq, 128)))   # every head's tile <= 2^19
    assert (stats.block_q, stats.block_k) == (min(Lq, 128), min(Lk, keys)) and stats.kv_splits == 1
    if not isinstance(mask, np.ndarray):
        plan = attnlab.plan(q.shape, k.shape, mask=mask, impl="tiled", dtype=q.dtype)
        assert plan.tiles == stats.tiles and plan.threads == stats.threads
        assert (plan.block_q, plan.block_k) == (stats.block_q, stats.block_k)


def test_non_finite_values_reach_only_their_rows(rng, batched):
    q, k, v = oracles.qkv(rng, 1, 4, 2, 300, 300, D=8)
    v[0, 1, 17, 3] = np.inf
    v[0, 0, 200, 0] = np.nan
    k[0, 0, 5] = 100.0                                                  # key 5 takes all the weight of some rows
    want = attnlab.scaled_dot_product_attention(q, k, v, M.sliding_window(150), impl="reference")
    got = flash_attention(q, k, v, M.sliding_window(150))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isnan(got).any() and not np.isnan(got).all() and batched


def test_huge_scores_keep_flash_attentions_error_rule(rng, batched):
    """Later keys far above the first block's max (scores in the thousands): float32 rounds the scores
    themselves, so the rule is flash-attention's: error <= 2x PyTorch's own against float64."""
    torch = pytest.importorskip("torch")
    q, k, v = (x.astype(np.float32) for x in oracles.qkv(rng, 1, 2, 2, 200, 300, D=8))
    k *= np.linspace(0.1, 300, 300, dtype=np.float32)[:, None]
    want, _ = _reference(q, k, v, M.causal())
    got = flash_attention(q, k, v, M.causal())
    allowed = torch.from_numpy(M.causal().evaluate(200, 300, np.arange(200)[:, None], np.arange(300)[None, :]))
    theirs = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(x.copy()) for x in (q, k, v)),
                                                              attn_mask=allowed).numpy()
    assert np.abs(got - want).max() <= 2 * np.abs(theirs - want).max()
    assert batched


def test_which_problems_run_batched(rng, batched):
    """Lq above BATCHED_ROWS, tile sizes given, a score modifier, or more heads than BATCHED_SCORES holds: the
    per-head tiled path; decoding rows (r * Lq < FOLD_MIN_ROWS): the decode step."""
    big = oracles.qkv(rng, 1, 2, 2, 513, 64, D=8, dtype=np.float32)
    flash_attention(*big)
    flash_attention(*oracles.qkv(rng, 1, 2, 2, 300, 64, D=8, dtype=np.float32), block_q=64, block_k=64)
    flash_attention(*oracles.qkv(rng, 1, 2, 2, 300, 64, D=8, dtype=np.float32), score_mod=attnlab.scores.softcap(5.0))
    many = oracles.qkv(rng, 8, 8, 8, 200, 300, D=8, dtype=np.float32)   # 64 heads x 128 x 128 > 2^19 scores
    flash_attention(*many)
    flash_attention(*oracles.qkv(rng, 1, 8, 8, 1, 300, D=8, dtype=np.float32))   # the decode step's own road
    assert batched == []
    q, k, v = oracles.qkv(rng, 1, 2, 2, 300, 64, D=8, dtype=np.float32)
    flash_attention(q, k, v, block_q=128, block_k=64)                     # the batched tiles, given: batched
    assert batched == [2, 1, 0]                                           # the last query block first


@pytest.mark.parametrize("B, H, n, mask, want", [(1, 8, 512, None, (128, 512)), (1, 8, 512, M.causal(), (128, 128)),
                                                 (2, 8, 512, None, (128, 256)), (4, 8, 384, None, (128, 128)),
                                                 (2, 16, 384, M.causal(), (128, 128)), (4, 16, 256, M.causal(), None),
                                                 (8, 8, 256, None, None)])
def test_the_tiles_follow_the_mask_and_the_heads(B, H, n, mask, want, rng, batched):
    """Without a mask one 512-key block (no online rescale at n = 512); with one 128-key tiles (a partial tile
    computes all its cells); fewer keys when every head's tile passes 2^19 scores, per head below 128 keys."""
    q, k, v = (x.astype(np.float32) for x in oracles.qkv(rng, B, H, H, n, n, D=8))
    stats = RunStats()
    _check(q, k, v, mask, stats=stats)
    plan = attnlab.plan(q.shape, k.shape, mask=mask, impl="tiled", dtype=q.dtype)
    assert (plan.block_q, plan.block_k) == (stats.block_q, stats.block_k) and plan.threads == stats.threads
    if want is None:
        assert batched == [] and stats.block_q == n             # the per-head path's default tiles
    else:
        assert (stats.block_q, stats.block_k) == want and sorted(batched) == list(range(n // 128))


@pytest.mark.parametrize("mask, Lq, Lk, G, batched_run", [
    (M.causal(), 1024, 1024, 4, True), (M.causal(), 700, 900, 4, True), (M.causal(), 900, 600, 4, True),
    (M.document([0] * 300 + [1] * 400 + [2] * 324), 1024, 1024, 2, True),      # r = 2: 512-row blocks per head
    (M.causal(), 1024, 1024, 2, False),                              # r = 2: full tiles in the second block
    (M.causal() & M.padding([800]), 1000, 1000, 4, True),
    (M.prefix_lm(300), 1024, 1024, 4, False),                        # full per-head tiles: per head
    (M.sliding_window(63), 1024, 1024, 4, False),                    # the band regime takes it
    (None, 700, 700, 4, False), ("array", 700, 700, 4, False), (M.causal(), 1025, 1025, 4, False)])
def test_masks_cut_everywhere_per_head_run_batched_up_to_1024_rows(mask, Lq, Lk, G, batched_run, rng, batched):
    """Above BATCHED_ROWS, up to BATCHED_MASKED_ROWS query rows per head: a Mask whose per-head tiles would all be
    partial (every tile cut into row slices, per head) and that the band regime does not take runs batched; the
    others, dense calls and boolean arrays run per head. Exact either way, and plan() says what ran."""
    q, k, v = oracles.qkv(rng, 1, 4, G, Lq, Lk, D=8)
    if isinstance(mask, str):
        mask = rng.random((1, 1, Lq, Lk)) < 0.3
    stats = RunStats()
    _check(q, k, v, mask, stats=stats)
    assert bool(batched) == batched_run
    if batched_run:
        assert (stats.block_q, stats.block_k) == (128, 128) and sorted(batched) == list(range(-(-Lq // 128)))
    if not isinstance(mask, np.ndarray):
        plan = attnlab.plan(q.shape, k.shape, mask=mask, impl="tiled", dtype=q.dtype)
        assert (plan.block_q, plan.block_k, plan.tiles) == (stats.block_q, stats.block_k, stats.tiles)
        assert plan.threads == stats.threads


def test_threads_take_the_query_blocks(rng, batched):
    q, k, v = (x.astype(np.float32) for x in oracles.qkv(rng, 1, 8, 8, 512, 512, D=64))
    stats = RunStats()
    _check(q, k, v, M.causal(), threads=2, stats=stats)
    assert stats.threads == 2 and stats.tasks == 4 and stats.kv_splits == 1
    assert sorted(batched) == [0, 1, 2, 3]
    assert attnlab.plan(q.shape, k.shape, mask=M.causal(), impl="tiled", threads=2).threads == 2


@pytest.mark.parametrize("mask", [None, M.causal(), M.document([0] * 100 + [1] * 201)], ids=["dense", "causal", "doc"])
def test_scores_stored_by_key_or_by_row_give_the_same_result(mask, rng, batched, monkeypatch):
    """The batched regime stores a tile's scores keys first (``decode.KEYS_FIRST_ROWS``); stored by row (the
    decode rows' layout) the same call must agree with it and with the float64 reference."""
    from attnlab.kernel import decode

    q, k, v = (x.astype(np.float32) for x in oracles.qkv(rng, 1, 4, 2, 301, 301, D=16))
    by_key, _ = _check(q, k, v, mask)
    monkeypatch.setattr(decode, "KEYS_FIRST_ROWS", 10**9)
    by_row, _ = _check(q, k, v, mask)
    assert len(batched) == 2 * 3                                      # both ran batched: 3 query blocks each
    assert np.abs(by_key - by_row).max() <= 2e-6
