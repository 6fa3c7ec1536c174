"""attnlab bench: time the reference path, the tiled kernel and PyTorch's CPU SDPA (quick sizes by default).

The flags map one to one onto ``attnlab.bench.Settings``; ``add_arguments`` and ``settings`` are also what the
repository's ``benchmarks/attention.py`` parses with (full sizes, plus the project's targets)."""

from __future__ import annotations

import argparse

from .. import bench


def comma_ints(text: str) -> tuple[int, ...]:
    """"512,1024" -> (512, 1024): an argparse type for lists of positive integers."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _subset(allowed, what):
    def parse(text):
        values = tuple(x.strip() for x in text.split(",") if x.strip())
        if not values or any(x not in allowed for x in values):
            raise argparse.ArgumentTypeError(f"{what} must be a subset of {','.join(allowed)}, got {text!r}")
        return values
    return parse


def add_arguments(parser: argparse.ArgumentParser, *, full: bool) -> None:
    """The benchmark's flags; ``full``: default to the full sizes (n up to 32768) instead of the quick ones."""
    sizes, contexts = (bench.FULL_SIZES, bench.FULL_CONTEXTS) if full else (bench.QUICK_SIZES, bench.QUICK_CONTEXTS)
    parser.add_argument("--sizes", type=comma_ints, default=sizes,
                        help=f"sequence lengths, comma-separated (default {','.join(map(str, sizes))})")
    parser.add_argument("--contexts", type=comma_ints, default=contexts,
                        help=f"decode context lengths (default {','.join(map(str, contexts))})")
    parser.add_argument("--cases", type=_subset(bench.CASES, "cases"), default=bench.CASES,
                        help=f"subset of {','.join(bench.CASES)}")
    parser.add_argument("--impls", type=_subset(bench.IMPLS, "impls"), default=bench.IMPLS,
                        help=f"subset of {','.join(bench.IMPLS)}")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (>= 5)")
    parser.add_argument("--threads", type=int, default=None, help="attnlab kernel threads (default: all cores)")
    parser.add_argument("--single-core", action="store_true",
                        help="one thread for every path (attnlab kernel, BLAS, torch): a per-core comparison")
    parser.add_argument("--reference-limit", "--naive-limit", dest="reference_limit", type=float, default=3.0,
                        help="skip the reference path above this many GiB of score matrices (default 3; "
                             "--naive-limit is its old name)")
    parser.add_argument("--torch-mask-limit", type=int, default=8192,
                        help="largest n for PyTorch's masked (window) run (default 8192)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds each path runs untimed in a loop before each timed run (default 0): the "
                             "other library's idle threads stop spinning first (docs/performance.md)")
    parser.add_argument("--out", default=None, help="folder for attention.json and attention.png")


def settings(args) -> bench.Settings:
    """The parsed flags as ``bench.Settings`` (which checks them: a bad value is a one-line error)."""
    return bench.Settings(sizes=args.sizes, contexts=args.contexts, cases=args.cases, impls=args.impls,
                          heads=args.heads, head_dim=args.head_dim, repeat=args.repeat, threads=args.threads,
                          single_core=args.single_core, reference_limit=args.reference_limit,
                          torch_mask_limit=args.torch_mask_limit, settle=args.settle)


def register(sub):
    p = sub.add_parser("bench", help="benchmark attention: reference, tiled kernel, torch (table, JSON, plot)",
                       description=bench.__doc__.split("\n\n")[0],
                       epilog="The project's own speed targets are checked by the repository's "
                              "benchmarks/attention.py --targets (see docs/performance.md).")
    add_arguments(p, full=False)
    p.set_defaults(func=run)


def check_sizes(s: bench.Settings) -> None:
    """Refuse sizes whose arrays would not fit the memory budget (``attnlab.budget``) before any is made: per
    size, q, k, v and the two outputs (the tiled kernel's and the compared path's) in float32, and PyTorch's
    boolean window mask (n x n) where that run happens. The reference path has its own limit
    (--reference-limit)."""
    from ..budget import check as check_budget

    for n in sorted(set(s.sizes) | set(s.contexts)):
        need = 5 * s.heads * n * s.head_dim * 4
        if "window" in s.cases and "torch" in s.impls and n <= s.torch_mask_limit:
            need += n * n
        check_budget(need, f"attnlab bench at n={n} ({s.heads} heads x head dim {s.head_dim}: inputs, outputs"
                           f"{', the window mask' if need > 5 * s.heads * n * s.head_dim * 4 else ''})",
                     instead="use smaller --sizes/--contexts")


def run(args):
    s = settings(args)
    check_sizes(s)
    report = bench.run(s)
    if args.out:
        json_path, png_path = bench.write(report, args.out)
        print(f"wrote {json_path} and {png_path}")
    return 0

