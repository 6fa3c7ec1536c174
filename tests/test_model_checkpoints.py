"""Model checkpoints are checked before anything is built (issue 14): tiny fake checkpoints written here (BERT, GPT-2
and Llama safetensors folders, a Llama GGUF file, a CTranslate2 Whisper model.bin) load, and each kind of damage
(a missing tensor, a wrong shape, a config that disagrees with the weights, bad counts, malformed JSON, truncated or
garbage files, shard paths leaving the folder, a broken tokenizer.json) is one ValueError naming the file and the
key, raised before the layers are allocated (tracemalloc)."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import save_file

from attnlab import models
from attnlab.models import bert, gpt2, llama, whisper

D, H, LAYERS, INNER, VOCAB, POS = 8, 2, 1, 16, 10, 12


def _tensors(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {name: (0.1 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}


def _folder(tmp_path, config, tensors, name="m"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


BERT_CONFIG = {"model_type": "bert", "hidden_size": D, "num_attention_heads": H, "num_hidden_layers": LAYERS,
               "intermediate_size": INNER, "vocab_size": VOCAB, "max_position_embeddings": POS, "type_vocab_size": 2}


def _bert(tmp_path, config=None, edit=None, name="bert"):
    tensors = {"bert." + k: v for k, v in _tensors(bert.expected_shapes(D, LAYERS, INNER, VOCAB, POS, 2)).items()}
    if edit:
        edit(tensors)
    return _folder(tmp_path, {**BERT_CONFIG, **(config or {})}, tensors, name)


def test_a_complete_tiny_bert_loads_and_matches_transformers(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    folder = _bert(tmp_path)
    model = models.load(folder)
    ids = np.array([[1, 4, 2, 7]])
    h, _, _ = model.forward(ids)
    ref = BertModel(BertConfig(hidden_size=D, num_attention_heads=H, num_hidden_layers=LAYERS,
                               intermediate_size=INNER, vocab_size=VOCAB, max_position_embeddings=POS,
                               hidden_act="gelu", layer_norm_eps=1e-12), add_pooling_layer=False).eval()
    from safetensors.torch import load_file
    ref.load_state_dict({k[len("bert."):]: v for k, v in load_file(str(folder / "model.safetensors")).items()},
                        strict=False)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(h, want, atol=2e-5)


def _refused(call, *patterns):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)
    assert peak < 2**26, f"{peak} bytes allocated before the refusal"
    return str(info.value)


def test_missing_tensor_and_wrong_shape_name_the_file_and_key(tmp_path):
    folder = _bert(tmp_path, edit=lambda t: t.pop("bert.encoder.layer.0.attention.self.key.weight"), name="a")
    _refused(lambda: models.load(folder), str(folder / "model.safetensors"),
             "tensor 'encoder.layer.0.attention.self.key.weight' is missing (expected shape (8, 8))")

    def narrow(t):
        t["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((INNER, D - 1), np.float32)
    folder = _bert(tmp_path, edit=narrow, name="b")
    _refused(lambda: models.load(folder), "tensor 'encoder.layer.0.intermediate.dense.weight' has shape (16, 7), "
                                          "expected (16, 8)")


def test_config_sizes_are_compared_before_any_layer_is_allocated(tmp_path):
    """hidden_size=12000 with a tiny checkpoint used to build 3.3 GiB of random float64 layers first."""
    for i, size in enumerate((12000, 10**6)):
        folder = _bert(tmp_path, {"hidden_size": size, "num_attention_heads": 12, "intermediate_size": 4 * size},
                       name=f"big{i}")
        _refused(lambda: models.load(folder), "has shape (10, 8), expected (10, " + str(size) + ")",
                 "does not match its config")


@pytest.mark.parametrize("key, value", [("num_hidden_layers", 0), ("num_hidden_layers", -2), ("num_attention_heads", 0),
                                        ("hidden_size", "8"), ("num_hidden_layers", 1.5), ("vocab_size", None)])
def test_bad_counts_in_the_config_name_the_key(tmp_path, key, value):
    config = {key: value}
    if value is None:                              # no vocab_size and no word embeddings either
        folder = _bert(tmp_path, edit=lambda t: t.pop("bert.embeddings.word_embeddings.weight"))
        json.dump({k: v for k, v in BERT_CONFIG.items() if k != "vocab_size"}, open(folder / "config.json", "w"))
        _refused(lambda: models.load(folder), "embeddings.word_embeddings.weight' is missing")
        return
    folder = _bert(tmp_path, config)
    _refused(lambda: models.load(folder), str(folder / "config.json"), f"{key} must be an integer >= 1, got {value!r}")


@pytest.mark.parametrize("text, pattern", [("{\"model_type\": \"bert\",", "is not valid JSON (a model config): "
                                                                         "Expecting property name"),
                                           ("[1, 2]", "must hold a JSON object of settings, got a list"),
                                           ("[" * 100_000 + "]" * 100_000, "is not valid JSON (a model config): "
                                                                           "RecursionError"),
                                           ("\"bert\"", "must hold a JSON object")])
def test_malformed_config_json_names_the_file(tmp_path, text, pattern):
    folder = _bert(tmp_path)
    (folder / "config.json").write_text(text)
    _refused(lambda: models.load(folder), str(folder / "config.json"), pattern)


def test_truncated_empty_and_garbage_safetensors_name_the_file(tmp_path):
    folder = _bert(tmp_path)
    path = folder / "model.safetensors"
    whole = path.read_bytes()
    for content, pattern in ((whole[:-10], "the file is truncated or corrupt"), (b"", "shorter than its 8-byte"),
                             (b"\xff" * 64, "its header claims"), (struct.pack("<Q", 4) + b"nope", "is not JSON"),
                             (whole[:8 + 20], "its header claims")):
        path.write_bytes(content)
        _refused(lambda: models.load(folder), str(path), pattern)


def test_shard_index_paths_must_stay_inside_the_folder(tmp_path):
    folder = _bert(tmp_path)
    outside = tmp_path / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    for shard in ("../outside.safetensors", str(outside), ""):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
        _refused(lambda: models.load(folder), "is not a file inside", "refused")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weights": {}}))
    _refused(lambda: models.load(folder), "non-empty \"weight_map\"")


def test_a_broken_tokenizer_json_names_the_file(tmp_path):
    folder = _bert(tmp_path)
    (folder / "tokenizer.json").write_text("{\"version\": \"1.0\", \"model\": 3}")
    _refused(lambda: models.load(folder), str(folder / "tokenizer.json"), "is not a valid tokenizer.json")


# --- GPT-2 and Llama safetensors -----------------------------------------------------------------------------
def test_gpt2_and_llama_check_their_tensors(tmp_path):
    g = _tensors(gpt2.expected_shapes(D, LAYERS, INNER, VOCAB, POS, False))
    g["h.0.attn.c_attn.weight"] = np.zeros((D, 2 * D), np.float32)
    folder = _folder(tmp_path, {"model_type": "gpt2", "n_embd": D, "n_head": H, "n_layer": LAYERS, "n_inner": INNER,
                                "vocab_size": VOCAB, "n_positions": POS}, g, "gpt2")
    _refused(lambda: models.load(folder), "tensor 'h.0.attn.c_attn.weight' has shape (8, 16), expected (8, 24)")
    cfg = {"model_type": "llama", "hidden_size": D, "num_attention_heads": H, "num_key_value_heads": 1,
           "num_hidden_layers": LAYERS, "intermediate_size": INNER, "vocab_size": VOCAB, "tie_word_embeddings": True}
    t = {"model." + k: v for k, v in _tensors(llama.expected_shapes(D, H, 1, D // H, LAYERS, INNER, VOCAB, True,
                                                                    False)).items()}
    ok = _folder(tmp_path, cfg, dict(t), "llama")
    assert models.load(ok).logits(np.array([1, 2, 3])).shape == (3, VOCAB)
    t.pop("model.layers.0.mlp.up_proj.weight")
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((D, D), np.float32)     # MHA-sized, config says GQA
    folder = _folder(tmp_path, cfg, t, "llama_bad")
    msg = _refused(lambda: models.load(folder), "tensor 'layers.0.self_attn.k_proj.weight' has shape (8, 8), "
                                                "expected (4, 8)", "'layers.0.mlp.up_proj.weight' is missing")
    assert str(folder / "model.safetensors") in msg
    _refused(lambda: models.load(_folder(tmp_path, {**cfg, "num_key_value_heads": 3}, t, "llama_heads")),
             "num_attention_heads 2 is not a multiple of num_key_value_heads 3")


# --- GGUF (the SmolLM2 loader) ----------------------------------------------------------------------------------
def _gguf(path, drop=(), wrong=None):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_uint32("llama.embedding_length", D)
    w.add_uint32("llama.attention.head_count", H)
    w.add_uint32("llama.attention.head_count_kv", 1)
    w.add_uint32("llama.feed_forward_length", INNER)
    w.add_uint32("llama.vocab_size", VOCAB)
    w.add_uint32("llama.context_length", 32)
    shapes = llama.expected_shapes(D, H, 1, D // H, LAYERS, INNER, VOCAB, True, False)
    names = models.gguf_file.HF_TO_GGUF
    for hf, shape in shapes.items():
        key = hf.replace("layers.0.", "layers.{i}.")
        name = names[key].format(i=0)
        if name in drop:
            continue
        w.add_tensor(name, np.zeros(wrong[1] if wrong and wrong[0] == name else shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_tensors_are_checked_before_dequantizing(tmp_path):
    from attnlab.models.smollm import GGUFLlama

    with pytest.raises(ValueError, match=r"has no metadata 'tokenizer.ggml.model'|tokenizer"):
        GGUFLlama(_gguf(tmp_path / "ok.gguf"))          # the weights pass; this tiny file has no tokenizer
    bad = _gguf(tmp_path / "missing.gguf", drop=("blk.0.attn_v.weight",))
    _refused(lambda: GGUFLlama(bad), str(bad), "tensor 'blk.0.attn_v.weight' is missing (expected shape (4, 8))")
    bad = _gguf(tmp_path / "wrong.gguf", wrong=("blk.0.ffn_down.weight", (D, INNER + 1)))
    _refused(lambda: GGUFLlama(bad), "tensor 'blk.0.ffn_down.weight' has shape (8, 17), expected (8, 16)")
    bad = tmp_path / "meta.gguf"
    import gguf
    w = gguf.GGUFWriter(str(bad), "llama")
    for key, value in (("llama.block_count", 1), ("llama.attention.head_count", 2), ("llama.feed_forward_length", 4)):
        w.add_uint32(key, value)
    w.add_string("llama.embedding_length", "eight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _refused(lambda: GGUFLlama(bad), str(bad), "metadata 'llama.embedding_length' must be an integer, got 'eight'")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    _refused(lambda: models.load(tmp_path / "junk.gguf"), "is not a readable GGUF file")


# --- CTranslate2 (the Whisper loader) --------------------------------------------------------------------------
def _ct2(path, variables):
    """A CTranslate2 model.bin (format version 6) holding ``variables`` as float32 (num_heads as int32)."""
    def s(text):
        b = text.encode() + b"\0"
        return struct.pack("<H", len(b)) + b
    blob = struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<II", 1, len(variables))
    for name, value in variables.items():
        value = np.asarray(value)
        code = 3 if value.dtype.kind == "i" else 0
        raw = value.astype("<i4" if code == 3 else "<f4").tobytes()
        blob += s(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        blob += struct.pack("<BI", code, len(raw)) + raw
    path.write_bytes(blob + struct.pack("<I", 0))
    return path


def _whisper_variables():
    shapes = whisper.expected_shapes(D, INNER, 1, 1, VOCAB, 80)
    v = _tensors(shapes)
    v.update({"encoder/num_heads": np.array(H, np.int32), "encoder/position_encodings/encodings": np.zeros((15, D)),
              "decoder/position_encodings/encodings": np.zeros((6, D))})
    return v


def test_whisper_model_bin_is_checked_before_building(tmp_path):
    v = _whisper_variables()
    whisper.check_whisper(whisper.read_model_bin(_ct2(tmp_path / "ok.bin", v)), "ok.bin")   # complete: passes
    v.pop("decoder/layer_0/attention/linear_1/bias")
    v["encoder/layer_0/ffn/linear_1/weight"] = np.zeros((D, INNER - 2))
    path = _ct2(tmp_path / "model.bin", v)
    msg = _refused(lambda: whisper.Whisper("tiny", tmp_path, [path]), str(path),
                   "tensor 'encoder/layer_0/ffn/linear_1/weight' has shape (8, 14), expected (8, 16)",
                   "'decoder/layer_0/attention/linear_1/bias' is missing (expected shape (16,))")
    assert "config.json" not in msg                        # refused before the config and tokenizer are read
    v = _whisper_variables()
    v["encoder/num_heads"] = np.array(3, np.int32)
    _refused(lambda: whisper.Whisper("tiny", tmp_path, [_ct2(tmp_path / "heads.bin", v)]),
             "encoder/num_heads = 3 does not divide the model width 8")
    path.write_bytes(path.read_bytes()[:200])
    _refused(lambda: whisper.Whisper("tiny", tmp_path, [path]), f"{path}: model.bin ends early")


# --- the real MiniLM, its config edited (the 90 MB weights linked, not copied) ----------------------------------
def _minilm_copy(tmp_path, name, **config):
    src = models.minilm_path()
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(src / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **config}))
    return folder


def test_the_real_minilm_with_an_edited_config_is_refused_before_building(tmp_path):
    folder = _minilm_copy(tmp_path, "wide", hidden_size=12000)
    _refused(lambda: models.load(folder), str(folder / "model.safetensors"),
             "tensor 'embeddings.word_embeddings.weight' has shape (30522, 384), expected (30522, 12000)")
    folder = _minilm_copy(tmp_path, "deep", num_hidden_layers=7)
    _refused(lambda: models.load(folder), "tensor 'encoder.layer.6.attention.self.query.weight' is missing")
    assert models.load(_minilm_copy(tmp_path, "same", num_hidden_layers=6)).n_layers == 6
