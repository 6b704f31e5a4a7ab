"""Clusters (CDS): one EDS cluster per service port, carrying the service's traffic policy and TLS.

A service with an `external_name` (a Kubernetes ExternalName service) gets a LOGICAL_DNS cluster
instead: the proxy resolves the name itself and connects to it on the port, as a client of the
Kubernetes DNS alias would. LOGICAL_DNS, not STRICT_DNS: an external name is one logical host
(often a cloud load balancer behind many rotating addresses); gRPC also accepts only LOGICAL_DNS.

A service with DNS endpoints (`Service.dns`) gets, for Envoy, a DNS cluster of the `envoy.clusters.dns`
extension (its `DnsCluster` config: Envoy 1.40 deprecates the Cluster's own DNS fields): strict or
logical as `dns.resolution` says, the refresh interval or the answers' TTL, the lookup family and
the service's own resolvers, the names inline in `load_assignment` (`endpoints.dns_assignment`),
no EDS. Proxyless gRPC supports LOGICAL_DNS clusters only, spelled with the `type` enum and one
name (gRFC A37, https://github.com/grpc/proposal/blob/master/A37-xds-aggregate-and-logical-dns-clusters.md),
and resolves with its own resolver: it gets the port's first name, whatever the mode.

Owns how a `TrafficPolicy` and an `UpstreamTls` become Cluster fields, for Envoy and for proxyless
gRPC, which takes a subset (https://grpc.github.io/grpc/core/md_doc_grpc_xds_features.html), and
how a gateway proxy's `BackendTls` (a BackendTLSPolicy) becomes a copy of a cluster with TLS
(`with_backend_tls`). Must stay pure; cluster and EDS names come from `meshplane.xds.names`.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_pb2

from meshplane.model import (
    HealthCheck,
    HealthCheckProtocol,
    LoadBalancing,
    Mesh,
    Protocol,
    ProxyGroup,
    ProxyRole,
    Service,
    ServicePort,
    TrafficPolicy,
    UpstreamTls,
)
from meshplane.model.gateways import BackendTls, SanKind
from meshplane.model.services import DnsEndpoints, DnsResolution, LookupFamily
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.endpoints import dns_assignment

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
# The system trust store a gateway Envoy reads for `wellKnownCACertificates: System`: the bundle
# of Debian, Ubuntu and Alpine (ca-certificates), the images gateway Envoys run in. Envoy reads it
# when the cluster is loaded; a missing file makes Envoy reject the cluster.
SYSTEM_TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"
_SAN_TYPES = {
    SanKind.DNS: common_pb2.SubjectAltNameMatcher.DNS,
    SanKind.URI: common_pb2.SubjectAltNameMatcher.URI,
}

DNS_CLUSTER = "envoy.clusters.dns"
CARES_RESOLVER = "envoy.network.dns_resolver.cares"
_LOOKUP_FAMILY = {
    LookupFamily.V4: dns_pb2.V4_ONLY,
    LookupFamily.V6: dns_pb2.V6_ONLY,
    LookupFamily.AUTO: dns_pb2.V4_PREFERRED,
}

_Cluster = cluster_pb2.Cluster

_ENVOY_LB_POLICY = {
    LoadBalancing.ROUND_ROBIN: _Cluster.ROUND_ROBIN,
    LoadBalancing.LEAST_REQUEST: _Cluster.LEAST_REQUEST,
    LoadBalancing.RING_HASH: _Cluster.RING_HASH,
    LoadBalancing.MAGLEV: _Cluster.MAGLEV,
    LoadBalancing.RANDOM: _Cluster.RANDOM,
}

# gRPC (grpcio, i.e. gRPC core) accepts only ROUND_ROBIN and RING_HASH in the `lb_policy` enum and
# NACKs the whole cluster otherwise ("LB policy is not supported": ParseLbPolicyConfig in
# src/core/xds/grpc/xds_cluster_parser.cc); it has no least-request balancer at all. So maglev
# degrades to its closest relative, ring hash (same hash policies, same affinity), and
# least-request and random to round robin.
_GRPC_LB_POLICY = {
    LoadBalancing.ROUND_ROBIN: _Cluster.ROUND_ROBIN,
    LoadBalancing.LEAST_REQUEST: _Cluster.ROUND_ROBIN,
    LoadBalancing.RING_HASH: _Cluster.RING_HASH,
    LoadBalancing.MAGLEV: _Cluster.RING_HASH,
    LoadBalancing.RANDOM: _Cluster.ROUND_ROBIN,
}


def build_clusters(mesh: Mesh, group: ProxyGroup) -> tuple[list[Any], list[str]]:
    """Every service port's cluster for `group`, in mesh order, and warnings for what was left out."""
    clusters: list[Any] = []
    warnings: list[str] = []
    for service in mesh.services:
        for port in service.ports:
            clusters.append(_cluster(service, port, group, warnings))
    return clusters, warnings


def _cluster(service: Service, port: ServicePort, group: ProxyGroup, warnings: list[str]) -> Any:
    policy = service.policy
    grpc = group.role is ProxyRole.GRPC
    cluster = _Cluster(
        name=names.cluster_name(service.ref, port),
        connect_timeout=core.duration(policy.connect_timeout),
        lb_policy=(_GRPC_LB_POLICY if grpc else _ENVOY_LB_POLICY)[policy.load_balancing],
    )
    if service.external_name:
        cluster.type = _Cluster.LOGICAL_DNS
        cluster.load_assignment.CopyFrom(_dns_assignment(cluster.name, service.external_name, port.port))
    elif service.dns is not None and grpc:
        cluster.type = _Cluster.LOGICAL_DNS
        cluster.load_assignment.CopyFrom(_grpc_dns_assignment(cluster.name, service, port, warnings))
    elif service.dns is not None:
        cluster.cluster_type.CopyFrom(_dns_cluster_type(service.dns))
        cluster.load_assignment.CopyFrom(dns_assignment(service, port, warnings))
    else:
        cluster.type = _Cluster.EDS
        cluster.eds_cluster_config.service_name = names.endpoints_name(service.ref, port)
        cluster.eds_cluster_config.eds_config.CopyFrom(core.config_source(group))
    if policy.circuit_breakers is not None:
        cluster.circuit_breakers.CopyFrom(_circuit_breakers(policy))
    if policy.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(_outlier_detection(policy))
    # gRPC does no active health checking; it would ignore the field (A27), so it is not sent.
    if policy.health_check is not None and not grpc:
        check = _health_check(policy.health_check, port)
        if check is None:
            warnings.append(
                f"cluster {cluster.name}: the {policy.health_check.protocol} health check cannot probe "
                f"port {port.name} ({port.protocol}); no active health check"
            )
        else:
            cluster.health_checks.append(check)
    # gRPC always speaks HTTP/2 and ignores protocol options; Envoy must be told.
    if port.protocol.needs_http2_upstream and not grpc:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options={},
            ),
        )
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(core.pack(options))
    if service.tls is not None:
        tls = _grpc_upstream_tls(service.tls) if grpc else _envoy_upstream_tls(service.tls, port, group)
        cluster.transport_socket.name = TLS_TRANSPORT_SOCKET
        cluster.transport_socket.typed_config.CopyFrom(core.pack(tls))
    return cluster


def _dns_assignment(cluster_name: str, host: str, port: int) -> Any:
    """The one endpoint of a DNS cluster: the name to resolve and the port to connect to."""
    address = address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
                ]
            )
        ],
    )


def _dns_cluster_type(dns: DnsEndpoints) -> Any:
    """The `cluster_type` of a DNS service's Envoy cluster: how and how often its names are resolved."""
    config = dns_cluster_pb2.DnsCluster(
        dns_lookup_family=_LOOKUP_FAMILY[dns.lookup_family],
        all_addresses_in_single_endpoint=dns.resolution is DnsResolution.LOGICAL,
    )
    if dns.refresh is None:
        config.respect_dns_ttl = True
    else:
        config.dns_refresh_rate.CopyFrom(core.duration(dns.refresh))
    if dns.resolvers:
        resolvers = cares_dns_resolver_pb2.CaresDnsResolverConfig(
            resolvers=[
                address_pb2.Address(socket_address=address_pb2.SocketAddress(address=r.address, port_value=r.port))
                for r in dns.resolvers
            ],
        )
        config.typed_dns_resolver_config.CopyFrom(
            extension_pb2.TypedExtensionConfig(name=CARES_RESOLVER, typed_config=core.pack(resolvers))
        )
    return _Cluster.CustomClusterType(name=DNS_CLUSTER, typed_config=core.pack(config))


def _grpc_dns_assignment(cluster_name: str, service: Service, port: ServicePort, warnings: list[str]) -> Any:
    """A proxyless gRPC LOGICAL_DNS cluster's one endpoint: the first name of `port` as Envoy's
    assignment orders them (its best priority first); the others are left out, with a warning."""
    laid_out = dns_assignment(service, port, [])
    named = [
        (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
        for locality in laid_out.endpoints
        for lb in locality.lb_endpoints
    ]
    host, number = named[0]  # a valid DNS service has a name for every port
    if len(named) > 1:
        left_out = ", ".join(f"{name}:{value}" for name, value in named[1:])
        warnings.append(
            f"cluster {cluster_name}: proxyless gRPC resolves one DNS name per port (LOGICAL_DNS); "
            f"it uses {host}:{number}, not {left_out}"
        )
    return _dns_assignment(cluster_name, host, number)


def _circuit_breakers(policy: TrafficPolicy) -> Any:
    assert policy.circuit_breakers is not None
    limits = policy.circuit_breakers
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT)
    for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        value: int | None = getattr(limits, field)
        if value is not None:
            getattr(thresholds, field).CopyFrom(core.uint32(value))
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _outlier_detection(policy: TrafficPolicy) -> Any:
    assert policy.outlier_detection is not None
    od = policy.outlier_detection
    detection = outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=core.uint32(od.consecutive_5xx),
        interval=core.duration(od.interval),
        base_ejection_time=core.duration(od.base_ejection_time),
        max_ejection_percent=core.uint32(od.max_ejection_percent),
    )
    if od.consecutive_gateway_failure is not None:
        detection.consecutive_gateway_failure.CopyFrom(core.uint32(od.consecutive_gateway_failure))
        # Envoy enforces gateway-failure ejections 0% of the time unless told otherwise, which
        # would make the setting a no-op.
        detection.enforcing_consecutive_gateway_failure.CopyFrom(core.uint32(100))
    return detection


def _health_check(check: HealthCheck, port: ServicePort) -> Any | None:
    """Envoy's active health check for `port`, or None when the protocol cannot probe that port
    (HTTP or gRPC checks on a TCP port; gRPC checks need an HTTP/2 port)."""
    probe = health_check_pb2.HealthCheck(
        timeout=core.duration(check.timeout),
        interval=core.duration(check.interval),
        unhealthy_threshold=core.uint32(check.unhealthy_threshold),
        healthy_threshold=core.uint32(check.healthy_threshold),
    )
    if check.protocol is HealthCheckProtocol.TCP:
        probe.tcp_health_check.SetInParent()
    elif check.protocol is HealthCheckProtocol.HTTP and port.protocol.is_http:
        probe.http_health_check.path = check.path
        if port.protocol.needs_http2_upstream:
            probe.http_health_check.codec_client_type = http_pb2.HTTP2
    elif check.protocol is HealthCheckProtocol.GRPC and port.protocol.needs_http2_upstream:
        probe.grpc_health_check.SetInParent()
    else:
        return None
    return probe


def _envoy_upstream_tls(tls: UpstreamTls, port: ServicePort, group: ProxyGroup) -> Any:
    """TLS whose CA bundle and client certificate Envoy fetches over SDS (the group's config source)."""
    source = core.config_source(group)
    common = tls_pb2.CommonTlsContext(
        validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name=tls.trust, sds_config=source),
    )
    if tls.client_certificate:
        common.tls_certificate_sds_secret_configs.append(
            secret_pb2.SdsSecretConfig(name=tls.client_certificate, sds_config=source)
        )
    # Announce the protocol the cluster speaks: gRPC servers (grpc-go since 1.67) refuse TLS
    # connections that do not offer h2 in ALPN.
    if port.protocol.needs_http2_upstream:
        common.alpn_protocols.append("h2")
    elif port.protocol is Protocol.HTTP1:
        common.alpn_protocols.append("http/1.1")
    return tls_pb2.UpstreamTlsContext(sni=tls.sni, common_tls_context=common)


def _grpc_upstream_tls(tls: UpstreamTls) -> Any:
    """TLS for proxyless gRPC, which NACKs SDS secret configs ("validation_context_sds_secret_config
    unsupported": CommonTlsContext::Parse in src/core/xds/grpc/xds_common_types_parser.cc) and takes
    its certificates from certificate providers named in its own bootstrap (gRFC A29). The provider
    instance names are the trust bundle's and certificate's names, so a gRPC client's bootstrap
    must define `certificate_providers` of those names."""
    common = tls_pb2.CommonTlsContext(
        validation_context=common_pb2.CertificateValidationContext(
            ca_certificate_provider_instance=common_pb2.CertificateProviderPluginInstance(instance_name=tls.trust),
        ),
    )
    if tls.client_certificate:
        common.tls_certificate_provider_instance.instance_name = tls.client_certificate
    return tls_pb2.UpstreamTlsContext(sni=tls.sni, common_tls_context=common)


def with_backend_tls(cluster: Any, tls: BackendTls, port: ServicePort) -> Any:
    """A copy of `cluster` (one port's, as `build_clusters` made it; never changed, as clusters
    are shared) speaking TLS as `tls` says: SNI `tls.sni`, the peer verified against the CA
    bundle inline (it is the gateway's alone, from a ConfigMap: no SDS secret to share) or the
    system trust store, and its certificate must carry one of the subject alternative names
    (none given: the DNS name `tls.sni`, as the spec asks of `hostname`)."""
    validation = common_pb2.CertificateValidationContext()
    if tls.system_trust:
        validation.trusted_ca.filename = SYSTEM_TRUST_STORE
    else:
        validation.trusted_ca.inline_string = tls.ca_certificates
    for kind, value in tls.subject_alt_names or ((SanKind.DNS, tls.sni),):
        validation.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(san_type=_SAN_TYPES[kind], matcher=string_pb2.StringMatcher(exact=value))
        )
    common = tls_pb2.CommonTlsContext(validation_context=validation)
    if port.protocol.needs_http2_upstream:
        common.alpn_protocols.append("h2")
    elif port.protocol is Protocol.HTTP1:
        common.alpn_protocols.append("http/1.1")
    copy = _Cluster()
    copy.CopyFrom(cluster)
    copy.transport_socket.name = TLS_TRANSPORT_SOCKET
    copy.transport_socket.typed_config.CopyFrom(
        core.pack(tls_pb2.UpstreamTlsContext(sni=tls.sni, common_tls_context=common))
    )
    return copy
