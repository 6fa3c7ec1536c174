"""Attention benchmark: attnlab naive, attnlab tiled, PyTorch CPU SDPA, in one run (see attnlab/bench.py).

    .venv/bin/python benchmarks/attention.py --out bench-out                      # full: n = 512 .. 32768
    .venv/bin/python benchmarks/attention.py --sizes 512,1024,2048,4096 --out DIR # the quick check
    .venv/bin/python benchmarks/attention.py --cases dense,causal --sizes 4096 --contexts 1024

Prints the table and the targets of issue 3; writes DIR/attention.json and DIR/attention.png.
"""

import sys

from attnlab.bench import main

if __name__ == "__main__":
    sys.exit(main(full=True))
