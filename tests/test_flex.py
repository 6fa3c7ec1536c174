"""FlexAttention both ways, on the CPU: torch.nn.attention.flex_attention (eager; the oracle) with attnlab's
masks and modifiers converted equals attnlab's own attention; create_block_mask's block counts equal
Mask.blocks; a FlexAttention mask_mod converted to a Mask equals the mask_mod on every cell."""

import warnings

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import attnlab
from attnlab import masks, scores
from attnlab.integrations import flex

B, H, L, D = 2, 4, 64, 16
DOCS = np.repeat([0, 0, 1, 2], [20, 12, 24, 8])            # packed documents of 20, 12, 24 and 8 tokens

MASKS = {
    "causal": masks.causal(),
    "window": masks.sliding_window(8),
    "document": masks.document(DOCS),
    "document_causal": masks.document(DOCS) & masks.causal(),
    "prefix_lm": masks.prefix_lm(10),
    "window_or_prefix": masks.sliding_window(5, 3) | masks.key_prefix(4),
}
MODS = {
    "none": None,
    "alibi": scores.alibi(H),
    "softcap": scores.softcap(2.0),
    "alibi_softcap": scores.alibi(H).then(scores.softcap(2.0)),
}


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3)]


def _flex(q, k, v, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, **kw)


@pytest.mark.parametrize("mod_name", MODS)
@pytest.mark.parametrize("mask_name", MASKS)
def test_flex_with_converted_mask_and_score_mod_equals_attnlab(mask_name, mod_name):
    mask, mod = MASKS[mask_name], MODS[mod_name]
    q, k, v = _qkv()
    block_mask = create_block_mask(flex.to_mask_mod(mask, L, L), None, None, L, L, device="cpu", BLOCK_SIZE=16)
    score_mod = None if mod is None else flex.to_score_mod(mod, L, L, heads=H)
    theirs = _flex(q, k, v, block_mask=block_mask, score_mod=score_mod)
    ours = attnlab.scaled_dot_product_attention(q, k, v, mask=mask, score_mod=mod)
    assert torch.allclose(ours, theirs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("block", [16, 32])
@pytest.mark.parametrize("mask_name", MASKS)
def test_block_counts_equal_create_block_mask(mask_name, block):
    mask = MASKS[mask_name]
    bm = create_block_mask(flex.to_mask_mod(mask, L, L), None, None, L, L, device="cpu", BLOCK_SIZE=block)
    counts = flex.block_counts(mask, L, L, block)
    assert np.array_equal(counts.partial, bm.kv_num_blocks.numpy())
    assert np.array_equal(counts.full, bm.full_kv_num_blocks.numpy())
    assert counts.partial.sum() > 0 or mask_name == "document"     # partial tiles exist: the test can tell them apart


def test_mask_mod_to_mask_round_trip_and_per_head():
    def stripes(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx) % (h + 2) == 0) | (kv_idx == b)

    m = flex.from_mask_mod(stripes, 12, 10, batch=2, heads=3)
    b, h, qi, ki = np.meshgrid(np.arange(2), np.arange(3), np.arange(12), np.arange(10), indexing="ij")
    assert np.array_equal(m.to_array(12, 10, batch=2, heads=3), ((qi - ki) % (h + 2) == 0) | (ki == b))
    causal = flex.from_mask_mod(lambda b, h, q, kv: q >= kv, 8, 8)
    assert np.array_equal(causal.to_array(8, 8), masks.causal().to_array(8, 8))
    back = flex.to_mask_mod(m, 12, 10, batch=2, heads=3)
    assert bool(back(torch.tensor(1), torch.tensor(2), torch.tensor(6), torch.tensor(1)))   # kv == b
    assert not bool(back(torch.tensor(0), torch.tensor(2), torch.tensor(6), torch.tensor(1)))


def test_flex_mask_mod_as_attnlab_mask_in_attention():
    q, k, v = _qkv(1)
    def mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < 6)
    bm = create_block_mask(mod, None, None, L, L, device="cpu", BLOCK_SIZE=16)
    ours = attnlab.scaled_dot_product_attention(q, k, v, mask=flex.from_mask_mod(mod, L, L))
    assert torch.allclose(ours, _flex(q, k, v, block_mask=bm), atol=1e-10, rtol=0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="mask must be an attnlab.masks.Mask"):
        flex.to_mask_mod(np.ones((2, 2), bool), 2, 2)
    with pytest.raises(TypeError, match="mod must be an attnlab.scores.ScoreMod"):
        flex.to_score_mod(lambda s, *a: s, 2, 2)
    with pytest.raises(MemoryError, match="over the memory budget"):
        flex.to_mask_mod(masks.causal(), 2**16, 2**16)
