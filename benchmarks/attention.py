"""Attention benchmark: attnlab reference, attnlab tiled, PyTorch CPU SDPA, in one run (attnlab.bench), and with
--targets the project's own targets (benchmarks/targets.py).

    .venv/bin/python benchmarks/attention.py --targets --out bench-out            # full: n = 512 .. 32768
    .venv/bin/python benchmarks/attention.py --sizes 512,1024,2048,4096 --out DIR # the quick check
    .venv/bin/python benchmarks/attention.py --cases dense,causal --sizes 4096 --contexts 1024 --unset-openblas-env

Prints the table (what `attnlab bench` prints, at the full sizes by default), then with --targets re-measures the
targets' ratios with their runs interleaved and prints the targets; writes DIR/attention.json (with the targets)
and DIR/attention.png.
"""

from __future__ import annotations

import argparse
import sys

import openblas_env
import targets

from attnlab import bench
from attnlab.commands.bench import add_arguments, settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, full=True)
    parser.add_argument("--targets", action="store_true",
                        help="re-measure and print the project's targets (benchmarks/targets.py)")
    parser.add_argument("--unset-openblas-env", action="store_true",
                        help=f"if {' or '.join(openblas_env.OPENBLAS_VARS)} are set, restart without them (every "
                             f"path shares the process, so every path runs without them)")
    args = parser.parse_args(argv)
    openblas_env.restart_without_overrides(args.unset_openblas_env)
    config = settings(args)
    print(openblas_env.unset_note())
    report = bench.run(config)
    extra = {"openblas_env_unset_for_this_run": openblas_env.unset_note()}
    if args.targets:
        print("re-measuring the targets' ratios with their runs interleaved ...")
        torch = bench.load_torch() if "torch" in config.impls else None
        checks = targets.targets(report.results, targets.paired(config, torch))
        extra["targets"] = checks
        print(targets.format_targets(checks))
    if args.out:
        json_path, png_path = bench.write(report, args.out, extra)
        print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
