"""State-of-the-world xDS streams (ADS and per-type), as Envoy and gRPC clients hold us to them.

Rules (explained in docs/xds-protocol.md), from the xDS protocol document
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):
- ACK: the latest nonce, no error_detail. NACK: the latest nonce with error_detail; the version it
  rejected is recorded and never sent again, only a newer one.
- A request whose nonce is not the latest sent for its type is stale and ignored.
- CDS and LDS responses are full state; EDS, RDS and SDS carry the names asked for.
- Warming: a request repeating an already-acknowledged nonce is Envoy asking again for a cluster
  that is warming (its CDS changed); it is answered with the current resources.
- ADS ordering: while a CDS response is unacknowledged (Envoy holds the ACK until new clusters
  have warmed), LDS and RDS wait, so routes never point at clusters that are not ready. Clusters
  the proxy holds that a new snapshot removes stay in CDS until the proxy has acknowledged the
  listeners and routes that stopped using them (make before break).
- Keys: an unauthenticated stream is not sent secrets holding private keys (keys.py); its SDS
  responses carry the rest of what it asked for, as if those did not exist yet.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from meshplane.xds import wire
from meshplane.xds.server.nodes import check_resource_names
from meshplane.xds.server.stream import Stream
from meshplane.xds.snapshot import Resource, Snapshot, aggregate_version
from meshplane.xds.types import TypeUrl

# DiscoveryResponse field numbers; the resources (field 2) come pre-encoded from the snapshot.
_VERSION_INFO = 1
_TYPE_URL = 4
_NONCE = 5


@dataclass(slots=True)
class _TypeState:
    """One type on one SotW stream."""

    wildcard: bool = False
    names: frozenset[str] = frozenset()
    needs_response: bool = True
    sent_version: str | None = None
    sent_nonce: str = ""
    acked_nonce: str = ""
    acked_version: str | None = None
    nacked_version: str | None = None
    # What the last response carried: the snapshot's own (shared) selection, never a per-stream copy.
    held: tuple[Resource, ...] = ()


class SotwStream(Stream[discovery_pb2.DiscoveryRequest]):
    """One SotW stream; ADS when `fixed_type` is None."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.states: dict[TypeUrl, _TypeState] = {}

    def handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        track = self.attach(request.node, request.HasField("node"))
        type_url = self.resolve_type(request.type_url)
        state = self.states.get(type_url)
        names = frozenset(request.resource_names)
        snapshot = self.subscription.snapshot if self.subscription is not None else None
        # Every ACK repeats the names, and every stream of a group asks for the same ones: a set
        # this stream holds, or that the snapshot has interned, was checked when it first came.
        if state is None or names != state.names:
            known = snapshot.known_names(names) if snapshot is not None else None
            if known is None:
                check_resource_names(names)
        first = state is None
        if state is None:
            state = self.states[type_url] = _TypeState()
        if request.response_nonce and request.response_nonce != state.sent_nonce:
            return  # stale: answers a response that a newer one replaced
        names_changed = names != state.names
        state.names = snapshot.intern_names(names) if snapshot is not None else names
        # Legacy wildcard: an empty first LDS/CDS request means "everything", and stays so while
        # the client keeps sending no names; "*" asks for everything explicitly.
        if type_url.allows_wildcard and ((first and not names) or (state.wildcard and not names)):
            state.wildcard = True
        else:
            state.wildcard = "*" in names
        if not request.response_nonce:
            state.needs_response = True  # a new subscription, or the client starting over
        elif request.HasField("error_detail"):
            state.nacked_version = state.sent_version
            self.registry.nacked(track, type_url, state.sent_version or "", request.error_detail.message)
            state.acked_nonce = request.response_nonce  # answered; a repeat of it is a re-request
            state.needs_response = names_changed
        elif request.response_nonce != state.acked_nonce:
            state.acked_nonce = request.response_nonce
            state.acked_version = request.version_info
            self.registry.acked(track, type_url, request.version_info)
            state.needs_response = names_changed
        else:
            state.needs_response = True  # a repeat of an acknowledged nonce: a warming cluster asking again

    def subscribed_types(self) -> Collection[TypeUrl]:
        return self.states.keys()

    def response_for(self, type_url: TypeUrl, snapshot: Snapshot) -> bytes | None:
        state = self.states[type_url]
        if not state.wildcard and not state.names:
            return None
        version, chosen = self._chosen(type_url, state, snapshot)
        if version == state.nacked_version or (not state.needs_response and version == state.sent_version):
            state.needs_response = False
            return None
        return self._respond(type_url, state, version, chosen, snapshot)

    def _chosen(self, type_url: TypeUrl, state: _TypeState, snapshot: Snapshot) -> tuple[str, tuple[Resource, ...]]:
        names = None if state.wildcard else state.names
        version, chosen = snapshot.select(type_url, names)
        if type_url is TypeUrl.SECRET and not self.serves_keys:
            withheld = self.withheld_secrets(type_url, snapshot)
            self.note_withheld(type_url, withheld if names is None else withheld & names)
            if withheld:
                version, chosen = _without(snapshot, type_url, names, chosen, withheld)
        if type_url is TypeUrl.CLUSTER and self.is_ads and state.held and state.held is not chosen:
            kept = [r for r in _gone(snapshot, type_url, state.held) if state.wildcard or r.name in state.names]
            if kept and not self._routes_current(snapshot):
                chosen = tuple(sorted((*chosen, *kept), key=lambda r: r.name))
                version = aggregate_version(chosen)
        return version, chosen

    def clusters_unacked(self) -> bool:
        clusters = self.states.get(TypeUrl.CLUSTER)
        return clusters is not None and clusters.sent_nonce != "" and clusters.acked_nonce != clusters.sent_nonce

    def _routes_current(self, snapshot: Snapshot) -> bool:
        """True when the proxy acknowledged the current listeners and routes (or does not use them)."""
        for type_url in (TypeUrl.LISTENER, TypeUrl.ROUTE):
            state = self.states.get(type_url)
            if state is None or (not state.wildcard and not state.names):
                continue
            version, _ = snapshot.select(type_url, None if state.wildcard else state.names)
            if state.acked_version != version:
                return False
        return True

    def _respond(
        self, type_url: TypeUrl, state: _TypeState, version: str, chosen: tuple[Resource, ...], snapshot: Snapshot
    ) -> bytes:
        nonce = self.next_nonce()
        state.sent_version, state.sent_nonce, state.needs_response = version, nonce, False
        state.held = chosen
        assert self.track is not None
        self.registry.sent(self.track, type_url, version, nonce, chosen)
        names = None if state.wildcard else state.names

        def build() -> bytes:
            return b"".join(
                (
                    wire.string_field(_VERSION_INFO, version),
                    wire.string_field(_TYPE_URL, type_url.value),
                    wire.string_field(_NONCE, nonce),
                    snapshot.sotw_body(type_url, names, chosen),
                )
            )

        # Streams of a group in step (same names, same nonce counter) send the very same bytes:
        # build them once. `version` is a hash of every (name, version) in `chosen`, so together
        # with the nonce it decides the bytes.
        return snapshot.shared_response(("sotw", type_url, version, nonce), build)


def _without(
    snapshot: Snapshot,
    type_url: TypeUrl,
    names: frozenset[str] | None,
    chosen: tuple[Resource, ...],
    withheld: frozenset[str],
) -> tuple[str, tuple[Resource, ...]]:
    """`chosen` (the selection for `names`) less the `withheld` secrets, and its version: the same
    for every stream of the group asking for the same names, so computed once per snapshot."""

    def build() -> tuple[str, tuple[Resource, ...]]:
        kept = tuple(resource for resource in chosen if resource.name not in withheld)
        return aggregate_version(kept), kept

    return snapshot.derived(("without-keys", type_url, names), build)


def _gone(snapshot: Snapshot, type_url: TypeUrl, held: tuple[Resource, ...]) -> list[Resource]:
    """The resources of `held` that `snapshot` no longer has (the same for every stream holding `held`)."""

    def build() -> list[Resource]:
        current = snapshot.of_type(type_url).by_name
        return [resource for resource in held if resource.name not in current]

    # `held` is the shared selection of an earlier snapshot: every stream holding it asks the same.
    return snapshot.derived(("gone", type_url, held), build)
