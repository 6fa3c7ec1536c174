"""Attention entropy against length on real text, per layer: SmolLM2-135M (64..2048 tokens) and all-MiniLM-L6-v2
(64..512, its limit), the first n tokens of attnlab.data.passage(). The table and figure in docs/failure-modes.md.

    PYTHONPATH=src .venv/bin/python benchmarks/entropy_length.py --out docs/figures

Writes entropy-length-<model>.json per model and redraws entropy-length.png from the JSON files in --out, so one
model can be rerun alone (--models smollm2-135m).
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from attnlab import models
from attnlab.models.entropy_length import EntropyByLength, entropy_by_length, entropy_figure

LENGTHS = {"smollm2-135m": (64, 128, 256, 512, 1024, 2048), "all-MiniLM-L6-v2": (64, 128, 256, 512)}
SHOWN = {"smollm2-135m": (0, 1, 3, 6, 12, 18, 24, 29), "all-MiniLM-L6-v2": (0, 1, 2, 3, 4, 5)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(LENGTHS), choices=list(LENGTHS))
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    for name in args.models:
        t0 = time.perf_counter()
        m = models.load(name)
        r = entropy_by_length(m, LENGTHS[name], on_length=lambda n: print(f"  n = {n} done", flush=True))
        print(f"\n{m.name}: entropy per layer (mean over heads and over query rows seeing >= 2 keys)")
        print(r.table(SHOWN[name]))
        deep = r.normalized[:, 1:].mean(axis=(1, 2))
        print("all layers but 0, normalized: " + ", ".join(f"n={n}: {v:.3f}" for n, v in zip(r.lengths, deep)))
        print("effective tokens exp(nats), mean over heads, per layer at the longest n: "
              + " ".join(f"L{l} {np.exp(r.nats[-1, l]).mean():.1f}" for l in SHOWN[name]))
        (out / f"entropy-length-{name}.json").write_text(json.dumps(
            {"model": r.model, "lengths": r.lengths.tolist(), "nats": r.nats.tolist(),
             "normalized": r.normalized.tolist(), "reference": r.reference.tolist()}))
        print(f"({time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f})")
    found = []
    for name in LENGTHS:
        f = out / f"entropy-length-{name}.json"
        if f.is_file():
            d = json.loads(f.read_text())
            found.append(EntropyByLength(d["model"], *(np.array(d[k]) for k in ("lengths", "nats", "normalized",
                                                                                "reference"))))
    entropy_figure(found).savefig(out / "entropy-length.png", dpi=110)
    print(f"wrote {out / 'entropy-length.png'}")


if __name__ == "__main__":
    main()
