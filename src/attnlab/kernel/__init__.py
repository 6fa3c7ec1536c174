"""The tiled (FlashAttention-style) kernel on NumPy: exact attention without the Lq x Lk score matrix.

- ``simple``: Algorithm 1 of Dao et al. 2022 as written (one head, natural exp): read this first;
- ``layout``: how inputs are viewed and cut into tiles, tile maps, the schedule, named ``Task`` / ``Part``;
- ``forward``: the fast tiled forward (log2 units, shift folded into the matmul, probe, careful redo);
- ``backward``: the tiled backward (FlashAttention-2 Algorithm 2: P recomputed per tile from the log-sum-exp);
- ``decode``: the decode regime (few query rows, every head at once, split-KV);
- ``band``: the band regime (narrow relative masks: row slices that see their whole band, dilated ones regrouped);
- ``ops``, ``threads``: the elementwise steps both share, the thread pool.

Nothing here imports the planner or the public API: they build on this package.
"""

from .backward import flash_attention_backward
from .forward import RunStats, attention_weights_for, flash_attention, supports_tiled
from .simple import simple_attention

__all__ = ["RunStats", "attention_weights_for", "flash_attention", "flash_attention_backward", "simple_attention",
           "supports_tiled"]
