"""Diagnostics of attention weights: how spread out, how concentrated, where the mass goes.

Every function takes a weights array of shape (..., H, Lq, Lk) (rows sum to 1 over the keys a query may see, or
are all 0 for a fully masked query) from any model or from ``scaled_dot_product_attention(..., return_weights=True)``
and returns NumPy float64 arrays. PyTorch tensors and other array-API arrays are copied to NumPy first.

``mask`` (optional, everywhere): which keys each query was allowed to see, True = may attend (attnlab's one
polarity). Either a boolean array broadcastable to the weights or an ``attnlab.masks.Mask``. It matters for
normalization: a causal row i can only spread over i + 1 keys, so its entropy is normalized by log(i + 1), not
log(Lk). Without a mask every key counts as allowed.

Per head, averaged over the query rows that may attend something: ``entropy`` (normalized), ``effective_tokens``,
``top1_mass``, ``sink_score`` (mass on given key positions), ``mean_distance``, ``previous/next/same_token_score``;
``head_table`` gathers them with each head's type (the recognised function its weight follows: previous-token,
next-token, self, induction, delimiter, sink) and the failure flags that remain (``diffuse``, and
``over_concentrated`` only where no function explains the concentration); thresholds below, heads named
``head_id`` "L0.H2".
Head types on token patterns (``duplicate_token_score``, ``induction_score``, ``detect_head_types``) and attention
``rollout`` (Abnar & Zuidema 2020) follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._array import as_array, is_low_precision, namespace, to_numpy, upcast
from .budget import check as check_budget
from .checks import LARGEST, flag, integer_array, is_int, non_negative_int, positive_int, real, text
from .masks import Mask


WEIGHT_SLACK = 1e-3    # a weight may exceed 1 by this much (float16 rounding of a one-hot row), not more


def _weights(weights) -> np.ndarray:
    """(..., H, Lq, Lk) float64 NumPy copy of ``weights``, checked."""
    x = as_array(weights, "weights")
    if not isinstance(x, np.ndarray) and is_low_precision(x):          # torch.bfloat16 has no NumPy dtype
        x = upcast(namespace(x), x)
    w = np.asarray(to_numpy(x), dtype=np.float64)
    if w.ndim < 3:
        raise ValueError(f"weights must have shape (..., H, Lq, Lk) (at least 3 dims), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative (attention probabilities)")
    if w.size and w.max() > 1 + WEIGHT_SLACK:
        raise ValueError(f"weights must be attention probabilities in [0, 1], got a weight of {w.max():.6g}")
    return w


def _integer(value, name: str) -> int:
    """An int (Python or NumPy, not a bool), positive or negative, of at most 2**62 in size."""
    if not is_int(value) or abs(value) > LARGEST:
        raise (ValueError if is_int(value) else TypeError)(
            f"{name} must be an integer in [-2**62, 2**62], got {type(value).__name__} {value!r}"[:200])
    return int(value)


def _share(value, name: str) -> float:
    """A statistic or a threshold on one: a finite number (a threshold above 1 turns its flag off)."""
    return real(value, name)


def _allowed(mask, w: np.ndarray) -> np.ndarray:
    """Boolean array broadcast to w's shape: True where a query may attend a key."""
    Lq, Lk = w.shape[-2:]
    if mask is None:
        return np.ones(w.shape, dtype=bool)
    if isinstance(mask, Mask):
        mask = mask.to_array(Lq, Lk)
    m = np.asarray(to_numpy(as_array(mask, "mask")))
    if m.dtype != bool:
        raise TypeError(f"mask must be boolean (True = may attend) or an attnlab.masks.Mask, got dtype {m.dtype}")
    try:
        return np.broadcast_to(m, w.shape)
    except ValueError:
        raise ValueError(f"mask of shape {m.shape} does not broadcast to weights of shape {w.shape}") from None


def row_entropy(weights, mask=None, normalized: bool = True) -> np.ndarray:
    """Entropy of each attention row, shape (..., H, Lq), in nats (0 log 0 = 0).

    With ``normalized=True`` each row is divided by log(n) where n is the number of keys that row may attend, so
    1 means uniform over the allowed keys and 0 means all mass on one key. A row with n <= 1 allowed keys has no
    choice to make and gets 0.

    >>> row_entropy([[[0.5, 0.5], [1.0, 0.0]]]).round(3)
    array([[1., 0.]])
    """
    w = _weights(weights)
    normalized = flag(normalized, "normalized")
    allowed = _allowed(mask, w)
    p = np.where(allowed, w, 0.0)
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1) + 0.0  # (..., H, Lq)
    if not normalized:
        return h
    n = allowed.sum(axis=-1)  # (..., H, Lq)
    return np.where(n > 1, h / np.log(np.maximum(n, 2)), 0.0)


def entropy(weights, mask=None, normalized: bool = True) -> np.ndarray:
    """Mean row entropy per head, shape (..., H), for weights (..., H, Lq, Lk).

    Row entropies as in :func:`row_entropy` (normalized by log of the number of allowed keys per row; rows with
    <= 1 allowed key count as 0). The mean runs over the query rows that may attend at least one key: fully
    masked rows (padded queries) are left out; a head whose every row is fully masked gets 0.

    >>> w = [[[0.5, 0.5], [1.0, 0.0]], [[0.25, 0.75], [0.5, 0.5]]]   # (H=2, Lq=2, Lk=2)
    >>> entropy(w).round(4)
    array([0.5   , 0.9056])
    >>> import attnlab
    >>> entropy([[[1.0, 0.0], [0.5, 0.5]]], mask=attnlab.masks.causal()).round(4)   # row 0 sees 1 key: 0
    array([0.5])
    """
    w = _weights(weights)
    normalized = flag(normalized, "normalized")
    return _mean_rows(row_entropy(w, mask, normalized), _live(w, mask))


# --- per-row statistics, averaged per head -------------------------------------------------------------------
def _live(w, mask) -> np.ndarray:
    """(..., H, Lq) True for query rows that may attend at least one key."""
    return _allowed(mask, w).any(axis=-1)


def _mean_rows(values, live) -> np.ndarray:
    """Mean of per-row values (..., H, Lq) over the rows where ``live``; 0 where no row is."""
    live = np.broadcast_to(live, values.shape)
    count = live.sum(axis=-1)
    return np.where(count > 0, np.where(live, values, 0.0).sum(axis=-1) / np.maximum(count, 1), 0.0)


def _query_positions(Lq: int, Lk: int) -> np.ndarray:
    """Key-axis position of each query: the last Lq of Lk (attnlab's bottom-right alignment)."""
    return np.arange(Lq) + (Lk - Lq)


def effective_tokens(weights, mask=None) -> np.ndarray:
    """exp(entropy in nats) of each row, averaged per head: (..., H). 1 = one key, n = uniform over n keys.

    >>> effective_tokens([[[0.5, 0.5, 0.0]]]).round(3)
    array([2.])
    """
    w = _weights(weights)
    return _mean_rows(np.exp(row_entropy(w, mask, normalized=False)), _live(w, mask))


def top1_mass(weights, mask=None) -> np.ndarray:
    """Largest weight of each row, averaged per head: (..., H).

    >>> top1_mass([[[0.7, 0.3], [0.1, 0.9]]]).round(3)
    array([0.8])
    """
    w = _weights(weights)
    return _mean_rows(w.max(axis=-1, initial=0.0), _live(w, mask))          # Lk = 0: no key, no mass


def sink_score(weights, indices=(0,), mask=None) -> np.ndarray:
    """Mass each row puts on the key positions ``indices`` (the first token, [CLS], [SEP]; negative indices
    count from the end), averaged per head: (..., H). Xiao et al. 2023 call such keys attention sinks.

    >>> sink_score([[[0.6, 0.3, 0.1], [0.5, 0.0, 0.5]]], indices=(0, -1)).round(3)
    array([0.85])
    """
    w = _weights(weights)
    Lk = w.shape[-1]
    idx = sorted({int(i) % Lk for i in _indices(indices, Lk, "indices")})
    return _mean_rows(w[..., idx].sum(axis=-1), _live(w, mask))


def _indices(indices, Lk, name: str, *, allow_empty: bool = False):
    """``indices`` (an int or a list of ints) as a 1-D int64 array of key positions in [-Lk, Lk)."""
    if isinstance(indices, (str, bytes, float, bool, np.bool_)) or indices is None:     # a string is not positions
        raise TypeError(f"{name} must be key positions (an int or a list of ints) in [-{Lk}, {Lk}), got "
                        f"{type(indices).__name__} {indices!r}")
    idx = np.atleast_1d(integer_array(indices, name))
    if idx.ndim != 1 or (idx.size == 0 and not allow_empty) or (idx >= Lk).any() or (idx < -Lk).any():
        raise ValueError(f"{name} must be key positions in [-{Lk}, {Lk}), got {np.asarray(indices).tolist()!r}"[:300])
    return idx


def mean_distance(weights, mask=None) -> np.ndarray:
    """Expected |query position - key position| under each row's weights, averaged per head: (..., H).

    >>> mean_distance([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]).round(3)   # 0, 0.5, 0
    array([0.167])
    """
    w = _weights(weights)
    Lq, Lk = w.shape[-2:]
    dist = np.abs(_query_positions(Lq, Lk)[:, None] - np.arange(Lk)[None, :])     # (Lq, Lk)
    return _mean_rows((w * dist).sum(axis=-1), _live(w, mask))


def offset_score(weights, offset: int, mask=None) -> np.ndarray:
    """Weight on the key at (query position + offset), averaged over the rows where that key exists: (..., H).
    offset -1: previous token, 0: same token, +1: next token.

    >>> offset_score([[[1.0, 0.0], [0.8, 0.2]]], -1).round(3)   # only row 1 has a previous token
    array([0.8])
    """
    w = _weights(weights)
    offset = _integer(offset, "offset")
    Lq, Lk = w.shape[-2:]
    if Lk == 0:                                                                    # no key at any offset
        return np.zeros(w.shape[:-2])
    target = _query_positions(Lq, Lk) + offset                                # (Lq,)
    exists = (target >= 0) & (target < Lk)
    where = np.broadcast_to(np.clip(target, 0, Lk - 1)[:, None], w.shape[:-1] + (1,))
    picked = np.take_along_axis(w, where, axis=-1)[..., 0]                          # (..., H, Lq)
    return _mean_rows(picked, _live(w, mask) & exists)


def previous_token_score(weights, mask=None) -> np.ndarray:
    return offset_score(weights, -1, mask)


def next_token_score(weights, mask=None) -> np.ndarray:
    return offset_score(weights, +1, mask)


def same_token_score(weights, mask=None) -> np.ndarray:
    return offset_score(weights, 0, mask)


# --- head types, flags and the per-head table ----------------------------------------------------------------
# Thresholds calibrated on all-MiniLM-L6-v2 and SmolLM2-135M over the 60 project sentences
# (benchmarks/head_calibration.py; docs/failure-modes.md, "Calibration", gives the distributions and the reasons).
DIFFUSE_ENTROPY = 0.85      # normalized entropy >= this: weight spread nearly evenly ("diffuse"); MiniLM's 95th pct
CONCENTRATED_TOP1 = 0.8     # mean top-1 mass >= this: nearly one-hot rows (a failure only if no function explains it)
TYPE_SCORE = 0.5            # a recognised function taking >= this share of the weight names the head's type
SINK_MASS = TYPE_SCORE      # mass on the sink positions ([CLS]/[SEP], BOS or position 0) that makes a "sink" head

# The recognised functions, in the order a tie is broken: the score column of HeadStats each one reads.
HEAD_FUNCTIONS = {"previous-token": "previous", "next-token": "next", "self": "same", "induction": "induction",
                  "delimiter": "delimiter", "sink": "sink"}
PUNCTUATION = set(".,;:!?\"'()[]{}-")


def head_id(layer: int, head: int) -> str:
    """The one way a head is named in text: "L0.H2" (layer 0, head 2; both 0-based). "0.2" would read as a decimal.

    >>> head_id(1, 11)
    'L1.H11'
    """
    return f"L{non_negative_int(layer, 'layer')}.H{non_negative_int(head, 'head')}"


def delimiter_positions(tokens) -> list[int]:
    """Positions of the tokens made only of punctuation (".", ",", ...; tokenizer marks "Ġ", "▁", "##" stripped).

    >>> delimiter_positions(["[CLS]", "hi", ",", "you", ".", "[SEP]"])
    [2, 4]
    """
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, (list, tuple, np.ndarray)) or \
            np.ndim(tokens) != 1:
        raise TypeError(f"tokens must be a list of token strings, got {type(tokens).__name__}"
                        + (f" of shape {np.shape(tokens)}" if isinstance(tokens, np.ndarray) else ""))
    out = []
    for i, t in enumerate(tokens):
        core = str(t).replace("Ġ", "").replace("▁", "").replace("##", "").strip()
        if core and all(c in PUNCTUATION for c in core):
            out.append(i)
    return out


@dataclass
class HeadStats:
    """One row of the diagnostic table: the statistics of one head (averaged over its live query rows), the
    function its weight follows (``type``) and the failure flags that remain once that function is accounted for."""
    layer: int
    head: int
    entropy: float            # normalized, 0 (one key) .. 1 (uniform over allowed keys)
    effective_tokens: float   # exp(entropy in nats)
    top1: float
    sink: float               # mass on the sink positions
    distance: float
    previous: float
    next: float
    same: float
    flags: tuple[str, ...]    # failure flags: "diffuse", "over_concentrated"
    delimiter: float = 0.0    # mass on punctuation tokens (0 when none are given)
    induction: float | None = None   # induction score (None: no token repeats, or no ids given)
    type: str = "-"           # one of HEAD_FUNCTIONS, or "-" (no function takes TYPE_SCORE of the weight)
    functional: float = 0.0   # mass on any recognised key of each row (sinks, delimiters, previous, self, next,
                              # induction target): a head split between functions row by row has a high share

    @property
    def id(self) -> str:
        return head_id(self.layer, self.head)


def head_type(scores: dict, threshold: float = TYPE_SCORE) -> str:
    """The recognised function of a head: among ``scores`` {HeadStats column: value} (previous, next, same,
    induction, delimiter, sink; None = not measured), the function with the largest score >= ``threshold``,
    else "-".

    >>> head_type({"previous": 1.0, "sink": 0.15}), head_type({"previous": 0.3, "sink": 0.4}), \
head_type({"sink": 0.83})
    ('previous-token', '-', 'sink')
    """
    if not isinstance(scores, dict):
        raise TypeError(f"scores must be a dict {{HeadStats column: score}}, got {type(scores).__name__}")
    threshold = real(threshold, "threshold")
    for column, value in scores.items():
        if value is not None:
            real(value, f"scores[{column!r}]")
    best, best_score = "-", threshold
    for name, column in HEAD_FUNCTIONS.items():
        s = scores.get(column)
        if s is not None and s >= best_score and (best == "-" or s > best_score):
            best, best_score = name, s
    return best


def flags(entropy_, top1, type_: str = "-", functional: float = 0.0, *, diffuse=DIFFUSE_ENTROPY,
          concentrated=CONCENTRATED_TOP1, typed=TYPE_SCORE) -> tuple[str, ...]:
    """The failure-mode flags of one head from its normalized entropy, top-1 mass, type and functional share.

    A head concentrated on a recognised function (a previous-token, next-token, self, induction, delimiter or
    sink head) is specialised, not failing: "over_concentrated" fires only when no function explains the
    concentration ("one token dominates and useful context is ignored", the study guide's failure mode): the
    head has no type and less than ``typed`` of its weight lands on recognised keys at all (a head that parks
    some rows on the sink and points others at the previous token is split between functions, not failing).

    >>> flags(0.9, 0.1), flags(0.1, 0.95), flags(0.01, 1.0, "previous-token"), flags(0.1, 0.82, "-", 0.85)
    (('diffuse',), ('over_concentrated',), (), ())
    """
    entropy_, top1 = _share(entropy_, "entropy_"), _share(top1, "top1")
    functional = _share(functional, "functional")
    diffuse, concentrated, typed = _share(diffuse, "diffuse"), _share(concentrated, "concentrated"), \
        _share(typed, "typed")
    type_ = text(type_, "type_")
    out = []
    if entropy_ >= diffuse:
        out.append("diffuse")
    if top1 >= concentrated and type_ == "-" and functional < typed:
        out.append("over_concentrated")
    return tuple(out)


def head_table(weights, mask=None, sink_indices=(0,), *, delimiters=(), ids=None, typed=TYPE_SCORE,
               **thresholds) -> list[HeadStats]:
    """Statistics, type and flags of every head of a model: weights (layers, H, Lq, Lk) or (H, Lq, Lk) (layer 0).

    ``sink_indices``: key positions counted as sinks (e.g. (0, -1) for [CLS] and [SEP]); ``delimiters``: key
    positions of punctuation (``delimiter_positions(tokens)``; sinks among them are left out); ``ids``: the (L,)
    token ids or strings of a self-attention sequence, for the induction score (rows whose token occurred
    before); ``typed``: the share of weight that names a type; ``thresholds``: diffuse=, concentrated=
    override the module's flag thresholds.
    """
    w = _weights(weights)
    if w.ndim == 3:
        w = w[None]
    if w.ndim != 4:
        raise ValueError(f"weights must have shape (layers, H, Lq, Lk) or (H, Lq, Lk), got {w.shape}")
    Lk = w.shape[-1]
    typed = _share(typed, "typed")
    unknown = set(thresholds) - {"diffuse", "concentrated"}
    if unknown:
        raise TypeError(f"head_table's thresholds are diffuse= and concentrated=, got {sorted(unknown)}")
    for name, value in thresholds.items():
        _share(value, name)
    sinks = {int(i) % Lk for i in _indices(sink_indices, Lk, "sink_indices")}
    delims = sorted({int(i) % Lk for i in _indices(delimiters, Lk, "delimiters", allow_empty=True)} - sinks)
    cols = dict(entropy=entropy(w, mask), effective_tokens=effective_tokens(w, mask), top1=top1_mass(w, mask),
                sink=sink_score(w, sink_indices, mask), distance=mean_distance(w, mask),
                previous=offset_score(w, -1, mask), next=offset_score(w, 1, mask), same=offset_score(w, 0, mask),
                delimiter=sink_score(w, delims, mask) if delims else np.zeros(w.shape[:2]))
    Lq = w.shape[-2]
    recognised = np.zeros((Lq, Lk), dtype=bool)                                  # [query, key]
    recognised[:, sorted(sinks) + delims] = True
    pos = _query_positions(Lq, Lk)
    for offset in (-1, 0, 1):
        rows_, keys_ = np.arange(Lq), pos + offset
        ok = (keys_ >= 0) & (keys_ < Lk)
        recognised[rows_[ok], keys_[ok]] = True
    induction = None
    if ids is not None:
        ids = _ids(ids, Lk)
        if Lq == Lk and _induction_targets(ids).any():
            induction = induction_score(w, ids)                                  # (layers, H)
            recognised |= _induction_targets(ids)
    cols["functional"] = _mean_rows((w * recognised).sum(axis=-1), _live(w, mask))
    rows = []
    for layer in range(w.shape[0]):
        for head in range(w.shape[1]):
            v = {k: float(c[layer, head]) for k, c in cols.items()}
            v["induction"] = None if induction is None else float(induction[layer, head])
            kind = head_type(v, typed)
            rows.append(HeadStats(layer, head, **v, type=kind,
                                  flags=flags(v["entropy"], v["top1"], kind, v["functional"], typed=typed,
                                              **thresholds)))
    return rows


def format_table(rows: list[HeadStats]) -> str:
    """The table as aligned plain text (one line per head, named "L0.H2"), the type beside the statistics."""
    head = f"{'head':>7} {'entropy':>7} {'eff.tok':>7} {'top1':>5} {'sink':>5} {'dist':>5} " \
           f"{'prev':>5} {'next':>5} {'same':>5} {'delim':>5} {'induc':>5} {'func':>5}  {'type':<14} flags"
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, HeadStats) for r in rows):
        raise TypeError(f"rows must be a list of HeadStats (from head_table), got {type(rows).__name__}")
    lines = [head]
    for r in rows:
        ind = "-" if r.induction is None else f"{r.induction:.2f}"
        lines.append(f"{r.id:>7} {r.entropy:>7.3f} {r.effective_tokens:>7.2f} {r.top1:>5.2f} "
                     f"{r.sink:>5.2f} {r.distance:>5.1f} {r.previous:>5.2f} {r.next:>5.2f} {r.same:>5.2f} "
                     f"{r.delimiter:>5.2f} {ind:>5} {r.functional:>5.2f}  {r.type:<14} {','.join(r.flags) or '-'}")
    return "\n".join(lines)


# --- head types on token patterns (Olsson et al. 2022) -------------------------------------------------------
def _ids(ids, L):
    if ids is None or isinstance(ids, (str, bytes, int, float, np.generic)):
        raise TypeError(f"ids must be the (L,) = ({L},) token ids (or strings) of the sequence, got "
                        f"{type(ids).__name__} {ids!r}")
    try:
        ids = np.asarray(ids)
    except ValueError as err:
        raise ValueError(f"ids must be the (L,) = ({L},) token ids of the sequence, got a ragged list: {err}") from None
    if ids.dtype == object or ids.dtype.kind not in "iuUS":
        raise TypeError(f"ids must be integer token ids or token strings, got dtype {ids.dtype}")
    if ids.shape != (L,):
        raise ValueError(f"ids must have shape (L,) = ({L},) matching the weights, got {ids.shape}")
    return ids


def duplicate_token_score(weights, ids) -> np.ndarray:
    """Mass a query puts on EARLIER occurrences of its own token, averaged over the queries that have one:
    (..., H). Self-attention weights (..., H, L, L) over the token ids (L,).

    >>> duplicate_token_score([[[1, 0, 0], [0.5, 0.5, 0], [0.7, 0.2, 0.1]]], [4, 5, 4]).round(3)
    array([0.7])
    """
    w = _weights(weights)
    L = w.shape[-1]
    ids = _ids(ids, L)
    j, i = np.meshgrid(np.arange(L), np.arange(L))
    target = (ids[None, :] == ids[:, None]) & (j < i)                              # (L, L) [query, key]
    return _mean_rows((w * target).sum(axis=-1), target.any(axis=-1))


def induction_score(weights, ids) -> np.ndarray:
    """Mass a query puts on the token right AFTER an earlier occurrence of its own token (the induction
    pattern [A][B] ... [A] -> [B], Olsson et al. 2022), averaged over the queries that have one: (..., H).

    >>> induction_score([[[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.1, 0.8, 0.1, 0], [0, 0, 0.9, 0.1]]], [7, 8, 7, 8]
    ...                 ).round(3)   # query 2 (token 7) -> key 1; query 3 (token 8) -> key 2
    array([0.85])
    """
    w = _weights(weights)
    target = _induction_targets(_ids(ids, w.shape[-1]))                            # (L, L) [query, key]
    return _mean_rows((w * target).sum(axis=-1), target.any(axis=-1))


def _induction_targets(ids) -> np.ndarray:
    """(L, L) [query, key]: True where key j follows an earlier copy of query i's token (j <= i)."""
    L = len(ids)
    j, i = np.meshgrid(np.arange(L), np.arange(L))
    prev_same = np.zeros((L, L), dtype=bool)
    prev_same[:, 1:] = ids[None, :-1] == ids[:, None]                              # key j follows a copy of q's token
    return prev_same & (j <= i)                                                     # the copy is earlier


def repeated_random_tokens(vocab_size: int, n: int, seed: int = 0, prefix=()) -> np.ndarray:
    """``prefix`` + n random token ids + the same n again: the probe sequence for induction heads."""
    vocab_size = positive_int(vocab_size, "vocab_size", minimum=2)
    n = positive_int(n, "n", minimum=2)
    seed = non_negative_int(seed, "seed")
    if isinstance(prefix, (str, bytes)) or prefix is None:
        raise TypeError(f"prefix must be a list of token ids, got {type(prefix).__name__} {prefix!r}")
    prefix = integer_array(prefix, "prefix", minimum=0)
    if prefix.ndim != 1:
        raise ValueError(f"prefix must be a 1-D list of token ids, got shape {prefix.shape}")
    check_budget(8 * (3 * n + 2 * prefix.size), f"a probe of {n} random tokens repeated twice",
                 instead="use a smaller n")
    half = np.random.default_rng(seed).integers(0, vocab_size, size=n)
    return np.concatenate([prefix, half, half]).astype(np.int64)


HEAD_TYPE_THRESHOLD = 0.4   # a score >= this names the head type


@dataclass
class HeadType:
    layer: int
    head: int
    previous: float
    duplicate: float
    induction: float
    types: tuple[str, ...]


def head_types(weights, ids, threshold: float = HEAD_TYPE_THRESHOLD) -> list[HeadType]:
    """Previous-token, duplicate-token and induction scores of every head, weights (layers, H, L, L) over ids
    (L,) (use ``repeated_random_tokens``), with the types whose score is >= ``threshold``."""
    w = _weights(weights)
    if w.ndim != 4:
        raise ValueError(f"weights must have shape (layers, H, L, L), got {w.shape}")
    threshold = real(threshold, "threshold")
    scores = {"previous": offset_score(w, -1), "duplicate": duplicate_token_score(w, ids),
              "induction": induction_score(w, ids)}
    out = []
    for layer in range(w.shape[0]):
        for head in range(w.shape[1]):
            s = {k: float(v[layer, head]) for k, v in scores.items()}
            out.append(HeadType(layer, head, **s, types=tuple(k for k, v in s.items() if v >= threshold)))
    return out


def detect_head_types(model, n: int = 20, seed: int = 0, threshold: float = HEAD_TYPE_THRESHOLD,
                      prefix=()) -> list[HeadType]:
    """Run ``model`` (an attnlab.models model) on a repeated random token sequence and type its heads."""
    if not (hasattr(model, "vocab_size") and callable(getattr(model, "attentions", None))):
        raise TypeError(f"model must be an attnlab.models model (with vocab_size and attentions(ids)), got "
                        f"{type(model).__name__}")
    threshold = real(threshold, "threshold")
    ids = repeated_random_tokens(model.vocab_size, n, seed, prefix)
    _, w = model.attentions(ids)
    return head_types(w, ids, threshold)


# --- attention rollout (Abnar & Zuidema 2020) ----------------------------------------------------------------
def rollout(weights, residual: float = 0.5) -> np.ndarray:
    """Attention rollout: weights (layers, ..., H, L, L) -> (..., L, L), how much each input token flows into
    each position through all layers.

    Per layer: A = mean over heads, A' = (1 - residual) * A + residual * I (the residual connection), rows
    renormalized to sum 1; rollout = A'_last @ ... @ A'_first (Abnar & Zuidema 2020, eq. 1 with 0.5/0.5).

    >>> rollout([[[[0.0, 1.0], [0.0, 1.0]]]]).round(3)   # one layer, one head: 0.5 * A + 0.5 * I
    array([[0.5, 0.5],
           [0. , 1. ]])
    """
    w = _weights(weights)
    if w.ndim < 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights must have shape (layers, ..., H, L, L) with square L x L, got {w.shape}")
    residual = real(residual, "residual", low=0, high=1)
    L = w.shape[-1]
    out = None
    for a in w.mean(axis=-3):                                                     # (..., L, L) per layer
        a = (1.0 - residual) * a + residual * np.eye(L)
        a = a / np.where(a.sum(axis=-1, keepdims=True) > 0, a.sum(axis=-1, keepdims=True), 1.0)
        out = a if out is None else a @ out
    return out
