"""Exercises generated from a seed and checked, with feedback at the first step that went wrong.

Every expected answer comes from attnlab itself (softmax, masks, scaled_dot_product_attention, the
MultiHeadAttention layer, the cost model), so an exercise can never disagree with the library. A wrong answer is
compared with the answers that common mistakes produce (no scaling, no exponentials, no normalisation, the wrong
mask polarity, query heads instead of key/value heads, ...) and the feedback names the first step that differs.

>>> ex = make("softmax", 0)
>>> ex.parts[0].check(ex.parts[0].solution).correct
True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import cost, masks
from ..api import scaled_dot_product_attention
from ..budget import check as check_budget
from ..checks import choice, non_negative_int, positive_int, text as check_text
from ..layers import MultiHeadAttention
from ..softmax import softmax
from ._format import sig, vec
from .claims import explain, grade
from .rubrics import RUBRICS


class InvalidAnswer(ValueError):
    """The answer could not be read (not a wrong answer): the prompt asks again."""


@dataclass
class Verdict:
    correct: bool
    message: str


@dataclass
class Part:
    prompt: str
    check: Callable[[str], Verdict]     # raises InvalidAnswer when the text cannot be read
    solution: str                       # a correct answer, as the learner would type it


@dataclass
class Exercise:
    kind: str
    title: str
    setup: str
    parts: list


def parse_numbers(text: str, count: int | None = None) -> np.ndarray:
    """Numbers separated by commas, spaces or semicolons; brackets are ignored.

    >>> parse_numbers("[0.2, 0.8]").tolist()
    [0.2, 0.8]
    """
    check_text(text, "text", non_empty=False)
    count = positive_int(count, "count", allow_none=True)
    tokens = [t for t in re.split(r"[\s,;]+", text.strip().strip("[]()")) if t]
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise InvalidAnswer(f"{bad!r} is not a number; type numbers separated by commas") from None
    if count is not None and len(values) != count:
        raise InvalidAnswer(f"expected {count} numbers, got {len(values)}")
    if not np.isfinite(values).all():
        raise InvalidAnswer("type finite numbers")
    return values


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _first_mistake(answer, expected, mistakes, atol=None, rtol=None, explain_right=""):
    """Verdict: right, or the message of the first known mistake the answer matches, or None."""
    close = lambda a, b: np.allclose(a, b, atol=atol or 0.0, rtol=rtol or 0.0)
    if close(answer, expected):
        return Verdict(True, explain_right)
    for candidate, message in mistakes:
        if candidate is not None and close(answer, candidate) and not close(candidate, expected):
            return Verdict(False, message)
    return None


# --- softmax weights by hand -----------------------------------------------------------------------------------
def _softmax_exercise(rng) -> Exercise:
    d = int(rng.choice([4, 9, 16]))
    n = int(rng.integers(2, 5))
    while True:
        scores = rng.integers(-2, 5, size=n).astype(np.float64) * math.sqrt(d) / 2   # scaled = multiples of 1/2
        if len(set(scores)) == n and _softmax_unambiguous(scores, d):
            break
    scaled = scores / math.sqrt(d)
    weights = softmax(scaled)
    setup = (f"A query has dot products q.k = {vec(scores)} with {n} keys; the head dim is d_k = {d}.\n"
             f"Give the attention weights (softmax of the scaled scores), {n} numbers, 2 decimals are enough.")

    def check(text):
        answer = parse_numbers(text, n)
        e = np.exp(scaled - scaled.max())
        steps = (f"1. scale: q.k / sqrt({d}) = {vec(scaled)}; 2. subtract the max {sig(scaled.max())} and "
                 f"exponentiate: {vec(e)}; 3. sum Z = {sig(e.sum())}; 4. divide: {vec(weights)}")
        mistakes = [
            (scaled / scaled.sum() if scaled.sum() else None,
             f"Step 2 is missing: you normalised the scaled scores directly, softmax exponentiates first. {steps}"),
            (softmax(scores), f"Step 1 is missing: you forgot to scale by 1/sqrt(d_k) = 1/{sig(math.sqrt(d))}. "
                              f"Without it the weights are too peaked. {steps}"),
            (softmax(scores / d), f"Step 1: you divided by d_k = {d}; scale by 1/sqrt(d_k) = 1/{sig(math.sqrt(d))}. "
                                  f"{steps}"),
            (np.exp(scaled), f"Step 3 is missing: you exponentiated but did not divide by the sum. {steps}"),
            (e, f"Step 3 is missing: you subtracted the max and exponentiated, but did not divide by the sum Z. "
                f"Subtracting the max does not normalise anything (and does not change the weights: exp(-max) "
                f"cancels between numerator and sum); it only keeps exp from overflowing. {steps}"),
        ]
        verdict = _first_mistake(answer, weights, mistakes, atol=0.011, explain_right=steps)
        if verdict:
            return verdict
        total = answer.sum()
        if abs(total - 1) > 0.02:
            return Verdict(False, f"Your weights sum to {sig(total)}: softmax weights always sum to 1. {steps}")
        if np.argmax(answer) != np.argmax(weights):
            return Verdict(False, f"The largest score must get the largest weight (key {np.argmax(weights)}): "
                                  f"softmax keeps the order of the scores. {steps}")
        j = int(np.argmax(np.abs(answer - weights)))
        return Verdict(False, f"Your weight for key {j} is {sig(answer[j])}, it should be {sig(weights[j])}. {steps}")

    return Exercise("softmax", "softmax weights by hand", setup,
                    [Part("weights", check, ", ".join(f"{w:.3f}" for w in weights))])


def _softmax_unambiguous(scores, d):
    """Every common mistake gives a clearly different answer (else the feedback could blame the wrong step)."""
    right = softmax(scores / math.sqrt(d))
    wrongs = [softmax(scores), softmax(scores / d)]
    return all(np.abs(w - right).max() > 0.05 for w in wrongs)


# --- mark the blocked cells of a mask --------------------------------------------------------------------------
def parse_cells(text: str, n: int) -> set:
    """Blocked cells as "row,col" pairs ("0,1 0,2"), a 0/1 grid with rows split by ';' or spaces (1 = blocked),
    or "none".

    >>> sorted(parse_cells("0,1 1,2", 3)), sorted(parse_cells("010;000;000", 3))
    ([(0, 1), (1, 2)], [(0, 1)])
    """
    text = check_text(text, "text", non_empty=False).strip().lower()
    n = positive_int(n, "n")
    if text in ("none", "no", "empty", "-"):
        return set()
    if "," in text:
        cells = set()
        for pair in re.split(r"[\s;]+", text):
            m = re.fullmatch(r"\(?(\d+),(\d+)\)?", pair)
            if not m:
                raise InvalidAnswer(f"could not read {pair!r}: type blocked cells as row,col pairs like \"0,1 0,2\"")
            i, j = int(m.group(1)), int(m.group(2))
            if i >= n or j >= n:
                raise InvalidAnswer(f"cell {i},{j} is outside the {n}x{n} matrix (rows and columns 0..{n - 1})")
            cells.add((i, j))
        return cells
    rows = [r.replace(" ", "") for r in re.split(r"[;/]", text)] if re.search(r"[;/]", text) else text.split()
    if len(rows) != n or any(len(r) != n or set(r) - {"0", "1"} for r in rows):
        raise InvalidAnswer(f"type row,col pairs like \"0,1 0,2\", or a {n}x{n} grid of 0/1 with rows split by ';' "
                            f"(1 = blocked), or none")
    return {(i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if c == "1"}


def _mask_exercise(rng) -> Exercise:
    n = int(rng.integers(4, 6))
    kind = str(rng.choice(["causal", "window", "padding"]))
    if kind == "causal":
        mask, words = masks.causal(), "a causal mask (no looking at future tokens)"
    elif kind == "window":
        left = int(rng.integers(1, 3))
        mask = masks.sliding_window(left)
        words = (f"a causal sliding window, masks.sliding_window({left}): each query sees itself and the {left} "
                 f"key(s) before it")
    else:
        length = int(rng.integers(2, n))
        mask = masks.padding([length])
        words = f"a padding mask: the sequence has {length} real tokens, the last {n - length} key(s) are padding"
    allowed = np.asarray(mask.to_array(n, n)).reshape(n, n)
    blocked = {(int(i), int(j)) for i, j in zip(*np.nonzero(~allowed))}
    setup = (f"A toy {n}x{n} self-attention matrix (rows = queries q0..q{n - 1}, columns = keys k0..k{n - 1}) under "
             f"{words}.\nWhich cells are blocked? Type row,col pairs (\"0,1 0,2\"), a 0/1 grid with rows split by ';' "
             f"(1 = blocked), or none.")
    drawing = mask.show(n, n)

    def check(text):
        answer = parse_cells(text, n)
        if answer == blocked:
            return Verdict(True, f"{len(blocked)} blocked cells.\n{drawing}")
        everything = {(i, j) for i in range(n) for j in range(n)}
        causal_blocked = {(i, j) for i, j in everything if j > i}
        mistakes = [(everything - blocked, "You marked the cells that MAY attend; list the blocked ones "
                                           "(in attnlab a mask's True means may attend, the rest is blocked).")]
        if kind == "causal":
            mistakes += [({(j, i) for i, j in blocked}, "You blocked the past: a causal mask blocks the future, "
                                                        "key j > query i (above the diagonal)."),
                         (blocked | {(i, i) for i in range(n)}, "The diagonal is allowed: a token may attend to "
                                                                "itself.")]
        elif kind == "window":
            mistakes += [(causal_blocked, "You blocked the future but forgot the window: keys further back than "
                                          f"{left} position(s) are blocked too."),
                         (blocked - causal_blocked, "You blocked the far past but forgot the future: this sliding "
                                                    "window is causal, keys after the query are blocked too.")]
        else:
            padded_rows = {(i, j) for i, j in everything if i >= length}
            mistakes += [(blocked | padded_rows, "Only the padded KEYS (columns) are hidden; the padded query rows "
                                                 "still compute (their outputs are discarded later)."),
                         ({(j, i) for i, j in blocked}, "You blocked rows: padding hides keys, i.e. columns "
                                                        f"k{length}..k{n - 1} in every row.")]
        for candidate, message in mistakes:
            if answer == candidate:
                return Verdict(False, f"{message}\n{drawing}")
        for i in range(n):
            want = sorted(j for r, j in blocked if r == i)
            got = sorted(j for r, j in answer if r == i)
            if want != got:
                missing, extra = len(blocked - answer), len(answer - blocked)
                return Verdict(False, f"Row q{i} first differs: blocked keys are {_keys(want)}, you marked "
                                      f"{_keys(got)} ({missing} blocked cell(s) missing, {extra} extra overall).\n"
                                      f"{drawing}")
        raise AssertionError("unreachable: sets differ but no row differs")

    solution = " ".join(f"{i},{j}" for i, j in sorted(blocked)) or "none"
    return Exercise("mask", f"mark the blocked cells ({kind})", setup, [Part("blocked cells", check, solution)])


def _keys(js):
    return ", ".join(f"k{j}" for j in js) or "none"


# --- predict one attention row --------------------------------------------------------------------------------
def _row_exercise(rng) -> Exercise:
    while True:
        q = rng.integers(-2, 3, size=(1, 4)).astype(np.float64)
        k = rng.integers(-2, 3, size=(3, 4)).astype(np.float64)
        v = rng.integers(0, 10, size=(3, 2)).astype(np.float64)
        out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
        if np.ptp(w) > 0.2 and np.abs(softmax(q @ k.T) @ v - out).max() > 0.1:
            break
    raw = (q @ k.T)[0]
    setup = (f"One query q = {vec(q)} (d = 4) attends to three keys and values:\n"
             + "\n".join(f"  k{j} = {vec(k[j])}   v{j} = {vec(v[j])}" for j in range(3))
             + "\nWhat is the output for this query (2 numbers)? Use attnlab's default scale 1/sqrt(d).")
    steps = (f"scores q.k_j = {vec(raw)}; / sqrt(4) = {vec(raw / 2)}; weights = softmax = {vec(w[0])}; "
             f"output = sum_j w_j v_j = {vec(out[0])}")

    def check(text):
        answer = parse_numbers(text, 2)
        mistakes = [
            (softmax(raw) @ v, f"You forgot to scale the scores by 1/sqrt(d) = 0.5 before the softmax. {steps}"),
            (v.mean(axis=0), f"You averaged the values: the weights come from the scores, they are not uniform. "
                             f"{steps}"),
            (v[int(np.argmax(raw))], f"Attention is soft: you took the value of the best key only, but every key "
                                     f"gets some weight. {steps}"),
            (np.exp(raw / 2) @ v, f"You did not normalise: divide the exponentials by their sum. {steps}"),
            (raw @ v, f"You weighted the values by the raw scores: softmax turns them into weights first. {steps}"),
        ]
        verdict = _first_mistake(answer, out[0], mistakes, atol=0.021, explain_right=steps)
        return verdict or Verdict(False, f"Not quite. {steps}")

    return Exercise("row", "predict one attention row", setup,
                    [Part("output", check, ", ".join(f"{x:.3f}" for x in out[0]))])


# --- shapes in multi-head attention ---------------------------------------------------------------------------
def parse_shape(text: str) -> tuple:
    """"(2, 4, 5, 8)", "2,4,5,8" or "2x4x5x8" -> a tuple of ints."""
    check_text(text, "text", non_empty=False)
    tokens = [t for t in re.split(r"[\s,x×*]+", text.strip().strip("()[]")) if t]
    if not tokens or not all(t.isdigit() for t in tokens):
        raise InvalidAnswer(f"type a shape like (2, 4, 5, 8), got {text!r}")
    return tuple(int(t) for t in tokens)


def mha_shapes(B: int, L: int, d_model: int, H: int) -> dict:
    """Shapes of every step of multi-head self-attention, taken from running attnlab's layer on zeros."""
    B, L, d_model, H = (positive_int(x, name) for x, name in ((B, "B"), (L, "L"), (d_model, "d_model"), (H, "H")))
    if d_model % H:
        raise ValueError(f"d_model must be a multiple of H (one head dim per head), got d_model={d_model}, H={H}")
    # x, q, the heads and the output (float32), the weights (B, H, L, L) twice, the layer's 4 projections
    check_budget(4 * (4 * B * L * d_model + 2 * B * H * L * L + 4 * d_model * d_model),
                 f"multi-head attention shapes at B={B}, L={L}, d_model={d_model}, H={H}", instead="use smaller sizes")
    layer = MultiHeadAttention(d_model, H, seed=0)
    x = np.zeros((B, L, d_model), np.float32)                                      # (B, L, d_model)
    q = layer.project(x)[0]                                                        # (B, H, L, Dh)
    heads, weights = scaled_dot_product_attention(q, q, q, return_weights=True)    # (B, H, L, Dh), (B, H, L, L)
    y = layer(x)                                                                   # (B, L, d_model)
    return {"q": q.shape, "weights": weights.shape, "heads": heads.shape, "output": y.shape}


def _shapes_exercise(rng) -> Exercise:
    B, L = int(rng.choice([2, 3])), int(rng.choice([5, 6, 7]))
    H, Dh = int(rng.choice([4, 8])), int(rng.choice([16, 32]))
    d_model = H * Dh
    shapes = mha_shapes(B, L, d_model, H)
    setup = (f"Multi-head self-attention: a batch of B={B} sequences of L={L} tokens, d_model={d_model}, H={H} heads.\n"
             f"Give the shape after each step, like (2, 4, 5, 8).")
    prompts = {"q": "queries after the projection and the split into heads",
               "weights": "attention weights",
               "heads": "per-head outputs (weights @ v)",
               "output": "after concatenating the heads and the output projection"}
    right_words = {"q": f"(B, H, L, Dh) with Dh = d_model / H = {Dh}", "weights": "(B, H, Lq, Lk): every query "
                   "against every key, per head", "heads": "(B, H, L, Dh)", "output": "(B, L, d_model): H * Dh = "
                   "d_model again"}

    def checker(step):
        expected = tuple(shapes[step])

        def check(text):
            answer = parse_shape(text)
            if answer == expected:
                return Verdict(True, f"{right_words[step]}.")
            if len(answer) != len(expected):
                return Verdict(False, f"This tensor has {len(expected)} axes: {right_words[step]} = {expected}.")
            hints = [((B, L, H, Dh), "The heads axis comes before the length: attention runs per head over "
                                     "(L, Dh) matrices, so transpose to (B, H, L, Dh)."),
                     ((B, H, L, d_model), f"Each head works in a subspace of Dh = d_model / H = {Dh}, not the "
                                          f"full d_model = {d_model}."),
                     ((B, H, L, L) if step != "weights" else (B, H, L, Dh),
                      "The scores/weights compare every query with every key: (B, H, Lq, Lk); the outputs mix "
                      "the values: (B, H, L, Dh)."),
                     ((B, L, H * d_model), f"Concatenating H heads of Dh = {Dh} gives H * Dh = d_model = {d_model}.")]
            for candidate, message in hints:
                if answer == candidate:
                    return Verdict(False, f"{message} Expected {expected}.")
            return Verdict(False, f"Expected {right_words[step]} = {expected}.")
        return check

    parts = [Part(prompts[s], checker(s), str(tuple(shapes[s]))) for s in prompts]
    return Exercise("shapes", "shapes in multi-head attention", setup, parts)


# --- cost when n doubles ----------------------------------------------------------------------------------------
def _ratio_check(expected, mistakes, why, rtol=0.1):
    def check(text):
        answer = parse_numbers(text.lower().replace("x", " "), 1)
        verdict = _first_mistake(answer, [expected], [([c], m) for c, m in mistakes], rtol=rtol,
                                 explain_right=why)
        return verdict or Verdict(False, f"The model says {sig(expected)}x. {why}")
    return check


def _cost_exercise(rng) -> Exercise:
    n, w, D = int(rng.choice([1024, 2048, 4096])), int(rng.choice([128, 256])), 64
    cfg = cost.model_config(n_heads=8, head_dim=D)
    dense = cost.doubling(cfg, n, mask="dense", dtype="float32").ratios
    window = cost.doubling(cfg, n, mask=f"window:{w}", dtype="float32").ratios
    setup = (f"One attention layer, 8 heads of D={D}, float32. The sequence doubles from n={n} to {2 * n}. "
             f"By what factor does each quantity grow? (a number like 4 or 2.0)")
    quadratic = "Every query scores every key: n^2 cells, and (2n)^2 = 4 n^2."
    parts = [
        Part("dense attention: FLOPs", _ratio_check(dense["useful FLOPs"], [
            (2, f"Twice the queries AND twice the keys each. {quadratic}"),
            (8, "Attention is quadratic in n (n^2 d), not cubic.")], quadratic), sig(dense["useful FLOPs"])),
        Part("dense attention: memory of the naive n x n score matrix", _ratio_check(dense["reference peak memory"], [
            (2, f"The score matrix is n x n. {quadratic}")], quadratic), sig(dense["reference peak memory"])),
        Part(f"sliding window of w={w} keys: FLOPs of the tiled kernel", _ratio_check(window["tiled FLOPs"], [
            (4, f"Each query only sees w={w} keys: the work is about n*w, linear in n (the kernel skips the empty "
                f"tiles).")], f"n*w grows like n: {sig(window['tiled FLOPs'])}x."), sig(window["tiled FLOPs"])),
        # the estimate asked for is "linear in n" (2x); the model's exact ratio is lower because the tiles and
        # per-call buffers do not grow with n, so the tolerance admits both
        Part("dense attention: peak memory of the tiled (FlashAttention) kernel", _ratio_check(
            2.0, [(4, "The tiled kernel never stores the n x n matrix: fixed-size tiles plus "
                      "O(n D) for the output and row statistics, so memory grows like n.")],
            f"Fixed-size tiles plus O(n D) output and statistics: linear in n (the cost model says "
            f"{sig(dense['tiled peak memory'])}x here: the tiles themselves do not grow).", rtol=0.25), "2"),
    ]
    return Exercise("cost", "cost when n doubles", setup, parts)


# --- KV-cache bytes of a GQA model ---------------------------------------------------------------------------
UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str) -> float:
    """"1.5 GiB", "512MiB", "1e9" -> bytes.

    >>> parse_bytes("2 KiB")
    2048.0
    """
    check_text(text, "text", non_empty=False)
    m = re.fullmatch(r"\s*([0-9.eE+_,]+)\s*([a-zA-Z]*)\s*", text)
    unit = (m.group(2).lower() if m else "") or "b"
    if not m or unit not in UNITS or not _is_number(m.group(1).replace(",", "").replace("_", "")):
        raise InvalidAnswer(f"type a number of bytes, optionally with a unit ({', '.join(u for u in UNITS)}), "
                            f"got {text!r}")
    return float(m.group(1).replace(",", "").replace("_", "")) * UNITS[unit]


def _kv_exercise(rng) -> Exercise:
    layers, H, G = int(rng.choice([24, 32, 48])), int(rng.choice([32, 64])), int(rng.choice([4, 8]))
    dtype = str(rng.choice(["float16", "float32"]))
    n = int(rng.choice([4096, 8192, 32768]))
    cfg = cost.model_config(n_heads=H, head_dim=128, n_kv_heads=G, n_layers=layers, mask="causal")
    est = cost.estimate(cfg, n, dtype=dtype)
    expected, size = est.kv_cache_bytes, cost.DTYPE_BYTES[dtype]
    setup = (f"A GQA decoder: {layers} layers, {H} query heads, {G} key/value heads, head dim 128, {dtype}. "
             f"How many bytes does the KV cache of ONE sequence of {n} tokens take? (e.g. 1.5 GiB or 1610612736)")
    why = (f"2 (K and V) x {layers} layers x {G} kv heads x 128 x {size} bytes = {est.kv_bytes_per_token:,} bytes "
           f"per token; x {n} tokens = {expected:,} bytes = {expected / 2**30:.4g} GiB")

    def check(text):
        answer = parse_bytes(text)
        if 0.93 < answer / expected < 1.08 and not 0.99 < answer / expected < 1.01:
            return Verdict(False, f"Close, but mind the unit: 1 GiB = 2^30 bytes, 1 GB = 10^9 bytes. {why}")
        both = " (or the bytes per element)" if size == 2 else ""
        mistakes = [(expected * H / G, f"GQA caches only the {G} key/value heads, not the {H} query heads. {why}"),
                    (expected / 2, f"The cache holds keys AND values: x2{both}. {why}"),
                    (expected / size, f"Multiply by the bytes per element: {dtype} is {size} bytes. {why}"),
                    (expected / layers, f"Every layer keeps its own cache: x {layers} layers. {why}"),
                    (expected / n, f"That is the cache per token; multiply by the {n} tokens. {why}")]
        verdict = _first_mistake([answer], [expected], [([c], m) for c, m in mistakes], rtol=0.01,
                                 explain_right=why)
        return verdict or Verdict(False, f"Not quite. {why}")

    return Exercise("kvcache", "KV-cache bytes of a GQA model", setup,
                    [Part("bytes", check, str(expected))])


# --- written answers --------------------------------------------------------------------------------------------
def check_written(topic: str, text: str) -> Verdict:
    """Grade a free-text answer by the claims it states about the right subjects (``claims.grade``).

    Only a "correct" grade counts as right; "partial" and "incorrect" say which claims were found, which were
    contradicted or said of the wrong subject, and what was not checked.
    """
    rubric = RUBRICS[choice(topic, "topic", sorted(RUBRICS))]
    check_text(text, "text", non_empty=False)
    if len(text.split()) < 5:
        raise InvalidAnswer("write at least a sentence (5 words or more)")
    g = grade(rubric, text)
    return Verdict(g.label == "correct", explain(rubric, g) + f"\nModel answer: {rubric.model_answer}")


def written_topics(seed: int) -> list:
    """The written prompts in the order one session asks them: every prompt once before any repeats.

    >>> sorted(written_topics(0)) == sorted(RUBRICS)
    True
    """
    seed = non_negative_int(seed, "seed")
    return [str(t) for t in np.random.default_rng([seed, list(KINDS).index("written")]).permutation(sorted(RUBRICS))]


def written_exercise(topic: str) -> Exercise:
    rubric = RUBRICS[choice(topic, "topic", sorted(RUBRICS))]
    return Exercise("written", f"in your own words ({topic})", rubric.question + " (one line; Enter to submit)",
                    [Part("answer", lambda text: check_written(topic, text), rubric.model_answer)])


def _written_exercise(rng) -> Exercise:
    return written_exercise(str(rng.permutation(sorted(RUBRICS))[0]))


# --- sessions ------------------------------------------------------------------------------------------------
KINDS = {"softmax": _softmax_exercise, "mask": _mask_exercise, "row": _row_exercise, "shapes": _shapes_exercise,
         "cost": _cost_exercise, "kvcache": _kv_exercise, "written": _written_exercise}


def make(kind: str, seed: int) -> Exercise:
    """One exercise of ``kind``, the same for the same seed."""
    if not (isinstance(kind, str) and kind in KINDS):
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}"[:200])
    seed = non_negative_int(seed, "seed")
    return KINDS[kind](np.random.default_rng([seed, list(KINDS).index(kind)]))


MAX_EXERCISES = 1000


def exercises(seed: int, kinds=None, count: int | None = None) -> list:
    """``count`` exercises cycling through ``kinds`` (default: one of each kind, in the study guide's order); no
    written prompt repeats within a session (once each was asked, the cycle skips the written kind)."""
    seed = non_negative_int(seed, "seed")
    if kinds is not None and (not isinstance(kinds, (list, tuple)) or not kinds or
                              not all(isinstance(k, str) and k in KINDS for k in kinds)):
        raise ValueError(f"kinds must be a non-empty list of exercise kinds among {', '.join(KINDS)} (or None for "
                         f"all), got {kinds!r}"[:300])
    kinds = list(kinds or KINDS)
    count = len(kinds) if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_EXERCISES:
        raise ValueError(f"count must be an integer in [1, {MAX_EXERCISES}] (one session), got {count!r}")
    topics = written_topics(seed)
    if set(kinds) == {"written"} and count > len(topics):
        raise ValueError(f"count must be at most {len(topics)} for written answers (there are {len(topics)} "
                         f"written prompts and none repeats in a session), got {count}")
    out, i = [], 0
    while len(out) < count:
        kind = kinds[i % len(kinds)]
        n_written = sum(ex.kind == "written" for ex in out)
        if kind == "written":       # distinct prompts within a session: once all were asked, written is skipped
            if n_written < len(topics):
                out.append(written_exercise(topics[n_written]))
        else:
            out.append(make(kind, seed + i // len(kinds)))
        i += 1
    return out
