"""JAX, a second real array library: the array-API path on ``jax.numpy`` arrays (CPU).

Oracles: the float64 loops of tests/oracles.py (masks, score modifiers, scorers, softmax, the layer), PyTorch's
SDPA and nn.MultiheadAttention, and torch autograd through a few lines of torch written from the formula for the
gradients. ``jax.grad`` and ``jax.jit`` run through attnlab's reference path. JAX computes in float32 unless
float64 is switched on (``jax_enable_x64``); the fixture below switches it on for this module and restores it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import oracles as O
from attnlab import (KVCache, MultiHeadAttention, attention, logsumexp, masks as M, merge_attention,
                     scaled_dot_product_attention as sdpa, scores as S, softmax)
from attnlab._array import to_numpy


@pytest.fixture(autouse=True, scope="module")
def float64_in_jax():
    """jax_enable_x64 for this module: without it jnp.asarray(float64 array) silently gives float32."""
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def J(a):
    out = jnp.asarray(a)
    assert out.dtype == np.asarray(a).dtype          # float64 really stays float64 (the fixture works)
    return out


def _same(got, want, tol=1e-12):
    """``got`` is a JAX array equal to ``want`` (NumPy or torch)."""
    assert isinstance(got, jax.Array), f"result is {type(got).__name__}, not a jax.Array"
    want = to_numpy(want)
    got = np.asarray(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _case(rng, H=4, G=2, Lq=5, Lk=7, D=8, Dv=3, B=2):
    return (rng.standard_normal((B, H, Lq, D)), rng.standard_normal((B, G, Lk, D)),
            rng.standard_normal((B, G, Lk, Dv)))


# --- every mask kind, GQA, against the float64 loops ---------------------------------------------------------
MASKS = {
    "causal": (M.causal(), O.causal()),
    "causal top_left": (M.causal("top_left"), O.causal("top_left")),
    "sliding_window": (M.sliding_window(2, 1), O.sliding_window(2, 1)),
    "padding": (M.padding([7, 3]), O.padding([7, 3])),
    "padding with query lengths": (M.padding([7, 4], q_lengths=[5, 2]), O.padding([7, 4], [5, 2])),
    "prefix_lm": (M.prefix_lm(3), O.prefix_lm(3)),
    "document": (M.document([0, 0, 1, 1, 1, 2, 2]), O.document([0, 0, 1, 1, 1, 2, 2])),
    "dilated": (M.dilated(2), O.dilated(2)),
    "global_tokens | causal": (M.global_tokens([0]) | M.causal(), O.either(O.global_tokens([0]), O.causal())),
    "causal & ~window": (M.causal() & ~M.sliding_window(1), O.both(O.causal(), O.negate(O.sliding_window(1)))),
    "from_function": (M.from_function(lambda b, h, q, kv: (q + kv) % 3 != 0),
                      lambda b, h, i, j, Lq, Lk: (i + j) % 3 != 0),
}


@pytest.mark.parametrize("name", MASKS)
def test_every_mask_kind_with_gqa_equals_the_float64_loop(name, rng):
    mask, allowed = MASKS[name]
    q, k, v = _case(rng)                                                  # 4 query heads on 2 kv heads: GQA
    out, w, lse = sdpa(J(q), J(k), J(v), mask=mask, return_weights=True, return_lse=True)
    want = O.attention(q, k, v, O.scaled_dot(), allowed)
    for got, ref in zip((out, w, lse), want):
        _same(got, ref)


def test_boolean_jax_mask_with_a_fully_masked_row(rng):
    q, k, v = _case(rng, G=4)
    keep = rng.random((2, 4, 5, 7)) < 0.6
    keep[1, 2, 3] = False                                                 # nothing to attend to
    out, w, lse = sdpa(J(q), J(k), J(v), mask=J(keep), return_weights=True, return_lse=True)
    for got, ref in zip((out, w, lse), O.attention(q, k, v, O.scaled_dot(), O.from_array(keep))):
        _same(got, ref)
    assert np.all(np.asarray(out[1, 2, 3]) == 0) and np.asarray(lse[1, 2, 3]) == -np.inf


@pytest.mark.parametrize("G", [4, 2, 1])                                  # MHA, GQA, MQA
def test_gqa_and_mqa_equal_torch_sdpa(G, rng):
    q, k, v = _case(rng, H=4, G=G, Lq=6, Lk=6)
    want = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                                             is_causal=True, enable_gqa=True)
    _same(sdpa(J(q), J(k), J(v), mask=M.causal("top_left")), want)


def test_nan_in_a_masked_value_never_reaches_the_output(rng):
    q, k, v = _case(rng, G=4, Lq=7)
    v[:, :, -1] = np.nan                                    # the last key: masked for every query row but the last
    out = sdpa(J(q), J(k), J(v), mask=M.causal("top_left"))
    assert np.isfinite(np.asarray(out[..., :-1, :])).all() and np.isnan(np.asarray(out[..., -1, :])).all()


# --- score modifiers, bias, rotary, scorers ------------------------------------------------------------------
def _mods(rng):
    table = rng.standard_normal((4, 9))
    return {
        "alibi": (S.alibi(4), O.alibi(4), None),
        "alibi symmetric": (S.alibi(4, symmetric=True), O.alibi(4, symmetric=True), None),
        "softcap": (S.softcap(2.0), O.softcap(2.0), None),
        "relative_bias": (S.relative_bias(table), O.relative_bias(table, 4), None),
        "alibi then softcap": (S.alibi(4).then(S.softcap(3.0)),
                               lambda s, *a: O.softcap(3.0)(O.alibi(4)(s, *a), *a), None),
        "bias": (None, None, rng.standard_normal((4, 5, 7))),
    }


@pytest.mark.parametrize("name", ["alibi", "alibi symmetric", "softcap", "relative_bias", "alibi then softcap",
                                  "bias"])
def test_score_modifiers_and_bias_equal_the_float64_loop(name, rng):
    mod, oracle_mod, bias = _mods(rng)[name]
    q, k, v = _case(rng)
    out, w = sdpa(J(q), J(k), J(v), mask=M.causal(), score_mod=mod, bias=None if bias is None else J(bias),
                  return_weights=True)
    bias_fn = None if bias is None else (lambda b, h, i, j: bias[h, i, j])
    want = O.attention(q, k, v, O.scaled_dot(), O.causal(), bias=bias_fn, mod=oracle_mod)
    _same(out, want[0])
    _same(w, want[1])


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rotary_equals_the_rotation_matrices(style, rng):
    x = rng.standard_normal((2, 6, 8))
    positions = np.arange(3, 9)
    got = S.rotary(J(x), positions, style=style)
    want = np.stack([np.stack([O.rotation_matrix(p, 8, style=style) @ x[b, t] for t, p in enumerate(positions)])
                     for b in range(2)])
    _same(got, want)


def test_every_scorer_equals_the_float64_loop(rng):
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 2))
    W = rng.standard_normal((4, 4))
    w_q, w_k, w_v = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    cases = [("dot", {}, O.dot), ("general", {"weight": W}, O.general(W)),
             ("additive", {"w_q": w_q, "w_k": w_k, "w_v": w_v}, O.additive(w_q, w_k, w_v))]
    for score, params, oracle in cases:
        got = attention(J(q), J(k), J(v), score, M.causal(), **{n: J(p) for n, p in params.items()})
        want = O.attention(q[:, None], k[:, None], v[:, None], oracle, O.causal())[0][:, 0]
        _same(got, want)


def test_softmax_logsumexp_and_merge(rng):
    x = rng.standard_normal((3, 5))
    keep = rng.random((3, 5)) < 0.5
    keep[1] = False                                                       # a fully masked row
    _same(softmax(J(x), mask=J(keep)), np.array([O.softmax_row(r, m) for r, m in zip(x, keep)]))
    want = torch.logsumexp(torch.from_numpy(np.where(keep, x, -np.inf)), dim=-1)
    _same(logsumexp(J(x), mask=J(keep)), want)
    q, k, v = _case(rng)
    a = sdpa(J(q), J(k[..., :3, :]), J(v[..., :3, :]), return_lse=True)
    b = sdpa(J(q), J(k[..., 3:, :]), J(v[..., 3:, :]), return_lse=True)
    out, lse = merge_attention(*a, *b)
    whole = O.attention(q, k, v, O.scaled_dot())
    _same(out, whole[0])
    _same(lse, whole[2])


# --- the layer -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H, G", [(4, 4), (4, 2), (4, 1)])
def test_layer_equals_the_float64_loop(H, G, rng):
    layer = MultiHeadAttention(8, H, G, seed=0, dtype=np.float64)
    x = rng.standard_normal((1, 6, 8))
    out, w = layer(J(x), mask=M.causal(), return_weights=True)
    want_out, want_w = O.multi_head_attention(x[0], x[0], layer, O.causal())
    _same(out[0], want_out)
    _same(w[0], want_w)


def test_layer_equals_torch_multihead_attention(rng):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    layer = MultiHeadAttention.from_torch(ref)
    x, ctx = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 7, 8))
    want, want_w = ref(*(torch.from_numpy(a) for a in (x, ctx, ctx)), average_attn_weights=False)
    out, w = layer(J(x), J(ctx), return_weights=True)
    _same(out, want.detach())
    _same(w, want_w.detach())


def test_kv_cache_decoding_equals_the_full_pass(rng):
    """JAX arrays are immutable: the cache concatenates instead of writing into a buffer."""
    layer = MultiHeadAttention(8, 4, 2, seed=0, dtype=np.float64, rope_base=10000.0)
    x = rng.standard_normal((2, 6, 8))
    cache = KVCache()
    steps = [layer(J(x[:, :3]), mask=M.causal(), cache=cache)]
    steps += [layer(J(x[:, t:t + 1]), mask=M.causal(), cache=cache) for t in range(3, 6)]
    _same(jnp.concatenate(steps, axis=1), layer(x, mask=M.causal()))
    assert isinstance(cache.keys, jax.Array) and cache.nbytes == 2 * (2 * 2 * 6 * 2) * 8      # k and v, float64
    half = KVCache()
    half.append(jnp.ones((1, 2, 3, 4), jnp.bfloat16), jnp.ones((1, 2, 3, 4), jnp.bfloat16))
    assert half.nbytes == 2 * 24 * 2                                      # bfloat16: 2 bytes, no NumPy dtype


# --- dtypes: float32 without x64, float16/bfloat16 computed in float32 -------------------------------------------
def test_float32_equals_torch_float32(rng):
    q, k, v = (a.astype(np.float32) for a in _case(rng))
    got = sdpa(J(q), J(k), J(v), mask=M.causal())
    want = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)),
                                                             attn_mask=torch.from_numpy(M.causal().to_array(5, 7)),
                                                             enable_gqa=True)
    assert got.dtype == jnp.float32
    _same(got, want, tol=2e-6)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_within_twice_torchs_error(name, rng):
    """Computed in float32, returned in the input dtype; error against float64 at most 2x PyTorch's own."""
    q, k, v = (rng.standard_normal((2, 4, 48, 32)) for _ in range(3))
    tq, tk, tv = (torch.from_numpy(a).to(getattr(torch, name)) for a in (q, k, v))
    exact = [x.double() for x in (tq, tk, tv)]                            # the rounded inputs, in float64
    ref = torch.nn.functional.scaled_dot_product_attention(*exact, is_causal=True).numpy()
    theirs = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True).double().numpy()
    jq, jk, jv = (jnp.asarray(x.numpy()).astype(getattr(jnp, name)) for x in exact)
    ours, w = sdpa(jq, jk, jv, mask=M.causal(), return_weights=True)
    assert ours.dtype == getattr(jnp, name) and w.dtype == getattr(jnp, name)
    err = np.abs(np.asarray(ours.astype(jnp.float64)) - ref).max()
    assert 0 < err <= 2 * np.abs(theirs - ref).max()


# --- jax.grad equals torch autograd ------------------------------------------------------------------------
def _torch_attention(q, k, v, allowed, bias=None, cap=None):
    """softmax(mod(q k^T / sqrt(D) + bias) where allowed) @ v in plain torch, a fully masked row 0."""
    r = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(r, dim=-3), v.repeat_interleave(r, dim=-3)   # query head h reads kv head h // r
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s if bias is None else s + bias
    s = s if cap is None else cap * torch.tanh(s / cap)
    w = torch.softmax(s.masked_fill(~allowed, -math.inf), dim=-1)
    w = torch.where(allowed.any(-1, keepdim=True), w, torch.zeros_like(w))
    return w @ v


def _alibi_bias(H, Lq, Lk):
    return np.array([[[-O.alibi_slope(h, H) * (O.position(i, Lq, Lk) - j) for j in range(Lk)] for i in range(Lq)]
                     for h in range(H)])


GRAD_CASES = ["causal", "window & padding (a fully masked row)", "alibi then softcap", "bias", "MQA boolean mask"]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_jax_grad_equals_torch_autograd(case, rng):
    H, Lq, Lk = 4, 5, 7
    G = 1 if case.startswith("MQA") else 2
    q, k, v = _case(rng, H=H, G=G, Lq=Lq, Lk=Lk)
    dout = rng.standard_normal((2, H, Lq, 3))
    bias = rng.standard_normal((H, Lq, Lk)) if case == "bias" else None
    kw, cap, torch_bias = {}, None, None
    if case == "causal":
        mask, allowed = M.causal(), O.causal()
    elif case.startswith("window"):
        mask, allowed = M.sliding_window(2) & M.padding([7, 3]), O.both(O.sliding_window(2), O.padding([7, 3]))
    elif case == "alibi then softcap":
        mask, allowed, cap = M.causal(), O.causal(), 3.0
        kw["score_mod"], torch_bias = S.alibi(H).then(S.softcap(cap)), torch.from_numpy(_alibi_bias(H, Lq, Lk))
    elif case == "bias":
        mask, allowed = ~M.causal(), O.negate(O.causal())                   # the last query row: nothing allowed
    else:
        keep = rng.random((2, H, Lq, Lk)) < 0.6
        mask, allowed = J(keep), O.from_array(keep)
    grid = np.stack([np.stack([O.grid(allowed, Lq, Lk, b, h) for h in range(H)]) for b in range(2)])

    def loss(q_, k_, v_, bias_):
        return jnp.sum(sdpa(q_, k_, v_, mask=mask, bias=bias_, **kw) * J(dout))

    argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
    grads = jax.grad(loss, argnums=argnums)(J(q), J(k), J(v), None if bias is None else J(bias))
    leaves = [torch.tensor(a, requires_grad=True) for a in ((q, k, v) if bias is None else (q, k, v, bias))]
    tb = leaves[3] if bias is not None else torch_bias
    out = _torch_attention(*leaves[:3], torch.from_numpy(grid), bias=tb, cap=cap)
    (out * torch.from_numpy(dout)).sum().backward()
    for got, leaf in zip(grads, leaves):
        assert np.isfinite(np.asarray(got)).all()
        _same(got, leaf.grad, tol=1e-11)


def test_jax_grad_through_the_layer_equals_torch(rng):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    layer = MultiHeadAttention.from_torch(ref)
    x = rng.standard_normal((2, 5, 8))
    causal = torch.from_numpy(~M.causal().to_array(5, 5))                 # torch: True = blocked
    tx = torch.tensor(x, requires_grad=True)
    ref(tx, tx, tx, attn_mask=causal, need_weights=False)[0].square().sum().backward()
    got = jax.grad(lambda a: jnp.sum(layer(a, mask=M.causal()) ** 2))(J(x))
    _same(got, tx.grad)


# --- jax.jit: static shapes trace; what must stay concrete ---------------------------------------------------
def test_jit_equals_eager_for_masks_mods_gqa_weights_and_lse(rng):
    q, k, v = _case(rng)
    keep = rng.random((2, 4, 5, 7)) < 0.7
    bias = rng.standard_normal((4, 5, 7))
    mod = S.alibi(4).then(S.softcap(3.0))

    @jax.jit
    def run(q_, k_, v_, keep_, bias_):
        a = sdpa(q_, k_, v_, mask=M.causal() & M.document([0, 0, 1, 1, 1, 2, 2]), score_mod=mod,
                 return_weights=True, return_lse=True)
        b = sdpa(q_, k_, v_, mask=keep_, bias=bias_)
        return a, b, softmax(bias_, mask=keep_[0]), S.rotary(q_, np.arange(2, 7))

    got = run(J(q), J(k), J(v), J(keep), J(bias))
    eager = (sdpa(J(q), J(k), J(v), mask=M.causal() & M.document([0, 0, 1, 1, 1, 2, 2]), score_mod=mod,
                  return_weights=True, return_lse=True),
             sdpa(J(q), J(k), J(v), mask=J(keep), bias=J(bias)), softmax(J(bias), mask=J(keep[0])),
             S.rotary(J(q), np.arange(2, 7)))
    for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(eager)):
        _same(g, np.asarray(e), tol=1e-13)
    want = O.attention(q, k, v, O.scaled_dot(), O.from_array(keep), bias=lambda b_, h, i, j: bias[h, i, j])
    _same(got[1], want[0])


def test_jit_handles_nan_in_masked_values_like_eager(rng):
    """The all-finite shortcut of the weighted sum cannot be read inside jit: the NaN-safe path runs there."""
    q, k, v = _case(rng, G=4, Lq=7)
    v[:, :, -1] = np.nan
    got = jax.jit(lambda *a: sdpa(*a, mask=M.causal("top_left")))(J(q), J(k), J(v))
    _same(got, sdpa(q, k, v, mask=M.causal("top_left")), tol=1e-13)
    assert np.isnan(np.asarray(got[..., -1, :])).all()


def test_jit_of_the_layer_and_of_grad(rng):
    layer = MultiHeadAttention(8, 4, 2, seed=0, dtype=np.float64, rope_base=10000.0)
    x = rng.standard_normal((2, 6, 8))
    _same(jax.jit(lambda a: layer(a, mask=M.causal()))(J(x)), layer(x, mask=M.causal()))
    loss = lambda a: jnp.sum(layer(a, mask=M.causal()) ** 2)          # noqa: E731
    _same(jax.jit(jax.grad(loss))(J(x)), jax.grad(loss)(J(x)), tol=1e-13)


def test_jit_needs_concrete_python_side_arguments(rng):
    """What docs/integrations/jax.md says: mask arguments, rotary positions and scale are NumPy/Python values
    read while tracing; traced ones raise (close over them or mark them static)."""
    q = J(rng.standard_normal((1, 2, 6, 4)))
    with pytest.raises(jax.errors.TracerArrayConversionError):
        jax.jit(lambda x, n: sdpa(x, x, x, mask=M.padding(n)))(q, jnp.asarray([3]))
    with pytest.raises(TypeError, match="positions must be integers.*traced"):     # rotary's check names it
        jax.jit(lambda x, p: S.rotary(x, p))(q, jnp.arange(6))
    with pytest.raises(TypeError, match="scale must be a number"):
        jax.jit(lambda x, s: sdpa(x, x, x, scale=s))(q, 0.5)
    static = jax.jit(lambda x, s: sdpa(x, x, x, scale=s), static_argnums=1)
    _same(static(q, 0.5), sdpa(np.asarray(q), np.asarray(q), np.asarray(q), scale=0.5), tol=1e-13)
