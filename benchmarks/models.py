"""Real models, attnlab vs the reference implementations on this CPU (same thread count): a table, not a test.

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/models.py [--repeats 3] [--new 16] [--only smollm,minilm,whisper]
        [--unset-openblas-env]

SmolLM2-135M greedy decoding (KV cache both sides) at prompt lengths 16 and 512: decode tokens/s of attnlab
(``models.generation.greedy``) and of transformers' model stepping its own KV cache (what
``generate(do_sample=False)`` runs; tests/test_models_smollm.py checks the tokens are the same); MiniLM encoding of 128
sentences vs sentence-transformers; Whisper tiny.en transcribing a 10 s espeak-ng clip (features, encoder, greedy
decoding with KV caches) vs transformers' WhisperForConditionalGeneration.generate on the same weights and vs
CTranslate2, Whisper's own runtime, reading the same folder. Runs are interleaved (ours, theirs, ours, ...) and the
median is reported.
"""

import argparse
import os
import statistics
import sys
import time

import openblas_env

if __name__ == "__main__":
    openblas_env.restart_without_overrides("--unset-openblas-env" in sys.argv)   # before NumPy loads OpenBLAS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from attnlab import data, models, planner  # noqa: E402
from attnlab.bench import format_header, machine_info  # noqa: E402
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


def whisper(repeats):
    import sys
    import tempfile
    from pathlib import Path

    import ctranslate2

    from attnlab.models import audio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_models_whisper import to_transformers      # the weight mapping the parity tests prove

    ours = models.load("whisper-tiny.en")
    hf = to_transformers(ours)
    runtime = ctranslate2.models.Whisper(str(ours.folder), device="cpu", compute_type="float32",
                                         intra_threads=planner.default_threads())
    text = ("Attention lets every position look at every other one. The scores are scaled dot products, "
            "turned into weights by a softmax, and the output is the weighted sum of the values.")
    wav = audio.say(text, Path(tempfile.mkdtemp()) / "clip.wav")
    samples = audio.read_wav(wav)
    prompt = ours.prompt()

    def theirs_hf():
        mel = torch.tensor(ours.features(samples))[None]            # the same features: the decoders are compared
        with torch.no_grad():
            return hf.generate(mel, decoder_input_ids=torch.tensor([prompt]), max_new_tokens=96, do_sample=False,
                               num_beams=1)

    def theirs_ct2():
        mel = ctranslate2.StorageView.from_array(np.ascontiguousarray(ours.features(samples)[None]))
        return runtime.generate(mel, [prompt], beam_size=1, max_length=96 + len(prompt))

    med = median_interleaved({"ours": lambda: ours.transcribe(samples), "transformers": theirs_hf,
                              "ctranslate2": theirs_ct2}, repeats)
    r = ours.transcribe(samples)
    print(f"\nWhisper tiny.en, a {len(samples) / audio.SAMPLE_RATE:.1f} s espeak-ng clip, {len(r.ids)} tokens, "
          f"median of {repeats} interleaved runs: {r.text.strip()!r}")
    print(f"attnlab {med['ours'] * 1e3:.0f} ms   transformers {med['transformers'] * 1e3:.0f} ms "
          f"(ratio {med['ours'] / med['transformers']:.2f}x)   ctranslate2 {med['ctranslate2'] * 1e3:.0f} ms "
          f"(ratio {med['ours'] / med['ctranslate2']:.2f}x)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--only", default="smollm,minilm,whisper", help="comma-separated: smollm, minilm, whisper")
    parser.add_argument("--unset-openblas-env", action="store_true",
                        help="restart without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE (both sides share this process)")
    args = parser.parse_args()
    threads = planner.default_threads()
    torch.set_num_threads(threads)
    info = machine_info(torch)
    info["load_before"] = os.getloadavg()
    print(format_header(info, "real-model benchmark"))
    print(openblas_env.unset_note())
    only = set(args.only.split(","))
    if "smollm" in only:
        smollm(args.repeats, args.new)
    if "minilm" in only:
        minilm(args.repeats)
    if "whisper" in only:
        whisper(args.repeats)
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
