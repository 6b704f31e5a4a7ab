"""`/changes` and `/changes/G`: which generations were published, why, and which proxies have them.

Owns the answer to "has my change reached every proxy yet?". A generation is a publication that
changed something (the publisher's `ChangeLog`, xds/publication.py); the proxies it concerns are
the connected streams of the groups it rebuilt or whose endpoints it replaced, counted per node.

Per stream and type, from what the stream registry recorded (tracking.py):

- reached G: the version the stream last ACKed was that group's version of the type at G or at a
  later generation (`ChangeLog.generation_of`). A SotW stream subscribing to some resources by
  name is ACKing the version of its selection, not the type's: its selection is checked against the
  group's current snapshot instead, and if it holds the current one it has reached the group's
  newest generation, and every earlier one.
- failed G: it has not reached G, and the version it last NACKed is G's or a later generation's.
- pending otherwise (sent and not answered yet). A type nothing was sent of is left out: the
  server had nothing to send it; a stream nothing was sent on yet is pending.

A stream has reached G when every type it subscribes to has; it failed when one type failed. A node
(several streams, without ADS) has reached G when every stream of it has; failed when one failed.

Each generation also says when its change was first observed (`changed_at`) and how fast ACKs
reached it (`acks`: the count of (stream, type) ACKs of content it published, from streams
connected before it was published, and the first and last of them in seconds from `changed_at`),
as the server noted them (`ChangeLog.reached`): figures of a fixed size, whatever the fleet.

Reads only: the change log, the stream registry and the cache; builds nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshplane.model import ProxyGroup
from meshplane.status.document import group_fields
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import Acks, Cause, ChangeLog, Generation
from meshplane.xds.server.tracking import Nack, StreamRegistry, StreamTrack, TypeTrack, bounded_text
from meshplane.xds.snapshot import aggregate_version
from meshplane.xds.types import TypeUrl

# Node ids named per generation and state; the rest are counted.
MAX_NAMED_NODES = 10
# What `/changes` quotes of a NACK's message (already cut to 4 KiB by the registry): enough for
# Envoy's reason, while 100 generations of 10 NACKs each stay a small document.
MAX_QUOTED_NACK_BYTES = 512
# `/changes?limit=`: the default, and the most one request may ask for (the window is no larger).
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# A generation number in a path is at most this many digits (an int64's).
MAX_GENERATION_DIGITS = 19

REACHED, NACKED, PENDING = "reached", "nacked", "pending"


@dataclass(frozen=True, slots=True)
class _TypeStand:
    """Where one type of one stream stands: the generations its ACKed and NACKed versions belong to
    (-1: none kept), and the NACK."""

    acked: int
    nacked: int
    nack: Nack | None


@dataclass(frozen=True, slots=True)
class _StreamStand:
    node_id: str
    group: ProxyGroup
    types: tuple[_TypeStand, ...]

    def state(self, number: int) -> tuple[str, Nack | None]:
        if not self.types:
            return PENDING, None  # connected, nothing sent yet
        for stand in self.types:
            if stand.acked < number and stand.nacked >= number:
                return NACKED, stand.nack
        if all(stand.acked >= number for stand in self.types):
            return REACHED, None
        return PENDING, None


def _type_stand(
    log: ChangeLog,
    cache: SnapshotCache,
    group: ProxyGroup,
    versions: Mapping[str, Mapping[str, int]],
    type_url: str,
    entry: TypeTrack,
) -> _TypeStand:
    """`versions`: `log.versions_of(group)`, looked up once per group, not per stream and type."""
    by_version = versions.get(type_url, {})
    acked = by_version.get(entry.acked_version) if entry.acked_version else None
    selection = isinstance(entry.resources, tuple)  # SotW; a Delta stream ACKs the type's version
    if acked is None and selection and entry.acked_version and entry.acked_version == entry.sent_version:
        acked = _current_selection(log, cache, group, type_url, entry)
    nack = entry.last_nack
    nacked = by_version.get(nack.rejected_version) if nack is not None else None
    return _TypeStand(-1 if acked is None else acked, -1 if nacked is None else nacked, nack)


def _current_selection(
    log: ChangeLog, cache: SnapshotCache, group: ProxyGroup, type_url: str, entry: TypeTrack
) -> int | None:
    """For a selection by name (see the module): the group's newest generation when the ACKed
    selection is what the current snapshot gives for those names, else None."""
    snapshot = cache.snapshot(group)
    if snapshot is None:
        return None
    current = snapshot.of_type(TypeUrl(type_url)).by_name
    held = entry.sent_resources()
    if any(resource.name not in current for resource in held):
        return None
    if aggregate_version(current[resource.name] for resource in held) != entry.acked_version:
        return None
    return log.newest_for(group)


@dataclass(slots=True)
class _Place:
    """One group's part of `_stands`: its version maps, its streams' stands, and the type stands
    judged so far (by what decides them)."""

    versions: Mapping[str, Mapping[str, int]]
    stands: list[_StreamStand] = field(default_factory=list)
    judged: dict[tuple[str, str, bool, type], _TypeStand] = field(default_factory=dict)


def _stands(
    log: ChangeLog, cache: SnapshotCache, streams: Iterable[StreamTrack], groups: Collection[ProxyGroup]
) -> dict[ProxyGroup, list[_StreamStand]]:
    """Where each stream of `groups` stands, by group: a generation looks at its own groups' streams
    only (at 10,000 streams, a page of generations otherwise passes over every stream once each)."""
    places: dict[ProxyGroup, _Place] = {group: _Place(log.versions_of(group)) for group in groups}
    for track in streams:
        place = places.get(track.group)
        if place is None:
            continue
        types = []
        for t, entry in track.types.items():
            # A type never sent (nor NACKed) has no version to judge: the server had nothing to
            # send it (secrets withheld, say) or has not got to it; the types it was sent judge.
            if not entry.sent_seq and entry.last_nack is None:
                continue
            type_url = str(t)
            if entry.last_nack is not None:  # the stand carries this stream's own NACK
                types.append(_type_stand(log, cache, track.group, place.versions, type_url, entry))
                continue
            # Without a NACK a stand is a function of these (a selection's version is a hash of
            # what it holds), and most streams of a group share them: judged once per group.
            key = (type_url, entry.acked_version, entry.acked_version == entry.sent_version, type(entry.resources))
            stand = place.judged.get(key)
            if stand is None:
                stand = place.judged[key] = _type_stand(log, cache, track.group, place.versions, type_url, entry)
            types.append(stand)
        place.stands.append(_StreamStand(track.node_id, track.group, tuple(types)))
    return {group: place.stands for group, place in places.items() if place.stands}


def cause_summary(cause: Cause, parts: Iterable[str], services: Iterable[str], services_changed: int) -> str:
    """One line: the sources, then what changed: `policy files (endpoints: default/web)`."""
    named = list(services)
    items = []
    for part in parts:
        if part == "endpoints":
            more = services_changed - len(named)
            items.append(f"endpoints: {', '.join(named)}" + (f" and {more} more" if more > 0 else ""))
        elif part == "devices":
            devices = cause.devices_changed
            items.append("devices: all" if devices is None else f"devices: {devices} changed")
        else:
            items.append(part)
    sources = ", ".join(cause.sources) or "no source named"
    return f"{sources} ({'; '.join(items)})" if items else sources


def generation_document(
    generation: Generation, stands: Mapping[ProxyGroup, list[_StreamStand]], acks: Acks
) -> dict[str, Any]:
    """One generation, JSON-ready (docs/status-api.md, "Changes"); `stands`: where the streams of
    (at least) its groups stand, by group (`_stands`); `acks`: the ACKs that reached it."""
    nodes: dict[str, tuple[str, Nack | None]] = {}
    for stand in (stand for group in generation.groups for stand in stands.get(group, ())):
        state, nack = stand.state(generation.number)
        before = nodes.get(stand.node_id)
        # Per node: one failed stream fails it; one pending stream keeps it pending.
        if before is None or _RANK[state] > _RANK[before[0]]:
            nodes[stand.node_id] = (state, nack)
    counts = {state: 0 for state in (REACHED, NACKED, PENDING)}
    for state, _ in nodes.values():
        counts[state] += 1
    pending = sorted(node_id for node_id, (state, _) in nodes.items() if state == PENDING)
    nacked = sorted((node_id, nack) for node_id, (state, nack) in nodes.items() if state == NACKED)
    cause = generation.cause
    return {
        "generation": generation.number,
        "published_at": generation.published_at,
        "changed_at": generation.changed_at,
        "acks": {"first_seconds": acks.first_seconds, "last_seconds": acks.last_seconds, "acked": acks.acked},
        "cause": {
            "summary": cause_summary(cause, generation.parts, generation.services, generation.services_changed),
            "sources": list(cause.sources),
            "parts": list(generation.parts),
            "services": list(generation.services),
            "services_changed": generation.services_changed,
            "devices_changed": cause.devices_changed,
        },
        "groups": [
            {"group": str(group), "fields": group_fields(group), "version": version}
            for group, version in sorted(generation.groups.items(), key=lambda item: str(item[0]))
        ],
        "proxies": {
            "total": len(nodes),
            "reached": counts[REACHED],
            "nacked": counts[NACKED],
            "pending": counts[PENDING],
            "pending_nodes": pending[:MAX_NAMED_NODES],
            "nacked_nodes": [_nacked_node(node_id, nack) for node_id, nack in nacked[:MAX_NAMED_NODES]],
        },
        "complete": counts[REACHED] == len(nodes),
    }


_RANK = {REACHED: 0, PENDING: 1, NACKED: 2}


def _nacked_node(node_id: str, nack: Nack | None) -> dict[str, Any]:
    if nack is None:
        return {"node": node_id, "type": None, "version": None, "message": None}
    return {
        "node": node_id,
        "type": nack.type_url.short,
        "version": nack.rejected_version,
        "message": bounded_text(nack.message, MAX_QUOTED_NACK_BYTES),
    }


def changes_document(log: ChangeLog, registry: StreamRegistry, cache: SnapshotCache, limit: int) -> dict[str, Any]:
    """`/changes?limit=N`: the newest `limit` kept generations, newest first."""
    listed = log.newest_first(limit)
    stands = _stands(log, cache, registry.streams(), {group for generation in listed for group in generation.groups})
    return {
        "oldest_kept": log.oldest,
        "newest": log.newest,
        "kept": log.keep,
        "generations": [generation_document(generation, stands, log.acks(generation.number)) for generation in listed],
    }


def one_generation(log: ChangeLog, registry: StreamRegistry, cache: SnapshotCache, number: int) -> dict[str, Any]:
    """`/changes/G`. Raises LookupError (its message the reason) when G is not kept."""
    generation = log.get(number)
    if generation is None:
        raise LookupError(_missing_reason(log, number))
    return generation_document(
        generation, _stands(log, cache, registry.streams(), generation.groups.keys()), log.acks(number)
    )


def _missing_reason(log: ChangeLog, number: int) -> str:
    oldest, newest = log.oldest, log.newest
    if newest is None or number > newest:
        return f"generation {number} is not published yet (the newest is {newest if newest is not None else 'none'})"
    if oldest is not None and number < oldest:
        return f"generation {number} is older than the kept window (the oldest kept is {oldest}, of {log.keep})"
    return f"generation {number} changed nothing, so it is not a generation of its own (kept: {oldest} to {newest})"


def parse_limit(query: Mapping[str, str]) -> int:
    """`limit` from a `/changes` query; raises ValueError (its message the reason) for anything else."""
    unknown = sorted(set(query) - {"limit"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)[:200]!r}; the only one is limit")
    given = query.get("limit")
    if given is None:
        return DEFAULT_LIMIT
    if not (given.isascii() and given.isdigit()) or len(given) > 4 or not 1 <= int(given) <= MAX_LIMIT:
        raise ValueError(f"limit is a whole number from 1 to {MAX_LIMIT}; got {given[:20]!r}")
    return int(given)


def parse_generation(text: str) -> int:
    """A generation number from a path; raises ValueError for anything else."""
    if not text.isascii() or not text.isdigit() or len(text) > MAX_GENERATION_DIGITS:
        raise ValueError(f"a generation is a whole number of at most {MAX_GENERATION_DIGITS} digits; got {text[:30]!r}")
    return int(text)
