"""The record of a publication: what the publisher last did, as plain data.

Owns `PublishState` and `ChangeLog` (the last generations: their cause, when their change was
first observed, the snapshot versions they gave each group, and how fast the ACKs reaching them
came). The publisher writes generations; the xDS server notes the ACKs that reach them
(`ChangeLog.reached`); the status endpoint, metrics and CLI read them. It lives apart from the
publisher so that readers never import the code that publishes (the "status reads, never writes"
contract), and it must import nothing of the control plane but the model.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshplane.model import ProxyGroup


@dataclass(frozen=True, slots=True)
class PublishState:
    """What the last publication did, for the status endpoint."""

    published_at: float | None = None
    mesh_generation: int = 0
    endpoints_only: bool = False
    duration_seconds: float = 0.0
    groups: int = 0
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# Generations kept by `ChangeLog` unless told otherwise: enough for a pipeline to ask about its
# push after a burst of others, small enough that the version maps stay a few KiB per group.
KEPT_GENERATIONS = 100
# Changed services named per generation; the rest are counted.
MAX_NAMED_SERVICES = 20


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a publication happened, as the composition root knows it: the sources whose change
    sets were not empty ("policy files", "kubernetes", "edge registry"), and how many edge devices
    changed (None: not known one by one, so every device counts as changed)."""

    sources: tuple[str, ...] = ()
    devices_changed: int | None = 0


@dataclass(frozen=True, slots=True)
class Instant:
    """One moment on both clocks: `wall` (Unix time, for documents) and `monotonic` (for durations,
    which a step of the wall clock must not bend)."""

    wall: float
    monotonic: float

    @classmethod
    def now(cls) -> Instant:
        return cls(time.time(), time.monotonic())


@dataclass(frozen=True, slots=True)
class Generation:
    """One publication that changed something (or the first): a mesh generation.

    `parts`: the parts of the mesh its change set named ("services", "endpoints", "routes", …);
    `services`: at most `MAX_NAMED_SERVICES` of the services whose endpoints changed, sorted, of
    `services_changed` in all. `groups`: every proxy group it rebuilt or whose endpoints it
    replaced, with that group's snapshot version after it (a group whose build failed is not in it:
    it kept serving its previous snapshot). `changed`: when the change it publishes was first
    observed (the first source notification of the debounce window that led to it; for the first
    generation, the control plane's start); None: not known, taken as the publication itself.
    """

    number: int
    published_at: float
    cause: Cause
    parts: tuple[str, ...]
    services: tuple[str, ...]
    services_changed: int
    groups: Mapping[ProxyGroup, str]
    changed: Instant | None = None

    @property
    def changed_at(self) -> float:
        """Unix time the change was first observed (`published_at` when not known)."""
        return self.changed.wall if self.changed is not None else self.published_at


@dataclass(slots=True)
class Acks:
    """The ACKs that reached one generation, as figures whose size does not grow with the proxies:
    how many (stream, type) ACKs reached it, and the first and last of them, in seconds from when
    its change was observed (None before the first)."""

    acked: int = 0
    first_seconds: float | None = None
    last_seconds: float | None = None


@dataclass(slots=True)
class _Kept:
    generation: Generation
    changed_monotonic: float
    published_monotonic: float
    acks: Acks = field(default_factory=Acks)


class ChangeLog:
    """The last `keep` generations, and per proxy group which generation each version belongs to.

    The publisher writes (`record`); the status endpoint reads. For each group and type it keeps,
    for every version that type had in a kept generation, the newest generation at which it was the
    group's current version: a proxy holding version V of a type holds what generation
    `generation_of(...)` published, or something equal to it, so it has reached every generation up
    to that one. (The newest, not the first: after a change is reverted the old version is current
    again, and a proxy holding it is up to date.) Entries of generations no longer kept are dropped,
    so the maps hold at most `keep` versions per group and type.

    Per kept generation it also keeps `Acks` (`reached`, called by the server on each ACK): a few
    numbers, whatever the number of proxies; they leave with their generation.
    """

    def __init__(self, keep: int = KEPT_GENERATIONS) -> None:
        self.keep = keep
        self._generations: deque[Generation] = deque(maxlen=keep)
        self._versions: dict[ProxyGroup, dict[str, dict[str, int]]] = {}
        self._kept: dict[int, _Kept] = {}
        self._newest: dict[ProxyGroup, int] = {}  # per group, the newest kept generation that affected it

    def record(self, generation: Generation, versions: Mapping[ProxyGroup, Mapping[str, str]]) -> None:
        """Adds `generation` (numbers only grow) at its publication, now; `versions`: per affected
        group, each type's version."""
        now = time.monotonic()
        dropping = len(self._generations) == self._generations.maxlen
        if dropping:
            del self._kept[self._generations[0].number]
        self._generations.append(generation)
        changed = generation.changed.monotonic if generation.changed is not None else now
        self._kept[generation.number] = _Kept(generation, changed, now)
        for group, given in versions.items():
            known = self._versions.setdefault(group, {})
            self._newest[group] = generation.number
            for type_url, version in given.items():
                known.setdefault(type_url, {})[version] = generation.number
        if dropping:  # the oldest generation left the window: so do the versions only it stamped
            self._forget_before(self._generations[0].number)

    def reached(self, number: int, connected: float, now: float) -> float | None:
        """Notes that a stream connected at `connected` acknowledged, at `now` (both monotonic),
        content that generation `number` published; returns the seconds from its change to this
        ACK, or None when it is not counted: the generation is no longer kept, or the stream
        connected after the generation was published (it got the change with its first config: its
        connection's time, not the change's, would be measured). The server calls it at most once
        per stream, type and generation. O(1)."""
        kept = self._kept.get(number)
        if kept is None or connected > kept.published_monotonic:
            return None
        seconds = max(0.0, now - kept.changed_monotonic)
        acks = kept.acks
        acks.acked += 1
        acks.first_seconds = seconds if acks.first_seconds is None else min(acks.first_seconds, seconds)
        acks.last_seconds = seconds if acks.last_seconds is None else max(acks.last_seconds, seconds)
        return seconds

    def acks(self, number: int) -> Acks:
        """The ACKs that reached generation `number` so far (a copy; empty when it is not kept)."""
        kept = self._kept.get(number)
        if kept is None:
            return Acks()
        return Acks(kept.acks.acked, kept.acks.first_seconds, kept.acks.last_seconds)

    def generation_sent(self, group: ProxyGroup, type_url: str, version: str) -> int | None:
        """The generation a response of `version` sent to a stream of `group` brings it to: the one
        that published `version` (`generation_of`), else, for a selection of the type's resources
        by name (whose version is the selection's, not the type's), the newest generation that
        affected the group, as responses are cut from the group's current snapshot. O(1)."""
        found = self.generation_of(group, type_url, version)
        return found if found is not None else self._newest.get(group)

    def _forget_before(self, oldest: int) -> None:
        for group in [group for group, number in self._newest.items() if number < oldest]:
            del self._newest[group]
        for group in list(self._versions):
            by_type = self._versions[group]
            for type_url in list(by_type):
                kept = {version: number for version, number in by_type[type_url].items() if number >= oldest}
                if kept:
                    by_type[type_url] = kept
                else:
                    del by_type[type_url]
            if not by_type:
                del self._versions[group]

    def newest_first(self, limit: int | None = None) -> list[Generation]:
        kept = list(reversed(self._generations))
        return kept if limit is None else kept[:limit]

    def get(self, number: int) -> Generation | None:
        """Generation `number`, or None when it is not kept (older than the window, or not yet published)."""
        kept = self._kept.get(number)
        return kept.generation if kept is not None else None

    @property
    def oldest(self) -> int | None:
        return self._generations[0].number if self._generations else None

    @property
    def newest(self) -> int | None:
        return self._generations[-1].number if self._generations else None

    def generation_of(self, group: ProxyGroup, type_url: str, version: str) -> int | None:
        """The newest kept generation at which `version` was `group`'s version of `type_url`; None
        when no kept generation published it there."""
        return self._versions.get(group, {}).get(type_url, {}).get(version)

    def versions_of(self, group: ProxyGroup) -> Mapping[str, Mapping[str, int]]:
        """`generation_of` for every type and version of `group` at once (type → version →
        generation): for a reader judging many streams of one group. Read it before the next
        `record`, which changes it."""
        return self._versions.get(group, {})

    def newest_for(self, group: ProxyGroup) -> int | None:
        """The newest kept generation that affected `group`."""
        return self._newest.get(group)
