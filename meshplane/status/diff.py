"""`/diff?node=ID`: what a connected proxy holds against what it should hold now, resource by resource.

Owns that comparison. "Holds" is what the stream registry records the proxy's streams were last
sent, combined per type as `/config?node=` and CSDS combine them (`document.node_types`: where two
streams hold one name, the one sent later), each resource with the answer to the response that
last carried it: `acked`, `awaiting` (sent, not answered yet) or `nacked`. "Should have" is the
current snapshot of the proxy's group, for the names the proxy subscribes to.

The subscription is what the proxy's open streams asked for, as the xDS server reports it
(`StatusInputs.subscriptions`): a wildcard subscription should have every current resource of the
type, a subscription by name the current resources of those names (a name asked for that does not
exist in the mesh is not listed: there is nothing to have). Without the server at hand (a status
endpoint serving a registry alone, in tests), it is taken from the protocol's rules instead: an
Envoy's CDS and LDS are wildcard (every `meshplane bootstrap` asks so); every other subscription
names the resources it holds, and the secrets withheld from it (keys.py), which it asked for.

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


def _subscribed(
    type_url: TypeUrl,
    group: ProxyGroup,
    combined: NodeType,
    held: Mapping[str, _Held],
    subscriptions: Mapping[TypeUrl, frozenset[str] | None] | None,
) -> frozenset[str] | None:
    """The names the proxy subscribes to for `type_url` (None: every one): the server's word when
    given, else the protocol's rules (see the module)."""
    if subscriptions is not None and type_url in subscriptions:
        return subscriptions[type_url]
    if is_wildcard(type_url, group):
        return None
    return frozenset(held) | frozenset(combined.keys_withheld)


def is_wildcard(type_url: TypeUrl, group: ProxyGroup) -> bool:
    """Whether a proxy of `group` subscribes to every resource of `type_url` (see the module)."""
    return type_url.allows_wildcard and group.role is not ProxyRole.GRPC


def _held(combined: NodeType) -> dict[str, _Held]:
    """Every resource the type's streams hold, by name; where two hold one, the one sent later."""
    held: dict[str, _Held] = {}
    for entry in sorted(combined.entries, key=lambda entry: entry.sent_seq):
        held.update((resource.name, _Held(resource, entry)) for resource in entry.sent_resources())
    return held


def type_diff(
    combined: NodeType, held: Mapping[str, _Held], current: TypeResources, subscribed: frozenset[str] | None
) -> dict[str, Any]:
    """One type's comparison: the count of resources held at their current version and ACKed, and
    every other resource the proxy holds or should have, by name. `held`: `_held(combined)`;
    `subscribed`: the names the proxy subscribes to, None for every resource of the type."""
    wildcard = subscribed is None
    if subscribed is None:
        wanted: Mapping[str, Resource] = current.by_name
    else:
        wanted = {name: current.by_name[name] for name in subscribed if name in current.by_name}
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


def node_diff(
    node_id: str,
    streams: Sequence[StreamTrack],
    snapshot: Snapshot,
    subscriptions: Mapping[TypeUrl, frozenset[str] | None] | None = None,
) -> dict[str, Any]:
    """The `/diff` document of the proxy `node_id` (its open `streams`, at least one) against
    `snapshot`, its group's current one: one entry per type its streams carry, in type order.
    `subscriptions`: what its streams subscribe to, per type (None: wildcard), as the server knows
    it; None to take it from the protocol's rules (see the module). `in_sync` is true when no type
    lists anything."""
    group = max(streams, key=lambda track: track.stream_id).group
    combined = node_types(streams)
    types = {}
    for type_url in TypeUrl:
        if type_url in combined:
            held = _held(combined[type_url])  # once per type: both the comparison and the subscription use it
            subscribed = _subscribed(type_url, group, combined[type_url], held, subscriptions)
            types[type_url.short] = type_diff(combined[type_url], held, snapshot.of_type(type_url), subscribed)
    listed = any(entry["differing"] or entry["missing"] or entry["no_longer_current"] for entry in types.values())
    return {
        "node": node_id,
        "group": str(group),
        "version": snapshot.version,
        "in_sync": not listed,
        "types": types,
    }
