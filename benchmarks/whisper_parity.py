"""Whisper tiny.en on attnlab vs transformers (same weights mapped onto WhisperForConditionalGeneration) and
vs CTranslate2 (Whisper's own runtime on the same folder): the numbers in docs/models.md.

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/whisper_parity.py
"""

import sys
import tempfile
from pathlib import Path

import ctranslate2
import numpy as np
from transformers import WhisperFeatureExtractor

from attnlab import models
from attnlab.models import audio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_models_whisper import SENTENCE, both_passes, to_transformers   # noqa: E402  (what the parity tests run)


def main():
    tiny = models.load("whisper-tiny.en")
    hf = to_transformers(tiny)
    wav = audio.say(SENTENCE, Path(tempfile.mkdtemp()) / "fox.wav")
    x = audio.read_wav(wav)
    ref_mel = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30,
                                      n_fft=400)(x, sampling_rate=16000, return_tensors="np").input_features[0]
    mel = tiny.features(wav)
    rec, enc, logits, out = both_passes(tiny, hf, mel)
    worst = lambda kind, side, theirs: max(np.abs(rec.get(f"{side}.{i}", kind).weights[0] - t[0].numpy()).max()
                                           for i, t in enumerate(theirs))
    print(f"{tiny!r}; {SENTENCE!r} spoken by espeak-ng ({len(x) / audio.SAMPLE_RATE:.1f} s)")
    print(f"  log-mel vs WhisperFeatureExtractor         max abs {np.abs(mel - ref_mel).max():.2e}")
    print(f"  encoder output                             max abs "
          f"{np.abs(enc - out.encoder_last_hidden_state[0].numpy()).max():.2e}")
    print(f"  decoder logits                             max abs {np.abs(logits - out.logits[0].numpy()).max():.2e}")
    print(f"  encoder self-attention weights (4 layers)  max abs {worst('self', 'encoder', out.encoder_attentions):.2e}")
    print(f"  decoder causal weights (4 layers)          max abs {worst('causal', 'decoder', out.decoder_attentions):.2e}")
    print(f"  decoder cross-attention weights (4 layers) max abs {worst('cross', 'decoder', out.cross_attentions):.2e}")
    r = tiny.transcribe(wav)
    runtime = ctranslate2.models.Whisper(str(tiny.folder), device="cpu", compute_type="float32")
    theirs = runtime.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), [r.prompt],
                              beam_size=1)
    print(f"  greedy transcript {r.text.strip()!r}: identical to CTranslate2's tokens: "
          f"{theirs[0].sequences_ids[0] == r.ids}")


if __name__ == "__main__":
    main()
