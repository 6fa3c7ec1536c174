"""attnlab serve: the live explorer on 127.0.0.1 (type text, the model runs, every view updates)."""

from __future__ import annotations

import time

from ..checks import int_arg


def register(sub):
    p = sub.add_parser("serve", help="the live explorer: a local web app on 127.0.0.1 (Ctrl-C stops it)",
                       description="Start the live explorer: a page where you type text, a real model runs in "
                                   "attnlab's own layers, and the heatmap, head view, model view, step panel, "
                                   "neuron view, diagnostics, masks and cost update. Binds 127.0.0.1 only.")
    p.add_argument("--model", help="the model selected first (default: the first installed one)")
    p.add_argument("--port", type=int_arg(0, 65535), default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need "
                                                      "--allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (serves your "
                                                               "machine's CPU to the network: think twice)")
    p.set_defaults(func=run)


def run(args):
    from ..app import App
    from ..app.server import check_bind
    from ..cli import UsageError
    try:
        check_bind(args.host, args.allow_remote)        # before the models load (seconds): a typo fails at once
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        app = App(first=args.model)
        server = app.serve(args.host, args.port, allow_remote=args.allow_remote)
    except OSError as err:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    print(f"attnlab live explorer at {server.url} (models: {', '.join(app.choices)}); Ctrl-C stops it",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.shutdown()
    return 0
