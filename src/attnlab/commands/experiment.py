"""attnlab experiment bottleneck|scaling|scorers|cost|train: experiments that show why attention works the way it does.

Each experiment takes --seed, --out DIR (its JSON and PNG files go there) and --quick (small sizes, seconds), prints
its table and conclusion, and lists the files it wrote. The experiments import PyTorch and matplotlib only when
they run.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

from ..checks import non_negative_int, positive_int

OUT = "attnlab-experiments"
EXPERIMENTS = {
    "bottleneck": "the fixed-vector bottleneck: seq2seq with and without attention vs source length "
                  "(Bahdanau et al. 2015, Fig. 2)",
    "scaling": "why divide by sqrt(d_k): score variance, softmax saturation and vanishing gradients vs d_k",
    "scorers": "additive vs dot-product attention: speed at growing n and d, accuracy on the bottleneck task",
    "cost": "cost when n doubles: time and memory at n, 2n, 4n for naive, tiled and windowed attention",
    "train": "training through attnlab's kernel: the same small transformer trained with the autograd bridge and "
             "with torch SDPA, loss curves compared",
}


def register(sub):
    p = sub.add_parser("experiment", help="experiments that show why: bottleneck, scaling, scorers, cost, train",
                       description="Experiments that show why. Each writes JSON + PNG to --out.")
    which = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, text in EXPERIMENTS.items():
        e = which.add_parser(name, help=text, description=text)
        e.add_argument("--seed", type=int, default=0, help="random seed (default 0); results are deterministic "
                                                          "given it, timings aside")
        e.add_argument("--out", default=OUT, help=f"folder for the JSON and PNG files (default {OUT})")
        e.add_argument("--quick", action="store_true", help="small sizes that run in seconds (the test suite's)")
        e.set_defaults(func=RUNNERS[name])
        if name == "bottleneck":
            e.add_argument("--steps", type=int, help="training batches per model (default 1000, quick 250)")
            e.add_argument("--max-len", type=int, help="longest source length (default 60, quick 30)")
            e.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
        elif name == "scorers":
            e.add_argument("--bottleneck", metavar="FILE", help="bottleneck.json to read the accuracy from "
                                                                "(default: OUT/bottleneck.json)")
        elif name == "train":
            e.add_argument("--steps", type=int, help="training steps per run (default 400, quick 120)")
        elif name == "cost":
            e.add_argument("--n", type=int, default=512, help="smallest length; the run uses n, 2n, 4n "
                                                              "(default 512; --quick uses 64)")


def _module(name):
    try:
        return importlib.import_module(f"attnlab.learn.experiments.{name}")
    except ImportError as err:
        raise ImportError(f"this experiment needs {err.name or 'a missing package'}: "
                          f"pip install 'attnlab[all]' ({err})") from None


def _check_seed(seed):
    non_negative_int(seed, "--seed")


def _wrote(out, files):
    print(f"wrote {', '.join(str(f) for f in files)} to {out}/")


def bottleneck(args):
    _check_seed(args.seed)
    b = _module("bottleneck")
    for flag, value in (("--steps", args.steps), ("--max-len", args.max_len)):
        if value is not None:
            positive_int(value, flag)
    cfg = b.with_overrides(b.QUICK if args.quick else b.Config(), steps=args.steps, max_len=args.max_len)
    result = b.run(out=args.out, seed=args.seed, config=cfg, progress=not args.no_progress)
    print(b.table(result))
    _wrote(args.out, result["files"])


def scaling(args):
    _check_seed(args.seed)
    s = _module("scaling")
    result = s.run(out=args.out, seed=args.seed, quick=args.quick)
    print(s.table(result))
    print(result["conclusion"])
    _wrote(args.out, result["files"])


def scorers(args):
    _check_seed(args.seed)
    s = _module("scorers")
    result = s.run(out=args.out, seed=args.seed, quick=args.quick, bottleneck=args.bottleneck)
    print(s.table(result))
    print(s.conclusion(result))
    _wrote(args.out, result["files"])


def cost(args):
    _check_seed(args.seed)
    positive_int(args.n, "--n")
    _module("cost_doubling").run(n=args.n, out=args.out, seed=args.seed, quick=args.quick)   # prints its own lines


def train(args):
    _check_seed(args.seed)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {args.steps}")
    t = _module("train")
    cfg = t.QUICK if args.quick else t.Config()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    result = t.run(out=args.out, seed=args.seed, config=cfg)
    print(t.table(result))
    _wrote(args.out, result["files"])


RUNNERS = {"bottleneck": bottleneck, "scaling": scaling, "scorers": scorers, "cost": cost, "train": train}
