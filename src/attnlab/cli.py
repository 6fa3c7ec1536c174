"""``attnlab`` command line: parse, call the library, print.

Every subcommand lives in its own module of ``attnlab.commands`` with a ``register(subparsers)`` function, so
the command list grows by adding a file. Errors are one line on stderr and exit code 2; set ATTNLAB_DEBUG=1 for
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import __version__, commands


class UsageError(Exception):
    """A problem with what the user typed; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the whole usage by default)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnlab", description="Every attention mechanism, made real.")
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                     # `attnlab ... | head`: the reader left; end quietly
        _silence_stdout()
        return 0
    except (UsageError, ValueError, TypeError, ImportError, OSError, EOFError, MemoryError, ArithmeticError) as err:
        return _one_line(args.command, err, "")
    except Exception as err:                    # a defect of attnlab's own: still one line, and how to see more
        return _one_line(args.command, err, f"internal error ({type(err).__name__}): ",
                         " (a defect in attnlab: ATTNLAB_DEBUG=1 shows the traceback; please report it)")


def _one_line(command: str, err: BaseException, prefix: str, suffix: str = "") -> int:
    if os.environ.get("ATTNLAB_DEBUG"):
        raise err
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, MemoryError) and not str(err):
        message = "out of memory: try a smaller size"
    print(f"attnlab {command}: error: {prefix}{message}{suffix}", file=sys.stderr)
    return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    # run the package's module, not this file's second copy (__main__), so the errors raised by the commands
    # (attnlab.cli.UsageError) are the ones main() catches
    from attnlab.cli import main as _main

    sys.exit(_main())
