"""Logging set-up for the command-line tools and a progress reporter for long loops."""

from __future__ import annotations

import logging
import time

__all__ = ["configure_logging", "Progress"]


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr with timestamps; INFO by default, DEBUG with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


class Progress:
    """Report ``[i/n] message (elapsed, eta)`` lines on a logger as a loop advances.

    Example::

        progress = Progress(len(cases), "cases", logger)
        for case in cases:
            ...
            progress.step(f"wrote {case}")
    """

    def __init__(self, total: int, unit: str, logger: logging.Logger) -> None:
        self.total = max(int(total), 0)
        self.unit = unit
        self.logger = logger
        self.done = 0
        self.start = time.perf_counter()

    def step(self, message: str = "") -> None:
        """Count one finished item and log it with the elapsed time and a remaining-time estimate."""
        self.done += 1
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        self.logger.info(
            "[%d/%d %s] %s (%.1f s elapsed, ~%.1f s left)", self.done, self.total, self.unit, message, elapsed,
            remaining,
        )
