"""Multi-head attention (MHA, GQA, MQA) with a KV cache, parameters as plain arrays.

Vaswani et al. 2017, section 3.2.2: project x to queries, keys and values, split them into heads, attend in each
head, concatenate, project back. Grouped-query attention (Ainslie et al. 2023) gives the keys/values only
G = n_kv_heads heads, each shared by n_heads // G query heads; multi-query attention (Shazeer 2019) is G = 1.
The KV cache keeps the keys and values of past positions so a decoder computes one new position per step.

Weights follow PyTorch's Linear convention (out_features, in_features): q = x @ w_q.T + b_q.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import planner
from ._array import as_array, itemsize, namespace, require_floating, require_ndim, to_namespace, to_numpy
from .api import attention_steps, scaled_dot_product_attention
from .budget import check as check_budget
from .checks import flag, non_negative_int, positive_int, real
from .record import AttentionRecord, Recorder
from .scores import rotary


class KVCache:
    """Keys and values of the positions seen so far, (B, G, T, Dh) each.

    NumPy caches grow in place with amortized doubling (an append costs O(new tokens)); other array libraries
    concatenate. ``nbytes`` is the memory the cached keys and values occupy; ``bytes_per_token`` what one more
    position adds.
    """

    def __init__(self):
        self._k = self._v = None      # (B, G, capacity, Dh) buffers (NumPy) or exact arrays (others)
        self.length = 0
        self.static = False           # True for cross-attention: keys/values of a fixed context, computed once

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"KVCache(length={self.length}, nbytes={self.nbytes})"

    @property
    def keys(self):
        return None if self._k is None else self._k[..., : self.length, :]

    @property
    def values(self):
        return None if self._v is None else self._v[..., : self.length, :]

    @property
    def nbytes(self) -> int:
        if self._k is None:
            return 0
        return _nbytes(self.keys) + _nbytes(self.values)

    @property
    def bytes_per_token(self) -> int:
        return 0 if self.length == 0 else self.nbytes // self.length

    def append(self, k, v):
        """Add keys/values (B, G, t, Dh) and return all of them, (B, G, T + t, Dh). Invalid input raises before the
        cache changes."""
        k, v = as_array(k, "key"), as_array(v, "value")
        xp = namespace(k, v)
        for x, name in ((k, "key"), (v, "value")):
            require_ndim(x, name, 2, "(..., t, Dh)")
            require_floating(xp, x, name)
        if tuple(v.shape[:-1]) != tuple(k.shape[:-1]):
            raise ValueError(f"value has shape {tuple(v.shape)} but key has {tuple(k.shape)}: they must agree in "
                             f"every axis but the last")
        if self._k is None:
            self._k, self._v = _grow(k, k.shape[-2]), _grow(v, v.shape[-2])
        else:
            if k.shape[:-2] != self._k.shape[:-2] or k.shape[-1] != self._k.shape[-1]:
                raise ValueError(f"cache holds keys of shape (..., {self._k.shape[-1]}) with leading dims "
                                 f"{self._k.shape[:-2]}, got {tuple(k.shape)}")
            if v.shape[-1] != self._v.shape[-1]:
                raise ValueError(f"cache holds values of dim {self._v.shape[-1]}, got value of shape {tuple(v.shape)}")
            need = self.length + k.shape[-2]
            if isinstance(self._k, np.ndarray):
                if need > self._k.shape[-2]:
                    cap = max(need, 2 * self._k.shape[-2])
                    self._k, self._v = _grow(self.keys, cap), _grow(self.values, cap)
                self._k[..., self.length: need, :] = k
                self._v[..., self.length: need, :] = v
            else:
                xp = namespace(k)
                self._k = xp.concat([self.keys, k], axis=-2)
                self._v = xp.concat([self.values, v], axis=-2)
            self.length = need
            return self.keys, self.values
        self.length = k.shape[-2]
        return self.keys, self.values

    def clear(self) -> None:
        self.__init__()


def _grow(x, capacity):
    """A NumPy buffer of ``capacity`` positions holding ``x`` at the start (other libraries: ``x`` itself)."""
    if not isinstance(x, np.ndarray):
        return x
    buf = np.empty(x.shape[:-2] + (capacity, x.shape[-1]), dtype=x.dtype)
    buf[..., : x.shape[-2], :] = x
    return buf


def _nbytes(x) -> int:
    return int(np.prod(x.shape)) * itemsize(namespace(x), x)     # any library's dtype, bfloat16 included


@dataclass(frozen=True)
class Attached:
    """A recorder attached to a layer (``MultiHeadAttention.attach``): where its calls go, as which layer and kind."""

    recorder: Recorder
    layer: int | str = 0
    kind: str | None = None


class MultiHeadAttention:
    """Multi-head attention; MHA when n_kv_heads == n_heads, MQA at 1, GQA between.

    Parameters (plain NumPy arrays, PyTorch Linear layout):
      w_q (H*Dh, d_model), w_k (G*Dh, kdim), w_v (G*Dh, vdim), w_o (d_model, H*Dh), b_q, b_k, b_v, b_o.

    ``rope_base``: apply rotary position embedding to q and k (Llama family); positions continue across KV-cache
    steps. ``init=False`` starts the weights at zero instead of drawing them (a checkpoint loader overwrites them).

    >>> mha = MultiHeadAttention(8, n_heads=4, n_kv_heads=2, seed=0)
    >>> mha(np.ones((2, 5, 8), np.float32)).shape
    (2, 5, 8)
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, bias: bool = True,
                 seed: int | None = None, kdim: int | None = None, vdim: int | None = None,
                 head_dim: int | None = None, rope_base: float | None = None, dtype=np.float32,
                 init: bool = True):
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        optional = {"kdim": kdim, "vdim": vdim, "head_dim": head_dim}
        for name, value in {"d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv_heads, **optional}.items():
            if value is None and name in optional:
                continue
            positive_int(value, name)
        real(rope_base, "rope_base", allow_none=True, positive=True)
        bias = flag(bias, "bias")
        if seed is not None:
            non_negative_int(seed, "seed")
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = head_dim or d_model // n_heads
        if rope_base is not None and self.head_dim % 2:
            raise ValueError(f"rotary embedding (rope_base) needs an even head_dim, got {self.head_dim}")
        self.kdim, self.vdim = kdim or d_model, vdim or d_model
        self.rope_base = rope_base
        self.scale = None
        H, G, Dh = n_heads, n_kv_heads, self.head_dim
        weights = H * Dh * d_model + G * Dh * (self.kdim + self.vdim) + d_model * H * Dh + 2 * (H + G) * Dh + d_model
        check_budget(weights * np.dtype(dtype).itemsize, f"MultiHeadAttention(d_model={d_model}, n_heads={n_heads}, "
                     f"n_kv_heads={n_kv_heads}, head_dim={Dh}, kdim={self.kdim}, vdim={self.vdim}) weights",
                     instead="use smaller dimensions")
        rng = np.random.default_rng(seed)
        make = (lambda rows, cols: _xavier(rng, rows, cols, dtype)) if init else \
            (lambda rows, cols: np.zeros((rows, cols), dtype))      # a loader fills them: no random numbers drawn
        self.w_q = make(H * Dh, d_model)
        self.w_k = make(G * Dh, self.kdim)
        self.w_v = make(G * Dh, self.vdim)
        self.w_o = make(d_model, H * Dh)
        zeros = (lambda n: np.zeros(n, dtype)) if bias else (lambda n: None)
        self.b_q, self.b_k, self.b_v, self.b_o = zeros(H * Dh), zeros(G * Dh), zeros(G * Dh), zeros(d_model)
        self.attached: Attached | None = None

    def __repr__(self) -> str:
        kind = "MHA" if self.n_kv_heads == self.n_heads else ("MQA" if self.n_kv_heads == 1 else "GQA")
        return (f"MultiHeadAttention({kind}, d_model={self.d_model}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim})")

    @property
    def kind(self) -> str:
        return "MHA" if self.n_kv_heads == self.n_heads else ("MQA" if self.n_kv_heads == 1 else "GQA")

    def attach(self, recorder: Recorder, *, layer=0, kind: str | None = None) -> None:
        """Record every later call of this layer into ``recorder`` (as ``layer``, of ``kind``) until ``detach()``,
        without the caller passing it: the TransformerLens hook idea, so a model's blocks need not thread a
        recorder through. A ``recorder=`` passed to a call takes precedence."""
        if not isinstance(recorder, Recorder):
            raise TypeError(f"recorder must be an attnlab.record.Recorder, got {type(recorder).__name__}")
        self.attached = Attached(recorder, layer, kind)

    def detach(self) -> None:
        """Stop recording into the attached recorder (nothing happens when none is attached)."""
        self.attached = None

    def kv_bytes_per_token(self, itemsize: int = 4) -> int:
        """Bytes of keys plus values one position adds to the cache of this layer (per sequence)."""
        return 2 * self.n_kv_heads * self.head_dim * itemsize

    def __call__(self, x, context=None, mask=None, cache: KVCache | None = None, return_weights: bool = False,
                 bias=None, *, recorder: Recorder | None = None, layer=0, kind: str | None = None):
        """x (B, Lq, d_model) or (Lq, d_model); context (B, Lk, kdim) for cross-attention (default: x), or a pair
        (key_input (B, Lk, kdim), value_input (B, Lk, vdim)) when kdim != vdim (PyTorch's separate key and value).

        ``mask``: boolean (..., Lq, Lk) or an attnlab.masks.Mask; pass ``masks.causal()`` for a decoder. With a
        ``cache``, keys/values of x are appended to it and the queries attend to everything cached (bottom-right
        aligned masks then do the right thing); for cross-attention the context is projected once and cached.
        Returns (B, Lq, d_model) [, weights (B, H, Lq, Lk)].

        ``recorder`` (an ``attnlab.record.Recorder``): when it wants ``layer``, the call adds one
        ``AttentionRecord`` of what this pass computed (q, k, v, pre-mask scores, mask, weights, lse, the heads'
        outputs), of ``kind`` "self", "causal" or "cross" (default: "cross" with a context, else "self"). Without
        one, a recorder attached with ``attach`` records the call.
        """
        return_weights = flag(return_weights, "return_weights")
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be an attnlab.KVCache or None, got {type(cache).__name__}")
        if recorder is None and self.attached is not None:
            recorder, layer, kind = self.attached.recorder, self.attached.layer, kind or self.attached.kind
        x = as_array(x, "x")
        xp = namespace(x)
        require_floating(xp, x, "x")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[None, ...]
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, L, d_model={self.d_model}) or (L, d_model), "
                             f"got {tuple(x.shape)}")
        B, Lq, _ = x.shape
        H, G, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self._qkv(xp, x, context, cache, unbatched)                           # (B, H|G, L, Dh)
        if recorder is not None and recorder.wants(layer):
            out, weights = self._recorded(q, k, v, mask, bias, recorder, layer,
                                          kind or ("cross" if context is not None else "self"), return_weights)
        else:
            impl = planner.decode_impl(q, k, v, cached=cache is not None, return_weights=return_weights)
            out = scaled_dot_product_attention(q, k, v, mask, scale=self.scale, bias=bias,
                                               return_weights=return_weights,
                                               impl=impl)                            # one new token: O(context)
            out, weights = out if return_weights else (out, None)
        out = xp.reshape(xp.permute_dims(out, (0, 2, 1, 3)), (B, Lq, H * Dh))          # (B, Lq, H*Dh)
        out = self._project(xp, out, self.w_o, self.b_o)                                # (B, Lq, d_model)
        if unbatched:
            out = out[0]
            weights = None if weights is None else weights[0]
        return (out, weights) if return_weights else out

    def _recorded(self, q, k, v, mask, bias, recorder, layer, kind, return_weights):
        """Attend as ``__call__`` does and add what was computed to ``recorder``; returns (out, weights)."""
        out, weights = record_attention(q, k, v, mask, scale=self.scale, bias=bias, recorder=recorder, layer=layer,
                                        kind=kind)
        return out, (weights if return_weights else None)

    def project(self, x, context=None):
        """Queries (B, H, Lq, Dh), keys and values (B, G, Lk, Dh) of x (B, Lq, d_model) (or (Lq, d_model): B = 1)
        and ``context`` (as in ``__call__``; default: x), rotary applied: what ``__call__`` attends with when there
        is no cache, computed by the same code. To see what a pass computed (scores, weights and outputs too),
        record it (``Recorder``)."""
        x = as_array(x, "x")
        unbatched = x.ndim == 2
        return self._qkv(namespace(x), x[None, ...] if unbatched else x, context, None, unbatched)

    def _qkv(self, xp, x, context, cache, unbatched):
        """q (B, H, Lq, Dh) of x (B, Lq, d_model); k, v (B, G, Lk, Dh) of the context (or x), through ``cache``."""
        past = 0 if cache is None or cache.static else cache.length
        q = self._heads(xp, self._project(xp, x, self.w_q, self.b_q), self.n_heads)     # (B, H, Lq, Dh)
        if self.rope_base is not None:
            q = rotary(q, np.arange(past, past + x.shape[1]), base=self.rope_base)
        k, v = self._keys_values(xp, x, context, cache, unbatched)                      # (B, G, Lk, Dh)
        return q, k, v

    def _keys_values(self, xp, x, context, cache, unbatched):
        G = self.n_kv_heads
        context, value_context = context if isinstance(context, tuple) else (context, None)
        if context is not None:
            context = self._context(x, context, "context", f"kdim={self.kdim}", unbatched)
            if value_context is not None:
                value_context = self._context(x, value_context, "value context", f"vdim={self.vdim}", unbatched)
                if value_context.shape[1] != context.shape[1]:
                    raise ValueError(f"value context has {value_context.shape[1]} positions but the key context "
                                     f"has {context.shape[1]}")
            if cache is not None and cache.length:
                cache.static = True
                return cache.keys, cache.values
        source = x if context is None else context
        if source.shape[-1] != self.kdim:
            raise ValueError(f"{'context' if context is not None else 'x'} has feature dim {source.shape[-1]} "
                             f"but the layer expects kdim={self.kdim}")
        v_source = source if value_context is None else value_context
        if v_source.shape[-1] != self.vdim:
            raise ValueError(f"the value input has feature dim {v_source.shape[-1]} but the layer expects "
                             f"vdim={self.vdim}; pass context=(key_input, value_input) when kdim != vdim")
        k = self._heads(xp, self._project(xp, source, self.w_k, self.b_k), G)           # (B, G, Lk, Dh)
        v = self._heads(xp, self._project(xp, v_source, self.w_v, self.b_v), G)         # (B, G, Lk, Dh)
        if self.rope_base is not None and context is None:
            past = 0 if cache is None else cache.length
            k = rotary(k, np.arange(past, past + k.shape[-2]), base=self.rope_base)
        if cache is None:
            return k, v
        cache.static = context is not None
        return cache.append(k, v)

    @staticmethod
    def _context(x, context, name, dim: str, unbatched):
        """Validate a cross-attention input: (B, Lk, dim), or (Lk, dim) when x is unbatched."""
        context = as_array(context, name)
        context = context[None, ...] if unbatched and context.ndim == 2 else context
        if context.ndim != 3 or context.shape[0] != x.shape[0]:
            raise ValueError(f"{name} must have shape (B={x.shape[0]}, Lk, {dim}), got {tuple(context.shape)}")
        return context

    @staticmethod
    def _project(xp, x, w, b):
        # (B, L, in) -> (B*L, in) first: one 2-D GEMM; NumPy runs a 3-D @ 2-D matmul ~10x slower (per-batch loop)
        flat = xp.reshape(x, (-1, x.shape[-1]))
        y = xp.matmul(flat, xp.matrix_transpose(to_namespace(w, xp, x, dtype=x.dtype)))     # (B*L, out)
        y = xp.reshape(y, tuple(x.shape[:-1]) + (w.shape[0],))                           # (B, L, out); L may be 0
        return y if b is None else y + to_namespace(b, xp, x, dtype=x.dtype)

    def _heads(self, xp, y, n):
        B, L, _ = y.shape
        return xp.permute_dims(xp.reshape(y, (B, L, n, self.head_dim)), (0, 2, 1, 3))  # (B, n, L, Dh)

    @classmethod
    def from_torch(cls, module) -> "MultiHeadAttention":
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (biases, kdim/vdim included)."""
        import torch.nn as nn

        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"expected torch.nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported")
        d = module.embed_dim
        has_bias = module.in_proj_bias is not None
        dtype = np.dtype(str(module.out_proj.weight.dtype).replace("torch.", ""))
        layer = cls(d, module.num_heads, bias=has_bias, kdim=module.kdim, vdim=module.vdim, dtype=dtype)
        grab = lambda t: t.detach().cpu().numpy().copy()
        if module.in_proj_weight is not None:
            layer.w_q, layer.w_k, layer.w_v = (grab(w) for w in module.in_proj_weight.chunk(3))
        else:
            layer.w_q, layer.w_k, layer.w_v = (grab(module.q_proj_weight), grab(module.k_proj_weight),
                                               grab(module.v_proj_weight))
        if has_bias:
            layer.b_q, layer.b_k, layer.b_v = (grab(b) for b in module.in_proj_bias.chunk(3))
        layer.w_o = grab(module.out_proj.weight)
        layer.b_o = grab(module.out_proj.bias) if module.out_proj.bias is not None else None
        return layer


def _xavier(rng, fan_out, fan_in, dtype):
    """Xavier/Glorot uniform initialization (Glorot & Bengio 2010), PyTorch's default for attention weights."""
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(dtype)


def record_attention(q, k, v, mask=None, *, scale=None, bias=None, score_mod=None, recorder: Recorder, layer=0,
                     kind: str = "self"):
    """Attend q (B, H, Lq, D) to k, v (B, G, Lk, D|Dv) and add one ``AttentionRecord`` of what the pass computed to
    ``recorder`` (as ``layer``, of ``kind``); returns (out (B, H, Lq, Dv), weights (B, H, Lq, Lk) or None).

    When the recorder wants weights or scores, the reference pass itself runs (``attention_steps``) and its
    intermediates are kept; otherwise any path the planner picks runs and only q, k, v, lse and out are kept (chosen
    rows come back with ``attnlab.attention_weights_for``). Every attnlab layer that records goes through here:
    ``MultiHeadAttention`` and the Hugging Face backend (``attnlab.integrations.hf``)."""
    recorded_scale = scale if scale is not None else 1.0 / float(np.sqrt(q.shape[-1]))
    if recorder.needs_weights():
        st = attention_steps(q, k, v, mask, scale=scale, bias=bias, score_mod=score_mod)   # the reference pass
        out, weights, lse, scores, mask_arr = st.out, st.weights, st.lse, st.scores, st.mask
    else:                                                                     # any path, no n x n matrix kept
        out, lse = scaled_dot_product_attention(q, k, v, mask, scale=scale, bias=bias, score_mod=score_mod,
                                                return_lse=True)
        weights = scores = mask_arr = None
    if mask_arr is not None:
        mask_arr = to_numpy(mask_arr)
        mask_arr = mask_arr.reshape((1,) * (4 - mask_arr.ndim) + mask_arr.shape)   # (B|1, H|1, Lq, Lk)
    kept = {name: None if x is None or name not in recorder.fields else np.array(to_numpy(x))   # copies
            for name, x in (("q", q), ("k", k), ("v", v), ("scores", scores), ("weights", weights),
                            ("lse", lse), ("out", out))}                    # of the asked fields only
    recorder.add(AttentionRecord(layer=layer, kind=kind, scale=recorded_scale, mask=mask_arr, **kept))
    return out, weights
