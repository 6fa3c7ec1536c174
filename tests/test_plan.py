"""attnlab.plan and impl="auto"|"reference"|"tiled" in scaled_dot_product_attention: which path runs, why, in how
much memory; the memory budget is never silently exceeded."""

import tracemalloc

import numpy as np
import pytest
import torch

import attnlab
from attnlab import masks as M
from attnlab import planner
from attnlab.planner import MemoryBudgetError

sdpa = attnlab.scaled_dot_product_attention


@pytest.fixture
def spy_kernel(monkeypatch):
    """Record every call of the tiled kernel behind scaled_dot_product_attention."""
    calls = []
    real = attnlab.kernel.forward.tiled
    monkeypatch.setattr(attnlab.kernel.forward, "tiled", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    return calls


def _qkv(rng, shape_q, shape_kv, dtype=np.float32):
    return (rng.standard_normal(shape_q).astype(dtype), rng.standard_normal(shape_kv).astype(dtype),
            rng.standard_normal(shape_kv).astype(dtype))


# --- auto picks -------------------------------------------------------------------------------------------------
def test_auto_uses_the_reference_for_small_inputs(rng, spy_kernel):
    q, k, v = _qkv(rng, (2, 4, 16, 8), (2, 4, 16, 8))
    p = attnlab.plan(q.shape, k.shape)
    assert p.impl == "reference" and "faster for small inputs" in p.reason
    sdpa(q, k, v)
    assert spy_kernel == []


def test_auto_uses_the_tiled_kernel_for_large_inputs(rng, spy_kernel):
    n = 1024                                                       # 2 * 1 * n^2 = 2^21 scores
    q, k, v = _qkv(rng, (2, 1, n, 16), (2, 1, n, 16))
    p = attnlab.plan(q.shape, k.shape, mask=M.causal())
    assert p.impl == "tiled" and "TILED_FROM_SCORES" in p.reason
    out = sdpa(q, k, v, M.causal())
    assert len(spy_kernel) == 1
    np.testing.assert_allclose(out, sdpa(q, k, v, M.causal(), impl="reference"), atol=2e-6)


def test_auto_goes_tiled_above_the_budget_and_stays_within_it(rng, monkeypatch, spy_kernel):
    monkeypatch.setattr(planner, "MEMORY_BUDGET", 8 * 2**20)        # 8 MiB: the reference would need 32 MiB
    q, k, v = _qkv(rng, (1, 1, 1024, 16), (1, 1, 1024, 16), np.float64)
    p = attnlab.plan(q.shape, k.shape, dtype=np.float64, mask=M.causal())
    assert p.impl == "tiled" and "budget 8.0 MiB" in p.reason and p.reference_bytes > 8 * 2**20 > p.peak_bytes
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = sdpa(q, k, v, M.causal())
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(spy_kernel) == 1 and peak - out.nbytes < 8 * 2**20
    np.testing.assert_allclose(out, attnlab.flash_attention(q, k, v, M.causal()), atol=0)


def test_return_weights_keeps_the_reference_and_its_exact_output(rng, spy_kernel):
    n = 1024
    q, k, v = _qkv(rng, (2, 1, n, 16), (2, 1, n, 16))
    out, w = sdpa(q, k, v, return_weights=True)
    assert spy_kernel == [] and w.shape == (2, 1, n, n)
    assert "return_weights=True needs the full weight matrix" in attnlab.plan(q.shape, k.shape,
                                                                               return_weights=True).reason


def test_return_weights_above_the_budget_points_to_attention_weights_for(rng, monkeypatch):
    monkeypatch.setattr(planner, "MEMORY_BUDGET", 2**16)
    q, k, v = _qkv(rng, (1, 1, 256, 8), (1, 1, 256, 8))
    with pytest.raises(MemoryBudgetError, match="attention_weights_for"):
        sdpa(q, k, v, return_weights=True)
    with pytest.raises(MemoryBudgetError, match="cannot return the full weight matrix"):
        sdpa(q[..., :4, :], k, v, return_weights=True, impl="tiled")
    p = attnlab.plan(q.shape, k.shape, return_weights=True)
    assert p.impl is None and p.peak_bytes is None and "none fits" in str(p)


def test_explicit_reference_above_the_budget_raises(rng, monkeypatch):
    monkeypatch.setattr(planner, "MEMORY_BUDGET", 2**16)
    q, k, v = _qkv(rng, (1, 1, 256, 8), (1, 1, 256, 8))
    with pytest.raises(MemoryBudgetError, match="impl='reference' was asked for, but the reference path needs"):
        sdpa(q, k, v, impl="reference")
    np.testing.assert_allclose(sdpa(q, k, v), attnlab.flash_attention(q, k, v))   # auto: the kernel fits


# --- other array libraries -----------------------------------------------------------------------------------------
def test_torch_inputs_run_the_reference_and_tiled_is_a_clear_error(rng, spy_kernel, monkeypatch):
    q, k, v = (torch.from_numpy(x) for x in _qkv(rng, (1, 2, 8, 4), (1, 2, 8, 4)))
    out = sdpa(q, k, v, M.causal())
    assert isinstance(out, torch.Tensor) and spy_kernel == []
    assert "NumPy arrays only" in attnlab.plan(q.shape, k.shape, numpy=False).reason
    with pytest.raises(MemoryBudgetError, match="impl='tiled' was asked for, but the tiled kernel runs on NumPy"):
        sdpa(q, k, v, impl="tiled")
    monkeypatch.setattr(planner, "MEMORY_BUDGET", 64)
    with pytest.raises(MemoryBudgetError, match="convert the inputs to NumPy float32/float64 for the tiled kernel"):
        sdpa(q, k, v)


def test_float16_stays_on_the_reference(rng, spy_kernel):
    q, k, v = _qkv(rng, (1, 2, 8, 4), (1, 2, 8, 4), np.float16)
    assert sdpa(q, k, v).dtype == np.float16 and spy_kernel == []
    assert "not float16" in attnlab.plan(q.shape, k.shape, dtype="float16", impl="tiled").reason


def test_explicit_tiled_matches_reference_with_bias_and_score_mod(rng):
    q, k, v = _qkv(rng, (2, 4, 30, 8), (2, 2, 30, 8), np.float64)
    bias, mod = rng.standard_normal((4, 30, 30)), attnlab.scores.softcap(3.0)
    kw = dict(bias=bias, score_mod=mod, scale=0.7, return_lse=True)
    for got, want in zip(sdpa(q, k, v, M.causal(), impl="tiled", **kw),
                         sdpa(q, k, v, M.causal(), impl="reference", **kw)):
        np.testing.assert_allclose(got, want, atol=1e-12)


# --- the plan as a readable object -----------------------------------------------------------------------------------
def test_plan_str_and_repr_say_path_reason_memory_and_tiles():
    p = attnlab.plan((1, 8, 4096, 64), (1, 2, 4096, 64), mask=M.causal(), threads=2)
    text = str(p)
    for part in ("scores (1, 8, 4096, 4096) float32", "path:      tiled", "why:", "reference: ~", "MiB",
                 "tiles of 4 head(s)", "empty skipped"):
        assert part in text, part
    assert repr(p).startswith("Plan(impl='tiled', peak~") and "MiB" in repr(p)
    assert p.r == 4 and p.block_q * p.r == planner.TILE_ROWS and p.threads == 2
    assert p.tiles.empty > 0.4 * p.tiles.total and p.tiles.partial > 0


def test_plan_tile_counts_equal_what_the_kernel_did(rng):
    q, k, v = _qkv(rng, (2, 4, 100, 8), (2, 2, 130, 8))
    for mask in (None, M.causal(), M.sliding_window(10), M.padding([130, 40]), M.from_array(
            rng.random((1, 4, 100, 130)) < 0.01)):
        stats = attnlab.kernel.RunStats()
        attnlab.flash_attention(q, k, v, mask, block_q=16, block_k=32, stats=stats, threads=2)
        assert attnlab.plan(q.shape, k.shape, mask=mask, impl="tiled", block_q=16, block_k=32).tiles == stats.tiles


@pytest.mark.parametrize("mask", [None, M.causal()], ids=["dense", "causal"])
def test_reference_memory_estimate_matches_tracemalloc(mask, rng):
    q, k, v = _qkv(rng, (1, 4, 512, 16), (1, 4, 512, 16))
    estimate = attnlab.plan(q.shape, k.shape, mask=mask, impl="reference").peak_bytes    # output included
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sdpa(q, k, v, mask, impl="reference")
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak == pytest.approx(estimate, rel=0.25)


def test_tiled_memory_estimate_bounds_tracemalloc(rng):
    q, k, v = _qkv(rng, (1, 8, 2048, 64), (1, 8, 2048, 64))
    p = attnlab.plan(q.shape, k.shape, mask=M.causal(), impl="tiled")
    attnlab.flash_attention(q, k, v, M.causal())
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        attnlab.flash_attention(q, k, v, M.causal())
        peak = tracemalloc.get_traced_memory()[1] - base                  # the peak includes the output
    finally:
        tracemalloc.stop()
    assert 0.5 * p.tiled_bytes <= peak <= 1.25 * p.tiled_bytes


def test_split_kv_and_threads_in_the_plan():
    p = attnlab.plan((1, 1, 1, 64), (1, 1, 2**20, 64), impl="tiled", threads=4)
    assert p.threads == 4                                            # decode: keys split across the threads
    assert attnlab.plan((1, 1, 8, 8), (1, 1, 8, 8), impl="tiled", threads=4).threads == 1    # tiny: one thread


# --- errors ----------------------------------------------------------------------------------------------------------
def test_plan_and_impl_errors():
    with pytest.raises(ValueError, match="impl must be one of"):
        sdpa(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), impl="fast")
    with pytest.raises(ValueError, match="q_shape must be a tuple"):
        attnlab.plan(5, (2, 2))
    with pytest.raises(ValueError, match="k_shape must be a tuple"):
        attnlab.plan((2, 2), (2, -1))
    with pytest.raises(ValueError, match="budget must be a positive number"):
        attnlab.plan((2, 2), (2, 2), budget=0)
    with pytest.raises(ValueError, match="query has 3 heads but key/value have 2"):
        attnlab.plan((3, 4, 8), (2, 4, 8))
    assert issubclass(MemoryBudgetError, ValueError)                  # the CLI prints it as one line
