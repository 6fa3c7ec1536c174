"""attnlab bench: time the reference path, the tiled kernel and PyTorch's CPU SDPA (quick sizes by default)."""

from .. import bench


def register(sub):
    p = sub.add_parser("bench", help="benchmark attention: reference, tiled kernel, torch (table, JSON, plot)",
                       description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(p, full=False)
    p.set_defaults(func=run)


def run(args):
    bench.run(args)
