"""Overlapping input with computation: a bounded background producer."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")


def prefetch(items: Iterator[T], depth: int = 3) -> Iterator[T]:
    """Yield ``items``, produced in a background thread at most ``depth`` ahead.

    For readers that release the GIL (OpenSlide decodes, file reads) while the consumer computes. An error raised
    by the producer is raised in the consumer; a consumer that stops early stops the producer (and unblocks it if
    it waits on the full queue)."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put(item)
            box.put(done)
        except BaseException as err:  # hand the reader's error to the consumer
            box.put(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
