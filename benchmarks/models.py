"""Real models, attnlab vs the reference implementations on this CPU (same thread count): a table, not a test.

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/models.py [--repeats 3] [--new 16]

SmolLM2-135M greedy decoding (KV cache both sides) at prompt lengths 16 and 512: decode tokens/s of attnlab
(``models.generation.greedy``) and of transformers' model stepping its own KV cache (what
``generate(do_sample=False)`` runs; tests/test_models_smollm.py checks the tokens are the same); MiniLM encoding of 128
sentences vs sentence-transformers. Runs are interleaved (ours, theirs, ours, ...) and the median is reported.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers

from attnlab import data, models, planner
from attnlab.bench import machine_info
from attnlab.models.generation import greedy
from attnlab.models.smollm import smollm2_path


def median_interleaved(fns, repeats):
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def hf_greedy(hf, prompt, new):
    """transformers' greedy decoding with its KV cache (DynamicCache), the loop generate() runs: the prefill and
    the decode seconds timed apart."""
    with torch.no_grad():
        t0 = time.perf_counter()
        out = hf(torch.tensor(prompt[None]), use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        t1 = time.perf_counter()
        for _ in range(new - 1):
            out = hf(token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        return t1 - t0, time.perf_counter() - t1


def smollm(repeats, new):
    ours = models.load("smollm2-135m")
    path = smollm2_path()
    hf = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    text = " ".join(data.sentences() * 4)
    print(f"SmolLM2-135M greedy decoding, {new} new tokens, median of {repeats} interleaved runs")
    print(f"{'prompt':>6} {'attnlab tok/s':>14} {'transformers tok/s':>19} {'ratio':>6} {'prefill ours':>13} "
          f"{'prefill theirs':>15}")
    for L in (16, 512):
        prompt = ours.tokenize(text)[:L]
        mine, theirs = [], []
        for _ in range(repeats):                                   # interleaved
            g = greedy(ours, prompt, new)
            mine.append((g.prefill_seconds, g.decode_seconds))
            theirs.append(hf_greedy(hf, prompt, new))
        pa, da = (statistics.median(x) for x in zip(*mine))
        pb, db = (statistics.median(x) for x in zip(*theirs))
        a, b = (new - 1) / da, (new - 1) / db
        print(f"{L:>6} {a:>14.1f} {b:>19.1f} {a / b:>5.2f}x {pa * 1e3:>10.0f} ms {pb * 1e3:>12.0f} ms")


def minilm(repeats):
    from sentence_transformers import SentenceTransformer

    ours = models.load("all-MiniLM-L6-v2")
    st = SentenceTransformer(str(models.minilm_path()), device="cpu")
    texts = (data.sentences() * 3)[:128]
    med = median_interleaved({"ours": lambda: ours.encode(texts, batch_size=32),
                              "theirs": lambda: st.encode(texts, batch_size=32)}, repeats)
    print(f"\nMiniLM-L6 encoding of {len(texts)} sentences (batch 32), median of {repeats} interleaved runs")
    print(f"attnlab {med['ours'] * 1e3:.0f} ms   sentence-transformers {med['theirs'] * 1e3:.0f} ms   "
          f"time ratio {med['ours'] / med['theirs']:.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=16)
    args = parser.parse_args()
    threads = planner.default_threads()
    torch.set_num_threads(threads)
    info = machine_info(torch)
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)" for b in info["blas"])
    print(f"machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']} BLAS {blas}; torch "
          f"{info['torch']} ({info['torch_threads']} threads); {info['date_utc']}")
    smollm(args.repeats, args.new)
    minilm(args.repeats)


if __name__ == "__main__":
    main()
