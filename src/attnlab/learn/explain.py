"""A worked attention example, every intermediate shown with its formula (``attnlab explain``).

The steps are computed one at a time in float64, the way a learner would on paper, and then checked against
attnlab's own ``scaled_dot_product_attention`` / ``additive_attention``: a worked example that disagreed with the
library would be a bug, so ``worked_example`` raises instead of printing it.

    dot-product:  S = Q K^T -> S / sqrt(d) -> mask (-inf) -> S - max_j -> exp -> Z = sum_j -> A = exp / Z -> A V
    additive:     S_ij = w_v . tanh(W_q q_i + W_k k_j) (Bahdanau et al. 2015) -> mask -> ... -> A V

>>> ex = worked_example([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0], [3.0]])
>>> [s.name for s in ex.steps][:3]
['dot products', 'scale', 'max subtraction']
>>> ex.output.round(4)
array([[1.6605]])
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import masks as masks_mod
from ..api import additive_attention, scaled_dot_product_attention
from ..budget import check as check_budget
from ..checks import choice, non_negative_int, positive_int, text as check_text
from ._format import sig, vec


@dataclass
class Step:
    """One intermediate: its name, the formula that produced it, the value, and an optional remark."""

    name: str
    formula: str
    value: np.ndarray
    note: str = ""


@dataclass
class WorkedExample:
    score: str
    q: np.ndarray                       # (Lq, D)
    k: np.ndarray                       # (Lk, D)
    v: np.ndarray                       # (Lk, Dv)
    allowed: np.ndarray | None          # (Lq, Lk) True = may attend, None = no mask
    steps: list[Step] = field(default_factory=list)
    weights: np.ndarray | None = None   # (Lq, Lk)
    output: np.ndarray | None = None    # (Lq, Dv)
    check: str = ""                     # which attnlab function agreed, and by how much
    params: dict = field(default_factory=dict)


# --- input parsing -----------------------------------------------------------------------------------------
def parse_matrix(text: str, name: str) -> np.ndarray:
    """"1,0;0,1" (rows split by ';', numbers by ',' or spaces), or a path to a .json / .csv file.

    >>> parse_matrix("1, 0; 0 2", "q").tolist()
    [[1.0, 0.0], [0.0, 2.0]]
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be text, rows like \"1,0;0,1\" or a .json/.csv file, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name} is empty: give rows like \"1,0;0,1\" or a .json/.csv file")
    path = Path(text)
    if path.suffix.lower() in (".json", ".csv"):
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file {text!r}")
        rows = _read_json(path, name) if path.suffix.lower() == ".json" else _read_csv(path)
    else:
        rows = [r.replace(",", " ").split() for r in text.split(";") if r.strip()]
    return to_matrix(rows, name)


def _read_json(path: Path, name: str):
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict):
        raise ValueError(f"{name}: {path} holds an object; use --file for a JSON object with q, k, v")
    return data


def _read_csv(path: Path):
    with path.open(newline="") as fh:
        return [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]


def to_matrix(rows, name: str) -> np.ndarray:
    """A list of equal-length rows of numbers as a float64 (rows, cols) array, with a clear error otherwise."""
    name = check_text(name, "name")
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    if isinstance(rows, (str, bytes)):
        raise TypeError(f"{name} must be a non-empty list of rows of numbers, got a string {rows!r}"[:200])
    if isinstance(rows, (int, float)) or not hasattr(rows, "__len__") or len(rows) == 0:
        raise ValueError(f"{name} must be a non-empty list of rows of numbers, got {rows!r}")
    rows = [r if isinstance(r, (list, tuple)) else [r] for r in rows]
    out = []
    for i, row in enumerate(rows):
        values = []
        for cell in row:
            try:
                if isinstance(cell, bool):
                    raise ValueError
                x = float(cell.strip() if isinstance(cell, str) else cell)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: {cell!r} in row {i} is not a number") from None
            if not math.isfinite(x):
                raise ValueError(f"{name}: row {i} holds {cell!r}; a worked example needs finite numbers")
            values.append(x)
        if not values:
            raise ValueError(f"{name}: row {i} is empty")
        if out and len(values) != len(out[0]):
            raise ValueError(f"{name}: row {i} has {len(values)} numbers but row 0 has {len(out[0])} (ragged rows)")
        out.append(values)
    return np.array(out, dtype=np.float64)


def parse_mask(spec: str | None, Lq: int, Lk: int) -> tuple[np.ndarray | None, str]:
    """A mask spec (``attnlab.masks.SPEC_GRAMMAR``, parsed by ``attnlab.masks.parse``: ``causal``, ``window:L``
    (itself and L keys back), ``padding:N``, ``causal & window:2``, ...) -> (Lq, Lk) bool, its canonical text.
    None (and the full mask) -> (None, "none"): nothing is blocked.

    >>> parse_mask("window:1", 3, 3)[0].astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    """
    Lq, Lk = positive_int(Lq, "Lq"), positive_int(Lk, "Lk")
    if spec is None:
        return None, "none"
    mask = masks_mod.parse(check_text(spec, "spec"))
    if masks_mod.spec_of(mask) == "full":
        return None, "none"
    return np.asarray(mask.to_array(Lq, Lk)).reshape(Lq, Lk), masks_mod.spec_of(mask)


def random_inputs(seed: int, Lq: int = 2, Lk: int = 3, d: int = 2, dv: int = 2):
    """Small q, k, v with one decimal, easy to follow by hand."""
    seed = non_negative_int(seed, "seed")
    Lq, Lk, d, dv = (positive_int(x, n) for x, n in ((Lq, "Lq"), (Lk, "Lk"), (d, "d"), (dv, "dv")))
    check_budget(8 * (Lq * d + Lk * (d + dv)), f"random q, k, v at Lq={Lq}, Lk={Lk}, d={d}, dv={dv}",
                 instead="a worked example is for matrices small enough to read")
    rng = np.random.default_rng(seed)
    draw = lambda *shape: np.round(rng.uniform(-2, 2, size=shape), 1)
    return draw(Lq, d), draw(Lk, d), draw(Lk, dv)


def additive_params(d_q: int, d_k: int, attn_dim: int, seed: int):
    """Seeded W_q (A, Dq), W_k (A, Dk), w_v (A,) with one decimal."""
    d_q, d_k, attn_dim = (positive_int(x, n) for x, n in ((d_q, "d_q"), (d_k, "d_k"), (attn_dim, "attn_dim")))
    seed = non_negative_int(seed, "seed")
    check_budget(8 * attn_dim * (d_q + d_k + 1), f"additive parameters at d_q={d_q}, d_k={d_k}, attn_dim={attn_dim}",
                 instead="a worked example is for matrices small enough to read")
    rng = np.random.default_rng(seed + 1)
    draw = lambda *shape: np.round(rng.uniform(-1, 1, size=shape), 1)
    return draw(attn_dim, d_q), draw(attn_dim, d_k), draw(attn_dim)


# --- the worked example ------------------------------------------------------------------------------------
def worked_example(q, k, v, mask=None, *, score: str = "dot", w_q=None, w_k=None, w_v=None,
                   seed: int = 0) -> WorkedExample:
    """Every intermediate of attention for q (Lq, D), k (Lk, D), v (Lk, Dv), checked against attnlab.

    ``mask``: None, a spec string (``attnlab.masks.SPEC_GRAMMAR``: ``causal``, ``window:L``, ``padding:N``,
    ``causal & window:1``, ...) or a boolean (Lq, Lk) array.
    ``score``: "dot" (scaled dot product) or "additive" (w_q, w_k, w_v given, or seeded with ``seed``).
    """
    score = choice(score, "score", ("dot", "additive"))
    seed = non_negative_int(seed, "seed")
    if not (mask is None or isinstance(mask, (str, list, tuple, np.ndarray))):
        raise TypeError(f"mask must be None, a mask spec string or a boolean (Lq, Lk) array, got "
                        f"{type(mask).__name__}")
    q, k, v = (to_matrix(np.asarray(x, dtype=object).tolist(), n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"v has {v.shape[0]} rows but k has {k.shape[0]}: one value per key")
    (Lq, D), Lk = q.shape, k.shape[0]
    A = 0 if score == "dot" else max(D, k.shape[1]) if w_v is None else int(np.size(w_v))
    # every step keeps an (Lq, Lk) matrix (about 10 of them) and additive scoring an (Lq, Lk, A) tanh tensor
    check_budget(8 * Lq * Lk * (10 + 2 * A), f"a worked example of {Lq} queries x {Lk} keys",
                 instead="a worked example is for matrices small enough to read; use attnlab.attention")
    if isinstance(mask, str) or mask is None:
        allowed, mask_name = parse_mask(mask, Lq, Lk)
    else:
        given = np.asarray(mask)
        if given.dtype != bool:
            raise TypeError(f"mask must be boolean (True = may attend), got dtype {given.dtype}")
        allowed, mask_name = given, "given"
        if allowed.shape != (Lq, Lk):
            raise ValueError(f"mask must have shape (Lq, Lk) = ({Lq}, {Lk}), got {allowed.shape}")
    ex = WorkedExample(score, q, k, v, allowed, params={"mask": mask_name})
    if score == "dot":
        if k.shape[1] != D:
            raise ValueError(f"k has {k.shape[1]} columns but q has {D}: dot products need equal dims")
        scores = _dot_steps(ex)
    elif score == "additive":
        scores = _additive_steps(ex, w_q, w_k, w_v, seed)
    else:
        raise ValueError(f"score must be 'dot' or 'additive', got {score!r}")
    _softmax_steps(ex, scores)
    _check(ex)
    return ex


def _dot_steps(ex: WorkedExample) -> np.ndarray:
    q, k = ex.q, ex.k
    raw = q @ k.T                                                                # (Lq, Lk)
    terms = " + ".join(f"{sig(a)}*{sig(b)}" for a, b in zip(q[0], k[0]))
    ex.steps.append(Step("dot products", "S[i, j] = q_i . k_j = sum_d q[i, d] k[j, d]", raw,
                         f"e.g. S[0, 0] = {terms} = {sig(raw[0, 0])}"))
    d = q.shape[1]
    scaled = raw / math.sqrt(d)
    ex.steps.append(Step("scale", f"S / sqrt(d) = S / sqrt({d}) = S * {sig(1 / math.sqrt(d))}", scaled,
                         "keeps the scores' variance near 1 whatever d is (Vaswani et al. 2017, sec. 3.2.1)"))
    return scaled


def _additive_steps(ex: WorkedExample, w_q, w_k, w_v, seed) -> np.ndarray:
    d_q, d_k = ex.q.shape[1], ex.k.shape[1]
    if w_q is None and w_k is None and w_v is None:
        w_q, w_k, w_v = additive_params(d_q, d_k, max(d_q, d_k), seed)
        source = f"seeded with --seed {seed}"
    elif w_q is None or w_k is None or w_v is None:
        raise ValueError("give all of W_q, W_k and w_v for additive scoring, or none of them (seeded)")
    else:
        source = "given"
    w_q, w_k = to_matrix(np.asarray(w_q).tolist(), "W_q"), to_matrix(np.asarray(w_k).tolist(), "W_k")
    w_v = to_matrix(np.asarray(w_v, dtype=np.float64).reshape(-1, 1).tolist(), "w_v")[:, 0]
    A = w_v.shape[0]
    if w_q.shape != (A, d_q) or w_k.shape != (A, d_k):
        raise ValueError(f"additive scoring needs W_q ({A}, {d_q}), W_k ({A}, {d_k}) for w_v of length {A}; "
                         f"got W_q {w_q.shape}, W_k {w_k.shape}")
    ex.params.update(w_q=w_q, w_k=w_k, w_v=w_v)
    qp, kp = ex.q @ w_q.T, ex.k @ w_k.T                                         # (Lq, A), (Lk, A)
    ex.steps.append(Step("parameters", f"W_q ({A}, {d_q}), W_k ({A}, {d_k}), w_v ({A},), {source}",
                         np.concatenate([w_q, w_k, w_v[:, None]], axis=1), "columns: W_q | W_k | w_v"))
    ex.steps.append(Step("projected queries", "W_q q_i", qp))
    ex.steps.append(Step("projected keys", "W_k k_j", kp))
    hidden = np.tanh(qp[:, None, :] + kp[None, :, :])                            # (Lq, Lk, A)
    ex.steps.append(Step("hidden (query 0)", "h[0, j] = tanh(W_q q_0 + W_k k_j), one row per key", hidden[0]))
    scores = hidden @ w_v                                                        # (Lq, Lk)
    ex.steps.append(Step("scores", "S[i, j] = w_v . tanh(W_q q_i + W_k k_j)  (no 1/sqrt(d): the learned "
                         "w_v sets the scale)", scores))
    return scores


def _softmax_steps(ex: WorkedExample, scores: np.ndarray) -> None:
    allowed = ex.allowed
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
        blocked = int((~allowed).sum())
        ex.steps.append(Step("mask", f"S[i, j] = -inf where the mask ({ex.params['mask']}) blocks j for i", scores,
                         f"{blocked} blocked cell(s); exp(-inf) = 0, so they get weight exactly 0"))
    row_max = np.max(scores, axis=1, keepdims=True)                              # (Lq, 1)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)                       # a fully blocked row stays -inf
    shifted = scores - row_max
    ex.steps.append(Step("max subtraction", "S[i, j] - max_j S[i, j]", shifted,
                         f"row maxima {vec(row_max[:, 0])}; the weights do not change (the factor "
                         f"exp(-max) cancels) but exp can no longer overflow"))
    e = np.exp(shifted)
    ex.steps.append(Step("exponentials", "E[i, j] = exp(S[i, j] - max_j S[i, j])", e))
    z = e.sum(axis=1, keepdims=True)                                             # (Lq, 1)
    empty = z[:, 0] == 0
    ex.steps.append(Step("normalisation", "Z_i = sum_j E[i, j]", z[:, 0],
                         "a row with every key blocked has Z = 0: attnlab gives it weights 0 and output 0"
                         if empty.any() else ""))
    ex.weights = e / np.where(z == 0, 1.0, z)
    ex.steps.append(Step("weights", "A[i, j] = E[i, j] / Z_i  (each row sums to 1)", ex.weights,
                         f"row sums {vec(ex.weights.sum(axis=1))}"))
    ex.output = ex.weights @ ex.v                                                # (Lq, Dv)
    terms = " + ".join(f"{sig(a)}*{sig(b)}" for a, b in zip(ex.weights[0], ex.v[:, 0]))
    ex.steps.append(Step("weighted sum", "out_i = sum_j A[i, j] v_j", ex.output,
                         f"e.g. out[0, 0] = {terms} = {sig(ex.output[0, 0])}"))


def _check(ex: WorkedExample) -> None:
    """The step-by-step numbers must equal attnlab's functions: raise if they do not."""
    if ex.score == "dot":
        out, w = scaled_dot_product_attention(ex.q, ex.k, ex.v, ex.allowed, return_weights=True)
        fn = "attnlab.scaled_dot_product_attention"
    else:
        p = ex.params
        out, w = additive_attention(ex.q, ex.k, ex.v, p["w_q"], p["w_k"], p["w_v"], ex.allowed,
                                    return_weights=True)
        fn = "attnlab.additive_attention"
    err = max(float(np.max(np.abs(out - ex.output), initial=0.0)), float(np.max(np.abs(w - ex.weights),
                                                                                 initial=0.0)))
    if not err <= 1e-12:
        raise AssertionError(f"worked example disagrees with {fn} by {err:.3g}: please report this bug")
    ex.check = f"checked: {fn} gives the same weights and output (max |difference| = {err:.1e})"


# --- text rendering ----------------------------------------------------------------------------------------
def format_array(a) -> str:
    """A matrix (or vector) with 4 significant digits, right-aligned columns."""
    try:
        a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"a must be a vector or matrix of numbers, got {type(a).__name__}: {err}") from None
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"a must be a non-empty vector or matrix, got shape {a.shape}")
    cells = [[sig(x) for x in row] for row in a]
    width = max(len(c) for row in cells for c in row)
    return "\n".join("  [" + "  ".join(c.rjust(width) for c in row) + "]" for row in cells)


def render(ex: WorkedExample) -> str:
    """The whole worked example as text."""
    if not isinstance(ex, WorkedExample):
        raise TypeError(f"ex must be a WorkedExample (from worked_example), got {type(ex).__name__}")
    (Lq, D), (Lk, Dv) = ex.q.shape, ex.v.shape
    kind = "scaled dot-product" if ex.score == "dot" else "additive (Bahdanau)"
    lines = [f"Worked example: {kind} attention, Lq={Lq} queries, Lk={Lk} keys, d={D}, d_v={Dv}, "
             f"mask: {ex.params['mask']}",
             "", "q =", format_array(ex.q), "k =", format_array(ex.k), "v =", format_array(ex.v)]
    for n, step in enumerate(ex.steps, 1):
        lines += ["", f"{n}. {step.name}: {step.formula}", format_array(step.value)]
        if step.note:
            lines.append(f"   {step.note}")
    lines += ["", ex.check]
    fn = "scaled_dot_product_attention(q, k, v, mask, return_weights=True)" if ex.score == "dot" else \
        "additive_attention(q, k, v, w_q, w_k, w_v, mask, return_weights=True)"
    lines.append(f"Next: attnlab.{fn}; practise it with `attnlab practice --kind softmax`")
    return "\n".join(lines)
