"""Pure translation of the model into Envoy resources for one proxy group.

Contract: `translate(mesh, group)` and `translate_endpoints(mesh, group)` do no I/O, read no clock
and draw no random numbers; the same input gives byte-identical output, each list sorted by name.
The mesh is already validated (`Mesh.problems()` is empty); translation never re-validates it and
never fails on it: what it cannot express it leaves out and says so in `Translation.warnings`.
One module per resource type; every name comes from `meshplane.xds.names`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf.message import Message

from meshplane.model import Mesh, ProxyGroup
from meshplane.xds.translate.clusters import build_clusters
from meshplane.xds.translate.endpoints import build_endpoints
from meshplane.xds.translate.listeners import build_listeners
from meshplane.xds.translate.routes import build_routes
from meshplane.xds.translate.secrets import build_secrets
from meshplane.xds.types import TypeUrl

__all__ = ["Translation", "translate", "translate_endpoints"]


@dataclass(frozen=True, slots=True)
class Translation:
    """Everything one proxy group gets.

    `resources` holds every TypeUrl (maybe with an empty tuple), each tuple sorted by resource name.
    `warnings` says what was left out and why (a domain or a TCP port already taken, …), in a
    stable order; operators see them, the snapshot does not carry them.
    """

    resources: Mapping[TypeUrl, tuple[Message, ...]]
    warnings: tuple[str, ...]


def translate(mesh: Mesh, group: ProxyGroup) -> Translation:
    """Clusters, endpoints, listeners, routes and secrets for `group`."""
    clusters, cluster_warnings = build_clusters(mesh, group)
    endpoints, endpoint_warnings = build_endpoints(mesh, group)
    listeners, listener_warnings = build_listeners(mesh, group)
    routes, route_warnings = build_routes(mesh, group)
    resources = {
        TypeUrl.CLUSTER: _by_name(clusters),
        TypeUrl.ENDPOINT: _by_name(endpoints),
        TypeUrl.LISTENER: _by_name(listeners),
        TypeUrl.ROUTE: _by_name(routes),
        TypeUrl.SECRET: _by_name(build_secrets(mesh)),
    }
    # A rule shared by several virtual hosts is translated, and warned about, once per host.
    warnings = dict.fromkeys([*cluster_warnings, *endpoint_warnings, *listener_warnings, *route_warnings])
    return Translation(MappingProxyType(resources), tuple(warnings))


def translate_endpoints(mesh: Mesh, group: ProxyGroup) -> tuple[endpoint_pb2.ClusterLoadAssignment, ...]:
    """The endpoint fast path: only EDS, identical to `translate(mesh, group).resources[TypeUrl.ENDPOINT]`."""
    endpoints, _ = build_endpoints(mesh, group)
    return _by_name(endpoints)


def _by_name(messages: Iterable[Any]) -> tuple[Message, ...]:
    return tuple(sorted(messages, key=_resource_name))


def _resource_name(message: Any) -> str:
    """A resource's name; a ClusterLoadAssignment's is its cluster_name."""
    name: str = message.cluster_name if isinstance(message, endpoint_pb2.ClusterLoadAssignment) else message.name
    return name
