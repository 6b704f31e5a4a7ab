"""The gRPC services: ADS and the per-type services, SotW and Delta, on one grpc.aio server.

Responses leave as bytes the streams assemble from pre-encoded snapshot entries: the handlers are
registered with an identity response serializer, so no DiscoveryResponse is ever built or
serialised per stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server.delta import DeltaStream
from meshplane.xds.server.identity import grants_of
from meshplane.xds.server.nodes import ProtocolError
from meshplane.xds.server.sotw import SotwStream
from meshplane.xds.server.stream import SendGate, Stream
from meshplane.xds.server.tls import ReloadingCredentials
from meshplane.xds.server.tracking import StreamKind, StreamRegistry
from meshplane.xds.types import TypeUrl

log = logging.getLogger(__name__)

# (gRPC service, SotW method, Delta method, type) — the per-type services imply their type.
_PER_TYPE_SERVICES = (
    ("envoy.service.cluster.v3.ClusterDiscoveryService", "StreamClusters", "DeltaClusters", TypeUrl.CLUSTER),
    ("envoy.service.endpoint.v3.EndpointDiscoveryService", "StreamEndpoints", "DeltaEndpoints", TypeUrl.ENDPOINT),
    ("envoy.service.listener.v3.ListenerDiscoveryService", "StreamListeners", "DeltaListeners", TypeUrl.LISTENER),
    ("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes", "DeltaRoutes", TypeUrl.ROUTE),
    ("envoy.service.secret.v3.SecretDiscoveryService", "StreamSecrets", "DeltaSecrets", TypeUrl.SECRET),
)
_ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# Envoy sends large DiscoveryRequests only with many EDS names; 4 MiB leaves room for 10^5 names.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Streams that may wait for the server to pick them up (gRPC core's default: 1,000 soft, 3,000 hard).
MAX_PENDING_STREAMS = 100_000

Handler = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext[Any, bytes]], AsyncIterator[bytes]]


class XdsServices:
    """Builds the gRPC handlers of every xDS service over one cache and one stream registry."""

    def __init__(
        self,
        cache: SnapshotCache,
        registry: StreamRegistry,
        send_budget: int = 64 * 1024 * 1024,
        send_hold: float = 10.0,
    ) -> None:
        self.cache = cache
        self.registry = registry
        # Shared by every stream: at most this many response bytes handed to gRPC and not yet sent.
        self.send_gate = SendGate(send_budget, send_hold)
        self._streams: set[Stream[Any]] = set()

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
            stream = stream_class(self.cache, self.registry, kind, fixed_type, context.peer(), self.send_gate)
            stream.grants = grants_of(context.auth_context())
            self._streams.add(stream)
            try:
                async for payload in stream.responses(requests):
                    yield payload
            except ProtocolError as error:
                log.warning("refused stream from %s: %s", context.peer(), error.message)
                await context.abort(error.code, error.message)
            finally:
                self._streams.discard(stream)

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
        return handlers


def create_server(
    services: XdsServices, address: str, tls: ReloadingCredentials | None = None
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every xDS service, bound to `address`; returns it and the bound port.

    With `tls`, the port speaks TLS (mTLS when `tls` names a client CA) with certificates reloaded
    on renewal; without, plaintext.

    Keepalive settings let Envoy and gRPC clients ping every 30 s (their defaults would be
    refused as too frequent otherwise, and an idle proxy would be disconnected).

    gRPC core cancels new calls the application has not picked up yet beyond 1,000 (at random,
    all beyond 3,000): a herd of proxies (re)connecting at once would see a third of its streams
    cancelled and reconnect again. Streams are cheap here (shared bytes, bounded sends), so they
    queue instead (`MAX_PENDING_STREAMS`).
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.server.max_pending_requests", MAX_PENDING_STREAMS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_STREAMS),
        ]
    )
    server.add_generic_rpc_handlers(services.generic_handlers())
    port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the xDS server to {address}")
    return server, port
