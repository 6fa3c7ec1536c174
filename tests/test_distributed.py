"""Ring attention on torch.distributed (gloo, 127.0.0.1): layouts, exactness for P = 1..4, gradients, balance.

Oracles: single-process attnlab attention (the issue's bar: within 1e-5 in float32), and PyTorch's own
F.scaled_dot_product_attention in float64 with the mask materialized (independent of attnlab) for outputs and
gradients. Each world size P is one spawned run that does every check (process start-up dominates the time).
"""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import attnlab
from attnlab import masks, planner
from attnlab.distributed import (RingError, gather, launch, local_lengths, positions, ring_attention, scatter, shard,
                                 unshard, work_balance)

B, H, G, D = 2, 4, 2, 8          # GQA: 2 query heads per key/value head
RUN_TIMEOUT = 150


def mask_cases(L):
    doc = np.repeat(np.arange(4), 4)[:L]                            # documents of 4 tokens (the last one shorter)
    return {"dense": None, "causal": masks.causal(), "window": masks.sliding_window(3),
            "document": masks.document(doc), "document_causal": masks.document(doc) & masks.causal()}


def full_inputs(L, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for shape in ((B, H, L, D), (B, G, L, D), (B, G, L, D))]


def torch_oracle(q, k, v, mask, L):
    """PyTorch's SDPA in float64 with the mask as a (L, L) boolean array; GQA by repeating k/v heads."""
    k, v = (x.repeat_interleave(H // G, dim=1) for x in (k, v))
    attn_mask = None if mask is None else torch.from_numpy(mask.to_array(L, L))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


# --- the work every rank does in one spawned run ---------------------------------------------------------------
def forward_cases():
    """(mask name, L, layout): every mask at an uneven L in both layouts, and the causal mask at an even L."""
    cases = [(name, 13, layout) for name in mask_cases(13) for layout in ("zigzag", "contiguous")]
    return cases + [("causal", 12, layout) for layout in ("zigzag", "contiguous")]


GRAD_CASES = [(name, 13, "zigzag") for name in ("dense", "causal", "window", "document_causal")] + \
             [("document", 13, "contiguous"), ("causal", 12, "contiguous")]


def _all_world_sizes():
    """In one world of 4 processes, run the checks on the subgroups of the first P = 1..4 ranks."""
    results = {}
    for world in WORLDS:
        group = dist.new_group(list(range(world)))              # every rank takes part in creating each group
        if dist.get_rank() < world:
            results[world] = _rank_checks(group)
        dist.barrier()
    return results


def _rank_checks(group):
    """All forward / backward checks for this group; returns max errors and stats for the parent."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    errors, stats_out = {}, {}
    for name, L, layout in forward_cases():
        q32, k32, v32 = full_inputs(L, torch.float32)
        mask = mask_cases(L)[name]
        truth = torch_oracle(*(x.double() for x in (q32, k32, v32)), mask, L)
        single, single_lse = attnlab.scaled_dot_product_attention(q32, k32, v32, mask, return_lse=True)
        stats = {}
        parts = [shard(x, rank, world, layout) for x in (q32, k32, v32)]
        out, lse = ring_attention(*parts, mask=mask, layout=layout, return_lse=True, timeout=30, stats=stats,
                                  group=group)
        whole = gather(out, layout, length=L, group=group)
        whole_lse = gather(lse, layout, dim=-1, length=L, group=group)
        key = f"{name}/L{L}/{layout}"
        errors[key] = {"vs_single": float((whole - single).abs().max()),
                       "lse_vs_single": float((whole_lse - single_lse).abs().max()),
                       "vs_truth": float((whole.double() - truth).abs().max()),
                       "single_vs_truth": float((single.double() - truth).abs().max())}
        stats_out[key] = {"cells": stats["cells"], "blocks": stats["blocks_computed"], "computed": stats["computed"],
                          "kv_bytes_own": stats["kv_bytes_own"], "kv_bytes_peak": stats["kv_bytes_peak"]}
    for name, L, layout in GRAD_CASES:
        q, k, v = (x.double() for x in full_inputs(L, torch.float32))
        errors[f"{name}/L{L}/{layout}/grad"] = _grad_error(q, k, v, mask_cases(L)[name], L, layout, group)
    errors["striped"] = _striped_error(group)
    errors["misuse"] = _misuse_errors(group)
    if world == 2:
        errors["gradcheck"] = _gradcheck(group)
    errors["causal_flag"] = _causal_flag_error(group)
    return {"errors": errors, "stats": stats_out}


def _grad_error(q, k, v, mask, L, layout, group):
    """Output and gradients of sum(W * out) through the ring vs PyTorch on the whole sequence (float64)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    W = torch.randn(q.shape, generator=torch.Generator().manual_seed(7), dtype=q.dtype)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    (torch_oracle(*leaves, mask, L) * W).sum().backward()
    parts = [shard(x, rank, world, layout).requires_grad_() for x in (q, k, v)]
    out = ring_attention(*parts, mask=mask, layout=layout, timeout=30, group=group)
    (out * shard(W, rank, world, layout)).sum().backward()
    errors = [float((gather(p.grad, layout, length=L, group=group) - leaf.grad).abs().max())
              for p, leaf in zip(parts, leaves)]
    whole = gather(out, layout, length=L, group=group)
    return max(errors + [float((whole - torch_oracle(q, k, v, mask, L)).abs().max())])


def _striped_error(group):
    """With a tiny memory budget every block runs in stripes of one or two query rows: outputs and gradients
    unchanged (float64)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    saved = planner.MEMORY_BUDGET
    longest = max(local_lengths(world, 13, "zigzag"))
    planner.MEMORY_BUDGET = int(planner.REFERENCE_COPIES[1] * B * H * longest * 8)    # one row of the longest block
    try:
        q, k, v = (x.double() for x in full_inputs(13, torch.float32))
        stats = {}
        ring_attention(*(shard(x, rank, world) for x in (q, k, v)), causal=True, group=group, stats=stats)
        assert stats["stripes"] > stats["blocks_computed"] >= 1, stats        # blocks did run in stripes
        return _grad_error(q, k, v, masks.causal(), 13, "zigzag", group)
    finally:
        planner.MEMORY_BUDGET = saved


def _gradcheck(group):
    """torch.autograd.gradcheck of the whole distributed function (scatter -> ring -> gather), float64."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
               for shape in ((1, 2, 5, 3), (1, 1, 5, 3), (1, 1, 5, 3)))
    ok = {}
    for layout, mask, fast in (("zigzag", masks.causal(), False), ("contiguous", masks.sliding_window(2), True)):
        def f(q, k, v):
            parts = [scatter(x, layout, group=group) for x in (q, k, v)]
            return gather(ring_attention(*parts, mask=mask, layout=layout, timeout=30, group=group), layout,
                          group=group)
        ok[layout] = bool(torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6, fast_mode=fast))
    return ok


def _misuse_errors(group):
    """Shards that do not fit together raise the same clear error on every rank (no rank is left waiting)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    q, k, v = (shard(x, rank, world) for x in full_inputs(13, torch.float32))
    seen = {}
    longer = [torch.cat([x, x[:, :, :3]], dim=2) for x in (q, k, v)]          # 3 positions too many on rank 0
    cases = {"long_shard": lambda: longer if rank == 0 else (q, k, v),
             "other_head_dim": lambda: (q[..., :4], k[..., :4], v) if rank == world - 1 else (q, k, v)}
    for name, inputs in cases.items():
        try:
            ring_attention(*inputs(), group=group, timeout=30)
            seen[name] = None
        except (ValueError, RingError) as err:
            seen[name] = type(err).__name__ + (": shard lengths" if "shards of lengths" in str(err) else "")
    return seen


def _causal_flag_error(group):
    """causal=True is the same as mask=masks.causal()."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    q, k, v = (shard(x, rank, world) for x in full_inputs(13, torch.float32))
    a = gather(ring_attention(q, k, v, causal=True, group=group), "zigzag", group=group)
    b = gather(ring_attention(q, k, v, mask=masks.causal(), group=group), "zigzag", group=group)
    return float((a - b).abs().max())


WORLDS = (1, 2, 3, 4)
_RUN = []


def checks_for(world):
    """Per-rank results of the checks on a group of ``world`` ranks (one spawned run of 4 processes for all)."""
    if not _RUN:
        results = launch.run_local(_all_world_sizes, max(WORLDS), timeout=RUN_TIMEOUT, init_timeout=RUN_TIMEOUT)
        failed = [f"rank {r.rank}: {r.error}" for r in results if not r.ok]
        assert not failed, "\n".join(failed)
        _RUN.append([r.value for r in results])
    return [per_rank[world] for per_rank in _RUN[0] if world in per_rank]


# --- the spawned checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", WORLDS)
def test_ring_equals_single_process_attention(world):
    per_rank = checks_for(world)
    errors = per_rank[0]["errors"]
    assert all(r["errors"] == errors for r in per_rank), "every rank gathers the same whole output"
    for key, e in errors.items():
        if key.count("/") == 2:
            assert e["vs_single"] <= 1e-5, (key, e)
            assert e["lse_vs_single"] <= 1e-5, (key, e)
            assert e["vs_truth"] <= 1e-5, (key, e)
    grads = {k: e for k, e in errors.items() if k.endswith("/grad")}
    assert len(grads) == len(GRAD_CASES) and max(grads.values()) <= 1e-10, grads
    assert errors["causal_flag"] == 0.0
    assert errors["striped"] <= 1e-10
    expected = {"long_shard": "ValueError: shard lengths", "other_head_dim": "RingError"}
    assert errors["misuse"] == (expected if world > 1 else {"long_shard": None, "other_head_dim": None})
    if world == 2:
        assert errors["gradcheck"] == {"zigzag": True, "contiguous": True}


@pytest.mark.parametrize("world", WORLDS)
def test_work_and_memory_stats(world):
    per_rank = checks_for(world)
    for key in per_rank[0]["stats"]:
        name, L, layout = key.split("/")
        L = int(L[1:])
        mask = mask_cases(L)[name]
        cells = [r["stats"][key]["cells"] for r in per_rank]
        allowed = B * H * (L * L if mask is None else int(mask.to_array(L, L).sum()))
        assert sum(cells) == allowed, key                       # every allowed score cell computed exactly once
        balance = work_balance(L, world, layout, mask, B=B, H=H)
        assert cells == balance["cells"], key
        assert [r["stats"][key]["blocks"] for r in per_rank] == balance["blocks"], key
        assert [r["stats"][key]["computed"] for r in per_rank] == balance["computed"], key
        assert all(c >= a for c, a in zip(balance["computed"], cells)), key
        lengths = local_lengths(world, L, layout)
        itemsize = 4 * B * G * 2 * D                             # one position of k and v, float32
        for r, rank_stats in enumerate(per_rank):
            assert rank_stats["stats"][key]["kv_bytes_own"] == lengths[r] * itemsize
            held = rank_stats["stats"][key]["kv_bytes_peak"] / itemsize
            assert held <= 3 * max(lengths), key                 # own block + visiting + arriving, never L


def test_error_does_not_grow_with_world_size():
    """Against the float64 truth the ring is as accurate as single-process float32 attention for every P."""
    for world in WORLDS:
        for key, e in checks_for(world)[0]["errors"].items():
            if key.count("/") == 2:
                assert e["vs_truth"] <= 2 * e["single_vs_truth"] + 1e-6, (world, key, e)


# --- pure helpers (no processes) -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_layout_partitions_the_sequence(layout):
    for world in (1, 2, 3, 4, 5):
        for L in range(2 * world, 2 * world + 9):
            pos = [positions(r, world, L, layout) for r in range(world)]
            assert sorted(np.concatenate(pos).tolist()) == list(range(L))
            assert [len(p) for p in pos] == local_lengths(world, L, layout)
            assert max(map(len, pos)) - min(map(len, pos)) <= 2
            x = np.arange(3 * L).reshape(3, L)
            parts = [shard(x, r, world, layout, dim=1) for r in range(world)]
            assert all((p == x[:, pos[r]]).all() for r, p in enumerate(parts))
            assert (unshard(parts, layout, dim=1) == x).all()


def test_zigzag_holds_mirrored_chunks():
    assert positions(0, 4, 16, "zigzag").tolist() == [0, 1, 14, 15]
    assert positions(3, 4, 16, "zigzag").tolist() == [6, 7, 8, 9]
    t = torch.arange(18.0).reshape(1, 1, 9, 2)
    assert torch.equal(unshard([shard(t, r, 2, "zigzag") for r in range(2)], "zigzag"), t)


def test_zigzag_balances_causal_work():
    for world in (2, 3, 4):
        L = 64 * world
        contiguous = work_balance(L, world, "contiguous", causal=True)
        zigzag = work_balance(L, world, "zigzag", causal=True)
        total = L * (L + 1) // 2
        assert sum(contiguous["cells"]) == sum(zigzag["cells"]) == total
        assert zigzag["imbalance"] == 1.0 and contiguous["imbalance"] == 2 * world / (world + 1)
        n = L // (2 * world)                                      # chunk length: the zigzag pieces are n x n
        assert zigzag["computed"] == [(3 + 2 * (world - 1)) * n * n] * world
        assert contiguous["blocks"] == list(range(1, world + 1))     # rank r computes r + 1 blocks
        assert zigzag["blocks"] == [world] * world


def test_window_and_document_masks_skip_blocks():
    w = work_balance(64, 4, "contiguous", masks.sliding_window(4))
    assert w["blocks"] == [1, 2, 2, 2]
    doc = masks.document(np.repeat(np.arange(4), 16))
    assert work_balance(64, 4, "contiguous", doc)["blocks"] == [1, 1, 1, 1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout"):
        positions(0, 2, 8, "striped")
    with pytest.raises(ValueError, match="L >= 8"):
        positions(0, 4, 7, "zigzag")
    with pytest.raises(ValueError, match="rank"):
        positions(2, 2, 8)
    with pytest.raises(ValueError, match="shard lengths"):
        unshard([np.zeros(3), np.zeros(5)], "contiguous", dim=0)
    with pytest.raises(RuntimeError, match="not initialized"):
        ring_attention(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
