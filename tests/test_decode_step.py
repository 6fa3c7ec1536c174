"""The decode step's short road (``attnlab.kernel.decode.step``) against the float64 reference and a loop oracle.

A KV-cache loop calls ``flash_attention`` with one query row per head, no mask and default tiles; that call skips
the general route (problem, tile maps, call plan, task queue) and must compute exactly what it computes: the
same output and log-sum-exp within flash-attention's float32 rule, the same tiles, threads and key splits in
``RunStats`` and in ``plan()``, the same answers for non-finite inputs. Masked one-row calls take the general
route; they are checked here too (padding, window, causal with query length 1).
"""

import numpy as np
import pytest

import attnlab
from attnlab import masks as M
from attnlab.kernel import RunStats, flash_attention
from attnlab.kernel import decode as decode_mod
from attnlab.kernel import layout as kernel_layout

import oracles

TOL = {np.float32: 2e-6, np.float64: 1e-12}


_qkv = oracles.qkv


def _check(q, k, v, mask=None, **kw):
    """The kernel equals the float64 reference (output and lse) within the float32 rule (2e-6) or 1e-12."""
    want, want_lse = attnlab.scaled_dot_product_attention(*(x.astype(np.float64) for x in (q, k, v)), mask,
                                                          impl="reference", return_lse=True,
                                                          scale=kw.get("scale"))
    got, lse = flash_attention(q, k, v, mask, return_lse=True, **kw)
    tol = TOL[q.dtype.type]
    assert got.shape == want.shape and got.dtype == q.dtype and lse.shape == want_lse.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))                      # NaN exactly where the reference's
    assert np.abs(np.nan_to_num(got - want)).max(initial=0) <= tol
    assert np.array_equal(np.isneginf(lse), np.isneginf(want_lse))
    finite = np.isfinite(want_lse)
    scale = np.maximum(1, np.abs(want_lse[finite]))                           # lse ~ the scores: relative
    assert (np.abs(lse[finite] - want_lse[finite]) / scale).max(initial=0) <= 4 * tol
    return got, lse


@pytest.fixture
def taken(monkeypatch):
    """Counts the calls that took the short road (a step that returned a result)."""
    calls = []
    real = decode_mod.step

    def spy(*args, **kw):
        result = real(*args, **kw)
        calls.append(result is not None)
        return result
    monkeypatch.setattr("attnlab.kernel.forward.decode_step", spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [1, 3, 8])
@pytest.mark.parametrize("Lk", [1, 7, 257, 1001])
def test_the_short_road_equals_the_reference_for_gqa_ratios_and_odd_contexts(rng, taken, dtype, ratio, Lk):
    q, k, v = _qkv(rng, 2, 2 * ratio if ratio > 1 else 4, 2 if ratio > 1 else 4, 1, Lk, D=16, dtype=dtype)
    _check(q, k, v)
    assert taken == [True]


def test_the_short_road_equals_a_float64_loop_oracle(rng, taken):
    q, k, v = _qkv(rng, 1, 6, 2, 1, 9, D=3, Dv=2)
    want, _, want_lse = oracles.attention(q, k, v, oracles.scaled_dot(0.7), None)
    got, lse = flash_attention(q, k, v, scale=0.7, return_lse=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=0, atol=1e-12)
    assert taken == [True]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_keys_merge_exactly_and_report_what_ran(rng, monkeypatch, taken, threads):
    """Small tunables force several key blocks and splits (as a 32k context has): the parts merged by their
    log-sum-exp equal the reference, and RunStats says what the general route says for the same call."""
    monkeypatch.setattr(kernel_layout, "DECODE_KEYS", 64)
    monkeypatch.setattr(kernel_layout, "TILE_SCORES", 64)
    monkeypatch.setattr(kernel_layout, "DECODE_BYTES_PER_THREAD", 2**10)
    q, k, v = _qkv(rng, 1, 8, 2, 1, 1000, D=8, dtype=np.float32)
    short = RunStats()
    _check(q, k, v, threads=threads, stats=short)
    general = RunStats()
    flash_attention(q, k, v, threads=threads, stats=general, block_k=short.block_k)    # tiles given: general route
    assert taken == [True, False]
    assert short == general and short.kv_splits == min(threads, short.tiles.total // 2)
    plan = attnlab.plan(q.shape, k.shape, impl="tiled", threads=threads)
    assert plan.threads == short.threads and plan.tiles == short.tiles


@pytest.mark.parametrize("n, splits", [(5000, 1), (17000, 2)])   # 20 MiB of K, V: 1 block; 66 MiB: 3 blocks, 2 threads
def test_the_plan_says_what_the_short_road_runs_at_long_contexts(rng, n, splits):
    q, k, v = _qkv(rng, 1, 8, 8, 1, n, D=64, dtype=np.float32)
    stats = RunStats()
    _check(q, k, v, threads=2, stats=stats)
    plan = attnlab.plan(q.shape, k.shape, impl="tiled", threads=2)
    assert (stats.threads, stats.kv_splits, stats.block_k) == (plan.threads, splits, plan.block_k)
    assert plan.tiles == stats.tiles


@pytest.mark.parametrize("q_shape, k_shape", [((3, 1, 16), (3, 20, 16)),            # no batch axis
                                              ((1, 16), (20, 16)),                  # one head, 2-D
                                              ((2, 4, 1, 16), (1, 4, 20, 16)),      # keys broadcast over batch
                                              ((1, 4, 1, 16), (2, 4, 20, 16)),      # the query broadcast
                                              ((2, 8, 2, 16), (2, 2, 20, 16))])     # 4 heads x 2 rows: 8 < 16
def test_shapes_and_broadcasting_on_the_short_road(rng, taken, q_shape, k_shape):
    q = rng.standard_normal(q_shape)
    k, v = rng.standard_normal(k_shape), rng.standard_normal(k_shape)
    _check(q, k, v)
    assert taken == [True]


def test_non_finite_values_reach_only_the_rows_that_attend_to_them(rng, taken):
    q, k, v = _qkv(rng, 1, 4, 2, 1, 40, D=8)
    v[0, 0, 5, 3] = np.inf
    k[0, 1, 7, 0] = np.nan
    got, _ = _check(q, k, v)
    assert np.isnan(got[0, 2:]).all() and np.isnan(got[0, :2, 0, 3]).all()
    assert np.isfinite(np.delete(got[0, :2, 0], 3, axis=-1)).all()
    assert taken == [True]


def test_huge_scores_stay_exact(rng, taken):
    q, k, v = _qkv(rng, 1, 2, 2, 1, 300, D=8, dtype=np.float32)
    _check(q * 1e3, k * 1e3, v)
    assert taken == [True]


def test_calls_the_short_road_does_not_take_go_the_general_route(rng, taken):
    q, k, v = _qkv(rng, 1, 4, 4, 1, 30, D=8)
    flash_attention(q, k, v, M.causal())
    flash_attention(q, k, v, block_k=8)
    flash_attention(q, k, v, score_mod=attnlab.scores.alibi(4))
    flash_attention(q, k, v, bias=np.zeros((1, 4, 1, 30)))
    q16, k16, v16 = _qkv(rng, 1, 4, 4, 16, 30, D=8)                              # 16 rows: not the decode regime
    flash_attention(q16, k16, v16)
    assert taken == [False] * 5


@pytest.mark.parametrize("mask", [M.padding([13, 30]), M.sliding_window(7), M.causal(), M.causal("top_left"),
                                  M.sliding_window(3) | M.global_tokens([0])],
                         ids=["padding", "window", "causal", "causal_top_left", "window_or_global"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_query_with_masks_equals_the_reference(rng, mask, dtype):
    q, k, v = _qkv(rng, 2, 6, 2, 1, 30, D=8, dtype=dtype)
    _check(q, k, v, mask)


def test_the_short_road_inside_one_row_steps_keeps_blas_at_one_thread(rng):
    """A model's decoding loop holds BLAS to one thread; a decode step inside it neither changes that nor
    leaves it changed."""
    from threadpoolctl import threadpool_info

    from attnlab.models._blocks import one_row_steps

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    before = blas()
    q, k, v = _qkv(rng, 1, 8, 8, 1, 5000, D=8, dtype=np.float32)
    with one_row_steps():
        assert set(blas()) == {1}
        _check(q, k, v)
        assert set(blas()) == {1}
    assert blas() == before


def test_the_decode_benchmark_prints_its_table():
    """benchmarks/decode.py runs end to end at tiny sizes (a fresh process); timings are not asserted."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py"
    proc = subprocess.run([sys.executable, str(script), "--contexts", "64,128", "--heads", "4", "--kv-heads", "2",
                           "--head-dim", "16", "--repeat", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["hot"], ["cold"])]
    assert [(r[0], r[1]) for r in rows] == [(c, n) for c in ("hot", "cold") for n in ("64", "128")]
    assert all(float(x) > 0 for r in rows for x in r[2:5])
    assert "BLAS: " in proc.stdout and "decode step" in proc.stdout


@pytest.mark.parametrize("G, n, threads", [(8, 4096, 1), (8, 8192, 1), (8, 16384, 2), (8, 32768, 2), (2, 32768, 1),
                                           (2, 65536, 2)])
def test_decode_threads_are_sized_by_the_key_value_bytes(G, n, threads):
    """A decode step reads one key/value element per multiply-add: a second thread pays only past
    DECODE_BYTES_PER_THREAD (32 MiB) of keys and values, whatever the query heads (measured, docs/performance.md)."""
    plan = attnlab.plan((1, 8, 1, 64), (1, G, n, 64), impl="tiled", threads=2)
    assert plan.threads == threads
