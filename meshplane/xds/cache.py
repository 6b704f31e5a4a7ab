"""The current snapshot of every proxy group that has a stream, and the wake-ups streams wait on.

Owns: one current `Snapshot` per `ProxyGroup` with at least one subscribed stream, nothing else
(go-control-plane issue 882: memory must not grow with the number of snapshots ever made). A
stream subscribes with an `asyncio.Event`; setting a different snapshot for its group sets that
event, and the stream then reads whatever is current — a slow stream skips intermediate snapshots
instead of queueing them. Must not know the protocol (that is the server's) nor the model's
sources (the publisher decides content).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshplane.model import ProxyGroup
from meshplane.xds.snapshot import Snapshot


@dataclass(slots=True)
class _GroupEntry:
    snapshot: Snapshot | None = None
    wakers: set[asyncio.Event] = field(default_factory=set)
    # When `snapshot` became current: wall clock for operators, monotonic for push latency.
    published_at: float | None = None
    published_monotonic: float | None = None


class CacheSubscription:
    """A stream's hold on its group: keeps the group's snapshot alive until `close()`."""

    def __init__(self, cache: SnapshotCache, group: ProxyGroup, waker: asyncio.Event) -> None:
        self._cache = cache
        self.group = group
        self.waker = waker
        self._closed = False

    @property
    def snapshot(self) -> Snapshot | None:
        return self._cache.snapshot(self.group)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cache._unsubscribe(self.group, self.waker)


class SnapshotCache:
    """Current snapshots by proxy group.

    `on_group_wanted(group)` is called when a stream subscribes to a group that has no snapshot.
    It runs inside the stream's attach, so it must return at once: the publisher notes the group
    and builds its snapshot later, off the stream; `set_snapshot` then wakes the stream as for any
    update. (A snapshot it does set before returning is seen at once: tests' harnesses do that.)
    """

    def __init__(self) -> None:
        self._groups: dict[ProxyGroup, _GroupEntry] = {}
        self.on_group_wanted: Callable[[ProxyGroup], None] = lambda group: None

    def groups(self) -> list[ProxyGroup]:
        """Every group with at least one subscribed stream, sorted."""
        return sorted(self._groups)

    def lacks_snapshot(self, group: ProxyGroup) -> bool:
        """True when `group` has a subscribed stream and no snapshot yet (a build is wanted)."""
        entry = self._groups.get(group)
        return entry is not None and entry.snapshot is None

    def snapshot(self, group: ProxyGroup) -> Snapshot | None:
        entry = self._groups.get(group)
        return entry.snapshot if entry is not None else None

    def set_snapshot(self, group: ProxyGroup, snapshot: Snapshot) -> bool:
        """Make `snapshot` current for `group` and wake its streams; False (and no wake-up) when the
        group has no stream or already has equal content."""
        entry = self._groups.get(group)
        if entry is None:
            return False
        if entry.snapshot is not None and entry.snapshot.version == snapshot.version:
            return False
        entry.snapshot = snapshot
        entry.published_at, entry.published_monotonic = time.time(), time.monotonic()
        for waker in entry.wakers:
            waker.set()
        return True

    def subscribe(self, group: ProxyGroup, waker: asyncio.Event) -> CacheSubscription:
        entry = self._groups.get(group)
        if entry is None:
            entry = self._groups[group] = _GroupEntry()
        entry.wakers.add(waker)
        if entry.snapshot is None:
            self.on_group_wanted(group)
        if entry.snapshot is not None:
            waker.set()
        return CacheSubscription(self, group, waker)

    def _unsubscribe(self, group: ProxyGroup, waker: asyncio.Event) -> None:
        entry = self._groups.get(group)
        if entry is None:
            return
        entry.wakers.discard(waker)
        if not entry.wakers:
            del self._groups[group]

    def published_at(self, group: ProxyGroup) -> float | None:
        """Wall-clock time (`time.time()`) the group's current snapshot was set; None without one."""
        entry = self._groups.get(group)
        return entry.published_at if entry is not None else None

    def published_monotonic(self, group: ProxyGroup) -> float | None:
        """As `published_at`, on the monotonic clock (push latency is measured from it)."""
        entry = self._groups.get(group)
        return entry.published_monotonic if entry is not None else None

    def stream_counts(self) -> dict[ProxyGroup, int]:
        return {group: len(entry.wakers) for group, entry in sorted(self._groups.items())}
