"""attnlab generate "prompt": greedy decoding with a KV cache on a trained decoder, streamed, with its cache cost."""

import sys

from ..cli import UsageError

MODEL = "smollm2-135m"


def register(sub):
    p = sub.add_parser("generate", help="greedy text generation with a KV cache (SmolLM2), streamed",
                       description="Continues the prompt greedily on a trained decoder running on attnlab's "
                                   "layers, printing tokens as they are chosen, then the decoding speed, the KV "
                                   "cache's bytes (grouped-query attention: 3 key/value heads) and the bytes the "
                                   "same cache holds with one key/value head per query head (MHA), measured "
                                   "from the cache arrays.")
    p.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    p.add_argument("--model", default=MODEL, help=f"model name or a .gguf / Hugging Face Llama path (default {MODEL})")
    p.add_argument("--max-new", type=int, default=48, help="at most this many new tokens (default 48)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.set_defaults(func=run)


def run(args):
    from .. import models
    from ..models.generation import greedy

    if args.max_new < 1:
        raise UsageError(f"--max-new must be a positive integer, got {args.max_new}")
    model = models.load(args.model)
    if not hasattr(model, "step"):
        raise UsageError(f"{model.name} is not a decoder with a KV cache (a Llama-family model); "
                         f"try --model {MODEL}")
    if args.chat:
        if not hasattr(model.tokenizer, "chat"):
            raise UsageError(f"{model.name} has no chat template; drop --chat")
        ids = model.tokenize(model.tokenizer.chat(args.prompt))
    else:
        ids = model.tokenize(args.prompt)
    eos = getattr(model.tokenizer, "eos_id", None)
    stops = [] if eos is None else [eos]
    end = model.tokenize("<|im_end|>") if args.chat else []
    if len(end) == 1:                        # ChatML's end of turn is one special token
        stops.append(int(end[0]))
    print(args.prompt if not args.chat else f"[chat] {args.prompt}\n", end="", flush=True)
    shown = []

    def stream(token):                       # print the text the new token adds (multi-byte characters whole)
        before = model.tokenizer.decode(shown)
        shown.append(token)
        if token not in stops:
            sys.stdout.write(model.tokenizer.decode(shown)[len(before):])
            sys.stdout.flush()

    gen = greedy(model, ids, args.max_new, on_token=stream, stop_ids=stops)
    a = model.attn[0]
    print()
    print(f"\n{len(gen.new)} new tokens ({gen.stopped}); prompt {len(ids)} tokens prefilled in "
          f"{gen.prefill_seconds * 1e3:.0f} ms; decoding {gen.tokens_per_second:.1f} tokens/s")
    print(f"KV cache: {gen.cache_bytes / 2**20:.2f} MiB for {len(gen.ids) - 1} positions x {model.n_layers} layers "
          f"({a.kind}: {a.n_kv_heads} key/value heads for {a.n_heads} query heads); MHA with {a.n_heads} key/value "
          f"heads would hold {gen.mha_cache_bytes / 2**20:.2f} MiB ({gen.mha_cache_bytes / gen.cache_bytes:.1f}x)")
