"""attnlab inspect "text": a real model's tokens, per-head diagnostics, heatmaps and explorer page."""

from pathlib import Path

import numpy as np

from ..cli import UsageError
from ..record import Recorder

MODEL = "all-MiniLM-L6-v2"


def register(sub):
    p = sub.add_parser("inspect", help="tokens, per-head diagnostics, heatmaps and explorer of a real model",
                       description="Runs the text through a pretrained model on attnlab's own layers and prints "
                                   "the tokens and a diagnostic table (entropy, effective tokens, top-1 mass, "
                                   "sink mass, distance, previous/next/same-token scores, flags). With --out: "
                                   "heatmap.png (one head), heads.png, entropy.png and explorer.html.")
    p.add_argument("text", nargs="?", help="the text (up to the model's limit, 512 tokens for MiniLM)")
    p.add_argument("--model", default=MODEL, help=f"model name or local Hugging Face directory (default {MODEL})")
    p.add_argument("--hf", metavar="DIR", help="a local Hugging Face model folder, run by transformers with attnlab "
                                               "as its attention implementation (attnlab.integrations.hf)")
    p.add_argument("--layer", type=int, help="show only this layer (0-based); with --head: one head")
    p.add_argument("--head", type=int, help="show only this head (0-based; needs --layer)")
    p.add_argument("--out", help="folder for the figures and the explorer page")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model allows")
    p.add_argument("--audio", help="a WAV file for a speech model (--model whisper-tiny.en, the default with it, "
                                   "or whisper-base): transcript, cross-attention over time, alignment")
    p.add_argument("--say", help="a sentence spoken by espeak-ng and given to the speech model, as --audio")
    p.set_defaults(func=run)


def run(args):
    from .. import diagnostics, models

    if args.audio or args.say:
        return _speech(args)
    if args.text is None or not args.text.strip():
        given = "nothing" if args.text is None else f"{args.text!r}"
        raise UsageError(f"text: expected a non-empty text to inspect (or --audio WAV / --say TEXT for a speech "
                         f"model), got {given}")
    from ..progress import Status

    with Status("attnlab inspect") as status:
        status.step(f"loading {args.hf or args.model}")
        if args.hf:
            from ..integrations import hf
            model = hf.load_local(args.hf)
        else:
            model = models.load(args.model)
        layer, head = _selection(args, model)
        status.step(f"running {model.name} on the text and recording every head")
        parts = model.attention_parts(args.text, truncate=args.truncate)
        status.step(f"per-head diagnostics of {model.n_layers * model.n_heads} heads on {len(parts.tokens)} tokens")
        sinks = (0,) if model.causal else (0, -1)
        rows = diagnostics.head_table(parts.weights, mask=parts.base_mask, sink_indices=sinks,
                                      delimiters=diagnostics.delimiter_positions(parts.tokens), ids=parts.tokens)
    rows = [r for r in rows if (layer is None or r.layer == layer) and (head is None or r.head == head)]
    shown = "every head" if layer is None else (f"layer {layer}" if head is None
                                                else diagnostics.head_id(layer, head))
    print(f"{model.name}: {model.n_layers} layers x {model.n_heads} heads, {len(parts.tokens)} tokens; "
          f"showing {shown}")
    print("tokens: " + " ".join(f"{i}:{t}" for i, t in enumerate(parts.tokens)))
    sink_names = " + ".join(parts.tokens[i] for i in sinks)
    print(f"\nper-head diagnostics, heads named L<layer>.H<head> (sink = mass on {sink_names}; delim = on "
          f"punctuation; type: the recognised function taking >= {diagnostics.TYPE_SCORE} of the weight; failure "
          f"flags: diffuse entropy >= {diagnostics.DIFFUSE_ENTROPY}, over_concentrated top1 >= "
          f"{diagnostics.CONCENTRATED_TOP1} with no type)")
    print(diagnostics.format_table(rows))
    if args.out:
        with Status("attnlab inspect") as status:
            status.step("drawing the figures and the explorer page")
            paths = list(_write(parts, model, args.out, layer, head, args.text))
        for path in paths:
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
    """heatmap.png of the chosen head (L0.H0 when none is chosen), heads.png (the chosen layer, else all),
    entropy.png and explorer.html, which opens at the chosen layer and head."""
    from ..diagnostics import head_id
    from ..viz import entropy_figure, heads_grid, heatmap, save
    from ..viz.explorer import ExplorerData, short_title, write_explorer

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    at_layer, at_head = layer or 0, head or 0
    fig = heatmap(parts.weights[at_layer, at_head], parts.tokens, mask=parts.base_mask,
                  title=f"{model.name}: {head_id(at_layer, at_head)} (layer {at_layer}, head {at_head})")
    yield save(fig, folder / "heatmap.png")
    grid = parts.weights if layer is None else parts.weights[layer:layer + 1]
    yield save(heads_grid(grid, parts.tokens), folder / "heads.png")
    yield save(entropy_figure(parts.weights, mask=parts.base_mask), folder / "entropy.png")
    layers = _explorer_layers(parts, at_layer) if layer is None else [layer]
    n_layers = parts.scores.shape[0]
    meta = dict(parts.meta)
    if len(layers) < n_layers:
        meta["layers"] = f"this page holds layer {layers[0]} only (the model has {n_layers})"
    where = "" if len(layers) == n_layers else f" (layer {layers[0]} of {n_layers})"
    data = ExplorerData(tokens=parts.tokens, scores=parts.scores[layers], base_mask=parts.base_mask,
                        queries=parts.queries[layers], keys=parts.keys[layers], values=parts.values[layers],
                        scale=parts.scale, title=f"{model.name}{where}: {short_title(text)}", meta=meta,
                        layer_names=[f"layer {i}" for i in layers],
                        start=(layers.index(at_layer) if at_layer in layers else 0, at_head),
                        kind="causal" if getattr(model, "causal", False) else "self")
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


SPEECH_MODEL = "whisper-tiny.en"


def _speech(args):
    """A speech model on a WAV (or espeak-ng's reading of --say): transcript, alignment, the three attention
    kinds, and with --out the cross-attention figure and an explorer page whose keys are audio positions."""
    from .. import diagnostics, models
    from ..models import audio
    from ..models.whisper import SECONDS_PER_POSITION, Whisper, align_words, cross_attention_map

    if args.audio and args.say:
        raise UsageError("give --audio or --say, not both")
    name = SPEECH_MODEL if args.model == MODEL else args.model
    model = models.load(name)
    if not isinstance(model, Whisper):
        raise UsageError(f"--audio/--say need a speech model (whisper-tiny.en, whisper-base), got {name!r}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    wav = Path(args.audio) if args.audio else audio.say(args.say, Path(args.out) / "speech.wav" if args.out else None)
    if not wav.is_file():
        raise UsageError(f"--audio: no such file {str(wav)!r}")
    r = model.transcribe(wav, record=True)
    seconds = r.meta["seconds"]
    print(f"{model.name}: {len(model.encoder)} encoder + {len(model.decoder)} decoder layers x {model.H} heads; "
          f"{seconds:.2f} s of audio -> {len(r.ids)} tokens")
    print(f"transcript: {r.text.strip()}")
    words = align_words(model, r)
    print("alignment (read off the cross-attention of the alignment heads): "
          + "  ".join(f"{w.text}@{w.start:.2f}s" for w in words))
    speech = max(1, int(round(seconds / SECONDS_PER_POSITION)))
    for kind, layers in (("self", [f"encoder.{i}" for i in range(len(model.encoder))]),
                         ("causal", [f"decoder.{i}" for i in range(len(model.decoder))]),
                         ("cross", [f"decoder.{i}" for i in range(len(model.decoder))])):
        ent = []
        for layer in layers:
            recs = [x.weights[0] for x in r.recorder.records if x.layer == layer and x.kind == kind]
            if kind == "self":                       # encoder rows and keys: the speech part
                recs = [w[:, :speech, :speech] for w in recs]
            # one record per decoding step (the cache grows): each step's rows, averaged
            ent.append(float(np.mean([diagnostics.entropy(w).mean() for w in recs])))
        print(f"{kind:>6} attention ({'encoder' if kind == 'self' else 'decoder'}), mean normalized entropy per "
              f"layer: " + " ".join(f"{e:.2f}" for e in ent))
    if args.out:
        from ..viz import cross_attention_figure, save
        from ..viz.explorer import ExplorerData, write_explorer

        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        fig = cross_attention_figure(cross_attention_map(model, r), r.tokens, r.meta["mel"], seconds, words=words,
                                     title=f"{model.name}: cross-attention of the alignment heads")
        print(f"wrote {save(fig, folder / 'cross.png')}")
        layer = len(model.decoder) - 1
        rec = Recorder(layers=[f"decoder.{layer}"], fields=("q", "k", "v", "scores"))
        model.decode(r.prompt + r.ids, model.encode(r.meta["mel"]), None, rec)
        c = rec.get(f"decoder.{layer}", "cross")
        keys = [f"{j * SECONDS_PER_POSITION:.2f}s" for j in range(c.k.shape[-2])]        # all 1500 positions
        data = ExplorerData(tokens=[model.tokenizer.decode([i]) for i in r.prompt + r.ids], k_tokens=keys,
                            scores=c.scores[0], queries=c.q[0], keys=c.k[0], values=c.v[0], scale=c.scale,
                            title=f"{model.name} decoder layer {layer}: cross-attention (keys = 20 ms of audio "
                                  f"each; speech in the first {seconds:.1f} s)", layer_names=[f"L{layer} cross"],
                            kind="cross", meta={"model": model.name})
        print(f"wrote {write_explorer(data, folder / 'explorer.html')}")
