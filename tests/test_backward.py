"""The backward pass: the readable attention_backward and the tiled flash_attention_backward.

Oracles: torch autograd through torch.nn.functional.scaled_dot_product_attention (bool and float masks, scale,
enable_gqa), and through a few lines of torch written from the formula for the score modifiers SDPA lacks
(soft-capping). Neither shares code with attnlab. The tiled backward is also tested equal to the readable one on
every mask kind, odd sizes, blocks that do not divide the lengths and threads, by hand and by hypothesis.
"""

import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import attnlab
from attnlab import masks as M, scores
from attnlab._inputs import prepare
from attnlab.kernel import RunStats
from attnlab.kernel.layout import TileMaps, layout
from test_flash import MASKS

F = torch.nn.functional


def _qkv(rng, B, H, G, Lq, Lk, D=8, Dv=None, dtype=np.float64):
    Dv = D if Dv is None else Dv
    q = rng.standard_normal((B, H, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, G, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, G, Lk, Dv)).astype(dtype)
    return q, k, v


def _torch_grads(q, k, v, dout, attn_mask=None, scale=None, mod=None, gqa=False, dtype=torch.float64):
    """Gradients by torch autograd: SDPA, or the formula in torch when ``mod`` (a torch function of the scores)
    is given."""
    tq, tk, tv = (torch.tensor(x, dtype=dtype, requires_grad=True) for x in (q, k, v))
    am = attn_mask
    if isinstance(am, np.ndarray):
        am = torch.tensor(am) if am.dtype == bool else torch.tensor(am, dtype=dtype, requires_grad=True)
    if mod is None:
        out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=am, scale=scale, enable_gqa=gqa)
    else:
        r = tq.shape[-3] // tk.shape[-3]
        kk, vv = tk.repeat_interleave(r, dim=-3), tv.repeat_interleave(r, dim=-3)
        s = mod(tq @ kk.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5))
        if am is not None:
            s = s.masked_fill(~am, float("-inf")) if am.dtype == torch.bool else s + am
        out = torch.softmax(s, dim=-1).nan_to_num(0.0) @ vv
    out.backward(torch.tensor(dout, dtype=dtype))
    grads = [x.grad.numpy() for x in (tq, tk, tv)]
    if isinstance(am, torch.Tensor) and am.requires_grad:
        grads.append(am.grad.numpy())
    return grads


def _ours(q, k, v, dout, mask=None, bias=None, score_mod=None, scale=None, **kw):
    out, lse = attnlab.flash_attention(q, k, v, mask, bias=bias, score_mod=score_mod, scale=scale, return_lse=True)
    tiled = attnlab.flash_attention_backward(dout, q, k, v, out, lse, mask, bias=bias, score_mod=score_mod,
                                             scale=scale, **kw)
    readable = attnlab.attention_backward(dout, q, k, v, mask, bias=bias, score_mod=score_mod, scale=scale)
    return tiled, readable


def _close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=tol)


# --- against torch autograd, float64 ---------------------------------------------------------------------------
@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1), (8, 2), (8, 1)])       # GQA ratios 1, 2, 4, 4, 8
@pytest.mark.parametrize("Lq,Lk", [(13, 13), (7, 20), (20, 7)])
def test_gradients_match_torch_sdpa(rng, H, G, Lq, Lk):
    q, k, v = _qkv(rng, 2, H, G, Lq, Lk, D=8, Dv=5)
    dout = rng.standard_normal((2, H, Lq, 5))
    tiled, readable = _ours(q, k, v, dout, block_q=3, block_k=4)
    want = _torch_grads(q, k, v, dout, gqa=G != H)
    _close(readable, want, 1e-10)
    _close(tiled, want, 1e-10)


@pytest.mark.parametrize("kind", ["bool", "float", "bool_and_scale"])
def test_masks_bias_and_scale_match_torch(rng, kind):
    Lq, Lk = 11, 17
    q, k, v = _qkv(rng, 2, 4, 2, Lq, Lk)
    dout = rng.standard_normal((2, 4, Lq, 8))
    allowed = rng.random((2, 4, Lq, Lk)) < 0.6
    allowed[..., 0] = True                                   # SDPA gives NaN on fully masked rows; tested below
    scale = 0.3 if kind == "bool_and_scale" else None
    if kind == "float":
        bias = rng.standard_normal((4, 1, Lk))               # broadcast over batch and query rows
        tiled, readable = _ours(q, k, v, dout, bias=bias, block_q=4, block_k=5)
        want = _torch_grads(q, k, v, dout, attn_mask=bias, gqa=True)
        _close(readable, want, 1e-10)                        # dq, dk, dv and dbias
        _close(tiled, want[:3], 1e-10)
        return
    tiled, readable = _ours(q, k, v, dout, mask=allowed, scale=scale, block_q=4, block_k=5)
    want = _torch_grads(q, k, v, dout, attn_mask=allowed, scale=scale, gqa=True)
    _close(readable, want, 1e-10)
    _close(tiled, want, 1e-10)


@pytest.mark.parametrize("mask,H,G", [(M.causal(), 4, 2), (None, 8, 1), (M.sliding_window(40), 4, 4)])
def test_float32_within_torch_rule(rng, mask, H, G):
    """float32 error <= 2x torch's own float32 error against float64, plus 1e-5 (the flash-attention rule)."""
    Lq = Lk = 300
    q, k, v = _qkv(rng, 1, H, G, Lq, Lk, D=32)
    dout = rng.standard_normal((1, H, Lq, 32))
    allowed = None if mask is None else M.materialize(mask, Lq, Lk, batch=1, heads=H)
    exact = _torch_grads(q, k, v, dout, attn_mask=allowed, gqa=G != H)
    theirs = _torch_grads(*(x.astype(np.float32) for x in (q, k, v, dout)), attn_mask=allowed, gqa=G != H,
                          dtype=torch.float32)
    tiled, readable = _ours(*(x.astype(np.float32) for x in (q, k, v, dout)), mask=mask)
    for ours in (tiled, readable):
        for got, ref, torch32 in zip(ours, exact, theirs):
            assert got.dtype == np.float32
            torch_err = np.abs(torch32 - ref).max()
            assert np.abs(got - ref).max() <= 2 * torch_err + 1e-5


# --- score modifiers: the chain rule ---------------------------------------------------------------------------
def test_softcap_multiplies_by_its_derivative(rng):
    cap = 1.5
    q, k, v = _qkv(rng, 1, 4, 2, 19, 23)
    q *= 3                                                    # scores well into tanh's curved range
    dout = rng.standard_normal((1, 4, 19, 8))
    mask = M.causal()
    tiled, readable = _ours(q, k, v, dout, mask=mask, score_mod=scores.softcap(cap), block_q=5, block_k=6)
    want = _torch_grads(q, k, v, dout, attn_mask=M.materialize(mask, 19, 23, batch=1, heads=4),
                        mod=lambda s: cap * torch.tanh(s / cap))
    _close(readable, want, 1e-10)
    _close(tiled, want, 1e-10)
    plain = attnlab.attention_backward(dout, q, k, v, mask)
    assert np.abs(plain.dq - want[0]).max() > 1e-3           # the derivative matters here


def test_alibi_and_relative_bias_pass_through(rng):
    H, Lq, Lk = 4, 15, 21
    q, k, v = _qkv(rng, 1, H, H, Lq, Lk)
    dout = rng.standard_normal((1, H, Lq, 8))
    slopes = scores.alibi_slopes(H)
    pos = np.arange(Lq)[:, None] + (Lk - Lq)
    alibi_bias = -slopes[:, None, None] * (pos - np.arange(Lk)[None, :])          # (H, Lq, Lk), the paper's bias
    table = rng.standard_normal((H, 2 * 4 + 1))
    rel = table[:, np.clip(np.arange(Lk)[None, :] - pos, -4, 4) + 4]             # (H, Lq, Lk)
    for mod, bias in ((scores.alibi(H), alibi_bias), (scores.relative_bias(table, 4), rel),
                      (scores.alibi(H).then(scores.softcap(2.0)), None)):
        tiled, readable = _ours(q, k, v, dout, mask=M.causal(), score_mod=mod, block_q=4, block_k=8)
        allowed = M.materialize(M.causal(), Lq, Lk)
        if bias is None:
            want = _torch_grads(q, k, v, dout, attn_mask=allowed,
                                mod=lambda s: 2.0 * torch.tanh((s + torch.tensor(alibi_bias)) / 2.0))
        else:
            want = _torch_grads(q, k, v, dout, attn_mask=np.where(allowed, bias, -np.inf))[:3]
        _close(readable, want, 1e-10)
        _close(tiled, want, 1e-10)


def test_score_mod_without_derivative_is_refused(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 5, 5)
    out, lse = attnlab.flash_attention(q, k, v, return_lse=True)
    mod = scores.score_mod(lambda s, b, h, qi, ki: s * 2, name="double")
    with pytest.raises(TypeError, match="double has no derivative"):
        attnlab.flash_attention_backward(out, q, k, v, out, lse, score_mod=mod)
    doubled = scores.score_mod(lambda s, b, h, qi, ki: s * 2, grad=lambda s, m, b, h, qi, ki: 2.0)
    out, lse = attnlab.flash_attention(q, k, v, score_mod=doubled, return_lse=True)
    tiled = attnlab.flash_attention_backward(out, q, k, v, out, lse, score_mod=doubled)
    _close(tiled, attnlab.attention_backward(out, q, k, v, scale=2 / np.sqrt(8)), 1e-12)


# --- every mask kind, sizes, blocks, threads ------------------------------------------------------------------
BACKWARD_MASKS = {**MASKS, "full": lambda Lq, Lk: M.full(), "key_prefix": lambda Lq, Lk: M.key_prefix(9),
                  "window_top_left": lambda Lq, Lk: M.sliding_window(4, align="top_left")}


@pytest.mark.parametrize("name", sorted(BACKWARD_MASKS))
def test_every_mask_kind(rng, name):
    Lq, Lk = 37, 41
    q, k, v = _qkv(rng, 2, 4, 2, Lq, Lk)
    dout = rng.standard_normal((2, 4, Lq, 8))
    mask = BACKWARD_MASKS[name](Lq, Lk)
    tiled, readable = _ours(q, k, v, dout, mask=mask, block_q=8, block_k=6, threads=2)
    _close(tiled, readable, 1e-12)
    if mask is None:
        return
    allowed = mask if isinstance(mask, np.ndarray) else M.materialize(mask, Lq, Lk, batch=2, heads=4)
    allowed = np.broadcast_to(allowed, (2, 4, Lq, Lk))
    keep = allowed.any(-1)[..., None]                         # SDPA's fully masked rows are NaN: compare the rest
    dz = np.where(keep, dout, 0)
    safe = np.where(keep, allowed, True)
    want = _torch_grads(q, k, v, dz, attn_mask=safe, gqa=True)
    _close(attnlab.attention_backward(dz, q, k, v, safe), want, 1e-10)
    _close(attnlab.attention_backward(dz, q, k, v, mask), want, 1e-10)   # a fully masked row adds nothing


@pytest.mark.parametrize("Lq,Lk,bq,bk", [(1, 1, None, None), (1, 7, None, None), (7, 1, 3, None),
                                         (97, 97, 13, 29), (97, 7, 96, 5), (7, 97, 2, 33)])
def test_odd_sizes_and_blocks_that_do_not_divide(rng, Lq, Lk, bq, bk):
    q, k, v = _qkv(rng, 1, 4, 2, Lq, Lk, D=6, Dv=3)
    dout = rng.standard_normal((1, 4, Lq, 3))
    for mask in (None, M.causal(), M.causal("top_left")):
        tiled, readable = _ours(q, k, v, dout, mask=mask, block_q=bq, block_k=bk)
        _close(tiled, readable, 1e-12)


@pytest.mark.parametrize("Lq,Lk", [(1023, 1025), (1025, 1023)])
def test_long_odd_sizes_match_torch(rng, Lq, Lk):
    q, k, v = _qkv(rng, 1, 2, 1, Lq, Lk, D=8)
    dout = rng.standard_normal((1, 2, Lq, 8))
    tiled, _ = _ours(q, k, v, dout, mask=M.causal(), threads=2)
    want = _torch_grads(q, k, v, dout, attn_mask=M.materialize(M.causal(), Lq, Lk), gqa=True)
    _close(tiled, want, 1e-10)


def test_broadcast_leading_dims_sum_their_gradient(rng):
    q = rng.standard_normal((3, 2, 9, 4))
    k, v = rng.standard_normal((9, 4)), rng.standard_normal((1, 2, 9, 4))     # k shared by batch and heads
    dout = rng.standard_normal((3, 2, 9, 4))
    tiled, readable = _ours(q, k, v, dout, mask=M.causal(), block_q=4, block_k=4)
    assert tiled.dk.shape == (9, 4) and tiled.dv.shape == (1, 2, 9, 4)
    want = _torch_grads(q, np.broadcast_to(k, (3, 2, 9, 4)).copy(), np.broadcast_to(v, (3, 2, 9, 4)).copy(), dout,
                        attn_mask=M.materialize(M.causal(), 9, 9))
    _close(readable, [want[0], want[1].sum(axis=(0, 1)), want[2].sum(axis=0, keepdims=True)], 1e-10)
    _close(tiled, readable, 1e-12)


def test_threads_and_key_splits_give_the_same_gradients(rng):
    q, k, v = _qkv(rng, 1, 4, 1, 64, 64)                       # one head group: the keys are split among threads
    dout = rng.standard_normal((1, 4, 64, 8))
    stats = RunStats()
    one, readable = _ours(q, k, v, dout, mask=M.causal(), block_q=4, block_k=8, threads=1)
    many = attnlab.flash_attention_backward(dout, q, k, v, *attnlab.flash_attention(q, k, v, M.causal(),
                                                                                     return_lse=True),
                                            M.causal(), block_q=4, block_k=8, threads=4, stats=stats)
    assert stats.kv_splits > 1 and stats.tasks == stats.kv_splits
    _close(one, readable, 1e-12)
    _close(many, readable, 1e-12)


# --- fully masked rows, non-finite inputs ------------------------------------------------------------------------
def test_fully_masked_rows_give_zero_gradients(rng):
    q, k, v = _qkv(rng, 2, 2, 2, 10, 12)
    dout = rng.standard_normal((2, 2, 10, 8))
    mask = M.padding([12, 5], q_lengths=[10, 4])               # batch 1: query rows 4.. see nothing
    tiled, readable = _ours(q, k, v, dout, mask=mask, block_q=3, block_k=5)
    for grads in (tiled, readable):
        assert all(np.isfinite(g).all() for g in grads)
        assert not grads.dq[1, :, 4:].any()
        assert not grads.dk[1, :, 5:].any() and not grads.dv[1, :, 5:].any()     # padded keys
    _close(tiled, readable, 1e-12)


def test_nan_in_masked_keys_and_values_reaches_no_gradient(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 10, 10)
    dout = rng.standard_normal((1, 2, 10, 8))
    clean = _ours(q, k, v, dout, mask=M.causal(), block_q=3, block_k=3)
    k[0, :, 9], v[0, :, 9], v[0, :, 8, 2] = np.nan, np.inf, np.nan     # key 9 unseen but by the last row
    mask = M.causal() & ~M.from_function(lambda b, h, qi, ki: ki >= 8)
    dirty = _ours(q, k, v, dout, mask=mask, block_q=3, block_k=3)
    want = attnlab.attention_backward(dout, q, np.nan_to_num(k), np.nan_to_num(v), mask)
    for grads in dirty:
        assert all(np.isfinite(g).all() for g in grads)
        _close(grads, want, 1e-12)
        assert not grads.dk[0, :, 8:].any() and not grads.dv[0, :, 8:].any()
    assert clean[0].dq.shape == dirty[0].dq.shape


def test_nan_only_where_the_forward_has_it(rng):
    q, k, v = _qkv(rng, 1, 1, 1, 10, 10, D=4)
    q[0, 0, 3, 1] = np.nan                                     # query row 3 attends keys 0..3
    v[0, 0, 6, 0] = np.nan                                     # value 6 reaches output column 0 of rows 6..9
    dout = rng.standard_normal((1, 1, 10, 4))
    out = attnlab.flash_attention(q, k, v, M.causal())
    assert np.isnan(out[0, 0]).any(-1).tolist() == [False] * 3 + [True] + [False] * 2 + [True] * 4
    tiled, readable = _ours(q, k, v, dout, mask=M.causal(), block_q=3, block_k=3)
    for grads in (tiled, readable):
        rows = lambda g: np.isnan(g[0, 0]).any(-1).tolist()
        assert rows(grads.dq) == [False] * 3 + [True] + [False] * 2 + [True] * 4    # rows that met a NaN
        assert rows(grads.dk) == [True] * 10                   # row 3 reaches keys 0..3, rows 6..9 reach all
        assert rows(grads.dv) == [True] * 4 + [False] * 6       # P of row 3 is NaN on keys 0..3 only
        assert np.isfinite(grads.dv[0, 0, 4:]).all()
    for a, b in zip(tiled, readable):
        assert (np.isnan(a) == np.isnan(b)).all()
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")      # the reference's softmax on inf
@pytest.mark.parametrize("threads", [1, 2])
def test_inf_in_a_query_reaches_only_the_keys_it_scores_plus_inf(rng, threads):
    """q[3] holds +inf: row 3 scores +inf on the keys with k[:, 1] > 0 (weight NaN there) and -inf on the others
    (weight exactly 0). NaN then reaches dq of row 3 and dk, dv of exactly those keys; every other gradient is the
    gradient of the other rows alone (torch autograd with row 3's dout set to 0 and q[3] finite)."""
    q, k, v = _qkv(rng, 1, 2, 1, 12, 12, D=4)
    dout = rng.standard_normal((1, 2, 12, 4))
    k[0, 0, :4, 1] = [-0.5, 0.7, 0.2, -1.1]                     # row 3 sees keys 0..3: +inf on keys 1 and 2
    q[0, 1, 3, 1] = np.inf
    tiled, readable = _ours(q, k, v, dout, mask=M.causal(), block_q=5, block_k=3, threads=threads)
    clean_q, quiet = q.copy(), dout.copy()
    clean_q[0, 1, 3, 1], quiet[0, 1, 3] = 0.0, 0.0
    want = _torch_grads(clean_q, k, v, quiet, attn_mask=M.materialize(M.causal(), 12, 12), gqa=True)
    nan_keys = [False, True, True] + [False] * 9
    for grads in (tiled, readable):
        assert np.isnan(grads.dq).any(-1)[0].tolist() == [[False] * 12, [False] * 3 + [True] + [False] * 8]
        assert np.isnan(grads.dk).any(-1)[0, 0].tolist() == nan_keys
        assert np.isnan(grads.dv).any(-1)[0, 0].tolist() == nan_keys
        keep = ~np.array(nan_keys)
        np.testing.assert_allclose(grads.dk[0, 0, keep], want[1][0, 0, keep], atol=1e-10)
        np.testing.assert_allclose(grads.dv[0, 0, keep], want[2][0, 0, keep], atol=1e-10)
        np.testing.assert_allclose(grads.dq[0, 0], want[0][0, 0], atol=1e-10)
        np.testing.assert_allclose(np.delete(grads.dq[0, 1], 3, axis=0), np.delete(want[0][0, 1], 3, axis=0),
                                   atol=1e-10)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")      # the reference's softmax on inf
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_inputs_give_the_readable_backwards_nan_pattern(rng, where, value):
    q, k, v = _qkv(rng, 1, 2, 1, 10, 10, D=4)
    dout = rng.standard_normal((1, 2, 10, 4))
    k[0, 0, :4, 1] = [-0.5, 0.7, 0.2, -1.1]                     # an inf in q[3, 1] scores both +inf and -inf
    {"q": q, "k": k, "v": v}[where][0, 0, 3, 1] = value
    tiled, readable = _ours(q, k, v, dout, mask=M.causal(), block_q=3, block_k=3)
    flat = np.concatenate([g.ravel() for g in tiled])
    assert np.isnan(flat).any() and np.isfinite(flat).any()        # NaN somewhere, but not everywhere
    for a, b in zip(tiled, readable):
        assert (np.isnan(a) == np.isnan(b)).all()
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=1e-12)


# --- tiles and memory --------------------------------------------------------------------------------------------
def test_causal_skips_about_half_the_tiles_from_the_forwards_tile_map(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 256, 256, dtype=np.float32)
    out, lse = attnlab.flash_attention(q, k, v, M.causal(), return_lse=True)
    stats = RunStats()
    attnlab.flash_attention_backward(out, q, k, v, out, lse, M.causal(), block_q=16, block_k=16, stats=stats)
    expected = TileMaps(M.causal(), layout(prepare(q, k, v, "test")), 16, 16).counts()
    assert stats.tiles == expected
    assert stats.tiles.total == 2 * 16 * 16
    assert 0.45 < stats.tiles.empty / stats.tiles.total < 0.5
    assert stats.tiles.partial == 2 * 16                       # the diagonal: the mask is evaluated there only


def _backward_with_memory(q, k, v, out, lse, mask):
    """(gradients, peak bytes tracemalloc saw during the backward beyond the gradients themselves), 2 threads."""
    tracemalloc.start()
    try:
        grads = attnlab.flash_attention_backward(out, q, k, v, out, lse, mask, threads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return grads, peak - sum(g.nbytes for g in grads)


def test_memory_at_16k_has_no_score_sized_allocation(rng):
    n, D = 16384, 16
    q, k, v = (rng.standard_normal((1, 1, n, D)).astype(np.float32) for _ in range(3))
    mask = M.sliding_window(128)                                 # a window keeps the work small; memory is the point
    out, lse = attnlab.flash_attention(q, k, v, mask, return_lse=True)
    grads, extra = _backward_with_memory(q, k, v, out, lse, mask)
    assert extra < 8 * 2**20                                     # a score matrix would be n * n * 4 = 1 GiB
    sub = attnlab.attention_backward(out[..., n - 40:, :], q[..., n - 40:, :], k[..., n - 168:, :],
                                     v[..., n - 168:, :], mask)       # the last 40 rows see only the last 168 keys
    np.testing.assert_allclose(grads.dq[..., n - 40:, :], sub.dq, atol=1e-5)


# --- errors ------------------------------------------------------------------------------------------------------
def test_bad_arguments_are_named(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 5, 6)
    out, lse = attnlab.flash_attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="dout must be a floating NumPy array of shape"):
        attnlab.flash_attention_backward(out[..., :3, :], q, k, v, out, lse)
    with pytest.raises(ValueError, match="lse must be"):
        attnlab.flash_attention_backward(out, q, k, v, out, lse[..., :2])
    with pytest.raises(ValueError, match="out must be"):
        attnlab.flash_attention_backward(out, q, k, v, out.astype(int), lse)
    with pytest.raises(TypeError, match="runs on NumPy arrays"):
        attnlab.flash_attention_backward(out, torch.tensor(q), torch.tensor(k), torch.tensor(v), out, lse)
    with pytest.raises(ValueError, match="dout must be a NumPy array shaped like the output"):
        attnlab.attention_backward(out[..., :3], q, k, v)


# --- property: tiled == readable --------------------------------------------------------------------------------
PROPERTY_MASKS = [None, M.causal(), M.causal("top_left"), M.sliding_window(3, 2), M.padding([5, 9]),
                  M.dilated(2) & M.causal(), M.global_tokens([1]) | M.sliding_window(1), "bool_array"]


@given(Lq=st.integers(1, 24), Lk=st.integers(1, 24), heads=st.sampled_from([(2, 2), (4, 2), (4, 1), (8, 1)]),
       mask=st.sampled_from(range(len(PROPERTY_MASKS))), bq=st.integers(1, 12), bk=st.integers(1, 12),
       threads=st.sampled_from([1, 3]), spread=st.sampled_from([0.1, 1.0, 8.0]), seed=st.integers(0, 2**16),
       mod=st.sampled_from([None, "softcap", "alibi"]))
def test_property_tiled_equals_readable(Lq, Lk, heads, mask, bq, bk, threads, spread, seed, mod):
    rng = np.random.default_rng(seed)
    H, G = heads
    q, k, v = _qkv(rng, 2, H, G, Lq, Lk, D=4, Dv=3)
    q *= spread
    dout = rng.standard_normal((2, H, Lq, 3))
    score_mod = {None: None, "softcap": scores.softcap(2.0), "alibi": scores.alibi(H)}[mod]
    mask = PROPERTY_MASKS[mask]
    if mask == "bool_array":                                   # per (batch, head), some rows fully masked
        mask = rng.random((2, H, Lq, Lk)) < 0.4
    tiled, readable = _ours(q, k, v, dout, mask=mask, score_mod=score_mod, block_q=bq,
                            block_k=bk, threads=threads)
    _close(tiled, readable, 1e-10 * max(1.0, spread))


@pytest.mark.parametrize("shape,mask", [((1, 8, 2048, 64), M.causal()), ((2, 4, 1500, 32), None)])
def test_memory_model_matches_tracemalloc(rng, shape, mask):
    from attnlab.kernel.backward import backward_blocks, backward_memory
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    out, lse = attnlab.flash_attention(q, k, v, mask, return_lse=True)
    lay = layout(prepare(q, k, v, "test"))
    predicted = backward_memory(lay, *backward_blocks(lay.r, lay.Lq, lay.Lk), 2, 4, masked=mask is not None)
    _, measured = _backward_with_memory(q, k, v, out, lse, mask)
    assert 0.8 * predicted <= measured <= 1.15 * predicted + 64 * 2**10


def test_plan_covers_the_backward(rng):
    q, k, v = _qkv(rng, 1, 4, 2, 700, 700, D=16, dtype=np.float32)
    out, lse = attnlab.flash_attention(q, k, v, M.causal(), return_lse=True)
    stats = RunStats()
    attnlab.flash_attention_backward(out, q, k, v, out, lse, M.causal(), threads=2, stats=stats)
    p = attnlab.plan(q.shape, k.shape, mask=M.causal(), backward=True, threads=2, impl="tiled")
    assert p.backward and p.impl == "tiled" and "flash_attention_backward" in str(p)
    assert p.tiles == stats.tiles and (p.block_q, p.block_k, p.threads) == (stats.block_q, stats.block_k,
                                                                            stats.threads)
    forward = attnlab.plan(q.shape, k.shape, mask=M.causal(), threads=2, impl="tiled")
    assert p.reference_bytes > forward.reference_bytes          # the readable backward holds more matrices


@pytest.mark.parametrize("Lq,Lk", [(0, 5), (5, 0), (0, 0)])
def test_empty_lengths_give_empty_or_zero_gradients(Lq, Lk):
    q, k, v = np.ones((2, Lq, 4)), np.ones((2, Lk, 4)), np.ones((2, Lk, 3))
    out, lse = np.zeros((2, Lq, 3)), np.full((2, Lq), -np.inf)      # what the forward gives for these lengths
    for grads in (attnlab.flash_attention_backward(np.ones_like(out), q, k, v, out, lse),
                  attnlab.attention_backward(np.ones_like(out), q, k, v)):
        assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
        assert not any(g.any() for g in grads)


def test_out_and_lse_of_another_scale_are_refused_not_turned_into_inf(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 5, 6)
    out, lse = attnlab.flash_attention(q, k, v, return_lse=True)            # the default scale
    with pytest.raises(ValueError, match=r"out and lse must be what flash_attention returned.*scale=1\.09951e\+12"):
        attnlab.flash_attention_backward(np.ones_like(out), q, k, v, out, lse, scale=2.0**40)
    out, lse = attnlab.flash_attention(q, k, v, return_lse=True, scale=2.0**40)   # matching: finite gradients
    grads = attnlab.flash_attention_backward(np.ones_like(out), q, k, v, out, lse, scale=2.0**40)
    assert all(np.isfinite(g).all() for g in grads)
