"""GPT-2 and Llama (GQA + RoPE) on attnlab layers vs transformers models with random weights, saved as
safetensors to tmp_path (no download)."""

import numpy as np
import pytest
import torch

from attnlab import models

IDS = np.array([[5, 17, 3, 42, 8, 9, 60, 1, 33], [7, 2, 19, 4, 0, 0, 0, 0, 0]])   # row 1: 4 real tokens
LENGTHS = np.array([9, 4])


def _save(model, folder):
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                     eos_token_id=0)
    return _save(GPT2LMHeadModel(cfg), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=500.0, tie_word_embeddings=False)
    return _save(LlamaForCausalLM(cfg), tmp_path_factory.mktemp("llama"))


def _hf(folder, cls_name):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logits_and_attention_match_transformers_on_a_padded_batch(kind, gpt2_dir, llama_dir):
    folder, cls_name = (gpt2_dir, "GPT2LMHeadModel") if kind == "gpt2" else (llama_dir, "LlamaForCausalLM")
    ours, hf = models.load(folder), _hf(folder, cls_name)
    mask = (np.arange(IDS.shape[1])[None, :] < LENGTHS[:, None]).astype(np.int64)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(mask), output_attentions=True)
    want_w = np.stack([a.numpy() for a in out.attentions])                   # (layers, B, H, L, L)
    _, got_w, _ = ours.forward(IDS, LENGTHS, return_weights=True)
    got = ours.logits(IDS, LENGTHS)
    real = mask.astype(bool)
    assert np.abs(got[real] - out.logits.numpy()[real]).max() < 1e-4
    for b, n in enumerate(LENGTHS):                                           # real query rows
        assert np.abs(got_w[:, b, :, :n] - want_w[:, b, :, :n]).max() < 1e-4
        assert (got_w[:, b, :, :, n:] == 0).all()                             # padded keys get no weight
    short = ours.logits(IDS[1, :4])                                           # the padded row, run alone
    assert np.abs(short - got[1, :4]).max() < 1e-4
    tokens, w = ours.attentions(IDS[0])
    assert tokens[0] == "5" and w.shape == (2, 4, 9, 9)
    assert np.allclose(np.triu(w, 1), 0)                                      # causal


def test_llama_is_grouped_query_with_rope(llama_dir):
    model = models.load(llama_dir)
    a = model.attn[0]
    assert (a.n_heads, a.n_kv_heads, a.rope_base) == (4, 2, 500.0)
    parts = model.attention_parts(IDS[0])
    assert parts.queries.shape == parts.keys.shape == (2, 4, 9, 8)
    np.testing.assert_array_equal(parts.keys[:, 0], parts.keys[:, 1])         # heads 0, 1 share kv head 0
    from attnlab import softmax

    np.testing.assert_allclose(softmax(parts.scores, mask=parts.base_mask), parts.weights, atol=1e-6)


def test_decoder_inputs_are_checked(gpt2_dir):
    model = models.load(gpt2_dir)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.logits(np.array([1, 64]))
    with pytest.raises(ValueError, match="at most 32"):
        model.logits(np.arange(40) % 64)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        model.attentions("text needs a tokenizer")


def test_head_type_detection_runs_on_a_decoder(gpt2_dir):
    from attnlab import diagnostics

    model = models.load(gpt2_dir)
    rows = diagnostics.detect_head_types(model, n=6, seed=1)
    ids = diagnostics.repeated_random_tokens(64, 6, seed=1)
    _, w = model.attentions(ids)
    assert len(rows) == 8
    assert rows[5].induction == pytest.approx(diagnostics.induction_score(w, ids)[1, 1])
    assert rows[5].previous == pytest.approx(diagnostics.previous_token_score(w)[1, 1])


def test_sharded_checkpoint_loads_the_same(gpt2_dir, tmp_path):
    hf = _hf(gpt2_dir, "GPT2LMHeadModel")
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    np.testing.assert_array_equal(models.load(tmp_path).logits(IDS[0]), models.load(gpt2_dir).logits(IDS[0]))


def test_inspect_a_decoder_with_a_tokenizer(gpt2_dir, tmp_path, capsys):
    import shutil

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from attnlab import cli

    folder = tmp_path / "gpt2-tok"
    shutil.copytree(gpt2_dir, folder)
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    assert cli.main(["inspect", "w5 w9 w5 w9 w7", "--model", str(folder), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "0:w5 1:w9 2:w5 3:w9 4:w7" in out and "sink = mass on w5;" in out
    assert (tmp_path / "out" / "explorer.html").is_file()
