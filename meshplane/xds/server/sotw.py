"""State-of-the-world xDS streams (ADS and per-type), as Envoy and gRPC clients hold us to them.

Rules (explained in docs/xds-protocol.md), from the xDS protocol document
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):
- ACK: the latest nonce, no error_detail. NACK: the latest nonce with error_detail; the version it
  rejected is recorded and never sent again, only a newer one.
- A request whose nonce is not the latest sent for its type is stale and ignored.
- CDS and LDS responses are full state; EDS, RDS and SDS carry the names asked for.
- EDS, RDS, SDS (and RTDS) are not full state: a resource left out of a response is neither
  removed nor changed, so after a change a response carries only the subscribed resources whose
  version differs from what the client may hold (its last acknowledged set, and what it was sent
  since). "Grouping resources into responses":
  https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#grouping-resources-into-responses
  A response carries every resource asked for when the client's holding is not known for sure:
  the first of its type on the stream, a request without a nonce, a changed subscription, a
  warming re-request, and the first response after a NACK (Envoy applies a SotW EDS response
  cluster by cluster, so after a NACK it may hold part of the rejected response). Its
  version_info is always that of the whole subscribed set.
- Warming: a request repeating an already-acknowledged nonce is Envoy asking again for a cluster
  that is warming (its CDS changed); it is answered with every current resource asked for.
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
    # What the client holds once it applies the last response: the shared selection of the
    # snapshot for the subscribed names (responses.py), never a per-stream copy (a response that
    # carried only the changed resources brings the client to the whole selection too).
    held: tuple[Resource, ...] = ()
    # `held` as of the client's last ACK; None when unknown (nothing acknowledged yet, or a NACK:
    # the client may hold part of what it rejected). Only-changed responses are diffed against it.
    accepted: tuple[Resource, ...] | None = None


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
        # this stream holds, or that is interned for the snapshot, was checked when it first came.
        if state is None or names != state.names:
            known = self.shared.known_names(snapshot, names) if snapshot is not None else None
            if known is None:
                check_resource_names(names)
        first = state is None
        if state is None:
            state = self.states[type_url] = _TypeState()
        if request.response_nonce and request.response_nonce != state.sent_nonce:
            return  # stale: answers a response that a newer one replaced
        names_changed = names != state.names
        state.names = self.shared.intern_names(snapshot, names) if snapshot is not None else names
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
            state.accepted = None
            self.registry.nacked(track, type_url, state.sent_version or "", request.error_detail.message)
            state.acked_nonce = request.response_nonce  # answered; a repeat of it is a re-request
            state.needs_response = names_changed
        elif request.response_nonce != state.acked_nonce:
            state.acked_nonce = request.response_nonce
            state.acked_version = request.version_info
            state.accepted = state.held
            self.registry.acked(track, type_url, request.version_info)
            state.needs_response = names_changed
        else:
            state.needs_response = True  # a repeat of an acknowledged nonce: a warming cluster asking again

    def subscribed_types(self) -> Collection[TypeUrl]:
        return self.states.keys()

    def subscriptions(self) -> dict[TypeUrl, frozenset[str] | None]:
        return {type_url: None if state.wildcard else state.names for type_url, state in self.states.items()}

    def response_for(self, type_url: TypeUrl, snapshot: Snapshot) -> bytes | None:
        state = self.states[type_url]
        if not state.wildcard and not state.names:
            return None
        version, chosen = self._chosen(type_url, state, snapshot)
        if version == state.nacked_version or (not state.needs_response and version == state.sent_version):
            state.needs_response = False
            return None
        carried = chosen
        if not state.needs_response and state.accepted is not None and not type_url.requires_full_state:
            carried = self.shared.changed(snapshot, type_url, state.accepted, state.held, chosen)
        return self._respond(type_url, state, version, chosen, carried, snapshot)

    def _chosen(self, type_url: TypeUrl, state: _TypeState, snapshot: Snapshot) -> tuple[str, tuple[Resource, ...]]:
        names = None if state.wildcard else state.names
        version, chosen = self.shared.select(snapshot, type_url, names)
        if type_url is TypeUrl.SECRET and not self.serves_keys:
            withheld = self.withheld_secrets(type_url, snapshot)
            self.note_withheld(type_url, withheld if names is None else withheld & names)
            if withheld:
                version, chosen = self.shared.without_keys(snapshot, type_url, names, chosen, withheld)
        if type_url is TypeUrl.CLUSTER and self.is_ads and state.held and state.held is not chosen:
            gone = self.shared.gone(snapshot, type_url, state.held)
            kept = [r for r in gone if state.wildcard or r.name in state.names]
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
            version, _ = self.shared.select(snapshot, type_url, None if state.wildcard else state.names)
            if state.acked_version != version:
                return False
        return True

    def _respond(
        self,
        type_url: TypeUrl,
        state: _TypeState,
        version: str,
        chosen: tuple[Resource, ...],
        carried: tuple[Resource, ...],
        snapshot: Snapshot,
    ) -> bytes:
        """Sends `carried`, which is `chosen` (every subscribed resource, at `version`) or the part
        of it the client lacks; either way the client then holds `chosen`, and that is recorded."""
        nonce = self.next_nonce()
        state.sent_version, state.sent_nonce, state.needs_response = version, nonce, False
        state.held = chosen
        assert self.track is not None
        self.registry.sent(self.track, type_url, version, nonce, chosen)
        names = None if state.wildcard else state.names
        whole = carried is chosen

        def build() -> bytes:
            if whole:
                body = self.shared.sotw_body(snapshot, type_url, names, chosen)
            else:
                body = b"".join(r.sotw_entry for r in carried)
            return b"".join(
                (
                    wire.string_field(_VERSION_INFO, version),
                    wire.string_field(_TYPE_URL, type_url.value),
                    wire.string_field(_NONCE, nonce),
                    body,
                )
            )

        # Streams of a group in step (same names, same nonce counter) send the very same bytes:
        # build them once. `version` is a hash of every (name, version) in `chosen`, so together
        # with the nonce it decides a whole response's bytes; an only-changed one also depends on
        # what it carries (the same shared tuple for streams that held the same).
        return self.shared.shared_response(snapshot, (type_url, version, nonce, None if whole else carried), build)
