"""attnlab masks and score modifiers to and from PyTorch FlexAttention (``torch.nn.attention.flex_attention``).

    to_mask_mod(mask, Lq, Lk)         attnlab Mask        -> mask_mod(b, h, q_idx, kv_idx) -> bool tensor
    block_counts(mask, Lq, Lk, ...)   attnlab Mask        -> per-row counts of partial / full key blocks, the
                                                             numbers FlexAttention's BlockMask stores
    from_mask_mod(fn, ...)            FlexAttention mask_mod -> attnlab Mask (evaluated on index grids)
    to_score_mod(mod, Lq, Lk, heads)  attnlab ScoreMod    -> score_mod(score, b, h, q_idx, kv_idx) -> score

FlexAttention calls its functions with scalar tensors under ``torch.vmap``; attnlab's masks and modifiers are
vectorized NumPy functions of index grids. So a mask is materialized once for the given lengths (Lq x Lk booleans
per batch row / head it depends on, checked against the memory budget) and the mask_mod indexes that table; an
additive modifier (ALiBi, relative bias) is tabulated the same way; an elementwise one written with array-API ops
(soft-capping) is called on the tensors directly; ``a.then(b)`` is converted part by part. Positions follow
attnlab's bottom-right alignment (query i at key position i + Lk - Lq), which for Lq == Lk is FlexAttention's.

On the CPU ``flex_attention`` runs eagerly (it warns that the unfused path materializes the scores) and equals
attnlab there; ``torch.compile(flex_attention)`` generates the fused kernel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .. import masks as masks_mod
from ..budget import check as check_budget
from ..checks import non_negative_int, positive_int
from ..scores import ScoreMod

MOD_BYTES = 32      # bytes per (head, query, key) cell to tabulate an additive modifier: the float64 zeros it is
                    # applied to, the table, and the modifier's integer distances and float result


class BlockCounts(NamedTuple):
    """Per (batch, head, query block): how many key blocks are partial (the mask is evaluated there) and how
    many are full, as FlexAttention's ``BlockMask.kv_num_blocks`` / ``full_kv_num_blocks`` count them. Shapes
    (B, H, n_query_blocks)."""

    partial: np.ndarray
    full: np.ndarray


def _sizes(Lq, Lk, batch=None, heads=None) -> tuple[int, int, int | None, int | None]:
    """The lengths (non-negative ints) and the optional batch size and head count (positive ints), checked at
    call time so that a float, a string or a bool is refused naming the argument."""
    return (non_negative_int(Lq, "Lq"), non_negative_int(Lk, "Lk"), positive_int(batch, "batch", allow_none=True),
            positive_int(heads, "heads", allow_none=True))


def _table(mask: masks_mod.Mask, Lq: int, Lk: int, batch, heads) -> np.ndarray:
    """The mask as a (B, H, Lq, Lk) boolean array, B / H 1 along an axis it does not depend on."""
    B = mask.batch or 1
    H = mask.heads or 1
    check_budget(masks_mod.mask_bytes(B * H, Lq, Lk),               # read at call time: the budget may change
                 f"converting {mask.name} to a mask_mod ({B}x{H}x{Lq}x{Lk} booleans)",
                 instead="convert at smaller lengths, or use attnlab.flash_attention with the mask directly")
    arr = mask.to_array(Lq, Lk, batch=batch, heads=heads, checked=False)
    return arr.reshape((1,) * (4 - arr.ndim) + arr.shape)


def to_mask_mod(mask: masks_mod.Mask, Lq: int, Lk: int, *, batch: int | None = None, heads: int | None = None):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` equal to ``mask`` at lengths Lq, Lk.

    >>> import torch, attnlab
    >>> mm = to_mask_mod(attnlab.masks.causal(), 4, 4)
    >>> bool(mm(torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(2)))
    False
    """
    if not isinstance(mask, masks_mod.Mask):
        raise TypeError(f"mask must be an attnlab.masks.Mask, got {type(mask).__name__}")
    Lq, Lk, batch, heads = _sizes(Lq, Lk, batch, heads)
    table = torch.from_numpy(_table(mask, Lq, Lk, batch, heads))           # (B, H, Lq, Lk)
    B, H = table.shape[:2]

    def mask_mod(b, h, q_idx, kv_idx):
        return table[b % B, h % H, q_idx, kv_idx]

    mask_mod.__name__ = f"attnlab_{mask.name}"
    return mask_mod


def block_counts(mask: masks_mod.Mask, Lq: int, Lk: int, block_q: int = 128, block_k: int | None = None, *,
                 batch: int | None = None, heads: int | None = None) -> BlockCounts:
    """``mask.blocks`` summarized per query block as FlexAttention's BlockMask does (partial and full key-block
    counts), for every batch row / head the mask depends on."""
    if not isinstance(mask, masks_mod.Mask):
        raise TypeError(f"mask must be an attnlab.masks.Mask, got {type(mask).__name__}")
    Lq, Lk, batch, heads = _sizes(Lq, Lk, batch, heads)
    block_q = positive_int(block_q, "block_q")
    block_k = block_q if block_k is None else positive_int(block_k, "block_k")
    B, H = mask.batch or 1, mask.heads or 1
    nq = math.ceil(Lq / block_q)
    partial, full = np.zeros((B, H, nq), np.int64), np.zeros((B, H, nq), np.int64)
    for b in range(B):
        for h in range(H):
            tiles = mask.blocks(Lq, Lk, block_q, block_k, b=b, h=h)          # (nq, nk) 0 / 1 / 2
            partial[b, h] = (tiles == masks_mod.PARTIAL).sum(axis=1)
            full[b, h] = (tiles == masks_mod.FULL).sum(axis=1)
    return BlockCounts(partial, full)


def from_mask_mod(fn, Lq: int, Lk: int, *, batch: int | None = None, heads: int | None = None,
                  name: str | None = None) -> masks_mod.Mask:
    """An attnlab Mask from a FlexAttention ``mask_mod``, evaluated once on torch index grids at lengths Lq, Lk
    (for every batch row / head when ``batch`` / ``heads`` are given, else at b = h = 0).

    >>> m = from_mask_mod(lambda b, h, q, kv: q >= kv, 3, 3)
    >>> m.to_array(3, 3).sum().item()
    6
    """
    if not callable(fn):
        raise TypeError(f"fn must be a FlexAttention mask_mod (b, h, q_idx, kv_idx) -> bool, got "
                        f"{type(fn).__name__}")
    Lq, Lk, batch, heads = _sizes(Lq, Lk, batch, heads)
    B, H = batch or 1, heads or 1
    # the mask_mod's own integer arithmetic on the broadcast grid, its result, the bool copy and from_array's copy
    check_budget((masks_mod.MASK_TEMP_BYTES + 3) * B * H * Lq * Lk,
                 f"evaluating the mask_mod on {B}x{H}x{Lq}x{Lk} indices", instead="use smaller lengths")
    grid = fn(torch.arange(B)[:, None, None, None], torch.arange(H)[None, :, None, None],
              torch.arange(Lq)[None, None, :, None], torch.arange(Lk)[None, None, None, :])
    arr = np.broadcast_to(torch.as_tensor(grid).detach().cpu().numpy().astype(bool), (B, H, Lq, Lk)).copy()
    out = masks_mod.from_array(arr if (batch or heads) else arr[0, 0])
    out.name = name or f"from_mask_mod({getattr(fn, '__name__', 'fn')})"
    return out


def to_score_mod(mod: ScoreMod, Lq: int, Lk: int, heads: int = 1):
    """A FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)`` equal to attnlab's ``mod`` at lengths Lq, Lk
    for ``heads`` query heads.

    >>> import torch, attnlab
    >>> sm = to_score_mod(attnlab.scores.alibi(2), 3, 3, heads=2)
    >>> float(sm(torch.tensor(0.0), torch.tensor(0), torch.tensor(0), torch.tensor(2), torch.tensor(0)))
    -0.125
    """
    if not isinstance(mod, ScoreMod):
        raise TypeError(f"mod must be an attnlab.scores.ScoreMod, got {type(mod).__name__}")
    Lq, Lk, _, _ = _sizes(Lq, Lk)
    heads = positive_int(heads, "heads")
    if mod.parts:
        first, second = (to_score_mod(part, Lq, Lk, heads) for part in mod.parts)
        return lambda s, b, h, q, kv: second(first(s, b, h, q, kv), b, h, q, kv)
    if mod.additive:
        check_budget(MOD_BYTES * heads * Lq * Lk, f"tabulating {mod.name} for {heads}x{Lq}x{Lk} scores",
                     instead="convert at smaller lengths")
        h_idx = np.arange(heads)[:, None, None]
        table = torch.from_numpy(mod.apply(np.zeros((heads, Lq, Lk)), np.zeros((1, 1), np.int64), h_idx,
                                           np.arange(Lq)[:, None], np.arange(Lk)[None, :], Lq, Lk))

        def additive(score, b, h, q_idx, kv_idx):
            return score + table[h, q_idx, kv_idx].to(score.dtype)

        return additive

    def elementwise(score, b, h, q_idx, kv_idx):               # e.g. softcap: array-API ops on the score only
        return mod.apply(score, b, h, q_idx, kv_idx, Lq, Lk)

    return elementwise
