"""One module per ``attnlab`` subcommand; each defines ``register(subparsers)``.

A command module parses arguments and calls the library: no attention logic lives here.
"""
