"""What attention costs: FLOPs, bytes, peak memory and KV cache, for the reference and the tiled path.

One attention call per layer, for ``batch`` sequences, ``H`` query heads sharing ``G`` key/value heads (GQA when
G < H), ``Lq`` queries and ``Lk`` keys of head dim ``D`` (value dim ``Dv = D``). Every count is exact for the model
it states; ``estimate(...)`` returns them all and ``doubling(...)`` says what happens when the sequence doubles.

FLOPs (one multiply-add = 2 FLOPs, Vaswani et al. 2017, Table 1 gives the O(n^2 d) per layer):
    Q K^T costs 2 Lq Lk D and P V costs 2 Lq Lk Dv per (sequence, query head).
    The *useful* FLOPs count only the cells a mask allows (about half for causal, n w for a window of w keys).
    The reference path computes every cell and masks afterwards; the tiled path computes whole tiles that are not
    empty (``masks.Mask.blocks``), so its count lies between the two.
Softmax exponentials are counted apart: one per computed cell, plus, on the tiled path, one rescaling factor
exp(m_old - m_new) per query row for each visited tile after its first (online softmax, Milakov & Gimelshein 2018).

Bytes moved (traffic to main memory, HBM on a GPU and DRAM on a CPU), after Dao et al. 2022, "FlashAttention",
Algorithm 0 and Theorem 2:
    reference: read Q, K, V, write and read back S = Q K^T, write and read back P = softmax(S), write O:
           (Lq D + Lk D + Lk Dv + Lq Dv + 4 Lq Lk) * itemsize                    Theta(n d + n^2)
    tiled: read Q once, write O once, read K and V once per query block of ``block_q`` rows (only the key blocks
           of non-empty tiles), once per key/value head since its r = H / G query heads share each tile:
           H (Lq D + Lq Dv) + G (keys read over all query blocks) (D + Dv), times itemsize.
           With block_q ~ M / d for a fast memory of M elements this is Theta(n^2 d^2 / M) (Theorem 2).

Peak extra memory of one call: the bytes allocated during the call above its inputs, the returned output
included (what tracemalloc sees around the call). One definition, in ``reference_peak`` and ``tiled_peak``, read by
``estimate`` and by ``attnlab.plan`` alike; both work on the kernel's own layout (``kernel.layout.layout``):
    reference: the reference path ``attnlab.scaled_dot_product_attention`` at its widest point holds REFERENCE_LIVE
           matrices of (..., Lq, Lk): the scores, the shifted scores and their exp (3) when unmasked; with a mask also
           the masked copy (4), plus the boolean mask itself (Lq Lk bytes); or, if larger, its weighted-sum stage:
           the weights, the output (..., Lq, Dv) and one byte per value of v (its finiteness check), which is what
           a one-query decode step's peak is made of.
           (tracemalloc: 3.00 and 4.03 matrices.) ``reference_scores_bytes`` (the matrices alone) is what
           ``attnlab.planner.MEMORY_BUDGET`` bounds.
    tiled: ``attnlab.flash_attention``'s buffers, threads and key splits from ``kernel.layout.schedule``: the
           output and the per-row log-sum-exp, O(n D), once per key split, plus per used thread one R x block_k
           score tile (R = r block_q rows; the probabilities overwrite the scores), R x (D + 1) for the scaled
           queries and the folded running max, 3 R x (Dv + 1) for the accumulator, P V and a spare, 3 row vectors,
           a column of ones, from FOLD_MIN_ROWS rows a block_k x (D + 1) key tile with its column of ones, and on a
           masked call PARTIAL_TILE_BYTES per cell of one head's block_q x block_k (the r heads of a group share
           the mask) plus NumPy's UFUNC_BUFFER for evaluating the mask:
           O(threads block_q block_k + n D), never n^2. (Relative masks also keep a few partial-tile patterns.)
           In the decode regime (``kernel.layout.decode_regime``: one query block of fewer than FOLD_MIN_ROWS rows)
           every head runs in one task per key split: per thread a tile, scaled queries, accumulator and P V, row
           vectors for all G r Lq rows, NumPy's ufunc buffer for the tile's broadcast subtraction, and on a mask one
           boolean tile.

KV cache (per sequence): 2 (K and V) * n_layers * G * D * itemsize bytes per token; a mask that lets the last query
see only its last w keys (a window) needs only those (the rolling buffer cache of Jiang et al. 2023, "Mistral 7B",
section 2): ``cached_tokens``.

Masks: any spec of ``attnlab.masks.SPEC_GRAMMAR``, parsed by ``attnlab.masks.parse``, the grammar every command
uses: "full" (or "dense"), "causal", "window:L" (keys p - L .. p: at most L + 1 keys a query), "causal & window:256",
"window:3,3 | global:0", ... Queries are bottom-right aligned as in ``attnlab.masks``. The tiled path's counts come
from the kernel's tile maps (``kernel.layout.TileMaps``, built from ``Mask.blocks``): ``tile_work``.

>>> c = estimate("llama-2-7b", 4096, dtype="float16")
>>> c.kv_bytes_per_token // 1024   # KiB per token: 2 * 32 layers * 32 heads * 128 * 2 bytes
512
>>> round(doubling("gpt2", 1024, mask="dense").ratios["useful FLOPs"], 3)
4.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import masks
from .budget import check as check_budget
from ._inputs import prepare
from .checks import positive_int
from .kernel.layout import (FOLD_MIN_ROWS, Layout, TileMaps, blocks, decode_regime, layout,  # the kernel's own
                            schedule)

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

REFERENCE_LIVE = (3, 4)                 # (..., Lq, Lk) matrices alive at the reference path's peak, without / with
                                        # a mask (tracemalloc: 3.00 and 4.03 of them with the mask's bytes)
KERNEL_CALL_BYTES = 16 * 2**10          # one flash_attention call's task list, closures and BLAS-limit bookkeeping
PARTIAL_TILE_BYTES = 3                  # bytes per cell to evaluate a mask on a tile: boolean comparisons, their
                                        # "and", the inverse used by copyto (measured with tracemalloc)
UFUNC_BUFFER = (8192, 16)               # NumPy's ufunc buffer, up to 8192 elements of 16 bytes, taken when a
                                        # broadcast comparison needs buffering (measured: 128 KiB on big tiles)


# --- model configurations ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """The attention shape of a model: layers, query heads, key/value heads, head dim."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int | None = None          # trained context length, when published
    mask: str = "full"                  # the mask the model uses, a spec (attnlab.masks.SPEC_GRAMMAR)
    source: str = ""

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim

    def describe(self) -> str:
        kind = "MHA" if self.n_kv_heads == self.n_heads else ("MQA" if self.n_kv_heads == 1 else "GQA")
        ctx = f", context {self.context}" if self.context else ""
        return (f"{self.name}: {_plural(self.n_layers, 'layer')}, d_model {self.d_model}, {self.n_heads} heads x "
                f"{self.head_dim}, {_plural(self.n_kv_heads, 'kv head')} ({kind}), mask {mask_name(self.mask)}{ctx}")


def model_config(*, n_heads: int, d_model: int | None = None, head_dim: int | None = None,
                 n_kv_heads: int | None = None, n_layers: int = 1, context: int | None = None,
                 mask="full", name: str = "custom") -> ModelConfig:
    """A ModelConfig from d_model or head_dim (one is enough; both must agree).

    >>> model_config(d_model=768, n_heads=12).head_dim
    64
    """
    n_heads = positive_int(n_heads, "n_heads")
    n_layers = positive_int(n_layers, "n_layers")
    n_kv_heads = n_heads if n_kv_heads is None else positive_int(n_kv_heads, "n_kv_heads")
    if d_model is None and head_dim is None:
        raise ValueError("give d_model or head_dim")
    if d_model is not None:
        d_model = positive_int(d_model, "d_model")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        if head_dim is not None and positive_int(head_dim, "head_dim") != d_model // n_heads:
            raise ValueError(f"head_dim {head_dim} disagrees with d_model {d_model} / n_heads {n_heads}")
        head_dim = d_model // n_heads
    head_dim = positive_int(head_dim, "head_dim")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads} (grouped-query "
                         f"attention shares each key/value head among n_heads / n_kv_heads query heads)")
    return ModelConfig(name, n_layers, n_heads, n_kv_heads, head_dim,
                       None if context is None else positive_int(context, "context"), mask_name(mask))


PRESETS = {
    # Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", Table 2 (smallest model: 12
    # layers, d_model 768) and the released config (openai-community/gpt2: n_head 12, n_ctx 1024).
    "gpt2": ModelConfig("GPT-2 small", 12, 12, 12, 64, 1024, "causal",
                        "Radford et al. 2019, Table 2; openai-community/gpt2 config.json"),
    # Touvron et al. 2023, "Llama 2", Table 1 (7B: context 4k, no GQA) and meta-llama/Llama-2-7b-hf config.json:
    # hidden_size 4096, num_hidden_layers 32, num_attention_heads 32, num_key_value_heads 32.
    "llama-2-7b": ModelConfig("Llama-2-7B", 32, 32, 32, 128, 4096, "causal",
                              "Touvron et al. 2023, Table 1; meta-llama/Llama-2-7b-hf config.json"),
    # Touvron et al. 2023, Table 1 (70B uses GQA) and meta-llama/Llama-2-70b-hf config.json: hidden_size 8192,
    # num_hidden_layers 80, num_attention_heads 64, num_key_value_heads 8.
    "llama-2-70b": ModelConfig("Llama-2-70B", 80, 64, 8, 128, 4096, "causal",
                               "Touvron et al. 2023, Table 1; meta-llama/Llama-2-70b-hf config.json"),
    # Jiang et al. 2023, "Mistral 7B", Table 1: dim 4096, n_layers 32, head_dim 128, n_heads 32, n_kv_heads 8,
    # window_size 4096, context_len 8192; section 2: a rolling buffer cache of W = 4096 entries, so each query sees
    # itself and the W - 1 keys before it: window:4095 (keys p - 4095 .. p).
    "mistral-7b": ModelConfig("Mistral-7B", 32, 32, 8, 128, 8192, "window:4095",
                              "Jiang et al. 2023, Table 1"),
    # Llama Team 2024, "The Llama 3 Herd of Models", Table 3 (8B: 32 layers, model dim 4096, 32 attention heads,
    # 8 key/value heads) and the Meta-Llama-3-8B model card (context length 8k).
    "llama-3-8b": ModelConfig("Llama-3-8B", 32, 32, 8, 128, 8192, "causal",
                              "Llama Team 2024, Table 3; meta-llama/Meta-Llama-3-8B model card"),
}


def get_preset(name: str) -> ModelConfig:
    """A preset by name (case-insensitive), e.g. "llama-2-7b"."""
    key = str(name).lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


# --- masks -------------------------------------------------------------------------------------------------------
def parse_mask(spec) -> masks.Mask:
    """The ``attnlab.masks.Mask`` of a mask spec (``attnlab.masks.SPEC_GRAMMAR``: "causal", "window:4096",
    "causal & window:256", ...; None means "full"). A Mask is returned as given. The one grammar of every command.

    >>> parse_mask("window:2").to_array(4, 4).sum(axis=1).tolist()      # keys p-2 .. p: up to 3 keys a query
    [1, 2, 3, 3]
    """
    return masks.full() if spec is None else masks.parse(spec)


def mask_name(spec) -> str:
    """The canonical spec text of a mask spec ("full" for a dense mask)."""
    m = parse_mask(spec)
    return masks.spec_of(m) or m.name


def to_mask(spec):
    """The ``attnlab.masks`` object for a mask spec (None for a full mask): what the kernels are given."""
    m = parse_mask(spec)
    return None if is_full(m) else m


def is_full(mask) -> bool:
    """Whether a parsed mask allows every cell by construction (spec "full", "dense" or "none")."""
    return masks.spec_of(mask) == "full"


def allowed_cells(q_len: int, kv_len: int, mask="full") -> int:
    """Cells (query, key) the mask allows, per sequence and head, counted exactly: whole tiles from the mask's tile
    map (``Mask.blocks``), cell by cell only inside partial tiles, so long sequences stay cheap.

    >>> allowed_cells(4, 4, "causal"), allowed_cells(4, 4, "window:1")
    (10, 7)
    """
    m = parse_mask(mask)
    if q_len == 0 or kv_len == 0:
        return 0
    b = max(8, -(-max(q_len, kv_len) // 1024))                          # at most ~1024 x 1024 tiles
    tmap = m.blocks(q_len, kv_len, b, b)                                # (nqb, nkb) EMPTY / PARTIAL / FULL
    rows = np.minimum(np.arange(tmap.shape[0]) * b + b, q_len) - np.arange(tmap.shape[0]) * b
    cols = np.minimum(np.arange(tmap.shape[1]) * b + b, kv_len) - np.arange(tmap.shape[1]) * b
    total = int(rows @ (tmap == masks.FULL) @ cols)
    partial = np.nonzero(tmap == masks.PARTIAL)
    if partial[0].size:                                                 # each partial tile is evaluated whole
        check_budget(masks.MASK_TEMP_BYTES * b * b, f"counting the allowed cells of mask {m.name} at "
                     f"Lq={q_len} x Lk={kv_len} (tiles of {b} x {b} evaluated cell by cell)",
                     instead="estimate a shorter sequence")
    for i, j in zip(*partial):
        qi = np.arange(i * b, i * b + rows[i])[:, None]
        kj = np.arange(j * b, j * b + cols[j])[None, :]
        total += int(np.count_nonzero(m.evaluate(q_len, kv_len, qi, kj)))
    return total


def cached_tokens(kv_len: int, mask="full") -> int:
    """Keys a KV cache must hold for the next query: from the first key the last query may see to the end (a
    window keeps only its last keys: the rolling buffer of Jiang et al. 2023, section 2)."""
    m = parse_mask(mask)
    row = m.evaluate(kv_len, kv_len, np.array([[kv_len - 1]]), np.arange(kv_len)[None, :])[0]
    first = np.flatnonzero(row)
    return int(kv_len - first[0]) if first.size else 0


@dataclass(frozen=True)
class TileWork:
    """What the tiled kernel visits, per key/value head group summed over the kernel's groups (``Layout.lead``):
    ``cells`` of non-empty tiles per query head, ``keys_read`` per query block summed over blocks, ``rescales`` =
    sum over query rows of (visited tiles - 1), the exp(m_old - m_new) factors, and the ``tiles`` computed
    (``kernel.layout.TileCounts`` gives the same tiles as empty / partial / full)."""

    cells: int
    keys_read: int
    rescales: int
    tiles: int


def tile_work(lay: Layout, mask, block_q: int, block_k: int) -> TileWork:
    """Count the work of the kernel's own tile maps (``kernel.layout.TileMaps``) for a mask (None: full).

    >>> tile_work(layout_of(1, 1, 1, 4, 4, 8), masks.causal(), 2, 2)
    TileWork(cells=12, keys_read=6, rescales=2, tiles=3)
    """
    maps = TileMaps(mask, lay, block_q, block_k)
    starts_q, starts_k = np.arange(maps.nqb) * block_q, np.arange(maps.nkb) * block_k
    rows = np.minimum(starts_q + block_q, lay.Lq) - starts_q                # (nqb,) rows per query block
    cols = np.minimum(starts_k + block_k, lay.Lk) - starts_k                # (nkb,) keys per key block
    shared = mask is None or not isinstance(mask, masks.Mask) or (mask.batch is None and mask.heads is None)
    groups = [(maps[None], maps.n_lead)] if shared else [(maps[idx], 1) for idx in np.ndindex(*lay.lead)]
    cells = keys = rescales = tiles = 0
    for tmap, times in groups:
        visited = (tmap != masks.EMPTY).astype(np.int64)                    # (nqb, nkb)
        per_block = visited.sum(axis=1)                                     # (nqb,) tiles per query block
        cells += times * int(rows @ visited @ cols)
        keys += times * int((visited @ cols).sum())
        rescales += times * int((rows * np.maximum(per_block - 1, 0)).sum())
        tiles += times * int(per_block.sum())
    return TileWork(cells, keys, rescales, tiles)


def layout_of(batch: int, n_heads: int, n_kv_heads: int, q_len: int, kv_len: int, head_dim: int,
              v_dim: int | None = None) -> Layout:
    """The kernel's layout (``kernel.layout.layout``) of q (batch, n_heads, q_len, head_dim) and k, v (batch,
    n_kv_heads, kv_len, head_dim / v_dim), from shapes alone (zero-stride arrays, nothing allocated)."""
    shapes = ((batch, n_heads, q_len, head_dim), (batch, n_kv_heads, kv_len, head_dim),
              (batch, n_kv_heads, kv_len, head_dim if v_dim is None else v_dim))
    arrays = [np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), s, (0,) * len(s)) for s in shapes]
    return layout(prepare(*arrays, "cost"))


# --- peak memory: one definition, used by estimate() and by attnlab.plan() ----------------------------------------
def reference_scores_bytes(lay: Layout, itemsize: int, masked: bool) -> int:
    """The score-sized intermediates of the reference path: REFERENCE_LIVE matrices of (..., Lq, Lk) at its
    widest point. This is what ``attnlab.planner.MEMORY_BUDGET`` bounds."""
    return REFERENCE_LIVE[bool(masked)] * math.prod(lay.scores_shape) * itemsize


def reference_peak(lay: Layout, itemsize: int, masked: bool) -> int:
    """Peak extra memory of the reference path, the larger of its two stages, with the materialized boolean mask
    (Lq x Lk bytes) alive in both: the softmax (REFERENCE_LIVE score-sized matrices), then the weighted sum (the
    weights, the finiteness check of v, one byte per value, see ``reference.weighted_sum``, and the output
    (..., Lq, Dv)). Peak = bytes allocated during the call above its inputs, the returned output included (what
    tracemalloc sees around the call); the second stage is the larger one only when Lk is small next to D (a
    decode step)."""
    scores = math.prod(lay.scores_shape) * itemsize
    out = math.prod(lay.scores_shape[:-1]) * lay.v.shape[-1] * itemsize
    finite_v = math.prod(np.broadcast_shapes(lay.lead + (1, 1, 1), lay.v.shape)[:-3]) * lay.Lk * lay.v.shape[-1]
    mask = lay.Lq * lay.Lk if masked else 0
    return mask + max(reference_scores_bytes(lay, itemsize, masked), scores + finite_v + out)


def tiled_peak(lay: Layout, block_q: int, block_k: int, threads: int, itemsize: int, mask) -> int:
    """Peak extra memory of ``attnlab.flash_attention`` (same definition as ``reference_peak``: above the inputs,
    output included), from the kernel's own schedule (``kernel.layout.schedule``, ``decode_regime``): the output
    and the per-row log-sum-exp (once per key split), plus per used thread the buffers of one task, plus
    KERNEL_CALL_BYTES; ``mask`` is the call's (None, a Mask or a boolean array). Not counted: the few partial-tile
    patterns a relative mask keeps for the call."""
    D, Dv = lay.q.shape[-1], lay.v.shape[-1]
    R, cols = lay.r * min(block_q, max(lay.Lq, 1)), min(block_k, max(lay.Lk, 1))
    masked = mask is not None
    decode = decode_regime(lay, block_q, block_k, mask=mask)
    splits, used = schedule(lay, block_q, block_k, threads, decode)
    if decode:                            # every head in one task per key split
        R *= math.prod(lay.lead)
        per_thread = (R * cols + R * D + 2 * R * Dv + 6 * R) * itemsize                  # tile, scaled q, sums
        per_thread += min(R * cols, UFUNC_BUFFER[0]) * itemsize  # NumPy buffers the shift's broadcast subtraction
        per_thread += R * cols if masked else 0                                           # the tile's mask
        if lay.Lq > block_q:              # the batched regime: a query block's result, before it is copied out
            per_thread += (R * Dv + R) * itemsize
    else:
        per_thread = (R * cols + R * (D + 1) + 3 * R * (Dv + 1) + 3 * R + cols) * itemsize  # tile, [q | -m], acc
        per_thread += cols * (D + 1) * itemsize if R >= FOLD_MIN_ROWS else 0          # [k | 1] key tile
        if masked:                        # the mask is evaluated on (1, block_q, cols): the r heads share it
            cells = min(block_q, max(lay.Lq, 1)) * cols
            per_thread += cells * PARTIAL_TILE_BYTES + min(cells, UFUNC_BUFFER[0]) * UFUNC_BUFFER[1]
    rows_out = math.prod(lay.scores_shape[:-1])
    return splits * rows_out * (Dv + 1) * itemsize + used * per_thread + KERNEL_CALL_BYTES


# --- the estimate ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathCost:
    """Cost of one path. FLOPs, exp count and bytes moved are for all layers; memory is for one layer's call."""

    path: str
    flops: int
    exp_count: int
    score_bytes: int      # score-matrix storage: reference scores + weights; tiled: its per-thread tiles
    bytes_moved: int
    peak_bytes: int


@dataclass(frozen=True)
class Cost:
    """Everything ``estimate`` computes; ``print(cost)`` shows it as a table."""

    config: ModelConfig
    batch: int
    q_len: int
    kv_len: int
    dtype: str
    mask: str                     # canonical spec (attnlab.masks.SPEC_GRAMMAR)
    block_q: int
    block_k: int
    threads: int
    allowed_cells: int            # per sequence and query head
    useful_flops: int             # 2 * allowed cells * (D + Dv), all sequences, heads and layers
    reference: PathCost
    tiled: PathCost
    kv_bytes_per_token: int       # per sequence, all layers
    kv_cached_tokens: int         # per sequence
    kv_cache_bytes: int           # all sequences
    notes: tuple = field(default=())

    def table(self) -> str:
        return format_cost(self)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return {"model": self.config.name, "batch": self.batch, "q_len": self.q_len, "kv_len": self.kv_len,
                "dtype": self.dtype, "mask": mask_name(self.mask), "n_layers": self.config.n_layers,
                "n_heads": self.config.n_heads, "n_kv_heads": self.config.n_kv_heads,
                "head_dim": self.config.head_dim, "block_q": self.block_q, "block_k": self.block_k,
                "threads": self.threads, "allowed_cells": self.allowed_cells, "useful_flops": self.useful_flops,
                "reference": vars(self.reference), "tiled": vars(self.tiled),
                "kv_bytes_per_token": self.kv_bytes_per_token, "kv_cached_tokens": self.kv_cached_tokens,
                "kv_cache_bytes": self.kv_cache_bytes}


def estimate(model, seq_len: int, *, batch: int = 1, q_len: int | None = None, dtype: str = "float16",
             mask=None, block_q: int | None = None, block_k: int | None = None, threads: int = 1) -> Cost:
    """The cost of attention for ``model`` (a preset name or a ModelConfig) over ``seq_len`` keys.

    ``q_len`` defaults to ``seq_len`` (a prefill / training pass); ``q_len=1`` is one decode step with a KV cache
    of ``seq_len`` tokens. ``mask`` defaults to the model's own (causal for the decoder presets, a 4096 window
    for Mistral). ``block_q``, ``block_k``, ``threads``: the tiled kernel's tiling; the blocks default to the
    kernel's own choice (``attnlab.planner.default_blocks``), threads to 1 (the kernel's default is every core).
    """
    if isinstance(model, str) and model.lower() not in PRESETS:
        raise ValueError(f"model must be a preset name or a ModelConfig: unknown preset {model!r}; choose one of "
                         f"{', '.join(PRESETS)}")
    cfg = get_preset(model) if isinstance(model, str) else model
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"model must be a preset name or a ModelConfig, got {type(model).__name__}")
    Lk = positive_int(seq_len, "seq_len")
    Lq = Lk if q_len is None else positive_int(q_len, "q_len")
    B, threads = positive_int(batch, "batch"), positive_int(threads, "threads")
    positive_int(block_q, "block_q", allow_none=True), positive_int(block_k, "block_k", allow_none=True)
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {str(dtype)[:60]!r}")
    size = DTYPE_BYTES[dtype]
    spec = mask_name(cfg.mask if mask is None else mask)
    m = to_mask(spec)                                                 # None: full, what the kernel is given
    D = Dv = cfg.head_dim
    heads, layers = B * cfg.n_heads, cfg.n_layers                     # (sequence, query head) pairs per layer
    allowed = allowed_cells(Lq, Lk, spec)
    lay = layout_of(B, cfg.n_heads, cfg.n_kv_heads, Lq, Lk, D, Dv)
    masked = m is not None
    reference = PathCost(
        "reference",
        flops=2 * Lq * Lk * (D + Dv) * heads * layers,
        exp_count=Lq * Lk * heads * layers,
        score_bytes=2 * heads * Lq * Lk * size,                       # scores and weights, one layer
        bytes_moved=(Lq * D + Lk * D + Lk * Dv + Lq * Dv + 4 * Lq * Lk) * size * heads * layers,
        peak_bytes=reference_peak(lay, size, masked))
    block_q, block_k = blocks(lay, block_q, block_k, mask=m)         # the kernel's own choice where not given
    work = tile_work(lay, m, block_q, block_k)
    decode = decode_regime(lay, block_q, block_k, mask=m)
    splits, used = schedule(lay, block_q, block_k, threads, decode)
    rows = lay.r * min(block_q, Lq) * (math.prod(lay.lead) if decode else 1)
    tiled = PathCost(
        "tiled",
        flops=2 * work.cells * lay.r * (D + Dv) * layers,
        exp_count=(work.cells + work.rescales) * lay.r * layers,
        score_bytes=used * rows * min(block_k, Lk) * size,
        bytes_moved=(heads * Lq * (D + Dv) + work.keys_read * (D + Dv)) * size * layers,
        peak_bytes=tiled_peak(lay, block_q, block_k, threads, size, m))
    per_token = 2 * layers * cfg.n_kv_heads * D * size
    cached = cached_tokens(Lk, spec)
    notes = []
    if cfg.context and Lk > cfg.context:
        notes.append(f"seq_len {Lk} exceeds {cfg.name}'s published context {cfg.context}")
    if cached < Lk:
        notes.append(f"KV cache holds the last {cached} tokens only (rolling buffer)")
    return Cost(cfg, B, Lq, Lk, dtype, spec, block_q, block_k, threads, allowed,
                2 * allowed * (D + Dv) * heads * layers, reference, tiled, per_token, cached, B * cached * per_token,
                tuple(notes))


# --- n -> 2n -----------------------------------------------------------------------------------------------------
QUANTITIES = {
    "useful FLOPs": lambda c: c.useful_flops,
    "reference FLOPs": lambda c: c.reference.flops,
    "tiled FLOPs": lambda c: c.tiled.flops,
    "reference score bytes": lambda c: c.reference.score_bytes,
    "reference peak memory": lambda c: c.reference.peak_bytes,
    "tiled peak memory": lambda c: c.tiled.peak_bytes,
    "reference bytes moved": lambda c: c.reference.bytes_moved,
    "tiled bytes moved": lambda c: c.tiled.bytes_moved,
    "KV cache": lambda c: c.kv_cache_bytes,
}


@dataclass(frozen=True)
class Doubling:
    """The model's answer to "what happens when n doubles": after / before for each quantity."""

    before: Cost
    after: Cost
    ratios: dict
    explanation: str

    def table(self) -> str:
        q = self.before.q_len
        fixed = f" ({_plural(q, 'query')})" if q == self.after.q_len else ""
        lines = [f"n -> 2n: {self.before.kv_len} -> {self.after.kv_len} keys{fixed}",
                 f"{'quantity':<20} {'at n':>12} {'at 2n':>12} {'ratio':>7}"]
        for name, get in QUANTITIES.items():
            unit = _flops if "FLOPs" in name else _bytes
            lines.append(f"{name:<20} {unit(get(self.before)):>12} {unit(get(self.after)):>12} "
                         f"{self.ratios[name]:>6.2f}x")
        return "\n".join(lines + ["", self.explanation])

    def __str__(self) -> str:
        return self.table()


def doubling(model, seq_len: int, **kwargs) -> Doubling:
    """Estimate at ``seq_len`` and ``2 * seq_len`` (same other arguments) and explain the ratios.

    With ``q_len`` given (a decode step, say) only the context doubles and the queries stay as they are.
    """
    before = estimate(model, seq_len, **kwargs)
    after = estimate(model, 2 * before.kv_len, **kwargs)
    ratios = {name: (get(after) / get(before) if get(before) else float("nan")) for name, get in QUANTITIES.items()}
    return Doubling(before, after, ratios, explain(before, ratios, after))


def explain(before: Cost, ratios: dict, after: Cost | None = None) -> str:
    """A short explanation of the n -> 2n ratios in words (``after``: the cost at 2n, for its tile sizes)."""
    n, w = before.kv_len, before.kv_cached_tokens          # w < n: the mask keeps only the last w keys
    windowed = w < n
    r = {k: f"{v:.2f}x" for k, v in ratios.items()}
    if before.q_len != n:
        q = _plural(before.q_len, "query")
        work = (f"Only the context doubles ({q}): every query reads twice the keys, so work, "
                f"bytes moved and the KV cache grow about 2x (useful FLOPs {r['useful FLOPs']}), linear in n.")
    elif windowed:
        work = (f"With a window ({mask_name(before.mask)}) each query still sees at most {w} keys: twice the "
                f"queries, same keys each, so the useful work tends to 2x (n w), not 4x (useful FLOPs "
                f"{r['useful FLOPs']}, tiled FLOPs {r['tiled FLOPs']}). The reference path still builds the full "
                f"n x n matrix: {r['reference FLOPs']} FLOPs, {r['reference peak memory']} memory.")
    else:
        work = (f"Twice the queries, each seeing twice the keys: the score matrix has 4x the cells, so doubling "
                f"roughly quadruples the work (useful FLOPs {r['useful FLOPs']}) and the reference path's "
                f"memory ({r['reference peak memory']}): n^2.")
    retiled = after is not None and (after.block_q, after.block_k) != (before.block_q, before.block_k)
    if before.q_len == n and abs(ratios["tiled FLOPs"] - ratios["useful FLOPs"]) > 0.05 and retiled:
        work += (f" The tiled path computes whole tiles and skips only the ones the mask blocks entirely, and its "
                 f"tiles change with n: {before.block_q} x {before.block_k} at n = {n} (the batched regime of a "
                 f"small problem), {after.block_q} x {after.block_k} at 2n; so its FLOPs grow {r['tiled FLOPs']}, "
                 f"not {r['useful FLOPs']}.")
    elif before.q_len == n and abs(ratios["tiled FLOPs"] - ratios["useful FLOPs"]) > 0.05:
        first = (f"at n = {n} a single query block of {before.block_q} rows holds every query, so no tile is wholly "
                 f"blocked and none is skipped, while at 2n some are" if before.block_q >= n else
                 "the share of wholly blocked tiles changes with n")
        work += (f" The tiled path computes whole {before.block_q} x {before.block_k} tiles and skips only the ones the "
                 f"mask blocks entirely, so its FLOPs grow {r['tiled FLOPs']}, not {r['useful FLOPs']}: {first}.")
    return (f"{work} The tiled path never stores the n x n matrix: its memory grows {r['tiled peak memory']} "
            f"(the output and per-row statistics: linear in the number of queries). The KV cache grows {r['KV cache']} "
            f"(one entry per cached token{'; a window caps it' if windowed else ''}).")


# --- formatting --------------------------------------------------------------------------------------------------
def format_cost(c: Cost) -> str:
    cfg = c.config
    head = [cfg.describe(),
            f"batch {c.batch}, {_plural(c.q_len, 'query')} x {_plural(c.kv_len, 'key')}, {c.dtype}, mask {mask_name(c.mask)} "
            f"({c.allowed_cells / (c.q_len * c.kv_len):.1%} of cells allowed); tiled: {c.block_q}x{c.block_k} "
            f"tiles, {_plural(c.threads, 'thread')}",
            f"{'quantity':<34} {'reference':>12} {'tiled':>12}"]
    rows = [("attention FLOPs, all layers", _flops(c.reference.flops), _flops(c.tiled.flops)),
            ("  of which useful (allowed cells)", _flops(c.useful_flops), _flops(c.useful_flops)),
            ("softmax exp count, all layers", _count(c.reference.exp_count), _count(c.tiled.exp_count)),
            ("score storage, one layer", _bytes(c.reference.score_bytes), _bytes(c.tiled.score_bytes)),
            ("bytes moved (DRAM/HBM), all layers", _bytes(c.reference.bytes_moved), _bytes(c.tiled.bytes_moved)),
            ("peak extra memory, one layer", _bytes(c.reference.peak_bytes), _bytes(c.tiled.peak_bytes))]
    lines = head + [f"{name:<34} {a:>12} {b:>12}" for name, a, b in rows]
    lines.append(f"KV cache: {_bytes(c.kv_bytes_per_token)} per token per sequence; {_bytes(c.kv_cache_bytes)} "
                 f"for {_plural(c.kv_cached_tokens, 'token')} x batch {c.batch}")
    return "\n".join(lines + [f"note: {n}" for n in c.notes])


def _plural(n: int, word: str) -> str:
    """A count with its noun.

    >>> _plural(1, "query"), _plural(2, "query"), _plural(3, "key")
    ('1 query', '2 queries', '3 keys')
    """
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") and word[-2] not in "aeiou" else f"{n} {word}s"


def _bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.0f} B"


def _flops(n: float) -> str:
    return _scaled(n, "FLOP")


def _count(n: float) -> str:
    return _scaled(n, "")


def _scaled(n: float, unit: str) -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.4g} {prefix}{unit}".rstrip()
    return f"{n:.0f} {unit}".rstrip()




__all__ = ["Cost", "Doubling", "ModelConfig", "PathCost", "PRESETS", "TileWork", "allowed_cells", "cached_tokens",
           "doubling", "estimate", "explain", "get_preset", "layout_of", "mask_name", "model_config", "parse_mask",
           "reference_peak", "reference_scores_bytes", "tile_work", "tiled_peak", "to_mask"]
