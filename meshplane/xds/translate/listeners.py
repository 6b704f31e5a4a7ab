"""Listeners (LDS): the sidecar's outbound HTTP and TCP listeners, and proxyless gRPC's api_listeners.

Owns which ports a sidecar listens on and which names a gRPC client can dial. Routes are never
inlined: every HTTP connection manager asks for its RouteConfiguration over RDS (on the group's
config source: ADS, or the per-type service), by the name `meshplane.xds.names` gives it. Access
logs and tracing, when policy turns them on for the role, come from `telemetry.proxy_telemetry`;
proxyless gRPC gets neither. Must stay pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshplane.model import Mesh, Protocol, ProxyGroup, ProxyRole
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.hostnames import HostClaim, HostNames, grant
from meshplane.xds.translate.routes import http_filters
from meshplane.xds.translate.telemetry import NO_PROXY_TELEMETRY, ProxyTelemetry, proxy_telemetry

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
LOOPBACK = "127.0.0.1"
# gRPC ignores stat_prefix, but Envoy's schema requires one; with it the same HttpConnectionManager
# passes Envoy's validation too.
_GRPC_STAT_PREFIX = "grpc"

_hcm = http_connection_manager_pb2


def build_listeners(
    mesh: Mesh, group: ProxyGroup, telemetry: ProxyTelemetry | None = None
) -> tuple[list[Any], list[str]]:
    """Every listener `group` needs, and warnings for what was left out. `telemetry`: the access
    logs and tracing the listeners carry (None: those of `group`'s role in `mesh`)."""
    if group.role is ProxyRole.GRPC:
        return _grpc_listeners(mesh, group)
    return _sidecar_listeners(mesh, group, proxy_telemetry(mesh, group.role) if telemetry is None else telemetry)


def http_connection_manager(
    route_name: str,
    stat_prefix: str,
    group: ProxyGroup,
    filters: Sequence[Any] = (),
    telemetry: ProxyTelemetry = NO_PROXY_TELEMETRY,
) -> Any:
    """An HTTP connection manager routing by `route_name`, fetched over RDS from `group`'s config
    source, with the HTTP `filters` its routes need before the router, and `telemetry`'s access
    logs and tracing (when it has any)."""
    hcm = _hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        # AUTO: the app may speak HTTP/1.1 or HTTP/2 with prior knowledge (h2c), as gRPC does.
        codec_type=_hcm.HttpConnectionManager.AUTO,
        rds=_hcm.Rds(config_source=core.config_source(group), route_config_name=route_name),
        http_filters=[*filters, _hcm.HttpFilter(name=ROUTER, typed_config=core.pack(router_pb2.Router()))],
        access_log=telemetry.http_access_logs,
    )
    if telemetry.tracing is not None:
        hcm.tracing.CopyFrom(telemetry.tracing)
    return hcm


def _sidecar_listeners(mesh: Mesh, group: ProxyGroup, telemetry: ProxyTelemetry) -> tuple[list[Any], list[str]]:
    """The outbound HTTP listener, always (so the snapshot keeps its shape), and one per TCP port."""
    warnings: list[str] = list(telemetry.warnings)
    outbound_port = group.outbound_port
    http_name = names.outbound_listener_name(outbound_port)
    hcm = http_connection_manager(
        names.outbound_route_name(outbound_port),
        stat_prefix=http_name,
        group=group,
        filters=http_filters(mesh, grpc=False),
        telemetry=telemetry,
    )
    listeners = [_listener(http_name, outbound_port, HTTP_CONNECTION_MANAGER, hcm)]
    # Services come in (namespace, name) order, so the first to ask for a port keeps it.
    owners: dict[int, str] = {outbound_port: f"the outbound HTTP listener {http_name}"}
    for service in mesh.services:
        for port in service.ports:
            if port.protocol is not Protocol.TCP:
                continue
            cluster = names.cluster_name(service.ref, port)
            if (owner := owners.get(port.port)) is not None:
                warnings.append(f"TCP port {port.port} of {service.ref} is already taken by {owner}; no listener")
                continue
            owners[port.port] = f"{service.ref}"
            name = names.tcp_listener_name(port.port)
            proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=cluster, access_log=telemetry.tcp_access_logs)
            listeners.append(_listener(name, port.port, TCP_PROXY, proxy))
    return listeners, warnings


def _listener(name: str, port: int, filter_name: str, config: Any) -> Any:
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=LOOPBACK, port_value=port)),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=filter_name, typed_config=core.pack(config))],
            ),
        ],
    )


def _grpc_listeners(mesh: Mesh, group: ProxyGroup) -> tuple[list[Any], list[str]]:
    """An api_listener per name a gRPC client may dial (`xds:///host:port`) for each gRPC port.

    A wildcard alias (`*.example.com`) is no name a client can dial, so it gets no listener.
    """
    requests: list[tuple[str, list[HostClaim]]] = []
    routes: dict[str, str] = {}
    host_names = HostNames(mesh)
    for service in mesh.services:
        derived = host_names.derived(service)
        for port in service.ports:
            if port.protocol is not Protocol.GRPC:
                continue
            owner = names.virtual_host_name(service.ref, port)
            routes[owner] = names.grpc_route_name(service.ref, port)
            claims = [
                HostClaim(names.grpc_listener_name(host, port.port), host in derived)
                for host in host_names.of(service)
                if not host.startswith("*")
            ]
            requests.append((owner, claims))
    # gRPC takes the dialled target literally as the listener name, so names differing in case differ.
    grants = grant(requests, what="listener", fold_case=False)
    listeners = []
    filters = http_filters(mesh, grpc=True)
    for owner, listener_names in grants.names.items():
        hcm = core.pack(http_connection_manager(routes[owner], _GRPC_STAT_PREFIX, group, filters))
        for name in listener_names:
            listeners.append(
                listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=hcm))
            )
    return listeners, list(grants.warnings)
