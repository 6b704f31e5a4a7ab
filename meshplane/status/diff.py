"""`/diff?node=ID`: what a connected proxy holds against what it should hold now, resource by resource.

Owns that comparison. "Holds" is what the stream registry records the proxy's streams were last
sent, combined per type as `/config?node=` and CSDS combine them (`document.node_types`: where two
streams hold one name, the one sent later), each resource with the answer to the response that
last carried it: `acked`, `awaiting` (sent, not answered yet) or `nacked`. "Should have" is the
current snapshot of the proxy's group, for the names the proxy subscribes to.

What the status endpoint cannot see is a stream's subscribed names (the streams keep them), so the
subscription is taken from the protocol: an Envoy's CDS and LDS are wildcard subscriptions (every
`meshplane bootstrap` asks so), so it should have every current resource of them; every other
subscription names its resources (a gRPC client's CDS and LDS, every EDS, RDS and SDS), and a
response carries every subscribed name that exists, so it should have the current resources of the
names it holds, and of the secrets withheld from it (keys.py), which it asked for. A name asked for
that never existed is therefore not listed as missing.

Names and versions only, never a resource's contents, so no key material can leave; reads only,
and builds nothing: the snapshot compared with is the one the cache holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplane.model import ProxyGroup, ProxyRole
from meshplane.status.document import NodeType, node_types
from meshplane.xds.server.tracking import StreamTrack, SyncState, TypeTrack
from meshplane.xds.snapshot import Resource, Snapshot, TypeResources
from meshplane.xds.types import TypeUrl

# A node id longer than this is refused before it is looked up or quoted back: no proxy has one
# (resource names share the bound, xds/server/nodes.py).
MAX_NODE_ID_LENGTH = 1024

# How a held resource's response was answered, by the record's state (tracking.SyncState).
HELD_STATES = {SyncState.SYNCED: "acked", SyncState.STALE: "awaiting", SyncState.NACKED: "nacked"}


@dataclass(frozen=True, slots=True)
class _Held:
    resource: Resource
    entry: TypeTrack

    @property
    def state(self) -> str:
        return HELD_STATES.get(self.entry.state, "awaiting")


def is_wildcard(type_url: TypeUrl, group: ProxyGroup) -> bool:
    """Whether a proxy of `group` subscribes to every resource of `type_url` (see the module)."""
    return type_url.allows_wildcard and group.role is not ProxyRole.GRPC


def _held(combined: NodeType) -> dict[str, _Held]:
    """Every resource the type's streams hold, by name; where two hold one, the one sent later."""
    held: dict[str, _Held] = {}
    for entry in sorted(combined.entries, key=lambda entry: entry.sent_seq):
        held.update((resource.name, _Held(resource, entry)) for resource in entry.sent_resources())
    return held


def type_diff(combined: NodeType, current: TypeResources, wildcard: bool) -> dict[str, Any]:
    """One type's comparison: the count of resources held at their current version and ACKed, and
    every other resource the proxy holds or should have, by name."""
    held = _held(combined)
    if wildcard:
        wanted: Mapping[str, Resource] = current.by_name
    else:
        names = held.keys() | set(combined.keys_withheld)
        wanted = {name: current.by_name[name] for name in names if name in current.by_name}
    in_sync = 0
    differing, missing, gone = [], [], []
    for name in sorted(held.keys() | wanted.keys()):
        have, want = held.get(name), wanted.get(name)
        if have is None and want is not None:
            missing.append({"name": name, "current_version": want.version})
        elif have is not None and want is None:
            gone.append({"name": name, "held_version": have.resource.version, "state": have.state})
        elif have is not None and want is not None:
            if have.resource.version == want.version and have.state == "acked":
                in_sync += 1
            else:
                differing.append(
                    {
                        "name": name,
                        "held_version": have.resource.version,
                        "current_version": want.version,
                        "state": have.state,
                    }
                )
    return {
        "state": combined.state.value,
        "subscription": "wildcard" if wildcard else "names",
        "sent_version": combined.sent_version or None,
        "acked_version": combined.acked_version or None,
        "current_version": current.version,
        "in_sync": in_sync,
        "differing": differing,
        "missing": missing,
        "no_longer_current": gone,
    }


def node_diff(node_id: str, streams: Sequence[StreamTrack], snapshot: Snapshot) -> dict[str, Any]:
    """The `/diff` document of the proxy `node_id` (its open `streams`, at least one) against
    `snapshot`, its group's current one: one entry per type its streams carry, in type order.
    `in_sync` is true when no type lists anything."""
    group = max(streams, key=lambda track: track.stream_id).group
    combined = node_types(streams)
    types = {
        type_url.short: type_diff(combined[type_url], snapshot.of_type(type_url), is_wildcard(type_url, group))
        for type_url in TypeUrl
        if type_url in combined
    }
    listed = any(entry["differing"] or entry["missing"] or entry["no_longer_current"] for entry in types.values())
    return {
        "node": node_id,
        "group": str(group),
        "version": snapshot.version,
        "in_sync": not listed,
        "types": types,
    }
