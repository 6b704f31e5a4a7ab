"""Giving freed heap memory back to the operating system after a burst of allocations.

glibc's allocator keeps memory a program freed for its next allocations, in the arena of the
thread that freed it, and returns only what lies at the top of the heap. A policy load parses
megabytes of YAML in a worker thread and frees nearly all of it, leaving that thread's arena
holding several MiB that the idle process never uses again (at 1,000 services, ~5 MiB of a
~70 MiB process). `release_free_memory()` asks glibc to return every arena's free pages
(`malloc_trim(0)`); elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # no such library, or not glibc
        return None
    return trim


def release_free_memory() -> bool:
    """Returns the allocator's free pages to the system; False where that is not possible. Costs a
    walk of the heap's free lists (milliseconds at most): call it after a burst, not per allocation."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
