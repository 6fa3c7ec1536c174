"""attnlab: every attention mechanism made real — exact, fast, visible, tested, learnable.

The public face. NumPy arrays in, NumPy arrays out; PyTorch tensors and other array-API arrays work too.

>>> import numpy as np, attnlab
>>> q = k = v = np.eye(3, dtype=np.float32)
>>> attnlab.scaled_dot_product_attention(q, k, v, mask=attnlab.masks.causal()).shape
(3, 3)
"""

from . import cost, diagnostics, masks, scores
from .api import additive_attention, attention, attention_backward, attention_weights_for, scaled_dot_product_attention
from .kernel import flash_attention, flash_attention_backward
from .planner import plan
from .layers import KVCache, MultiHeadAttention
from .merge import merge_attention
from .softmax import logsumexp, softmax

__version__ = "0.1.0"

__all__ = [
    "KVCache",
    "MultiHeadAttention",
    "additive_attention",
    "attention",
    "attention_backward",
    "attention_weights_for",
    "cost",
    "diagnostics",
    "flash_attention",
    "flash_attention_backward",
    "logsumexp",
    "masks",
    "merge_attention",
    "plan",
    "scaled_dot_product_attention",
    "scores",
    "softmax",
]
