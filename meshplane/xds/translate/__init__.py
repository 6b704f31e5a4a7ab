"""Pure translation of the model into Envoy resources for one proxy group.

Contract: `translate(mesh, group)` and `translate_endpoints(mesh, group)` do no I/O, read no clock
and draw no random numbers; the same input gives byte-identical output, each list sorted by name.
The mesh is already validated (`Mesh.problems()` is empty); translation never re-validates it and
never fails on it: what it cannot express it leaves out and says so in `Translation.warnings`.
One module per resource type; every name comes from `meshplane.xds.names`.

Owns the role table (`ROLES`): each role's translator and the parts of the mesh it reads
(`Dependencies`). The publisher decides from that data alone which groups a change touches, so
a translator that starts reading another part of the mesh must say so there (and
tests/test_translate_dependencies.py fails until it does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf.message import Message

from meshplane.model import Mesh, ProxyGroup, ProxyRole, Service
from meshplane.xds.translate.clusters import build_clusters
from meshplane.xds.translate.edge_device import build_device, build_mobile
from meshplane.xds.translate.edge_gateway import build_gateway
from meshplane.xds.translate.endpoints import EndpointsMemo, build_endpoints, build_service_endpoints
from meshplane.xds.translate.gateway_api import build_gateway_api
from meshplane.xds.translate.listeners import build_listeners
from meshplane.xds.translate.routes import build_routes
from meshplane.xds.translate.secrets import build_secrets
from meshplane.xds.types import TypeUrl

__all__ = [
    "ROLES",
    "Dependencies",
    "RoleTranslator",
    "Translation",
    "dependencies",
    "translate",
    "translate_endpoints",
    "translate_service_endpoints",
]


@dataclass(frozen=True, slots=True)
class Translation:
    """Everything one proxy group gets.

    `resources` holds every TypeUrl (maybe with an empty tuple), each tuple sorted by resource name.
    `warnings` says what was left out and why (a domain or a TCP port already taken, …), in a
    stable order; operators see them, the snapshot does not carry them.
    """

    resources: Mapping[TypeUrl, tuple[Message, ...]]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Dependencies:
    """The parts of a `Mesh` one role's translation reads; a part it does not name can change
    without changing a byte of that role's output.

    `services`: the services themselves (added, removed, ports, policy, TLS, hosts) and the
    cluster domain; `endpoints`: their endpoints; `routes`: the route tables; `secrets`:
    certificates and trust bundles; `sites`: the edge sites; `devices`: the registered devices;
    `telemetry`: access logs, tracing and their per-rule overrides (the listeners and routes);
    `gateways`: the Kubernetes Gateways and the routes resolved onto them.
    `eds`: the role gets endpoints only as EDS assignments, one set per service translated by
    `translate_service_endpoints`, so a change of endpoints alone replaces those and nothing else
    (the publisher's fast path); without it endpoints are inside other resources (STATIC clusters)
    and an endpoint change means translating the group again.
    """

    services: bool = True
    endpoints: bool = True
    routes: bool = True
    secrets: bool = True
    sites: bool = False
    devices: bool = False
    telemetry: bool = True
    gateways: bool = False
    eds: bool = True


@dataclass(frozen=True, slots=True)
class RoleTranslator:
    """One row of the role table: how a role is translated, and what of the mesh that reads."""

    translate: Callable[[Mesh, ProxyGroup], Translation]
    depends: Dependencies


def translate(mesh: Mesh, group: ProxyGroup) -> Translation:
    """Clusters, endpoints, listeners, routes and secrets for `group` (and runtime for `mobile`)."""
    return ROLES[group.role].translate(mesh, group)


def dependencies(role: ProxyRole) -> Dependencies:
    """What of the mesh a group of `role` gets its config from (see `Dependencies`)."""
    return ROLES[role].depends


def _translate_mesh_role(mesh: Mesh, group: ProxyGroup) -> Translation:
    """The in-cluster roles (sidecar, proxyless gRPC): everything by name over xDS."""
    clusters, cluster_warnings = build_clusters(mesh, group)
    endpoints, endpoint_warnings = build_endpoints(mesh, group)
    listeners, listener_warnings = build_listeners(mesh, group)
    routes, route_warnings = build_routes(mesh, group)
    resources = {
        TypeUrl.CLUSTER: _by_name(clusters),
        TypeUrl.ENDPOINT: _by_name(endpoints),
        TypeUrl.LISTENER: _by_name(listeners),
        TypeUrl.ROUTE: _by_name(routes),
        TypeUrl.SECRET: _by_name(build_secrets(mesh, clusters)),
        TypeUrl.RUNTIME: (),  # runtime layers are for the mobile role only
    }
    # A rule shared by several virtual hosts is translated, and warned about, once per host.
    warnings = dict.fromkeys([*cluster_warnings, *endpoint_warnings, *listener_warnings, *route_warnings])
    return Translation(MappingProxyType(resources), tuple(warnings))


def translate_endpoints(mesh: Mesh, group: ProxyGroup) -> tuple[endpoint_pb2.ClusterLoadAssignment, ...]:
    """The endpoint fast path: only EDS, identical to `translate(mesh, group).resources[TypeUrl.ENDPOINT]`."""
    if not dependencies(group.role).eds:
        return ()
    endpoints, _ = build_endpoints(mesh, group)
    return _by_name(endpoints)


def translate_service_endpoints(service: Service, group: ProxyGroup) -> tuple[endpoint_pb2.ClusterLoadAssignment, ...]:
    """One service's share of `translate_endpoints(mesh, group)`, which is all services' shares
    sorted by name. The unit of work of the endpoint fast path: one changed service, one call."""
    if not dependencies(group.role).eds:
        return ()
    return _by_name(build_service_endpoints(service, group, []))


_EDGE_BUILDERS = {ProxyRole.EDGE_GATEWAY: build_gateway, ProxyRole.DEVICE: build_device, ProxyRole.MOBILE: build_mobile}
_KINDS = {"cds": TypeUrl.CLUSTER, "lds": TypeUrl.LISTENER, "rds": TypeUrl.ROUTE, "rtds": TypeUrl.RUNTIME}


def _translate_edge(mesh: Mesh, group: ProxyGroup) -> Translation:
    """The edge roles (see `edge_gateway` and `edge_device`); the gateway reaches the cloud over EDS.

    Secrets follow the built clusters, as for a sidecar: the gateway's cloud clusters are a
    sidecar's, so a service with upstream TLS makes them ask for its secrets over SDS, and the
    gateway must get those (without them the snapshot is inconsistent and never published).
    """
    built, warnings = _EDGE_BUILDERS[group.role](mesh, group)
    resources: dict[TypeUrl, tuple[Message, ...]] = {type_url: () for type_url in TypeUrl}
    for kind, messages in built.items():
        if kind != "sds":
            resources[_KINDS[kind]] = _by_name(messages)
    resources[TypeUrl.ENDPOINT] = translate_endpoints(mesh, group)
    # The edge gateway names its secrets itself (`sds`: its cloud clusters' and its device TLS),
    # sparing a read of every device cluster's TLS context; the other roles' follow their clusters.
    sds = built.get("sds")
    resources[TypeUrl.SECRET] = _by_name(sds if sds is not None else build_secrets(mesh, resources[TypeUrl.CLUSTER]))
    return Translation(MappingProxyType(resources), tuple(dict.fromkeys(warnings)))


def _translate_gateway_api(mesh: Mesh, group: ProxyGroup) -> Translation:
    """The `gateway` role (see `gateway_api`): its Gateway's listeners and routes, every service's
    clusters over EDS, and the secrets its listeners and clusters name."""
    built, warnings = build_gateway_api(mesh, group)
    resources: dict[TypeUrl, tuple[Message, ...]] = {type_url: () for type_url in TypeUrl}
    # Each sorted by name already: the clusters, their secrets and the endpoints are the very
    # tuples every gateway group of a locality shares, which `Snapshot.of` then takes whole.
    resources[TypeUrl.CLUSTER] = built["cds"]
    resources[TypeUrl.LISTENER] = built["lds"]
    resources[TypeUrl.ROUTE] = built["rds"]
    resources[TypeUrl.SECRET] = built["sds"]
    # Equal to `translate_endpoints(mesh, group)`; a Gateway API change rebuilds every gateway
    # group and changes no endpoint, so unchanged services' assignments are reused.
    resources[TypeUrl.ENDPOINT] = _GATEWAY_ENDPOINTS.build(mesh, group)
    return Translation(MappingProxyType(resources), tuple(dict.fromkeys(warnings)))


_GATEWAY_ENDPOINTS = EndpointsMemo()


# The role table. Edge roles read the sites (a site's gateways, its device ranges); only the
# gateway reads the devices (one cluster and one route per device of its site). Devices and
# Envoy Mobile get STATIC clusters with the endpoints inline (Envoy Mobile has no EDS). Proxyless
# gRPC and Envoy Mobile take no telemetry (`model.TELEMETRY_ROLES`). Only the gateway reads the
# Gateways; it reads no route tables (those are the sidecars') and takes no telemetry yet.
ROLES: Mapping[ProxyRole, RoleTranslator] = MappingProxyType(
    {
        ProxyRole.SIDECAR: RoleTranslator(_translate_mesh_role, Dependencies()),
        ProxyRole.GRPC: RoleTranslator(_translate_mesh_role, Dependencies(telemetry=False)),
        ProxyRole.EDGE_GATEWAY: RoleTranslator(_translate_edge, Dependencies(sites=True, devices=True)),
        ProxyRole.DEVICE: RoleTranslator(_translate_edge, Dependencies(sites=True, eds=False)),
        ProxyRole.MOBILE: RoleTranslator(_translate_edge, Dependencies(sites=True, eds=False, telemetry=False)),
        ProxyRole.GATEWAY: RoleTranslator(
            _translate_gateway_api, Dependencies(routes=False, telemetry=False, gateways=True)
        ),
    }
)


def _by_name(messages: Iterable[Any]) -> tuple[Message, ...]:
    return tuple(sorted(messages, key=_resource_name))


def _resource_name(message: Any) -> str:
    """A resource's name; a ClusterLoadAssignment's is its cluster_name."""
    name: str = message.cluster_name if isinstance(message, endpoint_pb2.ClusterLoadAssignment) else message.name
    return name
