"""Hugging Face transformers: attnlab as an attention implementation, and recording what its layers computed.

``register()`` adds "attnlab" to transformers' ``AttentionInterface`` (the attention function) and
``AttentionMaskInterface`` (the masks it is handed), so any architecture whose attention layers dispatch through
that interface (BERT, GPT-2, Llama, Qwen2, Mistral, T5, ... in transformers 5) runs every attention call through
``attnlab.scaled_dot_product_attention``::

    from attnlab.integrations import hf
    hf.register()
    model = AutoModel.from_pretrained(folder, attn_implementation="attnlab")

What each call hands attnlab, and what attnlab does with it:

- query (B, H, Lq, D), key and value (B, G, Lk, D|Dv): grouped-query heads stay grouped (H a multiple of G, as
  ``module.num_key_value_groups`` says); nothing is repeated.
- the mask: a boolean (B|1, 1, Lq, Lk) tensor, True = may attend, built by transformers' own mask functions
  (padding, causal, sliding window, chunked, packed sequences) exactly as for its ``eager`` implementation; an
  additive float mask (a user's 4D mask) is added to the scores as ``eager`` adds it. With no mask at all the
  call attends everywhere, or causally when the layer is causal (as ``sdpa`` reads ``is_causal``).
- ``scaling`` (the layer's own: GPT-2's per-layer scale, T5's 1.0), ``position_bias`` (T5's relative bias,
  added to the scores), ``softcap`` (Gemma 2: cap * tanh(scores / cap), ``attnlab.scores.softcap``).
- the path: CPU float32/float64 tensors that need no gradient are handed over as NumPy views (no copy) and the
  planner picks the reference path or the tiled kernel by size (``attnlab.plan`` explains it); tensors that need
  a gradient, other dtypes (float16, bfloat16) and other devices run the reference path on the tensors themselves,
  so autograd flows.

Nothing falls back silently: attention dropout (a model in training mode with dropout > 0), attention sinks
(``s_aux``, ``sinks``), a FlexAttention ``BlockMask`` and a bias together with a softcap raise ``ValueError`` or
``TypeError`` naming what to change. One difference from ``eager`` is deliberate: a query row with nothing to
attend to (left padding under a causal mask) gives output 0, where ``eager`` averages every value (its mask adds
the dtype's minimum, not -inf); only such padded rows differ.

``recording(model, layers=, heads=, fields=)`` attaches an ``attnlab.record.Recorder`` to every attention call the
model makes inside the ``with``: each call of a wanted layer adds one ``AttentionRecord`` (q, k, v, pre-mask
scores, mask, weights, lse, out), computed by ``attnlab.layers.record_attention``, the same pass attnlab's own
models record with, so ``attnlab.diagnostics``, ``attnlab.viz`` and the explorer read them as they read attnlab's
models. Layers are named by ``site``: the layer index (``int``) for one-stack models, "encoder.3" / "decoder.3" for
encoder-decoders; kinds are "self", "causal" and "cross".
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import output_capturing

from .. import masks as masks_mod
from ..api import scaled_dot_product_attention
from ..layers import record_attention
from ..models._base import AttentionParts, attention_parts_of
from ..record import Recorder
from ..scores import softcap as softcap_mod

NAME = "attnlab"
UNSUPPORTED = {"s_aux": "attention sinks (s_aux)", "sinks": "attention sinks"}
CROSS_NAMES = ("cross", "encdec", "encoder_attn")    # module path parts of cross-attention (BERT, T5, BART/Whisper)


def register() -> str:
    """Register attnlab with transformers (idempotent): ``attn_implementation="attnlab"`` then works in
    ``from_pretrained``, ``from_config`` and ``model.set_attn_implementation``. Returns the name, "attnlab"."""
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, boolean_mask)
    return NAME


def boolean_mask(*args, **kwargs):
    """The mask attnlab is handed: transformers' boolean (B, 1, Lq, Lk) mask (True = may attend), always built for
    causal and sliding-window layers (never replaced by an ``is_causal`` flag), None only for full attention
    without padding. It is the mask transformers' ``eager`` implementation gets, before its cast to 0 / min."""
    kwargs.pop("allow_is_causal_skip", None)
    return sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)


# --- the attention function ----------------------------------------------------------------------------------------
def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function signature on attnlab: query (B, H, Lq, D), key (B, G, Lk, D), value
    (B, G, Lk, Dv) -> (output (B, Lq, H, Dv), weights (B, H, Lq, Lk) when ``output_attentions`` else None)."""
    _check_supported(module, query, key, dropout, kwargs)
    B, H, Lq, _ = query.shape
    Lk = key.shape[-2]
    mask, bias = _mask_and_bias(module, attention_mask, kwargs.get("position_bias"), Lq, Lk, kwargs)
    score_mod = None if kwargs.get("softcap") is None else softcap_mod(float(kwargs["softcap"]))
    if score_mod is not None and bias is not None:
        raise ValueError("attnlab applies a score modifier after the additive bias, transformers applies softcap "
                         "before the mask: pass either softcap or an additive mask/position_bias, not both")
    want_weights = weights_requested(kwargs)
    q, k, v, mask, bias, back = _inputs(query, key, value, mask, bias)
    site = _site_of(module)
    weights = None
    if site is not None:
        out, weights = record_attention(q, k, v, mask, scale=scaling, bias=bias, score_mod=score_mod,
                                        recorder=site.recorder, layer=site.layer, kind=site.kind)
    if site is None or (want_weights and weights is None):
        res = scaled_dot_product_attention(q, k, v, mask, scale=scaling, bias=bias, score_mod=score_mod,
                                           return_weights=want_weights)
        out, weights = res if want_weights else (res, None)
    out = back(out).transpose(1, 2).contiguous()                        # (B, Lq, H, Dv)
    return out, (back(weights) if want_weights else None)


def weights_requested(kwargs) -> bool:
    """Did the caller ask for attention weights (``output_attentions=True``)? Models pass the flag down, or (GPT-2,
    BERT in transformers 5) collect the weights with forward hooks whose context says which outputs it collects:
    the weights are computed only then, so other calls may run the tiled kernel."""
    if kwargs.get("output_attentions"):
        return True
    collector = getattr(output_capturing, "_active_collector", None)       # transformers 5's hook context
    collected = collector.get() if collector is not None else None
    return bool(collected) and any(key.endswith("attentions") for key in collected)


def _check_supported(module, query, key, dropout, kwargs):
    if dropout:
        raise ValueError(f"attention dropout {dropout} is not supported by attnlab's attention: call model.eval() "
                         f"(dropout is 0 outside training) or set the config's attention dropout to 0")
    for name, what in UNSUPPORTED.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"{type(module).__name__} passes {name}= ({what}), which attnlab's attention does "
                             f"not implement; use attn_implementation='eager' for this model")
    for x, name in ((query, "query"), (key, "key")):
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise TypeError(f"{name} must be a (B, heads, L, D) torch.Tensor, got {type(x).__name__} "
                            f"{tuple(getattr(x, 'shape', ()))}")
    groups = getattr(module, "num_key_value_groups", None)
    if groups is not None and query.shape[1] != groups * key.shape[1]:
        raise ValueError(f"{type(module).__name__} has num_key_value_groups={groups}, but query has "
                         f"{query.shape[1]} heads and key {key.shape[1]}")


def _mask_and_bias(module, attention_mask, position_bias, Lq, Lk, kwargs):
    """(mask: bool tensor, Mask or None; bias: float tensor or None) for one call."""
    mask = bias = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor (boolean, or additive float), got "
                            f"{type(attention_mask).__name__}: FlexAttention block masks need "
                            f"attn_implementation='flex_attention'")
        if attention_mask.dtype == torch.bool:
            mask = attention_mask
        else:
            bias = attention_mask                                       # additive, as eager adds it
    else:
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", False) if causal is None else causal
        if causal and Lq > 1:
            if Lq != Lk:
                raise ValueError(f"{type(module).__name__} is causal with {Lq} queries and {Lk} keys but no mask: "
                                 f"pass the attention_mask (the causal alignment is ambiguous)")
            mask = masks_mod.causal()
        window = kwargs.get("sliding_window")
        if window is not None and Lk > window:
            raise ValueError(f"{type(module).__name__} has sliding_window={window} and {Lk} keys but no mask "
                             f"encodes the window: build the model with attn_implementation='attnlab' so "
                             f"transformers makes the mask")
    if position_bias is not None:
        bias = position_bias if bias is None else bias + position_bias   # (1|B, H, Lq, Lk)
    return mask, bias


def _inputs(query, key, value, mask, bias):
    """The arrays attnlab runs on and the function that turns its results back into tensors: NumPy views of CPU
    float32/float64 tensors that need no gradient (the planner may then pick the tiled kernel), else the
    tensors themselves (the reference path, autograd flows)."""
    tensors = [x for x in (query, key, value, bias) if isinstance(x, torch.Tensor)]
    numpy = all(x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) for x in tensors) and not (
        torch.is_grad_enabled() and any(x.requires_grad for x in tensors))
    if not numpy:
        if bias is not None:
            bias = bias.to(query.dtype)
        return query, key, value, mask, bias, (lambda x: x)
    dtype = query.dtype
    q, k, v = (x.detach().numpy() for x in (query, key, value))
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if bias is not None:
        bias = bias.detach().to(dtype).numpy()

    def back(x):
        return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
    return q, k, v, mask, bias, back


# --- recording -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """Where one attention module's calls go in a recording: the recorder, as which layer and kind."""

    recorder: Recorder
    layer: int | str
    kind: str


ACTIVE: list[tuple[dict, Recorder, bool]] = []    # (module -> qualified name, recorder, encoder-decoder?) per `with`


def site(name: str, module, encoder_decoder: bool = False) -> tuple:
    """(layer, kind) of the attention module at ``name`` in its model: the first integer in the path is the layer
    ("model.layers.2.self_attn" -> 2), prefixed by the stack for encoder-decoders ("decoder.block.1.layer.1.
    EncDecAttention" -> "decoder.1"); kind "cross" for cross-attention (the module says ``is_cross_attention`` or
    its path names it: crossattention, EncDecAttention, encoder_attn), else "causal" when the module is causal,
    else "self". A path without an integer is its own layer name.

    >>> site("encoder.layer.3.attention.self", None)
    (3, 'self')
    >>> site("decoder.block.1.layer.1.EncDecAttention", None, encoder_decoder=True)
    ('decoder.1', 'cross')
    """
    parts = name.split(".")
    at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if at is None:
        layer = name
    else:
        layer = int(parts[at])
        stack = next((p for p in parts[:at] if p in ("encoder", "decoder")), None) if encoder_decoder else None
        layer = layer if stack is None else f"{stack}.{layer}"
    tail = [p.lower() for p in parts[(at or 0):]]
    if getattr(module, "is_cross_attention", False) or any(c in p for p in tail for c in CROSS_NAMES):
        return layer, "cross"
    return layer, "causal" if getattr(module, "is_causal", False) else "self"


def _site_of(module) -> Site | None:
    for names, recorder, enc_dec in reversed(ACTIVE):
        name = names.get(module)
        if name is not None:
            layer, kind = site(name, module, enc_dec)
            return Site(recorder, layer, kind) if recorder.wants(layer) else None
    return None


@contextmanager
def recording(model, layers=None, heads=None, fields=Recorder.ALL_FIELDS):
    """Record the attention calls ``model`` makes inside the ``with`` into a new ``attnlab.record.Recorder``
    (yielded): for each layer in ``layers`` (None: all; names as ``site`` gives them) one ``AttentionRecord`` per
    call, of the ``fields`` asked, restricted to query ``heads`` (None: all). The model must run on attnlab
    (``attn_implementation="attnlab"``); with "weights" or "scores" among the fields the recorded layers run the
    reference path (the whole weight matrix), else any path.

    ``with hf.recording(model, layers=[0], fields=("weights",)) as rec: model(**batch)``, then
    ``rec.get(0).weights`` is layer 0's (B, H, Lq, Lk).
    """
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation != NAME:
        raise ValueError(f"the model runs attn_implementation={implementation!r}, not {NAME!r}: call "
                         f"attnlab.integrations.hf.register() and load it with attn_implementation={NAME!r} "
                         f"(or model.set_attn_implementation({NAME!r}))")
    recorder = Recorder(layers=layers, fields=fields, heads=heads)
    names = {module: name for name, module in model.named_modules()}
    entry = (names, recorder, bool(getattr(model.config, "is_encoder_decoder", False)))
    ACTIVE.append(entry)
    try:
        yield recorder
    finally:
        ACTIVE.remove(entry)


def attention_parts(model, tokenizer, text: str, max_length: int | None = None) -> AttentionParts:
    """Queries, keys, values, pre-mask scores and weights of every head of a one-stack model (encoder or decoder)
    for one text, recorded during one forward pass: the ``AttentionParts`` attnlab's own models give, so
    ``attnlab inspect``'s tables, heatmaps and explorer page work on the model. ``tokenizer``: its Hugging Face
    tokenizer; ``max_length``: refuse longer texts (default: the config's ``max_position_embeddings``)."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is an encoder-decoder: record it with hf.recording(model) and "
                         f"read the 'encoder.N' / 'decoder.N' records")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]             # (1, L)
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    if limit is not None and ids.shape[1] > limit:
        raise ValueError(f"the text is {ids.shape[1]} tokens long but the model takes at most {limit}")
    with torch.no_grad(), recording(model, fields=("q", "k", "v", "scores", "mask", "weights")) as rec:
        model(input_ids=ids)
    layers = sorted({r.layer for r in rec.records if isinstance(r.layer, int)})
    records = [rec.get(layer) for layer in layers]
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    meta = {"model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
            "family": getattr(model.config, "model_type", "?"), "layers": len(layers),
            "heads": records[0].q.shape[1], "kv_heads": records[0].k.shape[1], "backend": NAME}
    return attention_parts_of(tokens, records, meta)


@dataclass
class LocalModel:
    """A local Hugging Face folder loaded by transformers with attnlab as its attention implementation, with the
    surface ``attnlab inspect`` reads (name, n_layers, n_heads, causal, attention_parts)."""

    name: str
    model: object
    tokenizer: object

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def causal(self) -> bool:
        return bool(getattr(self.model.config, "is_decoder", False)) or any(
            a.endswith(("CausalLM", "LMHeadModel")) for a in (self.model.config.architectures or []))

    def attention_parts(self, text: str, truncate: bool = False) -> AttentionParts:
        if truncate:
            limit = getattr(self.model.config, "max_position_embeddings", None)
            ids = self.tokenizer(text, truncation=limit is not None, max_length=limit)["input_ids"]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return attention_parts(self.model, self.tokenizer, text)


def load_local(folder) -> LocalModel:
    """transformers' ``AutoModel`` and ``AutoTokenizer`` from ``folder`` (offline), attention on attnlab."""
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"--hf: expected a Hugging Face model folder with a config.json, got {str(folder)!r}")
    register()
    model = AutoModel.from_pretrained(path, attn_implementation=NAME, local_files_only=True).eval()
    return LocalModel(path.name, model, AutoTokenizer.from_pretrained(path, local_files_only=True))
