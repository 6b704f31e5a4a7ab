"""Hand-built Envoy resources and an in-process xDS server for protocol tests.

Protocol tests set snapshots straight into the cache, so they exercise the server's rules
without depending on translators or sources.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2

from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server.service import XdsServices, create_server
from meshplane.xds.server.tracking import StreamRegistry
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl

ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)
CDS, EDS, LDS, RDS, SDS = (TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE, TypeUrl.SECRET)
READ_TIMEOUT = 10.0


def eds_cluster(name: str, connect_ms: int = 250) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(service_name=name, eds_config=ADS),
        connect_timeout=duration_pb2.Duration(nanos=connect_ms * 1_000_000),
    )


def endpoints(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    lb = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
                )
            )
        )
        for port in ports
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)]
    )


def http_listener(name: str, route_name: str, port: int = 15001) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=ADS, route_config_name=route_name),
        http_filters=[hcm_pb2.HttpFilter(name="router", typed_config=_pack(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name="hcm", typed_config=_pack(manager))]
            )
        ],
    )


def routes(name: str, cluster: str) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="all",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster=cluster),
                    )
                ],
            )
        ],
    )


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def snapshot(
    clusters: Iterable[str] = (),
    endpoint_ports: dict[str, tuple[int, ...]] | None = None,
    listeners: dict[str, str] | None = None,
    route_clusters: dict[str, str] | None = None,
    connect_ms: int = 250,
) -> Snapshot:
    """A consistent snapshot: EDS clusters (each with endpoints), listeners → routes → clusters."""
    names = list(clusters)
    ports = endpoint_ports or {}
    return Snapshot.of(
        {
            CDS: [eds_cluster(name, connect_ms) for name in names],
            EDS: [endpoints(name, *ports.get(name, (8080,))) for name in names],
            LDS: [http_listener(name, route) for name, route in (listeners or {}).items()],
            RDS: [routes(name, cluster) for name, cluster in (route_clusters or {}).items()],
        }
    )


def node(node_id: str = "proxy-1", role: str | None = None, zone: str = "") -> Any:
    metadata = struct_pb2.Struct()
    if role is not None:
        metadata.update({"role": role})
    return base_pb2.Node(id=node_id, cluster="test", metadata=metadata, locality=base_pb2.Locality(zone=zone))


def unpack_names(response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    names = []
    for item in response.resources:
        packed = item if isinstance(item, any_pb2.Any) else item.resource
        message = {
            CDS.value: cluster_pb2.Cluster,
            EDS.value: endpoint_pb2.ClusterLoadAssignment,
            LDS.value: listener_pb2.Listener,
            RDS.value: route_pb2.RouteConfiguration,
        }[packed.type_url]()
        packed.Unpack(message)
        names.append(getattr(message, "name", "") or message.cluster_name)
    return names


@dataclass
class XdsHarness:
    """An in-process xDS server whose every group gets `current`."""

    cache: SnapshotCache
    registry: StreamRegistry
    channel: grpc.aio.Channel
    current: Snapshot = field(default_factory=lambda: snapshot())

    port: int = 0
    services: XdsServices | None = None

    @property
    def target(self) -> str:
        """The server's `host:port`, for clients of our own."""
        return f"127.0.0.1:{self.port}"

    def publish(self, new: Snapshot) -> None:
        self.current = new
        for group in self.cache.groups():
            self.cache.set_snapshot(group, new)

    def ads(self) -> AdsStream:
        return AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources())

    def delta(self) -> AdsStream:
        return AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).DeltaAggregatedResources())


class AdsStream:
    """A raw stream: write requests, read responses with a timeout (a hang is a test failure, not a wait)."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def send(self, request: Any) -> None:
        await self.call.write(request)

    async def recv(self) -> Any:
        response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert response is not grpc.aio.EOF, "stream ended"
        return response

    async def status(self) -> tuple[grpc.StatusCode, str]:
        try:
            while (await asyncio.wait_for(self.call.read(), READ_TIMEOUT)) is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return await self.call.code(), await self.call.details()

    async def close(self) -> None:
        self.call.cancel()


async def start_harness() -> AsyncIterator[XdsHarness]:
    cache = SnapshotCache()
    registry = StreamRegistry()
    services = XdsServices(cache, registry)
    server, port = create_server(services, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    harness = XdsHarness(cache, registry, channel, port=port, services=services)
    cache.on_group_wanted = lambda group: cache.set_snapshot(group, harness.current)
    try:
        yield harness
    finally:
        await channel.close()
        await server.stop(None)


def request(
    type_url: TypeUrl | str,
    names: Iterable[str] = (),
    *,
    version: str = "",
    nonce: str = "",
    error: str | None = None,
    with_node: Any = None,
) -> discovery_pb2.DiscoveryRequest:
    from google.rpc import status_pb2

    message = discovery_pb2.DiscoveryRequest(
        type_url=str(type_url.value if isinstance(type_url, TypeUrl) else type_url),
        resource_names=list(names),
        version_info=version,
        response_nonce=nonce,
    )
    if with_node is not None:
        message.node.CopyFrom(with_node)
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def delta_request(
    type_url: TypeUrl,
    subscribe: Iterable[str] = (),
    unsubscribe: Iterable[str] = (),
    *,
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
    with_node: Any = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    from google.rpc import status_pb2

    message = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url.value,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if with_node is not None:
        message.node.CopyFrom(with_node)
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def delta_versions(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    return {resource.name: resource.version for resource in response.resources}
