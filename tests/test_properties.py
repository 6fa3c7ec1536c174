"""Property tests (hypothesis): the invariants attention must satisfy, on random sizes, masks and values.

Arrays come from a NumPy generator seeded by hypothesis, so a failure shrinks to small sizes and a reproducible
seed; the profile (examples, no deadline) is set in conftest.py.
"""

import numpy as np
from hypothesis import given, strategies as st

from attnlab import KVCache, MultiHeadAttention, attention, masks as M, merge_attention, softmax
from attnlab import scaled_dot_product_attention as sdpa
from attnlab.kernel import flash_attention

seeds = st.integers(0, 2 ** 32 - 1)
lengths = st.integers(1, 9)
heads = st.sampled_from([(1, 1), (2, 2), (4, 2), (4, 1), (6, 3)])          # (H, G)


def _qkv(seed, B, H, G, Lq, Lk, D=4, Dv=3, magnitude=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, H, Lq, D)) * magnitude, rng.standard_normal((B, G, Lk, D)) * magnitude,
            rng.standard_normal((B, G, Lk, Dv)), rng)


@given(seeds, heads, lengths, lengths, st.sampled_from([1.0, 10.0, 300.0]), st.floats(0.0, 1.0))
def test_weights_are_probabilities(seed, hg, Lq, Lk, magnitude, density):
    q, k, v, rng = _qkv(seed, 2, *hg, Lq, Lk, magnitude=magnitude)
    keep = rng.random((2, hg[0], Lq, Lk)) < density
    out, w = sdpa(q, k, v, keep, return_weights=True)
    assert np.isfinite(out).all() and np.isfinite(w).all()
    assert (w >= 0).all() and (w <= 1).all()
    assert (w[~keep] == 0).all()
    sums = w.sum(-1)
    rows_with_keys = keep.any(-1)
    np.testing.assert_allclose(sums[rows_with_keys], 1.0, rtol=1e-12)
    assert (sums[~rows_with_keys] == 0).all() and (out[~rows_with_keys] == 0).all()


@given(seeds, lengths, lengths, st.floats(-1e3, 1e3))
def test_adding_a_constant_to_a_row_of_scores_changes_nothing(seed, Lq, Lk, c):
    q, k, v, rng = _qkv(seed, 1, 2, 2, Lq, Lk)
    shifts = rng.standard_normal((Lq, 1)) * c                                 # one constant per query row
    base = attention(q, k, v, score="dot", mask=M.causal())
    shifted = attention(q, k, v, score=lambda a, b: a @ np.swapaxes(b, -1, -2) + shifts, mask=M.causal())
    np.testing.assert_allclose(shifted, base, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sdpa(q, k, v, bias=np.broadcast_to(shifts, (Lq, Lk))), sdpa(q, k, v),
                               rtol=1e-9, atol=1e-9)
    x = rng.standard_normal((Lq, Lk))
    np.testing.assert_allclose(softmax(x + shifts), softmax(x), rtol=1e-9, atol=1e-12)


@given(seeds, heads, st.integers(1, 10))
def test_unmasked_self_attention_is_permutation_equivariant(seed, hg, L):
    H, G = hg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, L, 2 * H))
    perm = rng.permutation(L)
    layer = MultiHeadAttention(2 * H, H, G, seed=seed % 1000, dtype=np.float64)
    np.testing.assert_allclose(layer(x[:, perm]), layer(x)[:, perm], rtol=1e-11, atol=1e-12)
    q, k, v, _ = _qkv(seed, 1, H, G, L, L)
    np.testing.assert_allclose(sdpa(q[..., perm, :], k[..., perm, :], v[..., perm, :]), sdpa(q, k, v)[..., perm, :],
                               rtol=1e-11, atol=1e-12)
    key_perm = rng.permutation(L)                                              # keys/values reordered together
    np.testing.assert_allclose(sdpa(q, k[..., key_perm, :], v[..., key_perm, :]), sdpa(q, k, v), rtol=1e-11,
                               atol=1e-12)


@given(seeds, heads, st.integers(2, 10), st.data())
def test_causal_outputs_ignore_future_tokens(seed, hg, L, data):
    H, G = hg
    t = data.draw(st.integers(1, L - 1), label="first changed position")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, L, 2 * H))
    changed = x.copy()
    changed[:, t:] = rng.standard_normal((1, L - t, 2 * H)) * 5
    layer = MultiHeadAttention(2 * H, H, G, seed=1, dtype=np.float64, rope_base=data.draw(
        st.sampled_from([None, 10000.0]), label="rope_base"))
    before, after = layer(x, mask=M.causal()), layer(changed, mask=M.causal())
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert not np.allclose(before[:, t:], after[:, t:])


@given(seeds, heads, st.integers(1, 10), st.lists(st.integers(1, 4), min_size=1, max_size=6),
       st.sampled_from([None, 100.0, 10000.0]))
def test_kv_cache_decoding_equals_full_causal_pass(seed, hg, prefill, chunks, rope_base):
    H, G = hg
    rng = np.random.default_rng(seed)
    L = prefill + sum(chunks)
    x = rng.standard_normal((2, L, 2 * H))
    layer = MultiHeadAttention(2 * H, H, G, seed=seed % 1000, dtype=np.float64, rope_base=rope_base)
    full = layer(x, mask=M.causal())
    cache = KVCache()
    pieces, start = [], 0
    for size in [prefill] + chunks:                                           # prefill, then chunks / single tokens
        pieces.append(layer(x[:, start:start + size], mask=M.causal(), cache=cache))
        start += size
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-11, atol=1e-12)
    assert len(cache) == L and cache.nbytes == 2 * 2 * G * L * layer.head_dim * 8


@given(seeds, st.sampled_from([(4, 2), (4, 1), (6, 3), (6, 2), (8, 4)]), lengths, lengths,
       st.sampled_from(["none", "causal", "padding", "window"]))
def test_gqa_equals_mha_with_repeated_kv_heads(seed, hg, Lq, Lk, mask_name):
    H, G = hg
    q, k, v, _ = _qkv(seed, 2, H, G, Lq, Lk)
    mask = {"none": None, "causal": M.causal(), "padding": M.padding([Lk, max(Lk - 2, 1)]),
            "window": M.sliding_window(2, 1)}[mask_name]
    r = H // G
    k_rep, v_rep = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)         # kv head g serves q heads g*r..g*r+r-1
    got, w = sdpa(q, k, v, mask, return_weights=True)
    want, want_w = sdpa(q, k_rep, v_rep, mask, return_weights=True)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(w, want_w, rtol=1e-13, atol=1e-14)


@given(seeds, heads, lengths, st.integers(2, 12), st.data())
def test_merge_of_two_key_splits_equals_the_whole(seed, hg, Lq, Lk, data):
    cut = data.draw(st.integers(0, Lk), label="cut")
    q, k, v, rng = _qkv(seed, 2, *hg, Lq, Lk)
    keep = rng.random((2, hg[0], Lq, Lk)) < data.draw(st.floats(0.0, 1.0), label="density")
    a = sdpa(q, k[..., :cut, :], v[..., :cut, :], keep[..., :cut], return_lse=True)
    b = sdpa(q, k[..., cut:, :], v[..., cut:, :], keep[..., cut:], return_lse=True)
    out, lse = merge_attention(*a, *b)
    want_out, want_lse = sdpa(q, k, v, keep, return_lse=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-13)


@given(seeds, heads, st.integers(1, 70), st.integers(1, 70), st.sampled_from([1.0, 4.0, 30.0]), st.data())
def test_the_tiled_kernel_equals_the_reference(seed, hg, Lq, Lk, magnitude, data):
    """Any sizes, tiles (tall enough to fold the shift into the matmul, or not), masks that leave rows empty or
    start rows at different tiles, score ranges wide enough to overflow a probed shift (the careful redo), and
    few query rows (every head in one batched task): the kernel equals the reference path."""
    H, G = hg
    q, k, v, rng = _qkv(seed, 2, H, G, Lq, Lk, D=8, Dv=5, magnitude=magnitude)
    k *= np.linspace(0.2, 1.8, Lk)[:, None]                              # scores that rise along the keys
    mask = data.draw(st.sampled_from(["none", "causal", "window", "array"]), label="mask")
    mask = {"none": None, "causal": M.causal(), "window": M.sliding_window(5, 2),
            "array": rng.random((2, H, Lq, Lk)) < data.draw(st.floats(0.0, 1.0), label="density")}[mask]
    block_q = data.draw(st.sampled_from([None, 1, 3, 8, 16, 32]), label="block_q")
    block_k = data.draw(st.sampled_from([None, 1, 5, 16, 64]), label="block_k")
    got, lse = flash_attention(q, k, v, mask, block_q=block_q, block_k=block_k, threads=data.draw(
        st.integers(1, 3), label="threads"), return_lse=True)
    want, want_lse = sdpa(q, k, v, mask, impl="reference", return_lse=True)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[finite], want_lse[finite], rtol=1e-10, atol=1e-10)
