"""The conventions every command-line tool of the project follows: ``-v`` for debug logs, one sub-command per
task, option values checked as they are parsed, and the error policy of :mod:`medcore.errors`:

* an expected error (a :class:`~medcore.errors.UserError`, a bad option, a file-system error on a named path such
  as a missing input or an unwritable output) prints one line, ``error: <thing>: <problem>``, and exits with 2;
* Ctrl-C prints one line and exits with 130 (outputs are written atomically, so nothing is left half-written);
* anything else is a bug: its traceback is shown, with a line asking for a report, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import math
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from .errors import UserError
from .files import path_problem
from .progress import configure_logging
from .settings import MAX_PARALLEL, MAX_WHOLE, out_of_range

__all__ = ["CommandParser", "command_parser", "run_command", "number", "non_empty", "existing_file", "named_checkpoint",
           "existing_dir", "existing_path", "output_file", "output_dir", "device_option", "add_compute_options",
           "add_processes_option", "add_bootstrap_options", "add_generator_options", "parse_setting"]

#: File-system errors that come from the user's files and folders (permissions, space, wrong kind of path), not
#: from the code; reported like user errors even when the OS does not name the file.
_ENVIRONMENT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                       errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EFBIG,
                       errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EIO}


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``prog: error: argument --x: problem``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with ``-v/--verbose`` and a required sub-command; returns it and its sub-parser collection."""
    parser = CommandParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def add_command(sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], *, help: str,
                **defaults: Any) -> argparse.ArgumentParser:
    """The sub-command ``name``, carried out by ``run``: ``help`` is its line in the list of commands, and ``run``'s
    docstring its ``--help`` description, so what a command reads, does and writes is said once, at the code that
    does it. ``defaults`` are set on the parsed arguments as well (e.g. ``memory_options``, the options to name
    when the command runs out of memory)."""
    description = inspect.getdoc(run)
    if not description:
        raise ValueError(f"{run.__qualname__} has no docstring to describe the {name!r} command")
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(func=run, **defaults)
    return parser


def _environment_error(err: OSError) -> bool:
    return err.errno in _ENVIRONMENT_ERRNOS or (err.filename is not None and err.errno is not None)


def _out_of_memory(err: BaseException) -> bool:
    """A failed allocation: Python's ``MemoryError``, PyTorch's (CUDA or CPU) allocator errors."""
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))


def _environment_problem(err: Exception, args: argparse.Namespace) -> str | None:
    """The one-line message for a failure of the machine rather than the code (a file system error on a named
    path, a full disk, memory that cannot be allocated), or None for a bug."""
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        source, target, why = err.args[0][0]  # copytree's list of (source, target, reason)
        return f"{target}: {why}"
    if isinstance(err, OSError) and _environment_error(err):
        where = f"{err.filename}: " if err.filename is not None else ""
        return f"{where}{err.strerror or err}"
    if _out_of_memory(err):
        options = getattr(args, "memory_options", "")
        return (f"out of memory ({' '.join(str(err).split())[:160] or type(err).__name__}); "
                + (f"{options} decide how much this command needs" if options else
                   "free memory, or give the command less to hold at once"))
    return None


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set up logging and run the chosen sub-command's ``func`` under the error policy; returns
    the exit status (also for ``--help`` and usage errors, which argparse ends with ``SystemExit``)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        if err.details:
            print(err.details, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished outputs are complete, unfinished ones were not written",
              file=sys.stderr)
        return 130
    except Exception as err:
        problem = _environment_problem(err, args)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"{parser.prog}: internal error: this is a bug, not a problem with your input; please report it "
              "with the traceback above", file=sys.stderr)
        return 1


# -- option types: checked while parsing, so a bad value stops before anything runs ---------------------------------
def number(kind: type = int, *, above: float | None = None, minimum: float | None = None,
           below: float | None = None, maximum: float | None = None,
           multiple_of: int | None = None) -> Callable[[str], float]:
    """An argparse ``type`` for a whole number (``kind=int``) or a finite number (``float``) within bounds."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        problem = out_of_range(value, above=above, minimum=minimum, below=below, maximum=maximum)
        if problem is None and multiple_of and value % multiple_of:
            problem = f"must be a multiple of {multiple_of}"
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _path(text: str) -> Path:
    """``text`` as a path; an empty one (which would silently mean the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


def non_empty(text: str) -> str:
    """An argparse ``type`` for a path or value that is used elsewhere (e.g. on a site): any text but empty."""
    _path(text)
    return text


def _existing(text: str, kind: str) -> Path:
    """``text`` as a path that exists and is a ``file``, a ``folder`` or (``"file or folder"``) either."""
    path = _path(text)
    problem = path_problem(path, kind)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return path


def existing_file(text: str) -> Path:
    """An argparse ``type``: a file that exists."""
    return _existing(text, "file")


def named_checkpoint(text: str) -> tuple[str, Path]:
    """``NAME=CHECKPOINT``: a model's name and its checkpoint, an existing file or (a MONAI bundle) folder
    (argparse type)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT, got {text!r}")
    return name, existing_path(path)


def existing_dir(text: str) -> Path:
    """An argparse ``type``: a folder that exists."""
    return _existing(text, "folder")


def existing_path(text: str) -> Path:
    """An argparse ``type``: a file or folder that exists."""
    return _existing(text, "file or folder")


def _check_writable_folder(folder: Path, text: str) -> None:
    """Create and remove a hidden probe file in ``folder``: permissions alone miss read-only and virtual file
    systems (``/proc``), which would otherwise fail only after the work is done."""
    probe = folder / f".clara-open-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {folder} ({err.strerror})") from None


def _check_creatable(path: Path, text: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder this user can write into."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: cannot be created, {parent} is a file")
    _check_writable_folder(parent, text)


def output_file(text: str) -> Path:
    """An argparse ``type``: a file path that can be written (not a folder; its folder exists or can be made)."""
    path = _path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: no write permission")
    _check_creatable(path, text)
    return path


def output_dir(text: str) -> Path:
    """An argparse ``type``: a folder that exists and is writable, or can be created."""
    path = _path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: is a file, not a folder")
        _check_writable_folder(path, text)
        return path
    _check_creatable(path, text)
    return path


def add_compute_options(parser: argparse.ArgumentParser, amp: bool = True, threads: bool = True,
                        shared: str | None = None) -> None:
    """``--device`` and, as asked, ``--no-amp``, ``--num-threads`` and (``shared``: what the processes share out,
    e.g. "the slides") ``--processes``: where and how a command computes."""
    parser.add_argument("--device", type=device_option, default="auto",
                        help="auto (CUDA if available, else CPU), cpu or cuda[:n] (default: auto)")
    if amp:
        parser.add_argument("--no-amp", action="store_true",
                            help="run in float32 instead of mixed precision (fp16 on CUDA, bf16 on CPU)")
    if threads:
        parser.add_argument("--num-threads", type=number(int, minimum=0, maximum=MAX_PARALLEL), default=0,
                            help=f"PyTorch CPU threads, 0-{MAX_PARALLEL}; 0: PyTorch's default (default: 0)"
                                 + ("; with --processes, per process, and 0 shares the cores out" if shared else ""))
    if shared:
        add_processes_option(parser, shared)


def add_processes_option(parser: argparse.ArgumentParser, shared: str, data_parallel: bool = False) -> None:
    """``--processes``: how many processes share ``shared`` (e.g. "the slides") out (:mod:`medcore.distributed`);
    ``data_parallel``: they train one model together (each on its share, gradients averaged every step)."""
    from .distributed import processes_option

    what = (f"processes training one model data-parallel (PyTorch DistributedDataParallel: each trains on its "
            f"share of {shared}, gradients are averaged every step, and each validates its share)"
            if data_parallel else f"processes to share {shared} out over (each done by one process; the outputs "
                                  "are those of one process)")
    parser.add_argument("--processes", type=processes_option, default=None if data_parallel else 1,
                        help=f"{what}, started by torch.distributed's launcher, one per GPU on CUDA; auto: every "
                             "visible GPU, or one process on a CPU machine. Under torchrun, leave it at 1: the "
                             "ranks torchrun started share the work (default: "
                             + ("the recipe's processes setting, 1 unless --set" if data_parallel else "1") + ")")


def add_bootstrap_options(parser: argparse.ArgumentParser, resampled: str, zero: bool = True) -> None:
    """``--resamples`` and ``--seed`` of a command that gives 95% bootstrap intervals (:mod:`medcore.bootstrap`);
    ``resampled`` says what is resampled and how, for the help text; ``zero``: 0 resamples means no intervals."""
    parser.add_argument("--resamples", type=number(int, minimum=0 if zero else 100, maximum=100_000), default=2000,
                        help=f"bootstrap resamples of {resampled} (percentile method)"
                             + ("; 0: no intervals" if zero else ", at least 100") + " (default: 2000)")
    parser.add_argument("--seed", type=number(int, minimum=0, maximum=MAX_WHOLE), default=0,
                        help="seed of the bootstrap: the same seed gives the same intervals (default: 0)")


def add_generator_options(parser: argparse.ArgumentParser, things: str, outputs: str | None = None) -> None:
    """``--seed`` and ``--overwrite`` of a command that generates demo data: the same seed gives the same
    ``things`` (e.g. ``"cases"``), and a rerun replaces only the ``outputs`` (default: ``things``) it generated."""
    parser.add_argument("--seed", type=number(int, minimum=0), default=0,
                        help=f"random seed; the same seed gives the same {things} (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"regenerate {things} that already exist (default: keep them); only {outputs or things} "
                             "this command generated are replaced, any other file of the same name stops the run")


def device_option(text: str) -> str:
    """An argparse ``type`` for ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    from .device import DEVICE_NAMES, check_device_name

    if check_device_name(text) is not None:
        raise argparse.ArgumentTypeError(f"expected {DEVICE_NAMES}, got {text!r}")
    return text


def parse_setting(text: str) -> tuple[str, object]:
    """``--set KEY=VALUE`` values: VALUE is read as JSON (numbers, true/false, lists), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{key}: value nested too deeply") from None
