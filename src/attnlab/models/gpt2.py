"""GPT-2 (Radford et al. 2019) in NumPy on attnlab.MultiHeadAttention, causal.

Pre-LN blocks: x = x + MHA(LN(x), causal); x = x + W2 gelu_tanh(W1 LN(x)); final LN; logits = x @ wte^T (tied).
GPT-2's Conv1D stores weights as (in, out): they are transposed to attnlab's Linear layout (out, in), and c_attn's
(d, 3d) is split into the query, key and value projections.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..layers import MultiHeadAttention
from ._base import Decoder
from ._blocks import activation, layer_norm, linear
from ._checkpoint import Weights, config_int


class GPT2(Decoder):
    family = "gpt2"

    def __init__(self, folder: Path, config: dict, name: str, dtype=np.float32):
        super().__init__(folder, config, name, config.get("n_positions", 1024))
        if config.get("add_cross_attention"):
            raise ValueError("GPT-2 with cross-attention is not supported")
        w = Weights(folder, ("transformer.",), dtype)
        source = folder / "config.json"
        d, H = config_int(config, "n_embd", source), config_int(config, "n_head", source)
        n_layers = config_int(config, "n_layer", source)
        if d % H:
            raise ValueError(f"{source}: n_embd {d} is not a multiple of n_head {H}")
        vocab = config_int(config, "vocab_size", source, (w.shape("wte.weight") or (1,))[0])
        untied = "lm_head.weight" in w and not config.get("tie_word_embeddings", True)
        w.check(expected_shapes(d, n_layers, config_int(config, "n_inner", source, 4 * d), vocab,
                                config_int(config, "n_positions", source, 1024), untied))
        self.eps = config.get("layer_norm_epsilon", 1e-5)
        self.act = activation(config.get("activation_function", "gelu_new"))
        self.wte, self.wpe = w("wte.weight"), w("wpe.weight")
        self.ln_f = (w("ln_f.weight"), w("ln_f.bias"))
        self.lm_head = w("lm_head.weight") if "lm_head.weight" in w and not config.get(
            "tie_word_embeddings", True) else self.wte
        self.blocks = []
        for i in range(n_layers):
            p = f"h.{i}."
            mha = MultiHeadAttention(d, H, dtype=dtype, init=False)
            qkv, b = w(p + "attn.c_attn.weight", transpose=True), w(p + "attn.c_attn.bias")   # (3d, d), (3d,)
            mha.w_q, mha.w_k, mha.w_v = qkv[:d], qkv[d: 2 * d], qkv[2 * d:]
            mha.b_q, mha.b_k, mha.b_v = b[:d], b[d: 2 * d], b[2 * d:]
            mha.w_o, mha.b_o = w(p + "attn.c_proj.weight", transpose=True), w(p + "attn.c_proj.bias")
            scale = 1.0 / np.sqrt(d // H) if config.get("scale_attn_weights", True) else 1.0
            if config.get("scale_attn_by_inverse_layer_idx"):
                scale /= i + 1
            mha.scale = float(scale)
            self.attn.append(mha)
            self.blocks.append({
                "ln_1": (w(p + "ln_1.weight"), w(p + "ln_1.bias")), "ln_2": (w(p + "ln_2.weight"), w(p + "ln_2.bias")),
                "fc": (w(p + "mlp.c_fc.weight", transpose=True), w(p + "mlp.c_fc.bias")),
                "proj": (w(p + "mlp.c_proj.weight", transpose=True), w(p + "mlp.c_proj.bias"))})

    @property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size", self.wte.shape[0]))

    def _embed(self, ids):
        return self.wte[ids] + self.wpe[: ids.shape[1]]                              # (B, L, d)

    def _block(self, layer, x, mask, return_weights):
        p = self.blocks[layer]
        h = layer_norm(x, *p["ln_1"], self.eps)
        a = self.attn[layer](h, mask=mask, return_weights=return_weights)
        a, w = a if return_weights else (a, None)
        x = x + a
        x = x + linear(self.act(linear(layer_norm(x, *p["ln_2"], self.eps), *p["fc"])), *p["proj"])
        return x, w, h

    def _final(self, x):
        return layer_norm(x, *self.ln_f, self.eps)

    def _lm_head(self, h):
        return h @ self.lm_head.T


def expected_shapes(d: int, n_layers: int, inner: int, vocab: int, positions: int, untied: bool) -> dict:
    """Every tensor GPT-2 reads, with its shape from the config (Conv1D layout (in, out), as stored)."""
    shapes = {"wte.weight": (vocab, d), "wpe.weight": (positions, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    if untied:
        shapes["lm_head.weight"] = (vocab, d)
    for i in range(n_layers):
        p = f"h.{i}."
        shapes.update({p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
                       p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                       p + "mlp.c_fc.weight": (d, inner), p + "mlp.c_fc.bias": (inner,),
                       p + "mlp.c_proj.weight": (inner, d), p + "mlp.c_proj.bias": (d,)})
        for name in ("ln_1", "ln_2"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (d,), (d,)
    return shapes
