"""attnlab explain: a worked attention example, every intermediate with its formula."""

import json
from pathlib import Path

from ..cli import UsageError


def register(sub):
    p = sub.add_parser("explain", help="worked example by hand: scores, scaling, mask, softmax, weighted sum",
                       description="Inputs: --q/--k/--v inline (\"1,0;0,1\": rows by ';', numbers by ',') or "
                                   ".json/.csv files; --file with a JSON object {q, k, v[, w_q, w_k, w_v]}; or "
                                   "--random --seed S.")
    p.add_argument("--q", help="queries (Lq, d)")
    p.add_argument("--k", help="keys (Lk, d)")
    p.add_argument("--v", help="values (Lk, d_v)")
    p.add_argument("--file", help="JSON object with q, k, v (and w_q, w_k, w_v for additive)")
    p.add_argument("--random", action="store_true", help="random small inputs from --seed")
    p.add_argument("--seed", type=int, default=0, help="seed for --random and for additive weights (default 0)")
    p.add_argument("--lq", type=int, default=2, help="queries for --random (default 2)")
    p.add_argument("--lk", type=int, default=3, help="keys for --random (default 3)")
    p.add_argument("--dim", type=int, default=2, help="d for --random (default 2)")
    p.add_argument("--mask", help="a mask spec (attnlab.masks.SPEC_GRAMMAR): causal | window:L (L keys back) | "
                                  "padding:N | causal & window:2 ...")
    p.add_argument("--score", choices=("dot", "additive"), default="dot", help="scoring function (default dot)")
    p.add_argument("--wq", help="additive: W_q (A, d) inline or file")
    p.add_argument("--wk", help="additive: W_k (A, d) inline or file")
    p.add_argument("--wv", help="additive: w_v (A,) inline, e.g. \"0.5,-1\"")
    p.set_defaults(func=run)


def run(args):
    from ..learn import explain

    inputs = _inputs(args, explain)
    ex = explain.worked_example(*inputs[:3], args.mask, score=args.score, w_q=inputs[3], w_k=inputs[4],
                                w_v=inputs[5], seed=args.seed)
    print(explain.render(ex))


def _inputs(args, explain):
    given = [x for x in (args.q, args.k, args.v) if x is not None]
    sources = sum([bool(given), args.file is not None, args.random])
    if sources != 1:
        raise UsageError("give exactly one input: --q/--k/--v, --file FILE.json, or --random [--seed S]")
    weights = [explain.parse_matrix(w, n) if w is not None else None
               for w, n in ((args.wq, "--wq"), (args.wk, "--wk"))]
    w_v = explain.parse_matrix(args.wv, "--wv").ravel() if args.wv is not None else None
    if args.random:
        for name in ("lq", "lk", "dim"):
            if not 1 <= getattr(args, name) <= 8:
                raise UsageError(f"--{name} must be between 1 and 8 for a worked example, got {getattr(args, name)}")
        return (*explain.random_inputs(args.seed, args.lq, args.lk, args.dim, args.dim), *weights, w_v)
    if args.file is not None:
        return _from_file(Path(args.file), explain, weights, w_v)
    if len(given) != 3:
        raise UsageError("give all three of --q, --k and --v")
    return (*(explain.parse_matrix(x, f"--{n}") for x, n in ((args.q, "q"), (args.k, "k"), (args.v, "v"))),
            *weights, w_v)


def _from_file(path, explain, weights, w_v):
    if not path.is_file():
        raise FileNotFoundError(f"--file: no such file {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--file: {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or not {"q", "k", "v"} <= set(data):
        raise ValueError(f"--file: expected a JSON object with keys q, k, v, got {type(data).__name__}")
    arrays = [explain.to_matrix(data[n], f"{path.name}: {n}") for n in ("q", "k", "v")]
    w_q = explain.to_matrix(data["w_q"], "w_q") if "w_q" in data else weights[0]
    w_k = explain.to_matrix(data["w_k"], "w_k") if "w_k" in data else weights[1]
    w_v = explain.to_matrix(data["w_v"], "w_v").ravel() if "w_v" in data else w_v
    return (*arrays, w_q, w_k, w_v)
