"""Greedy decoding with a KV cache, and what the cache costs (measured from its arrays).

The prompt runs once through the model, filling one ``attnlab.KVCache`` per layer (prefill); then each new token
is one position attending to everything cached (decode). With grouped-query attention the cache holds only the
G key/value heads; ``Generation.mha_cache_bytes`` is what the same cache would hold with every query head's own
keys and values (MHA), measured by building such a cache from the real one with each kv head repeated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..checks import positive_int
from ..layers import KVCache
from ._blocks import one_row_steps


@dataclass
class Generation:
    """One greedy generation: prompt ids (L,), the new ids, timings, and the KV cache's measured bytes."""

    prompt: np.ndarray
    new: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    cache_bytes: int = 0          # sum over layers of KVCache.nbytes after the last step (G kv heads)
    mha_cache_bytes: int = 0      # the same keys/values with one kv head per query head (MHA)
    stopped: str = "max_new"      # "max_new" or "eos"

    @property
    def ids(self) -> np.ndarray:
        return np.concatenate([self.prompt, np.asarray(self.new, dtype=np.int64)])

    @property
    def tokens_per_second(self) -> float:
        """New tokens after the first per second of decoding (the first comes from the prefill)."""
        steps = len(self.new) - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else float("nan")


def mha_equivalent_bytes(caches: list[KVCache], n_heads: int) -> int:
    """Bytes the caches would hold with ``n_heads`` key/value heads: each of the G kv heads repeated
    n_heads / G times into a new KVCache, whose ``nbytes`` is read (measured, not multiplied)."""
    total = 0
    for cache in caches:
        k, v = cache.keys, cache.values                                  # (B, G, T, Dh)
        if k is None:
            continue
        groups = n_heads // k.shape[1]
        full = KVCache()
        full.append(np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1))   # (B, H, T, Dh)
        total += full.nbytes
    return total


def greedy(model, prompt_ids, max_new: int, on_token=None, stop_ids=()) -> Generation:
    """Greedy decoding of up to ``max_new`` tokens after ``prompt_ids`` (L,) with ``model.step`` and one KV
    cache per layer; stops early after a token in ``stop_ids``. ``on_token(id)`` is called as each token is
    chosen (for streaming)."""
    positive_int(max_new, "max_new")
    prompt = np.asarray(prompt_ids, dtype=np.int64)
    if prompt.ndim != 1 or prompt.size == 0:
        raise ValueError(f"prompt_ids must be a non-empty 1-D sequence of ids, got shape {prompt.shape}")
    if prompt.size + max_new > model.max_length:
        raise ValueError(f"prompt of {prompt.size} tokens + max_new {max_new} exceeds {model.name}'s limit "
                         f"{model.max_length}")
    caches = model.new_caches()
    gen = Generation(prompt)
    t0 = time.perf_counter()
    logits = model.step(prompt[None, :], caches)[0, -1]                 # (vocab,)
    gen.prefill_seconds = time.perf_counter() - t0
    stop = {int(s) for s in stop_ids}
    t0 = time.perf_counter()
    with one_row_steps():
        for i in range(max_new):
            token = int(np.argmax(logits))
            gen.new.append(token)
            if on_token is not None:
                on_token(token)
            if token in stop:
                gen.stopped = "eos"
                break
            if i + 1 < max_new:
                logits = model.step(np.array([[token]]), caches)[0, -1]
    gen.decode_seconds = time.perf_counter() - t0
    gen.cache_bytes = sum(c.nbytes for c in caches)
    gen.mha_cache_bytes = mha_equivalent_bytes(caches, model.n_heads)
    return gen
