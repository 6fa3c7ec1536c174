"""Float64 loop oracles written straight from the formulas, sharing no code with attnlab.

Everything here is plain Python loops over scalars (math.exp, math.tanh, sums), so a bug in attnlab's vectorized
code cannot hide in the oracle as well. Shapes follow attnlab's naming: B batch, H query heads, G key/value heads,
Lq/Lk lengths, D head dim, Dv value dim. Arrays are always 4-D here: q (B, H, Lq, D), k/v (B, G, Lk, D/Dv).

Mask predicates are functions ``allowed(b, h, i, j, Lq, Lk) -> bool`` (True = may attend), written from each mask's
definition. Query i sits at key position ``i + Lk - Lq`` ("bottom_right", the KV-cache convention) or at ``i``
("top_left", PyTorch's ``is_causal``).
"""

from __future__ import annotations

import math

import numpy as np


# --- query positions -----------------------------------------------------------------------------------------
def position(i, Lq, Lk, align="bottom_right"):
    return i + (Lk - Lq) if align == "bottom_right" else i


# --- mask predicates, one per definition ---------------------------------------------------------------------
def causal(align="bottom_right"):
    return lambda b, h, i, j, Lq, Lk: j <= position(i, Lq, Lk, align)


def sliding_window(left, right=0, align="bottom_right"):
    def allowed(b, h, i, j, Lq, Lk):
        p = position(i, Lq, Lk, align)
        return p - left <= j <= p + right
    return allowed


def padding(lengths, q_lengths=None):
    return lambda b, h, i, j, Lq, Lk: j < lengths[b] and (q_lengths is None or i < q_lengths[b])


def prefix_lm(prefix_len, align="bottom_right"):
    return lambda b, h, i, j, Lq, Lk: j < prefix_len or j <= position(i, Lq, Lk, align)


def document(doc_ids, q_doc_ids=None):
    """doc_ids: list of key ids (Lk) or list of lists (B, Lk); queries default to the last Lq key ids."""
    rows = doc_ids if isinstance(doc_ids[0], (list, tuple)) else [doc_ids]
    q_rows = None if q_doc_ids is None else (q_doc_ids if isinstance(q_doc_ids[0], (list, tuple)) else [q_doc_ids])

    def allowed(b, h, i, j, Lq, Lk):
        keys = rows[b % len(rows)]
        q_id = keys[Lk - Lq + i] if q_rows is None else q_rows[b % len(q_rows)][i]
        return q_id == keys[j]
    return allowed


def dilated(stride, align="bottom_right"):
    return lambda b, h, i, j, Lq, Lk: (position(i, Lq, Lk, align) - j) % stride == 0


def global_tokens(indices, align="bottom_right"):
    idx = set(indices)
    return lambda b, h, i, j, Lq, Lk: position(i, Lq, Lk, align) in idx or j in idx


def from_array(arr):
    arr = np.asarray(arr)
    a4 = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
    return lambda b, h, i, j, Lq, Lk: bool(a4[b % a4.shape[0], h % a4.shape[1], i, j])


def both(p1, p2):
    return lambda *a: p1(*a) and p2(*a)


def either(p1, p2):
    return lambda *a: p1(*a) or p2(*a)


def negate(p):
    return lambda *a: not p(*a)


def grid(allowed, Lq, Lk, b=0, h=0):
    """The predicate as a boolean (Lq, Lk) array, cell by cell."""
    return np.array([[bool(allowed(b, h, i, j, Lq, Lk)) for j in range(Lk)] for i in range(Lq)], dtype=bool)


def tiles(cells, block_q, block_k):
    """Brute-force tile map from a boolean (Lq, Lk) array: 0 empty, 1 partial, 2 full."""
    Lq, Lk = cells.shape
    out = []
    for qs in range(0, Lq, block_q):
        row = []
        for ks in range(0, Lk, block_k):
            tile = [cells[i][j] for i in range(qs, min(qs + block_q, Lq)) for j in range(ks, min(ks + block_k, Lk))]
            row.append(2 if all(tile) else (0 if not any(tile) else 1))
        out.append(row)
    return np.array(out, dtype=np.int64).reshape(len(range(0, Lq, block_q)), len(range(0, Lk, block_k)))


# --- scorers -------------------------------------------------------------------------------------------------
def dot(qv, kv):
    return sum(float(a) * float(b) for a, b in zip(qv, kv))


def scaled_dot(scale=None):
    return lambda qv, kv: dot(qv, kv) * (1.0 / math.sqrt(len(qv)) if scale is None else scale)


def general(weight):
    """q^T W k."""
    W = np.asarray(weight, dtype=np.float64)
    return lambda qv, kv: sum(float(qv[a]) * W[a, c] * float(kv[c]) for a in range(W.shape[0])
                              for c in range(W.shape[1]))


def additive(w_q, w_k, w_v):
    """w_v . tanh(W_q q + W_k k)."""
    Wq, Wk, wv = (np.asarray(w, dtype=np.float64) for w in (w_q, w_k, w_v))

    def score(qv, kv):
        total = 0.0
        for a in range(wv.shape[0]):
            pre = sum(Wq[a, c] * float(qv[c]) for c in range(Wq.shape[1]))
            pre += sum(Wk[a, c] * float(kv[c]) for c in range(Wk.shape[1]))
            total += wv[a] * math.tanh(pre)
        return total
    return score


# --- score modifiers -----------------------------------------------------------------------------------------
def alibi_slope(h, n_heads):
    """Press et al. 2022: slopes 2^(-8/n * (h+1)) for n a power of two; otherwise the closest lower power of two's
    slopes followed by every other slope of twice that many heads."""
    if n_heads & (n_heads - 1) == 0:
        return 2.0 ** (-8.0 / n_heads * (h + 1))
    lower = 2 ** int(math.floor(math.log2(n_heads)))
    if h < lower:
        return 2.0 ** (-8.0 / lower * (h + 1))
    return 2.0 ** (-8.0 / (2 * lower) * (2 * (h - lower) + 1))


def alibi(n_heads, symmetric=False):
    def mod(s, b, h, i, j, Lq, Lk):
        d = position(i, Lq, Lk) - j
        return s - alibi_slope(h % n_heads, n_heads) * (abs(d) if symmetric else d)
    return mod


def softcap(cap):
    return lambda s, b, h, i, j, Lq, Lk: cap * math.tanh(s / cap)


def relative_bias(table, max_distance):
    table = np.asarray(table, dtype=np.float64)
    return lambda s, b, h, i, j, Lq, Lk: s + table[h % table.shape[0],
                                                   min(max(j - position(i, Lq, Lk), -max_distance),
                                                       max_distance) + max_distance]


# --- attention -----------------------------------------------------------------------------------------------
def attention(q, k, v, score, allowed=None, bias=None, mod=None):
    """softmax over allowed keys of score(q_i, k_j) (+ bias) (then mod) times v, from the definition.

    q (B, H, Lq, D), k (B, G, Lk, D), v (B, G, Lk, Dv); query head h reads key/value head h // (H // G).
    bias(b, h, i, j) -> float; mod(s, b, h, i, j, Lq, Lk) -> float. Keys that are not allowed contribute
    nothing (even if v holds NaN there). Returns out (B, H, Lq, Dv), weights (B, H, Lq, Lk), lse (B, H, Lq):
    a row with no allowed key has output 0, weights 0 and lse -inf.
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, H, Lq, _ = q.shape
    G, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    out = np.zeros((B, H, Lq, Dv))
    weights = np.zeros((B, H, Lq, Lk))
    lse = np.full((B, H, Lq), -math.inf)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for i in range(Lq):
                cols, vals = [], []
                for j in range(Lk):
                    if allowed is not None and not allowed(b, h, i, j, Lq, Lk):
                        continue
                    s = score(q[b, h, i], k[b % k.shape[0], g, j])
                    if bias is not None:
                        s += bias(b, h, i, j)
                    if mod is not None:
                        s = mod(s, b, h, i, j, Lq, Lk)
                    cols.append(j)
                    vals.append(s)
                if not cols:
                    continue
                m = max(vals)
                exps = [math.exp(s - m) for s in vals]
                total = sum(exps)
                lse[b, h, i] = m + math.log(total)
                for j, e in zip(cols, exps):
                    weights[b, h, i, j] = e / total
                for c in range(Dv):
                    out[b, h, i, c] = sum(weights[b, h, i, j] * v[b % v.shape[0], g, j, c] for j in cols)
    return out, weights, lse


def softmax_row(row, keep=None):
    """softmax of a list of numbers over the kept entries; other entries 0; nothing kept -> all 0."""
    idx = [j for j in range(len(row)) if keep is None or keep[j]]
    result = [0.0] * len(row)
    if not idx:
        return result
    m = max(float(row[j]) for j in idx)
    total = sum(math.exp(float(row[j]) - m) for j in idx)
    for j in idx:
        result[j] = math.exp(float(row[j]) - m) / total
    return result


# --- rotary embedding ----------------------------------------------------------------------------------------
def rotation_matrix(position_, D, base=10000.0, style="half"):
    """The (D, D) block rotation RoPE applies at one position (Su et al. 2021, eq. 15): pair p is rotated by
    position * base^(-2p/D); pairs are (p, p + D/2) for "half" and (2p, 2p + 1) for "interleaved"."""
    R = np.zeros((D, D))
    for p in range(D // 2):
        theta = position_ * base ** (-2.0 * p / D)
        a, c = (p, p + D // 2) if style == "half" else (2 * p, 2 * p + 1)
        R[a, a], R[a, c] = math.cos(theta), -math.sin(theta)
        R[c, a], R[c, c] = math.sin(theta), math.cos(theta)
    return R


# --- linear layers -------------------------------------------------------------------------------------------
def linear(x, w, b=None):
    """x (L, in) @ w.T (+ b) with w (out, in), by loops."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    out = np.array([[sum(x[t, c] * w[o, c] for c in range(w.shape[1])) for o in range(w.shape[0])]
                    for t in range(x.shape[0])])
    return out if b is None else out + np.asarray(b, np.float64)


def multi_head_attention(x, context, layer, allowed=None, value_context=None, rope_base=None):
    """Vaswani et al. 2017 sec. 3.2.2 for one unbatched sequence x (Lq, d_model), context (Lk, kdim), from the
    layer's weights: project, split into heads (GQA: head h uses kv head h // (H // G)), attend, concat, project.
    ``rope_base``: rotate each query/key head vector at position t by rotation_matrix(t) (self-attention)."""
    H, G, Dh = layer.n_heads, layer.n_kv_heads, layer.head_dim
    value_context = context if value_context is None else value_context
    q = linear(x, layer.w_q, layer.b_q).reshape(len(x), H, Dh).transpose(1, 0, 2)[None]
    k = linear(context, layer.w_k, layer.b_k).reshape(len(context), G, Dh).transpose(1, 0, 2)[None]
    v = linear(value_context, layer.w_v, layer.b_v).reshape(len(context), G, Dh).transpose(1, 0, 2)[None]
    if rope_base is not None:
        for arr in (q, k):
            for h in range(arr.shape[1]):
                for t in range(arr.shape[2]):
                    arr[0, h, t] = rotation_matrix(t, Dh, rope_base) @ arr[0, h, t]
    out, weights, _ = attention(q, k, v, scaled_dot(), allowed)
    concat = out[0].transpose(1, 0, 2).reshape(len(x), H * Dh)
    return linear(concat, layer.w_o, layer.b_o), weights[0]


def qkv(rng, B, H, G, Lq, Lk, D=16, Dv=None, dtype=np.float64):
    """Standard-normal q (B, H, Lq, D), k (B, G, Lk, D), v (B, G, Lk, Dv or D): G key/value heads for H queries."""
    q = rng.standard_normal((B, H, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, G, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, G, Lk, Dv or D)).astype(dtype)
    return q, k, v
