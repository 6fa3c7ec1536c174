"""The guide's claims about causal attention measured on SmolLM2-135M: the numbers in docs/failure-modes.md.

    PYTHONPATH=src .venv/bin/python benchmarks/smollm_claims.py
"""

import time

import numpy as np

from attnlab import diagnostics, masks, models
from attnlab.data import sentences
from attnlab.models.decoder_probes import induction_survey, next_token_agreement, planted_fact, sink_shares

TEXTS = ["The cat sat on the mat because it was tired.", "Attention lets every token look at every other token.",
         "In 1969 two astronauts walked on the Moon.", "She opened the door, and the dog ran out into the rain.",
         "Prices rose sharply after the storm closed the port.", "def mean(xs):\n    return sum(xs) / len(xs)"]


def main():
    t0 = time.perf_counter()
    m = models.load("smollm2-135m")
    s = sink_shares(m, TEXTS, m.tokenizer.bos_id)
    print(f"attention sinks: mean weight on position 0 (queries 1.., {len(TEXTS)} texts)")
    print("layer  without BOS (mean / max head)   with BOS (mean / max head)")
    for layer in range(0, m.n_layers, 3):
        print(f"{layer:5d}  {s.without_bos[layer].mean():.2f} / {s.without_bos[layer].max():.2f}"
              f"                     {s.with_bos[layer].mean():.2f} / {s.with_bos[layer].max():.2f}")
    print(f"all layers: without BOS {s.without_bos.mean():.2f}, with BOS {s.with_bos.mean():.2f}; heads >= 0.5: "
          f"{(s.without_bos >= 0.5).sum()} / {(s.with_bos >= 0.5).sum()} of {s.with_bos.size}")
    ind = induction_survey(m, n=30, seeds=(0, 1, 2), prefix=(m.tokenizer.bos_id,))
    print(f"\ninduction heads (30 random tokens repeated, BOS first, 3 seeds): top {ind.format(6)}")
    print(f"heads with score >= 0.4: {(ind.scores >= 0.4).sum()} of {ind.scores.size}; "
          f"median head {np.median(ind.scores):.3f}")
    ent = []
    for n in (8, 32, 128):
        text = " ".join(TEXTS * 8)
        ids = m.tokenize(text)[:n]
        w = m.attentions(ids)[1]
        ent.append((n, diagnostics.entropy(w, mask=masks.causal()).mean()))
    print("\nentropy vs length (normalized, mean of heads, real text): "
          + ", ".join(f"L={n}: {e:.3f}" for n, e in ent))
    r = planted_fact(m, filler_sentences=(0, 16, 64, 160, 320), trials=3)
    print("\nplanted fact (4-digit code, teacher forced) vs filler tokens between fact and question:")
    for d, a in zip(r.distances, r.accuracy):
        print(f"  {d:5d} tokens  accuracy {a:.2f} ({r.trials} trials)")
    texts = sentences()
    agree = next_token_agreement(m, texts)
    print(f"\nnext-token prediction, {len(agree.items)} of {len(texts)} project sentences: Kendall tau-b per "
          f"sentence over the context tokens")
    print(agree.table())
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
