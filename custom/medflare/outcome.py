"""Whether a federation's run finished, and if it did not, which site failed and why.

FLARE can end a job "completed" when its sites failed: a site whose configuration cannot be built (a bad setting
edited into the job) never trains, the simulator exits 0 and ``cross_val_results.json`` is ``{}``. A run is taken
as finished only when its cross-site results hold every model on every site (:attr:`CrossSiteReport.missing`);
otherwise :func:`check_finished` fails it in one line that names each failed participant, its error and its log.
"""

from __future__ import annotations

import re
from pathlib import Path

from medcore.errors import UserError

__all__ = ["site_errors", "failure_reasons", "check_finished"]

#: The last line of a Python traceback: ``package.module.ErrorType: message`` (the type's module is dropped).
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt)\w*)(?::\s*(.*))?$")


def _first_exception(log: Path) -> str | None:
    """``ErrorType: message`` of the first traceback in ``log`` (the failure that started it), or None."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        if "Traceback (most recent call last):" in line:
            inside = True
        elif inside and line and not line[0].isspace():
            found = _EXCEPTION_LINE.match(line.strip())
            if found:
                kind, message = found.groups()
                return f"{kind}: {message}" if message else kind
            inside = False  # a log line after a traceback cut short
    return None


def site_errors(workspace: str | Path) -> list[tuple[str, str, Path]]:
    """``(participant, "ErrorType: message", log)`` for each participant folder below ``workspace`` (the simulator's
    ``server``, ``site-1``, ...; a POC or provisioned kit's folders) whose ``error_log.txt`` holds a traceback."""
    found = []
    for log in sorted(Path(workspace).rglob("error_log.txt")):
        error = _first_exception(log)
        if error is not None:
            found.append((log.parent.name, error, log))
    return found


def failure_reasons(workspace: str | Path | None) -> str:
    """The participants' errors below ``workspace`` in one line (``site-1 failed: ErrorType: message (log: PATH);
    ...``), or where to look when none is found (None: the logs are on the sites' machines)."""
    if workspace is None:
        return "see the sites' logs on their machines"
    errors = site_errors(workspace)
    if not errors:
        return f"no participant logged an error; see the logs below {workspace}"
    return "; ".join(f"{name} failed: {error} (log: {log})" for name, error, log in errors)


def check_finished(results: str | Path | None, missing: list[str], workspace: str | Path | None,
                   job: str) -> None:
    """Fail a run whose results are absent (``results`` None or an empty file) or incomplete (``missing``, the
    report's notes), naming the participants' errors found below ``workspace`` (None: logs not on this machine).

    Raises:
        UserError: ``JOB: the federation did not finish (WHAT): site-1 failed: ErrorType: message (log: PATH); ...``.
    """
    if results is not None and not missing:
        return
    what = "no cross-site results" if results is None else "; ".join(missing)
    raise UserError(f"{job}: the federation did not finish ({what}): {failure_reasons(workspace)}")
