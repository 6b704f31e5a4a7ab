"""Freed heap memory goes back to the system after a burst (`meshplane.memory`)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to ask")
def test_memory_freed_by_a_worker_thread_goes_back_to_the_system() -> None:
    """A thread allocates and frees ~64 MiB in small blocks (as a parse does): its arena keeps the
    pages until `release_free_memory` returns them. Run in a fresh interpreter, alone."""
    probe = """
import threading
from meshplane.memory import release_free_memory

def rss_kib():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])

def burst():
    blocks = [bytearray(1000) for _ in range(64_000)]
    keep = blocks[-1]  # one survivor at the top, so the heap cannot simply shrink from the end
    del blocks
    burst.kept = keep

thread = threading.Thread(target=burst)
thread.start()
thread.join()
before = rss_kib()
assert release_free_memory()
print(before - rss_kib())
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert int(run.stdout) > 32 * 1024  # more than half of what was freed came back
