"""Masks as small composable functions of (b, h, q_idx, kv_idx); True means "may attend".

The idea comes from FlexAttention's ``mask_mod`` (PyTorch 2.5): a mask is a pure function of the batch index,
head index, query index and key index, and masks combine with ``&``, ``|`` and ``~``. The same object can be

- evaluated on index arrays (``mask.evaluate``),
- materialized as a boolean array (``mask.to_array(Lq, Lk)``),
- turned into a tile map for a kernel (``mask.blocks(Lq, Lk, block_q, block_k)``: 0 empty, 1 partial, 2 full),
- drawn as text (``mask.show(6, 6)``).

Query/key alignment. When Lq != Lk (a KV cache holds past keys, say) the queries are taken to be the *last* Lq
positions of the key sequence: query i sits at position ``i + Lk - Lq``. This is the "bottom_right" convention of
FlashAttention 2 and of KV-cache decoding, and the default. ``align="top_left"`` puts query i at position i
(PyTorch's ``is_causal=True`` does this). With Lq == Lk the two agree.

>>> print(causal().show(4, 4))
causal(align='bottom_right')  Lq=4 Lk=4  (# may attend, . blocked)
    k0 k1 k2 k3
q0   #  .  .  .
q1   #  #  .  .
q2   #  #  #  .
q3   #  #  #  #
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .budget import check as check_budget
from .checks import choice, integer_array, is_int, non_negative_int, positive_int, text

EMPTY, PARTIAL, FULL = 0, 1, 2
ALIGNS = ("bottom_right", "top_left")

# Tile classifier: (Lq, Lk, q_start, q_stop, k_start, k_stop, b, h) -> int array of EMPTY/PARTIAL/FULL.
# q_start/q_stop have shape (nqb, 1) and k_start/k_stop shape (1, nkb); stops are exclusive.
TileFn = Callable[..., np.ndarray]


class Mask:
    """A boolean attention mask defined by a function ``fn(b, h, q_idx, kv_idx, Lq, Lk)``.

    ``fn`` receives broadcastable integer index arrays and returns a boolean array (True = may attend).
    ``tile_fn`` classifies whole tiles without evaluating every cell; without it the classification is exact but
    evaluates the mask one stripe of query rows at a time. ``batch`` / ``heads`` give the size of the batch / head
    axis the mask depends on (None when it does not depend on it).

    ``relative``: True when, for given Lq and Lk, the mask depends only on the difference q_idx - kv_idx (not on
    b, h or the absolute positions): ``full``, ``causal``, ``sliding_window``, ``dilated`` and their ``&``, ``|``
    and ``~`` (components may use different ``align``: for fixed Lq, Lk that only shifts the difference). Every
    tile on one diagonal then has the same pattern, so a kernel may evaluate it once and reuse it.

    >>> (causal() & ~dilated(2)).relative, (causal() | key_prefix(4)).relative
    (True, False)
    """

    def __init__(self, fn, name: str, *, tile_fn: TileFn | None = None, batch: int | None = None,
                 heads: int | None = None, relative: bool = False):
        self.fn = fn
        self.name = name
        self.tile_fn = tile_fn
        self.batch = batch
        self.heads = heads
        self.relative = relative

    def __repr__(self) -> str:
        return self.name

    def _repr_html_(self, n: int = 16) -> str:
        """Notebook display: the mask drawn as text at n x n (``show``), or why it cannot be drawn at that size."""
        import html
        try:
            body = self.show(n, n)
        except ValueError as err:
            body = f"(cannot draw at {n} x {n}: {err})"
        return f"<pre style='line-height:1.05'>{html.escape(body)}</pre>"

    # --- algebra -------------------------------------------------------------------------------------------
    def __and__(self, other: "Mask") -> "Mask":
        other = _require_mask(other, "&")
        return Mask(lambda *a: self.fn(*a) & other.fn(*a), f"({self.name} & {other.name})",
                    tile_fn=_combine_tiles(self, other, np.minimum),
                    batch=_joint_size(self.batch, other.batch, "batch"),
                    heads=_joint_size(self.heads, other.heads, "heads"), relative=self.relative and other.relative)

    def __or__(self, other: "Mask") -> "Mask":
        other = _require_mask(other, "|")
        return Mask(lambda *a: self.fn(*a) | other.fn(*a), f"({self.name} | {other.name})",
                    tile_fn=_combine_tiles(self, other, np.maximum),
                    batch=_joint_size(self.batch, other.batch, "batch"),
                    heads=_joint_size(self.heads, other.heads, "heads"), relative=self.relative and other.relative)

    def __invert__(self) -> "Mask":
        tile_fn = None if self.tile_fn is None else (lambda *a: FULL - self.tile_fn(*a))
        return Mask(lambda *a: ~self.fn(*a), f"~{self.name}", tile_fn=tile_fn, batch=self.batch, heads=self.heads,
                    relative=self.relative)

    # --- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, Lq: int, Lk: int, q_idx, kv_idx, b=0, h=0) -> np.ndarray:
        """The mask at the given (broadcastable) indices, as a boolean array."""
        out = self.fn(np.asarray(b), np.asarray(h), np.asarray(q_idx), np.asarray(kv_idx), Lq, Lk)
        return np.broadcast_to(out, np.broadcast_shapes(np.shape(q_idx), np.shape(kv_idx), np.shape(out)))

    def to_array(self, Lq: int, Lk: int, *, batch: int | None = None, heads: int | None = None,
                 checked: bool = True) -> np.ndarray:
        """Materialize as a boolean NumPy array.

        Shape (Lq, Lk) when the mask depends on neither batch nor head; otherwise (B, H, Lq, Lk) with B or H
        equal to 1 along an axis the mask does not depend on. The array (one byte a cell) and the mask's
        arithmetic, evaluated STRIPE_CELLS cells at a time, are checked against the memory budget
        (``attnlab.budget``) first; ``checked=False`` skips that, for a caller that has budgeted the whole call
        (the attention paths: the planner's check covers their score-sized arrays).
        """
        _check_lengths(Lq, Lk)
        Lq, Lk = int(Lq), int(Lk)
        if self.batch is None and self.heads is None:
            if checked:
                check_budget(mask_bytes(1, Lq, Lk), f"mask {self.name}.to_array(Lq={Lq}, Lk={Lk})", instead=TILED)
            return self._striped((Lq, Lk), Lq, Lk, 0, 0)
        B = self.batch if self.batch is not None else 1
        H = self.heads if self.heads is not None else 1
        if batch is not None and self.batch is not None and batch != self.batch:
            raise ValueError(f"mask {self.name} is defined for batch size {self.batch}, but the input has {batch}")
        if heads is not None and self.heads is not None and heads != self.heads:
            raise ValueError(f"mask {self.name} is defined for {self.heads} heads, but the input has {heads}")
        if checked:
            check_budget(mask_bytes(B * H, Lq, Lk),
                         f"mask {self.name}.to_array(Lq={Lq}, Lk={Lk}) for {B} x {H} batch x heads", instead=TILED)
        b = np.arange(B)[:, None, None, None]
        h = np.arange(H)[None, :, None, None]
        return self._striped((B, H, Lq, Lk), Lq, Lk, b, h)

    def _striped(self, shape, Lq, Lk, b, h) -> np.ndarray:
        """The mask evaluated into a new boolean array of ``shape`` (..., Lq, Lk), STRIPE_CELLS cells of query rows
        at a time, so the mask's own integer arithmetic never spans the whole grid."""
        out = np.empty(shape, dtype=bool)
        rows = max(1, STRIPE_CELLS // max(Lk, 1))
        kv = np.arange(Lk)[None, :]
        for start in range(0, Lq, rows):
            stop = min(start + rows, Lq)
            out[..., start:stop, :] = self.evaluate(Lq, Lk, np.arange(start, stop)[:, None], kv, b, h)
        return out

    def blocks(self, Lq: int, Lk: int, block_q: int, block_k: int, *, b: int = 0, h: int = 0) -> np.ndarray:
        """Tile map of shape (ceil(Lq/block_q), ceil(Lk/block_k)): 0 empty, 1 partial, 2 full.

        Kernels skip empty tiles and skip evaluating the mask on full ones. Memory is O(block_q * Lk) at most.
        """
        _check_lengths(Lq, Lk)
        if not (is_int(block_q) and is_int(block_k)) or block_q < 1 or block_k < 1:
            raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
        tiles = math.ceil(Lq / block_q) * math.ceil(Lk / block_k)
        by_profile = self.tile_fn is None and self.relative and self.batch is None and self.heads is None
        evaluated = 0 if self.tile_fn is not None else \
            MASK_TEMP_BYTES * ((Lq + Lk) if by_profile else min(Lq, block_q) * Lk)   # the profile, or one stripe
        check_budget(MASK_TEMP_BYTES * tiles + evaluated,
                     f"the tile map of mask {self.name} at Lq={Lq} x Lk={Lk} in tiles of {block_q} x {block_k}",
                     instead="use larger tiles")
        q_start = np.arange(0, Lq, block_q)[:, None]
        k_start = np.arange(0, Lk, block_k)[None, :]
        q_stop, k_stop = np.minimum(q_start + block_q, Lq), np.minimum(k_start + block_k, Lk)
        if self.tile_fn is not None:
            out = self.tile_fn(Lq, Lk, q_start, q_stop, k_start, k_stop, b, h)
            return np.broadcast_to(out, (q_start.shape[0], k_start.shape[1])).astype(np.int8)
        if by_profile:
            return self._blocks_by_profile(Lq, Lk, q_start, q_stop, k_start, k_stop)
        return self._blocks_by_evaluation(Lq, Lk, block_q, block_k, b, h)

    def _blocks_by_profile(self, Lq, Lk, q_start, q_stop, k_start, k_stop) -> np.ndarray:
        """The tile map of a relative mask (one of every batch and head) from its profile: the mask at each
        difference e = q - kv in [-(Lk - 1), Lq - 1], evaluated once (Lq + Lk - 1 cells, at valid index pairs).
        A tile holds every e from q_start - (k_stop - 1) to (q_stop - 1) - k_start, so it is FULL when all of them
        are allowed and EMPTY when none is: counted with a prefix sum, exact, O(Lq + Lk + tiles)."""
        e = np.arange(-(Lk - 1), Lq)
        allowed = np.asarray(self.evaluate(Lq, Lk, np.maximum(e, 0), np.maximum(-e, 0)), bool).reshape(-1)
        count = np.concatenate([[0], np.cumsum(allowed)])                   # count[i]: allowed among e < i - (Lk-1)
        lo, hi = q_start - (k_stop - 1) + (Lk - 1), (q_stop - 1) - k_start + (Lk - 1)   # indices into allowed
        inside = count[hi + 1] - count[lo]
        return _classify(full=inside == hi - lo + 1, empty=inside == 0).astype(np.int8)

    def _blocks_by_evaluation(self, Lq, Lk, block_q, block_k, b, h) -> np.ndarray:
        nkb = math.ceil(Lk / block_k)
        out = np.empty((math.ceil(Lq / block_q), nkb), dtype=np.int8)
        kv = np.arange(Lk)[None, :]
        pad = nkb * block_k - Lk
        for i, start in enumerate(range(0, Lq, block_q)):
            rows = np.arange(start, min(start + block_q, Lq))[:, None]
            stripe = self.evaluate(Lq, Lk, rows, kv, b, h)                      # (rows, Lk)
            allowed = np.pad(stripe, ((0, 0), (0, pad)), constant_values=False).reshape(len(rows), nkb, block_k)
            count = allowed.sum(axis=(0, 2))                                     # (nkb,)
            size = len(rows) * np.minimum(block_k, Lk - np.arange(nkb) * block_k)
            out[i] = np.where(count == 0, EMPTY, np.where(count == size, FULL, PARTIAL))
        return out

    def show(self, Lq: int, Lk: int, *, b: int = 0, h: int = 0, allowed: str = "#", blocked: str = ".") -> str:
        """A text drawing of the mask for batch ``b``, head ``h``."""
        _check_lengths(Lq, Lk)
        Lq, Lk = int(Lq), int(Lk)
        allowed, blocked = text(allowed, "allowed"), text(blocked, "blocked")
        b, h = non_negative_int(b, "b"), non_negative_int(h, "h")
        check_budget(mask_bytes(1, Lq, Lk) + drawing_bytes(Lq, Lk, max(len(allowed), len(blocked))),
                     f"drawing mask {self.name} at Lq={Lq} x Lk={Lk} as text",
                     instead="draw a smaller Lq x Lk (the drawing has one character cell per query and key)")
        grid = self._striped((Lq, Lk), Lq, Lk, b, h)
        return draw(grid, title=self.name, allowed=allowed, blocked=blocked)


TILED = "use the tiled kernel (attnlab.flash_attention), which evaluates masks tile by tile"
STRIPE_CELLS = 2**22        # cells of a mask evaluated at once by to_array / show
MASK_TEMP_BYTES = 16        # bytes per evaluated cell of the built-in masks' integer arithmetic, at most (tracemalloc
                            # per cell of to_array before striping: 1.0 padding ... 2.9 random_blocks, 16.0 dilated)


def mask_bytes(arrays: int, Lq: int, Lk: int) -> int:
    """Bytes to materialize ``arrays`` boolean (Lq, Lk) grids (one byte a cell) and evaluate them stripe by stripe."""
    return arrays * Lq * Lk + MASK_TEMP_BYTES * min(Lq * Lk, max(STRIPE_CELLS, Lk))


def drawing_bytes(Lq: int, Lk: int, cell: int = 1) -> int:
    """Bytes of ``draw``'s text: each row's cells padded to the widest key label, the rows and their join."""
    width = max(3, len(f"k{Lk - 1}") + 1, cell)
    return 2 * (Lq + 2) * (max(3, len(f"q{Lq - 1}") + 1) + Lk * width + 1)


def draw(grid, title: str = "mask", allowed: str = "#", blocked: str = ".") -> str:
    """Draw a boolean (Lq, Lk) grid as text, one row per query."""
    grid = np.asarray(grid, dtype=bool)
    if grid.ndim != 2:
        raise ValueError(f"grid must be a 2-D (Lq, Lk) boolean array, got shape {grid.shape}")
    Lq, Lk = grid.shape
    check_budget(drawing_bytes(Lq, Lk, max(len(allowed), len(blocked))), f"drawing a {Lq} x {Lk} grid as text",
                 instead="draw a smaller grid")
    width = max(3, len(f"k{Lk - 1}") + 1)
    label = max(3, len(f"q{Lq - 1}") + 1)
    lines = [f"{title}  Lq={Lq} Lk={Lk}  ({allowed} may attend, {blocked} blocked)",
             " " * label + "".join(f"k{j}".rjust(width) for j in range(Lk))]
    for i in range(Lq):
        cells = "".join((allowed if grid[i, j] else blocked).rjust(width) for j in range(Lk))
        lines.append(f"q{i}".ljust(label) + cells)
    return "\n".join(lines)


# --- helpers -------------------------------------------------------------------------------------------------
def _require_mask(other, op):
    if not isinstance(other, Mask):
        raise TypeError(f"masks combine with {op} only with other masks, got {type(other).__name__}; "
                        f"wrap arrays with masks.from_array")
    return other


def _joint_size(a, b, what):
    if a is not None and b is not None and a != b:
        raise ValueError(f"cannot combine masks defined for {what} size {a} and {b}")
    return a if a is not None else b


def _combine_tiles(m1: Mask, m2: Mask, op):
    if m1.tile_fn is None or m2.tile_fn is None:
        return None
    return lambda *a: op(m1.tile_fn(*a), m2.tile_fn(*a))


def _check_lengths(Lq, Lk):
    ok = [is_int(n) or (isinstance(n, float) and n.is_integer()) for n in (Lq, Lk)]
    if not all(ok) or Lq < 0 or Lk < 0:
        raise ValueError(f"Lq and Lk must be non-negative integers, got Lq={Lq!r}, Lk={Lk!r}")


def _check_align(align):
    choice(align, "align", ALIGNS)


def _offset(Lq, Lk, align):
    """Position of query 0 in key coordinates."""
    return Lk - Lq if align == "bottom_right" else 0


def _classify(full, empty):
    return np.where(empty, EMPTY, np.where(full, FULL, PARTIAL))


# --- the mask kinds ------------------------------------------------------------------------------------------
def full() -> Mask:
    """Every query may attend to every key (no mask)."""
    return Mask(lambda b, h, q, kv, Lq, Lk: np.ones(np.broadcast_shapes(np.shape(q), np.shape(kv)), bool),
                "full()", tile_fn=lambda *a: np.full((1, 1), FULL), relative=True)


def causal(align: str = "bottom_right") -> Mask:
    """Query at position p may attend to keys 0..p (no future tokens)."""
    _check_align(align)

    def fn(b, h, q, kv, Lq, Lk):
        return kv <= q + _offset(Lq, Lk, align)

    def tiles(Lq, Lk, qs, qe, ks, ke, b, h):
        o = _offset(Lq, Lk, align)
        return _classify(full=ke - 1 <= qs + o, empty=ks > qe - 1 + o)

    return Mask(fn, f"causal(align={align!r})", tile_fn=tiles, relative=True)


def sliding_window(left: int, right: int = 0, align: str = "bottom_right") -> Mask:
    """Query at position p may attend to keys p-left .. p+right (Longformer / Mistral local attention)."""
    left, right = non_negative_int(left, "left"), non_negative_int(right, "right")
    _check_align(align)

    def fn(b, h, q, kv, Lq, Lk):
        p = q + _offset(Lq, Lk, align)
        return (kv >= p - left) & (kv <= p + right)

    def tiles(Lq, Lk, qs, qe, ks, ke, b, h):
        o = _offset(Lq, Lk, align)
        full_ = (ks >= qe - 1 + o - left) & (ke - 1 <= qs + o + right)
        empty = (ke - 1 < qs + o - left) | (ks > qe - 1 + o + right)
        return _classify(full_, empty)

    return Mask(fn, f"sliding_window(left={left}, right={right})", tile_fn=tiles, relative=True)


def padding(lengths, q_lengths=None) -> Mask:
    """Keys at index >= lengths[b] are padding and hidden; with ``q_lengths`` padded query rows are fully masked
    (their output is 0)."""
    lengths = _lengths(lengths, "lengths")
    qlen = None if q_lengths is None else _lengths(q_lengths, "q_lengths")
    if qlen is not None and len(qlen) != len(lengths):
        raise ValueError(f"q_lengths has {len(qlen)} entries but lengths has {len(lengths)}")

    def fn(b, h, q, kv, Lq, Lk):
        ok = kv < lengths[b]
        return ok if qlen is None else ok & (q < qlen[b])

    def tiles(Lq, Lk, qs, qe, ks, ke, b, h):
        n = lengths[b]
        full_, empty = ke <= n, ks >= n
        if qlen is not None:
            full_, empty = full_ & (qe <= qlen[b]), empty | (qs >= qlen[b])
        return _classify(full_, empty)

    name = f"padding(lengths={lengths.tolist()}" + ("" if qlen is None else f", q_lengths={qlen.tolist()}") + ")"
    return Mask(fn, name, tile_fn=tiles, batch=len(lengths))


def _lengths(values, name):
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise ValueError(f"{name} must be a non-empty 1-D list of non-negative integers (one per batch row), "
                         f"got {values!r}")
    return arr.astype(np.int64)


def key_prefix(n: int) -> Mask:
    """Keys 0..n-1 are visible to every query (the bidirectional part of a prefix LM)."""
    n = non_negative_int(n, "n")
    return Mask(lambda b, h, q, kv, Lq, Lk: (kv < n) & (q >= 0), f"key_prefix({n})",
                tile_fn=lambda Lq, Lk, qs, qe, ks, ke, b, h: _classify(full=ke <= n, empty=ks >= n))


def prefix_lm(prefix_len: int, align: str = "bottom_right") -> Mask:
    """The prefix is seen bidirectionally, the rest causally (T5 / UniLM prefix language model)."""
    mask = key_prefix(prefix_len) | causal(align)
    mask.name = f"prefix_lm({prefix_len})"
    return mask


def document(doc_ids, q_doc_ids=None) -> Mask:
    """Packed sequences: a query attends only to keys of its own document.

    ``doc_ids``: document id of each key, shape (Lk,) or (B, Lk). ``q_doc_ids`` defaults to the last Lq key ids
    (bottom-right alignment). Combine with ``causal()`` for packed decoder training.
    """
    k_ids = np.asarray(doc_ids)
    if k_ids.ndim not in (1, 2) or k_ids.size == 0 or not np.issubdtype(k_ids.dtype, np.integer):
        raise ValueError(f"doc_ids must be integers of shape (Lk,) or (B, Lk), got {k_ids.dtype} {k_ids.shape}")
    k_ids = np.atleast_2d(k_ids)                                                 # (B or 1, Lk)
    q_ids = None if q_doc_ids is None else np.atleast_2d(np.asarray(q_doc_ids))  # (B or 1, Lq)

    def ids(Lq, Lk):
        if k_ids.shape[1] != Lk:
            raise ValueError(f"document mask has {k_ids.shape[1]} key ids but Lk={Lk}")
        if q_ids is None:
            if Lq > Lk:
                raise ValueError(f"document mask needs q_doc_ids when Lq={Lq} > Lk={Lk}")
            return k_ids[:, Lk - Lq:], k_ids
        if q_ids.shape[1] != Lq:
            raise ValueError(f"document mask has {q_ids.shape[1]} query ids but Lq={Lq}")
        return q_ids, k_ids

    def fn(b, h, q, kv, Lq, Lk):
        qi, ki = ids(Lq, Lk)
        return qi[b % qi.shape[0], q] == ki[b % ki.shape[0], kv]

    def tiles(Lq, Lk, qs, qe, ks, ke, b, h):
        qi, ki = ids(Lq, Lk)
        qmin, qmax = _range_per_tile(qi[b % qi.shape[0]], qs[:, 0])
        kmin, kmax = _range_per_tile(ki[b % ki.shape[0]], ks[0])
        qmin, qmax, kmin, kmax = qmin[:, None], qmax[:, None], kmin[None, :], kmax[None, :]
        full_ = (qmin == qmax) & (kmin == kmax) & (qmin == kmin)
        empty = (qmax < kmin) | (kmax < qmin)
        return _classify(full_, empty)

    batch = k_ids.shape[0] if k_ids.shape[0] > 1 else None
    return Mask(fn, f"document({k_ids.shape[1]} keys)", tile_fn=tiles, batch=batch)


def _range_per_tile(values, starts):
    """Min and max of ``values`` over each tile that begins at ``starts`` (tiles are contiguous)."""
    return np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)


def dilated(stride: int, align: str = "bottom_right") -> Mask:
    """Query at position p attends to keys at distance 0, stride, 2*stride, ... (dilated / strided attention,
    Child et al. 2019). Combine with ``causal()`` or ``sliding_window`` for a causal dilated window."""
    stride = non_negative_int(stride, "stride")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    _check_align(align)

    def fn(b, h, q, kv, Lq, Lk):
        return (q + _offset(Lq, Lk, align) - kv) % stride == 0

    tile_fn = (lambda *a: np.full((1, 1), FULL)) if stride == 1 else None
    return Mask(fn, f"dilated(stride={stride})", tile_fn=tile_fn, relative=True)


def global_tokens(indices, align: str = "bottom_right") -> Mask:
    """Tokens at ``indices`` attend to everything and are attended by everything (Longformer / BigBird global
    tokens). Combine with ``sliding_window`` for Longformer's pattern.

    ``indices`` are integer positions >= 0 (whole-valued floats pass; 1.7 raises ValueError). A position at or
    beyond the sequence's end marks no token: the mask is a function of the lengths, so the same mask serves
    sequences of any length."""
    idx = np.unique(integer_array(indices, "indices").reshape(-1))      # 1.7 is refused, not truncated to 1
    if (idx < 0).any():
        raise ValueError(f"indices must be non-negative positions, got {indices!r}")
    _check_align(align)

    def fn(b, h, q, kv, Lq, Lk):
        return np.isin(q + _offset(Lq, Lk, align), idx) | np.isin(kv, idx)

    def tiles(Lq, Lk, qs, qe, ks, ke, b, h):
        o = _offset(Lq, Lk, align)
        count = lambda lo, hi: np.searchsorted(idx, hi, "left") - np.searchsorted(idx, lo, "left")
        q_glob, k_glob = count(qs + o, qe + o), count(ks, ke)
        full_ = (q_glob == qe - qs) | (k_glob == ke - ks)
        empty = (q_glob == 0) & (k_glob == 0)
        return _classify(full_, empty)

    return Mask(fn, f"global_tokens({idx.tolist()})", tile_fn=tiles)


def random_blocks(block_size: int, n_random: int, seed: int = 0, align: str = "bottom_right") -> Mask:
    """BigBird's random attention: each query block of ``block_size`` positions sees ``n_random`` key blocks
    chosen at random (seeded, so the same seed gives the same mask). Combine with ``sliding_window`` and
    ``global_tokens`` for the full BigBird pattern (Zaheer et al. 2020)."""
    block_size = non_negative_int(block_size, "block_size")
    n_random = non_negative_int(n_random, "n_random")
    seed = non_negative_int(seed, "seed")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    _check_align(align)

    def table(Lq, Lk):
        nqb = math.ceil((Lq + max(Lk - Lq, 0)) / block_size) + 1
        nkb = math.ceil(Lk / block_size)
        chosen = np.zeros((nqb, max(nkb, 1)), dtype=bool)
        for i in range(nqb):
            rng = np.random.default_rng([seed, i])
            chosen[i, rng.choice(nkb, size=min(n_random, nkb), replace=False)] = True
        return chosen

    def fn(b, h, q, kv, Lq, Lk):
        p = np.maximum(q + _offset(Lq, Lk, align), 0)
        return table(Lq, Lk)[p // block_size, kv // block_size]

    return Mask(fn, f"random_blocks(block_size={block_size}, n_random={n_random}, seed={seed})")


def from_array(array) -> Mask:
    """Wrap a boolean array of shape (Lq, Lk), (H, Lq, Lk) or (B, H, Lq, Lk) (True = may attend)."""
    arr = np.asarray(array)
    if arr.dtype != bool:
        raise TypeError(f"mask array must be boolean (True = may attend), got dtype {arr.dtype}")
    if arr.ndim not in (2, 3, 4):
        raise ValueError(f"mask array must have shape (Lq, Lk), (H, Lq, Lk) or (B, H, Lq, Lk), got {arr.shape}")
    arr4 = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)

    def fn(b, h, q, kv, Lq, Lk):
        if arr4.shape[-2:] != (Lq, Lk):
            raise ValueError(f"mask array has shape {arr.shape} but the scores are (..., {Lq}, {Lk})")
        return arr4[np.asarray(b) % arr4.shape[0], np.asarray(h) % arr4.shape[1], q, kv]

    batch = arr4.shape[0] if arr4.shape[0] > 1 else None
    heads = arr4.shape[1] if arr4.shape[1] > 1 else None
    return Mask(fn, f"from_array({'x'.join(map(str, arr.shape))})", batch=batch, heads=heads)


def from_function(fn, name: str | None = None, *, batch: int | None = None, heads: int | None = None) -> Mask:
    """Wrap a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (vectorized over NumPy arrays).

    A function that reads ``b`` or ``h`` must say how many batch rows / heads it covers with ``batch=`` /
    ``heads=``; without them the mask is materialized once, at b = 0 and h = 0, and shared by every row and head.

    >>> from_function(lambda b, h, q, kv: (q + h) % 2 == kv % 2, heads=2).to_array(2, 2)[0, 1].tolist()
    [[False, True], [True, False]]
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (b, h, q_idx, kv_idx) -> bool, got {type(fn).__name__}")
    for value, what in ((batch, "batch"), (heads, "heads")):
        positive_int(value, what, allow_none=True)
    return Mask(lambda b, h, q, kv, Lq, Lk: np.asarray(fn(b, h, q, kv), dtype=bool),
                name or getattr(fn, "__name__", "custom"), batch=batch, heads=heads)


def materialize(mask, Lq: int, Lk: int, *, batch: int | None = None, heads: int | None = None) -> np.ndarray:
    """A Mask object as a boolean array ready to broadcast against scores of ndim >= 2.

    Returns (Lq, Lk), or (B, H, Lq, Lk) for masks that depend on batch or head.
    """
    if not isinstance(mask, Mask):
        raise TypeError(f"expected a attnlab.masks.Mask, got {type(mask).__name__}")
    return mask.to_array(Lq, Lk, batch=batch, heads=heads)


# --- the mask-spec grammar: one text form for masks, used by every command, the cost model and the explorer ---
SPEC_GRAMMAR = """\
A mask spec is the Python call written as text: NAME or NAME:ARG[,ARG...], combined with & (and), | (or),
~ (not) and parentheses, binding ~ tighter than & tighter than |. Spaces are ignored.
  full | dense | none     every query sees every key                      masks.full()
  causal[:top_left]       keys 0..p (bottom-right aligned unless top_left)  masks.causal(align)
  window:L[,R]            keys p-L .. p+R (R defaults to 0: L keys back)  masks.sliding_window(L, R)
  prefix:N                the first N keys bidirectional, then causal     masks.prefix_lm(N)
  keys:N                  keys 0..N-1 visible to every query              masks.key_prefix(N)
  padding:N[,N...]        keys >= N hidden, one length per batch row      masks.padding([N, ...])
  document:N[,N...]       packed documents of these lengths               masks.document(ids)
  dilated:S               keys at distance 0, S, 2S, ...                  masks.dilated(S)
  global:I[,I...]         tokens I attend and are attended everywhere     masks.global_tokens([I, ...])
  random:BLOCK,N[,SEED]   BigBird random key blocks                       masks.random_blocks(BLOCK, N, SEED)
Examples: "causal & window:256", "window:3,3 | global:0", "document:4,4 & causal", "~dilated:2 & causal"."""

_SPEC_ARITY = {  # name -> (min args, max args or None for any number)
    "full": (0, 0), "dense": (0, 0), "none": (0, 0), "causal": (0, 1), "window": (1, 2), "prefix": (1, 1),
    "keys": (1, 1), "padding": (1, None), "document": (1, None), "dilated": (1, 1), "global": (1, None),
    "random": (2, 3),
}


class MaskSpecError(ValueError):
    """A mask spec that does not follow ``SPEC_GRAMMAR``; the message points at the offending place."""


def parse(spec: str) -> Mask:
    """The ``Mask`` a spec string describes (grammar: ``attnlab.masks.SPEC_GRAMMAR``); ``mask.spec`` holds the
    canonical text, so ``parse(m.spec)`` rebuilds the same mask.

    >>> m = parse("causal & window:2")
    >>> m.spec
    'causal & window:2'
    >>> m.to_array(4, 4).sum(axis=1).tolist()
    [1, 2, 3, 3]
    >>> parse("window:1,1 | global:0").to_array(4, 4).astype(int).tolist()
    [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 1, 1]]
    """
    if isinstance(spec, Mask):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"mask spec must be a string such as 'causal & window:256', got {type(spec).__name__}")
    tokens = _spec_tokens(spec)
    if not tokens:
        raise MaskSpecError(f"mask spec is empty; expected e.g. 'causal' or 'causal & window:256'")
    parser = _SpecParser(spec, tokens)
    mask, text = parser.union()
    if parser.pos != len(tokens):
        raise MaskSpecError(f"mask spec {spec!r}: unexpected {tokens[parser.pos]!r}; {_SPEC_HINT}")
    mask.spec = text
    return mask


def spec_of(mask) -> str | None:
    """The spec text of a mask built by ``parse`` (None for masks built otherwise, and for None)."""
    return getattr(mask, "spec", None)


_SPEC_HINT = "see attnlab.masks.SPEC_GRAMMAR (e.g. 'causal & window:256')"


def _spec_tokens(spec: str) -> list[str]:
    out, i = [], 0
    while i < len(spec):
        c = spec[i]
        if c.isspace():
            i += 1
        elif c in "&|~()":
            out.append(c)
            i += 1
        else:
            j = i
            while j < len(spec) and not spec[j].isspace() and spec[j] not in "&|~()":
                j += 1
            out.append(spec[i:j])
            i = j
    return out


class _SpecParser:
    """Recursive descent over the tokens: union := inter ('|' inter)*; inter := unary ('&' unary)*;
    unary := '~' unary | '(' union ')' | atom. Each rule returns (Mask, canonical text)."""

    def __init__(self, spec, tokens):
        self.spec, self.tokens, self.pos = spec, tokens, 0

    def _peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _binary(self, op, sub, combine):
        mask, text = sub()
        while self._peek() == op:
            self.pos += 1
            other, other_text = sub()
            mask, text = combine(mask, other), f"{text} {op} {other_text}"
        return mask, text

    def union(self):
        return self._binary("|", self.inter, lambda a, b: a | b)

    def inter(self):
        mask, text = self._binary("&", self.unary, lambda a, b: a & b)
        return mask, text

    def unary(self):
        tok = self._peek()
        if tok is None:
            raise MaskSpecError(f"mask spec {self.spec!r} ends too early; {_SPEC_HINT}")
        if tok == "~":
            self.pos += 1
            mask, text = self.unary()
            return ~mask, f"~{text}"
        if tok == "(":
            self.pos += 1
            mask, text = self.union()
            if self._peek() != ")":
                raise MaskSpecError(f"mask spec {self.spec!r}: missing ')'")
            self.pos += 1
            return mask, f"({text})"
        if tok in "&|)":
            raise MaskSpecError(f"mask spec {self.spec!r}: unexpected {tok!r}; {_SPEC_HINT}")
        self.pos += 1
        return _spec_atom(self.spec, tok)


def _spec_atom(spec, tok):
    name, _, rest = tok.partition(":")
    name = name.lower()
    if name not in _SPEC_ARITY:
        raise MaskSpecError(f"mask spec {spec!r}: unknown mask {name!r}; expected one of "
                            f"{', '.join(_SPEC_ARITY)}")
    args = [a for a in rest.split(",")] if rest else []
    lo, hi = _SPEC_ARITY[name]
    if len(args) < lo or (hi is not None and len(args) > hi):
        want = f"{lo}" if lo == hi else (f"{lo} or more" if hi is None else f"{lo} to {hi}")
        raise MaskSpecError(f"mask spec {spec!r}: {name} takes {want} argument(s) after ':', got {len(args)}")
    if name == "causal":
        if args and args[0] not in ALIGNS:
            raise MaskSpecError(f"mask spec {spec!r}: causal's argument must be one of {ALIGNS}, got {args[0]!r}")
        align = args[0] if args else "bottom_right"
        return causal(align), "causal" if align == "bottom_right" else f"causal:{align}"
    ints = [_spec_int(spec, name, a) for a in args]
    text = name if not ints else f"{name}:{','.join(map(str, ints))}"
    if name in ("full", "dense", "none"):
        return full(), "full"
    if name == "window":
        return sliding_window(ints[0], ints[1] if len(ints) > 1 else 0), (
            f"window:{ints[0]}" if len(ints) == 1 or ints[1] == 0 else text)
    if name == "prefix":
        return prefix_lm(ints[0]), text
    if name == "keys":
        return key_prefix(ints[0]), text
    if name == "padding":
        return padding(ints), text
    if name == "document":
        if min(ints) < 1:
            raise MaskSpecError(f"mask spec {spec!r}: document lengths must be >= 1, got {ints}")
        return document(np.repeat(np.arange(len(ints)), ints)), text
    if name == "dilated":
        return dilated(ints[0]), text
    if name == "global":
        return global_tokens(ints), text
    return random_blocks(*ints), text


def _spec_int(spec, name, arg):
    arg = arg.strip()
    if not (arg.isascii() and arg.isdigit()):                # ASCII 0-9 only ('²'.isdigit() is True)
        raise MaskSpecError(f"mask spec {spec!r}: {name} takes non-negative integers, got {arg!r}")
    return int(arg)
