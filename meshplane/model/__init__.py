"""The intermediate model: what sources say and translators read. Frozen dataclasses, no wire types."""

from meshplane.model.mesh import DEFAULT_CLUSTER_DOMAIN, Mesh
from meshplane.model.policy import (
    CircuitBreakers,
    HashKey,
    HealthCheck,
    HealthCheckProtocol,
    LoadBalancing,
    OutlierDetection,
    TrafficPolicy,
)
from meshplane.model.proxy import DEFAULT_OUTBOUND_PORT, ProxyGroup, ProxyRole
from meshplane.model.routes import (
    RETRY_CONDITIONS,
    HeaderMatch,
    HeaderMatchKind,
    PathMatch,
    PathMatchKind,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    RouteTable,
    WeightedBackend,
)
from meshplane.model.secrets import TlsCertificate, TrustBundle, UpstreamTls
from meshplane.model.services import (
    Endpoint,
    EndpointHealth,
    Locality,
    Protocol,
    Service,
    ServicePort,
    ServiceRef,
    is_dns_label,
    is_host_name,
)

__all__ = [
    "DEFAULT_CLUSTER_DOMAIN",
    "DEFAULT_OUTBOUND_PORT",
    "RETRY_CONDITIONS",
    "CircuitBreakers",
    "Endpoint",
    "EndpointHealth",
    "HashKey",
    "HeaderMatch",
    "HeaderMatchKind",
    "HealthCheck",
    "HealthCheckProtocol",
    "LoadBalancing",
    "Locality",
    "Mesh",
    "OutlierDetection",
    "PathMatch",
    "PathMatchKind",
    "Protocol",
    "ProxyGroup",
    "ProxyRole",
    "RetryPolicy",
    "RouteMatch",
    "RouteRule",
    "RouteTable",
    "Service",
    "ServicePort",
    "ServiceRef",
    "TlsCertificate",
    "TrafficPolicy",
    "TrustBundle",
    "UpstreamTls",
    "WeightedBackend",
    "is_dns_label",
    "is_host_name",
]
