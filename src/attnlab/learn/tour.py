"""``attnlab tour``: the learner's journey through attention, in the study guide's order.

Each section is a function that prints its part and names the function to call next. Sections are listed in
SECTIONS; ``run(section=...)`` runs one.
"""

from __future__ import annotations

import numpy as np

from .. import masks
from ..attention import scaled_dot_product_attention
from ..layers import MultiHeadAttention
from ..softmax import softmax


def _fmt(a, digits=4):
    return np.array2string(np.asarray(a), precision=digits, suppress_small=True, floatmode="fixed")


def qkv(out):
    """Q, K, V on toy vectors, step by step."""
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = np.array([[1.0, 0.0], [0.0, 10.0], [5.0, 5.0]])
    d = q.shape[-1]
    out("Three tokens, each with a query, a key and a value (d = 2).")
    out(f"Q =\n{_fmt(q)}\nK =\n{_fmt(k)}\nV =\n{_fmt(v)}")
    scores = q @ k.T
    out(f"1. scores = Q K^T  (3, 3)\n{_fmt(scores)}")
    scaled = scores / np.sqrt(d)
    out(f"2. scaled = scores / sqrt(d) = scores / {np.sqrt(d):.4f}\n{_fmt(scaled)}")
    weights = softmax(scaled)
    out(f"3. weights = softmax(scaled) along each row (rows sum to 1)\n{_fmt(weights)}")
    output = weights @ v
    out(f"4. output = weights V  (3, 2)\n{_fmt(output)}")
    check = scaled_dot_product_attention(q, k, v)
    out(f"attnlab.scaled_dot_product_attention(Q, K, V) gives the same: max difference "
        f"{np.abs(check - output).max():.1e}")
    out("Next: attnlab.scaled_dot_product_attention(q, k, v, mask=..., return_weights=True)")


def mask_kinds(out):
    """The mask kinds, drawn as text (True / # = may attend)."""
    for mask in (masks.causal(), masks.sliding_window(2), masks.prefix_lm(2), masks.padding([4]),
                 masks.document([0, 0, 1, 1, 1, 2]), masks.global_tokens([0]) | masks.sliding_window(1, 1)):
        out(mask.show(6, 6))
        out("")
    out("Lq != Lk (a KV cache holding 6 keys, 3 new queries): bottom-right vs top-left causal")
    out(masks.causal().show(3, 6))
    out(masks.causal("top_left").show(3, 6))
    out("Next: attnlab.masks.causal() & attnlab.masks.sliding_window(256); mask.blocks(Lq, Lk, 64, 64)")


def heads_and_cache(out):
    """Multi-head attention, and how MQA / GQA shrink the KV cache."""
    d_model, n_heads, context = 4096, 32, 4096
    out(f"A Llama-2-7B-sized layer: d_model={d_model}, {n_heads} query heads, head dim {d_model // n_heads}.")
    out(f"{'kind':<5} {'kv heads':>8} {'KV bytes/token/layer':>22} {'KV cache @ 4k ctx, 32 layers, fp16':>36}")
    for n_kv in (32, 8, 1):
        layer = MultiHeadAttention.__new__(MultiHeadAttention)
        layer.n_heads, layer.n_kv_heads, layer.head_dim = n_heads, n_kv, d_model // n_heads
        per_token = layer.kv_bytes_per_token(itemsize=2)
        total = per_token * context * 32
        out(f"{layer.kind:<5} {n_kv:>8} {per_token:>22,} {total / 2**30:>33.2f} GiB")
    mha = MultiHeadAttention(16, n_heads=4, n_kv_heads=2, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 5, 16)).astype(np.float32)
    y, w = mha(x, mask=masks.causal(), return_weights=True)
    out(f"{mha}: x {x.shape} -> output {y.shape}, weights {w.shape} (B, H, Lq, Lk)")
    out("Next: attnlab.MultiHeadAttention(d_model, n_heads, n_kv_heads) and attnlab.KVCache()")


SECTIONS = {"qkv": qkv, "masks": mask_kinds, "heads": heads_and_cache}


def run(section: str | None = None, out=print) -> None:
    if section is not None and section not in SECTIONS:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {section!r}")
    for name, fn in SECTIONS.items():
        if section is None or name == section:
            out(f"\n=== {name}: {fn.__doc__.strip()}\n")
            fn(out)
