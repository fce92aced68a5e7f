"""Giving freed memory back to the operating system between large, differently shaped allocations.

glibc's allocator keeps freed blocks for reuse. When a step allocates tensors larger than the blocks the last
step freed (a whole-slide tile larger than the one before it), those blocks do not fit and new memory is taken,
so the process's resident memory ratchets up: tiled inference over eight 12k x 16k slides grew from 1.4 GB to
2.5 GB this way (benchmarks/results/infer_memory.md). ``malloc_trim`` returns the free pages. Giving them back
after every step would cost every step its page faults again (tiles 40% slower on a small slide), so callers do
it where the next step will not fit in what is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (no-op where that is not available)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
