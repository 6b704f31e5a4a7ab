"""What the Gateway API source serves: every object read, by kind and (namespace, name), and what
changed in it.

Owns `GatewayApiObjects`, the immutable content value (read-only mappings of `Parsed` objects:
each with the problems that make it one the API server's validation would refuse, never to be
served), and `GatewayApiChanges`, the change set naming the objects added, updated or deleted.
Must not know where the objects come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshplane.discovery.gateway_api.backend_tls_policies import BackendTlsPolicy
from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.gateway_classes import GatewayClass
from meshplane.discovery.gateway_api.gateways import Gateway
from meshplane.discovery.gateway_api.grpc_routes import GrpcRoute
from meshplane.discovery.gateway_api.http_routes import HttpRoute
from meshplane.discovery.gateway_api.reference_grants import ReferenceGrant

# (namespace, name); a GatewayClass, cluster-scoped, has namespace "".
Key = tuple[str, str]
GATEWAY_CLASS = "GatewayClass"
GATEWAY = "Gateway"
HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"
REFERENCE_GRANT = "ReferenceGrant"
BACKEND_TLS_POLICY = "BackendTLSPolicy"
KINDS = (GATEWAY_CLASS, GATEWAY, HTTP_ROUTE, GRPC_ROUTE, REFERENCE_GRANT, BACKEND_TLS_POLICY)
# Namespaces are read only for `allowedRoutes` selectors; a change of their labels is this change.
NAMESPACE_LABELS = "Namespace"


def _empty() -> Mapping[Key, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GatewayApiObjects:
    """Every Gateway API object read, per kind, by (namespace, name). The mappings are read-only.
    `namespace_labels`: each Namespace's labels, by name, once Namespaces are read (a listener
    selects routes' namespaces by label); None while they are not."""

    gateway_classes: Mapping[Key, Parsed[GatewayClass]] = field(default_factory=_empty)
    gateways: Mapping[Key, Parsed[Gateway]] = field(default_factory=_empty)
    http_routes: Mapping[Key, Parsed[HttpRoute]] = field(default_factory=_empty)
    grpc_routes: Mapping[Key, Parsed[GrpcRoute]] = field(default_factory=_empty)
    reference_grants: Mapping[Key, Parsed[ReferenceGrant]] = field(default_factory=_empty)
    backend_tls_policies: Mapping[Key, Parsed[BackendTlsPolicy]] = field(default_factory=_empty)
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None

    def of_kind(self, kind: str) -> Mapping[Key, Parsed[Any]]:
        """The objects of `kind` (one of `KINDS`)."""
        by_kind: dict[str, Mapping[Key, Parsed[Any]]] = {
            GATEWAY_CLASS: self.gateway_classes,
            GATEWAY: self.gateways,
            HTTP_ROUTE: self.http_routes,
            GRPC_ROUTE: self.grpc_routes,
            REFERENCE_GRANT: self.reference_grants,
            BACKEND_TLS_POLICY: self.backend_tls_policies,
        }
        return by_kind[kind]


@dataclass(frozen=True, slots=True)
class GatewayApiChanges:
    """What changed: `everything` (the first content), or the objects in `changed` as (kind, key)."""

    changed: frozenset[tuple[str, Key]] = frozenset()
    everything: bool = False

    @property
    def none(self) -> bool:
        return not self.everything and not self.changed

    def __or__(self, other: GatewayApiChanges) -> GatewayApiChanges:
        return GatewayApiChanges(self.changed | other.changed, self.everything or other.everything)

    def of_kind(self, kind: str) -> frozenset[Key]:
        """The keys of the objects of `kind` that changed (meaningless when `everything`)."""
        return frozenset(key for changed_kind, key in self.changed if changed_kind == kind)
