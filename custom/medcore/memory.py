"""Giving freed memory back to the operating system between large, differently shaped allocations.

glibc's allocator keeps freed blocks for reuse. When each step allocates tensors of new shapes (tiles of a slide
shrunk to its tissue, whole volumes of different sizes), those kept blocks no longer fit the next request, so the
process's resident memory ratchets up with every new shape: tiled inference over a folder of slides grew from
1.4 GB to 2.7 GB this way (benchmarks/results/infer_memory.md). ``malloc_trim`` returns the free pages at once.
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
    """Return the allocator's free pages to the system (no-op where that is not available). About 1 ms."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
