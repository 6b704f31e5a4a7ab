"""The gRPC services: ADS and the per-type services, SotW and Delta, on one grpc.aio server, and
CSDS (csds.py) beside them for operators.

Responses leave as bytes the streams assemble from pre-encoded snapshot entries: the handlers are
registered with an identity response serializer, so no DiscoveryResponse is ever built or
serialised per stream, and what streams of a group would each derive from a snapshot is derived
once for all of them (one `ResponseCache` per server, responses.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, NoReturn

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from meshplane import grpc_limits
from meshplane.grpc_limits import ConnectionLimits, client_address
from meshplane.tls import ReloadingCredentials
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server.csds import ClientStatusService, OpenStream
from meshplane.xds.server.delta import DeltaStream
from meshplane.xds.server.identity import (
    BEARER_TOKEN,
    CERTIFICATE_KEY,
    CLIENT_CERTIFICATE,
    URI_SANS_KEY,
    XdsTokens,
    grants_of,
)
from meshplane.xds.server.nodes import ProtocolError
from meshplane.xds.server.responses import ResponseCache
from meshplane.xds.server.sotw import SotwStream
from meshplane.xds.server.stream import DEFAULT_FIRST_REQUEST_TIMEOUT, SendGate, Stream
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, bounded_text
from meshplane.xds.types import TypeUrl

log = logging.getLogger(__name__)

# (gRPC service, SotW method, Delta method, type) — the per-type services imply their type.
_PER_TYPE_SERVICES = (
    ("envoy.service.cluster.v3.ClusterDiscoveryService", "StreamClusters", "DeltaClusters", TypeUrl.CLUSTER),
    ("envoy.service.endpoint.v3.EndpointDiscoveryService", "StreamEndpoints", "DeltaEndpoints", TypeUrl.ENDPOINT),
    ("envoy.service.listener.v3.ListenerDiscoveryService", "StreamListeners", "DeltaListeners", TypeUrl.LISTENER),
    ("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes", "DeltaRoutes", TypeUrl.ROUTE),
    ("envoy.service.secret.v3.SecretDiscoveryService", "StreamSecrets", "DeltaSecrets", TypeUrl.SECRET),
    ("envoy.service.runtime.v3.RuntimeDiscoveryService", "StreamRuntime", "DeltaRuntime", TypeUrl.RUNTIME),
)
_ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# Envoy sends large DiscoveryRequests only with many EDS names; 4 MiB leaves room for 10^5 names.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Streams that may wait for the server to pick them up (gRPC core's default: 1,000 soft, 3,000 hard).
MAX_PENDING_STREAMS = 100_000
# Concurrent streams on one HTTP/2 connection (`--max-streams-per-connection`). Envoy opens one ADS
# stream, or one per type without ADS; but gRPC clients (and load tests, and xDS relays) multiplex
# many on one connection, and gRPC clients queue streams beyond the limit rather than fail, so a
# low default would stall them silently. 1,000 (the per-client default) bounds one connection.
# The registry port's own bound (`meshplane.grpc_limits`), named here for the flag.
DEFAULT_MAX_STREAMS_PER_CONNECTION = grpc_limits.DEFAULT_MAX_STREAMS_PER_CONNECTION
# Concurrent streams per client (`--max-streams-per-client`; 0: unlimited). Without mTLS a client
# is an IP address, and one node or NAT can front many proxies, so the default is generous.
DEFAULT_MAX_STREAMS_PER_CLIENT = 1_000


# A refusal's message names what the client sent (a node id, a role, a type URL): at most this many
# UTF-8 bytes of it go into the log line and the gRPC status.
MAX_REFUSAL_BYTES = 2048


def client_of(peer: str, auth_context: Mapping[str, Iterable[bytes]]) -> str:
    """Whom a stream is counted against: the client certificate when the peer sent one
    (its first URI SAN or common name, and its fingerprint: two certificates are two clients),
    else the peer's IP address without the port, as the registry port counts its clients
    (`grpc_limits.client_address`: `ipv4:10.0.0.1:5555` → `10.0.0.1`).

    Not `client_address` alone: behind one NAT or on one host, mTLS proxies are told apart by
    their certificates, which the registry port (bearer tokens, no client certificates) has not."""
    certificate = b"".join(auth_context.get(CERTIFICATE_KEY, ()))
    if certificate:
        names = [*auth_context.get(URI_SANS_KEY, ()), *auth_context.get("x509_common_name", ())]
        name = names[0].decode(errors="replace") if names else "?"
        return f"certificate {name} sha256:{hashlib.sha256(certificate).hexdigest()[:16]}"
    return client_address(peer)


Handler = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext[Any, bytes]], AsyncIterator[bytes]]


class XdsServices:
    """Builds the gRPC handlers of every xDS service over one cache and one stream registry."""

    def __init__(
        self,
        cache: SnapshotCache,
        registry: StreamRegistry,
        send_budget: int = 64 * 1024 * 1024,
        send_hold: float = 10.0,
        max_streams_per_client: int = DEFAULT_MAX_STREAMS_PER_CLIENT,
        tokens: XdsTokens | None = None,
        serve_keys_without_client_auth: bool = False,
        first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT,
        admin_token: str | None = None,
        authenticates_clients: bool = False,
    ) -> None:
        self.cache = cache
        self.registry = registry
        # Shared by every stream: at most this many response bytes handed to gRPC and not yet sent.
        self.send_gate = SendGate(send_budget, send_hold)
        # Shared by every stream: what each snapshot's streams would otherwise each derive and encode.
        self.response_cache = ResponseCache()
        self._streams: set[Stream[Any]] = set()
        self.max_streams_per_client = max_streams_per_client
        # With tokens, a proxy without a client certificate must present one (see identity.XdsTokens).
        self.tokens = tokens
        # Secrets holding private keys go to authenticated streams only (keys.py), unless the
        # operator opted in with --insecure-serve-keys-without-client-auth.
        self.serve_keys_without_client_auth = serve_keys_without_client_auth
        # Open streams per client (see `client_of`); a client leaves the counter with its last stream.
        self.client_streams: Counter[str] = Counter()
        # Seconds a stream has, from its headers, for its first request (the one naming the node);
        # see `Stream.responses`.
        self.first_request_timeout = first_request_timeout
        # CSDS on the same port, for operators (csds.py): `admin_token` is `--admin-token`;
        # `authenticates_clients` says the port checks proxies' credentials (`--client-ca`; tokens
        # say so by themselves), which refuses CSDS without an admin token.
        self.client_status = ClientStatusService(
            self._open_streams, admin_token, authenticates_clients=authenticates_clients or tokens is not None
        )

    @property
    def refused_streams(self) -> int:
        """Streams refused or ended for cause since start, whatever the code (by code: the
        registry's `refused_counts`, which /metrics and /status read)."""
        return sum(self.registry.refused_counts.values())

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, bytes], peer: str, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        """Counts the refusal by its code, logs it, and ends the stream with `code` and `message`
        (cut to `MAX_REFUSAL_BYTES`: it may quote what the client sent)."""
        message = bounded_text(message, MAX_REFUSAL_BYTES)
        self.registry.refused(code.name)
        log.warning("refused stream from %s: %s", peer, message)
        await context.abort(code, message)

    def _open_streams(self) -> list[OpenStream]:
        """Every stream bound to its node, with the types it subscribed to (what CSDS reads)."""
        return [OpenStream(stream.track, stream.subscribed_types()) for stream in self._streams if stream.track]

    def subscriptions_of(self, node_id: str) -> dict[TypeUrl, frozenset[str] | None]:
        """What the open streams of the proxy `node_id` subscribe to, per type (None: wildcard),
        merged over its streams (a per-type proxy has one per type): what `/diff` compares with."""
        merged: dict[TypeUrl, frozenset[str] | None] = {}
        for stream in self._streams:
            if stream.track is None or stream.track.node_id != node_id:
                continue
            for type_url, names in stream.subscriptions().items():
                if type_url in merged:
                    known = merged[type_url]
                    merged[type_url] = None if known is None or names is None else known | names
                else:
                    merged[type_url] = names
        return merged

    def close_streams(self) -> None:
        """Ends every open stream now. xDS streams never finish by themselves, so a graceful stop
        that only waited for them would always wait its whole grace period; ending them with OK
        lets each proxy reconnect at once (to another replica, or to this one restarted)."""
        for stream in list(self._streams):
            stream.close()

    def _handler(self, stream_class: type[Stream[Any]], kind: StreamKind, fixed_type: TypeUrl | None) -> Handler:
        async def serve(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, bytes]
        ) -> AsyncIterator[bytes]:
            peer, auth = context.peer(), context.auth_context()
            client = client_of(peer, auth)
            limit = self.max_streams_per_client
            if limit and self.client_streams[client] >= limit:
                message = f"too many xDS streams from client {client}: the limit is {limit} per client"
                await self._refuse(context, peer, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            grants, credential = grants_of(auth), CLIENT_CERTIFICATE
            if grants is None and self.tokens is not None:
                credential = BEARER_TOKEN
                # No client certificate: the proxy's bearer token says what it may claim.
                grants = self.tokens.grants_for(context.invocation_metadata() or ())
                if grants is None:
                    message = "this xDS server requires a client certificate or a known bearer token"
                    await self._refuse(context, peer, grpc.StatusCode.UNAUTHENTICATED, message)
            stream = stream_class(
                self.cache,
                self.registry,
                kind,
                fixed_type,
                peer,
                self.send_gate,
                self.first_request_timeout,
                shared=self.response_cache,
            )
            stream.grants, stream.credential = grants, credential
            stream.serves_keys = grants is not None or self.serve_keys_without_client_auth
            # Counted from here to the `finally`, which runs however the stream ends (client gone,
            # cancelled, aborted, server stopping): nothing that can raise stands between them.
            self.client_streams[client] += 1
            self._streams.add(stream)
            try:
                try:
                    async for payload in stream.responses(requests):
                        yield payload
                finally:
                    self._streams.discard(stream)
                    self.client_streams[client] -= 1
                    if self.client_streams[client] <= 0:
                        del self.client_streams[client]
            except ProtocolError as error:
                # Refused once its slot is free: the client may open its next stream as soon as
                # it reads this status, and must not find the ended one still counted.
                await self._refuse(context, peer, error.code, error.message)

        return serve

    def generic_handlers(self) -> list[grpc.GenericRpcHandler[Any, bytes]]:
        sotw_request = discovery_pb2.DiscoveryRequest.FromString
        delta_request = discovery_pb2.DeltaDiscoveryRequest.FromString

        def sotw(kind: StreamKind, fixed: TypeUrl | None) -> grpc.RpcMethodHandler[Any, bytes]:
            return grpc.stream_stream_rpc_method_handler(
                self._handler(SotwStream, kind, fixed), request_deserializer=sotw_request
            )

        def delta(kind: StreamKind, fixed: TypeUrl | None) -> grpc.RpcMethodHandler[Any, bytes]:
            return grpc.stream_stream_rpc_method_handler(
                self._handler(DeltaStream, kind, fixed), request_deserializer=delta_request
            )

        handlers = [
            grpc.method_handlers_generic_handler(
                _ADS_SERVICE,
                {
                    "StreamAggregatedResources": sotw(StreamKind.SOTW_ADS, None),
                    "DeltaAggregatedResources": delta(StreamKind.DELTA_ADS, None),
                },
            )
        ]
        for service, sotw_method, delta_method, type_url in _PER_TYPE_SERVICES:
            handlers.append(
                grpc.method_handlers_generic_handler(
                    service,
                    {sotw_method: sotw(StreamKind.SOTW, type_url), delta_method: delta(StreamKind.DELTA, type_url)},
                )
            )
        handlers.append(self.client_status.generic_handler())
        return handlers


def create_server(
    services: XdsServices,
    address: str,
    tls: ReloadingCredentials | None = None,
    *,
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION,
    connections: ConnectionLimits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every xDS service, bound to `address`; returns it and the bound port.

    With `tls`, the port speaks TLS (mTLS when `tls` names a client CA) with certificates reloaded
    on renewal; without, plaintext.

    Connections are bounded as the registry's gRPC port is (`meshplane.grpc_limits`), by
    `connections` (default: `ConnectionLimits()` with `max_streams_per_connection`, which is
    ignored when `connections` is given; tests pass small bounds): a connection that has not
    finished its TLS and HTTP/2 handshake within `handshake_timeout` is closed; the server pings a
    connection silent for `keepalive_interval` and closes it when the ping goes unanswered (a
    proxy gone without a FIN); clients may ping every 10 s or more (Envoy's and gRPC's
    keepalives) without being told to calm down.

    `idle_timeout` (gRPC's `max_connection_idle_ms`) closes, with GOAWAY, only a connection that
    has had no call open for that long: gRPC core counts a connection as idle only while it
    carries no call, and an xDS stream is a call that stays open for the proxy's lifetime. So it
    never ends a proxy's ADS or per-type streams; it frees connections that carry none (a client
    that connected and never opened a stream, or whose streams all ended). A client reconnects
    by itself on its next call.

    gRPC core cancels new calls the application has not picked up yet beyond 1,000 (at random,
    all beyond 3,000): a herd of proxies (re)connecting at once would see a third of its streams
    cancelled and reconnect again. Streams are cheap here (shared bytes, bounded sends), so they
    queue instead (`MAX_PENDING_STREAMS`).

    `max_streams_per_connection` is HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS: a client opening
    more on one connection has the extra streams refused by gRPC (REFUSED_STREAM, which gRPC
    clients see as UNAVAILABLE) while the connection's other streams keep being served.
    """
    limits = connections or ConnectionLimits(max_streams_per_connection=max_streams_per_connection)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.server.max_pending_requests", MAX_PENDING_STREAMS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_STREAMS),
            *limits.grpc_options(),
        ]
    )
    server.add_generic_rpc_handlers(services.generic_handlers())
    port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the xDS server to {address}")
    return server, port
