"""The `edge-gateway` role: an Envoy at an edge site, between the site's devices and the cloud.

Owns the gateway's two listeners, both on the group's `listen_address` (node.metadata.listen_address;
when absent 0.0.0.0, every IPv4 address of the gateway host: devices reach it over the site network;
a laptop demo says 127.0.0.1):
- `edge_from_devices_<port>` on `outbound_port`: the site's devices' traffic into the cloud. Its
  routes are a sidecar's outbound routes (every cloud service by its names, route tables
  included) over the same EDS clusters, so the gateway reaches the cloud as a sidecar does.
- `edge_to_devices_<port>` on `outbound_port + 1`: cloud services reach one registered device of
  this site by id, named in the `x-meshplane-device` request header. Each live device of this
  site gets a STATIC cluster `device/<id>` with its registered addresses; devices of other sites,
  and expired ones (which the registry has already dropped from the mesh), have no route, so
  Envoy answers 404. Addresses were checked against the site's ranges by the registry and again
  by `Mesh.problems()`.
Both listeners log and trace as the policy says for the role, except the traffic to collectors
(`telemetry.quiet_collector_routes`).
The cloud clusters are a sidecar's, upstream TLS included: a TLS service's cluster names its
secrets over SDS, and the gateway gets those secrets (`secrets.build_secrets`), so devices speak
plain HTTP on the site network and the gateway adds the TLS.
Must stay pure; names come from `meshplane.xds.names`.

A registration rebuilds the gateways of the device's site, each with a cluster and a route per
device of the site. Those two are built once per device value (a bounded memo of a pure function)
and handed back as the same message objects while the device is unchanged, so the publisher does
not serialise them again (`Snapshot.of` keeps the `Resource` of a message it already holds): a
registration costs about one device's translation, not the whole site's. The messages are shared:
nothing may change them after they are built.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import string_pb2

from meshplane.model import Device, Mesh, ProxyGroup, ProxyRole
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.clusters import build_clusters
from meshplane.xds.translate.listeners import HTTP_CONNECTION_MANAGER, http_connection_manager
from meshplane.xds.translate.routes import build_routes
from meshplane.xds.translate.telemetry import ProxyTelemetry, proxy_telemetry, quiet_collector_routes

DEVICE_HEADER = "x-meshplane-device"
ANY_ADDRESS = "0.0.0.0"
DEVICE_CONNECT_TIMEOUT = 2.0
DEVICE_ROUTE_TIMEOUT = 30.0

_Cluster = cluster_pb2.Cluster
# Devices whose cluster and route stay built (per kind). Above a large site's device count, so a
# registration never rebuilds the others; entries of devices gone age out as new ones come.
_DEVICE_MEMO = 1 << 17


def build_gateway(mesh: Mesh, group: ProxyGroup) -> tuple[dict[str, list[Any]], list[str]]:
    """Clusters, listeners and routes of an edge gateway (by resource kind: cds, lds, rds)."""
    warnings: list[str] = []
    if mesh.site(group.site) is None:
        warnings.append(f"edge-gateway at site {group.site!r}: no such site; no device is reachable")
    sidecar = dataclasses.replace(group, role=ProxyRole.SIDECAR, site="", listen_address="")
    clusters, cluster_warnings = build_clusters(mesh, sidecar)
    routes, route_warnings = build_routes(mesh, sidecar)
    from_devices_port = group.outbound_port
    address = group.listen_address or ANY_ADDRESS
    # Both listeners log and trace as the policy says for the role (its collectors' clusters are
    # among the cloud clusters above).
    telemetry = proxy_telemetry(mesh, ProxyRole.EDGE_GATEWAY)
    warnings += telemetry.warnings
    [outbound] = routes  # a sidecar has exactly one outbound RouteConfiguration
    outbound.name = names.gateway_from_devices_route_name(from_devices_port)
    # Devices export their own logs and spans through this listener: the gateway neither logs
    # nor traces those exports.
    quiet_collector_routes(mesh, outbound)
    listeners = [
        _listener(
            names.gateway_from_devices_listener_name(from_devices_port),
            address,
            from_devices_port,
            names.gateway_from_devices_route_name(from_devices_port),
            group,
            telemetry,
        )
    ]
    devices = [device for device in mesh.devices_at(group.site) if device.endpoints]
    clusters += [_device_cluster(device) for device in devices]
    routes = [outbound]
    to_devices_port = from_devices_port + 1
    if to_devices_port > 65535:
        warnings.append(f"edge-gateway: outbound_port {from_devices_port} leaves no port for the device listener")
    else:
        route_name = names.gateway_to_devices_route_name(to_devices_port)
        listeners.append(
            _listener(
                names.gateway_to_devices_listener_name(to_devices_port),
                address,
                to_devices_port,
                route_name,
                group,
                telemetry,
            )
        )
        routes.append(_to_devices_routes(route_name, devices))
    return {"cds": clusters, "lds": listeners, "rds": routes}, [*warnings, *cluster_warnings, *route_warnings]


def _listener(name: str, address: str, port: int, route_name: str, group: ProxyGroup, telemetry: ProxyTelemetry) -> Any:
    hcm = http_connection_manager(route_name, stat_prefix=name, group=group, telemetry=telemetry)
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port)),
        traffic_direction=base_pb2.INBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HTTP_CONNECTION_MANAGER, typed_config=core.pack(hcm))],
            ),
        ],
    )


@functools.lru_cache(maxsize=_DEVICE_MEMO)
def _device_cluster(device: Device) -> Any:
    name = names.edge_device_cluster_name(device.id)
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=endpoint.address, port_value=endpoint.port
                                )
                            )
                        )
                    )
                    for endpoint in sorted(set(device.endpoints))
                ]
            )
        ],
    )
    return _Cluster(
        name=name,
        type=_Cluster.STATIC,
        connect_timeout=core.duration(DEVICE_CONNECT_TIMEOUT),
        load_assignment=assignment,
    )


def _to_devices_routes(route_name: str, devices: list[Device]) -> Any:
    """One route per device, matched on the exact id in the device header; no match is a 404."""
    return route_pb2.RouteConfiguration(
        name=route_name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="devices", domains=["*"], routes=[_device_route(device.id) for device in devices]
            )
        ],
    )


@functools.lru_cache(maxsize=_DEVICE_MEMO)
def _device_route(device_id: str) -> Any:
    return route_components_pb2.Route(
        name=names.device_virtual_host_name(device_id),
        match=route_components_pb2.RouteMatch(
            prefix="/",
            headers=[
                route_components_pb2.HeaderMatcher(
                    name=DEVICE_HEADER, string_match=string_pb2.StringMatcher(exact=device_id)
                )
            ],
        ),
        route=route_components_pb2.RouteAction(
            cluster=names.edge_device_cluster_name(device_id), timeout=core.duration(DEVICE_ROUTE_TIMEOUT)
        ),
    )
