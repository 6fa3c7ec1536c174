"""Exact ring attention (context parallelism) on torch.distributed.

Each of the P ranks holds a shard of the sequence: its queries q (B, H, Lq_r, D) and its keys/values k (B, G, Lk_r,
D), v (B, G, Lk_r, Dv) at the global positions ``layout.positions(rank, P, L, layout)``. Key/value blocks travel
around the ring (rank r sends to r+1, receives from r-1); after P-1 shifts every query shard has met every key
block. Each step runs attnlab's reference attention on (local queries, visiting block) and returns its log-sum-exp;
the partial results are merged exactly with ``attnlab.merge_attention`` in float32 (float64 for float64 inputs):

    step t (t = 0..P-1) on rank r:  block of rank s = (r - t) mod P
        post send(block -> r+1), recv(next block <- r-1)      the transfer overlaps the compute below
        for each piece (contiguous query range x contiguous key range) the mask does not empty:
            o, lse_p = attention(q_r[rows], k_s[keys], v_s[keys], mask[rows, keys], return_lse=True)
            (out, lse)[rows] = merge_attention((out, lse)[rows], o, lse_p)
        wait for the transfer (timeout -> RingError naming the peer)

A zigzag shard is two contiguous chunks, so a block has up to 2 x 2 pieces; under a causal mask the empty ones
are skipped, which halves the work of every off-diagonal block and makes every rank's work equal.

Ring attention: Liu, Zaharia & Abbeel 2023 ("Ring Attention with Blockwise Transformers"); the merge is the
online-softmax rescaling (Milakov & Gimelshein 2018). The zigzag layout balances causal work (Brandon et al. 2023).

Backward (exact, by recomputation from the saved log-sum-exp, as FlashAttention does per tile): with
w_s = exp(lse_s - lse), the merged output is out = sum_s w_s o_s, so dL/do_s = w_s dout and
dL/dlse_s = w_s (dout . (o_s - out) + dlse). Each step recomputes (o_s, lse_s) with autograd on the reference
path and pulls dq, dk_s, dv_s through it; the dk/dv accumulator of a block travels around the ring with the block
and is back at its owner after P shifts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import masks as masks_mod
from .. import planner
from .._array import default_scale, to_numpy
from ..budget import check as check_budget
from ..checks import flag, is_int, non_negative_int, positive_int, real
from ..api import scaled_dot_product_attention
from ..merge import merge_attention
from . import layout as layout_mod
from .comm import Ring, RingError, timeout_seconds


def ring_attention(q, k, v, *, mask=None, causal=False, group=None, layout="zigzag", scale=None, timeout=None,
                   return_lse=False, stats=None):
    """Exact attention over the whole sequence, with q, k, v sharded over the ranks of ``group``.

    q (B, H, Lq_r, D), k (B, G, Lk_r, D), v (B, G, Lk_r, Dv): this rank's shard in ``layout`` ("zigzag" or
    "contiguous", see ``attnlab.distributed.layout``); H % G == 0 (grouped-query attention). Self-attention: the
    query and key shards hold the same positions. ``mask``: an ``attnlab.masks.Mask`` (or a boolean (L, L)
    array) over *global* positions; ``causal=True`` adds ``masks.causal()``. ``timeout``: seconds (default 60)
    that any wait on a peer may take before a ``RingError`` naming that peer is raised.
    ``stats``: a dict to fill with this rank's work and traffic (blocks computed/skipped, score cells, bytes
    sent, key/value bytes held at the peak, seconds computing/waiting, reference-path calls ("stripes")).

    Each step runs attnlab's reference path (``impl="reference"``: torch tensors, autograd) on the visiting
    block, in stripes of query rows small enough for ``attnlab.planner.MEMORY_BUDGET``.

    Returns this rank's output shard (B, H, Lq_r, Dv) in q's dtype [, its log-sum-exp (B, H, Lq_r) in the merge
    dtype]. Gradients flow to q, k and v across the ring.
    """
    # every argument is checked here, before the ring is joined: a refusal on one rank must not leave its peers
    # waiting for a transfer
    causal, return_lse = flag(causal, "causal"), flag(return_lse, "return_lse")
    scale = real(scale, "scale", allow_none=True)
    layout_mod.check_layout(layout)
    _check_mask(mask)
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict to fill (or None), got {type(stats).__name__}")
    timeout_seconds(timeout)                                # a bad timeout is refused before the ring, too
    plan = _Plan(q, k, v, mask, causal, group, layout, scale, timeout, stats)
    out, lse = _RingAttention.apply(q, k, v, plan)
    return (out, lse) if return_lse else out


def _check_mask(mask) -> None:
    """None, an attnlab Mask, or a boolean array (checked against the sequence later, once its length is known)."""
    if mask is None or isinstance(mask, masks_mod.Mask):
        return
    if isinstance(mask, (torch.Tensor, np.ndarray)) and (mask.dtype == torch.bool if isinstance(mask, torch.Tensor)
                                                        else mask.dtype == bool):
        return
    raise TypeError(f"mask must be an attnlab.masks.Mask, a boolean (L, L) array or None, got "
                    f"{type(mask).__name__}" + (f" of dtype {mask.dtype}" if hasattr(mask, "dtype") else ""))


# --- the plan: who holds what, and which blocks the mask empties ---------------------------------------------
class _Plan:
    def __init__(self, q, k, v, mask, causal, group, layout, scale, timeout, stats):
        _check_tensors(q, k, v)
        self.layout = layout_mod.check_layout(layout)
        self.ring = Ring(group, timeout)
        B, H, Lq, D = q.shape
        G, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
        if Lq != Lk:
            raise ValueError(f"ring attention is self-attention over one sharded sequence: the query shard has "
                             f"{Lq} positions but the key shard has {Lk}")
        self.B, self.H, self.D, self.device = B, H, D, q.device
        self.lengths = self._agree(q, (Lq, B, H, G, D, Dv, q.element_size()))
        self.L = sum(self.lengths)
        P = self.ring.world
        long_enough = self.L >= layout_mod.n_chunks(P, self.layout)
        expected = layout_mod.local_lengths(P, self.L, self.layout) if long_enough else None
        if self.lengths != expected:
            raise ValueError(f"the ranks hold shards of lengths {self.lengths} (L={self.L}), but the {layout} layout "
                             f"over {P} ranks needs {expected}: cut the sequence with "
                             f"attnlab.distributed.shard(x, rank, world, {layout!r})")
        self.ranges = [layout_mod.ranges(r, P, self.L, self.layout) for r in range(P)]
        self.mask = _combined_mask(mask, causal, self.L, B, H)
        if self.mask is not None:                  # a mask that cannot be evaluated fails here, before any transfer
            self.mask.evaluate(self.L, self.L, np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64))
            # the largest piece whose mask is evaluated (sub_blocks): the same on every rank, so all refuse together
            longest = max(b - a for rs in self.ranges for a, b in rs)
            check_budget(_piece_bytes(self.mask, longest, longest, B, H),
                         f"ring attention's mask on a {longest} x {longest} piece of the sequence",
                         instead="use more ranks or a mask with a tile classifier (masks.causal, sliding_window)")
        self.scale = default_scale(D) if scale is None else float(scale)
        self.acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        self.itemsize = q.element_size()
        self.stats = stats
        self._blocks = {}

    def _agree(self, q, meta) -> list[int]:
        """All-gather (L_r, B, H, G, D, Dv, itemsize); every rank must agree on all but L_r. Returns every L_r."""
        rows = self.ring.all_gather(torch.tensor(meta, dtype=torch.int64, device=q.device), "shard shapes")
        rows = [tuple(int(x) for x in r) for r in rows]
        for r, row in enumerate(rows):
            if row[1:] != tuple(meta[1:]):
                raise RingError(f"ring attention: rank {r} has (B, H, G, D, Dv, itemsize) = {row[1:]} but rank "
                                f"{self.ring.rank} has {tuple(meta[1:])}; every rank must shard the same tensors",
                                peer=r)
        return [r[0] for r in rows]

    def sub_blocks(self, src: int) -> list["SubBlock"]:
        """The parts of (this rank's queries) x (rank ``src``'s keys) that the mask does not empty."""
        if src not in self._blocks:
            self._blocks[src] = sub_blocks(self.mask, self.L, self.ranges[self.ring.rank], self.ranges[src],
                                           self.B, self.H, self.device)
        return self._blocks[src]

    def block_buffers(self, src: int, like, dtype=None) -> tuple:
        """Empty (k, v) buffers (B, G, L_src, D), (B, G, L_src, Dv) for rank ``src``'s block."""
        return tuple(torch.empty(x.shape[:2] + (self.lengths[src],) + x.shape[3:], dtype=dtype or x.dtype,
                                 device=x.device) for x in like)


def _check_tensors(q, k, v) -> None:
    for x, name, what in ((q, "q", "(B, H, Lq, D)"), (k, "k", "(B, G, Lk, D)"), (v, "v", "(B, G, Lk, Dv)")):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ring_attention needs torch tensors; {name} is {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} must have shape {what}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree on (B, G, Lk)")
    if k.shape[3] != q.shape[3] or k.shape[0] != q.shape[0]:
        raise ValueError(f"k {tuple(k.shape)} must match q {tuple(q.shape)} in batch and head dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads but k/v have {k.shape[1]}: the query heads must be a multiple "
                         f"of the key/value heads")


def _combined_mask(mask, causal: bool, L: int, B: int, H: int):
    if mask is not None and not isinstance(mask, masks_mod.Mask):
        arr = to_numpy(mask)
        if arr.shape[-2:] != (L, L):
            raise ValueError(f"a mask array must cover the whole sequence, shape (..., {L}, {L}); got {arr.shape}")
        mask = masks_mod.from_array(arr)
    if causal:
        mask = masks_mod.causal() if mask is None else mask & masks_mod.causal()
    if mask is not None:
        for size, need, what in ((mask.batch, B, "batch size"), (mask.heads, H, "query heads")):
            if size is not None and size != need:
                raise ValueError(f"mask {mask.name} is defined for {what} {size}, but q has {need}")
    return mask


@dataclass
class SubBlock:
    """One contiguous (query range) x (key range) piece of a block that has at least one allowed cell."""

    q: slice          # rows of this rank's queries
    k: slice          # rows of the visiting key/value block
    mask: object      # None (every cell allowed) or a bool tensor (rows, keys) or (B|1, H|1, rows, keys)
    cells: int        # allowed score cells, over all batch rows and heads
    size: int         # score cells computed: B * H * rows * keys


def sub_blocks(mask, L: int, q_ranges, k_ranges, B: int = 1, H: int = 1, device=None) -> list[SubBlock]:
    """Split the block (queries at ``q_ranges``) x (keys at ``k_ranges``) of a length-L sequence (global positions,
    contiguous (start, stop) ranges as ``layout.ranges`` gives them) into one piece per pair of ranges and keep
    the pieces the mask does not empty. Under a causal mask a zigzag block has 2 x 2 pieces, of which one or two
    are empty: skipping them halves the work of every off-diagonal block. A piece whose mask is evaluated cell by
    cell is checked against the memory budget first."""
    if mask is not None and not isinstance(mask, masks_mod.Mask):
        raise TypeError(f"mask must be an attnlab.masks.Mask or None, got {type(mask).__name__}")
    L, B, H = non_negative_int(L, "L"), positive_int(B, "B"), positive_int(H, "H")
    q_ranges, k_ranges = _check_ranges(q_ranges, L, "q_ranges"), _check_ranges(k_ranges, L, "k_ranges")
    pieces, q_off = [], 0
    for qa, qb in q_ranges:
        k_off = 0
        for ka, kb in k_ranges:
            rows, keys = slice(q_off, q_off + qb - qa), slice(k_off, k_off + kb - ka)
            size = B * H * (qb - qa) * (kb - ka)
            kind = _tile_kind(mask, L, qa, qb, ka, kb)
            if kind == masks_mod.FULL:
                pieces.append(SubBlock(rows, keys, None, size, size))
            elif kind != masks_mod.EMPTY:
                check_budget(_piece_bytes(mask, qb - qa, kb - ka, B, H),
                             f"mask {mask.name} on a {qb - qa} x {kb - ka} piece of L={L} (B={B}, H={H})",
                             instead="use more ranks")
                arr = _evaluate(mask, L, np.arange(qa, qb), np.arange(ka, kb), B, H)
                allowed = int(arr.sum()) * size // arr.size
                if allowed:
                    blk = None if allowed == size else torch.from_numpy(np.array(arr, dtype=bool)).to(device)
                    pieces.append(SubBlock(rows, keys, blk, allowed, size))
            k_off += kb - ka
        q_off += qb - qa
    return _coalesce(pieces, len(q_ranges) * len(k_ranges))


def _check_ranges(ranges, L: int, name: str) -> list[tuple[int, int]]:
    """A non-empty list of (start, stop) ints with 0 <= start <= stop <= L."""
    ok = isinstance(ranges, (list, tuple)) and ranges and all(
        isinstance(r, (list, tuple)) and len(r) == 2 and all(is_int(x) for x in r) and 0 <= r[0] <= r[1] <= L
        for r in ranges)
    if not ok:
        raise ValueError(f"{name} must be a non-empty list of (start, stop) ranges with 0 <= start <= stop <= L={L}, "
                         f"got {ranges!r}"[:300])
    return [(int(a), int(b)) for a, b in ranges]


def _piece_bytes(mask, rows: int, keys: int, B: int, H: int) -> int:
    """Bytes to evaluate ``mask`` on a rows x keys piece, per batch row and head it depends on: the stripes and
    their concatenation (one byte a cell each) and the arithmetic of one stripe (``masks.mask_bytes``)."""
    per = (B if mask.batch is not None else 1) * (H if mask.heads is not None else 1)
    return per * rows * keys + masks_mod.mask_bytes(per, rows, keys)


def _coalesce(pieces: list[SubBlock], n: int) -> list[SubBlock]:
    """One piece for the whole block when all n pieces are there and need no mask (a dense block)."""
    if len(pieces) < n or n == 1 or any(p.mask is not None for p in pieces):
        return pieces
    rows = slice(min(p.q.start for p in pieces), max(p.q.stop for p in pieces))
    keys = slice(min(p.k.start for p in pieces), max(p.k.stop for p in pieces))
    total = sum(p.size for p in pieces)
    return [SubBlock(rows, keys, None, total, total)]


def _tile_kind(mask, L, qa, qb, ka, kb):
    """FULL / EMPTY from the mask's tile classifier without evaluating cells; PARTIAL when it cannot tell."""
    if mask is None:
        return masks_mod.FULL
    if mask.tile_fn is None or mask.batch is not None or mask.heads is not None:
        return masks_mod.PARTIAL
    one = lambda x: np.array([[x]])
    return int(np.asarray(mask.tile_fn(L, L, one(qa), one(qb), one(ka), one(kb), 0, 0)).reshape(-1)[0])


def _evaluate(mask, L, q_pos, k_pos, B, H):
    """The mask at global positions: (rows, keys), or (B|1, H|1, rows, keys) when it depends on batch or head."""
    b = np.arange(B)[:, None, None, None] if mask.batch is not None else 0
    h = np.arange(H)[None, :, None, None] if mask.heads is not None else 0
    # Lq = Lk = L: positions are global. Stripes of query rows (masks.STRIPE_CELLS cells), as Mask.to_array does,
    # so the mask's own arithmetic never spans the whole piece
    rows = max(1, masks_mod.STRIPE_CELLS // max(len(k_pos), 1))
    parts = [mask.evaluate(L, L, q_pos[s:s + rows, None], k_pos[None, :], b, h) for s in range(0, len(q_pos), rows)]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=-2) if parts else mask.evaluate(L, L, q_pos[:, None], k_pos[None, :], b, h)


def work_balance(L: int, world: int, layout: str = "zigzag", mask=None, causal: bool = False, B: int = 1,
                 H: int = 1) -> dict:
    """Per-rank work of ring attention without running it: blocks with work (of ``world``), allowed score
    cells, score cells computed (the non-empty pieces, see ``sub_blocks``), and the imbalance max/mean of the
    computed cells (1.0 = perfectly balanced).

    >>> [work_balance(8, 2, layout, causal=True)["computed"] for layout in ("contiguous", "zigzag")]
    [[16, 32], [20, 20]]
    """
    L, world = non_negative_int(L, "L"), positive_int(world, "world")
    B, H, causal = positive_int(B, "B"), positive_int(H, "H"), flag(causal, "causal")
    layout_mod.check_layout(layout)
    _check_mask(mask)
    check_budget(layout_mod.CHUNK_BYTES * world * world, f"the work table of world={world} x {world} blocks",
                 instead="use fewer ranks")
    m = _combined_mask(mask, causal, L, B, H)
    rng = [layout_mod.ranges(r, world, L, layout) for r in range(world)]
    blocks, cells, computed = [], [], []
    for r in range(world):
        per = [sub_blocks(m, L, rng[r], rng[s], B, H) for s in range(world)]
        blocks.append(sum(bool(pieces) for pieces in per))
        cells.append(sum(p.cells for pieces in per for p in pieces))
        computed.append(sum(p.size for pieces in per for p in pieces))
    mean = sum(computed) / world
    return {"layout": layout, "world": world, "L": L, "blocks": blocks, "cells": cells, "computed": computed,
            "imbalance": (max(computed) / mean) if mean else 1.0}


# --- forward and backward around the ring ----------------------------------------------------------------------
class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan):
        out, lse = _ring_forward(plan, q, (k, v))
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, (dk, dv) = _ring_backward(ctx.plan, q, (k, v), out, lse, dout, dlse)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def _ring_forward(plan: _Plan, q, own):
    """own = (k, v) of this rank. Returns (out, lse) in the merge dtype."""
    ring, P = plan.ring, plan.ring.world
    out = q.new_zeros(q.shape[:3] + own[1].shape[3:], dtype=plan.acc)       # (B, H, Lq_r, Dv)
    lse = q.new_full(q.shape[:3], -float("inf"), dtype=plan.acc)           # (B, H, Lq_r): nothing seen yet
    cur = own
    tally = _Tally(plan, own)
    for t in range(P):
        src = (ring.rank - t) % P
        shift = nxt = None
        if t < P - 1:                                             # post the next transfer before computing
            nxt = plan.block_buffers((src - 1) % P, own)
            shift = ring.shift(list(cur), list(nxt), tag=0, what="key/value block")
            tally.sent(cur, own, nxt)
        pieces = plan.sub_blocks(src)
        tally.block(pieces)
        for sub in pieces:
            o, l = _attend_block(plan, q[:, :, sub.q], [x[:, :, sub.k] for x in cur], sub.mask)
            out[:, :, sub.q], lse[:, :, sub.q] = merge_attention(out[:, :, sub.q], lse[:, :, sub.q], o, l)
        tally.computed()
        if shift is not None:
            shift.wait()
            tally.waited()
            cur = nxt
    tally.finish()
    return out, lse


def _ring_backward(plan: _Plan, q, own, out, lse, dout, dlse):
    """dq and (dk, dv) of this rank's shard; each block's (dk, dv) travels with it and ends at its owner."""
    ring, P = plan.ring, plan.ring.world
    dout = dout.to(plan.acc)
    dlse = torch.zeros_like(lse) if dlse is None else dlse.to(plan.acc)
    dq = torch.zeros(q.shape, dtype=plan.acc, device=q.device)
    cur, incoming, grad_shift = own, None, None
    for t in range(P):
        src = (ring.rank - t) % P
        kv_shift = nxt = None
        if t < P - 1:
            nxt = plan.block_buffers((src - 1) % P, own)
            kv_shift = ring.shift(list(cur), list(nxt), tag=0, what="key/value block")
        grad = tuple(torch.zeros(x.shape, dtype=plan.acc, device=x.device) for x in cur)
        for sub in plan.sub_blocks(src):
            rows = sub.q
            gq, gkv = _block_grads(plan, q[:, :, rows], [x[:, :, sub.k] for x in cur], sub.mask, out[:, :, rows],
                                   lse[:, :, rows], dout[:, :, rows], dlse[:, :, rows])
            dq[:, :, rows] += gq
            for g, piece in zip(grad, gkv):
                g[:, :, sub.k] += piece
        if grad_shift is not None:                                # add what earlier ranks gave this block
            grad_shift.wait()
            grad = tuple(g + i for g, i in zip(grad, incoming))
        if P > 1:                        # pass the block's gradient on; the one sent at t = P-1 reaches its owner
            incoming = plan.block_buffers((src - 1) % P, own, plan.acc)
            grad_shift = ring.shift(list(grad), list(incoming), tag=2, what="key/value gradient")
        if kv_shift is not None:
            kv_shift.wait()
            cur = nxt
    if P == 1:
        return dq, grad
    grad_shift.wait()
    return dq, incoming


def _stripes(plan: _Plan, Lq: int, Lk: int) -> list[tuple[int, int]]:
    """Query rows per reference-path call, so that a (B, H, rows, Lk) block of scores stays within
    ``attnlab.planner.MEMORY_BUDGET`` (the budget the reference path enforces; blockwise attention as in Liu &
    Abbeel 2023, which ring attention builds on)."""
    per_row = planner.REFERENCE_COPIES[1] * plan.B * plan.H * max(Lk, 1) * plan.itemsize
    rows = max(1, int(planner.MEMORY_BUDGET // per_row))
    return [(a, min(a + rows, Lq)) for a in range(0, Lq, rows)]


def _rows(blk, a: int, b: int):
    return blk if blk is None else blk[..., a:b, :]


def _attend_block(plan: _Plan, q, kv, blk):
    """Attention of this rank's queries over one key/value block, stripe by stripe, in the merge dtype."""
    outs, lses = [], []
    for a, b in _stripes(plan, q.shape[2], kv[0].shape[2]):
        o, l = scaled_dot_product_attention(q[:, :, a:b], *kv, _rows(blk, a, b), scale=plan.scale,
                                            return_lse=True, impl="reference")
        outs.append(o.to(plan.acc))
        lses.append(l.to(plan.acc))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _block_grads(plan: _Plan, q, kv, blk, out, lse, dout, dlse):
    """dq and (dk, dv) of one block by recomputation: out = sum_s w_s o_s with w_s = exp(lse_s - lse)."""
    dq = torch.zeros(q.shape, dtype=plan.acc, device=q.device)
    dkv = [torch.zeros(x.shape, dtype=plan.acc, device=x.device) for x in kv]
    for a, b in _stripes(plan, q.shape[2], kv[0].shape[2]):
        rows = slice(a, b)
        with torch.enable_grad():
            qd, kd, vd = (x.detach().requires_grad_() for x in (q[:, :, rows], *kv))
            o, l = scaled_dot_product_attention(qd, kd, vd, _rows(blk, a, b), scale=plan.scale, return_lse=True,
                                                impl="reference")
            lb, ls = l.detach().to(plan.acc), lse[:, :, rows]
            w = torch.where(torch.isfinite(lb), torch.exp(lb - ls), torch.zeros_like(lb))     # (B, H, rows)
            g_out = (w[..., None] * dout[:, :, rows]).to(o.dtype)                               # dL/do_s
            d_term = (dout[:, :, rows] * (o.detach().to(plan.acc) - out[:, :, rows])).sum(-1)
            g_lse = (w * (d_term + dlse[:, :, rows])).to(l.dtype)                             # dL/dlse_s
            gq, gk, gv = torch.autograd.grad([o, l], [qd, kd, vd], [g_out, g_lse])
        dq[:, :, rows] = gq
        dkv[0] += gk
        dkv[1] += gv
    return dq, tuple(dkv)


class _Tally:
    """Fills the caller's ``stats`` dict: work done, bytes sent, key/value bytes held, time computing/waiting."""

    def __init__(self, plan: _Plan, own):
        self.stats, self.plan = plan.stats, plan
        self.s = {"rank": plan.ring.rank, "world": plan.ring.world, "layout": plan.layout, "L": plan.L,
                  "L_local": own[0].shape[2], "blocks_computed": 0, "blocks_skipped": 0, "sub_blocks": 0,
                  "cells": 0, "computed": 0, "stripes": 0,
                  "bytes_sent": 0, "kv_bytes_own": _nbytes(own), "kv_bytes_peak": _nbytes(own),
                  "compute_s": 0.0, "wait_s": 0.0}
        self.t = time.perf_counter()

    def sent(self, cur, own, nxt):
        self.s["bytes_sent"] += _nbytes(cur)
        held = _nbytes(own) + (_nbytes(cur) if cur is not own else 0) + _nbytes(nxt)  # own, visiting, arriving
        self.s["kv_bytes_peak"] = max(self.s["kv_bytes_peak"], held)

    def block(self, pieces):
        self.s["blocks_computed" if pieces else "blocks_skipped"] += 1
        self.s["sub_blocks"] += len(pieces)
        self.s["cells"] += sum(p.cells for p in pieces)
        self.s["computed"] += sum(p.size for p in pieces)
        self.s["stripes"] += sum(len(_stripes(self.plan, p.q.stop - p.q.start, p.k.stop - p.k.start)) for p in pieces)

    def computed(self):
        now = time.perf_counter()
        self.s["compute_s"] += now - self.t
        self.t = now

    def waited(self):
        now = time.perf_counter()
        self.s["wait_s"] += now - self.t
        self.t = now

    def finish(self):
        if self.stats is not None:
            self.stats.update(self.s)


def _nbytes(tensors) -> int:
    return sum(x.numel() * x.element_size() for x in tensors)
