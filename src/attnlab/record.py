"""A recorder of what attention layers computed, per layer and head (the TransformerLens hook idea).

Every view of a model (the explorer, ``attnlab inspect``, diagnostics, the live app, the Hugging Face backend)
reads these records instead of recomputing scores beside the model, so a view always shows the numbers the
forward pass produced. A layer that is handed a ``Recorder`` adds one ``AttentionRecord`` per call for the
layers the recorder wants; nothing is recorded (and nothing extra is computed) without one.

>>> import numpy as np
>>> rec = Recorder(layers=[0])
>>> rec.wants(0), rec.wants(1)
(True, False)
>>> w = np.full((1, 2, 3, 3), 1 / 3)
>>> rec.add(AttentionRecord(layer=0, kind="self", weights=w, scale=0.5))
>>> rec.get(0).weights.shape, rec.get(0, "self").kind
((1, 2, 3, 3), 'self')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checks import choice, integer_array, is_int, real

KINDS = ("self", "causal", "cross")


@dataclass
class AttentionRecord:
    """One attention call of one layer, as the forward pass computed it (NumPy arrays; None when not recorded).

    q (B, H, Lq, D) after any rotary embedding; k (B, G, Lk, D), v (B, G, Lk, Dv): G key/value heads (GQA
    heads are not repeated); scores (B, H, Lq, Lk): scaled logits with bias and score modifiers applied, before
    masking; mask (B|1, H|1, Lq, Lk) bool, True = may attend, or None (nothing masked); weights (B, H, Lq, Lk):
    softmax of the masked scores, rows of fully masked queries 0; lse (B, H, Lq): log-sum-exp of each row's
    masked scores (-inf when fully masked); out (B, H, Lq, Dv): weights @ v before the output projection.
    ``kind`` is "self" (encoder), "causal" (decoder self-attention) or "cross" (queries from the decoder, keys
    and values from the encoder); ``layer`` is the layer's index or name (e.g. "decoder.3").
    """
    layer: int | str
    kind: str
    scale: float
    q: np.ndarray | None = None
    k: np.ndarray | None = None
    v: np.ndarray | None = None
    scores: np.ndarray | None = None
    mask: np.ndarray | None = None
    weights: np.ndarray | None = None
    lse: np.ndarray | None = None
    out: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        choice(self.kind, "kind", KINDS)
        _check_layer(self.layer, "layer")
        self.scale = real(self.scale, "scale")
        for name in ("q", "k", "v", "scores", "mask", "weights", "lse", "out"):
            x = getattr(self, name)
            if x is not None and not isinstance(x, np.ndarray):
                raise TypeError(f"{name} must be a NumPy array or None, got {type(x).__name__}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict, got {type(self.meta).__name__}")

    @property
    def groups(self) -> int:
        """Query heads per key/value head (1 for MHA, H for MQA); query head h uses kv head h // groups."""
        if self.q is None or self.k is None:
            return 1
        return self.q.shape[-3] // self.k.shape[-3]

    def select_heads(self, heads) -> None:
        """Keep only query heads ``heads`` (in that order), in place: q, scores, weights, out and lse keep those
        heads, a per-head mask too; k and v keep the key/value head each chosen head reads (so ``groups`` becomes
        1); ``meta["heads"]`` lists the model's head index of each kept head."""
        heads = _head_list(heads)
        groups = self.groups
        n = next((x.shape[-3] for x in (self.q, self.scores, self.weights, self.out) if x is not None), None)
        if n is None and self.lse is not None:
            n = self.lse.shape[-2]
        if n is not None and any(h >= n for h in heads):
            raise ValueError(f"heads must be in 0..{n - 1} (layer {self.layer!r} has {n} heads), got {heads}")
        for name in ("q", "scores", "weights", "out"):
            x = getattr(self, name)
            if x is not None:
                setattr(self, name, x[..., heads, :, :])
        if self.lse is not None:
            self.lse = self.lse[..., heads, :]
        if self.mask is not None and self.mask.shape[-3] != 1:
            self.mask = self.mask[..., heads, :, :]
        kv = [h // groups for h in heads]                     # the key/value head of each chosen query head
        for name in ("k", "v"):
            x = getattr(self, name)
            if x is not None:
                setattr(self, name, x[..., kv, :, :])
        self.meta["heads"] = heads


def _check_layer(layer, name: str):
    """A layer is named by its index (an int >= 0) or a name ("decoder.3")."""
    if not ((is_int(layer) and layer >= 0) or (isinstance(layer, str) and layer)):
        raise TypeError(f"{name} must be a layer index (an int >= 0) or a layer name (a string), got "
                        f"{type(layer).__name__} {layer!r}"[:200])
    return layer


def _head_list(heads) -> list[int]:
    """A non-empty list of query head indices (ints >= 0)."""
    if heads is None or isinstance(heads, (str, bytes)) or np.ndim(heads) != 1:
        raise TypeError(f"heads must be a non-empty list of head indices >= 0, got {type(heads).__name__} "
                        f"{heads!r}"[:200])
    out = integer_array(heads, "heads", ndim=1, minimum=0)
    if not out.size:
        raise ValueError("heads must be a non-empty list of head indices >= 0, got []")
    return out.tolist()


class Recorder:
    """Collects ``AttentionRecord`` s for the chosen layers (None = all) and fields.

    ``fields``: which arrays to keep, a subset of ("q", "k", "v", "scores", "mask", "weights", "lse", "out");
    a layer computes the weights only when "weights" or "scores" is asked (the tiled path records q, k, v, lse
    and out, and ``attnlab.attention_weights_for`` recomputes chosen rows from lse). ``heads``: keep only these
    query heads of each record (None = all; ``AttentionRecord.select_heads``).
    """

    ALL_FIELDS = ("q", "k", "v", "scores", "mask", "weights", "lse", "out")

    def __init__(self, layers=None, fields=ALL_FIELDS, heads=None):
        if isinstance(fields, str) or not isinstance(fields, (list, tuple, set, frozenset)):
            raise TypeError(f"fields must be a list of field names among {self.ALL_FIELDS}, got "
                            f"{type(fields).__name__} {fields!r}"[:200])
        if layers is not None:
            if isinstance(layers, str) or not isinstance(layers, (list, tuple, set, frozenset, range)):
                raise TypeError(f"layers must be a list of layer indices or names (or None for all), got "
                                f"{type(layers).__name__} {layers!r}"[:200])
            for layer in layers:
                _check_layer(layer, "layers")
        unknown = set(fields) - set(self.ALL_FIELDS)
        if unknown:
            raise ValueError(f"fields must be among {self.ALL_FIELDS}, got {sorted(unknown)}")
        if heads is not None:
            heads = _head_list(heads)
        self.layers = None if layers is None else set(layers)
        self.fields = tuple(fields)
        self.heads = heads
        self.records: list[AttentionRecord] = []

    def __repr__(self) -> str:
        return f"Recorder({len(self.records)} records, layers={self.layers or 'all'}, fields={self.fields})"

    def wants(self, layer) -> bool:
        """Does the recorder keep calls of this layer?"""
        return self.layers is None or layer in self.layers

    def needs_weights(self) -> bool:
        """Must the layer materialise the weights (the reference path) to satisfy this recorder?"""
        return "weights" in self.fields or "scores" in self.fields

    def add(self, record: AttentionRecord) -> None:
        """Keep ``record`` (fields not asked for are dropped) if its layer is wanted."""
        if not self.wants(record.layer):
            return
        if self.heads is not None:
            record.select_heads(self.heads)
        for name in self.ALL_FIELDS:
            if name not in self.fields:
                setattr(record, name, None)
        self.records.append(record)

    def get(self, layer, kind: str | None = None) -> AttentionRecord:
        """The latest record of ``layer`` (and ``kind``, when a layer has several: a decoder's causal and cross)."""
        for record in reversed(self.records):
            if record.layer == layer and (kind is None or record.kind == kind):
                return record
        raise KeyError(f"no record of layer {layer!r}" + (f" kind {kind!r}" if kind else "")
                       + f"; recorded: {sorted({(str(r.layer), r.kind) for r in self.records})}")

    def clear(self) -> None:
        self.records.clear()
