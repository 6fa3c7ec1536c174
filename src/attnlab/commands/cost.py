"""attnlab cost: FLOPs, bytes, peak memory and KV cache of attention for a model, and what doubling n does."""

from .. import cost

ARCH = ("d_model", "head_dim", "n_heads", "n_kv_heads", "layers")


def register(sub):
    p = sub.add_parser("cost", help="attention cost model: FLOPs, memory, bytes moved, KV cache; n -> 2n",
                       description="Cost of attention for a preset model or a custom shape, reference vs tiled path. "
                                   f"Presets: {', '.join(cost.PRESETS)}.")
    p.add_argument("--preset", help=f"a published model: {', '.join(cost.PRESETS)}")
    p.add_argument("--d-model", type=int, help="model width (or give --head-dim)")
    p.add_argument("--head-dim", type=int, help="per-head dim (or give --d-model)")
    p.add_argument("--n-heads", type=int, help="query heads")
    p.add_argument("--n-kv-heads", type=int, help="key/value heads (default: --n-heads; fewer = GQA/MQA)")
    p.add_argument("--layers", type=int, help="layers (default 1)")
    p.add_argument("--seq", type=int, required=True, help="sequence length n (keys; queries too unless --q-len)")
    p.add_argument("--q-len", type=int, help="queries per step, e.g. 1 for one decode step over a --seq cache")
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--dtype", default="float16", help=f"one of {', '.join(cost.DTYPE_BYTES)} (default float16)")
    p.add_argument("--mask", help="a mask spec (attnlab.masks.SPEC_GRAMMAR): full, causal, window:L (keys p-L..p), "
                                  "causal & window:256, ... (default: the preset's own, else full)")
    p.add_argument("--block-q", type=int, help="tiled kernel: query rows per tile (default: the kernel's choice)")
    p.add_argument("--block-k", type=int, help="tiled kernel: keys per tile (default: the kernel's choice)")
    p.add_argument("--threads", type=int, default=1, help="tiled kernel: threads (default 1)")
    p.add_argument("--double", action="store_true", help="also answer: what happens when n doubles?")
    p.set_defaults(func=run)


def model_from_args(args):
    """The ModelConfig the arguments describe: a preset, or a custom shape (never both)."""
    given = [name for name in ARCH if getattr(args, name) is not None]
    if args.preset is not None:
        if given:
            raise ValueError(f"--preset {args.preset} fixes the architecture; drop "
                             f"{', '.join('--' + g.replace('_', '-') for g in given)}")
        return cost.get_preset(args.preset)
    if args.n_heads is None or (args.d_model is None and args.head_dim is None):
        raise ValueError("give --preset NAME, or --n-heads with --d-model or --head-dim "
                         f"(presets: {', '.join(cost.PRESETS)})")
    return cost.model_config(d_model=args.d_model, head_dim=args.head_dim, n_heads=args.n_heads,
                             n_kv_heads=args.n_kv_heads, n_layers=1 if args.layers is None else args.layers)


def run(args):
    model = model_from_args(args)
    kwargs = dict(batch=args.batch, q_len=args.q_len, dtype=args.dtype, mask=args.mask, block_q=args.block_q,
                  block_k=args.block_k, threads=args.threads)
    print(cost.estimate(model, args.seq, **kwargs))
    if args.double:
        print()
        print(cost.doubling(model, args.seq, **kwargs))
