"""The cost model: formulas against hand-computed values, cell and tile counts against materialized masks,
KV-cache sizes against published figures, the n -> 2n ratios, the naive path's peak memory against tracemalloc,
and the ``attnlab cost`` command."""

import numpy as np
import pytest

import attnlab
from attnlab import cost, masks
from attnlab.cli import main
from attnlab.measure import peak_memory

SIZES = [(1, 1), (7, 7), (16, 16), (97, 97), (5, 23), (23, 5), (64, 130)]
SPECS = ["dense", "causal", "window:0", "window:3", "window:32", "causal & window:5", "window:2,1 | global:0"]


# --- formulas by hand --------------------------------------------------------------------------------------------
def test_hand_computed_dense():
    # 2 sequences, 2 heads x 4 dims, 3 layers, n = 8, float32 (4 bytes), one 8 x 8 tile.
    cfg = cost.model_config(head_dim=4, n_heads=2, n_layers=3)
    c = cost.estimate(cfg, 8, batch=2, dtype="float32", block_q=8, block_k=8)
    heads_layers = 2 * 2 * 3
    assert c.useful_flops == c.reference.flops == c.tiled.flops == (2 * 8 * 8 * 4 + 2 * 8 * 8 * 4) * heads_layers
    assert c.reference.exp_count == 64 * heads_layers
    assert c.tiled.exp_count == 64 * heads_layers                     # one tile: no rescaling
    assert c.reference.score_bytes == 2 * (2 * 2 * 8 * 8 * 4)             # scores + weights, one layer
    # naive: Q, K, V, O (4 x 8 x 4 elements) + S written, read, P written, read (4 x 64), 4 bytes each
    assert c.reference.bytes_moved == (4 * 32 + 4 * 64) * 4 * heads_layers
    # tiled: Q once, O once, K and V once for the single query block
    assert c.tiled.bytes_moved == (32 + 32 + 8 * 8) * 4 * heads_layers
    full = 2 * 2 * 64 * 4
    # the softmax's 3 score matrices, larger than the weighted sum's weights + output + the check of v
    assert c.reference.peak_bytes == 3 * full > full + 2 * 2 * 8 * 4 * 4 + 2 * 2 * 8 * 4
    # a decode step with head dim 16: the weighted sum's weights (4 x 1 x 8 floats), check of v (4 x 8 x 16 bytes)
    # and output (4 x 16 floats) outweigh the softmax's 3 x (4 x 1 x 8) floats
    step = cost.estimate(cost.model_config(head_dim=16, n_heads=2), 8, q_len=1, batch=2, dtype="float32")
    assert step.reference.peak_bytes == 4 * 8 * 4 + 4 * 8 * 16 + 4 * 16 * 4 > 3 * 4 * 8 * 4
    # 8 rows per head (< 16): every head in one task. Output + lse (4 x 8 x (4 + 1) floats) + the 4 heads' tile
    # (32 x 8), scaled q (32 x 4), acc and pv (2 x 32 x 4), 6 row vectors (6 x 32), NumPy's ufunc buffer for
    # the tile's broadcast subtraction (32 x 8)
    assert c.tiled.peak_bytes == ((4 * 8 * 5 + 32 * 8 + 32 * 4 + 2 * 32 * 4 + 6 * 32 + 32 * 8) * 4
                                  + cost.KERNEL_CALL_BYTES)
    taller = cost.estimate(cfg, 32, batch=2, dtype="float32", block_q=16, block_k=32)
    # 16 rows per task: a task per (head, query block). Output + lse (4 x 32 x 5) + one thread's tile (16 x 32),
    # [q | -m] rows (16 x 5), acc/pv/tmp rows (3 x 16 x 5), 3 row vectors, a column of ones (32), [k | 1] (32 x 5)
    assert taller.tiled.peak_bytes == ((4 * 32 * 5 + 16 * 32 + 16 * 5 + 3 * 16 * 5 + 3 * 16 + 32 + 32 * 5) * 4
                                       + cost.KERNEL_CALL_BYTES)
    assert c.kv_bytes_per_token == 2 * 3 * 2 * 4 * 4
    assert c.kv_cache_bytes == 2 * 8 * c.kv_bytes_per_token


def test_causal_useful_flops_are_about_half():
    c = cost.estimate(cost.model_config(head_dim=64, n_heads=1), 4096, mask="causal", block_q=128, block_k=128)
    assert c.allowed_cells == 4096 * 4097 // 2
    assert c.useful_flops == 4 * 64 * 4096 * 4097 // 2
    assert c.reference.flops == 4 * 64 * 4096 * 4096                      # the naive path computes every cell
    assert c.useful_flops < c.tiled.flops < 0.52 * c.reference.flops       # whole diagonal tiles are computed


def test_gqa_changes_the_kv_cache_not_the_flops():
    mha = cost.estimate(cost.model_config(d_model=512, n_heads=8), 256)
    gqa = cost.estimate(cost.model_config(d_model=512, n_heads=8, n_kv_heads=2), 256)
    assert gqa.useful_flops == mha.useful_flops
    assert gqa.kv_bytes_per_token * 4 == mha.kv_bytes_per_token


# --- counts against materialized masks ---------------------------------------------------------------------------
@pytest.mark.parametrize("Lq, Lk", SIZES)
@pytest.mark.parametrize("spec", SPECS)
def test_allowed_cells_match_the_mask(Lq, Lk, spec):
    mask = cost.to_mask(spec)
    expected = Lq * Lk if mask is None else int(mask.to_array(Lq, Lk).sum())
    assert cost.allowed_cells(Lq, Lk, spec) == expected


def test_allowed_cells_of_long_sequences_by_formula():
    n = 100_000                                     # partial tiles only are evaluated cell by cell
    assert cost.allowed_cells(n, n, "causal") == n * (n + 1) // 2
    assert cost.allowed_cells(n, n, "window:99") == 100 * n - 99 * 100 // 2


def test_window_means_l_keys_back():
    grid = cost.to_mask("window:2").to_array(6, 6)                  # masks.SPEC_GRAMMAR: keys p-2 .. p
    assert grid.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3]


@pytest.mark.parametrize("Lq, Lk", SIZES)
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("block_q, block_k", [(1, 1), (4, 8), (16, 16), (7, 5)])
def test_tile_counts_match_mask_blocks(Lq, Lk, spec, block_q, block_k):
    mask = cost.to_mask(spec) or masks.full()
    nonempty = mask.blocks(Lq, Lk, block_q, block_k) != masks.EMPTY          # (nqb, nkb)
    rows = np.diff(np.minimum(np.arange(0, Lq + block_q, block_q), Lq))[: nonempty.shape[0]]
    cols = np.diff(np.minimum(np.arange(0, Lk + block_k, block_k), Lk))[: nonempty.shape[1]]
    t = cost.tile_work(cost.layout_of(1, 1, 1, Lq, Lk, 8), cost.to_mask(spec), block_q, block_k)
    assert t.tiles == nonempty.sum()
    assert t.cells == (nonempty * rows[:, None] * cols[None, :]).sum()
    assert t.keys_read == (nonempty * cols[None, :]).sum()
    assert t.rescales == (np.maximum(nonempty.sum(axis=1) - 1, 0) * rows).sum()


# --- KV cache against published figures --------------------------------------------------------------------------
@pytest.mark.parametrize("preset, kib", [
    ("llama-2-7b", 512),     # 2 * 32 layers * 32 heads * 128 * 2 bytes: the "0.5 MB per token" figure
    ("llama-2-70b", 320),    # GQA with 8 kv heads: 2 * 80 * 8 * 128 * 2
    ("mistral-7b", 128),     # 2 * 32 * 8 * 128 * 2
    ("llama-3-8b", 128),
    ("gpt2", 36),            # 2 * 12 * 12 * 64 * 2
])
def test_kv_bytes_per_token_fp16(preset, kib):
    assert cost.estimate(preset, 1024, dtype="float16").kv_bytes_per_token == kib * 1024


def test_preset_shapes():
    p = cost.PRESETS
    assert (p["gpt2"].d_model, p["gpt2"].n_layers, p["gpt2"].context) == (768, 12, 1024)
    assert (p["llama-2-7b"].d_model, p["llama-2-7b"].n_kv_heads, p["llama-2-7b"].context) == (4096, 32, 4096)
    assert (p["llama-2-70b"].d_model, p["llama-2-70b"].n_heads, p["llama-2-70b"].n_kv_heads) == (8192, 64, 8)
    assert p["mistral-7b"].mask == "window:4095" and p["mistral-7b"].n_kv_heads == 8
    assert (p["llama-3-8b"].n_kv_heads, p["llama-3-8b"].context) == (8, 8192)
    assert all(cfg.source for cfg in p.values())


def test_llama2_7b_kv_cache_total_and_mistral_rolling_buffer():
    assert cost.estimate("llama-2-7b", 4096, batch=2).kv_cache_bytes == 2 * 4096 * 512 * 1024   # 4 GiB
    mistral = cost.estimate("mistral-7b", 32768)
    assert mistral.kv_cached_tokens == 4096 and mistral.kv_cache_bytes == 4096 * 128 * 1024      # 512 MiB


# --- n -> 2n -----------------------------------------------------------------------------------------------------
def test_doubling_dense_and_causal_quadruple():
    for spec in ("dense", "causal"):
        r = cost.doubling("llama-2-7b", 4096, mask=spec).ratios
        assert r["useful FLOPs"] == pytest.approx(4.0, rel=1e-3)
        assert r["reference peak memory"] == pytest.approx(4.0, rel=0.01)   # n^2 plus the output (n D)
        assert r["reference score bytes"] == 4.0
        assert r["tiled peak memory"] == pytest.approx(2.0, rel=0.05)   # linear plus a constant
        assert r["KV cache"] == 2.0


def test_doubling_says_why_the_tiled_flops_do_not_quadruple():
    d = cost.doubling("gpt2", 1024, block_q=1024, block_k=256)   # causal: one query block at n, two at 2n
    assert d.ratios["tiled FLOPs"] == pytest.approx(3.0, rel=1e-3)
    assert "its FLOPs grow 3.00x, not 4.00x: at n = 1024 a single query block of 1024 rows" in d.explanation
    own = cost.doubling("gpt2", 1024)                         # the kernel's tiles: batched at n, per head at 2n
    assert (own.before.block_q, own.before.block_k, own.after.block_q, own.after.block_k) == (128, 128, 1024, 256)
    assert own.ratios["tiled FLOPs"] == pytest.approx(0.75 * 4 / (36 / 64), rel=1e-3)   # 12 of 16 tiles, 36 of 64
    assert "128 x 128 at n = 1024 (the batched regime of a small problem), 1024 x 256 at 2n; so its FLOPs grow " \
        "5.33x, not 4.00x" in own.explanation
    dense = cost.doubling("gpt2", 1024, mask="full")          # every tile computed at both sizes: nothing to explain
    assert dense.ratios["tiled FLOPs"] == pytest.approx(4.0, rel=1e-3) and "its FLOPs grow" not in dense.explanation


def test_doubling_window_doubles_the_work_but_not_the_naive_memory():
    d = cost.doubling(cost.model_config(head_dim=64, n_heads=8), 65536, mask="window:256")
    assert d.ratios["useful FLOPs"] == pytest.approx(2.0, rel=0.01)
    assert d.ratios["tiled FLOPs"] == pytest.approx(2.0, rel=0.01)
    assert d.ratios["reference FLOPs"] == 4.0
    assert d.ratios["KV cache"] == 1.0
    assert "window" in d.explanation and "2x" in d.explanation


def test_doubling_decode_is_linear():
    d = cost.doubling("llama-3-8b", 4096, q_len=1, block_q=1, block_k=256)
    assert d.after.q_len == 1 and d.after.kv_len == 8192
    assert d.ratios["useful FLOPs"] == pytest.approx(2.0)
    assert d.ratios["tiled peak memory"] == pytest.approx(1.0, rel=0.01)   # tiles and output only: O(1) in n
    assert "1 query" in str(d)


# --- the naive path's peak memory, measured ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["dense", "causal", "window:64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_naive_peak_memory_matches_tracemalloc(spec, dtype, rng):
    B, H, n, D = 1, 4, 384, 32
    q, k, v = (rng.standard_normal((B, H, n, D)).astype(dtype) for _ in range(3))
    mask = cost.to_mask(spec)
    measured = peak_memory(lambda: attnlab.scaled_dot_product_attention(q, k, v, mask=mask, impl="reference"))
    predicted = cost.estimate(cost.model_config(head_dim=D, n_heads=H), n, batch=B, dtype=dtype,
                              mask=spec).reference.peak_bytes
    assert measured == pytest.approx(predicted, rel=0.25)


@pytest.mark.parametrize("H, G, Lq, Lk, spec, blocks", [
    (4, 4, 1024, 1024, "dense", (128, 128)),
    (4, 4, 2048, 2048, "dense", (None, None)),          # the kernel's own blocks
    (4, 4, 2048, 2048, "window:128", (128, 128)),
    (8, 2, 2048, 2048, "causal", (None, None)),          # GQA: tiles of r * block_q rows
    (8, 8, 1, 4096, "dense", (None, None)),              # one decode step: 1 x 4096 tiles
])
def test_tiled_peak_memory_matches_tracemalloc(H, G, Lq, Lk, spec, blocks, rng):
    from attnlab.kernel import flash_attention

    D = 64
    q = rng.standard_normal((1, H, Lq, D)).astype(np.float32)
    k, v = (rng.standard_normal((1, G, Lk, D)).astype(np.float32) for _ in range(2))
    mask = cost.to_mask(spec)
    measured = peak_memory(lambda: flash_attention(q, k, v, mask=mask, block_q=blocks[0], block_k=blocks[1],
                                                   threads=1))
    predicted = cost.estimate(cost.model_config(head_dim=D, n_heads=H, n_kv_heads=G), Lk, q_len=Lq,
                              dtype="float32", mask=spec, block_q=blocks[0], block_k=blocks[1]).tiled.peak_bytes
    assert measured == pytest.approx(predicted, rel=0.25)


# --- input checks --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(n_heads=3, d_model=100), "not divisible"),
    (dict(n_heads=8, head_dim=64, n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(n_heads=8), "d_model or head_dim"),
    (dict(n_heads=0, head_dim=8), "n_heads must be a positive integer"),
    (dict(n_heads=8, d_model=512, head_dim=32), "disagrees"),
])
def test_model_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cost.model_config(**kwargs)


@pytest.mark.parametrize("spec", ["windo:4", "window:-3", "window:2.5", "sparse", "causal &", 3, ("window", 4)])
def test_bad_masks(spec):
    with pytest.raises((masks.MaskSpecError, TypeError), match="mask spec"):
        cost.parse_mask(spec)


def test_estimate_errors():
    with pytest.raises(ValueError, match="dtype"):
        cost.estimate("gpt2", 16, dtype="int8")
    with pytest.raises(ValueError, match="unknown preset"):
        cost.estimate("gpt-5", 16)
    with pytest.raises(TypeError, match="ModelConfig"):
        cost.estimate(12, 16)


# --- the command -------------------------------------------------------------------------------------------------
def test_cli_table_and_double(capsys):
    assert main(["cost", "--preset", "llama-2-7b", "--seq", "4096", "--double"]) == 0
    out = capsys.readouterr().out
    assert "Llama-2-7B" in out and "512 KiB per token" in out and "2 GiB for 4096 tokens" in out
    assert "n -> 2n: 4096 -> 8192" in out and "4.00x" in out and "quadruples" in out


def test_cli_custom_shape(capsys):
    assert main(["cost", "--d-model", "512", "--n-heads", "8", "--n-kv-heads", "2", "--layers", "6",
                 "--seq", "2048", "--mask", "window:256", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "mask window:256" in out and "GQA" in out and "6 layers" in out


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope", "--seq", "8"], "unknown preset"),
    (["--preset", "gpt2", "--d-model", "64", "--seq", "8"], "--preset gpt2 fixes the architecture"),
    (["--n-heads", "4", "--seq", "8"], "give --preset"),
    (["--preset", "gpt2", "--seq", "8", "--mask", "window:x"], "window takes non-negative integers"),
    (["--preset", "gpt2", "--seq", "-1"], "seq_len must be a positive integer"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert main(["cost", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("attnlab cost: error:")


def test_cli_missing_seq_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["cost", "--preset", "gpt2"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_absurd_length_is_refused_by_the_budget_not_counted_for_hours():
    from attnlab.budget import MemoryBudgetError
    for n in (2**40, 2**26):                       # a partial tile of (n/1024)^2 cells would be evaluated whole
        with pytest.raises(MemoryBudgetError, match="counting the allowed cells of mask causal"):
            cost.estimate("gpt2", n)
    assert cost.allowed_cells(2**20, 2**20, "causal") == 2**20 * (2**20 + 1) // 2      # long but fine: exact
