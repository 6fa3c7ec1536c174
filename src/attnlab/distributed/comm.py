"""Communication for the ring, on torch.distributed, with a timeout on every wait.

- ``Ring``: the neighbours of this rank in a process group and non-blocking shifts of tensors one step around
  the ring (each rank sends to rank+1 and receives from rank-1). ``Shift.wait()``
  waits with a timeout and turns a dead, stalled or missing peer into a ``RingError`` that names the peer rank,
  the operation and the timeout, instead of hanging.
- ``gather`` / ``scatter``: move a sequence between "sharded over the ranks" and "whole on every rank", in either
  layout, with gradients (scatter's backward gathers, gather's backward takes this rank's shard).
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from ..checks import is_int, non_negative_int
from . import layout as layout_mod

DEFAULT_TIMEOUT_S = 60.0


class RingError(RuntimeError):
    """A peer rank died, stalled past the timeout, or disagreed about shapes. ``peer`` is its rank in the group
    (None when unknown), ``timeout_s`` the timeout that applied."""

    def __init__(self, message: str, *, peer: int | None = None, timeout_s: float | None = None):
        super().__init__(message)
        self.peer = peer
        self.timeout_s = timeout_s


def timeout_seconds(timeout) -> float:
    """A timeout given as seconds or a timedelta, as positive seconds (None: DEFAULT_TIMEOUT_S)."""
    if timeout is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or a timedelta, got {timeout!r}")
    return float(timeout)


def require_initialized() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialized: call attnlab.distributed.launch.init() (or "
                           "torch.distributed.init_process_group) in every process first, e.g. under torchrun")


class Ring:
    """This rank's place in the ring of ``group`` (None: the default group)."""

    def __init__(self, group=None, timeout=None):
        require_initialized()
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of the group passed")
        self.world = dist.get_world_size(group)
        self.next = (self.rank + 1) % self.world
        self.prev = (self.rank - 1) % self.world
        self.timeout_s = timeout_seconds(timeout)

    def _global(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def shift(self, send: list, recv: list, tag: int = 0, what: str = "block") -> "Shift":
        """Post sends of ``send`` to rank+1 and receives into ``recv`` from rank-1 (tensor i with tag ``tag + i``);
        returns at once.

        NCCL needs the operations posted as one batch (``batch_isend_irecv``); other backends (gloo) get them one
        at a time, so that a transport failure while posting (a peer killed mid-ring resets its connection)
        names the peer it concerns. Either way, every failure becomes a ``RingError``."""
        send = [t.contiguous() for t in send]                     # kept alive by the Shift until wait()
        peers = [("sending", self.next)] * len(send) + [("receiving", self.prev)] * len(recv)
        ops = [dist.P2POp(dist.isend, t, self._global(self.next), self.group, tag + i) for i, t in enumerate(send)]
        ops += [dist.P2POp(dist.irecv, t, self._global(self.prev), self.group, tag + i) for i, t in enumerate(recv)]
        if dist.get_backend(self.group) == "nccl":
            try:
                works = dist.batch_isend_irecv(ops)
            except RuntimeError as err:                           # a transport failure, not a local mistake
                raise self._error(f"posting the {what} exchange with ranks {self.next} and {self.prev}",
                                  self.prev if self.next == self.prev else None, err) from err
            return Shift(self, works, peers, what, send)
        works = []
        for op, (doing, peer) in zip(ops, peers):
            try:
                works.append(op.op(op.tensor, op.peer, op.group, op.tag))
            except RuntimeError as err:
                direction = "to" if doing == "sending" else "from"
                raise self._error(f"posting the {what} {direction} rank {peer}", peer, err) from err
        return Shift(self, works, peers, what, send)

    def all_gather(self, x: torch.Tensor, what: str) -> list[torch.Tensor]:
        """Every rank's ``x`` (equal shapes), in rank order, by P-1 shifts around the ring (so that a failure
        names the neighbour it came from)."""
        parts = [None] * self.world
        parts[self.rank] = cur = x.contiguous()
        for t in range(self.world - 1):
            buf = torch.empty_like(cur)
            self.shift([cur], [buf], tag=4, what=what).wait()
            parts[(self.rank - t - 1) % self.world] = cur = buf
        return parts

    def _delta(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout_s)

    def _error(self, doing: str, peer: int | None, err: Exception) -> RingError:
        who = "another rank" if peer is None else f"peer rank {peer}"
        return RingError(f"attnlab.distributed: rank {self.rank} of {self.world} failed {doing}: {who} died, "
                         f"stalled or never joined (timeout {self.timeout_s:g} s). Check that rank's log. "
                         f"[{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]",
                         peer=peer, timeout_s=self.timeout_s)


class Shift:
    """Sends and receives in flight; ``wait()`` completes them or raises RingError naming the peer."""

    def __init__(self, ring: Ring, works, peers, what: str, sending):
        self.ring, self.works, self.peers, self.what, self.sending = ring, works, peers, what, sending

    def wait(self) -> None:
        for work, (doing, peer) in zip(self.works, self.peers):
            try:
                work.wait(self.ring._delta())
            except RuntimeError as err:
                direction = "to" if doing == "sending" else "from"
                raise self.ring._error(f"{doing} the {self.what} {direction} rank {peer}", peer, err) from err


# --- moving a whole sequence between sharded and replicated --------------------------------------------------
def gather(x: torch.Tensor, layout: str = "zigzag", dim: int = -2, group=None, timeout=None,
           length: int | None = None) -> torch.Tensor:
    """Every rank's shard of a sequence (axis ``dim``) -> the whole sequence, on every rank.

    ``length``: the whole sequence's length when the caller knows it (saves exchanging the shard lengths).
    Differentiable: the backward of a tensor every rank holds whole takes this rank's shard of the gradient
    (the loss computed from it is assumed to be the same on every rank, as after a gather).
    """
    _check_sequence(x, dim)
    if length is not None:
        non_negative_int(length, "length")
    return _Gather.apply(x, layout_mod.check_layout(layout), dim, Ring(group, timeout), length)


def scatter(x: torch.Tensor, layout: str = "zigzag", dim: int = -2, group=None, timeout=None) -> torch.Tensor:
    """The whole sequence (the same on every rank) -> this rank's shard. Its backward gathers the gradient, so
    gradients of shards computed on different ranks add up on the whole input."""
    _check_sequence(x, dim)
    return _Scatter.apply(x, layout_mod.check_layout(layout), dim, Ring(group, timeout))


def _check_sequence(x, dim) -> None:
    """``x`` a torch tensor and ``dim`` one of its axes, checked before the ring is joined."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
    if not is_int(dim) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an axis of x (ndim {x.ndim}), got {dim!r}")


def _gather_forward(x, layout, dim, ring: Ring, length=None):
    dim = dim % x.ndim
    if length is None:
        lengths = [int(t) for t in ring.all_gather(torch.tensor([x.shape[dim]], device=x.device), "shard lengths")]
    else:
        lengths = layout_mod.local_lengths(ring.world, length, layout)
        if lengths[ring.rank] != x.shape[dim]:
            raise ValueError(f"rank {ring.rank} holds {x.shape[dim]} positions on dim {dim}, but length={length} "
                             f"in the {layout} layout over {ring.world} ranks gives it {lengths[ring.rank]}")
    width = max(lengths)
    pad = [0, 0] * (x.ndim - 1 - dim) + [0, width - x.shape[dim]]
    padded = torch.nn.functional.pad(x, pad) if width > x.shape[dim] else x         # every part as long as the longest
    parts = ring.all_gather(padded, "sequence shards")
    return layout_mod.unshard([p.narrow(dim, 0, n) for p, n in zip(parts, lengths)], layout, dim)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layout, dim, ring, length):
        ctx.info = (layout, dim, ring)
        return _gather_forward(x, layout, dim, ring, length)

    @staticmethod
    def backward(ctx, grad):
        layout, dim, ring = ctx.info
        return layout_mod.shard(grad, ring.rank, ring.world, layout, dim), None, None, None, None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layout, dim, ring):
        ctx.info = (layout, dim, ring, x.shape[dim])
        return layout_mod.shard(x, ring.rank, ring.world, layout, dim).clone()

    @staticmethod
    def backward(ctx, grad):
        layout, dim, ring, length = ctx.info
        return _gather_forward(grad.contiguous(), layout, dim, ring, length), None, None, None
