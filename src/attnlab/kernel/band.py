"""The band regime: relative masks whose allowed keys lie in a narrow band around the diagonal (sliding windows,
dilated windows), computed in row slices that each see their whole band at once.

A relative mask (``Mask.relative``) allows query q to see key kv by e = q - kv alone, for given Lq and Lk, so it
is a 1-D *profile* over e (``band_of`` evaluates it once per call, Lq + Lk - 1 cells). When the allowed e lie in a
range [lo, hi] much narrower than the keys, the tile grid is a poor fit: a 1024-row query block of a 256-key window
spans 1279 keys and five partial tiles, cut into 128-row slices that compute 1.5 cells per allowed one, each slice a
dozen NumPy calls. Here instead the rows are cut into slices of ``BAND_ROWS`` (per head), and a slice starting at
row t sees keys t - hi .. t + BAND_ROWS - 1 - lo: ``BAND_ROWS`` + hi - lo keys, all of its band. So

- a slice needs no online softmax: its shift m is one allowed score of each row (the probe, read from the score
  tile itself, so the probe's own weight is exactly 1 and l >= 1), then P = exp2(S - m), masked by multiplying
  with the slice's 0/1 pattern, out = P v / rowsum P;
- every slice away from the sequence's ends has the same pattern (the mask is relative), so all of them in a query
  block run as one batched matmul: the key windows are overlapping strided views of k and v, never copies;
- a periodic profile (a dilated window: e allowed only at multiples of a stride s, Child et al. 2019) is regrouped
  by residue: the rows q = c + s t see only the keys kv = c_k + s u, a band of width (hi - lo) / s over the
  strided views q[c::s], k[c_k::s], so the products run on dense blocks, s times fewer cells.

The slices near the ends (keys clipped at 0 or Lk) and a block's last short slice run one at a time with the mask
evaluated from the profile and a true row max. The pass is optimistic like the tiled one: if a result is
non-finite (a score rose ~128 above the probe, or an input holds inf/NaN) or a row's sum is lost, the task is redone
by the careful tiled pass (``forward``), so the result is exact either way. The tiles of the task's row of the tile
map are counted as the tiled pass would count them: the same tiles' allowed cells are computed, grouped by rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import masks as masks_mod
from .ops import normalise

BAND_ROWS = 64                       # query rows per slice (per head) at least; up to 4x that for wide bands (a
                                     # quarter of the band). A 256-key window: 64 rows (64 and 128 measured equal,
                                     # 256 slower, n = 4096). A 1024-key window would take 256-row slices, which do
                                     # not fit the default 1024 x 256 score tile, so the tiled pass runs it (it
                                     # measured as fast as 64- and 128-row slices: 90 against 99-107 ms, one run)
BAND_KEYS = 2048                     # keys a slice sees at most (BAND_ROWS + band width - 1)
BAND_DENSITY = 0.5                   # allowed share of a (regrouped) band at least, else the tiled pass runs


@dataclass(frozen=True)
class Residue:
    """Rows q = c + s t (t = 0, 1, ...) of one residue class c see keys kv = key_start + s u, allowed by u's offset
    e' = t - u in [lo, hi] where ``allowed[e' - lo]``; ``probe`` is an allowed e' (the one nearest 0)."""

    c: int
    key_start: int
    lo: int
    hi: int
    allowed: np.ndarray              # bool (hi - lo + 1,)
    probe: int


@dataclass(frozen=True)
class Band:
    """The band of a relative mask at one (Lq, Lk): its stride s (1: no regrouping) and one ``Residue`` per
    residue class of the query rows; ``rows`` is the slice height."""

    stride: int
    residues: tuple
    rows: int

    def keys(self) -> int:
        """Keys one slice sees at most."""
        return self.rows + max(r.hi - r.lo for r in self.residues)


def profile(mask, Lq: int, Lk: int) -> np.ndarray:
    """allowed[e + Lk - 1] for e = q - kv in [-(Lk - 1), Lq - 1], evaluated at valid index pairs (q, kv)."""
    e = np.arange(-(Lk - 1), Lq)
    return np.asarray(mask.evaluate(Lq, Lk, np.maximum(e, 0), np.maximum(-e, 0)), bool).reshape(-1)


def band_of(mask, Lq: int, Lk: int, block_rows: int, tile_cells: int, r: int) -> Band | None:
    """The ``Band`` the kernel runs a relative mask in at (Lq, Lk), or None when the tiled pass fits it better:
    not a relative Mask of every batch and head, nothing allowed, an unregrouped band wider than half the keys,
    slices wider than ``BAND_KEYS``, a (regrouped) band less than ``BAND_DENSITY`` allowed, or slices that do not fit the
    kernel's per-thread score tile (``tile_cells`` = r * block_q * block_k)."""
    if not (isinstance(mask, masks_mod.Mask) and mask.relative and mask.batch is None and mask.heads is None):
        return None
    if Lq < 1 or Lk < 1:
        return None
    allowed_e = np.flatnonzero(profile(mask, Lq, Lk)) - (Lk - 1)
    if not len(allowed_e):
        return None
    s = int(np.gcd.reduce(allowed_e - allowed_e[0])) or 1
    s = min(s, Lk, Lq) if s > 1 else 1
    if s == 1 and allowed_e[-1] - allowed_e[0] + 1 > Lk // 2:    # a wide band: tiles (regrouping pays anyway)
        return None
    residues = []
    for c in range(min(s, Lq)):
        key_start = (c - int(allowed_e[0])) % s
        delta = c - key_start                                     # e = delta + s (t - u)
        sub = (allowed_e - delta) // s                            # every allowed e is delta + a multiple of s
        lo, hi = int(sub[0]), int(sub[-1])
        allowed = np.zeros(hi - lo + 1, bool)
        allowed[sub - lo] = True
        if allowed.mean() < BAND_DENSITY:
            return None
        probe = int(sub[np.argmin(np.abs(sub))])
        residues.append(Residue(c, key_start, lo, hi, allowed, probe))
    width = max(res.hi - res.lo + 1 for res in residues)
    rows = min(block_rows, BAND_ROWS * 2 ** max(0, min(2, int(np.log2(max(1, width / (4 * BAND_ROWS)))))))
    band = Band(s, tuple(residues), rows)
    if band.keys() > BAND_KEYS or r * rows * band.keys() > tile_cells:
        return None
    return band


def band_task(pb, ws, band: Band, idx, qs: int, qe: int, out, lse) -> bool:
    """Rows qs:qe (all r heads) of head group ``idx`` in the band regime; out (r, Lq, Dv) and lse (r, Lq) are the
    group's output views. Returns False when a result is not finite (or a row's sum is lost): the caller redoes the
    rows by the careful tiled pass."""
    ok = True
    s = band.stride
    for res in band.residues:
        t0, t1 = -(-(qs - res.c) // s), -(-(qe - res.c) // s)       # rows c + s t in [qs, qe)
        if t1 <= t0:
            continue
        view = lambda x, start: x[..., start::s, :] if s > 1 else x
        q = view(pb.q[idx], res.c)                                  # (r, Lq_c, D)
        k, v = view(pb.k[idx][0], res.key_start), view(pb.v[idx][0], res.key_start)    # (Lk_c, D), (Lk_c, Dv)
        o = view(out, res.c)                                        # (r, Lq_c, Dv)
        ls = lse[:, res.c::s] if s > 1 else lse                     # (r, Lq_c)
        ok &= _residue(pb, ws, band.rows, res, q, k, v, o, ls, t0, t1)
    return ok


def _residue(pb, ws, h, res: Residue, q, k, v, out, lse, t0, t1) -> bool:
    """Sub-rows t0:t1 of one residue class: interior slices batched, the rest one by one."""
    Lk = k.shape[0]
    W = h + res.hi - res.lo                                          # keys of an interior slice
    first = max(t0, res.hi)                                          # first row whose window starts at key >= 0
    last_start = min(Lk - h + res.lo, t1 - h)                        # the last interior slice starts at or below
    n_int = (last_start - first) // h + 1 if last_start >= first else 0
    r = q.shape[0]
    tall = h
    while r * (2 * tall) * (2 * tall + W) <= len(ws.s):               # the start in as few, taller slices as fit
        tall *= 2
    ok = True
    for a in range(t0, min(first, t1), tall):                        # the start: keys clipped at 0
        ok &= _edge(pb, ws, res, q, k, v, out, lse, a, min(a + tall, first, t1))
    if n_int:
        ok &= _interior(pb, ws, h, W, res, q, k, v, out, lse, first, n_int)
    for a in range(first + n_int * h if n_int else max(first, t0), t1, h):      # the end, and what is left
        ok &= _edge(pb, ws, res, q, k, v, out, lse, a, min(a + h, t1))
    return ok


def _interior(pb, ws, h, W, res: Residue, q, k, v, out, lse, first, n) -> bool:
    """n slices of h rows from row ``first``, every one seeing keys t - hi .. t + h - 1 - lo unclipped: batched."""
    r, D, Dv = q.shape[0], pb.D, pb.Dv
    per_call = max(1, len(ws.s) // (r * h * W))
    pattern = _pattern(ws, res, h, W, pb.dtype)                      # (h, W) 0/1
    ones = _ones(ws, W, pb.dtype)
    ok = True
    for b0 in range(0, n, per_call):
        nb = min(per_call, n - b0)
        a = first + b0 * h
        qa = ws.qa[:nb * r * h * D].reshape(nb, r, h, D)
        np.multiply(q[:, a:a + nb * h].reshape(r, nb, h, D).transpose(1, 0, 2, 3), pb.q_scale, out=qa)
        kw = _windows(k, a - res.hi, nb, h, W)                       # (nb, W, D), overlapping views
        vw = _windows(v, a - res.hi, nb, h, W)                       # (nb, W, Dv)
        S = ws.s[:nb * r * h * W].reshape(nb, r * h, W)
        np.matmul(qa.reshape(nb, r * h, D), np.swapaxes(kw, -1, -2), out=S)     # (nb, r h, W), log2 units
        S4 = S.reshape(nb, r, h, W)
        rows = np.arange(h)
        m = ws.m[:nb * r * h].reshape(nb, r, h)
        np.copyto(m, S4[:, :, rows, rows + res.hi - res.probe])      # the probe: an allowed score of each row
        np.subtract(S4, m[..., None], out=S4)
        np.exp2(S4, out=S4)
        np.multiply(S4, pattern, out=S4)                             # blocked cells -> 0 (overflow -> NaN: redo)
        pv = ws.pv[:nb * r * h * Dv].reshape(nb, r * h, Dv)
        np.matmul(S, vw, out=pv)
        l = ws.m_new[:nb * r * h].reshape(nb, r, h)
        np.matmul(S4, ones, out=l)
        dest = _slices(out[:, a:], nb, h)                            # (nb, r, h, Dv) views into the output
        dest_lse = _slices(lse[:, a:, None], nb, h)[..., 0]          # (nb, r, h)
        normalise(pv.reshape(nb, r, h, Dv), l, m, np.finfo(pb.dtype).min, dest, dest_lse)
        ok &= bool(np.isfinite(pv).all() and (l >= 0.5).all() and np.isfinite(l).all())
    return ok


def _edge(pb, ws, res: Residue, q, k, v, out, lse, a, b) -> bool:
    """Rows a:b alone, keys clipped to the sequence: the mask from the profile, a true row max."""
    r, Lk, D = q.shape[0], k.shape[0], pb.D
    ks, ke = max(0, a - res.hi), min(Lk, b - res.lo)
    if ke <= ks:                                                     # no key at all: nothing to attend to
        out[:, a:b] = 0
        lse[:, a:b] = -np.inf
        return True
    e = np.arange(a, b)[:, None] - np.arange(ks, ke)[None, :] - res.lo                # (rows, cols)
    inside = (e >= 0) & (e < len(res.allowed))
    allowed = inside & res.allowed[np.clip(e, 0, len(res.allowed) - 1)]
    qa = ws.qa[:r * (b - a) * D].reshape(r, b - a, D)
    np.multiply(q[:, a:b], pb.q_scale, out=qa)
    S = ws.s[:r * (b - a) * (ke - ks)].reshape(r, b - a, ke - ks)
    np.matmul(qa, k[ks:ke].T, out=S)                                 # (r, rows, cols)
    m = np.max(S, axis=-1, where=allowed, initial=-np.inf)           # (r, rows)
    np.subtract(S, np.where(np.isfinite(m), m, 0)[..., None], out=S)
    np.copyto(S, 0, where=~allowed)
    np.exp2(S, out=S)
    np.copyto(S, 0, where=~allowed)
    l = S.sum(axis=-1)
    pv = np.matmul(S, v[ks:ke])
    normalise(pv, l, m, np.finfo(pb.dtype).min, out[:, a:b], lse[:, a:b])
    return bool(np.isfinite(pv).all() and np.isfinite(l).all() and ((l >= 0.5) | (m == -np.inf)).all())


def _windows(x, start, n, step, width):
    """n overlapping windows x[start + i step : start + i step + width] (n, width, cols): a strided view."""
    base = x[start:]
    return np.lib.stride_tricks.as_strided(base, (n, width, x.shape[1]),
                                           (step * x.strides[0], x.strides[0], x.strides[1]), writeable=False)


def _slices(x, n, h):
    """x (r, rows >= n h, cols) as n slices of h rows (n, r, h, cols): a writeable view (never a copy, even for
    the strided rows of a residue class)."""
    st = x.strides
    return np.lib.stride_tricks.as_strided(x, (n, x.shape[0], h, x.shape[2]), (h * st[1], st[0], st[1], st[2]))


def _pattern(ws, res: Residue, h, W, dtype):
    """The 0/1 pattern (h, W) of an interior slice of residue ``res``: cell (i, j) has e' = i - j + hi."""
    key = ("pattern", res.c, h, W)
    if key not in ws.band:
        e = np.arange(h)[:, None] - np.arange(W)[None, :] + res.hi - res.lo
        inside = (e >= 0) & (e < len(res.allowed))
        ws.band[key] = (inside & res.allowed[np.clip(e, 0, len(res.allowed) - 1)]).astype(dtype)
    return ws.band[key]


def _ones(ws, W, dtype):
    key = ("ones", W)
    if key not in ws.band:
        ws.band[key] = np.ones(W, dtype)
    return ws.band[key]


def tile_states(row_map, counts) -> None:
    """Count a task's row of the tile map (EMPTY, PARTIAL, FULL) as the tiled pass counts its tiles."""
    counts += np.bincount(row_map.astype(np.int64), minlength=3)[:3]

