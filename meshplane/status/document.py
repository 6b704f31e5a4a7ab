"""The `/status` document: sources, the last publication, node groups and proxies, and readiness.

Pure reads of what `StatusInputs` hands over; builds plain JSON-ready dicts (the shape is
documented in docs/status-api.md and docs/status-api.schema.json, and tested against them).
A proxy is one node id: the streams it holds (one ADS stream, or one per type) are merged, and
each type shows what the latest of them was sent and answered.

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
from meshplane.model import ProxyGroup
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import PublishState
from meshplane.xds.server.tracking import Nack, StreamRegistry, StreamTrack, SyncState, TypeTrack
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl


@dataclass(frozen=True, slots=True)
class StatusInputs:
    """What the status endpoint reads; every field is a read function or a registry it only reads.

    `sources` returns one mapping per enabled source: name, synced, last_success, last_attempt,
    errors, counts (see `SourceStatus`), optionally `notes` and `events` (monotonic counters such
    as registrations or lease expiries, exported as metrics). `snapshot_for(group)` builds what a
    proxy of that group would get now. `admin_token`: the token that unlocks secret-bearing dumps;
    None means they stay locked.
    """

    sources: Callable[[], Sequence[Mapping[str, Any]]]
    publish_state: Callable[[], PublishState]
    cache: SnapshotCache
    registry: StreamRegistry
    snapshot_for: Callable[[ProxyGroup], Snapshot | None] = lambda group: None
    admin_token: str | None = None


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
        if not source.get("synced"):
            reasons.append(f"source {source.get('name')} has not synced")
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


def _type_document(entry: TypeTrack | None) -> dict[str, Any]:
    if entry is None:
        entry = TypeTrack()
    return {
        "state": entry.state.value,
        "sent_version": entry.sent_version or None,
        "sent_nonce": entry.sent_nonce or None,
        "sent_at": entry.sent_at,
        "acked_version": entry.acked_version or None,
        "acked_at": entry.acked_at,
        "pending_nonce": entry.pending_nonce or None,
        "resources": entry.resource_count,
        "last_nack": nack_document(entry.last_nack),
        # Secrets holding private keys not sent to this unauthenticated stream (xds/server/keys.py).
        "keys_withheld": list(entry.keys_withheld),
    }


def latest_per_type(streams: Iterable[StreamTrack]) -> dict[TypeUrl, TypeTrack]:
    """For each type, the entry of the stream that sent it last (a proxy may hold a stream per type,
    and briefly two of the same while it reconnects)."""
    latest: dict[TypeUrl, TypeTrack] = {}
    for track in streams:
        for type_url, entry in track.types.items():
            current = latest.get(type_url)
            if current is None or (entry.sent_seq, entry.acked_seq, entry.nacked_seq) > (
                current.sent_seq,
                current.acked_seq,
                current.nacked_seq,
            ):
                latest[type_url] = entry
    return latest


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
    latest = latest_per_type(streams)
    types = {type_url.short: _type_document(latest.get(type_url)) for type_url in TypeUrl}
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
        "state": overall_state(entry.state for entry in latest.values()).value,
        "streams": [
            {
                "id": track.stream_id,
                "kind": str(track.kind),
                "peer": track.peer,
                "connected_at": track.connected_at,
                "types": sorted(type_url.short for type_url in track.types),
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


def _source_document(source: Mapping[str, Any], now: float) -> dict[str, Any]:
    document: dict[str, Any] = _plain(dict(source))
    last_success = document.get("last_success")
    # Since the source last confirmed it is in sync (SourceStatus.last_success), not since a change.
    document["sync_age_seconds"] = max(0.0, now - last_success) if isinstance(last_success, int | float) else None
    document["errors"] = [redact_secrets(str(error)) for error in document.get("errors", [])]
    document["notes"] = [redact_secrets(str(note)) for note in document.get("notes", [])]
    document["state"] = source_state(bool(document.get("synced")), document["errors"])
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
