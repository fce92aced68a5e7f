"""The conventions every command-line tool of the project follows: ``-v`` for debug logs, one sub-command per
task, and user errors printed as ``error: <file>: <problem>`` with exit status 2 (no traceback)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .progress import configure_logging

__all__ = ["command_parser", "run_command", "parse_setting", "ship_code_command"]


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


def parse_setting(text: str) -> tuple[str, object]:
    """``--set KEY=VALUE`` values: VALUE is read as JSON (numbers, true/false, lists), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def ship_code_command(job: str, packages: Sequence[str]) -> int:
    """The ``ship-code`` sub-command of both tools: copy ``packages`` into ``job/app/custom``."""
    from pathlib import Path

    from .jobs import ship_code

    if not (Path(job) / "app" / "config").is_dir():
        raise ValueError(f"{job}: not a job folder (no app/config inside)")
    out = ship_code(Path(job) / "app" / "custom", packages)
    print(f"project code copied into {out}")
    return 0
