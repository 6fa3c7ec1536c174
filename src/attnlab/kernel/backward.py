"""The tiled backward: gradients of exact attention without the Lq x Lk matrix (FlashAttention-2, Algorithm 2).

The forward stored only the output O and the log-sum-exp lse of each query row. The backward recomputes each
tile of probabilities from them, P = exp(S - lse), which is exact (it is the softmax of the row, normalised by the
row's whole sum, not a running one), and needs no running max: (Dao 2023, "FlashAttention-2", Algorithm 2)

    Delta = rowsum(dO * O)                 (R,)       once per query row, before the tiles
    for each key block j (dK_j, dV_j summed in a per-thread buffer that stays in cache, written once):
        for each query block i the tile map does not mark empty:
            S   = (q_i * scale) k_j^T       (R, bk)    R = r * block_q rows: the r query heads of a group
            P   = exp(mod(S) - lse_i)                  0 on blocked cells
            dV_j += P^T dO_i                           summed over the r heads of the group at once (GQA)
            dP  = dO_i v_j^T
            dS  = P * (dP - Delta_i) * mod'(S)         chain rule for score modifiers
            dq_i += dS k_j * scale,   dK_j += dS^T q_i * scale

As in the forward (``attnlab.kernel.forward``): scores are in log2 units when there is no score modifier (q is
scaled by scale * log2(e) once and exp2 is twice as fast as exp), and -lse is folded into the score matmul as an
extra column of q against a column of ones beside the keys, so S - lse costs no pass of its own; -Delta is folded the
same way into dP - Delta = [dO | -Delta] [v | 1]^T. The tile map is the forward's (``layout.TileMaps``): empty
tiles are skipped, full ones never evaluate the mask, partial ones are cut into the same narrowed row slices.

Threads: one task per (key/value head group, range of key blocks). A task owns its dK/dV blocks, so no two
threads write one; dq rows are shared by the key blocks, so when the key blocks are split among tasks (fewer head
groups than threads) each split accumulates its own dq and the splits are added at the end.

Non-finite inputs: when q, k, v, dout or out hold inf/NaN the whole call runs carefully: probabilities of blocked
cells are exactly 0, dS is 0 wherever P is (never 0 * NaN) and every product keeps a non-finite value away from
the outputs whose coefficient is 0, so NaN reaches exactly the gradients the forward's NaN depends on. A row whose
lse is NaN (a NaN score, or a +inf one: q or k holds inf) has its max recomputed from the tiles
(``Run.own_statistics``), so that, as in the readable backward, P is NaN only on the cells whose weight is NaN
(max +inf: the +inf cells; max NaN: the whole row) and 0 on the others.

Huge scores: when a score's rounding error can exceed 1 (``score_error``: float64 |q|, |k| ~ 1e12, or scale ~
1e12), the forward's lse no longer fits the backward's recomputed scores and exp(S - lse) could be 0 or inf. The
call then runs carefully after a statistics pass (``Run.own_statistics``) that recomputes each row's max and sum
from the same tiles and matmuls: P = exp(S - m) / l, clamped to [0, 1].

Extra memory: per thread a few (R, block_k) tiles and (R, D) rows, plus Delta (..., Lq) and, with split keys, one
dq per split; never Lq x Lk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._inputs import prepare
from ..checks import positive_int
from ..masks import EMPTY
from ..reference import Grads, to_input, weighted_sum
from . import layout as layout_mod
from .forward import RunStats, problem
from .layout import TileCounts, TileMaps
from .ops import LN2, LOG2E, exp2_masked
from .threads import run_tasks

BACKWARD_ROWS = 512                  # rows per tile (r * block_q) in the backward
BACKWARD_KEYS = 256                  # keys per tile in the backward


class Task(NamedTuple):
    """One unit of the backward's work: the key blocks first:stop of head group ``idx``; ``split`` names the dq
    buffer it accumulates into."""

    idx: tuple
    first: int
    stop: int
    split: int


def backward_blocks(r: int, Lq: int, Lk: int) -> tuple[int, int]:
    """Default (block_q, block_k) of the backward: r * block_q ~ BACKWARD_ROWS rows, BACKWARD_KEYS keys."""
    return max(1, min(Lq, max(16, BACKWARD_ROWS // r))), max(1, min(Lk, BACKWARD_KEYS))


def blocks(lay, block_q=None, block_k=None) -> tuple[int, int]:
    """The backward's tile sizes of a call: the ones given (checked) or ``backward_blocks``."""
    bq, bk = backward_blocks(lay.r, lay.Lq, lay.Lk)
    return (positive_int(block_q, "block_q", allow_none=True) or bq,
            positive_int(block_k, "block_k", allow_none=True) or bk)


def backward_memory(lay, block_q: int, block_k: int, threads: int, itemsize: int, masked: bool = True) -> int:
    """Extra bytes of ``flash_attention_backward`` beyond inputs and gradients, from its own schedule: per thread
    the two score-sized tiles (P, dS), [q | -lse] and [dO | -Delta] rows, [k | 1] and [v | 1] keys, the three
    product buffers and the key block's dK, dV sums (and on a partial tile the evaluated mask and its negation); once Delta, -Delta and -lse per
    row and, with split keys, one more dq per extra split. Not counted: the careful path's temporaries (only when
    an input holds inf/NaN) and a relative mask's cached partial-tile patterns (as in the forward)."""
    rows = lay.r * min(block_q, max(lay.Lq, 1))
    cols = min(block_k, max(lay.Lk, 1))
    D, Dv = lay.q.shape[-1], lay.v.shape[-1]
    per_thread = itemsize * (2 * rows * cols + rows * (D + 1) + rows * (Dv + 1) + cols * (D + 1) + cols * (Dv + 1)
                             + rows * D + 2 * cols * (D + Dv))
    per_thread += 2 * rows * cols if masked else 0
    splits, used = schedule(lay, block_k, threads)
    rows_out = math.prod(lay.scores_shape[:-1])
    return used * per_thread + 3 * rows_out * itemsize + (splits - 1) * rows_out * D * itemsize


def schedule(lay, block_k: int, threads: int) -> tuple[int, int]:
    """(dq splits, threads used): one task per head group, the key blocks split among tasks only when there are
    fewer head groups than threads (``kv_splits``, as the forward); a thread per task at most, fewer for small
    problems (the backward does 2.5x the forward's multiply-adds)."""
    groups = math.prod(lay.lead)
    splits = layout_mod.kv_splits(threads, groups, math.ceil(lay.Lk / block_k))
    return splits, layout_mod.used_threads(threads, groups * splits, 5 * layout_mod.work(lay) // 2)


def flash_attention_backward(dout, q, k, v, out, lse, mask=None, *, scale=None, score_mod=None, bias=None,
                             block_q=None, block_k=None, threads=None, stats: RunStats | None = None) -> Grads:
    """Gradients (dq, dk, dv) of ``flash_attention(q, k, v, mask, scale=, score_mod=, bias=)`` given dout.

    ``out`` and ``lse`` are what the forward returned (``flash_attention(..., return_lse=True)``): out
    (..., Lq, Dv), lse (..., Lq). dout has out's shape. Shapes, masks, grouped-query heads, bias and score
    modifiers as in the forward; a score modifier needs a derivative (``ScoreMod.differentiable``: ALiBi,
    relative bias and soft-capping have one). Returns ``Grads(dq, dk, dv)``, each shaped like its input (summed over
    the axes it was broadcast along). The gradient of a bias is not returned (it is a score-sized matrix; the
    readable ``attention_backward`` gives it). ``block_q``/``block_k``: tile sizes (default ``backward_blocks``);
    ``threads``: the cores to use; ``stats``: a ``RunStats`` to fill with tile counts.

    >>> import numpy as np, attnlab
    >>> rng = np.random.default_rng(0); q, k, v = (rng.standard_normal((2, 50, 8)) for _ in range(3))
    >>> out, lse = attnlab.flash_attention(q, k, v, mask=attnlab.masks.causal(), return_lse=True)
    >>> dq, dk, dv = flash_attention_backward(np.ones_like(out), q, k, v, out, lse, mask=attnlab.masks.causal(),
    ...                                       block_q=16, block_k=16)
    >>> ref = attnlab.attention_backward(np.ones_like(out), q, k, v, mask=attnlab.masks.causal())
    >>> max(float(np.abs(a - b).max()) for a, b in zip((dq, dk, dv), ref)) < 1e-12
    True
    """
    p = prepare(q, k, v, "flash_attention_backward", dot=True, scale=scale, score_mod=score_mod)
    if score_mod is not None:
        score_mod.require_derivative()
    pb = problem(p, mask, scale, score_mod, bias, "flash_attention_backward")
    lay, dtype = pb.lay, pb.dtype
    threads = layout_mod.threads_of(threads)
    pb.block_q, pb.block_k = blocks(lay, block_q, block_k)
    pb.maps = TileMaps(mask, lay, pb.block_q, pb.block_k)
    inner = lay.lead + (lay.r, lay.Lq)                                            # (*lead, r, Lq)
    dO = _row_array(dout, "dout", lay.scores_shape[:-1] + (pb.Dv,), dtype).reshape(inner + (pb.Dv,))
    O = _row_array(out, "out", lay.scores_shape[:-1] + (pb.Dv,), dtype).reshape(inner + (pb.Dv,))
    lse = _row_array(lse, "lse", lay.scores_shape[:-1], dtype).reshape(inner)
    nan_rows = bool(np.isnan(lse).any())               # rows whose max score is +inf or NaN (see own_statistics)
    largest = [_largest(x) for x in (lay.q, lay.k, lay.v, dO, O)]                  # max |x|: NaN, inf or finite
    finite = all(math.isfinite(x) for x in largest) and not nan_rows
    huge = finite and score_error(pb, bias, *largest[:2]) > 1   # the forward's lse may not fit these scores' rounding
    careful = not finite or huge
    with np.errstate(invalid="ignore"):
        delta = np.einsum("...d,...d->...", dO, O)                               # (*lead, r, Lq)
    run = Run(pb, dO, delta, lse, careful)
    tasks, splits, used = _tasks(pb, threads)
    if huge or nan_rows:
        run.own_statistics(tasks, splits, used, threads)
    dq = np.zeros((splits,) + inner + (pb.D,), dtype)                             # (S, *lead, r, Lq, D)
    dk = np.zeros(lay.lead + (1, lay.Lk, pb.D), dtype)                            # (*lead, 1, Lk, D)
    dv = np.zeros(lay.lead + (1, lay.Lk, pb.Dv), dtype)                           # (*lead, 1, Lk, Dv)
    counts, _ = run_tasks(tasks, lambda ws, task, c: run.task(ws, task, dq[task.split], dk, dv, c),
                          lambda: Workspace(pb), used, threads)
    dq_sum = dq[0] if splits == 1 else dq.sum(axis=0)
    dq_sum *= pb.scale
    if run.fold:
        dk *= LN2                  # dK accumulated against q * scale * log2(e)
    if finite and not all(np.isfinite(g).all() for g in (dq_sum, dk, dv)):     # O(n d): cheap beside the tiles
        raise ValueError(f"the gradients are not finite although q, k, v, dout, out and lse all are: out and lse "
                         f"must be what flash_attention returned for these q, k, v, mask, bias and scale "
                         f"(scale={pb.scale:g} here), or the true gradients overflow {np.dtype(dtype).name}")
    if stats is not None:
        stats.tiles = TileCounts(*map(int, counts))
        stats.block_q, stats.block_k, stats.threads = pb.block_q, pb.block_k, used
        stats.tasks, stats.kv_splits = len(tasks), splits
    return Grads(dq=to_input(dq_sum, lay.q.shape, np.shape(q)), dk=to_input(dk, lay.k.shape, np.shape(k)),
                 dv=to_input(dv, lay.v.shape, np.shape(v)))


def _row_array(x, name, shape, dtype):
    """``x`` checked to be a NumPy array of ``shape`` (the forward's output or lse), in the kernel's dtype."""
    if not isinstance(x, np.ndarray) or tuple(x.shape) != tuple(shape) or x.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating NumPy array of shape {tuple(shape)}, got "
                         f"{type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))} "
                         f"and dtype {getattr(x, 'dtype', None)}")
    return x.astype(dtype, copy=False)


def score_error(pb, bias, q_largest=math.inf, k_largest=math.inf) -> float:
    """A bound on the rounding error of a recomputed score, natural units: D * eps * max|q_i| * max|k_j| * |scale|
    (Cauchy-Schwarz) plus eps * max|bias| (finite entries). The forward and the backward compute each score with
    different matmuls; above an error of about 1, exp(S - lse) can leave [0, 1] (inf, then NaN, at 1e12
    magnitudes), so the backward then runs carefully, probabilities clamped to [0, 1].

    ``q_largest``, ``k_largest`` (the largest |entry| of q and k, when known) give a looser bound first, the row
    norms at most sqrt(D) times them; the row norms (two passes over q and k) are computed only when that one
    exceeds 1."""
    eps = float(np.finfo(pb.dtype).eps)
    scale = abs(float(pb.scale))
    extra = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        if bias is not None and np.size(bias):
            b = np.abs(np.asarray(bias, dtype=np.float64))
            extra = eps * float(np.max(b, where=np.isfinite(b), initial=0.0))
        bound = pb.D * eps * (pb.D * q_largest * k_largest) * scale + extra
        if not bound <= 1:
            norm = lambda x: float(np.sqrt(np.max(np.einsum("...d,...d->...", x, x), initial=0.0)))
            bound = pb.D * eps * norm(pb.lay.q) * norm(pb.lay.k) * scale + extra
    return bound if np.isfinite(bound) else math.inf


def _largest(x) -> float:
    """max |x| in two reductions without an array-sized temporary: NaN when x holds a NaN (np.min and np.max
    propagate it), inf when it holds an infinity, 0 when it is empty."""
    if not x.size:
        return 0.0
    lo, hi = float(np.min(x)), float(np.max(x))
    return math.nan if math.isnan(lo) or math.isnan(hi) else max(-lo, hi)


# --- tasks and threads ---------------------------------------------------------------------------------------------
def _tasks(pb, threads):
    """(tasks, dq splits, threads used): the key blocks split among tasks only when there are fewer head groups
    than threads (``layout.kv_splits``, as the forward); biggest first for load balance."""
    lay, nkb = pb.lay, pb.maps.nkb
    splits, used = schedule(lay, pb.block_k, threads)
    bounds = [(s * nkb // splits, (s + 1) * nkb // splits) for s in range(splits)]
    tasks = [Task(idx, lo, hi, s) for idx in np.ndindex(*lay.lead) for s, (lo, hi) in enumerate(bounds)]
    work = lambda t: int(np.count_nonzero(pb.maps[t.idx][:, t.first:t.stop] != EMPTY))
    return sorted(tasks, key=work, reverse=True), splits, used


# --- one task -----------------------------------------------------------------------------------------------------
class Workspace:
    """Preallocated per-thread buffers, viewed at the size of each tile."""

    def __init__(self, pb):
        rows = pb.lay.r * min(pb.block_q, max(pb.lay.Lq, 1))
        cols = min(pb.block_k, max(pb.lay.Lk, 1))
        D, Dv = pb.D, pb.Dv
        self.p = np.empty(rows * cols, pb.dtype)                  # scores, then probabilities P   (R, bk)
        self.ds = np.empty(rows * cols, pb.dtype)                 # dP - Delta, then dS            (R, bk)
        self.qa = np.empty(rows * (D + 1), pb.dtype)              # [scaled q | -lse]              (R, D + 1)
        self.do = np.empty(rows * (Dv + 1), pb.dtype)             # [dO | -Delta]                  (R, Dv + 1)
        self.ka = np.ones((cols, D + 1), pb.dtype)                # [k tile | 1]                   (bk, D + 1)
        self.va = np.ones((cols, Dv + 1), pb.dtype)               # [v tile | 1]                   (bk, Dv + 1)
        self.tq = np.empty(rows * D, pb.dtype)                    # dS k                           (R, D)
        self.tk = np.empty((cols, D), pb.dtype)                   # dS^T q                         (bk, D)
        self.tv = np.empty((cols, Dv), pb.dtype)                  # P^T dO                         (bk, Dv)
        self.dk = np.empty((cols, D), pb.dtype)                   # dK of the key block, summed    (bk, D)
        self.dv = np.empty((cols, Dv), pb.dtype)                  # dV of the key block, summed    (bk, Dv)


class Run:
    """The inputs of one backward call in the kernel's layout and how one tile is computed."""

    def __init__(self, pb, dO, delta, lse, careful):
        self.pb, self.dO, self.careful = pb, dO, careful
        self.fold = pb.mods is None and not careful                # log2 units, -lse and -Delta folded
        self.slope = pb.score_mod is not None and not pb.score_mod.additive
        units = LOG2E if self.fold else 1.0
        self.q_scale = pb.dtype.type(pb.scale * units)
        # a row with nothing to attend to (lse -inf) gets P = exp(S - inf) = 0 on every cell
        self.neg_lse = np.where(np.isneginf(lse), -np.inf, -lse * units).astype(pb.dtype)   # (*lead, r, Lq)
        self.neg_delta = np.negative(delta)                                                # (*lead, r, Lq)
        self.inv_l = None                # set by ``own_statistics``: P = exp(S - m) / l with the backward's m, l

    def own_statistics(self, tasks, splits, used, threads):
        """Recompute each row's max m and sum l from this backward's own scores (same tiles, same matmuls, so
        the same bits), for scores so large that their rounding exceeds 1: exp(S - lse) with the forward's lse
        could then be 0 or inf on the row's only key. P = exp(S - m) / l sums to 1 by construction. Also for
        rows whose lse is NaN: their m is +inf (P NaN on the +inf cells only, 0 elsewhere) or NaN (P NaN)."""
        pb = self.pb
        inner = pb.lay.lead + (pb.lay.r, pb.lay.Lq)
        m = np.full((splits,) + inner, -np.inf, pb.dtype)                       # (S, *lead, r, Lq)
        l = np.zeros((splits,) + inner, pb.dtype)
        run_tasks(tasks, lambda ws, task, c: self.task(ws, task, None, None, None, c, (m[task.split], l[task.split])),
                  lambda: Workspace(pb), used, threads)
        top = m.max(axis=0)                                                     # (*lead, r, Lq)
        safe = np.where(np.isneginf(top), 0, top)
        with np.errstate(invalid="ignore", over="ignore"):          # +inf or NaN maxima: total NaN, inv_l 1
            total = (l * np.exp(m - safe)).sum(axis=0)
        self.neg_lse = np.where(np.isneginf(top), -np.inf, -top).astype(pb.dtype)
        self.inv_l = np.where(total > 0, 1 / np.where(total > 0, total, 1), 1).astype(pb.dtype)

    def stats_tile(self, ws, idx, qs, qe, cs, ce, ks, blocked, stats):
        """Fold one tile's scores into the running (m, l) of rows qs:qe (the statistics pass)."""
        pb = self.pb
        r, n, c, D = pb.lay.r, qe - qs, ce - cs, pb.D
        ka = ws.ka[cs - ks:ce - ks]
        qa = ws.qa[:r * n * (D + 1)].reshape(r, n, D + 1)
        np.multiply(pb.q[idx][:, qs:qe], self.q_scale, out=qa[..., :D])
        qa[..., D] = 0
        S = ws.p[:r * n * c].reshape(r, n, c)
        self.scores(S, qa, ka, idx, qs, qe, cs, ce, blocked)                   # S, -inf where blocked
        m, l = stats[0][idx][:, qs:qe], stats[1][idx][:, qs:qe]                  # (r, n) views
        m_new = np.maximum(m, S.max(axis=-1))
        safe = np.where(np.isneginf(m_new), 0, m_new)
        l *= np.exp(m - safe)
        l += np.exp(S - safe[..., None]).sum(axis=-1)
        np.copyto(m, m_new)

    def task(self, ws, task, dq, dk, dv, counts, stats=None):
        """The key blocks first:stop of one head group: dK, dV of those blocks, dq of every row they reach (or,
        with ``stats`` = (m, l) of the task's split, only the rows' statistics: ``own_statistics``)."""
        pb = self.pb
        lay, bq, bk = pb.lay, pb.block_q, pb.block_k
        tile_map = pb.maps[task.idx]                                            # (nqb, nkb)
        for j in range(task.first, task.stop):
            column = tile_map[:, j]
            visit = np.flatnonzero(column != EMPTY)
            counts[EMPTY] += len(column) - len(visit)
            if not len(visit):
                continue
            ks, ke = j * bk, min(lay.Lk, (j + 1) * bk)
            ka, va = ws.ka[:ke - ks], ws.va[:ke - ks]
            np.copyto(ka[:, :pb.D], pb.k[task.idx][0, ks:ke])
            np.copyto(va[:, :pb.Dv], pb.v[task.idx][0, ks:ke])
            dk_j, dv_j = ws.dk[:ke - ks], ws.dv[:ke - ks]                        # (c, D), (c, Dv): stay in cache
            dk_j.fill(0)
            dv_j.fill(0)
            for i, state in zip(visit.tolist(), column[visit].tolist()):
                qs, qe = i * bq, min(lay.Lq, (i + 1) * bq)
                state, parts = pb.tile(task.idx, slice(qs, qe), np.arange(qs, qe), ks, ke, state)
                counts[state] += 1
                for a, b, blocked, cs, ce in parts if state != EMPTY else ():
                    if stats is not None:
                        self.stats_tile(ws, task.idx, qs + a, qs + b, cs, ce, ks, blocked, stats)
                    else:
                        self.tile(ws, task.idx, qs + a, qs + b, cs, ce, ks, blocked, dq, dk_j, dv_j)
            if stats is None:                  # the task owns key block j: one write of its dK, dV, once
                np.copyto(dk[task.idx][0, ks:ke], dk_j)
                np.copyto(dv[task.idx][0, ks:ke], dv_j)

    def tile(self, ws, idx, qs, qe, cs, ce, ks, blocked, dq, dk_j, dv_j):
        """Query rows qs:qe (all r heads) against keys cs:ce of the key block starting at ks: adds to dq and
        to the block's dK, dV sums dk_j, dv_j (c, D), (c, Dv)."""
        pb = self.pb
        r, n, c, D, Dv = pb.lay.r, qe - qs, ce - cs, pb.D, pb.Dv
        R = r * n
        ka, va = ws.ka[cs - ks:ce - ks], ws.va[cs - ks:ce - ks]              # (c, D + 1), (c, Dv + 1)
        qa = ws.qa[:R * (D + 1)].reshape(r, n, D + 1)
        np.multiply(pb.q[idx][:, qs:qe], self.q_scale, out=qa[..., :D])
        qa[..., D] = self.neg_lse[idx][:, qs:qe]
        do = ws.do[:R * (Dv + 1)].reshape(r, n, Dv + 1)
        np.copyto(do[..., :Dv], self.dO[idx][:, qs:qe])
        do[..., Dv] = self.neg_delta[idx][:, qs:qe]
        P = ws.p[:R * c].reshape(r, n, c)
        if self.fold:
            np.matmul(qa, ka.T, out=P)                                          # S - lse, log2 units
            exp2_masked(P, blocked)                                             # P
            slope = None
        else:
            slope = self.probabilities(P, qa, ka, idx, qs, qe, cs, ce, blocked)
        dS = ws.ds[:R * c].reshape(r, n, c)
        np.matmul(do, va.T, out=dS)                                             # dP - Delta
        dS *= P                                                                 # dS = P (dP - Delta)
        if self.careful:
            np.copyto(dS, 0, where=P == 0)                                      # never 0 * NaN
        if slope is not None:
            np.multiply(dS, slope, out=dS, where=dS != 0)                       # chain rule through the modifier
        P2, dS2, q2, do2 = P.reshape(R, c), dS.reshape(R, c), qa.reshape(R, D + 1)[:, :D], \
            do.reshape(R, Dv + 1)[:, :Dv]
        tv, tk, tq = ws.tv[:c], ws.tk[:c], ws.tq[:R * D].reshape(r, n, D)
        dv_j[cs - ks:ce - ks] += self._product(P2.T, do2, tv)                   # dV += P^T dO
        dk_j[cs - ks:ce - ks] += self._product(dS2.T, q2, tk)                   # dK += dS^T q (q scaled)
        dq[idx][:, qs:qe] += self._product(dS, ka[:, :D], tq)                   # dq += dS k

    def _product(self, a, b, out):
        if self.careful:
            np.copyto(out, weighted_sum(np, a, b))
            return out
        return np.matmul(a, b, out=out)

    def probabilities(self, P, qa, ka, idx, qs, qe, cs, ce, blocked):
        """P = exp(mod(S + bias) - lse) in natural units for a tile (modifiers or careful); returns the
        modifier's derivative at S + bias (None when it is 1)."""
        slope = self.scores(P, qa, ka, idx, qs, qe, cs, ce, blocked)
        if self.careful:                 # S <= lse in exact arithmetic: a rounding above it must not reach inf
            np.minimum(P, 0, out=P)
        np.exp(P, out=P)
        if self.careful and blocked is not None:
            np.copyto(P, 0, where=blocked)
        if self.inv_l is not None:
            P *= self.inv_l[idx][:, qs:qe, None]
        return slope

    def scores(self, P, qa, ka, idx, qs, qe, cs, ce, blocked):
        """P = mod(S + bias) - lse (the last column of qa), -inf where ``blocked``; returns the modifier's
        derivative at S + bias (None when it is 1)."""
        pb = self.pb
        D = pb.D
        np.matmul(qa[..., :D], ka[:, :D].T, out=P)                             # S
        if pb.bias_arr is not None:
            b = pb.bias_arr[idx]
            np.add(P, (b[:1] if b.strides[0] == 0 else b)[:, qs:qe, cs:ce], out=P, casting="same_kind")
        slope = None
        if pb.score_mod is not None:
            (b, h), _ = pb.heads(idx)
            at = (b, h, np.arange(qs, qe)[:, None], np.arange(cs, ce)[None, :], pb.lay.Lq, pb.lay.Lk)
            modified = pb.score_mod.apply(P, *at)
            if self.slope:
                slope = pb.score_mod.derivative(P, modified, *at)
            np.copyto(P, modified, casting="same_kind")
        P += qa[..., D:]                                                        # - lse (inf for empty rows)
        if blocked is not None:
            np.copyto(P, -np.inf, where=blocked)
        return slope
