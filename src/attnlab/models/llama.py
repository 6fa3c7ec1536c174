"""The Llama family (Touvron et al. 2023) in NumPy on attnlab.MultiHeadAttention: GQA + RoPE, RMSNorm, SwiGLU.

    x = x + MHA(RMSNorm(x), causal)           q/k/v/o_proj, rotary "half" style (Hugging Face rotate_half)
    x = x + down(silu(gate(h)) * up(h)),  h = RMSNorm(x)
    logits = RMSNorm(x) @ lm_head^T

RoPE pairs feature i with i + D/2 (``attnlab.scores.rotary(style="half")``, what MultiHeadAttention uses with
``rope_base``). Only the default RoPE (no "llama3"/"yarn"/... scaling) is supported, and refused otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import masks
from ..layers import KVCache, MultiHeadAttention
from ._base import Decoder
from ._blocks import activation, linear, rms_norm
from ._checkpoint import Weights, config_int


def rope_theta(config: dict) -> float:
    """The RoPE base from config.json (transformers 5: rope_parameters; older: rope_theta / rope_scaling)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"RoPE type {kind!r} is not supported (default RoPE only)")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def expected_shapes(d: int, H: int, G: int, Dh: int, n_layers: int, inner: int, vocab: int, tied: bool,
                    bias: bool) -> dict:
    """Every tensor a Llama reads, with its shape from the config (PyTorch Linear layout (out, in))."""
    shapes = {"embed_tokens.weight": (vocab, d), "norm.weight": (d,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, d)
    for i in range(n_layers):
        p = f"layers.{i}."
        rows = {"q": H * Dh, "k": G * Dh, "v": G * Dh, "o": d}
        for x, n in rows.items():
            shapes[f"{p}self_attn.{x}_proj.weight"] = (n, d) if x != "o" else (d, H * Dh)
            if bias:
                shapes[f"{p}self_attn.{x}_proj.bias"] = (n,)
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "mlp.gate_proj.weight": (inner, d), p + "mlp.up_proj.weight": (inner, d),
                       p + "mlp.down_proj.weight": (d, inner)})
    return shapes


class Llama(Decoder):
    family = "llama"

    def __init__(self, folder: Path, config: dict, name: str, dtype=np.float32):
        super().__init__(folder, config, name, config.get("max_position_embeddings", 2048))
        w = self._weights(folder, dtype)
        source = getattr(w, "config_source", folder / "config.json")
        d, H = config_int(config, "hidden_size", source), config_int(config, "num_attention_heads", source)
        G = config_int(config, "num_key_value_heads", source, H)
        head_dim = config_int(config, "head_dim", source, d // H if d % H == 0 else None)
        n_layers = config_int(config, "num_hidden_layers", source)
        if H % G:
            raise ValueError(f"{source}: num_attention_heads {H} is not a multiple of num_key_value_heads {G}")
        tied = bool(config.get("tie_word_embeddings", False))
        bias = bool(config.get("attention_bias", False))
        vocab = config_int(config, "vocab_size", source, (w.shape("embed_tokens.weight") or (1,))[0])
        w.check(expected_shapes(d, H, G, head_dim, n_layers, config_int(config, "intermediate_size", source), vocab,
                                tied, bias))
        self.eps = config.get("rms_norm_eps", 1e-6)
        self.act = activation(config.get("hidden_act", "silu"))
        self.embed = w("embed_tokens.weight")
        self.norm = w("norm.weight")
        self.lm_head = self.embed if tied else w("lm_head.weight")
        self.blocks = []
        for i in range(n_layers):
            p = f"layers.{i}."
            mha = MultiHeadAttention(d, H, G, bias=bias, head_dim=head_dim, rope_base=rope_theta(config),
                                     dtype=dtype, init=False)
            for x in "qkvo":
                setattr(mha, f"w_{x}", w(f"{p}self_attn.{x}_proj.weight"))
                if bias:
                    setattr(mha, f"b_{x}", w(f"{p}self_attn.{x}_proj.bias"))
            self.attn.append(mha)
            self.blocks.append({n: w(p + n) for n in (
                "input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                "mlp.up_proj.weight", "mlp.down_proj.weight")})
        self.pad_id = int(config.get("pad_token_id") or 0)

    def _weights(self, folder: Path, dtype):
        """The checkpoint's tensors by Hugging Face name (a GGUF-backed subclass answers the same names)."""
        return Weights(folder, ("model.",), dtype)

    def _embed(self, ids):
        return self.embed[ids]                                                       # (B, L, d)

    def _block(self, layer, x, mask, return_weights, cache=None):
        p = self.blocks[layer]
        h = rms_norm(x, p["input_layernorm.weight"], self.eps)
        a = self.attn[layer](h, mask=mask, return_weights=return_weights, cache=cache)
        a, w = a if return_weights else (a, None)
        x = x + a
        g = rms_norm(x, p["post_attention_layernorm.weight"], self.eps)
        f = linear(self.act(linear(g, p["mlp.gate_proj.weight"])) * linear(g, p["mlp.up_proj.weight"]),
                   p["mlp.down_proj.weight"])
        return x + f, w, h

    def _final(self, x):
        return rms_norm(x, self.norm, self.eps)

    def new_caches(self) -> list[KVCache]:
        """One empty attnlab KVCache per layer, for ``step``."""
        return [KVCache() for _ in range(self.n_layers)]

    def step(self, ids, caches: list[KVCache]) -> np.ndarray:
        """KV-cache decoding: new tokens ids (B, t) placed after the positions the ``caches`` hold (one KVCache
        per layer, extended in place; RoPE positions continue from the cache length) -> next-token logits
        (B, t, vocab), equal to the rows of the full pass over all the tokens."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be int (B, t), got {ids.dtype} {ids.shape}")
        if len(caches) != self.n_layers:
            raise ValueError(f"expected one KVCache per layer ({self.n_layers}), got {len(caches)}")
        if caches[0].length + ids.shape[1] > self.max_length:
            raise ValueError(f"{caches[0].length + ids.shape[1]} positions exceed {self.name}'s limit "
                             f"{self.max_length}")
        mask = masks.causal() if ids.shape[1] > 1 else None       # one new query sees every cached key
        x = self._embed(ids)                                                         # (B, t, d)
        for layer in range(self.n_layers):
            x, _, _ = self._block(layer, x, mask, False, cache=caches[layer])
        return self._lm_head(self._final(x))                                         # (B, t, vocab)

    def _lm_head(self, h):
        return h @ self.lm_head.T
