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

Peak extra memory of one call (above its inputs):
    reference: the reference path ``attnlab.scaled_dot_product_attention`` at its widest point holds REFERENCE_LIVE
           matrices of B H Lq Lk: the scores, the shifted scores and their exp (3) when unmasked; with a mask also
           the masked copy (4), plus the boolean mask itself (Lq Lk bytes). (tracemalloc: 3.02 and 4.02 matrices.)
    tiled: ``attnlab.flash_attention``'s buffers: the output and the per-row log-sum-exp, O(n D), plus per thread
           one R x block_k score tile (R = r block_q rows; the probabilities overwrite the scores), R x (D + 1)
           for the scaled queries and the folded running max, 3 R x (Dv + 1) for the accumulator, P V and a
           spare, 3 row vectors, a column of ones, from 16 rows a block_k x (D + 1) key tile with its column of
           ones, and on a partial tile of a mask PARTIAL_TILE_BYTES per cell plus NumPy's UFUNC_BUFFER for
           evaluating the mask: O(threads block_q block_k + n D), never n^2. (Relative masks also keep their
           partial-tile patterns, 2 or 3 boolean tiles for causal and windows: ``planner.tiled_memory``.)
           A decoding step (fewer than 16 rows per head group, one query block) runs every head in one task per
           key split: per thread a tile, scaled queries, accumulator and P V, row vectors for all G r Lq rows,
           NumPy's ufunc buffer for the tile's broadcast subtraction, and on a mask one boolean tile.

KV cache (per sequence): 2 (K and V) * n_layers * G * D * itemsize bytes per token; a sliding window of w keys
needs only the last w tokens (the rolling buffer cache of Jiang et al. 2023, "Mistral 7B", section 2).

Masks: "dense", "causal", or ("window", w) / "window:w": each query sees at most w keys, itself and the w - 1
before it, i.e. ``attnlab.masks.sliding_window(w - 1)``. Queries are bottom-right aligned as in ``attnlab.masks``.

>>> c = estimate("llama-2-7b", 4096, dtype="float16")
>>> c.kv_bytes_per_token // 1024   # KiB per token: 2 * 32 layers * 32 heads * 128 * 2 bytes
512
>>> round(doubling("gpt2", 1024, mask="dense").ratios["useful FLOPs"], 3)
4.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import masks
from .checks import positive_int

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

REFERENCE_LIVE = {"dense": 3, "masked": 4}  # full B x H x Lq x Lk matrices alive at the reference path's peak
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
    mask: tuple = ("dense",)            # the mask the model uses
    source: str = ""

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim

    def describe(self) -> str:
        kind = "MHA" if self.n_kv_heads == self.n_heads else ("MQA" if self.n_kv_heads == 1 else "GQA")
        ctx = f", context {self.context}" if self.context else ""
        return (f"{self.name}: {_plural(self.n_layers, 'layer')}, d_model {self.d_model}, {self.n_heads} heads x "
                f"{self.head_dim}, {self.n_kv_heads} kv heads ({kind}), mask {mask_name(self.mask)}{ctx}")


def model_config(*, n_heads: int, d_model: int | None = None, head_dim: int | None = None,
                 n_kv_heads: int | None = None, n_layers: int = 1, context: int | None = None,
                 mask="dense", name: str = "custom") -> ModelConfig:
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
                       None if context is None else positive_int(context, "context"), parse_mask(mask))


PRESETS = {
    # Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", Table 2 (smallest model: 12
    # layers, d_model 768) and the released config (openai-community/gpt2: n_head 12, n_ctx 1024).
    "gpt2": ModelConfig("GPT-2 small", 12, 12, 12, 64, 1024, ("causal",),
                        "Radford et al. 2019, Table 2; openai-community/gpt2 config.json"),
    # Touvron et al. 2023, "Llama 2", Table 1 (7B: context 4k, no GQA) and meta-llama/Llama-2-7b-hf config.json:
    # hidden_size 4096, num_hidden_layers 32, num_attention_heads 32, num_key_value_heads 32.
    "llama-2-7b": ModelConfig("Llama-2-7B", 32, 32, 32, 128, 4096, ("causal",),
                              "Touvron et al. 2023, Table 1; meta-llama/Llama-2-7b-hf config.json"),
    # Touvron et al. 2023, Table 1 (70B uses GQA) and meta-llama/Llama-2-70b-hf config.json: hidden_size 8192,
    # num_hidden_layers 80, num_attention_heads 64, num_key_value_heads 8.
    "llama-2-70b": ModelConfig("Llama-2-70B", 80, 64, 8, 128, 4096, ("causal",),
                               "Touvron et al. 2023, Table 1; meta-llama/Llama-2-70b-hf config.json"),
    # Jiang et al. 2023, "Mistral 7B", Table 1: dim 4096, n_layers 32, head_dim 128, n_heads 32, n_kv_heads 8,
    # window_size 4096, context_len 8192.
    "mistral-7b": ModelConfig("Mistral-7B", 32, 32, 8, 128, 8192, ("window", 4096),
                              "Jiang et al. 2023, Table 1"),
    # Llama Team 2024, "The Llama 3 Herd of Models", Table 3 (8B: 32 layers, model dim 4096, 32 attention heads,
    # 8 key/value heads) and the Meta-Llama-3-8B model card (context length 8k).
    "llama-3-8b": ModelConfig("Llama-3-8B", 32, 32, 8, 128, 8192, ("causal",),
                              "Llama Team 2024, Table 3; meta-llama/Meta-Llama-3-8B model card"),
}


def get_preset(name: str) -> ModelConfig:
    """A preset by name (case-insensitive), e.g. "llama-2-7b"."""
    key = str(name).lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


# --- masks -------------------------------------------------------------------------------------------------------
def parse_mask(spec) -> tuple:
    """Normalize a mask kind: "dense" | "causal" | ("window", w) | "window:w" -> ("dense",) / ("causal",) /
    ("window", w).

    >>> parse_mask("window:256")
    ('window', 256)
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("dense", "full", "none"):
            return ("dense",)
        if text == "causal":
            return ("causal",)
        if text.startswith("window:"):
            spec = ("window", text.split(":", 1)[1])
    if isinstance(spec, tuple) and len(spec) == 1 and spec[0] in ("dense", "causal"):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "window":
        try:
            w = int(spec[1])
        except (TypeError, ValueError):
            w = 0
        if w < 1 or str(spec[1]).strip() != str(w):
            raise ValueError(f"window width must be a positive integer (keys each query sees), got {spec[1]!r}")
        return ("window", w)
    raise ValueError(f"mask must be 'dense', 'causal' or 'window:W' (e.g. window:4096), got {spec!r}")


def mask_name(spec) -> str:
    spec = parse_mask(spec)
    return spec[0] if len(spec) == 1 else f"window:{spec[1]}"


def to_mask(spec):
    """The ``attnlab.masks`` object for a mask kind (None for dense): what the kernels are given."""
    spec = parse_mask(spec)
    if spec[0] == "dense":
        return None
    return masks.causal() if spec[0] == "causal" else masks.sliding_window(spec[1] - 1)


def _key_range(q_pos, Lk, spec):
    """First and one-past-last allowed key for query positions ``q_pos`` (int array), clipped to [0, Lk]."""
    if spec[0] == "dense":
        return np.zeros_like(q_pos), np.full_like(q_pos, Lk)
    stop = np.clip(q_pos + 1, 0, Lk)
    start = np.zeros_like(q_pos) if spec[0] == "causal" else np.clip(q_pos - spec[1] + 1, 0, Lk)
    return start, np.maximum(stop, start)


def allowed_cells(q_len: int, kv_len: int, mask="dense") -> int:
    """Cells (query, key) the mask allows, per sequence and head.

    >>> allowed_cells(4, 4, "causal"), allowed_cells(4, 4, "window:2")
    (10, 7)
    """
    spec = parse_mask(mask)
    pos = np.arange(q_len, dtype=np.int64) + (kv_len - q_len)        # (Lq,) query positions, bottom-right
    start, stop = _key_range(pos, kv_len, spec)
    return int((stop - start).sum())


@dataclass(frozen=True)
class TileCounts:
    """What a tiled kernel visits: cells of non-empty tiles, keys read per query block, (row, tile) pairs."""

    cells: int
    keys_read: int
    rescales: int         # sum over query rows of (visited tiles - 1): exp(m_old - m_new) factors
    tiles: int


def tile_counts(q_len: int, kv_len: int, mask, block_q: int, block_k: int) -> TileCounts:
    """Count the non-empty tiles of a (q_len x kv_len) mask cut into block_q x block_k tiles.

    The allowed keys of a query block form one contiguous range for these mask kinds, so the non-empty key
    blocks of each query block are the blocks that range touches.

    >>> tile_counts(4, 4, "causal", 2, 2)
    TileCounts(cells=12, keys_read=6, rescales=2, tiles=3)
    """
    spec = parse_mask(mask)
    block_q, block_k = positive_int(block_q, "block_q"), positive_int(block_k, "block_k")
    qs = np.arange(0, q_len, block_q, dtype=np.int64)                  # (nqb,) first row of each query block
    rows = np.minimum(qs + block_q, q_len) - qs                         # (nqb,) rows in each query block
    offset = kv_len - q_len
    first, _ = _key_range(qs + offset, kv_len, spec)                    # keys of the block's first query
    _, last = _key_range(qs + rows - 1 + offset, kv_len, spec)          # ... and of its last query
    kb_start = first // block_k
    kb_stop = np.where(last > first, -(-last // block_k), kb_start)      # ceil; empty range -> no tiles
    keys = np.minimum(kb_stop * block_k, kv_len) - kb_start * block_k   # (nqb,) keys in the touched key blocks
    keys = np.where(kb_stop > kb_start, keys, 0)
    n_tiles = kb_stop - kb_start
    rescales = rows * np.maximum(n_tiles - 1, 0)
    return TileCounts(int((rows * keys).sum()), int(keys.sum()), int(rescales.sum()), int(n_tiles.sum()))


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
    mask: tuple
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
    cfg = get_preset(model) if isinstance(model, str) else model
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"model must be a preset name or a ModelConfig, got {type(model).__name__}")
    Lk = positive_int(seq_len, "seq_len")
    Lq = Lk if q_len is None else positive_int(q_len, "q_len")
    B, threads = positive_int(batch, "batch"), positive_int(threads, "threads")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    size = DTYPE_BYTES[dtype]
    spec = cfg.mask if mask is None else parse_mask(mask)
    D = Dv = cfg.head_dim
    heads, layers = B * cfg.n_heads, cfg.n_layers                     # (sequence, query head) pairs per layer
    allowed = allowed_cells(Lq, Lk, spec)
    full = heads * Lq * Lk * size                                     # one B x H x Lq x Lk matrix
    masked = spec[0] != "dense"
    reference = PathCost(
        "reference",
        flops=2 * Lq * Lk * (D + Dv) * heads * layers,
        exp_count=Lq * Lk * heads * layers,
        score_bytes=2 * full,
        bytes_moved=(Lq * D + Lk * D + Lk * Dv + Lq * Dv + 4 * Lq * Lk) * size * heads * layers,
        peak_bytes=max(REFERENCE_LIVE["masked" if masked else "dense"] * full + (Lq * Lk if masked else 0),
                       2 * full + heads * Lq * Dv * size, B * cfg.n_kv_heads * Lk * Dv))
    r = cfg.n_heads // cfg.n_kv_heads
    if block_q is None or block_k is None:
        from .planner import default_blocks

        bq, bk = default_blocks(r, Lq, Lk)
        block_q, block_k = block_q or bq, block_k or bk
    tiled = _tiled_path(cfg, B, Lq, Lk, size, spec, block_q, block_k, threads)
    per_token = 2 * layers * cfg.n_kv_heads * D * size
    cached = min(Lk, spec[1]) if spec[0] == "window" else Lk
    notes = []
    if cfg.context and Lk > cfg.context:
        notes.append(f"seq_len {Lk} exceeds {cfg.name}'s published context {cfg.context}")
    if spec[0] == "window" and Lk > spec[1]:
        notes.append(f"KV cache holds the last {spec[1]} tokens only (rolling buffer)")
    return Cost(cfg, B, Lq, Lk, dtype, spec, block_q, block_k, threads, allowed,
                2 * allowed * (D + Dv) * heads * layers, reference, tiled, per_token, cached, B * cached * per_token,
                tuple(notes))


def _tiled_path(cfg: ModelConfig, B, Lq, Lk, size, spec, block_q, block_k, threads) -> PathCost:
    """The tiled kernel: tasks are (sequence, key/value head, query block); each computes R x block_k tiles."""
    tiles = tile_counts(Lq, Lk, spec, positive_int(block_q, "block_q"), positive_int(block_k, "block_k"))
    D = Dv = cfg.head_dim
    H, G, layers = B * cfg.n_heads, B * cfg.n_kv_heads, cfg.n_layers
    R, cols = (cfg.n_heads // cfg.n_kv_heads) * min(block_q, Lq), min(block_k, Lk)
    tasks, nkb = G * -(-Lq // block_q), -(-Lk // block_k)
    if R < 16 and Lq <= block_q:          # decoding: every head in one task per key split (kernel.layout.decode_regime)
        R, tasks = G * R, 1
        splits = used = max(1, min(nkb, threads))
        per_thread = (R * cols + R * D + 2 * R * Dv + 6 * R) * size                  # tile, scaled q, sums
        per_thread += min(R * cols, UFUNC_BUFFER[0]) * size     # NumPy buffers the shift's broadcast subtraction
        per_thread += R * cols if spec[0] != "dense" else 0                           # the tile's mask
    else:
        splits = min(nkb, -(-threads // tasks)) if nkb > 1 and tasks < threads else 1   # keys split when few tasks
        used = min(threads, tasks * splits)
        per_thread = (R * cols + R * (D + 1) + 3 * R * (Dv + 1) + 3 * R + cols) * size    # tile, [q | -m], acc
        per_thread += cols * (D + 1) * size if R >= 16 else 0   # [k | 1] key tile: planner.FOLD_MIN_ROWS rows up
        if spec[0] != "dense":
            per_thread += R * cols * PARTIAL_TILE_BYTES + min(R * cols, UFUNC_BUFFER[0]) * UFUNC_BUFFER[1]
    return PathCost(
        "tiled",
        flops=2 * tiles.cells * (D + Dv) * H * layers,
        exp_count=(tiles.cells + tiles.rescales) * H * layers,
        score_bytes=used * R * cols * size,
        bytes_moved=(H * Lq * (D + Dv) + G * tiles.keys_read * (D + Dv)) * size * layers,
        peak_bytes=splits * H * Lq * (Dv + 1) * size + used * per_thread + KERNEL_CALL_BYTES)


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
    return Doubling(before, after, ratios, explain(before, ratios))


def explain(before: Cost, ratios: dict) -> str:
    """A short explanation of the n -> 2n ratios in words."""
    spec, n = before.mask, before.kv_len
    r = {k: f"{v:.2f}x" for k, v in ratios.items()}
    if before.q_len != n:
        q = _plural(before.q_len, "query")
        work = (f"Only the context doubles ({q}): every query reads twice the keys, so work, "
                f"bytes moved and the KV cache grow about 2x (useful FLOPs {r['useful FLOPs']}), linear in n.")
    elif spec[0] == "window" and n >= spec[1]:
        work = (f"With a window of {spec[1]} keys each query still sees at most {spec[1]} keys: twice the queries, "
                f"same keys each, so the useful work tends to 2x (n w), not 4x (useful FLOPs {r['useful FLOPs']}, "
                f"tiled FLOPs {r['tiled FLOPs']}). The reference path still builds the full n x n matrix: "
                f"{r['reference FLOPs']} FLOPs, {r['reference peak memory']} memory.")
    else:
        window = (f" (n is below the window of {spec[1]}, so the window does not bind yet)"
                  if spec[0] == "window" else "")
        work = (f"Twice the queries, each seeing twice the keys: the score matrix has 4x the cells, so doubling "
                f"roughly quadruples the work{window} (useful FLOPs {r['useful FLOPs']}) and the reference path's "
                f"memory ({r['reference peak memory']}): n^2.")
    return (f"{work} The tiled path never stores the n x n matrix: its memory grows {r['tiled peak memory']} "
            f"(the output and per-row statistics: linear in the number of queries). The KV cache grows {r['KV cache']} "
            f"(one entry per cached token{'; a window caps it' if spec[0] == 'window' else ''}).")


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




__all__ = ["Cost", "Doubling", "ModelConfig", "PathCost", "PRESETS", "TileCounts", "allowed_cells", "doubling",
           "estimate", "explain", "get_preset", "model_config", "parse_mask", "tile_counts", "to_mask"]
