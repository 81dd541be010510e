"""The ``pyramidflow`` command line.

Each subcommand lives in its own module under :mod:`pyramidflow.commands` (the web app's in
:mod:`pyramidflow.app.command`, since nothing below the command line imports the app) and exposes
``register(subparsers)``; it adds a parser and sets ``func`` to a handler ``func(args) -> int``.
Handlers import heavy modules lazily so that ``pyramidflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import warnings

from pyramidflow import __version__

# One entry per subcommand module, in the order they are listed in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "pyramidflow.commands.schedule",
    "pyramidflow.commands.flops",
    "pyramidflow.commands.train_vae",
    "pyramidflow.commands.cache_latents",
    "pyramidflow.commands.data",
    "pyramidflow.commands.eval",
    "pyramidflow.commands.train",
    "pyramidflow.commands.sample",
    "pyramidflow.commands.demo",
    "pyramidflow.app.command",
)

# Exceptions that mean "bad input": printed as one line, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)
INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """The project's warnings as one line each (others keep Python's format)."""
    if category.__module__.startswith("pyramidflow"):
        return f"pyramidflow: warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


_python_format = warnings.formatwarning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyramidflow",
        description="Pyramidal flow matching for video generation.",
    )
    parser.add_argument("--version", action="version", version=f"pyramidflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"pyramidflow {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"pyramidflow {args.command}: error: no space left on the disk{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyramidflow {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        warnings.formatwarning = _python_format


if __name__ == "__main__":
    sys.exit(main())
