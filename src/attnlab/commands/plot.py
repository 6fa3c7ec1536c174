"""attnlab plot heatmap|causal|heads|entropy|cost: draw a figure to --out (png, svg or pdf).

Without data the figures use the seeded demo vectors of ``attnlab explore --demo`` (heatmap, heads, entropy),
seeded random q, k, v (causal), or the cost model's predictions (cost).
"""

import json
from pathlib import Path

import numpy as np

from ..checks import int_arg


def register(sub):
    p = sub.add_parser("plot", help="figures: heatmap, causal, heads, entropy, cost (--out png/svg/pdf)")
    kinds = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)

    h = _figure_parser(kinds, "heatmap", "one weight matrix with tokens, numbers and blocked cells")
    h.add_argument("--weights", help="a .npy file with a (Lq, Lk) weight matrix (default: the demo)")
    h.add_argument("--n", type=int_arg(1, 512), help="demo: tokens (default: the demo sentence)")
    h.add_argument("--layer", type=int, default=0, help="demo: layer (default 0)")
    h.add_argument("--head", type=int, default=0, help="demo: head (default 0)")
    h.add_argument("--mask", default="causal",
                   help="demo: mask spec to apply (attnlab.masks.SPEC_GRAMMAR: none, causal, window:L[,R], "
                        "causal & window:2, ...; default causal)")

    c = _figure_parser(kinds, "causal", "scores -> causal mask -> softmax -> output, for random q, k, v")
    c.add_argument("--n", type=int_arg(1, 512), default=6, help="tokens (default 6)")
    c.add_argument("--d", type=int_arg(1, 4096), default=4, help="head dim (default 4)")
    c.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    for name, text in (("heads", "a layers x heads grid of weight matrices"),
                       ("entropy", "normalized entropy of every head")):
        g = _figure_parser(kinds, name, text)
        g.add_argument("--weights", help="a .npy file with weights (heads, L, L) or (layers, heads, L, L)")
        g.add_argument("--n", type=int_arg(1, 512), help="demo: tokens (default: the demo sentence)")

    k = _figure_parser(kinds, "cost", "cost model curves (with measured points from --data), log-log")
    k.add_argument("--preset", default="gpt2", help="model preset of attnlab.cost (default gpt2)")
    k.add_argument("--data", help="JSON file {\"predicted\": ..., \"measured\": ...} in cost_figure's format")
    p.set_defaults(func=run)


def _figure_parser(kinds, name, text):
    f = kinds.add_parser(name, help=text, description=text)
    f.add_argument("--out", help=f"picture to write: .png, .svg or .pdf (default plot-{name}.png here)")
    return f


def run(args):
    from .. import viz
    from ..viz._figure import figure_path

    out = figure_path(args.out or f"plot-{args.figure}.png")
    draw = {"heatmap": _heatmap, "causal": _causal, "heads": _heads, "entropy": _entropy, "cost": _cost}
    fig = draw[args.figure](args)
    viz.save(fig, out)
    print(f"wrote {out}")


def _load(path):
    """A .npy array, its header read first: the shape it claims is checked against the file's size and the memory
    budget (``attnlab.budget``) before NumPy allocates anything of that size."""
    from ..budget import check as check_budget

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        except (ValueError, OSError, EOFError, SyntaxError) as err:
            raise ValueError(f"{path} is not a .npy array file: {' '.join(str(err).split()) or 'empty'}") from None
        start = f.tell()
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"{path} holds a {dtype} array; expected numbers (weights)")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    check_budget(nbytes, f"{path}, a {dtype} array of shape {tuple(shape)} by its header",
                 instead="pass a smaller array")
    if Path(path).stat().st_size < start + nbytes:
        raise ValueError(f"{path} is truncated: its header says shape {tuple(shape)} ({nbytes} bytes of data) but "
                         f"the file holds {Path(path).stat().st_size - start}")
    return np.load(path, allow_pickle=False)


def _demo(args):
    from ..viz.explorer import demo_data

    return demo_data(args.n)


def _heatmap(args):
    from .. import masks, viz

    if args.weights:
        return viz.heatmap(_load(args.weights))
    data = _demo(args)
    mask = demo_mask(args.mask)
    L, H = data.shape[:2]
    if not (0 <= args.layer < L and 0 <= args.head < H):
        raise ValueError(f"the demo has {L} layers and {H} heads, got --layer {args.layer} --head {args.head}")
    w = data.weights(mask)[args.layer, args.head]
    return viz.heatmap(w, data.tokens, mask=mask,
                       title=f"demo, layer {args.layer} head {args.head}, mask {masks.spec_of(mask) or 'none'}")


def demo_mask(spec: str):
    """The Mask of ``--mask`` (``attnlab.masks.parse``, the one grammar), None for a full mask."""
    from .. import masks

    mask = masks.parse(spec)
    return None if masks.spec_of(mask) == "full" else mask


def _causal(args):
    from .. import viz

    rng = np.random.default_rng(args.seed)
    q, k, v = (rng.normal(size=(args.n, args.d)) for _ in range(3))
    return viz.causal_effect(q, k, v)


def _heads(args):
    from .. import viz

    if args.weights:
        return viz.heads_grid(_load(args.weights))
    data = _demo(args)
    return viz.heads_grid(data.weights(), data.tokens)


def _entropy(args):
    from .. import viz

    return viz.entropy_figure(_load(args.weights) if args.weights else _demo(args).weights())


def _cost(args):
    from .. import cost, viz

    if args.data:
        if not Path(args.data).is_file():
            raise FileNotFoundError(f"no such file: {args.data}")
        spec = json.loads(Path(args.data).read_text())
        if not isinstance(spec, dict) or "predicted" not in spec:
            raise ValueError(f"{args.data} must hold a JSON object with 'predicted' (and optionally 'measured')")
        return viz.cost_figure(spec["predicted"], spec.get("measured"))
    n = [2 ** p for p in range(8, 16)]
    runs = {"reference, dense": ("reference", "dense"), "tiled, dense": ("tiled", "dense"),
            "tiled, causal": ("tiled", "causal"), "tiled, window:255": ("tiled", "window:255")}
    est = {name: [cost.estimate(args.preset, x, mask=m) for x in n] for name, (_, m) in runs.items()}
    flops = {name: (n, [getattr(c, runs[name][0]).flops for c in cs]) for name, cs in est.items()}
    flops["useful, causal (allowed cells only)"] = (n, [c.useful_flops for c in est["tiled, causal"]])
    cfg = est["tiled, dense"][0].config
    return viz.cost_figure({
        "FLOPs, all layers": flops,
        "peak memory of one call (bytes)": {name: (n, [getattr(c, runs[name][0]).peak_bytes for c in cs])
                                            for name, cs in est.items() if name.endswith("dense")},
    }, title=f"attention cost predicted by attnlab.cost for preset {args.preset} ({cfg.name}: "
             f"{cfg.n_layers} layers, {cfg.n_heads} heads x {cfg.head_dim}, {cfg.n_kv_heads} kv heads), "
             f"{est['tiled, dense'][0].dtype}, batch 1",
       caption=cost_caption(n, {name: cs for name, cs in est.items() if name.startswith("tiled")}))


def cost_caption(n, tiled) -> str:
    """Why the curves coincide where they do, read off the estimates themselves (``tiled``: {name: [Cost per n]},
    the dense one first). The reference path computes every cell whatever the mask; the tiled path computes
    every tile that has at least one allowed cell, so a mask saves nothing until some tile is wholly blocked."""
    (dense_name, dense), *masked = tiled.items()
    text = ("FLOPs: reference, dense and tiled, dense coincide (both compute every one of the n\u00b2 cells); "
            "they part in memory, where the reference path holds n x n score matrices and the tiled path one "
            "tile per thread. ")
    ends = {}                                                # the n where a masked curve equals the dense one
    for name, costs in masked:
        same = tuple(x for x, d, c in zip(n, dense, costs) if c.tiled.flops == d.tiled.flops)
        if same and same[-1] != n[-1]:
            ends.setdefault(same, []).append((name, costs))
    for same, curves in ends.items():
        last = same[-1]
        at = curves[0][1][n.index(last)]
        why = ("one query block holds every query (and every key tile has a query that may see one of its keys)"
               if at.block_q >= last else
               "one key block holds every key, and the first key is seen by every query" if at.block_k >= last else
               "every tile still has a query that may see one of its keys")
        names = " and ".join(f"\"{name}\"" for name, _ in curves)
        where = f"Up to n = {last}" if same == tuple(n[:len(same)]) else \
            f"At n = {', '.join(map(str, same))}"
        text += (f"{where} {names} {'lie' if len(curves) > 1 else 'lies'} on the dense curve: the tiles "
                 f"are {at.block_q} queries x {at.block_k} keys there, {why}, so no tile is wholly blocked and none "
                 f"is skipped; elsewhere blocked tiles are skipped. ")
    small = sorted({x for _, costs in masked for x, c in zip(n, costs) if c.block_q < min(x, 1024) and
                    (c.block_q, c.block_k) == (128, 128)})
    if small:
        text += (f"At n = {', '.join(map(str, small))} a masked call runs in the batched regime (every head of a "
                 f"128-query block at once, 128 x 128 tiles), which skips its wholly blocked tiles from the "
                 f"smallest n. ")
    return text + "Tiled causal heads toward the useful FLOPs (the allowed cells, about half) as n grows."
