"""The record of a publication: what the publisher last did, as plain data.

Owns `PublishState` and `ChangeLog` (the last generations: their cause and the snapshot versions
they gave each group). The publisher writes them; the status endpoint, metrics and CLI read them.
It lives apart from the publisher so that readers never import the code that publishes (the
"status reads, never writes" contract), and it must import nothing of the control plane but the
model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

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
class Generation:
    """One publication that changed something (or the first): a mesh generation.

    `parts`: the parts of the mesh its change set named ("services", "endpoints", "routes", …);
    `services`: at most `MAX_NAMED_SERVICES` of the services whose endpoints changed, sorted, of
    `services_changed` in all. `groups`: every proxy group it rebuilt or whose endpoints it
    replaced, with that group's snapshot version after it (a group whose build failed is not in it:
    it kept serving its previous snapshot).
    """

    number: int
    published_at: float
    cause: Cause
    parts: tuple[str, ...]
    services: tuple[str, ...]
    services_changed: int
    groups: Mapping[ProxyGroup, str]


class ChangeLog:
    """The last `keep` generations, and per proxy group which generation each version belongs to.

    The publisher writes (`record`); the status endpoint reads. For each group and type it keeps,
    for every version that type had in a kept generation, the newest generation at which it was the
    group's current version: a proxy holding version V of a type holds what generation
    `generation_of(...)` published, or something equal to it, so it has reached every generation up
    to that one. (The newest, not the first: after a change is reverted the old version is current
    again, and a proxy holding it is up to date.) Entries of generations no longer kept are dropped,
    so the maps hold at most `keep` versions per group and type.
    """

    def __init__(self, keep: int = KEPT_GENERATIONS) -> None:
        self.keep = keep
        self._generations: deque[Generation] = deque(maxlen=keep)
        self._versions: dict[ProxyGroup, dict[str, dict[str, int]]] = {}

    def record(self, generation: Generation, versions: Mapping[ProxyGroup, Mapping[str, str]]) -> None:
        """Adds `generation` (numbers only grow); `versions`: per affected group, each type's version."""
        dropping = len(self._generations) == self._generations.maxlen
        self._generations.append(generation)
        for group, given in versions.items():
            known = self._versions.setdefault(group, {})
            for type_url, version in given.items():
                known.setdefault(type_url, {})[version] = generation.number
        if dropping:  # the oldest generation left the window: so do the versions only it stamped
            self._forget_before(self._generations[0].number)

    def _forget_before(self, oldest: int) -> None:
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
        # Numbers are not consecutive (a publication that changed nothing is no generation), and
        # the window is small: a scan.
        return next((generation for generation in self._generations if generation.number == number), None)

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

    def newest_for(self, group: ProxyGroup) -> int | None:
        """The newest kept generation that affected `group`."""
        by_type = self._versions.get(group)
        if not by_type:
            return None
        return max(number for versions in by_type.values() for number in versions.values())
