"""attnlab mask KIND|SPEC: draw a mask as text and as a picture (with the tile map a kernel sees).

SPEC is any mask spec of ``attnlab.masks.SPEC_GRAMMAR`` ("causal & window:2", "window:3,3 | global:0"), parsed by
``attnlab.masks.parse`` like every other command's ``--mask``; a bare KIND takes its parameters from the options
(``window --left L --right R`` is ``window:L,R``)."""

import re

from .. import masks
from ..budget import check as check_budget

KINDS = ("full", "causal", "window", "padding", "prefix", "document", "dilated", "global", "random")


def register(sub):
    p = sub.add_parser("mask", help="draw a mask: text in the terminal, picture to --out (png/svg/pdf)",
                       description="Examples: attnlab mask causal --n 8; attnlab mask window --n 16 --left 3 "
                                   "--block 4; attnlab mask 'causal & window:2' --n 8; attnlab mask causal --lq 4 "
                                   "--lk 10 (both alignments)")
    p.add_argument("kind", metavar="KIND|SPEC",
                   help=f"a kind ({', '.join(KINDS)}) with its options, or a mask spec of attnlab.masks.SPEC_GRAMMAR")
    p.add_argument("--n", type=int, default=8, help="queries and keys (default 8)")
    p.add_argument("--lq", type=int, help="queries (default --n)")
    p.add_argument("--lk", type=int, help="keys (default --n)")
    p.add_argument("--align", choices=masks.ALIGNS, default="bottom_right",
                   help="causal/window/prefix/dilated/global/random: where queries sit when Lq != Lk")
    p.add_argument("--left", type=int, default=2, help="window: keys to the left (default 2)")
    p.add_argument("--right", type=int, default=0, help="window: keys to the right (default 0)")
    p.add_argument("--length", type=int, help="padding: real keys (default Lk - 2)")
    p.add_argument("--prefix", type=int, default=3, help="prefix: bidirectional prefix length (default 3)")
    p.add_argument("--docs", help="document: document id of each key, e.g. 0,0,0,1,1,2 (default: 3 documents)")
    p.add_argument("--stride", type=int, default=2, help="dilated: stride (default 2)")
    p.add_argument("--tokens", default="0", help="global: positions of the global tokens, e.g. 0,5 (default 0)")
    p.add_argument("--block-size", type=int, default=2, help="random: block size (default 2)")
    p.add_argument("--n-random", type=int, default=1, help="random: key blocks per query block (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random: seed (default 0)")
    p.add_argument("--block", type=int, help="also draw the tile map for tiles of this size")
    p.add_argument("--out", help="picture to write: .png, .svg or .pdf (default mask-KIND.png here)")
    p.set_defaults(func=run)


def build(args, Lk):
    """The Mask that the arguments describe: a bare KIND from its options, anything else by ``masks.parse``."""
    if args.kind not in KINDS:
        if args.align != "bottom_right":
            raise ValueError(f"--align applies to a bare KIND; in the spec {args.kind!r} write causal:top_left")
        return masks.parse(args.kind)
    if args.kind == "full":
        return masks.full()
    if args.kind == "causal":
        return masks.causal(args.align)
    if args.kind == "window":
        return masks.sliding_window(args.left, args.right, args.align)
    if args.kind == "padding":
        return masks.padding([max(Lk - 2, 1) if args.length is None else args.length])
    if args.kind == "prefix":
        return masks.prefix_lm(args.prefix, args.align)
    if args.kind == "document":
        ids = [3 * j // Lk for j in range(Lk)] if args.docs is None else _ints(args.docs, "--docs")
        return masks.document(ids)
    if args.kind == "dilated":
        return masks.dilated(args.stride, args.align)
    if args.kind == "global":
        return masks.global_tokens(_ints(args.tokens, "--tokens"), args.align)
    return masks.random_blocks(args.block_size, args.n_random, args.seed, args.align)


def check_positions(args, mask, Lk):
    """Positions given to the mask must exist at this size: a global token or a padding length past the Lk keys
    would be dropped silently by the mask (a mask is a function of positions and fits any size), so say so."""
    if args.kind == "global":
        found = [("--tokens", t) for t in _ints(args.tokens, "--tokens")]
    else:
        found = [("the spec's global:", int(t)) for group in re.findall(r"global:([0-9,]+)", masks.spec_of(mask) or "")
                 for t in group.split(",") if t]
    for name, t in found:
        if not 0 <= t < Lk:
            raise ValueError(f"{name} token {t} is out of range: the mask has {Lk} keys (positions 0..{Lk - 1})")
    if args.kind == "padding" and args.length is not None and not 0 <= args.length <= Lk:
        raise ValueError(f"--length must be in 0..{Lk} (the number of keys), got {args.length}")


def _ints(text, name):
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None


def run(args):
    Lq, Lk = args.lq or args.n, args.lk or args.n
    if min(Lq, Lk) < 1:
        raise ValueError(f"--n, --lq and --lk must be positive, got Lq={Lq}, Lk={Lk}")
    # before build(), whose default document ids are a list of Lk ints
    check_budget(masks.mask_bytes(1, Lq, Lk), f"drawing mask {args.kind} at Lq={Lq} x Lk={Lk}",
                 instead="use a smaller --n/--lq/--lk")
    from ..viz import mask_figure, save
    from ..viz._figure import figure_path

    mask = build(args, Lk)
    check_positions(args, mask, Lk)
    out = figure_path(args.out or f"mask-{re.sub(r'[^A-Za-z0-9]+', '-', args.kind).strip('-') or 'spec'}.png")
    print(mask.show(Lq, Lk))
    save(mask_figure(mask, Lq, Lk, block=args.block), out)
    print(f"wrote {out}")
