"""The conventions every command-line tool of the project follows: ``-v`` for debug logs, one sub-command per
task, and user errors printed as ``error: <file>: <problem>`` with exit status 2 (no traceback)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .progress import configure_logging

__all__ = ["command_parser", "run_command"]


def command_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with ``-v/--verbose`` and a required sub-command; returns it and its sub-parser collection."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                user_errors: tuple[type[BaseException], ...]) -> int:
    """Parse ``argv``, set up logging and run the chosen sub-command's ``func``; ``user_errors`` exit with 2."""
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
