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
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshplane.xds import wire
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
    """One unacknowledged response: what the client held before it, to roll back on NACK."""

    previous: dict[str, str | None]
    versions: dict[str, str]
    system_version: str


@dataclass(slots=True)
class _TypeState:
    wildcard: bool = False
    subscribed: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
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
        state = self.states.get(type_url)
        if state is not None and (request.resource_names_subscribe or request.resource_names_unsubscribe):
            state.synced_with = None
        if state is None:
            state = self.states[type_url] = _TypeState()
            check_resource_names(request.initial_resource_versions.keys())
            state.held.update(request.initial_resource_versions)
            state.initial_unrecorded = bool(request.initial_resource_versions)
            if type_url.allows_wildcard and not request.resource_names_subscribe:
                state.wildcard = True
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
            else:
                state.subscribed.add(name)
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
            else:
                state.subscribed.discard(name)
                state.held.pop(name, None)
                state.told_absent.discard(name)
        if request.response_nonce and (sent := state.unacked.pop(request.response_nonce, None)) is not None:
            if request.HasField("error_detail"):
                state.synced_with = None
                for name, version in sent.versions.items():
                    state.rejected[name] = version
                    if (before := sent.previous.get(name)) is None:
                        state.held.pop(name, None)
                    else:
                        state.held[name] = before
                self.registry.nacked(track, type_url, sent.system_version, request.error_detail.message)
            else:
                self.registry.acked(track, type_url, sent.system_version)

    def subscribed_types(self) -> Collection[TypeUrl]:
        return self.states.keys()

    def response_for(self, type_url: TypeUrl, snapshot: Snapshot) -> bytes | None:
        state = self.states[type_url]
        if type_url is TypeUrl.SECRET and not self.serves_keys:
            withheld = self.withheld_secrets(type_url, snapshot)
            self.note_withheld(type_url, self._interest(state, withheld) & withheld)
        updates, removed = self._changes(type_url, state, snapshot)
        if not updates and not removed and state.answered_first:
            self._record_caught_up(type_url, state, snapshot)
            return None
        state.answered_first = True
        if type_url is TypeUrl.CLUSTER:
            self._resend_endpoints_of(updates)
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
        names = self._interest(state, current.keys()) - self.withheld_secrets(type_url, snapshot)
        interest = [current[name] for name in sorted(names) if name in current]
        if any(state.held.get(resource.name) != resource.version for resource in interest):
            return
        self.registry.caught_up(self.track, type_url, snapshot.of_type(type_url).version, interest)

    def _interest(self, state: _TypeState, snapshot_names: Iterable[str]) -> set[str]:
        names = set(state.subscribed)
        if state.wildcard:
            names.update(snapshot_names)
        return names

    def _changes(self, type_url: TypeUrl, state: _TypeState, snapshot: Snapshot) -> tuple[list[Resource], list[str]]:
        resources = snapshot.of_type(type_url)
        current = resources.by_name
        withheld = self.withheld_secrets(type_url, snapshot)
        changed = resources.changed_since(state.synced_with) if state.synced_with is not None else None
        if changed is not None:
            # Only replaced resources can be due: no name came or went, no subscription changed.
            state.synced_with = resources
            return [
                replaced
                for name in sorted(changed)
                if (state.wildcard or name in state.subscribed)
                and name not in withheld
                and state.held.get(name) != (replaced := current[name]).version
                and state.rejected.get(name) != replaced.version
            ], []
        updates = []
        for name in sorted(self._interest(state, current.keys()) - withheld):
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
        if type_url is TypeUrl.CLUSTER and self.is_ads and removed and not self._routes_current(snapshot):
            removed = [name for name in removed if name not in state.held]  # make before break
            state.synced_with = None  # some removals wait
        else:
            state.synced_with = resources
        return updates, removed

    def _resend_endpoints_of(self, clusters: list[Resource]) -> None:
        endpoints = self.states.get(TypeUrl.ENDPOINT)
        if endpoints is None:
            return
        if clusters:
            endpoints.synced_with = None
        for resource in clusters:
            cluster = resource.message
            assert isinstance(cluster, cluster_pb2.Cluster)
            if cluster.type == cluster_pb2.Cluster.EDS:
                endpoints.held.pop(cluster.eds_cluster_config.service_name or cluster.name, None)

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
            for name in self._interest(state, current.keys()):
                resource = current.get(name)
                if resource is not None and state.held.get(name) != resource.version:
                    return False
        return True

    def _respond(
        self, type_url: TypeUrl, state: _TypeState, updates: list[Resource], removed: list[str], snapshot: Snapshot
    ) -> bytes:
        nonce = self.next_nonce()
        system_version = snapshot.of_type(type_url).version
        kept: list[Resource] = []
        if state.initial_unrecorded:
            # What the client said it holds, at the versions current here, is what it runs.
            state.initial_unrecorded = False
            current, sent_names = snapshot.of_type(type_url).by_name, {resource.name for resource in updates}
            withheld = self.withheld_secrets(type_url, snapshot)
            kept = [
                current[name]
                for name, version in sorted(state.held.items())
                if name not in sent_names
                and name not in withheld
                and name in current
                and current[name].version == version
            ]
        sent = _Sent(
            previous={r.name: state.held.get(r.name) for r in updates},
            versions={r.name: r.version for r in updates},
            system_version=system_version,
        )
        state.unacked[nonce] = sent
        if len(state.unacked) > _MAX_UNACKED:
            # A client that never acknowledges must not grow our memory; forget its oldest response.
            del state.unacked[next(iter(state.unacked))]
        for resource in updates:
            state.held[resource.name] = resource.version
            state.rejected.pop(resource.name, None)
            state.told_absent.discard(resource.name)
        for name in removed:
            state.held.pop(name, None)
            if name in state.subscribed:
                state.told_absent.add(name)
        assert self.track is not None
        self.registry.sent(self.track, type_url, system_version, nonce, updates, removed, held=kept)
        return (
            wire.string_field(_SYSTEM_VERSION_INFO, system_version)
            + b"".join(resource.delta_entry for resource in updates)
            + wire.string_field(_TYPE_URL, type_url.value)
            + b"".join(wire.string_field(_REMOVED_RESOURCES, name) for name in removed)
            + wire.string_field(_NONCE, nonce)
        )
