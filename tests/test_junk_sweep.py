"""The junk-argument sweep (issue 14): every public function of the README's API table is called with each of its
parameters replaced, one at a time, by junk (None, strings, NaN, inf, negative and huge numbers, booleans,
wrong-shaped and wrong-dtype arrays, arbitrary objects). Each call must either succeed without turning finite
inputs into NaN, or raise TypeError/ValueError (MemoryBudgetError included) *from attnlab's own code* (never
from inside NumPy or torch) with a message that names the parameter; and it must return within the alarm."""

from __future__ import annotations

import math
import re
import signal
import traceback
from pathlib import Path

import numpy as np
import pytest

import attnlab
from attnlab import masks as M
from attnlab import scores as S
from attnlab.viz import explorer

SRC = str(Path(attnlab.__file__).resolve().parent)
ALARM_S = 20

JUNK = {"None": None, "str": "junk", "nan": math.nan, "inf": math.inf, "-1": -1, "0": 0, "1.5": 1.5, "True": True,
        "2**70": 2**70, "empty list": [], "object": object(), "wrong shape": np.ones(3), "int matrix": np.ones((2, 2), int),
        "nan array": np.full((4, 4), np.nan)}

rng = np.random.default_rng(0)
Q, K, V = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 3))
OUT, LSE = attnlab.flash_attention(Q, K, V, return_lse=True)
DOUT = np.ones_like(OUT)

def _filled_cache():
    cache = attnlab.KVCache()
    cache.append(K[None], V[None])
    return cache


# name -> (function, baseline keyword arguments); every parameter in the baseline is swept
CALLS = {
    "softmax": (attnlab.softmax, {"x": Q[0], "axis": -1, "mask": np.ones(4, bool)}),
    "logsumexp": (attnlab.logsumexp, {"x": Q[0], "axis": -1, "mask": np.ones(4, bool), "keepdims": False}),
    "scaled_dot_product_attention": (attnlab.scaled_dot_product_attention,
                                     {"q": Q, "k": K, "v": V, "mask": M.causal(), "scale": 0.5, "bias": np.zeros((5, 6)),
                                      "score_mod": S.alibi(2), "return_weights": False, "return_lse": False,
                                      "impl": "auto"}),
    "attention": (attnlab.attention, {"q": Q, "k": K, "v": V, "score": "scaled_dot", "mask": M.causal(),
                                      "bias": np.zeros((5, 6)), "return_weights": False, "scale": 0.5}),
    "additive_attention": (attnlab.additive_attention, {"q": Q, "k": K, "v": V, "w_q": np.ones((3, 4)),
                                                        "w_k": np.ones((3, 4)), "w_v": np.ones(3), "mask": M.causal(),
                                                        "return_weights": False}),
    "flash_attention": (attnlab.flash_attention, {"q": Q, "k": K, "v": V, "mask": M.causal(), "scale": 0.5,
                                                  "bias": np.zeros((5, 6)), "block_q": 2, "block_k": 3,
                                                  "return_lse": False, "threads": 1}),
    "flash_attention_backward": (attnlab.flash_attention_backward,
                                 {"dout": DOUT, "q": Q, "k": K, "v": V, "out": OUT, "lse": LSE, "mask": None,
                                  "scale": None, "block_q": 2, "block_k": 3, "threads": 1}),
    "attention_backward": (attnlab.attention_backward, {"dout": DOUT, "q": Q, "k": K, "v": V, "mask": M.causal(),
                                                        "scale": 0.5, "bias": np.zeros((5, 6))}),
    "attention_weights_for": (attnlab.attention_weights_for, {"q": Q, "k": K, "rows": [0, 2], "lse": LSE,
                                                              "mask": None, "scale": None}),
    "merge_attention": (attnlab.merge_attention, {"out_a": OUT, "lse_a": LSE, "out_b": OUT, "lse_b": LSE}),
    "plan": (attnlab.plan, {"q_shape": (1, 2, 64, 8), "k_shape": (1, 2, 64, 8), "mask": M.causal(),
                            "dtype": "float32", "impl": "auto", "return_weights": False, "threads": 1,
                            "block_q": 16, "block_k": 16, "budget": 2**20}),
    "cost.estimate": (attnlab.cost.estimate, {"model": "gpt2", "seq_len": 256, "batch": 1, "q_len": None,
                                              "dtype": "float16", "mask": "causal", "block_q": None, "block_k": None,
                                              "threads": 1}),
    "cost.model_config": (attnlab.cost.model_config, {"n_heads": 4, "d_model": 64, "head_dim": None,
                                                      "n_kv_heads": None, "n_layers": 2, "context": None,
                                                      "mask": "full", "name": "custom"}),
    "masks.parse": (M.parse, {"spec": "causal & window:2"}),
    "KVCache.append": (lambda **kw: attnlab.KVCache().append(**kw), {"k": K[None], "v": V[None]}),
    "KVCache.append to a cache": (_filled_cache().append, {"k": K[None], "v": V[None]}),
    "viz.explorer.ExplorerData.from_qkv": (explorer.ExplorerData.from_qkv,
                                           {"q": Q, "k": K, "v": V, "tokens": list("abcde"), "k_tokens": list("abcdef"),
                                            "scale": 0.5, "base_mask": None, "title": "t", "layer_names": None,
                                            "head_names": ["h0", "h1"], "meta": {}}),
    "viz.explorer.demo_data": (explorer.demo_data, {"n_tokens": 6, "seed": 0}),
    "masks.causal": (M.causal, {"align": "bottom_right"}),
    "masks.sliding_window": (M.sliding_window, {"left": 2, "right": 1, "align": "bottom_right"}),
    "masks.padding": (M.padding, {"lengths": [3, 5], "q_lengths": [2, 4]}),
    "masks.prefix_lm": (M.prefix_lm, {"prefix_len": 2, "align": "bottom_right"}),
    "masks.document": (M.document, {"doc_ids": [0, 0, 1, 1]}),
    "masks.dilated": (M.dilated, {"stride": 2, "align": "bottom_right"}),
    "masks.global_tokens": (M.global_tokens, {"indices": [0, 3], "align": "bottom_right"}),
    "masks.random_blocks": (M.random_blocks, {"block_size": 2, "n_random": 1, "seed": 0, "align": "bottom_right"}),
    "masks.from_array": (M.from_array, {"array": np.tri(4, dtype=bool)}),
    "masks.from_function": (M.from_function, {"fn": lambda b, h, q, kv: q >= kv, "batch": None, "heads": None}),
    "Mask.to_array": (M.causal().to_array, {"Lq": 4, "Lk": 5, "batch": None, "heads": None}),
    "Mask.show": (M.causal().show, {"Lq": 4, "Lk": 5, "b": 0, "h": 0, "allowed": "#", "blocked": "."}),
    "Mask.blocks": (M.causal().blocks, {"Lq": 8, "Lk": 8, "block_q": 2, "block_k": 4, "b": 0, "h": 0}),
    "scores.alibi": (S.alibi, {"n_heads": 4, "symmetric": False}),
    "scores.softcap": (S.softcap, {"cap": 5.0}),
    "scores.relative_bias": (S.relative_bias, {"table": np.zeros((2, 5)), "max_distance": 2}),
    "scores.rotary": (S.rotary, {"x": Q, "positions": None, "base": 10000.0, "style": "half"}),
    "MultiHeadAttention": (attnlab.MultiHeadAttention, {"d_model": 8, "n_heads": 2, "n_kv_heads": 1, "bias": True,
                                                        "seed": 0, "kdim": None, "vdim": None, "head_dim": None,
                                                        "rope_base": None}),
    "MultiHeadAttention.__call__": (attnlab.MultiHeadAttention(8, 2, seed=0),
                                    {"x": rng.standard_normal((1, 3, 8)), "context": None, "mask": M.causal(),
                                     "cache": None, "return_weights": False, "bias": None}),
}


# --- the second sweep (issue 14, remaining): diagnostics, learn, distributed, faithfulness, record --------------
from attnlab import diagnostics as D  # noqa: E402
from attnlab import faithfulness as FA  # noqa: E402
from attnlab import record as R  # noqa: E402
from attnlab.distributed import comm as DC  # noqa: E402
from attnlab.distributed import layout as DL  # noqa: E402
from attnlab.distributed import ring as DR  # noqa: E402
from attnlab.learn import cheatsheet as CS  # noqa: E402
from attnlab.learn import explain as EX  # noqa: E402
from attnlab.learn import practice as PR  # noqa: E402

W = attnlab.softmax(rng.standard_normal((2, 4, 4)), axis=-1)            # (H, Lq, Lk) attention weights
W4 = W[None].repeat(2, axis=0)                                           # (layers, H, L, L)
IDS = np.array([3, 5, 3, 5])


class _TinyModel:
    """What detect_head_types reads of a model: a vocabulary size and attentions(ids) -> (_, weights)."""
    vocab_size = 50

    def attentions(self, ids):
        L = len(ids)
        return None, np.full((1, 1, L, L), 1.0 / L)


def _in_ring(fn):
    """``fn`` called in a one-rank gloo group set up for the call (no peers: nothing can hang)."""
    def call(**kwargs):
        import torch.distributed as dist

        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            out = fn(**kwargs)
            return out.detach().numpy() if hasattr(out, "detach") else out
        finally:
            dist.destroy_process_group()
    return call


_ring = _in_ring(DR.ring_attention)


def _torch(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


def _record(**kwargs):
    return R.AttentionRecord(**kwargs)


def _select_heads(heads):
    rec = R.AttentionRecord(layer=0, kind="self", scale=0.5, weights=W[None].copy(), q=Q[None].copy(),
                            k=K[None, :1].copy())
    rec.select_heads(heads)
    return rec.weights


def _session(**kwargs):
    """run_session with its score file in a fresh folder (a junk score_file would be a file in the working
    folder; its type is checked in test_junk_classes.py)."""
    import tempfile
    from attnlab.learn import session
    with tempfile.TemporaryDirectory() as folder:
        return session.run_session(**kwargs, score_file=Path(folder) / "score.json")


_MINILM = {}


def _minilm():
    if not _MINILM:
        import os
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from attnlab import models
        _MINILM["m"] = models.load("all-MiniLM-L6-v2")
    return _MINILM["m"]


MORE_CALLS = {
    "diagnostics.row_entropy": (D.row_entropy, {"weights": W, "mask": np.tri(4, dtype=bool), "normalized": True}),
    "diagnostics.entropy": (D.entropy, {"weights": W, "mask": M.causal(), "normalized": True}),
    "diagnostics.effective_tokens": (D.effective_tokens, {"weights": W, "mask": None}),
    "diagnostics.top1_mass": (D.top1_mass, {"weights": W, "mask": None}),
    "diagnostics.sink_score": (D.sink_score, {"weights": W, "indices": (0, -1), "mask": None}),
    "diagnostics.mean_distance": (D.mean_distance, {"weights": W, "mask": None}),
    "diagnostics.offset_score": (D.offset_score, {"weights": W, "offset": -1, "mask": None}),
    "diagnostics.previous_token_score": (D.previous_token_score, {"weights": W, "mask": None}),
    "diagnostics.head_id": (D.head_id, {"layer": 1, "head": 2}),
    "diagnostics.delimiter_positions": (D.delimiter_positions, {"tokens": ["a", ",", "b", "."]}),
    "diagnostics.head_type": (D.head_type, {"scores": {"previous": 0.7, "sink": 0.1}, "threshold": 0.5}),
    "diagnostics.flags": (D.flags, {"entropy_": 0.9, "top1": 0.1, "type_": "-", "functional": 0.0, "diffuse": 0.85,
                                    "concentrated": 0.8, "typed": 0.5}),
    "diagnostics.head_table": (D.head_table, {"weights": W4, "mask": None, "sink_indices": (0,), "delimiters": (1,),
                                              "ids": IDS, "typed": 0.5}),
    "diagnostics.format_table": (D.format_table, {"rows": D.head_table(W4)}),
    "diagnostics.duplicate_token_score": (D.duplicate_token_score, {"weights": W, "ids": IDS}),
    "diagnostics.induction_score": (D.induction_score, {"weights": W, "ids": IDS}),
    "diagnostics.repeated_random_tokens": (D.repeated_random_tokens, {"vocab_size": 50, "n": 4, "seed": 0,
                                                                      "prefix": (1,)}),
    "diagnostics.head_types": (D.head_types, {"weights": W4, "ids": IDS, "threshold": 0.4}),
    "diagnostics.detect_head_types": (D.detect_head_types, {"model": _TinyModel(), "n": 3, "seed": 0,
                                                            "threshold": 0.4, "prefix": ()}),
    "diagnostics.rollout": (D.rollout, {"weights": W4, "residual": 0.5}),
    "faithfulness.kendall_tau": (FA.kendall_tau, {"x": [1.0, 2.0, 3.0], "y": [1.0, 3.0, 2.0]}),
    "faithfulness.spearman_rho": (FA.spearman_rho, {"x": [1.0, 2.0, 3.0], "y": [1.0, 3.0, 2.0]}),
    "faithfulness.rankdata": (FA.rankdata, {"x": [3.0, 1.0, 2.0]}),
    "faithfulness.importance": (lambda **kw: FA.importance(model=_minilm(), **kw), {"text": "The dog chased a ball."}),
    "faithfulness.compare": (lambda **kw: FA.compare(model=_minilm(), **kw),
                             {"texts": ["The dog chased a ball."], "progress": None}),
    "record.AttentionRecord": (_record, {"layer": 0, "kind": "self", "scale": 0.5, "weights": W[None]}),
    "record.AttentionRecord.select_heads": (_select_heads, {"heads": [1, 0]}),
    "record.Recorder": (R.Recorder, {"layers": [0], "fields": ("weights",), "heads": [0]}),
    "merge.merge_attention": (attnlab.merge.merge_attention, {"out_a": OUT, "lse_a": LSE, "out_b": OUT, "lse_b": LSE}),
    "distributed.ring_attention": (_ring, {"q": _torch(Q[None]), "k": _torch(K[None, :, :5]),
                                           "v": _torch(V[None, :, :5]), "mask": None, "causal": True,
                                           "layout": "zigzag", "scale": 0.5, "timeout": 10, "return_lse": False,
                                           "stats": None}),
    "distributed.gather": (_in_ring(DC.gather), {"x": _torch(Q), "layout": "contiguous", "dim": -2, "timeout": 10,
                                                 "length": 5}),
    "distributed.scatter": (_in_ring(DC.scatter), {"x": _torch(Q), "layout": "contiguous", "dim": -2, "timeout": 10}),
    "distributed.work_balance": (DR.work_balance, {"L": 8, "world": 2, "layout": "zigzag", "mask": None,
                                                   "causal": True, "B": 1, "H": 1}),
    "distributed.sub_blocks": (DR.sub_blocks, {"mask": M.causal(), "L": 8, "q_ranges": [(0, 2), (6, 8)],
                                               "k_ranges": [(2, 6)], "B": 1, "H": 1}),
    "distributed.layout.positions": (DL.positions, {"rank": 0, "world": 2, "L": 8, "layout": "zigzag"}),
    "distributed.layout.chunk_bounds": (DL.chunk_bounds, {"L": 7, "n": 3}),
    "distributed.layout.local_lengths": (DL.local_lengths, {"world": 2, "L": 8, "layout": "zigzag"}),
    "distributed.layout.shard": (DL.shard, {"x": Q, "rank": 0, "world": 2, "layout": "contiguous", "dim": -2}),
    "distributed.layout.unshard": (DL.unshard, {"parts": [Q[:, :3], Q[:, 3:]], "layout": "contiguous", "dim": -2}),
    "learn.practice.parse_numbers": (PR.parse_numbers, {"text": "0.2, 0.8", "count": 2}),
    "learn.practice.parse_cells": (PR.parse_cells, {"text": "(0,1) (1,0)", "n": 3}),
    "learn.practice.parse_shape": (PR.parse_shape, {"text": "(2, 3)"}),
    "learn.practice.parse_bytes": (PR.parse_bytes, {"text": "2 KiB"}),
    "learn.practice.mha_shapes": (PR.mha_shapes, {"B": 1, "L": 4, "d_model": 8, "H": 2}),
    "learn.practice.check_written": (PR.check_written, {"topic": sorted(PR.RUBRICS)[0],
                                                        "text": "attention weights sum to one over the keys"}),
    "learn.practice.written_topics": (PR.written_topics, {"seed": 0}),
    "learn.practice.written_exercise": (PR.written_exercise, {"topic": sorted(PR.RUBRICS)[0]}),
    "learn.practice.make": (PR.make, {"kind": "softmax", "seed": 0}),
    "learn.practice.exercises": (PR.exercises, {"seed": 0, "kinds": ["softmax", "mask"], "count": 2}),
    "learn.explain.parse_matrix": (EX.parse_matrix, {"text": "1, 0; 0 2", "name": "q"}),
    "learn.explain.to_matrix": (EX.to_matrix, {"rows": [[1, 0], [0, 2]], "name": "q"}),
    "learn.explain.parse_mask": (EX.parse_mask, {"spec": "causal", "Lq": 3, "Lk": 3}),
    "learn.explain.random_inputs": (EX.random_inputs, {"seed": 0, "Lq": 2, "Lk": 3, "d": 2, "dv": 2}),
    "learn.explain.additive_params": (EX.additive_params, {"d_q": 2, "d_k": 2, "attn_dim": 3, "seed": 0}),
    "learn.explain.worked_example": (EX.worked_example, {"q": [[1, 0], [0, 1]], "k": [[1, 1], [0, 1], [1, 0]],
                                                         "v": [[1, 2], [3, 4], [5, 6]], "mask": "causal",
                                                         "score": "dot", "w_q": None, "w_k": None, "w_v": None,
                                                         "seed": 0}),
    "learn.explain.format_array": (EX.format_array, {"a": [[1.0, 2.0]]}),
    "learn.explain.render": (EX.render, {"ex": EX.worked_example([[1, 0]], [[1, 1]], [[2, 3]])}),
    "learn.cheatsheet.to_markdown": (CS.to_markdown, {"sheet": CS.build()}),
    "learn.session.run_session": (_session, {"exercises": [PR.make("softmax", 0)], "seed": 0, "read": None,
                                             "answers": ["0.5, 0.5"], "write": lambda text: None}),
}
CALLS.update(MORE_CALLS)
# the second sweep's functions also get a size that fits in an int64 but not in memory: it must be refused (by the
# budget, naming the argument) or be harmless. (The first sweep's functions do not, yet: cost.estimate(seq_len=2**40)
# takes over 20 s and flash_attention_backward(scale=2**40) with the lse of another scale returns inf; both are
# other helpers' files.)
HUGE = {"2**40": 2**40}

# names a message may use for a parameter
ALIASES = {"q": ("query", "q"), "k": ("key", "k"), "v": ("value", "v"), "prefix_len": ("n", "prefix_len"),
           "Lq": ("Lq",), "Lk": ("Lk",), "array": ("mask array", "array"), "q_shape": ("q_shape",),
           "block_q": ("block_q", "block sizes"), "block_k": ("block_k", "block sizes"),
           "score": ("score",), "x": ("x",), "doc_ids": ("doc_ids",),
           "rows": ("rows", "q"), "text": ("text", "q")}  # explain's parsers name their input by the caller's name="q"


# messages of NumPy's and Python's own failures: seeing one means attnlab let the junk through unchecked
NUMPY_MESSAGES = ("truth value of an array", "unhashable type", "has no len()", "not understood", "Cannot interpret",
                  "non-broadcastable output operand", "invalid literal", "object is not iterable",
                  "not supported between instances")


def _finite(value) -> bool:
    arrays = value if isinstance(value, tuple) else (value,)
    return all(np.isfinite(np.asarray(a, dtype=float)).all() or np.isneginf(np.asarray(a, dtype=float)).any()
               for a in arrays if isinstance(a, np.ndarray) and a.dtype.kind == "f")


def _alarm(signum, frame):
    raise TimeoutError(f"the call did not return within {ALARM_S} s")


def _raised_in_attnlab(err: BaseException) -> bool:
    """The innermost frame of the traceback is attnlab's own code (attnlab validated the argument)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(SRC)


# Data arrays: NaN/inf in them is data, which propagates as documented (docs/robustness.md), not a parameter
# silently accepted.
DATA = {"x", "q", "k", "v", "bias", "dout", "out", "lse", "out_a", "lse_a", "out_b", "lse_b", "table", "array",
        "w_q", "w_k", "w_v"}
ARRAY_JUNK = {"empty list", "wrong shape", "int matrix", "nan array"}

# Parameters the tiled kernel (attnlab.kernel, another helper's files) still takes without a clear error; each
# case must still fail (strict xfail) so that the entry is removed once the kernel validates it.
KERNEL_OWNED: set = set()


def _cases():
    for name, (_, kwargs) in CALLS.items():
        for param in kwargs:
            marks = [pytest.mark.xfail(strict=True, reason="validated in attnlab.kernel: not yet")] \
                if (name, param) in KERNEL_OWNED else []
            yield pytest.param(name, param, marks=marks, id=f"{name}-{param}")


@pytest.mark.parametrize("name, param", list(_cases()))
def test_junk_in_every_parameter_is_refused_clearly_or_harmless(name, param):
    fn, kwargs = CALLS[name]
    problems = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for label, junk in {**JUNK, **(HUGE if name in MORE_CALLS else {})}.items():
            signal.alarm(ALARM_S)
            try:
                result = fn(**{**kwargs, param: junk})
            except (TypeError, ValueError) as err:
                names = ALIASES.get(param, (param,))
                if label in ARRAY_JUNK:                 # a wrong shape may be reported by the argument it clashes with
                    names = tuple(n for p in kwargs for n in ALIASES.get(p, (p,))) + ("scores", "shape")
                if isinstance(err, PR.InvalidAnswer) and param in ("text", "count"):
                    continue                            # a learner's unreadable answer: the message is for them
                internal = [f for f in NUMPY_MESSAGES if f in str(err)]
                if internal:
                    problems.append(f"{param}={label}: a NumPy/Python internal message ({internal[0]!r}): {err}")
                elif not _raised_in_attnlab(err):
                    frame = traceback.extract_tb(err.__traceback__)[-1]
                    problems.append(f"{param}={label}: {type(err).__name__} raised inside "
                                    f"{Path(frame.filename).name}:{frame.lineno}: {err}")
                elif not any(re.search(rf"\b{re.escape(n)}\b", str(err)) for n in names):
                    problems.append(f"{param}={label}: the message does not name {param}: {err}")
            except Exception as err:                    # noqa: BLE001  (anything else is the defect looked for)
                problems.append(f"{param}={label}: {type(err).__name__}: {err}")
            else:
                if not (param in DATA and label in ("nan", "inf", "nan array")) and not _finite(result):
                    problems.append(f"{param}={label}: accepted, and the result holds NaN/inf")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not problems, f"{name}:\n" + "\n".join(problems)
