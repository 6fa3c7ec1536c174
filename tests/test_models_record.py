"""What a model shows of its attention (``attentions``, ``attention_parts``: the explorer's, ``inspect``'s and the
diagnostics' data) is what its forward pass computed, recorded by the layers (``attnlab.record.Recorder``), not a
recomputation beside the model. Oracles: transformers' ``output_attentions`` and its own rotated queries and keys
(RoPE), on random GPT-2 (per-layer scales) and Llama (GQA + RoPE) checkpoints and on the real MiniLM."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from test_models_decoders import llama_dir  # noqa: F401  (the random Llama checkpoint: GQA + RoPE)

from attnlab import layers, models
from attnlab.record import Recorder

IDS = np.array([5, 17, 3, 42, 8, 9, 60, 1, 33])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=3, n_head=4, bos_token_id=0,
                     eos_token_id=0, scale_attn_by_inverse_layer_idx=True)          # a different scale per layer
    folder = tmp_path_factory.mktemp("gpt2-scaled")
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def _hf_attentions(hf, ids) -> np.ndarray:
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids[None, :]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])                        # (layers, H, L, L)


def _load_hf(folder, cls_name):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(folder, attn_implementation="eager").eval()


def _check_views(model, ids, want, atol):
    """attentions() and attention_parts() equal transformers' weights and the weights the pass returned."""
    _, passed, _ = model.forward(ids[None, :], return_weights=True)                 # (layers, 1, H, L, L)
    tokens, w = model.attentions(ids)
    parts = model.attention_parts(ids)
    assert w.shape == parts.weights.shape == want.shape and len(tokens) == len(parts.tokens) == want.shape[-1]
    assert np.abs(w - want).max() < atol and np.abs(parts.weights - want).max() < atol
    np.testing.assert_allclose(w, passed[:, 0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(parts.weights, passed[:, 0], rtol=0, atol=1e-7)
    return parts


def test_gpt2_views_equal_transformers_with_per_layer_scales(gpt2_dir):
    model = models.load(gpt2_dir)
    parts = _check_views(model, IDS, _hf_attentions(_load_hf(gpt2_dir, "GPT2LMHeadModel"), IDS), 1e-4)
    scales = [1 / np.sqrt(8) / (i + 1) for i in range(3)]                          # HF: scaling /= layer_idx + 1
    assert parts.scale == pytest.approx(scales[0]) and parts.meta["scale per layer"].count(",") == 2
    for layer, scale in enumerate(scales):                                          # the pass's own scale per layer
        np.testing.assert_allclose(parts.scores[layer], parts.queries[layer] @ parts.keys[layer].swapaxes(-1, -2)
                                   * scale, atol=1e-5)
    np.testing.assert_array_equal(parts.base_mask, np.tril(np.ones((9, 9), bool)))


def test_llama_views_equal_transformers_and_its_rotated_queries_and_keys(llama_dir, monkeypatch):
    from transformers.models.llama import modeling_llama

    rotated, real = [], modeling_llama.apply_rotary_pos_emb

    def spy(q, k, *args, **kwargs):                                                 # HF's q, k after RoPE
        out = real(q, k, *args, **kwargs)
        rotated.append([t[0].detach().numpy() for t in out])                       # (H, L, D), (G, L, D)
        return out

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", spy)
    model = models.load(llama_dir)
    want = _hf_attentions(_load_hf(llama_dir, "LlamaForCausalLM"), IDS)
    parts = _check_views(model, IDS, want, 1e-4)
    tokens, rec = model.record(IDS, fields=("q", "k"))
    assert len(rotated) == model.n_layers
    for layer, (hf_q, hf_k) in enumerate(rotated):
        r = rec.get(layer, "causal")
        assert r.k.shape == (1, 2, 9, 8) and r.groups == 2                          # GQA: 2 kv heads, not repeated
        assert np.abs(r.q[0] - hf_q).max() < 1e-5 and np.abs(r.k[0] - hf_k).max() < 1e-5
        np.testing.assert_array_equal(parts.keys[layer], np.repeat(r.k[0], 2, axis=0))


def test_minilm_views_equal_transformers():
    from transformers import BertModel

    model = models.load("all-MiniLM-L6-v2")
    ids = model.tokenize("The cat sat on the mat because it was tired.")
    hf = BertModel.from_pretrained(str(models.minilm_path()), attn_implementation="eager").eval()
    parts = _check_views(model, ids, _hf_attentions(hf, ids), 1e-5)
    assert parts.base_mask is None and parts.tokens[0] == "[CLS]"                   # one sequence: nothing masked


def test_views_show_the_scores_the_pass_used_not_a_recomputation(gpt2_dir, monkeypatch):
    """Make the layers' attention add a bias no view could know: every view must show it, and the hidden states
    (the pass itself) must change with it. A view recomputing q k^T * scale beside the model fails here."""
    model = models.load(gpt2_dir)
    L = len(IDS)
    bias = np.random.default_rng(0).standard_normal((L, L)).astype(np.float32)
    seen, real = [], layers.attention_steps

    def biased(q, k, v, mask=None, **kwargs):
        st = real(q, k, v, mask, **{**kwargs, "bias": bias})
        seen.append(st)
        return st

    monkeypatch.setattr(layers, "attention_steps", biased)
    with model.recording(Recorder()) as rec:
        hidden, _, _ = model.forward(IDS[None, :])
    monkeypatch.undo()
    plain, _, _ = model.forward(IDS[None, :])
    assert np.abs(hidden - plain).max() > 1e-3                                      # the bias reached the output
    assert len(seen) == model.n_layers
    for layer, st in enumerate(seen):
        assert rec.get(layer).scores is not None
        np.testing.assert_array_equal(rec.get(layer).scores, st.scores)
        np.testing.assert_array_equal(rec.get(layer).weights, st.weights)

    monkeypatch.setattr(layers, "attention_steps", biased)
    seen.clear()
    parts = model.attention_parts(IDS)
    _, w = model.attentions(IDS)
    for layer in range(model.n_layers):
        np.testing.assert_array_equal(parts.scores[layer], seen[layer].scores[0])
        np.testing.assert_array_equal(parts.weights[layer], seen[layer].weights[0])
        np.testing.assert_array_equal(w[layer], seen[layer + model.n_layers].weights[0])
    recomputed = parts.queries @ parts.keys.swapaxes(-1, -2) * np.array([r.scale for r in rec.records])[:, None,
                                                                                                         None, None]
    assert np.abs(parts.scores - recomputed - bias).max() < 1e-5                    # scores = q k^T * scale + bias
    assert np.abs(parts.scores - recomputed).max() > 0.5                            # ... not q k^T * scale


def test_recording_attaches_to_every_layer_and_always_detaches(gpt2_dir):
    model = models.load(gpt2_dir)
    rec = Recorder(layers=[1], fields=("weights",))
    with pytest.raises(RuntimeError, match="boom"):
        with model.recording(rec):
            assert all(mha.attached.recorder is rec for mha in model.attn)
            model.forward(IDS[None, :])
            raise RuntimeError("boom")
    assert all(mha.attached is None for mha in model.attn)
    assert [(r.layer, r.kind) for r in rec.records] == [(1, "causal")] and rec.records[0].q is None
    model.forward(IDS[None, :])                                                     # detached: nothing more
    assert len(rec.records) == 1
    with pytest.raises(TypeError, match="recorder must be an attnlab.record.Recorder"):
        model.attn[0].attach("not a recorder")
