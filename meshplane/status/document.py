"""The `/status` document: sources, the last publication, node groups and proxies, and readiness.

Pure reads of what `StatusInputs` hands over; builds plain JSON-ready dicts (the shape is
documented in docs/status-api.md and docs/status-api.schema.json, and tested against them).
A proxy is one node id: the streams it holds (one ADS stream, or one per type: one per EDS cluster,
SDS secret and RDS route configuration) are combined per type by `node_types`, the one place that
rule lives (the config dump and the metrics read it too).

A group's fields are read generically (`dataclasses.asdict`), so a field added to `ProxyGroup`
shows up here without a change; `site` is read the same way, and is null where groups have none.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplane.logs import redact_secrets
from meshplane.model import Mesh, ProxyGroup, SourceStatus
from meshplane.status.devices import DeviceLookup
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import PublishState
from meshplane.xds.server.tracking import Nack, StreamKind, StreamRegistry, StreamTrack, SyncState, TypeTrack
from meshplane.xds.snapshot import Resource, Snapshot
from meshplane.xds.types import TypeUrl


@dataclass(frozen=True, slots=True)
class StatusInputs:
    """What the status endpoint reads; every field is a read function or a registry it only reads.

    `sources` returns the `SourceStatus` of each enabled source (its `events` are monotonic
    counters such as registrations or lease expiries, exported as metrics). `snapshot_for(group)` builds what a
    proxy of that group would get now. `admin_token`: the token that unlocks secret-bearing dumps;
    None means they stay locked. `subscriptions(node_id)`: what that proxy's open streams subscribe
    to, per type (None: wildcard), as the xDS server knows it; None when no server is at hand
    (`/diff` then takes the subscriptions from the protocol's rules). `mesh`: the current merged
    mesh, None before the first merge (`/topology` draws it). `devices`: the edge registry's live
    devices (`/status/devices`), None when this control plane runs no registry.
    """

    sources: Callable[[], Sequence[SourceStatus]]
    publish_state: Callable[[], PublishState]
    cache: SnapshotCache
    registry: StreamRegistry
    snapshot_for: Callable[[ProxyGroup], Snapshot | None] = lambda group: None
    admin_token: str | None = None
    subscriptions: Callable[[str], Mapping[TypeUrl, frozenset[str] | None]] | None = None
    mesh: Callable[[], Mesh | None] = lambda: None
    devices: DeviceLookup | None = None


@dataclass(frozen=True, slots=True)
class ProxyFilter:
    """`/status` query filters: every given one must match. `out_of_sync`: a type STALE or NACKED."""

    role: str | None = None
    site: str | None = None
    out_of_sync: bool = False

    def matches_group(self, group: ProxyGroup) -> bool:
        if self.role is not None and str(group.role) != self.role:
            return False
        return self.site is None or group_site(group) == self.site


def group_site(group: ProxyGroup) -> str | None:
    """The group's edge site, or None where there is none (or groups have no `site` yet)."""
    site = getattr(group, "site", None)
    return str(site) if site else None


def group_fields(group: ProxyGroup) -> dict[str, Any]:
    """Every field of the group, JSON-ready, whatever fields `ProxyGroup` has."""
    fields: dict[str, Any] = _plain(dataclasses.asdict(group))
    return fields


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)  # a StrEnum becomes its value
    return value


def readiness(inputs: StatusInputs) -> list[str]:
    """Why the control plane is not ready to serve; empty when it is."""
    reasons = []
    for source in inputs.sources():
        if source.feeds_mesh and not source.synced:
            # The first error says why (the database or the API server unreachable, a file refused).
            why = f": {source.errors[0]}" if source.errors else ""
            reasons.append(f"source {source.name} has not synced{why}")
    if inputs.publish_state().published_at is None:
        reasons.append("no configuration has been published yet")
    return reasons


def nack_document(nack: Nack | None) -> dict[str, Any] | None:
    if nack is None:
        return None
    return {
        "node": nack.node_id,
        "type": nack.type_url.short,
        "version": nack.rejected_version,
        "message": nack.message,
        "at": nack.at,
    }


@dataclass(frozen=True, slots=True)
class NodeType:
    """One xDS type of one proxy, combined over the streams that count for it (`node_types`).

    `entries` are those streams' records of the type, newest stream first. The state is the worst
    of theirs; versions are shown only where every stream agrees; the resources are each counted
    once however many streams hold them.
    """

    entries: tuple[TypeTrack, ...]

    @property
    def state(self) -> SyncState:
        return overall_state(entry.state for entry in self.entries)

    @property
    def sent_version(self) -> str:
        """The version every stream was last sent; "" when they differ (per-type EDS streams are
        each sent their own cluster's assignment, so theirs differ; each is in `streams`)."""
        return _common(entry.sent_version for entry in self.entries)

    @property
    def acked_version(self) -> str:
        """The version every stream last acknowledged; "" when they differ."""
        return _common(entry.acked_version for entry in self.entries)

    @property
    def last_sent(self) -> TypeTrack:
        """The entry of the stream sent this type last: the nonce and time of the last response."""
        return max(self.entries, key=lambda entry: entry.sent_seq)

    @property
    def acked_at(self) -> float | None:
        return max(self.entries, key=lambda entry: entry.acked_seq).acked_at

    @property
    def pending_nonce(self) -> str:
        """The nonce of the latest response not answered yet, on whichever stream."""
        waiting = [entry for entry in self.entries if entry.pending_nonce]
        return max(waiting, key=lambda entry: entry.sent_seq).pending_nonce if waiting else ""

    @property
    def last_nack(self) -> Nack | None:
        """The NACK that makes the type NACKED (the latest such), else the latest NACK, as history."""
        nacked = [entry for entry in self.entries if entry.state is SyncState.NACKED] or [
            entry for entry in self.entries if entry.last_nack is not None
        ]
        return max(nacked, key=lambda entry: entry.nacked_seq).last_nack if nacked else None

    @property
    def keys_withheld(self) -> tuple[str, ...]:
        return tuple(sorted({name for entry in self.entries for name in entry.keys_withheld}))

    @property
    def resource_count(self) -> int:
        if len(self.entries) == 1:  # an ADS proxy: its count as kept, no set built per /status
            return self.entries[0].resource_count
        return len({resource.name for entry in self.entries for resource in entry.sent_resources()})

    def sent_resources(self) -> tuple[Resource, ...]:
        """What the proxy was last sent of this type on all these streams, one resource per name
        (where two streams hold one name, the one sent later), sorted by name."""
        if len(self.entries) == 1:
            return self.entries[0].sent_resources()
        by_name: dict[str, Resource] = {}
        for entry in sorted(self.entries, key=lambda entry: entry.sent_seq):
            by_name.update((resource.name, resource) for resource in entry.sent_resources())
        return tuple(by_name[name] for name in sorted(by_name))


def _common(values: Iterable[str]) -> str:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else ""


def _is_ads(track: StreamTrack) -> bool:
    return track.kind in (StreamKind.SOTW_ADS, StreamKind.DELTA_ADS)


def node_types(streams: Iterable[StreamTrack]) -> dict[TypeUrl, NodeType]:
    """Each type one proxy's streams carry, combined over every stream that counts for it.

    A per-type proxy holds several streams of one type (one per EDS cluster, SDS secret, RDS route
    configuration): each counts, so a NACK or an unanswered response on any of them shows as the
    proxy's state of the type. A stream no longer counts for a type once a newer stream of the node
    replaced it, as when a proxy reconnects and the old stream has not closed yet: a newer ADS
    stream carrying the type (a node has one ADS stream), or a newer stream holding every resource
    of the type the older one holds (not none: an older stream holding nothing still counts).
    """
    newest_first = sorted(streams, key=lambda track: track.stream_id, reverse=True)
    return _combine(newest_first, _replaced(newest_first))


def _combine(newest_first: Sequence[StreamTrack], replaced: Mapping[TypeUrl, set[int]]) -> dict[TypeUrl, NodeType]:
    # The newest stream carrying a type is never replaced, so every type keeps at least one entry.
    return {
        type_url: NodeType(
            tuple(
                track.types[type_url]
                for track in newest_first
                if type_url in track.types and track.stream_id not in ids
            )
        )
        for type_url, ids in replaced.items()
    }


def _replaced(newest_first: Sequence[StreamTrack]) -> dict[TypeUrl, set[int]]:
    """Per type, the ids of the streams a newer stream of the node replaced for it."""
    replaced: dict[TypeUrl, set[int]] = {}
    ads_seen: set[TypeUrl] = set()
    newer: dict[TypeUrl, list[TypeTrack]] = {}
    names: dict[int, frozenset[str]] = {}

    def names_of(entry: TypeTrack) -> frozenset[str]:
        # Built only where a type has two streams (per-type ones hold a resource or two), never for
        # a proxy's only stream: /status is read every 2 s by each open dashboard.
        key = id(entry)
        if key not in names:
            names[key] = frozenset(resource.name for resource in entry.sent_resources())
        return names[key]

    for track in newest_first:
        for type_url, entry in track.types.items():
            ids = replaced.setdefault(type_url, set())
            before = newer.setdefault(type_url, [])
            held = names_of(entry) if before and type_url not in ads_seen else frozenset()
            if type_url in ads_seen or (held and any(held <= names_of(other) for other in before)):
                ids.add(track.stream_id)
            before.append(entry)
            if _is_ads(track):
                ads_seen.add(type_url)
    return replaced


def _type_document(combined: NodeType | None) -> dict[str, Any]:
    if combined is None:
        combined = NodeType((TypeTrack(),))
    last_sent = combined.last_sent
    return {
        "state": combined.state.value,
        "sent_version": combined.sent_version or None,
        "sent_nonce": last_sent.sent_nonce or None,
        "sent_at": last_sent.sent_at,
        "acked_version": combined.acked_version or None,
        "acked_at": combined.acked_at,
        "pending_nonce": combined.pending_nonce or None,
        "resources": combined.resource_count,
        "last_nack": nack_document(combined.last_nack),
        # Secrets holding private keys not sent to this unauthenticated stream (xds/server/keys.py).
        "keys_withheld": list(combined.keys_withheld),
    }


def _stream_type_document(entry: TypeTrack, replaced: bool) -> dict[str, Any]:
    return {
        "state": entry.state.value,
        "sent_version": entry.sent_version or None,
        "acked_version": entry.acked_version or None,
        "resources": entry.resource_count,
        "replaced": replaced,
    }


def overall_state(states: Iterable[SyncState]) -> SyncState:
    """The worst state among a proxy's types (NACKED > STALE > SYNCED), NOT SENT only if nothing was sent."""
    return max(states, key=lambda state: state.severity, default=SyncState.NOT_SENT)


def proxies_by_node(registry: StreamRegistry) -> dict[str, list[StreamTrack]]:
    by_node: dict[str, list[StreamTrack]] = {}
    for track in registry.streams():
        by_node.setdefault(track.node_id, []).append(track)
    return by_node


def _proxy_document(node_id: str, streams: list[StreamTrack]) -> dict[str, Any]:
    newest = max(streams, key=lambda track: track.stream_id)
    group = newest.group
    newest_first = sorted(streams, key=lambda track: track.stream_id, reverse=True)
    replaced = _replaced(newest_first)  # once per proxy: both the combined types and each stream's flag read it
    combined = _combine(newest_first, replaced)
    types = {type_url.short: _type_document(combined.get(type_url)) for type_url in TypeUrl}
    return {
        "node": node_id,
        "cluster": newest.node_cluster,
        "role": str(group.role),
        "site": group_site(group),
        "locality": _plain(dataclasses.asdict(group.locality)),
        "group": str(group),
        "group_fields": group_fields(group),
        "kind": ", ".join(sorted({str(track.kind) for track in streams})),
        "connected_at": min(track.connected_at for track in streams),
        "user_agent": newest.user_agent,
        "state": overall_state(entry.state for entry in combined.values()).value,
        "streams": [
            {
                "id": track.stream_id,
                "kind": str(track.kind),
                "peer": track.peer,
                "connected_at": track.connected_at,
                "types": sorted(type_url.short for type_url in track.types),
                # This stream's own record of each type, and whether a newer stream replaced it.
                "states": {
                    type_url.short: _stream_type_document(entry, track.stream_id in replaced.get(type_url, ()))
                    for type_url, entry in sorted(track.types.items(), key=lambda item: item[0].short)
                },
            }
            for track in streams
        ],
        "types": types,
    }


# A source's state, from its `synced` and `errors`: what the dashboard's badge and `meshplane
# status sources` show. SERVING_LAST_GOOD: synced once, but its current content is refused or it
# cannot reach where it comes from, so what is served is its last good content.
SOURCE_SYNCED = "synced"
SOURCE_SERVING_LAST_GOOD = "serving_last_good"
SOURCE_NOT_SYNCED = "not_synced"


def source_state(synced: bool, errors: Sequence[str]) -> str:
    if not synced:
        return SOURCE_NOT_SYNCED
    return SOURCE_SERVING_LAST_GOOD if errors else SOURCE_SYNCED


def _source_document(source: SourceStatus, now: float) -> dict[str, Any]:
    """Every field of `source`, JSON-ready, then its age, its redacted errors and notes, and its state."""
    document: dict[str, Any] = _plain(dataclasses.asdict(source))
    last_success = source.last_success
    # Since the source last confirmed it is in sync (SourceStatus.last_success), not since a change.
    document["sync_age_seconds"] = max(0.0, now - last_success) if last_success is not None else None
    document["errors"] = [redact_secrets(error) for error in source.errors]
    document["notes"] = [redact_secrets(note) for note in source.notes]
    document["state"] = source_state(source.synced, document["errors"])
    return document


def sources_document(inputs: StatusInputs) -> list[dict[str, Any]]:
    now = time.time()
    return [_source_document(source, now) for source in inputs.sources()]


def groups_document(inputs: StatusInputs, selected: ProxyFilter | None = None) -> list[dict[str, Any]]:
    groups = []
    for group, streams in inputs.cache.stream_counts().items():
        if selected is not None and not selected.matches_group(group):
            continue
        snapshot = inputs.cache.snapshot(group)
        groups.append(
            {
                "group": str(group),
                "fields": group_fields(group),
                "role": str(group.role),
                "site": group_site(group),
                "streams": streams,
                "version": snapshot.version if snapshot else None,
                "published_at": inputs.cache.published_at(group),
                "resources": {t.short: len(snapshot.of_type(t)) for t in TypeUrl} if snapshot else {},
            }
        )
    return groups


def proxies_document(inputs: StatusInputs, selected: ProxyFilter | None = None) -> list[dict[str, Any]]:
    selected = selected or ProxyFilter()
    proxies = []
    for node_id, streams in proxies_by_node(inputs.registry).items():
        if not any(selected.matches_group(track.group) for track in streams):
            continue
        proxy = _proxy_document(node_id, streams)
        if selected.out_of_sync and all(
            t["state"] in (SyncState.SYNCED, SyncState.NOT_SENT) for t in proxy["types"].values()
        ):
            continue
        proxies.append(proxy)
    return proxies


def status_document(inputs: StatusInputs, selected: ProxyFilter | None = None) -> dict[str, Any]:
    """The whole `/status` document; `selected` filters proxies and groups (not sources)."""
    state = inputs.publish_state()
    reasons = readiness(inputs)
    proxies = proxies_document(inputs, selected)
    nodes = {proxy["node"] for proxy in proxies}
    nacks = [nack_document(nack) for nack in reversed(inputs.registry.recent_nacks)]
    if selected is not None and selected != ProxyFilter():
        nacks = [nack for nack in nacks if nack is not None and nack["node"] in nodes]
    return {
        "generated_at": time.time(),
        "ready": not reasons,
        "not_ready_reasons": reasons,
        "sources": sources_document(inputs),
        "publish": _plain(dataclasses.asdict(state)),
        "groups": groups_document(inputs, selected),
        "proxies": proxies,
        "recent_nacks": nacks,
        # Not filtered: a refused stream has no proxy to filter by (it may never have named its node).
        "refused_streams": dict(sorted(inputs.registry.refused_counts.items())),
    }
