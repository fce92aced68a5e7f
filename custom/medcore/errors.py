"""The project's one error policy, as exception types.

An *expected* error is one the user can fix: a missing or corrupt file, a bad option or setting value, a folder
that is not what the command needs, an output that cannot be written. Code that checks a user's input raises
:class:`UserError` (or a subclass naming the domain, e.g. ``CaseError``) with a message that starts with the file,
folder, option or setting at fault and then says what is wrong. The command-line tools print such errors as one
line and exit with status 2 (:func:`medcore.command.run_command`).

Anything else that escapes a command is a bug, however ordinary its type: a ``ValueError`` from numpy or a
``KeyError`` from MONAI shows its traceback instead of being passed off as the user's mistake.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["UserError", "SettingError", "first_line", "user_error_in", "user_errors_unwrapped"]


class UserError(ValueError):
    """An expected error caused by the user's input; the message names the thing at fault and the problem.

    Args:
        message: one line (line breaks in it are folded into spaces when printed).
        details: optional evidence printed below that line, e.g. the end of a log that says why a job failed.

    It subclasses ``ValueError`` so that library callers that catch bad values keep working.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class SettingError(UserError):
    """A recipe setting (``--set KEY=VALUE``, a job's ``train`` block) with an unknown name or a bad value."""


def first_line(err: BaseException, empty: str | None = None) -> str:
    """The first line of ``err``'s message, to quote a library's error inside a one-line message; for an empty
    message ``empty``, or the exception's type name when ``empty`` is None. A message without a word (``KeyError:
    101`` from a zip reader says ``101``) is prefixed with the type's name, so it still tells what happened."""
    text = str(err).strip()
    if text:
        line = text.splitlines()[0]
        return line if any(c.isalpha() for c in line) else f"{type(err).__name__}: {line}"
    return type(err).__name__ if empty is None else empty


def user_error_in(err: BaseException) -> UserError | None:
    """The :class:`UserError` ``err`` is or was caused by (its ``__cause__`` and ``__context__`` chain), if any:
    libraries that run the project's code wrap what it raises (MONAI's transforms in ``RuntimeError("applying
    transform ...")``), and the user's error must still be one line naming the file."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def user_errors_unwrapped() -> Iterator[None]:
    """Around calls into a library that wraps the exceptions of the project's code it runs: a :class:`UserError`
    inside such a wrapper is raised as itself; any other exception passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        found = user_error_in(err)
        if found is None:
            raise
        raise found from None
