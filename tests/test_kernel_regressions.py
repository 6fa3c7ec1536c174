"""Regression cases for the kernel defects of issue 14 (written independently of test_kernel_hardening.py), plus a
seeded random search that keeps looking (issue 14: silent wrong answers and hangs). The reference here is the
formula in float64 written in this file (it shares no code with attnlab)."""

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import attnlab
from attnlab import flash_attention, flash_attention_backward, masks, scaled_dot_product_attention
from attnlab.scores import ScoreMod


def softmax_attention(q, k, v, allowed=None, scale=None):
    """out, lse of softmax(q k^T * scale) v in float64 (long double sums for the huge-magnitude cases); rows with
    nothing allowed give 0 and -inf. q (B, H, Lq, D), k/v (B, G, Lk, D), query head h reads kv head h // (H/G)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, H, Lq, D = q.shape
    G, Lk = k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(D) if scale is None else scale
    out, lse = np.zeros((B, H, Lq, v.shape[-1])), np.full((B, H, Lq), -np.inf)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for i in range(Lq):
                s = np.array([np.dot(q[b, h, i], k[b, g, j]) * scale for j in range(Lk)])
                ok = np.ones(Lk, bool) if allowed is None else np.asarray(allowed, bool)[i]
                if not ok.any():
                    continue
                m = s[ok].max()
                e = np.where(ok, np.exp(s - m), 0.0)
                out[b, h, i] = e @ v[b, g] / e.sum()
                lse[b, h, i] = m + np.log(e.sum())
    return out, lse


# --- 1: huge but finite scores -------------------------------------------------------------------------------------
def test_huge_scores_never_lose_a_row_that_has_an_allowed_key():
    # found by the random search below: seed 44 lost query 30 (output 0, lse -inf) before the fix
    r = np.random.default_rng(44)
    Lq, Lk = 80, 15
    q, k = r.standard_normal((1, 4, Lq, 8)) * 1e12, r.standard_normal((1, 1, Lk, 8)) * 1e12
    v = r.standard_normal((1, 1, Lk, 8))
    out, lse = flash_attention(q, k, v, block_q=16, block_k=64, threads=1, return_lse=True)
    ref, ref_lse = softmax_attention(q, k, v)
    assert np.isfinite(lse).all()
    np.testing.assert_allclose(out, ref, atol=1e-9)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-9)


def test_random_search_over_magnitudes_masks_and_tiles():
    bad = []
    for seed in range(120):
        r = np.random.default_rng(seed)
        Lq, Lk = int(r.integers(1, 90)), int(r.integers(1, 90))
        H = int(r.choice([1, 2, 4]))
        G = int(r.choice([g for g in (1, 2, 4) if H % g == 0]))
        mag = float(r.choice([1.0, 1e6, 1e12]))
        q, k = r.standard_normal((1, H, Lq, 8)) * mag, r.standard_normal((1, G, Lk, 8)) * mag
        v = r.standard_normal((1, G, Lk, 8))
        kind = seed % 4
        if kind == 0:                                    # one allowed key per row
            allowed = np.zeros((Lq, Lk), bool)
            allowed[np.arange(Lq), r.integers(0, Lk, Lq)] = True
        elif kind == 1:
            allowed = np.asarray(masks.causal().to_array(Lq, Lk))
        elif kind == 2:                                  # some rows fully masked
            allowed = r.random((Lq, Lk)) < 0.3
        else:
            allowed = None
        out = flash_attention(q, k, v, mask=allowed, block_q=int(r.choice([8, 16, 64])),
                              block_k=int(r.choice([8, 16, 64])), threads=int(r.choice([1, 2])))
        ref, _ = softmax_attention(q, k, v, allowed)
        if not np.allclose(out, ref, atol=1e-8):
            bad.append(seed)
        if allowed is not None:
            empty = ~allowed.any(-1)
            assert (out[..., empty, :] == 0).all()       # fully masked rows: exactly 0, never NaN
    assert bad == []


def test_backward_at_huge_scale_stays_finite_and_matches_where_it_is_well_conditioned():
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, 2, 20, 8)) for _ in range(3))
    for scale in (1e3, 1e6, 1e12):
        out, lse = flash_attention(q, k, v, scale=scale, return_lse=True)
        dout = r.standard_normal(out.shape)
        got = flash_attention_backward(dout, q, k, v, out, lse, scale=scale)
        ref = attnlab.attention_backward(dout, q, k, v, scale=scale)
        # recomputing P from the log-sum-exp rounds at eps * |score|, and dq, dk carry another factor scale:
        # agreement is only meaningful to about scale^2 * |q| |k| * eps (1e-13 .. 1e+9 here)
        tol = 10 * scale ** 2 * 8 * np.finfo(np.float64).eps
        for a, b in zip(got, ref):
            assert np.isfinite(a).all(), scale              # never NaN where the forward is finite
            if tol < 1e-2:
                np.testing.assert_allclose(a, b, atol=tol)


# --- 3: recomputed weights stay weights ----------------------------------------------------------------------------
def test_recomputed_weights_stay_in_zero_one_and_sum_to_one_at_huge_float32_scores():
    r = np.random.default_rng(0)
    q, k = ((r.standard_normal((1, 1, 6, 4)) * 1e15).astype(np.float32) for _ in range(2))
    _, lse = flash_attention(q, k, k, return_lse=True)
    w = attnlab.attention_weights_for(q, k, rows=slice(None), lse=lse)
    assert np.isfinite(w).all() and w.min() >= 0 and w.max() <= 1
    np.testing.assert_allclose(w.sum(-1), 1, atol=1e-5)


# --- 4: empty sizes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q_shape,k_shape", [((1, 2, 0, 8), (1, 2, 5, 8)), ((1, 2, 4, 8), (1, 2, 0, 8)),
                                             ((0, 2, 4, 8), (0, 2, 4, 8)), ((1, 0, 4, 8), (1, 0, 4, 8))])
def test_empty_sizes_give_what_the_reference_gives(q_shape, k_shape):
    q, k = np.ones(q_shape), np.ones(k_shape)
    ref, ref_lse = scaled_dot_product_attention(q, k, k, impl="reference", return_lse=True)
    for out, lse in (flash_attention(q, k, k, return_lse=True),
                     scaled_dot_product_attention(q, k, k, impl="tiled", return_lse=True)):
        assert out.shape == ref.shape and np.array_equal(out, ref) and np.array_equal(lse, ref_lse)
    grads = flash_attention_backward(np.ones(ref.shape), q, k, k, ref, ref_lse)
    assert [g.shape for g in grads] == [q.shape, k.shape, k.shape] and all((g == 0).all() for g in grads)


def test_empty_query_length_through_the_torch_bridge():
    import torch

    from attnlab.integrations.torch import flash_attention as torch_flash

    q = torch.ones(1, 2, 0, 8, dtype=torch.float64, requires_grad=True)
    k = torch.ones(1, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    out = torch_flash(q, k, k)
    out.sum().backward()
    assert out.shape == (1, 2, 0, 8) and q.grad.shape == q.shape and (k.grad == 0).all()


# --- 2: nested use ------------------------------------------------------------------------------------------------
def _calls_the_kernel(s, b, h, q_idx, kv_idx, Lq, Lk):
    """A score modifier that runs the kernel itself (with threads) on every tile, and changes nothing."""
    inner = np.random.default_rng(1).standard_normal((2, 64, 8))
    flash_attention(inner, inner, inner, threads=2, block_q=16, block_k=16)
    return s


def test_a_score_modifier_that_calls_the_kernel_does_not_deadlock():
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, 4, 128, 8)) for _ in range(3))
    result = {}

    def call():
        result["out"] = flash_attention(q, k, v, score_mod=ScoreMod(_calls_the_kernel, "calls the kernel"), threads=2, block_q=32, block_k=32)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "nested flash_attention deadlocked"
    np.testing.assert_allclose(result["out"], softmax_attention(q, k, v)[0], atol=1e-10)


# --- 5: BLAS threads restored whatever the interleaving -----------------------------------------------------------
def _blas_threads():
    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_concurrent_calls_restore_the_blas_thread_count():
    before = _blas_threads()
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, 4, 256, 16)) for _ in range(3))
    errors = []

    def call(i):
        try:
            for _ in range(5):
                flash_attention(q, k, v, threads=1 + i % 2, block_q=32, block_k=32)
        except Exception as err:                          # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [] and _blas_threads() == before
