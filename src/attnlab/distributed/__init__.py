"""Ring attention (context parallelism) on torch.distributed: exact attention over a sequence sharded across
processes, with key/value blocks passed around a ring and merged by their log-sum-exp.

    from attnlab.distributed import launch, ring_attention, shard, gather
    rank, world = launch.init()                                  # under torchrun
    q_r, k_r, v_r = (shard(x, rank, world, "zigzag") for x in (q, k, v))
    out_r = ring_attention(q_r, k_r, v_r, causal=True)          # this rank's rows of the output
    out = gather(out_r, "zigzag")                                # the whole output, on every rank

See docs/distributed.md and ``python -m attnlab.distributed.demo --help``.
"""

from .comm import DEFAULT_TIMEOUT_S, RingError, gather, scatter
from .layout import LAYOUTS, local_lengths, positions, ranges, shard, unshard
from .ring import ring_attention, work_balance

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LAYOUTS",
    "RingError",
    "gather",
    "local_lengths",
    "positions",
    "ranges",
    "ring_attention",
    "scatter",
    "shard",
    "unshard",
    "work_balance",
]
