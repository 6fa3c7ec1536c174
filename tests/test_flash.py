"""attnlab.flash_attention (the tiled online-softmax kernel) against the reference path and a float64 loop oracle.

Tolerances: the issue's, max abs error <= 2e-6 in float32 and <= 1e-12 in float64 against the reference path.
"""

import math
import tracemalloc

import numpy as np
import pytest
import torch

import attnlab
from attnlab import masks as M
from attnlab._inputs import prepare
from attnlab.kernel import forward as flash_mod
from attnlab.kernel import layout as kernel_layout
from attnlab import planner, scores
from attnlab.kernel import RunStats, attention_weights_for, flash_attention
from attnlab.masks import EMPTY, FULL

import oracles

TOL = {np.float32: 2e-6, np.float64: 1e-12}


_qkv = oracles.qkv


def _reference(q, k, v, mask=None, **kw):
    return attnlab.scaled_dot_product_attention(q, k, v, mask, impl="reference", return_lse=True, **kw)


def _assert_matches(q, k, v, mask=None, *, ref_kw=None, **kw):
    """flash_attention equals the reference (output and lse, -inf rows included) within the issue's tolerance."""
    want, want_lse = _reference(q, k, v, mask, **(ref_kw or {}))
    got, lse = flash_attention(q, k, v, mask, return_lse=True, **kw)
    tol = TOL[q.dtype.type]
    assert got.shape == want.shape and got.dtype == q.dtype
    assert np.abs(got - want).max(initial=0) <= tol
    assert np.array_equal(np.isneginf(lse), np.isneginf(want_lse))
    finite = np.isfinite(want_lse)
    assert np.abs(lse[finite] - want_lse[finite]).max(initial=0) <= 4 * tol
    return got, lse


# --- against a float64 loop oracle written from the formula --------------------------------------------------------
def test_equals_the_loop_oracle_with_gqa_mask_and_alibi(rng):
    q, k, v = _qkv(rng, 2, 4, 2, 5, 7, D=3, Dv=2)
    allowed = oracles.both(oracles.causal(), oracles.padding([7, 4]))
    want, _, want_lse = oracles.attention(q, k, v, oracles.scaled_dot(), allowed, mod=oracles.alibi(4))
    got, lse = flash_attention(q, k, v, M.causal() & M.padding([7, 4]), score_mod=scores.alibi(4), block_q=2,
                               block_k=3, return_lse=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[q.dtype.type])
    np.testing.assert_allclose(lse, want_lse, atol=1e-12)


# --- every mask kind ------------------------------------------------------------------------------------------
MASKS = {
    "none": lambda Lq, Lk: None,
    "causal": lambda Lq, Lk: M.causal(),
    "causal_top_left": lambda Lq, Lk: M.causal("top_left"),
    "window": lambda Lq, Lk: M.sliding_window(5),
    "window_two_sided": lambda Lq, Lk: M.sliding_window(3, 4),
    "padding": lambda Lq, Lk: M.padding([Lk, max(Lk // 3, 1)]),
    "padding_queries": lambda Lq, Lk: M.padding([Lk, max(Lk // 2, 1)], q_lengths=[Lq // 2, Lq]),
    "prefix_lm": lambda Lq, Lk: M.prefix_lm(4),
    "document": lambda Lq, Lk: M.document(np.arange(Lk) // 6) & M.causal(),
    "dilated": lambda Lq, Lk: M.dilated(3) & M.causal(),
    "global": lambda Lq, Lk: M.global_tokens([0, 9]) | M.sliding_window(2),
    "random_blocks": lambda Lq, Lk: M.random_blocks(8, 2, seed=1),
    "from_function": lambda Lq, Lk: M.from_function(lambda b, h, q, kv: (q + kv) % 4 != 1),
    "not_window": lambda Lq, Lk: ~M.sliding_window(6),
    "per_head_array": lambda Lq, Lk: M.from_array(np.random.default_rng(3).random((1, 4, Lq, Lk)) < 0.6),
    "bool_array": lambda Lq, Lk: np.random.default_rng(4).random((Lq, Lk)) < 0.3,
    "bool_array_per_batch_head": lambda Lq, Lk: np.random.default_rng(5).random((2, 4, Lq, Lk)) < 0.5,
}


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_mask_kind_matches_reference(name, dtype, rng):
    Lq, Lk = 37, 41
    q, k, v = _qkv(rng, 2, 4, 2, Lq, Lk, dtype=dtype)
    _assert_matches(q, k, v, MASKS[name](Lq, Lk), block_q=8, block_k=6)


# --- relative masks: one partial-tile pattern per diagonal ----------------------------------------------------------
RELATIVE = {
    "full": (M.full(), True),
    "causal": (M.causal(), True),
    "causal_top_left": (M.causal("top_left"), True),
    "window": (M.sliding_window(5, 2, align="top_left"), True),
    "dilated": (M.dilated(3), True),
    "not_causal": (~M.causal(), True),
    "and_or_not_mixed_aligns": ((M.causal() & ~M.dilated(2)) | M.sliding_window(3, align="top_left"), True),
    "full_or_causal": (M.full() | M.causal(), True),
    "padding": (M.padding([5, 3]), False),
    "document": (M.document(np.arange(12) // 4), False),
    "global": (M.global_tokens([0]), False),
    "random_blocks": (M.random_blocks(4, 1), False),
    "key_prefix": (M.key_prefix(3), False),
    "prefix_lm": (M.prefix_lm(3), False),
    "from_array": (M.from_array(np.tril(np.ones((4, 4), bool))), False),
    "from_function": (M.from_function(lambda b, h, q, kv: kv <= q), False),
    "causal_and_padding": (M.causal() & M.padding([5, 3]), False),
    "window_or_global": (M.sliding_window(2) | M.global_tokens([0]), False),
    "not_padding": (~M.padding([5, 3]), False),
}


@pytest.mark.parametrize("name", sorted(RELATIVE))
def test_relative_flag_of_every_kind_and_combination(name):
    mask, relative = RELATIVE[name]
    assert mask.relative is relative
    if relative:     # the definition: for fixed Lq, Lk the mask depends on q_idx - kv_idx only
        Lq, Lk = 9, 13
        grid = mask.to_array(Lq, Lk)
        diff = np.arange(Lq)[:, None] - np.arange(Lk)[None, :]
        for d in np.unique(diff):
            assert len(np.unique(grid[diff == d])) == 1


@pytest.mark.parametrize("mask", [M.causal(), M.causal("top_left"), M.sliding_window(7, 3),
                                  M.sliding_window(4, align="top_left") | (M.dilated(3) & M.causal("top_left")),
                                  ~M.sliding_window(5)], ids=str)
def test_cached_tile_patterns_equal_evaluated_ones(mask, rng):
    """Every tile the kernel computes gets the same state, blocked cells and key range from the pattern cache as
    from evaluating the mask on that tile; random sizes (Lq != Lk both ways) and blocks that do not divide them."""
    from attnlab import planner

    for _ in range(6):
        Lq, Lk = (int(x) for x in rng.integers(1, 90, 2))
        bq, bk = (int(x) for x in rng.integers(1, 20, 2))
        q, k, v = _qkv(rng, 1, 2, 2, Lq, Lk, D=4)
        pb = flash_mod.problem(prepare(q, k, v, "test"), mask, None, None, None, "test")
        maps = planner.TileMaps(mask, pb.lay, bq, bk)
        for i, j in zip(*np.nonzero(maps[(0, 0)] != EMPTY)):
            qs, qe, ks, ke = i * bq, min(Lq, (i + 1) * bq), j * bk, min(Lk, (j + 1) * bk)
            q_pos = np.arange(qs, qe)
            state, parts = pb.tile((0, 0), slice(qs, qe), q_pos, ks, ke, maps[(0, 0)][i, j])
            if maps[(0, 0)][i, j] == FULL:
                assert (state, parts) == (FULL, [(0, qe - qs, None, ks, ke)])
                continue
            want_state, want = pb._pattern((0, 0), slice(qs, qe), q_pos, ks, ke)
            assert state == want_state and len(parts) == len(want)
            for (a, b, blocked, s, e), (wa, wb, w_blocked, w_first, w_stop) in zip(parts, want):
                assert (a, b, s, e) == (wa, wb, ks + w_first, ks + w_stop)
                allowed = mask.evaluate(Lq, Lk, q_pos[a:b, None], np.arange(s, e)[None, :])   # (b - a, e - s)
                assert allowed.any()
                if blocked is None:
                    assert allowed.all() and w_blocked is None
                else:
                    np.testing.assert_array_equal(blocked, w_blocked)
                    np.testing.assert_array_equal(blocked[0], ~allowed)
        assert len(pb._patterns) <= planner.MASK_PATTERNS


def test_a_causal_diagonal_shares_one_pattern(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 64, 64, D=4)
    pb = flash_mod.problem(prepare(q, k, v, "test"), M.causal(), None, None, None, "test")
    for i in range(8):                                                # the 8 diagonal tiles of 8 x 8 blocks
        state, [(_, _, blocked, _, _)] = pb.tile((0, 0), slice(8 * i, 8 * i + 8), np.arange(8 * i, 8 * i + 8),
                                                 8 * i, 8 * i + 8, M.PARTIAL)
        np.testing.assert_array_equal(blocked[0], ~np.tri(8, dtype=bool))
    assert list(pb._patterns) == [(8, 8, 0)]


@pytest.mark.parametrize("patterns", [0, 1, 8])
def test_relative_masks_match_the_reference_whatever_the_pattern_cache_holds(patterns, rng, monkeypatch):
    from attnlab import planner

    monkeypatch.setattr(kernel_layout, "MASK_PATTERNS", patterns)
    for Lq, Lk in ((61, 100), (100, 61), (77, 77)):
        q, k, v = _qkv(rng, 1, 4, 2, Lq, Lk, dtype=np.float32)
        for mask in (M.causal(), M.causal("top_left"), M.sliding_window(9, 2), M.dilated(3) & M.causal()):
            _assert_matches(q, k, v, mask, block_q=12, block_k=9)


# --- sizes, blocks, shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("Lq, Lk", [(1, 1), (7, 7), (97, 97), (1023, 1023), (1025, 1025), (7, 1025), (1025, 7),
                                    (97, 1), (1, 97)])
def test_odd_sizes_and_blocks_that_do_not_divide_them(Lq, Lk, rng):
    q, k, v = _qkv(rng, 1, 2, 2, Lq, Lk, D=8, dtype=np.float32)
    for mask in (None, M.causal()):
        _assert_matches(q, k, v, mask, block_q=100, block_k=33)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_default_blocks_both_dtypes_and_lq_neq_lk_both_ways(dtype, rng):
    for Lq, Lk in ((300, 1100), (1100, 300)):
        q, k, v = _qkv(rng, 1, 4, 2, Lq, Lk, D=32, dtype=dtype)
        for mask in (None, M.causal(), M.sliding_window(64)):
            _assert_matches(q, k, v, mask)


def test_gqa_mqa_and_broadcast_leading_dims_without_copying(rng):
    q = rng.standard_normal((3, 8, 20, 16))
    k, v = rng.standard_normal((1, 2, 30, 16)), rng.standard_normal((1, 2, 30, 8))
    _assert_matches(q, k, v, M.causal(), block_q=7, block_k=9)                        # GQA, batch broadcast
    _assert_matches(q, k[:, :1], v[:, :1], M.sliding_window(4), block_q=7, block_k=9)  # MQA
    _assert_matches(q[0, 0], k[0, 0], v[0, 0], block_q=7, block_k=9)                  # 2-D
    _assert_matches(q[:, 0], k[0, :1], v[0, :1], M.padding([30, 10, 5]), block_q=7, block_k=9)  # 3-D: batch
    _assert_matches(q[0], k[0, :1], v[0, :1], block_q=7)                              # (H, L, D) vs (1, L, D)


def test_layout_views_do_not_copy_the_inputs(rng):
    from attnlab.planner import layout

    q, k, v = _qkv(rng, 2, 8, 2, 10, 12)
    lay = layout(prepare(q, k, v, "test"))
    assert lay.r == 4 and lay.lead == (2, 2)
    assert all(np.shares_memory(a, b) for a, b in ((lay.q, q), (lay.k, k), (lay.v, v)))


@pytest.mark.parametrize("mod", [scores.alibi(4), scores.softcap(2.0), scores.alibi(4, symmetric=True),
                                 scores.relative_bias(np.linspace(-1, 1, 4 * 9).reshape(4, 9)),
                                 scores.softcap(5.0).then(scores.alibi(4))], ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_modifiers_per_tile(mod, dtype, rng):
    q, k, v = _qkv(rng, 2, 4, 2, 33, 45, dtype=dtype)
    _assert_matches(q, k, v, M.causal(), score_mod=mod, block_q=8, block_k=10, ref_kw={"score_mod": mod})


def test_additive_bias_array_sliced_per_tile(rng):
    q, k, v = _qkv(rng, 2, 4, 2, 19, 23)
    bias = rng.standard_normal((4, 19, 23))
    bias[1, 3, :] = -np.inf                                                           # a fully blocked row
    _assert_matches(q, k, v, M.causal(), bias=bias, block_q=4, block_k=5, ref_kw={"bias": bias})


def test_custom_scale(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 30, 30)
    _assert_matches(q, k, v, M.causal(), scale=0.3, block_q=8, block_k=8, ref_kw={"scale": 0.3})


# --- edge cases ---------------------------------------------------------------------------------------------------
def test_fully_masked_rows_give_zero_and_minus_inf_lse(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 12, 12)
    out, lse = _assert_matches(q, k, v, M.causal("top_left") & M.sliding_window(0) & M.key_prefix(0) |
                               M.padding([12], q_lengths=[5]) & M.causal(), block_q=4, block_k=4)
    assert np.all(out[..., 5:, :] == 0) and np.all(np.isneginf(lse[..., 5:]))


def test_empty_lengths(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 4, 0)
    out, lse = flash_attention(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 4, 16) and np.all(out == 0) and np.all(np.isneginf(lse))
    assert flash_attention(q[:, :, :0], k, v).shape == (1, 2, 0, 16)


def test_non_finite_values_reach_only_the_rows_that_attend_to_them(rng):
    q, k, v = _qkv(rng, 1, 1, 1, 6, 6)
    v[0, 0, 3, 1] = np.inf
    v[0, 0, 5, 0] = np.nan
    _assert_matches_nan(q, k, v, M.causal(), block_q=2, block_k=2)
    k[0, 0, 4] = np.nan
    _assert_matches_nan(q, k, v, M.causal(), block_q=4, block_k=2)


def _assert_matches_nan(q, k, v, mask, **kw):
    want = attnlab.scaled_dot_product_attention(q, k, v, mask, impl="reference")
    got = flash_attention(q, k, v, mask, **kw)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[q.dtype.type])


def test_rising_scores_take_the_overflow_fallback_and_stay_exact(rng):
    """Keys growing in size push later tiles far above the running max folded into the matmul: exp2 would
    overflow, the kernel must notice and rescale."""
    D = 8
    q = np.abs(rng.standard_normal((1, 1, 64, D))).astype(np.float32)
    k = (np.abs(rng.standard_normal((1, 1, 256, D))) * np.linspace(0.1, 60, 256)[:, None]).astype(np.float32)
    v = rng.standard_normal((1, 1, 256, D)).astype(np.float32)
    want = attnlab.scaled_dot_product_attention(q, k, v, impl="reference")
    got = flash_attention(q, k, v, block_q=64, block_k=16)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-5)     # scores of ~1000: float32 scores carry ~1e-4 each


def _count_passes(monkeypatch):
    """Record the ``careful`` flag of every pass the kernel makes over a task."""
    passes = []
    run = flash_mod._tiles

    def spy(*args, careful):
        passes.append(careful)
        return run(*args, careful=careful)
    monkeypatch.setattr(flash_mod, "_tiles", spy)
    return passes


def test_ordinary_inputs_take_one_unchecked_pass_per_task(rng, monkeypatch):
    passes = _count_passes(monkeypatch)
    q, k, v = _qkv(rng, 1, 2, 2, 300, 300, dtype=np.float32)
    _assert_matches(q, k, v, M.causal(), block_q=64, block_k=32)
    assert passes and not any(passes)


def test_overflow_and_non_finite_inputs_redo_the_task_carefully(rng, monkeypatch):
    passes = _count_passes(monkeypatch)
    q = np.ones((1, 1, 32, 4), np.float32)
    k = np.concatenate([np.zeros((32, 4)), np.full((32, 4), 60.0)]).astype(np.float32)[None, None]
    v = rng.standard_normal((1, 1, 64, 4)).astype(np.float32)
    _assert_matches(q, k, v, block_q=32, block_k=32, threads=1)  # the second tile is 2^170 above the probe's shift
    assert passes == [False, True]
    passes.clear()
    v[0, 0, 5, 2] = np.inf                                       # its weight underflows to 0: reaches no row
    v[0, 0, 40, 1] = np.nan                                      # reaches the rows that may attend to key 40
    _assert_matches_nan(q, k, v, M.causal(), block_q=32, block_k=16, threads=1)
    assert passes == [False, True]


@pytest.mark.parametrize("seed", range(6))
def test_rows_started_at_different_tiles_keep_their_own_shift(seed):
    """Tall tiles fold each row's shift into the matmul; random masks start rows at different tiles, by a probe
    (a free piece) or by the rescaling step (a masked one), and leave some rows empty."""
    rng = np.random.default_rng(seed)
    Lq, Lk = 70, 90
    q, k, v = _qkv(rng, 1, 4, 2, Lq, Lk)
    q *= 1 + 3 * rng.random((1, 4, Lq, 1))                      # rows of very different score ranges
    mask = rng.random((1, 4, Lq, Lk)) < rng.uniform(0.05, 0.9)
    mask[..., rng.integers(0, Lq, 3), :] = False                 # rows with nothing to attend to
    block_q = planner.FOLD_MIN_ROWS
    _assert_matches(q, k, v, mask, block_q=block_q, block_k=int(rng.integers(3, 20)))
    _assert_matches(q, k, v, M.from_array(mask), block_q=block_q, block_k=int(rng.integers(3, 20)))


def test_threads_do_not_change_the_result(rng):
    q, k, v = _qkv(rng, 1, 4, 4, 600, 600, dtype=np.float32)
    runs = [flash_attention(q, k, v, M.causal(), threads=t, block_q=64, block_k=64) for t in (1, 2, 3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


def test_a_worker_error_reaches_the_caller(rng):
    q, k, v = _qkv(rng, 1, 4, 4, 600, 600)

    def boom(s, b, h, q_idx, kv_idx):
        if q_idx.min() > 300:
            raise RuntimeError("boom in a tile")
        return s
    with pytest.raises(RuntimeError, match="boom in a tile"):
        flash_attention(q, k, v, score_mod=scores.score_mod(boom), threads=2, block_q=32, block_k=64)


# --- tiles skipped -----------------------------------------------------------------------------------------------
def test_causal_skips_the_tiles_above_the_diagonal(rng):
    n, b = 1024, 128
    q, k, v = _qkv(rng, 1, 2, 2, n, n, dtype=np.float32)
    stats = RunStats()
    _assert_matches(q, k, v, M.causal(), block_q=b, block_k=b, stats=stats)
    t = n // b                                                       # 8 x 8 tiles per head
    assert stats.tiles.empty == 2 * t * (t - 1) // 2                  # strictly above the diagonal: skipped
    assert stats.tiles.partial == 2 * t                               # the diagonal: mask evaluated
    assert stats.tiles.full == 2 * t * (t - 1) // 2                   # below: no mask evaluated
    assert stats.tiles == attnlab.plan(q.shape, k.shape, mask=M.causal(), block_q=b, block_k=b).tiles


def test_sliding_window_computes_O_n_w_tiles(rng):
    w, b = 64, 64
    counts = {}
    for n in (1024, 2048):
        q, k, v = _qkv(rng, 1, 1, 1, n, n, dtype=np.float32)
        stats = RunStats()
        _assert_matches(q, k, v, M.sliding_window(w - 1), block_q=b, block_k=b, stats=stats)
        counts[n] = stats.tiles
    assert counts[1024].computed == 2 * (1024 // b) - 1               # the diagonal and the one just below it
    assert counts[2048].computed == 2 * counts[1024].computed + 1     # linear in n
    assert counts[2048].empty > 0.9 * counts[2048].total


def test_boolean_array_masks_are_classified_per_tile(rng):
    n, b = 256, 32
    q, k, v = _qkv(rng, 1, 1, 1, n, n)
    stats = RunStats()
    _assert_matches(q, k, v, M.causal().to_array(n, n), block_q=b, block_k=b, stats=stats)
    assert (stats.tiles.empty, stats.tiles.partial, stats.tiles.full) == (28, 8, 28)


def test_head_dependent_masks_merge_the_group_tile_maps(rng):
    from attnlab.planner import TileMaps, layout

    per_head = np.zeros((1, 4, 64, 64), bool)
    per_head[0, 0, :, :32] = True                                     # head 0 sees the left half
    per_head[0, 1] = True                                             # head 1 sees everything
    q, k, v = _qkv(rng, 1, 4, 2, 64, 64)
    mask = M.from_array(per_head)
    maps = TileMaps(mask, layout(prepare(q, k, v, "t")), 32, 32)
    np.testing.assert_array_equal(maps[(0, 0)], [[FULL, 1], [FULL, 1]])   # heads 0, 1 share kv head 0
    np.testing.assert_array_equal(maps[(0, 1)], [[EMPTY, EMPTY], [EMPTY, EMPTY]])   # heads 2, 3 see nothing
    _assert_matches(q, k, v, mask, block_q=32, block_k=32)


# --- log-sum-exp: merging and recomputing weights ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merging_two_halves_equals_the_whole(dtype, rng):
    q, k, v = _qkv(rng, 2, 4, 2, 50, 90, dtype=dtype)
    whole, whole_lse = flash_attention(q, k, v, return_lse=True, block_q=16, block_k=16)
    a = flash_attention(q, k[:, :, :40], v[:, :, :40], return_lse=True, block_k=16)
    b = flash_attention(q, k[:, :, 40:], v[:, :, 40:], return_lse=True, block_k=16)
    out, lse = attnlab.merge_attention(*a, *b)
    np.testing.assert_allclose(out, whole, atol=TOL[dtype])
    np.testing.assert_allclose(lse, whole_lse, atol=4 * TOL[dtype])


def test_split_kv_decoding_merges_partials(rng, monkeypatch):
    monkeypatch.setattr(kernel_layout, "DECODE_BYTES_PER_THREAD", 1000)  # enough keys for 4 threads at this size
    q, k, v = _qkv(rng, 1, 1, 1, 1, 5000, dtype=np.float32)
    stats = RunStats()
    _assert_matches(q, k, v, M.causal(), threads=4, block_k=512, stats=stats)
    assert stats.kv_splits == 4 and stats.tasks == 4 and stats.threads == 4


@pytest.mark.parametrize("mask", [None, M.causal(), M.sliding_window(700), M.padding([3000, 4999, 10]),
                                  "array", M.causal() & M.padding([0, 4000, 10])],
                         ids=["dense", "causal", "window", "padding", "array", "causal_padding_empty_row"])
@pytest.mark.parametrize("Lq, n_kv_heads", [(1, 4), (1, 2), (3, 1), (2, 2)])
def test_decoding_all_heads_at_once_equals_the_reference(mask, Lq, n_kv_heads, rng, monkeypatch):
    """Few query rows (r * Lq < FOLD_MIN_ROWS) run every head in one batched task per key split."""
    monkeypatch.setattr(kernel_layout, "DECODE_BYTES_PER_THREAD", 10_000)
    q, k, v = _qkv(rng, 3, 4, n_kv_heads, Lq, 5000, dtype=np.float32)
    if isinstance(mask, str):
        mask = rng.random((3, 1, Lq, 5000)) < 0.3
    stats = RunStats()
    _assert_matches(q, k, v, mask, threads=3, block_k=512, stats=stats)
    assert stats.tasks == stats.kv_splits == 3 and stats.block_q == Lq
    if not isinstance(mask, np.ndarray):
        assert stats.tiles == attnlab.plan(q.shape, k.shape, mask=mask, impl="tiled", block_k=512).tiles


def test_decoding_all_heads_at_once_keeps_non_finite_values_to_their_rows(rng):
    q, k, v = _qkv(rng, 1, 4, 2, 1, 300, dtype=np.float32)
    v[0, 1, 17, 3] = np.inf
    v[0, 0, 200, 0] = np.nan
    k[0, 0, 5] = 100.0                                          # key 5 takes all the weight of some heads
    _assert_matches_nan(q, k, v, M.sliding_window(150), block_k=64)


@pytest.mark.parametrize("mask, rows", [(None, [0, 5, 39]), (M.causal(), slice(10, 20)), (M.sliding_window(3), 7),
                                        ("array", [-1, 2])], ids=["dense", "causal", "window", "array"])
def test_recomputed_rows_equal_reference_weights(mask, rows, rng):
    q, k, v = _qkv(rng, 2, 4, 2, 40, 50)
    if isinstance(mask, str):
        mask = rng.random((2, 4, 40, 50)) < 0.4
        mask[1, 2, -1] = False                                        # a fully masked row: weights 0
    _, lse = flash_attention(q, k, v, mask, return_lse=True, block_q=8, block_k=8)
    _, want = attnlab.scaled_dot_product_attention(q, k, v, mask, impl="reference", return_weights=True)
    got = attention_weights_for(q, k, rows=rows, lse=lse, mask=mask)
    np.testing.assert_allclose(got, np.atleast_3d(want[..., np.arange(40)[rows], :]).reshape(got.shape),
                               atol=1e-12)


def test_recomputed_rows_with_a_score_modifier_float32(rng):
    q, k, v = _qkv(rng, 1, 4, 4, 64, 64, dtype=np.float32)
    mod = scores.alibi(4)
    _, lse = flash_attention(q, k, v, M.causal(), score_mod=mod, return_lse=True)
    _, want = attnlab.scaled_dot_product_attention(q, k, v, M.causal(), score_mod=mod, return_weights=True)
    got = attention_weights_for(q, k, rows=[0, 63], lse=lse, mask=M.causal(), score_mod=mod)
    np.testing.assert_allclose(got, want[..., [0, 63], :], atol=2e-6)


# --- memory: never Lq x Lk ---------------------------------------------------------------------------------------
def test_peak_memory_stays_far_below_the_score_matrix(rng):
    n, D = 16384, 16                                 # naive: 4 n^2 bytes = 1 GiB for one float32 score matrix
    q, k, v = (rng.standard_normal((1, 1, n, D), dtype=np.float32) for _ in range(3))
    mask = M.sliding_window(1023)                    # keeps the run short; the tiles visited are dense ones
    assert attnlab.plan(q.shape, k.shape, mask=mask, impl="reference", budget=2**40).reference_bytes > 2**30
    flash_attention(q, k, v, mask)                   # warm-up: the thread pool, BLAS buffers
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = flash_attention(q, k, v, mask)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak - out.nbytes < 16 * 2**20           # MiB, not GiB
    want = attnlab.scaled_dot_product_attention(q[..., -64:, :], k, v, mask, impl="reference")
    assert np.abs(out[..., -64:, :] - want).max() <= 2e-6


# --- decoding with a KV cache ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_kv_heads, rope", [(4, None), (2, 10000.0), (1, None)])
def test_token_by_token_decoding_equals_the_full_causal_pass(n_kv_heads, rope, rng, monkeypatch):
    layer = attnlab.MultiHeadAttention(32, 4, n_kv_heads, seed=0, rope_base=rope, dtype=np.float64)
    x = rng.standard_normal((2, 24, 32))
    full = layer(x, mask=M.causal())
    calls = []
    real = attnlab.kernel.forward.tiled
    monkeypatch.setattr(attnlab.kernel.forward, "tiled", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cache = attnlab.KVCache()
    prefix = layer(x[:, :5], mask=M.causal(), cache=cache)          # a prompt, then one token at a time
    steps = [layer(x[:, t:t + 1], mask=M.causal(), cache=cache) for t in range(5, 24)]
    got = np.concatenate([prefix] + steps, axis=1)
    np.testing.assert_allclose(got, full, atol=1e-12)
    assert len(calls) == 19                                          # every single-token step ran the kernel


def test_decode_cost_grows_linearly_with_context(rng):
    """Tiles visited by one decode step: proportional to the context (no n^2 anywhere)."""
    tiles = []
    for n in (4096, 8192):
        q, k, v = _qkv(rng, 1, 8, 8, 1, n, D=8, dtype=np.float32)
        stats = RunStats()
        _assert_matches(q, k, v, M.causal(), block_k=256, stats=stats)
        tiles.append(stats.tiles.computed)
    assert tiles[1] == 2 * tiles[0]


# --- errors -----------------------------------------------------------------------------------------------------
def test_errors_name_the_argument(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 4, 4)
    with pytest.raises(TypeError, match="NumPy arrays"):
        flash_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v))
    with pytest.raises(TypeError, match="float32 and float64"):
        flash_attention(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16))
    with pytest.raises(ValueError, match="block_q must be a positive integer"):
        flash_attention(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        flash_attention(q, k, v, threads=0)
    with pytest.raises(TypeError, match="bias_fn must be an attnlab.scores.ScoreMod"), \
            pytest.warns(DeprecationWarning, match="bias_fn"):
        flash_attention(q, k, v, bias_fn=lambda s: s)
    with pytest.raises(TypeError, match="scale must be a number"):
        flash_attention(q, k, v, scale="big")
    with pytest.raises(ValueError, match="key has head dim 3 but query has 16"):
        flash_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="defined for batch size 3"):
        flash_attention(q, k, v, M.padding([4, 4, 4]))
    with pytest.raises(TypeError, match="boolean"):
        flash_attention(q, k, v, np.ones((4, 4)))
    with pytest.raises(ValueError, match="does not broadcast"):
        flash_attention(q, k, v, np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="rows must be"):
        attention_weights_for(q, k, rows=[9], lse=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"lse must be a NumPy array of shape \(1, 2, 4\)"):
        attention_weights_for(q, k, rows=0, lse=np.zeros((2, 4)))
    assert math.isfinite(float(flash_attention(q, k, v).sum()))


def test_bias_fn_is_a_deprecated_name_of_score_mod(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 9, 11)
    mod = scores.alibi(2)
    want = flash_attention(q, k, v, M.causal(), score_mod=mod)
    with pytest.warns(DeprecationWarning, match="bias_fn=.* is deprecated; pass score_mod="):
        got = flash_attention(q, k, v, M.causal(), bias_fn=mod)
    np.testing.assert_array_equal(got, want)
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="not both"):
        flash_attention(q, k, v, score_mod=mod, bias_fn=mod)
