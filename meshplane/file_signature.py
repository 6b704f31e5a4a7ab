"""Telling whether files changed since they were read, without reading them.

A file's signature is its inode, size and modification time, taken through symlinks: a
certificate renewed in place changes its size or mtime, and a Kubernetes Secret mount swaps a
symlink to new files (a new inode). Whoever reloads files on change (TLS for the gRPC ports, the
registry's signing CA) compares signatures and reads the files only when they differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

Signature = tuple[tuple[int, int, int], ...]


def files_signature(paths: Iterable[Path]) -> Signature:
    """The signature of `paths`, in order; raises OSError for a file that cannot be stat'ed."""
    found = []
    for path in paths:
        stat = os.stat(path)  # follows symlinks: a Kubernetes Secret mount swaps them
        found.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(found)
