"""SmolLM2-135M (GGUF) on attnlab vs transformers' LlamaForCausalLM from the same file: the numbers in docs/models.md.

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/smollm_parity.py
"""

import numpy as np
import torch
import transformers

from attnlab import models
from attnlab.models.generation import greedy
from attnlab.models.smollm import smollm2_path

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Attention is all you"]


def main():
    path = smollm2_path()
    ours = models.load("smollm2-135m")
    hf = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    ids, lengths = ours.batch(PROMPTS)
    mask = torch.tensor((np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.int64))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=mask, output_attentions=True)
    _, w, _ = ours.forward(ids, lengths, return_weights=True)
    logits = ours.logits(ids, lengths)
    dl = max(np.abs(logits[b, :n] - ref.logits[b, :n].numpy()).max() for b, n in enumerate(lengths))
    dw = max(np.abs(w[l, b, :, :n, :n] - ref.attentions[l][b, :, :n, :n].numpy()).max()
             for l in range(ours.n_layers) for b, n in enumerate(lengths))
    print(f"{ours.name}: {ours.n_layers} layers, {ours.n_heads} query heads over {ours.attn[0].n_kv_heads} kv heads")
    print(f"padded batch of {len(PROMPTS)} prompts (lengths {lengths.tolist()}):")
    print(f"  logits max abs {dl:.2e}   attention weights (all {ours.n_layers} layers) max abs {dw:.2e}")
    prompt = ours.tokenize("Once upon a time, in a small village,")
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompt[None]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=32, do_sample=False, pad_token_id=2)
    gen = greedy(ours, prompt, 32, stop_ids=[ours.tokenizer.eos_id])
    same = gen.new == out[0, len(prompt):].tolist()
    print(f"greedy 32 new tokens identical to generate(do_sample=False): {same}")
    print(f"  {ours.tokenizer.decode(gen.new)!r}")
    caches = ours.new_caches()
    full = ours.logits(prompt)
    rows = np.concatenate([ours.step(prompt[None, :4], caches)[0]]
                          + [ours.step(prompt[None, t: t + 1], caches)[0] for t in range(4, len(prompt))])
    print(f"KV-cache decoding vs the full pass: logits max abs {np.abs(rows - full).max():.2e}")


if __name__ == "__main__":
    main()
