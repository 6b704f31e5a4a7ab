"""What Delta streams in step share: the records of what their clients hold, and whole responses.

A Delta stream keeps, per type, the version of every resource its client holds, and the registry
keeps every resource the stream was sent (tracking.py). Kept per stream, 1,000 streams holding
1,000 clusters and 1,000 endpoint assignments would be 4,000 maps of 1,000 entries, plus 2,000
responses of up to half a megabyte encoded one by one; yet streams of one group that connected
together hold the very same content, get the very same changes and send the very same bytes.

Owns `DeltaShared` (one per server: the registry keeps it, beside what every stream was sent).
It hands out read-only maps (`MappingProxyType`) that streams in step share, and remembers, per
type set of a snapshot (`TypeResources`), the answers streams would each compute from it: what
is due for a stream holding a shared map (`plan`), the shared map after a response or after
names are dropped (`versions_after`, `holding_after`), and the encoded response (`response`).
Clients reconnecting with the same `initial_resource_versions` (a group's proxies after a
restart) share one map of them (`initial`) and what of it is current (`kept`). A change only one
stream makes (an unsubscribe, a NACK's rollback) is made on that stream's own copy (a plain
`dict`, copy on write), until its client holds every resource of its interest at its current
version and nothing else: it then shares the map of exactly that (`in_full`) with every stream
so caught up. Shared maps are never changed: that is what keeps one stream's subscriptions and
versions out of another's.

What is remembered for a type set is dropped with it (referred to weakly) and bounded per set;
an entry keeps alive the shared objects whose identities its key holds, so they stay unique
while it lives. Interned name sets and initial versions are bounded server-wide. Event loop
only; nothing here locks. Must not decide protocol (delta.py's) nor content (the snapshot's): it
only remembers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from meshplane.xds.server.while_alive import WhileAlive
from meshplane.xds.snapshot import Resource, TypeResources

# Per type set: derived answers (plans, shared maps) and whole responses (large: fewer of them).
DERIVED_LIMIT = 256
RESPONSE_LIMIT = 16
# Distinct subscription sets interned server-wide (streams of one group share a handful).
NAMES_LIMIT = 256
# Distinct `initial_resource_versions` interned server-wide (each as large as a full config's names).
INITIAL_LIMIT = 16

Versions = Mapping[str, str]
"""Name → the version a client holds: a shared `MappingProxyType`, or the stream's own `dict`."""

Holding = Mapping[str, Resource]
"""Name → the resource a stream was sent (the registry's record): shared, or the stream's own `dict`."""

Updates = tuple[Resource, ...]
Removed = tuple[str, ...]
Plan = tuple[Updates, Removed]
"""What one response carries: the resources added or changed (sorted by name) and the names removed."""

T = TypeVar("T")


def is_shared(mapping: Mapping[str, object]) -> bool:
    """True for a map streams may share (never changed); False for a stream's own `dict`."""
    return not isinstance(mapping, dict)


def apply_sent(holding: dict[str, Resource], kept: Updates, updates: Updates, removed: Removed) -> dict[str, Resource]:
    """`holding` (changed in place, and returned) after a response: `kept` and `updates` now held,
    `removed` not."""
    for resource in kept:
        holding[resource.name] = resource
    for resource in updates:
        holding[resource.name] = resource
    for name in removed:
        holding.pop(name, None)
    return holding


class _Bounded(Generic[T]):
    """A memo table of at most `limit` entries; each keeps `keep` (the objects its key names by id)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: dict[Hashable, tuple[object, T]] = {}

    def remember(self, key: Hashable, keep: object, build: Callable[[], T]) -> T:
        found = self._entries.get(key)
        if found is not None:
            return found[1]
        value = build()
        if len(self._entries) >= self.limit:
            del self._entries[next(iter(self._entries))]  # the oldest: streams in step ask for the newest
        self._entries[key] = (keep, value)
        return value


@dataclass(slots=True)
class _Scope:
    """Everything remembered for one type set."""

    plans: _Bounded[Plan] = field(default_factory=lambda: _Bounded(DERIVED_LIMIT))
    in_full: _Bounded[Versions] = field(default_factory=lambda: _Bounded(DERIVED_LIMIT))
    kept: _Bounded[Updates] = field(default_factory=lambda: _Bounded(DERIVED_LIMIT))
    versions: _Bounded[Versions] = field(default_factory=lambda: _Bounded(DERIVED_LIMIT))
    holdings: _Bounded[Holding] = field(default_factory=lambda: _Bounded(DERIVED_LIMIT))
    responses: _Bounded[bytes] = field(default_factory=lambda: _Bounded(RESPONSE_LIMIT))


class DeltaShared:
    """Shared maps and remembered answers for the Delta streams of one server (see the module)."""

    def __init__(self) -> None:
        self.no_versions: Versions = MappingProxyType({})
        self.no_holding: Holding = MappingProxyType({})
        self._names: _Bounded[frozenset[str]] = _Bounded(NAMES_LIMIT)
        self._initial: _Bounded[Versions] = _Bounded(INITIAL_LIMIT)
        self._scopes: WhileAlive[TypeResources, _Scope] = WhileAlive(_Scope)

    def _scope(self, resources: TypeResources) -> _Scope:
        return self._scopes.get(resources)

    def names(self, names: frozenset[str]) -> frozenset[str]:
        """One shared set object for every stream subscribed to the same names (and their strings)."""
        return self._names.remember(names, None, lambda: names)

    def initial(self, versions: dict[str, str]) -> Versions:
        """One shared map for every stream whose client reconnects holding the same `versions`
        (`initial_resource_versions`): after a restart, a group's proxies all hold the same."""
        return self._initial.remember(frozenset(versions.items()), None, lambda: MappingProxyType(versions))

    def kept(self, resources: TypeResources, key: Hashable, keep: object, build: Callable[[], Updates]) -> Updates:
        """The resources of `resources` a reconnecting client holds at their current versions and
        was not sent, for the state `key` decides (its shared objects kept alive by `keep`)."""
        return self._scope(resources).kept.remember(key, keep, build)

    def plan(self, resources: TypeResources, key: Hashable, keep: object, build: Callable[[], Plan]) -> Plan:
        """What is due from `resources` for a stream whose state `key` decides in full (its shared
        objects named by id, and kept alive by `keep`); `build` computes it the first time."""
        return self._scope(resources).plans.remember(key, keep, build)

    def in_full(self, resources: TypeResources, key: Hashable, keep: object, build: Callable[[], Versions]) -> Versions:
        """The shared map of every resource of `resources` in the interest that `key` decides (its
        shared objects named by id, kept alive by `keep`) at its version; `build` makes it once."""
        return self._scope(resources).in_full.remember(key, keep, build)

    def versions_after(self, resources: TypeResources, held: Versions, updates: Updates, removed: Removed) -> Versions:
        """The shared map `held` with `updates` (from `resources`) now held and `removed` not held."""
        assert is_shared(held)

        def build() -> Versions:
            after = dict(held)
            for name in removed:
                after.pop(name, None)
            for resource in updates:
                after[resource.name] = resource.version
            return MappingProxyType(after)

        return self._scope(resources).versions.remember((id(held), updates, removed), held, build)

    def holding_after(
        self, resources: TypeResources, holding: Holding, kept: Updates, updates: Updates, removed: Removed
    ) -> Holding:
        """The shared map `holding` with `kept` and `updates` (from `resources`) added, `removed` dropped."""
        assert is_shared(holding)

        def build() -> Holding:
            return MappingProxyType(apply_sent(dict(holding), kept, updates, removed))

        return self._scope(resources).holdings.remember((id(holding), kept, updates, removed), holding, build)

    def response(self, resources: TypeResources, key: Hashable, build: Callable[[], bytes]) -> bytes:
        """A whole encoded response from `resources`, one object for every stream whose `key` (which
        must decide the bytes, nonce included) is the same."""
        return self._scope(resources).responses.remember(key, None, build)

    def __len__(self) -> int:
        """How many type sets have something remembered (those still alive)."""
        return len(self._scopes)
