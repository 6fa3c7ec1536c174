"""Calibration of attnlab.diagnostics' head types and failure flags on real models (docs/failure-modes.md,
"Calibration"): all-MiniLM-L6-v2 (encoder) and SmolLM2-135M (decoder) over the 60 project sentences, and the
decoder on repeated random tokens (induction heads).

For every (head, sentence) pair it runs ``diagnostics.head_table`` exactly as ``attnlab inspect`` does (sinks
[CLS]+[SEP] or position 0, punctuation as delimiters, the tokens for the induction score) and prints:
the percentiles of each statistic; how the function scores are distributed near the type threshold; how many
concentrated pairs (top-1 >= CONCENTRATED_TOP1) each function explains and how many stay unexplained at type
thresholds 0.4 / 0.5 / 0.6; which heads get which type on most sentences.

    PYTHONPATH=src .venv/bin/python benchmarks/head_calibration.py [--limit N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import numpy as np

from attnlab import data, diagnostics as dg, models

COLUMNS = ("entropy", "top1", "sink", "previous", "next", "same", "delimiter")
FUNCTIONS = ("sink", "previous", "next", "same", "delimiter", "induction")


def survey(model, texts):
    """(texts, layers, H) HeadStats of every head on every text."""
    sinks = (0,) if model.causal else (0, -1)
    out = []
    for text in texts:
        parts = model.attention_parts(text)
        rows = dg.head_table(parts.weights, mask=parts.base_mask, sink_indices=sinks,
                             delimiters=dg.delimiter_positions(parts.tokens), ids=parts.tokens)
        out.append(rows)
    return out


def report(name, tables):
    rows = [r for t in tables for r in t]
    n_pairs = len(rows)
    print(f"\n== {name}: {len(tables)} sentences, {n_pairs} (head, sentence) pairs")
    print(f"{'statistic':<10} " + " ".join(f"{'p' + str(q):>5}" for q in (5, 25, 50, 75, 90, 95, 99)))
    for c in COLUMNS:
        x = np.array([getattr(r, c) for r in rows])
        print(f"{c:<10} " + " ".join(f"{v:>5.2f}" for v in np.percentile(x, [5, 25, 50, 75, 90, 95, 99])))
    print("share of pairs by function score:   [0.3,0.4)  [0.4,0.5)  [0.5,0.6)  >=0.6")
    for c in FUNCTIONS[:5]:
        x = np.array([getattr(r, c) for r in rows])
        bands = [((x >= a) & (x < b)).mean() for a, b in ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6))] + [(x >= 0.6).mean()]
        print(f"  {c:<10}              " + "  ".join(f"{v:>9.1%}" for v in bands))
    conc = [r for r in rows if r.top1 >= dg.CONCENTRATED_TOP1]
    print(f"concentrated pairs (top1 >= {dg.CONCENTRATED_TOP1}): {len(conc)} ({len(conc) / n_pairs:.1%}); "
          f"typed by: {dict(Counter(r.type for r in conc))}")
    for th in (0.4, 0.5, 0.6):
        left = sum(dg.head_type(_scores(r), th) == "-" for r in conc)
        typed = np.mean([dg.head_type(_scores(r), th) != "-" for r in rows])
        print(f"  type threshold {th}: {typed:.1%} of pairs typed, {left} concentrated pairs unexplained "
              f"(over_concentrated)")
    diffuse = np.mean([r.entropy >= dg.DIFFUSE_ENTROPY for r in rows])
    print(f"diffuse pairs (entropy >= {dg.DIFFUSE_ENTROPY}): {diffuse:.1%}; over_concentrated pairs: "
          f"{np.mean(['over_concentrated' in r.flags for r in rows]):.2%}")
    n_layers = max(r.layer for r in rows) + 1
    n_heads = max(r.head for r in rows) + 1
    kinds = {}
    for layer in range(n_layers):
        for head in range(n_heads):
            types = Counter(t[layer * n_heads + head].type for t in tables)
            kind, count = types.most_common(1)[0]
            if kind != "-" and count > len(tables) / 2:
                kinds.setdefault(kind, []).append(f"{dg.head_id(layer, head)} ({count / len(tables):.0%})")
    for kind, heads in kinds.items():
        shown = heads if kind != "sink" else heads[:6] + [f"... {len(heads)} heads in all"]
        print(f"  typed {kind} on most sentences: {', '.join(shown)}")
    unexplained = [(t_i, r) for t_i, t in enumerate(tables) for r in t if "over_concentrated" in r.flags]
    for t_i, r in unexplained[:5]:
        print(f"  over_concentrated: {r.id} on sentence {t_i}: top1 {r.top1:.2f}, sink {r.sink:.2f}, prev "
              f"{r.previous:.2f}, same {r.same:.2f}")


def _scores(r):
    return {c: getattr(r, c) for c in FUNCTIONS}


def induction(model, n=30, seeds=(0, 1, 2)):
    """The decoder on n random tokens repeated once: which heads are typed induction, and are any flagged."""
    counts, flagged, scores = Counter(), Counter(), []
    for seed in seeds:
        ids = dg.repeated_random_tokens(model.vocab_size, n, seed)
        _, w = model.attentions(ids)
        rows = dg.head_table(w, sink_indices=(0,), ids=ids)
        for r in rows:
            counts[r.id] += r.type == "induction"
            flagged[r.id] += "over_concentrated" in r.flags and r.induction is not None and r.induction >= 0.3
        scores.append([r.induction for r in rows])
    best = [h for h, c in counts.most_common() if c == len(seeds)]
    print(f"\n== {model.name} on {n} random tokens repeated once, seeds {seeds}: heads typed induction on every "
          f"seed: {', '.join(best) or '-'}; induction score p50 {np.median(scores):.2f}, p99 "
          f"{np.percentile(scores, 99):.2f}; heads with induction >= 0.3 flagged over_concentrated: "
          f"{sum(flagged.values())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, help="first N sentences only")
    args = ap.parse_args()
    texts = data.sentences()[: args.limit]
    print(f"thresholds: TYPE_SCORE {dg.TYPE_SCORE}, CONCENTRATED_TOP1 {dg.CONCENTRATED_TOP1}, DIFFUSE_ENTROPY "
          f"{dg.DIFFUSE_ENTROPY}; load average {os.getloadavg()[0]:.1f}")
    for name in ("all-MiniLM-L6-v2", "smollm2-135m"):
        t0 = time.perf_counter()
        model = models.load(name)
        report(model.name, survey(model, texts))
        if model.causal:
            induction(model)
        print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
