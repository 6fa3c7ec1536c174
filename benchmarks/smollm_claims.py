"""The guide's claims about causal attention measured on SmolLM2-135M: the numbers in docs/failure-modes.md.

Each section runs on its own (one lock-holding run of a few minutes each on a 2-core machine):

    PYTHONPATH=src .venv/bin/python benchmarks/smollm_claims.py sinks induction agreement
    PYTHONPATH=src .venv/bin/python benchmarks/smollm_claims.py retrieval --facts 1 --out docs/figures
    PYTHONPATH=src .venv/bin/python benchmarks/smollm_claims.py retrieval --facts 4 --out docs/figures

``retrieval`` writes its table as JSON to --out (smollm-retrieval-<facts>-pad<pad>-seed<seed>-<fillers>.json),
pools every such JSON there by facts and --pad-to, merging points of equal filler length (another --seed adds
trials), and redraws smollm-retrieval.png from the pools; ``redraw`` only pools and redraws; ``examples`` prints
what the model writes instead of a code. Entropy against length is benchmarks/entropy_length.py; the exact runs
behind the docs are listed in docs/failure-modes.md section 4.
"""

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from attnlab import models
from attnlab.data import sentences
from attnlab.models.decoder_probes import (FactRetrieval, RetrievalPoint, fact_retrieval, induction_survey,
                                           next_token_agreement, pool_retrievals, retrieval_figure,
                                           sink_shares)

TEXTS = ["The cat sat on the mat because it was tired.", "Attention lets every token look at every other token.",
         "In 1969 two astronauts walked on the Moon.", "She opened the door, and the dog ran out into the rain.",
         "Prices rose sharply after the storm closed the port.", "def mean(xs):\n    return sum(xs) / len(xs)"]
FILLER = (0, 64, 256, 1024, 2048)


def sinks(m, args):
    s = sink_shares(m, TEXTS, m.tokenizer.bos_id)
    print(f"attention sinks: mean weight on position 0 (queries 1.., {len(TEXTS)} texts)")
    print("layer  without BOS (mean / max head)   with BOS (mean / max head)")
    for layer in range(0, m.n_layers, 3):
        print(f"{layer:5d}  {s.without_bos[layer].mean():.2f} / {s.without_bos[layer].max():.2f}"
              f"                     {s.with_bos[layer].mean():.2f} / {s.with_bos[layer].max():.2f}")
    print(f"all layers: without BOS {s.without_bos.mean():.2f}, with BOS {s.with_bos.mean():.2f}; heads >= 0.5: "
          f"{(s.without_bos >= 0.5).sum()} / {(s.with_bos >= 0.5).sum()} of {s.with_bos.size}")


def induction(m, args):
    ind = induction_survey(m, n=30, seeds=(0, 1, 2), prefix=(m.tokenizer.bos_id,))
    print(f"induction heads (30 random tokens repeated, BOS first, 3 seeds): top {ind.format(6)}")
    print(f"heads with score >= 0.4: {(ind.scores >= 0.4).sum()} of {ind.scores.size}; "
          f"median head {np.median(ind.scores):.3f}")


def dot():
    print(".", end="", flush=True)


def retrieval(m, args):
    r = fact_retrieval(m, args.filler, facts=args.facts, trials=args.trials, seed=args.seed, on_trial=dot,
                       pad_to=args.pad_to)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"smollm-retrieval-{r.facts}-pad{r.pad_to}-seed{args.seed}-{'-'.join(map(str, args.filler))}.json"
     ).write_text(json.dumps(asdict(r), indent=1))
    pad = f", prose before the facts up to ~{r.pad_to} tokens" if r.pad_to else ""
    print(f"\nplanted facts{pad}: {r.facts} fact(s) 'The code of NAME is DDDD.', real prose (attnlab.data.passage), "
          f"'Remember: the code of NAME is', teacher forced, {r.trials} trials per point (seed {args.seed})")
    print(r.table())
    redraw(m, args)


def redraw(m, args):
    """Pool every saved retrieval JSON in --out by (facts, pad_to), print the pools, redraw the figure."""
    out = Path(args.out)
    runs = {}
    for f in sorted(out.glob("smollm-retrieval-*-seed*.json")):
        d = json.loads(f.read_text())
        runs.setdefault((d["facts"], d.get("pad_to", 0)), []).append(
            FactRetrieval(d["facts"], d["trials"], [RetrievalPoint(**p) for p in d["points"]], d.get("pad_to", 0)))
    pooled = [pool_retrievals(runs[k]) for k in sorted(runs)]
    for p in pooled:
        print(f"\npooled over the saved runs: {p.facts} fact(s)" + (f", padded to ~{p.pad_to}" if p.pad_to else ""))
        print(p.table())
    path = out / "smollm-retrieval.png"
    retrieval_figure(pooled, m.name).savefig(path, dpi=120)
    print(f"wrote {path}")


def examples(m, args):
    """What the model writes instead of the code: greedy continuations of one-fact prompts (Anna, 4821) with
    ~256 filler tokens from a few starting sentences."""
    from attnlab.data import passage
    from attnlab.models.decoder_probes import fact_prompt, filler_text, split_sentences
    from attnlab.models.generation import greedy

    sentences = split_sentences(passage())
    for start in (0, 20, 40, 60, 80, 100):
        filler = filler_text(sentences, start, 256, lambda s: len(m.tokenize(s)))
        g = greedy(m, m.tokenize(fact_prompt(["Anna"], ["4821"], 0, filler)), 8)
        print(f"  filler from sentence {start:3d}: ...{filler[-40:]!r} -> {m.tokenizer.decode(g.new)!r}")


def agreement(m, args):
    texts = sentences()
    agree = next_token_agreement(m, texts)
    print(f"next-token prediction, {len(agree.items)} of {len(texts)} project sentences: Kendall tau-b per "
          f"sentence over the context tokens")
    print(agree.table())


SECTIONS = {"sinks": sinks, "induction": induction, "retrieval": retrieval, "redraw": redraw,
            "examples": examples, "agreement": agreement}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sections", nargs="+", choices=SECTIONS)
    ap.add_argument("--facts", type=int, default=4, help="retrieval: facts listed (1 = no distractor)")
    ap.add_argument("--trials", type=int, default=12, help="retrieval: trials per filler length")
    ap.add_argument("--filler", type=int, nargs="+", default=FILLER, help="retrieval: filler tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pad-to", type=int, default=0, help="retrieval: prose before the facts up to this length")
    ap.add_argument("--out", default="docs/figures", help="retrieval: folder for the JSON and the figure")
    args = ap.parse_args()
    t0 = time.perf_counter()
    m = models.load("smollm2-135m")
    print(f"{m.name}; load average {os.getloadavg()[0]:.1f}")
    for name in args.sections:
        print(f"\n== {name}")
        SECTIONS[name](m, args)
    print(f"\n({time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
