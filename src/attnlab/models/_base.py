"""What every model in attnlab.models shares: tokens in, padded batches with a padding mask, attention weights
and the per-head pieces (queries, keys, values, pre-mask scores) out.

A model subclass puts its attention layers (``attnlab.MultiHeadAttention``, one per block, in order) in
``self.attn`` and supplies ``_embed(ids)`` (B, L) -> (B, L, d), ``_block(l, x, mask, return_weights)`` ->
(x, weights (B, H, L, L) or None, the input its attention layer saw (B, L, d)), calling ``self.attn[l]`` on the
block's input, and ``_final(x)``.
Batches are right-padded: sequence b holds ``lengths[b]`` real tokens, keys past that are hidden with
``attnlab.masks.padding`` (padded query rows still compute, as in Hugging Face, and are ignored).

What a model shows of its attention comes from one forward pass with an ``attnlab.record.Recorder`` attached to
every layer (``recording``, ``record``): ``attentions`` and ``attention_parts`` (what the explorer, ``attnlab
inspect``, the diagnostics and the tour read) are the numbers the pass computed, rotary embedding, per-layer scales
and any bias included, never a recomputation beside the model. The public methods a model family inherits:
``tokenize``, ``token_strings``, ``batch``, ``mask``, ``forward``, ``run_blocks``, ``recording``, ``record``,
``attentions``, ``attention_parts`` (and ``logits`` for decoders).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import masks
from ..layers import MultiHeadAttention
from ..record import Recorder
from ._checkpoint import Tokenizer


@dataclass
class AttentionParts:
    """Everything a head computed for one sequence, per layer and query head.

    scores: (layers, H, L, L) scaled logits q.k * scale BEFORE masking; base_mask: (L, L) bool (True = may
    attend) or None; queries/keys: (layers, H, L, Dh) (rotary applied; GQA key heads repeated per query head);
    values: (layers, H, L, Dv); weights: (layers, H, L, L) = softmax(scores where base_mask). ``scale`` is layer
    0's (q.k * scale = scores); a model whose layers use different scales lists them in meta["scale per layer"].
    Every array is what the model's forward pass computed (``Transformer.record``).
    """
    tokens: list[str]
    scores: np.ndarray
    base_mask: np.ndarray | None
    queries: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    weights: np.ndarray
    scale: float
    meta: dict = field(default_factory=dict)


@dataclass
class Recording:
    """A forward pass over one sequence: its tokens and the ``Recorder`` that the layers filled."""

    tokens: list[str]
    recorder: Recorder

    def __iter__(self):                       # tokens, recorder = model.record(text)
        return iter((self.tokens, self.recorder))


class Transformer:
    """Base of the NumPy transformers built on attnlab.MultiHeadAttention."""

    family = "?"
    causal = False
    pad_id = 0          # the id written into padded positions (hidden by the padding mask, so any valid id works)

    def __init__(self, folder: Path, config: dict, name: str, max_length: int):
        self.folder, self.config, self.name, self.max_length = folder, config, name, int(max_length)
        self.tokenizer = Tokenizer.load(folder)
        self.attn: list[MultiHeadAttention] = []

    def __repr__(self) -> str:
        a = self.attn[0]
        return (f"{type(self).__name__}({self.name!r}, layers={self.n_layers}, heads={a.n_heads}, "
                f"kv_heads={a.n_kv_heads}, d_model={a.d_model}, max_length={self.max_length})")

    @property
    def n_layers(self) -> int:
        return len(self.attn)

    @property
    def n_heads(self) -> int:
        return self.attn[0].n_heads

    # --- tokens --------------------------------------------------------------------------------------------
    def tokenize(self, text: str, truncate: bool = False) -> np.ndarray:
        """Token ids (L,) of ``text`` with the family's special tokens; longer than max_length -> ValueError
        naming the limit, unless ``truncate`` (then the first max_length tokens are kept, the last one kept as
        the closing special token where the family has one)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.folder} has no tokenizer.json: pass token ids instead of text")
        ids = self.tokenizer.encode(text)
        return self._check_length(np.asarray(ids, dtype=np.int64), truncate)

    def _check_length(self, ids: np.ndarray, truncate: bool) -> np.ndarray:
        if len(ids) <= self.max_length:
            return ids
        if not truncate:
            raise ValueError(f"the text is {len(ids)} tokens long but {self.name} takes at most "
                             f"{self.max_length}; shorten it or pass truncate=True (--truncate)")
        return self._truncate(ids)

    def _truncate(self, ids: np.ndarray) -> np.ndarray:
        return ids[: self.max_length]

    def token_strings(self, ids) -> list[str]:
        if self.tokenizer is None:
            return [str(int(i)) for i in ids]
        return self.tokenizer.tokens(ids)

    def _ids(self, text_or_ids, truncate: bool = False) -> np.ndarray:
        """One sequence: text -> ids, or an int sequence checked against the vocabulary and the length limit."""
        if isinstance(text_or_ids, str):
            return self.tokenize(text_or_ids, truncate)
        ids = np.asarray(text_or_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"expected a str or a non-empty 1-D sequence of token ids, got {text_or_ids!r:.80}")
        vocab = self.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"token ids must lie in [0, {vocab}), got min {ids.min()} max {ids.max()}")
        return self._check_length(ids.astype(np.int64), truncate)

    def batch(self, sequences, truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids (B, L) and lengths (B,) for a list of texts or id sequences."""
        seqs = [self._ids(s, truncate) for s in sequences]
        if not seqs:
            raise ValueError("expected at least one text or id sequence, got none")
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        ids = np.full((len(seqs), int(lengths.max())), self.pad_id, dtype=np.int64)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = s
        return ids, lengths

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    # --- forward -------------------------------------------------------------------------------------------
    def mask(self, L: int, lengths=None):
        """The attention mask for a (B, L) batch: causal for decoders, & padding when some row is shorter."""
        padded = lengths is not None and (np.asarray(lengths) < L).any()
        pad = masks.padding(np.asarray(lengths)) if padded else None
        if self.causal:
            return masks.causal() if pad is None else masks.causal() & pad
        return pad

    def forward(self, ids, lengths=None, return_weights: bool = False, capture: bool = False):
        """ids (B, L) -> hidden states (B, L, d) after the final block (and final norm where the family has one),
        the weights (layers, B, H, L, L) if asked, the attention inputs (layers, B, L, d) if ``capture``."""
        ids = np.asarray(ids)
        return self.run_blocks(self._embed(ids), lengths, return_weights, capture)

    def run_blocks(self, x, lengths=None, return_weights: bool = False, capture: bool = False):
        """The blocks and final norm on embedded inputs x (B, L, d); returns as ``forward``."""
        mask = self.mask(x.shape[1], lengths)
        weights, inputs = [], []
        for layer in range(self.n_layers):
            x, w, a_in = self._block(layer, x, mask, return_weights)
            weights.append(w)
            inputs.append(a_in)
        x = self._final(x)
        return (x, np.stack(weights) if return_weights else None, np.stack(inputs) if capture else None)

    @contextmanager
    def recording(self, recorder: Recorder):
        """Attach ``recorder`` to every attention layer (as layer 0, 1, ...; kind "causal" for decoders, else
        "self") for the forward passes run inside the ``with``; detach afterwards, even on error.

        For example ``with model.recording(Recorder(fields=("weights",))) as rec: model.forward(ids)``, then
        ``rec.get(0).weights`` is layer 0's (B, H, L, L).
        """
        kind = "causal" if self.causal else "self"
        for layer, mha in enumerate(self.attn):
            mha.attach(recorder, layer=layer, kind=kind)
        try:
            yield recorder
        finally:
            for mha in self.attn:
                mha.detach()

    def record(self, text_or_ids, truncate: bool = False, fields=Recorder.ALL_FIELDS, layers=None) -> Recording:
        """One forward pass over one text (or id sequence) with a recorder attached: the tokens and the
        ``Recorder`` holding, for each layer in ``layers`` (None: all), the ``fields`` the pass computed (see
        ``attnlab.record.AttentionRecord``; arrays keep the batch axis, B = 1)."""
        ids = self._ids(text_or_ids, truncate)
        with self.recording(Recorder(layers=layers, fields=fields)) as recorder:
            self.forward(ids[None, :])
        return Recording(self.token_strings(ids), recorder)

    def attentions(self, text_or_ids, truncate: bool = False) -> tuple[list[str], np.ndarray]:
        """Tokens and attention weights (layers, H, L, L) of one text (or id sequence), as the pass computed them."""
        tokens, rec = self.record(text_or_ids, truncate, fields=("weights",))
        return tokens, np.stack([rec.get(layer).weights[0] for layer in range(self.n_layers)])

    def attention_parts(self, text_or_ids, truncate: bool = False) -> AttentionParts:
        """Queries, keys, values, pre-mask scores and weights of every head for one sequence, recorded during one
        forward pass (see AttentionParts)."""
        tokens, rec = self.record(text_or_ids, truncate, fields=("q", "k", "v", "scores", "mask", "weights"))
        meta = {"model": self.name, "family": self.family, "layers": self.n_layers, "heads": self.n_heads,
                "kv_heads": self.attn[0].n_kv_heads}
        return attention_parts_of(tokens, [rec.get(layer) for layer in range(self.n_layers)], meta)


def attention_parts_of(tokens: list[str], records, meta: dict) -> AttentionParts:
    """``AttentionParts`` of one sequence (B = 1) from one record per layer, in layer order, each holding q, k, v,
    scores, mask and weights (``Recorder(fields=...)``): attnlab's own models and the Hugging Face backend
    (``attnlab.integrations.hf``) build their parts here. Every layer must attend under the same (L, L) mask."""
    q = np.stack([r.q[0] for r in records])                                    # (layers, H, L, Dh)
    k = np.stack([np.repeat(r.k[0], r.groups, axis=0) for r in records])       # (layers, H, L, Dh)
    v = np.stack([np.repeat(r.v[0], r.groups, axis=0) for r in records])       # (layers, H, L, Dv)
    scores = np.stack([r.scores[0] for r in records])                          # (layers, H, L, L)
    weights = np.stack([r.weights[0] for r in records])                        # (layers, H, L, L)
    mask = records[0].mask                                                     # (1, 1, L, L) or None
    if not all((r.mask is None) == (mask is None) and (mask is None or np.array_equal(r.mask, mask))
               for r in records) or (mask is not None and mask.shape[:2] != (1, 1)):
        raise ValueError("the layers attend under different masks (e.g. sliding-window and full layers): "
                         "AttentionParts holds one (L, L) mask; read each layer's record instead")
    base = None if mask is None else mask[0, 0]
    scales = np.array([r.scale for r in records])                              # (layers,)
    meta = dict(meta)
    if not np.allclose(scales, scales[0]):
        meta["scale per layer"] = ", ".join(f"{s:.4g}" for s in scales)   # GPT-2 scale_attn_by_inverse_layer_idx
    return AttentionParts(tokens, scores, base, q, k, v, weights, float(scales[0]), meta)


class Decoder(Transformer):
    """A causal language model: ``logits(ids)``."""

    causal = True

    def logits(self, input_ids, lengths=None) -> np.ndarray:
        """input_ids (L,) or right-padded (B, L) with ``lengths`` -> next-token logits (..., L, vocab).
        Rows past a sequence's length are padding: ignore them."""
        ids = np.asarray(input_ids)
        single = ids.ndim == 1
        if single:
            ids = self._ids(ids)[None, :]
        elif ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"input_ids must be int (L,) or (B, L), got {ids.dtype} {ids.shape}")
        elif ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got min {ids.min()} max {ids.max()}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"input is {ids.shape[1]} tokens long but {self.name} takes at most {self.max_length}")
        h, _, _ = self.forward(ids, lengths)
        out = self._lm_head(h)                                                      # (B, L, vocab)
        return out[0] if single else out
