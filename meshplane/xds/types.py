"""The xDS resource types meshplane serves, and the protocol rules that depend on the type.

Type URLs are the contract with every client: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol
"""

from __future__ import annotations

from enum import StrEnum


class TypeUrl(StrEnum):
    CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
    ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    # Runtime layers (RTDS); served to Envoy Mobile (the `mobile` role) on ADS.
    RUNTIME = "type.googleapis.com/envoy.service.runtime.v3.Runtime"

    @property
    def short(self) -> str:
        """The xDS acronym operators know: CDS, EDS, LDS, RDS, SDS, RTDS."""
        return _SHORT[self]

    @property
    def requires_full_state(self) -> bool:
        """In SotW, a CDS or LDS response lists every resource; anything left out is removed.

        RDS, EDS and SDS responses carry only the names asked for. See "Resource types whose
        responses are full state" in the xDS protocol document.
        """
        return self in (TypeUrl.CLUSTER, TypeUrl.LISTENER)

    @property
    def allows_wildcard(self) -> bool:
        """Only LDS and CDS take an empty first request as 'everything' (legacy wildcard)."""
        return self in (TypeUrl.CLUSTER, TypeUrl.LISTENER)


_SHORT = {
    TypeUrl.CLUSTER: "CDS",
    TypeUrl.ENDPOINT: "EDS",
    TypeUrl.LISTENER: "LDS",
    TypeUrl.ROUTE: "RDS",
    TypeUrl.SECRET: "SDS",
    TypeUrl.RUNTIME: "RTDS",
}

# ADS sends in this order so a proxy never references what it has not got yet: clusters before
# their endpoints, listeners before their routes (xDS protocol, "Eventual consistency considerations").
# Runtime layers reference nothing, so they go last.
ADS_ORDER: tuple[TypeUrl, ...] = (
    TypeUrl.CLUSTER,
    TypeUrl.ENDPOINT,
    TypeUrl.LISTENER,
    TypeUrl.ROUTE,
    TypeUrl.SECRET,
    TypeUrl.RUNTIME,
)


def parse_type_url(value: str) -> TypeUrl | None:
    """The served type for `value`, or None when meshplane does not serve it."""
    try:
        return TypeUrl(value)
    except ValueError:
        return None
