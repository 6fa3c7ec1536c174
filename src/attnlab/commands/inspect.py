"""attnlab inspect "text": a real model's tokens, per-head diagnostics, heatmaps and explorer page."""

from pathlib import Path

from ..cli import UsageError

MODEL = "all-MiniLM-L6-v2"


def register(sub):
    p = sub.add_parser("inspect", help="tokens, per-head diagnostics, heatmaps and explorer of a real model",
                       description="Runs the text through a pretrained model on attnlab's own layers and prints "
                                   "the tokens and a diagnostic table (entropy, effective tokens, top-1 mass, "
                                   "sink mass, distance, previous/next/same-token scores, flags). With --out: "
                                   "heatmap.png (one head), heads.png, entropy.png and explorer.html.")
    p.add_argument("text", help="the text (up to the model's limit, 512 tokens for MiniLM)")
    p.add_argument("--model", default=MODEL, help=f"model name or local Hugging Face directory (default {MODEL})")
    p.add_argument("--layer", type=int, help="show only this layer (0-based); with --head: one head")
    p.add_argument("--head", type=int, help="show only this head (0-based; needs --layer)")
    p.add_argument("--out", help="folder for the figures and the explorer page")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model allows")
    p.set_defaults(func=run)


def run(args):
    from .. import diagnostics, models

    model = models.load(args.model)
    layer, head = _selection(args, model)
    parts = model.attention_parts(args.text, truncate=args.truncate)
    sinks = (0,) if model.causal else (0, -1)
    print(f"{model.name}: {model.n_layers} layers x {model.n_heads} heads, {len(parts.tokens)} tokens")
    print("tokens: " + " ".join(f"{i}:{t}" for i, t in enumerate(parts.tokens)))
    rows = diagnostics.head_table(parts.weights, mask=parts.base_mask, sink_indices=sinks)
    rows = [r for r in rows if (layer is None or r.layer == layer) and (head is None or r.head == head)]
    sink_names = " + ".join(parts.tokens[i] for i in sinks)
    print(f"\nper-head diagnostics (sink = mass on {sink_names}; flags: diffuse entropy >= "
          f"{diagnostics.DIFFUSE_ENTROPY}, over_concentrated top1 >= {diagnostics.CONCENTRATED_TOP1}, "
          f"sink >= {diagnostics.SINK_MASS})")
    print(diagnostics.format_table(rows))
    if args.out:
        for path in _write(parts, model, args.out, layer or 0, head or 0, args.text):
            print(f"wrote {path}")


def _selection(args, model):
    if args.head is not None and args.layer is None:
        raise UsageError("--head needs --layer")
    if args.layer is not None and not 0 <= args.layer < model.n_layers:
        raise UsageError(f"--layer must be in 0..{model.n_layers - 1}, got {args.layer}")
    if args.head is not None and not 0 <= args.head < model.n_heads:
        raise UsageError(f"--head must be in 0..{model.n_heads - 1}, got {args.head}")
    return args.layer, args.head


def _write(parts, model, out, layer, head, text):
    from ..viz import entropy_figure, heads_grid, heatmap, save
    from ..viz.explorer import ExplorerData, write_explorer

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fig = heatmap(parts.weights[layer, head], parts.tokens, mask=parts.base_mask,
                  title=f"{model.name}: layer {layer}, head {head}")
    yield save(fig, folder / "heatmap.png")
    yield save(heads_grid(parts.weights, parts.tokens), folder / "heads.png")
    yield save(entropy_figure(parts.weights, mask=parts.base_mask), folder / "entropy.png")
    layers = _explorer_layers(parts, layer)
    data = ExplorerData(tokens=parts.tokens, scores=parts.scores[layers], base_mask=parts.base_mask,
                        queries=parts.queries[layers], keys=parts.keys[layers], values=parts.values[layers],
                        scale=parts.scale, title=f"{model.name}: {text[:60]}", meta=parts.meta,
                        layer_names=[f"layer {i}" for i in layers])
    yield write_explorer(data, folder / "explorer.html")


EXPLORER_MAX_CELLS = 72 * 128 * 128   # all layers up to ~128 tokens (a page of ~7 MB); beyond, one layer


def _explorer_layers(parts, layer):
    """All layers when the page stays small, else only ``layer`` (and say so)."""
    n_layers, n_heads, L, _ = parts.scores.shape
    if n_layers * n_heads * L * L <= EXPLORER_MAX_CELLS:
        return list(range(n_layers))
    print(f"explorer.html holds layer {layer} only: {L} tokens x {n_layers * n_heads} heads would make a page of "
          f"~{n_layers * n_heads * L * L * 5.4 / 1e6:.0f} MB (choose the layer with --layer)")
    return [layer]
