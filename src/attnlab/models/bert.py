"""BERT-family encoders (BERT, MiniLM, all-MiniLM-L6-v2) in NumPy on attnlab.MultiHeadAttention.

Devlin et al. 2019. Embeddings (word + position + token type, LayerNorm), then per layer the post-LN block:

    x = LN(x + MHA(x, padding mask))      attention.self.{query,key,value} -> w_q/w_k/w_v, attention.output.dense -> w_o
    x = LN(x + W2 gelu(W1 x))             intermediate.dense, output.dense

Sentence embeddings as sentence-transformers' all-MiniLM-L6-v2 makes them (Reimers & Gurevych 2019): mean of the
last hidden states over the real (non-padding) tokens, then L2-normalized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..layers import MultiHeadAttention
from ._base import Transformer
from ._blocks import activation, layer_norm, linear
from ._checkpoint import Weights, config_int


class BertEncoder(Transformer):
    family = "bert"

    def __init__(self, folder: Path, config: dict, name: str, dtype=np.float32):
        super().__init__(folder, config, name, config.get("max_position_embeddings", 512))
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {config['position_embedding_type']!r} is not supported "
                             f"(absolute only)")
        w = Weights(folder, ("bert.",), dtype)
        source = folder / "config.json"
        d, H = config_int(config, "hidden_size", source), config_int(config, "num_attention_heads", source)
        n_layers = config_int(config, "num_hidden_layers", source)
        w.check(expected_shapes(d, n_layers, config_int(config, "intermediate_size", source, 4 * d),
                                config_int(config, "vocab_size", source,
                                           (w.shape("embeddings.word_embeddings.weight") or (1,))[0]),
                                config_int(config, "max_position_embeddings", source, 512),
                                config_int(config, "type_vocab_size", source, 2)))
        if d % H:
            raise ValueError(f"{source}: hidden_size {d} is not a multiple of num_attention_heads {H}")
        self.eps = config.get("layer_norm_eps", 1e-12)
        self.act = activation(config.get("hidden_act", "gelu"))
        self.emb = {n: w(f"embeddings.{n}") for n in ("word_embeddings.weight", "position_embeddings.weight",
                                                       "token_type_embeddings.weight", "LayerNorm.weight",
                                                       "LayerNorm.bias")}
        self.blocks = []
        for i in range(n_layers):
            p = f"encoder.layer.{i}."
            mha = MultiHeadAttention(d, H, dtype=dtype, init=False)
            mha.w_q, mha.b_q = w(p + "attention.self.query.weight"), w(p + "attention.self.query.bias")
            mha.w_k, mha.b_k = w(p + "attention.self.key.weight"), w(p + "attention.self.key.bias")
            mha.w_v, mha.b_v = w(p + "attention.self.value.weight"), w(p + "attention.self.value.bias")
            mha.w_o, mha.b_o = w(p + "attention.output.dense.weight"), w(p + "attention.output.dense.bias")
            self.attn.append(mha)
            self.blocks.append({n: w(p + n) for n in (
                "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
                "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight", "output.dense.bias",
                "output.LayerNorm.weight", "output.LayerNorm.bias")})
        self.pad_id = int(config.get("pad_token_id", 0) or 0)

    def _truncate(self, ids: np.ndarray) -> np.ndarray:
        """Keep the first max_length - 1 tokens and the closing [SEP]."""
        return np.concatenate([ids[: self.max_length - 1], ids[-1:]])

    def _embed(self, ids):
        return self._embed_words(self.embed_words(ids))

    def _embed_words(self, words):
        """word embeddings (B, L, d) + position + token type 0, then LayerNorm."""
        e = self.emb
        x = words + e["position_embeddings.weight"][: words.shape[1]] + e["token_type_embeddings.weight"][0]
        return layer_norm(x, e["LayerNorm.weight"], e["LayerNorm.bias"], self.eps)          # (B, L, d)

    def embed_words(self, ids) -> np.ndarray:
        """The word embeddings (B, L, d) of ids: the "input" of gradient x input (attnlab.faithfulness)."""
        return self.emb["word_embeddings.weight"][np.asarray(ids)]

    def forward_from_words(self, words, lengths=None) -> np.ndarray:
        """Last hidden states (B, L, d) from word embeddings (B, L, d) instead of ids."""
        return self.run_blocks(self._embed_words(words), lengths)[0]

    def _block(self, layer, x, mask, return_weights):
        p = self.blocks[layer]
        a = self.attn[layer](x, mask=mask, return_weights=return_weights)
        a, w = a if return_weights else (a, None)
        a += x                                           # the residuals add into the fresh sublayer outputs
        h = layer_norm(a, p["attention.output.LayerNorm.weight"], p["attention.output.LayerNorm.bias"], self.eps)
        f = linear(self.act(linear(h, p["intermediate.dense.weight"], p["intermediate.dense.bias"])),
                   p["output.dense.weight"], p["output.dense.bias"])
        f += h
        return layer_norm(f, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], self.eps), w, x

    def _final(self, x):
        return x

    def encode(self, texts, batch_size: int = 16, truncate: bool = False) -> np.ndarray:
        """Sentence embeddings (N, d): mean over real tokens of the last hidden states, L2-normalized.
        A single str gives (d,). The texts are tokenized first and batched by length (longest first, as
        sentence-transformers does), so a batch pads little; the embeddings come back in the input order. Padding
        is hidden by the padding mask and left out of the mean."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        seqs = [self._ids(t, truncate) for t in texts]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))            # longest first, stable
        emb = np.zeros((len(seqs), self.attn[0].d_model), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            ids, lengths = self.batch([seqs[i] for i in rows])
            h, _, _ = self.forward(ids, lengths)
            emb[rows] = pool(h, lengths)
        return emb[0] if single else emb


def expected_shapes(d: int, n_layers: int, inner: int, vocab: int, positions: int, types: int) -> dict:
    """Every tensor a BERT encoder reads, with its shape from the config (PyTorch Linear layout (out, in))."""
    shapes = {"embeddings.word_embeddings.weight": (vocab, d), "embeddings.position_embeddings.weight": (positions, d),
              "embeddings.token_type_embeddings.weight": (types, d), "embeddings.LayerNorm.weight": (d,),
              "embeddings.LayerNorm.bias": (d,)}
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (d, d), (d,)
        shapes.update({p + "intermediate.dense.weight": (inner, d), p + "intermediate.dense.bias": (inner,),
                       p + "output.dense.weight": (d, inner), p + "output.dense.bias": (d,)})
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (d,), (d,)
    return shapes


def pool(hidden, lengths) -> np.ndarray:
    """Mean over the first lengths[b] positions of hidden (B, L, d), then L2-normalized: (B, d)."""
    keep = (np.arange(hidden.shape[1])[None, :] < np.asarray(lengths)[:, None])[..., None]   # (B, L, 1)
    mean = (hidden * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
