"""The conventions every command-line tool of the project follows: ``-v`` for debug logs, one sub-command per
task, and user errors printed as ``error: <file>: <problem>`` with exit status 2 (no traceback)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .progress import configure_logging

__all__ = ["command_parser", "run_command", "parse_setting", "add_resume_argument", "add_report_parser",
           "add_ship_code_parser"]


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


def add_resume_argument(parser: argparse.ArgumentParser) -> None:
    """``--resume-from JOB_ID`` of ``make-job``: a job that goes on from an interrupted run (:mod:`medcore.resume`)."""
    parser.add_argument("--resume-from", metavar="JOB_ID",
                        help="go on from interrupted job JOB_ID (e.g. cut off by a server restart) at the round "
                             "after its last completed one, with its global model, best model and the sites' local "
                             "state; submit the result to the same server and sites, with the same --rounds")


def add_report_parser(sub: argparse._SubParsersAction, description: str, func) -> argparse.ArgumentParser:
    """The ``report`` sub-command (cross-site table and training curves); returns it for extra options."""
    rep = sub.add_parser("report", help="print the cross-site table from cross_val_results.json and plot training "
                                        "curves", description=description)
    rep.add_argument("path", help="cross_val_results.json, or a folder that contains exactly one")
    rep.add_argument("--markdown", action="store_true", help="print a Markdown table instead of the text layout")
    rep.add_argument("--out", help="folder for report.txt/.md/.csv/.json and training_curves.png (from the "
                                   "TensorBoard events found under PATH)")
    rep.add_argument("--no-plot", action="store_true", help="do not plot the training curves")
    rep.set_defaults(func=func)
    return rep


def add_ship_code_parser(sub: argparse._SubParsersAction, packages: Sequence[str], job: str) -> None:
    """The ``ship-code`` sub-command: copy ``packages`` into a job's ``app/custom`` (``job``: the committed one)."""
    ship = sub.add_parser(
        "ship-code", help=f"copy the project's code into a job's app/custom (make does this for {job})",
        description=f"Copy the {' and '.join(packages)} packages into JOB/app/custom, replacing older copies, so "
                    "FLARE ships them to the sites with the job. Run it after changing the code.",
    )
    ship.add_argument("job", help="job folder (holding app/config and app/custom)")
    ship.set_defaults(func=lambda args: _ship_code(args.job, packages))


def _ship_code(job: str, packages: Sequence[str]) -> int:
    from pathlib import Path

    from .jobs import ship_code

    if not (Path(job) / "app" / "config").is_dir():
        raise ValueError(f"{job}: not a job folder (no app/config inside)")
    out = ship_code(Path(job) / "app" / "custom", packages)
    print(f"project code copied into {out}")
    return 0
