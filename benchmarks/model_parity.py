"""Print the largest differences between attnlab.models and the reference implementations (offline).

    .venv/bin/python benchmarks/model_parity.py

all-MiniLM-L6-v2 vs sentence-transformers (embeddings) and transformers BertModel (eager, every layer's
attention weights, padded batch); GPT-2 and Llama (GQA + RoPE) built from small random configs, saved as
safetensors, vs transformers (logits and attention weights of the real positions of a padded batch).
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers
from sentence_transformers import SentenceTransformer

from attnlab import data, models

SENTENCES = data.sentences()[:8]


def minilm():
    ours = models.load("all-MiniLM-L6-v2")
    path = str(models.minilm_path())
    st = SentenceTransformer(path, device="cpu").encode(SENTENCES, convert_to_numpy=True, batch_size=8)
    emb = np.abs(ours.encode(SENTENCES, batch_size=8) - st).max()
    hf = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    ids, lengths = ours.batch(SENTENCES)
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_attentions=True)
    _, w, _ = ours.forward(ids, lengths, return_weights=True)
    attn = np.abs(w - np.stack([a.numpy() for a in out.attentions])).max()
    print(f"all-MiniLM-L6-v2, {len(SENTENCES)} sentences, one padded batch (lengths {lengths.min()}..{lengths.max()}):"
          f"\n  embeddings vs sentence-transformers  max abs {emb:.2e}"
          f"\n  attention weights, 6 layers vs BertModel  max abs {attn:.2e}")


def decoder(kind, folder):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0)
        hf = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       rope_theta=500.0, tie_word_embeddings=False)
        hf = transformers.LlamaForCausalLM(cfg)
    hf.eval().save_pretrained(folder, safe_serialization=True)
    hf = type(hf).from_pretrained(folder, attn_implementation="eager").eval()
    ours = models.load(folder)
    rng = np.random.default_rng(0)
    lengths = np.array([20, 13, 7])
    ids = rng.integers(0, 64, (3, 20))
    mask = (np.arange(20)[None, :] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_attentions=True)
    real = mask.astype(bool)
    logits = np.abs(ours.logits(ids, lengths)[real] - out.logits.numpy()[real]).max()
    _, w, _ = ours.forward(ids, lengths, return_weights=True)
    want = np.stack([a.numpy() for a in out.attentions])
    attn = max(np.abs(w[:, b, :, :n] - want[:, b, :, :n]).max() for b, n in enumerate(lengths))
    print(f"{kind} (random weights, {ours.n_layers} layers, {ours.n_heads} heads, {ours.attn[0].n_kv_heads} kv "
          f"heads), padded batch lengths {lengths.tolist()}:"
          f"\n  logits max abs {logits:.2e}   attention weights max abs {attn:.2e}")


if __name__ == "__main__":
    minilm()
    with tempfile.TemporaryDirectory() as tmp:
        decoder("gpt2", os.path.join(tmp, "gpt2"))
        decoder("llama", os.path.join(tmp, "llama"))
