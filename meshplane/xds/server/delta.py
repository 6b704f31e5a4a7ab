"""Incremental (Delta) xDS streams, ADS and per-type.

Rules (explained in docs/xds-protocol.md), from the xDS protocol document's "Incremental xDS" section
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds):
- The client subscribes and unsubscribes by name; a first LDS/CDS request with no names, or "*",
  is a wildcard subscription. Unsubscribing forgets what the client held, so a later
  resubscription sends the resource again (go-control-plane issue 431).
- Responses carry only resources whose version differs from what the client holds, and the names
  it holds that are gone. `initial_resource_versions` tells what a reconnecting client holds;
  versions are content hashes, so an unchanged resource is not sent again after a restart. What
  it holds at the current versions is recorded as held (status, config dumps) with the first
  response, though not sent: a proxy failing over to this replica shows what it runs.
- NACK: the resources of the rejected response are marked with their rejected versions and not
  sent again until they change; what the client holds is rolled back. When a later snapshot
  goes back to what the client holds (the bad change reverted), nothing is due, and the type is
  recorded as in sync again: the client holds, and acknowledged, every current resource.
- Warming: Envoy does not ask again for the endpoints of a cluster that CDS changed, so every
  EDS cluster sent in CDS has its endpoints sent too, changed or not.
- ADS ordering as in SotW: LDS/RDS wait while CDS is unacknowledged; removed clusters are removed
  only once the proxy acknowledged the listeners and routes of the current snapshot.
- Keys: an unauthenticated stream is not sent secrets holding private keys (keys.py): they are
  outside its interest, neither sent nor announced as removed (a removal would let Envoy finish
  warming without the certificate), nor recorded as held.

Streams in step share (delta_shared.py): their subscription sets, their maps of what the client
holds, what is due for them and the encoded response are the same objects, so 1,000 streams of a
group cost about what one does plus what SotW's streams cost. A change that is one stream's own
(an unsubscribe, a NACK's rollback) goes to that stream's own copy.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshplane.xds import wire
from meshplane.xds.server.delta_shared import Plan, Removed, Updates, Versions, is_shared
from meshplane.xds.server.nodes import check_resource_names
from meshplane.xds.server.stream import Stream
from meshplane.xds.server.tracking import SyncState
from meshplane.xds.snapshot import Resource, Snapshot, TypeResources
from meshplane.xds.types import TypeUrl

# DeltaDiscoveryResponse field numbers; the resources (field 2) come pre-encoded from the snapshot.
_SYSTEM_VERSION_INFO = 1
_TYPE_URL = 4
_NONCE = 5
_REMOVED_RESOURCES = 6
_MAX_UNACKED = 64


@dataclass(slots=True)
class _Sent:
    """One unacknowledged response: what it carried, and what the client held before it (the
    shared map it held, or the versions it held of the names carried), to roll back on NACK."""

    previous: Mapping[str, str | None]
    updates: Updates
    system_version: str


@dataclass(slots=True)
class _TypeState:
    held: Versions  # name -> version the client holds: shared while in step, else the stream's own dict
    wildcard: bool = False
    subscribed: frozenset[str] = frozenset()  # interned: shared by the streams subscribed to the same names
    told_absent: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)  # name -> version the client NACKed
    unacked: dict[str, _Sent] = field(default_factory=dict)  # nonce -> what it carried
    answered_first: bool = False
    # Set by `initial_resource_versions`: what the client holds is recorded with the first response.
    initial_unrecorded: bool = False
    # The snapshot's set this state reflects in full (every name of interest held at its version,
    # or rejected): the next set made from it by `replacing` is diffed by its changed names only.
    # Forgotten (None) whenever subscriptions or what the client holds change otherwise.
    synced_with: TypeResources | None = None


class DeltaStream(Stream[discovery_pb2.DeltaDiscoveryRequest]):
    """One Delta stream; ADS when `fixed_type` is None."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.states: dict[TypeUrl, _TypeState] = {}

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        track = self.attach(request.node, request.HasField("node"))
        type_url = self.resolve_type(request.type_url)
        check_resource_names(request.resource_names_subscribe)
        check_resource_names(request.resource_names_unsubscribe)
        shared = self.registry.delta_shared
        state = self.states.get(type_url)
        if state is not None and (request.resource_names_subscribe or request.resource_names_unsubscribe):
            state.synced_with = None
        if state is None:
            state = self.states[type_url] = _TypeState(shared.no_versions)
            check_resource_names(request.initial_resource_versions.keys())
            if request.initial_resource_versions:
                state.held = shared.initial(dict(request.initial_resource_versions))
                state.initial_unrecorded = True
            if type_url.allows_wildcard and not request.resource_names_subscribe:
                state.wildcard = True
        if request.resource_names_subscribe:
            added = set(request.resource_names_subscribe)
            if "*" in added:
                state.wildcard = True
                added.discard("*")
            if not added <= state.subscribed:
                state.subscribed = shared.names(state.subscribed | added)
        if request.resource_names_unsubscribe:
            dropped = set(request.resource_names_unsubscribe)
            if "*" in dropped:
                state.wildcard = False
                dropped.discard("*")
            if not dropped.isdisjoint(state.subscribed):
                state.subscribed = shared.names(state.subscribed - dropped)
            for name in dropped:
                if name in state.held:
                    _own(state).pop(name)
                state.told_absent.discard(name)
        if request.response_nonce and (sent := state.unacked.pop(request.response_nonce, None)) is not None:
            if request.HasField("error_detail"):
                state.synced_with = None
                held = _own(state)
                for resource in sent.updates:
                    state.rejected[resource.name] = resource.version
                    if (before := sent.previous.get(resource.name)) is None:
                        held.pop(resource.name, None)
                    else:
                        held[resource.name] = before
                self.registry.nacked(track, type_url, sent.system_version, request.error_detail.message)
            else:
                self.registry.acked(track, type_url, sent.system_version)

    def subscribed_types(self) -> Collection[TypeUrl]:
        return self.states.keys()

    def subscriptions(self) -> dict[TypeUrl, frozenset[str] | None]:
        return {type_url: None if state.wildcard else state.subscribed for type_url, state in self.states.items()}

    def response_for(self, type_url: TypeUrl, snapshot: Snapshot) -> bytes | None:
        state = self.states[type_url]
        if type_url is TypeUrl.SECRET and not self.serves_keys:
            withheld = self.withheld_secrets(type_url, snapshot)
            self.note_withheld(type_url, _interest(state, withheld) & withheld)
        updates, removed = self._changes(type_url, state, snapshot)
        if not updates and not removed and state.answered_first:
            self._record_caught_up(type_url, state, snapshot)
            return None
        state.answered_first = True
        if type_url is TypeUrl.CLUSTER:
            self._resend_endpoints_of(updates, snapshot.of_type(TypeUrl.ENDPOINT))
        return self._respond(type_url, state, updates, removed, snapshot)

    def _record_caught_up(self, type_url: TypeUrl, state: _TypeState, snapshot: Snapshot) -> None:
        """After a NACK, once the type has changed since the rejected version, with nothing due: when
        the client holds every current resource of interest at its current version and has answered
        every response, it runs exactly the current snapshot's resources (the rejected change was
        reverted), so the registry records the type as in sync at the current version. Without this
        it would stay NACKED until some unrelated change or a reconnect, as no response is due to be
        acknowledged. While the type is still at the rejected version the NACK stands, even when the
        rejected response carried nothing to roll back (only removals)."""
        assert self.track is not None
        entry = self.track.types.get(type_url)
        if entry is None or entry.state is not SyncState.NACKED or state.unacked:
            return
        if entry.last_nack is not None and entry.last_nack.rejected_version == snapshot.of_type(type_url).version:
            return
        current = snapshot.of_type(type_url).by_name
        names = _interest(state, current.keys()) - self.withheld_secrets(type_url, snapshot)
        interest = [current[name] for name in sorted(names) if name in current]
        if any(state.held.get(resource.name) != resource.version for resource in interest):
            return
        self.registry.caught_up(self.track, type_url, snapshot.of_type(type_url).version, interest)

    def _changes(self, type_url: TypeUrl, state: _TypeState, snapshot: Snapshot) -> Plan:
        resources = snapshot.of_type(type_url)
        current = resources.by_name
        withheld = self.withheld_secrets(type_url, snapshot)
        changed = resources.changed_since(state.synced_with) if state.synced_with is not None else None
        if changed is not None:
            # Only replaced resources can be due: no name came or went, no subscription changed.
            state.synced_with = resources
            return tuple(
                replaced
                for name in sorted(changed)
                if (state.wildcard or name in state.subscribed)
                and name not in withheld
                and state.held.get(name) != (replaced := current[name]).version
                and state.rejected.get(name) != replaced.version
            ), ()
        if is_shared(state.held) and not state.rejected and not state.told_absent:
            # Then what is due depends on these alone, and streams in step ask the same: once.
            key = (state.wildcard, id(state.subscribed), id(state.held), withheld)
            keep = (state.subscribed, state.held)
            updates, removed = self.registry.delta_shared.plan(
                resources, key, keep, lambda: _due(state, current, withheld)
            )
        else:
            updates, removed = _due(state, current, withheld)
        if type_url is TypeUrl.CLUSTER and self.is_ads and removed and not self._routes_current(snapshot):
            removed = tuple(name for name in removed if name not in state.held)  # make before break
            state.synced_with = None  # some removals wait
        else:
            state.synced_with = resources
        return updates, removed

    def _resend_endpoints_of(self, clusters: Updates, assignments: TypeResources) -> None:
        """Forgets that the client holds the endpoints of the EDS clusters in `clusters` (the warming
        rule above), so they are sent again; `assignments` is the snapshot's endpoint set."""
        endpoints = self.states.get(TypeUrl.ENDPOINT)
        if endpoints is None:
            return
        if clusters:
            endpoints.synced_with = None
        names = []
        for resource in clusters:
            cluster = resource.message
            assert isinstance(cluster, cluster_pb2.Cluster)
            if cluster.type == cluster_pb2.Cluster.EDS:
                name = cluster.eds_cluster_config.service_name or cluster.name
                if name in endpoints.held:
                    names.append(name)
        if not names:
            return
        if is_shared(endpoints.held):
            endpoints.held = self.registry.delta_shared.versions_after(assignments, endpoints.held, (), tuple(names))
        else:
            held = _own(endpoints)
            for name in names:
                held.pop(name, None)

    def clusters_unacked(self) -> bool:
        clusters = self.states.get(TypeUrl.CLUSTER)
        return clusters is not None and bool(clusters.unacked)

    def _routes_current(self, snapshot: Snapshot) -> bool:
        """True when the proxy holds (and acknowledged) the current listeners and routes."""
        for type_url in (TypeUrl.LISTENER, TypeUrl.ROUTE):
            state = self.states.get(type_url)
            if state is None:
                continue
            if state.unacked:
                return False
            current = snapshot.of_type(type_url).by_name
            for name in _interest(state, current.keys()):
                resource = current.get(name)
                if resource is not None and state.held.get(name) != resource.version:
                    return False
        return True

    def _respond(
        self, type_url: TypeUrl, state: _TypeState, updates: Updates, removed: Removed, snapshot: Snapshot
    ) -> bytes:
        shared = self.registry.delta_shared
        nonce = self.next_nonce()
        resources = snapshot.of_type(type_url)
        system_version = resources.version
        kept: Updates = ()
        if state.initial_unrecorded:
            # What the client said it holds, at the versions current here, is what it runs.
            state.initial_unrecorded = False
            current, withheld, held_before = resources.by_name, self.withheld_secrets(type_url, snapshot), state.held

            def held_at_current() -> Updates:
                sent_names = {resource.name for resource in updates}
                return tuple(
                    current[name]
                    for name, version in sorted(held_before.items())
                    if name not in sent_names
                    and name not in withheld
                    and name in current
                    and current[name].version == version
                )

            if is_shared(held_before):
                kept = shared.kept(resources, (id(held_before), updates, withheld), held_before, held_at_current)
            else:
                kept = held_at_current()
        previous: Mapping[str, str | None]
        if is_shared(state.held):
            previous = state.held  # never changed: what the client held before this response
            state.held = shared.versions_after(resources, state.held, updates, removed)
        else:
            held = _own(state)
            previous = {resource.name: held.get(resource.name) for resource in updates}
            for resource in updates:
                held[resource.name] = resource.version
            for name in removed:
                held.pop(name, None)
            self._rejoin(state, resources, self.withheld_secrets(type_url, snapshot))
        state.unacked[nonce] = _Sent(previous, updates, system_version)
        if len(state.unacked) > _MAX_UNACKED:
            # A client that never acknowledges must not grow our memory; forget its oldest response.
            del state.unacked[next(iter(state.unacked))]
        if state.rejected or state.told_absent:
            for resource in updates:
                state.rejected.pop(resource.name, None)
                state.told_absent.discard(resource.name)
        for name in removed:
            if name in state.subscribed:
                state.told_absent.add(name)
        assert self.track is not None
        self.registry.sent(self.track, type_url, system_version, nonce, updates, removed, held=kept, source=resources)
        # Everything in the bytes is in the key (the type and system version are `resources`'):
        # streams in step share one response object instead of encoding a copy each.
        return shared.response(
            resources,
            (updates, removed, nonce),
            lambda: (
                wire.string_field(_SYSTEM_VERSION_INFO, system_version)
                + b"".join(resource.delta_entry for resource in updates)
                + wire.string_field(_TYPE_URL, type_url.value)
                + b"".join(wire.string_field(_REMOVED_RESOURCES, name) for name in removed)
                + wire.string_field(_NONCE, nonce)
            ),
        )

    def _rejoin(self, state: _TypeState, resources: TypeResources, withheld: frozenset[str]) -> None:
        """Swaps the stream's own map for the shared one when they are equal: its client holds every
        resource of its interest at its current version, and nothing else (a stream whose
        unsubscribe or NACK is behind it). Every stream so caught up shares one map instead of
        keeping its own."""
        if state.rejected or state.told_absent:
            return
        current = resources.by_name

        def build() -> Versions:
            names = sorted(_interest(state, current.keys()) - withheld)
            return MappingProxyType({name: current[name].version for name in names if name in current})

        key = (state.wildcard, id(state.subscribed), withheld)
        in_full = self.registry.delta_shared.in_full(resources, key, state.subscribed, build)
        if state.held == in_full:
            state.held = in_full


def _own(state: _TypeState) -> dict[str, str]:
    """The stream's own map of what its client holds, copied from the shared one on the first
    change only this stream makes (copy on write: shared maps are never changed)."""
    if not isinstance(state.held, dict):
        state.held = dict(state.held)
    return state.held


def _interest(state: _TypeState, snapshot_names: Iterable[str]) -> set[str]:
    names = set(state.subscribed)
    if state.wildcard:
        names.update(snapshot_names)
    return names


def _due(state: _TypeState, current: Mapping[str, Resource], withheld: frozenset[str]) -> Plan:
    """What a response to `state` must carry from `current`: every resource of interest whose version
    the client neither holds nor rejected, and the names of interest it holds that are gone, or it
    asked for and was not told are absent. Reads nothing else of the stream (see `_changes`)."""
    updates = []
    for name in sorted(_interest(state, current.keys()) - withheld):
        resource = current.get(name)
        if resource is None:
            continue
        if state.held.get(name) != resource.version and state.rejected.get(name) != resource.version:
            updates.append(resource)
    removed = []
    for name in sorted(state.held):
        if name not in current and (state.wildcard or name in state.subscribed):
            removed.append(name)
    for name in sorted(state.subscribed - state.told_absent):
        if name not in current and name not in state.held:
            removed.append(name)  # tells the client a name it asked for does not exist
    return tuple(updates), tuple(removed)
