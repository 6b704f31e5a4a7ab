"""CDS and SDS translation: clusters per service port, policies for Envoy and for gRPC, TLS, secrets."""

from __future__ import annotations

import math
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2

from meshplane.model import (
    CircuitBreakers,
    HashKey,
    HealthCheck,
    HealthCheckProtocol,
    LoadBalancing,
    Mesh,
    OutlierDetection,
    Protocol,
    ProxyGroup,
    ProxyRole,
    Service,
    ServicePort,
    TlsCertificate,
    TrafficPolicy,
    TrustBundle,
    UpstreamTls,
)
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.golden.cases import DATA

Cluster = cluster_pb2.Cluster
SIDECAR = ProxyGroup()
GRPC = ProxyGroup(role=ProxyRole.GRPC)
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster_of(
    policy: TrafficPolicy | None = None,
    protocol: Protocol = Protocol.HTTP1,
    group: ProxyGroup = SIDECAR,
    tls: UpstreamTls | None = None,
) -> tuple[Any, tuple[str, ...]]:
    service = Service("svc", "ns", (ServicePort("p", 80, protocol),), policy=policy or TrafficPolicy(), tls=tls)
    translation = translate(Mesh.of([service]), group)
    (cluster,) = translation.resources[TypeUrl.CLUSTER]
    return cluster, translation.warnings


def test_eds_cluster() -> None:
    cluster, _ = cluster_of(TrafficPolicy(connect_timeout=0.25))
    assert cluster.name == "svc.ns:80"
    assert cluster.type == Cluster.EDS
    assert cluster.eds_cluster_config.service_name == "svc.ns:80"
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.connect_timeout.ToMilliseconds() == 250
    assert not cluster.HasField("circuit_breakers")
    assert not cluster.HasField("outlier_detection")
    assert list(cluster.health_checks) == []
    assert not cluster.HasField("transport_socket")


@pytest.mark.parametrize(
    ("balancing", "envoy", "grpc"),
    [
        pytest.param(LoadBalancing.ROUND_ROBIN, Cluster.ROUND_ROBIN, Cluster.ROUND_ROBIN, id="round-robin"),
        pytest.param(LoadBalancing.LEAST_REQUEST, Cluster.LEAST_REQUEST, Cluster.ROUND_ROBIN, id="least-request"),
        pytest.param(LoadBalancing.RING_HASH, Cluster.RING_HASH, Cluster.RING_HASH, id="ring-hash"),
        pytest.param(LoadBalancing.MAGLEV, Cluster.MAGLEV, Cluster.RING_HASH, id="maglev"),
        pytest.param(LoadBalancing.RANDOM, Cluster.RANDOM, Cluster.ROUND_ROBIN, id="random"),
    ],
)
def test_lb_policy(balancing: LoadBalancing, envoy: int, grpc: int) -> None:
    key = HashKey(header="x") if balancing.is_consistent_hash else None
    policy = TrafficPolicy(load_balancing=balancing, hash_key=key)
    assert cluster_of(policy)[0].lb_policy == envoy
    assert cluster_of(policy, group=GRPC)[0].lb_policy == grpc


def test_circuit_breakers_set_only_what_is_given() -> None:
    cluster, _ = cluster_of(TrafficPolicy(circuit_breakers=CircuitBreakers(max_connections=0, max_requests=2**40)))
    (thresholds,) = cluster.circuit_breakers.thresholds
    assert thresholds.priority == 0  # DEFAULT
    assert thresholds.HasField("max_connections")
    assert thresholds.max_connections.value == 0
    assert thresholds.max_requests.value == 2**32 - 1  # clamped, not crashed
    assert not thresholds.HasField("max_pending_requests")
    assert not thresholds.HasField("max_retries")


@pytest.mark.parametrize(
    ("detection", "gateway"),
    [
        pytest.param(OutlierDetection(), None, id="defaults"),
        pytest.param(OutlierDetection(consecutive_gateway_failure=4, max_ejection_percent=0), 4, id="gateway-failures"),
    ],
)
def test_outlier_detection(detection: OutlierDetection, gateway: int | None) -> None:
    cluster, _ = cluster_of(TrafficPolicy(outlier_detection=detection))
    od = cluster.outlier_detection
    assert od.consecutive_5xx.value == detection.consecutive_5xx
    assert od.interval.ToMilliseconds() == detection.interval * 1000
    assert od.base_ejection_time.ToMilliseconds() == detection.base_ejection_time * 1000
    assert od.HasField("max_ejection_percent")
    assert od.max_ejection_percent.value == detection.max_ejection_percent
    if gateway is None:
        assert not od.HasField("consecutive_gateway_failure")
    else:
        assert od.consecutive_gateway_failure.value == gateway
        assert od.enforcing_consecutive_gateway_failure.value == 100  # Envoy's default, 0, would ignore it


@pytest.mark.parametrize(
    ("check", "protocol", "kind"),
    [
        pytest.param(HealthCheckProtocol.HTTP, Protocol.HTTP1, "http_health_check", id="http-on-http1"),
        pytest.param(HealthCheckProtocol.HTTP, Protocol.HTTP2, "http_health_check", id="http-on-http2"),
        pytest.param(HealthCheckProtocol.HTTP, Protocol.GRPC, "http_health_check", id="http-on-grpc"),
        pytest.param(HealthCheckProtocol.HTTP, Protocol.TCP, None, id="http-on-tcp"),
        pytest.param(HealthCheckProtocol.TCP, Protocol.HTTP1, "tcp_health_check", id="tcp-on-http1"),
        pytest.param(HealthCheckProtocol.TCP, Protocol.TCP, "tcp_health_check", id="tcp-on-tcp"),
        pytest.param(HealthCheckProtocol.GRPC, Protocol.GRPC, "grpc_health_check", id="grpc-on-grpc"),
        pytest.param(HealthCheckProtocol.GRPC, Protocol.HTTP2, "grpc_health_check", id="grpc-on-http2"),
        pytest.param(HealthCheckProtocol.GRPC, Protocol.HTTP1, None, id="grpc-on-http1"),
        pytest.param(HealthCheckProtocol.GRPC, Protocol.TCP, None, id="grpc-on-tcp"),
    ],
)
def test_health_check_fits_the_port(check: HealthCheckProtocol, protocol: Protocol, kind: str | None) -> None:
    health = HealthCheck(check, path="/ok", interval=2, timeout=0.5, unhealthy_threshold=4, healthy_threshold=1)
    cluster, warnings = cluster_of(TrafficPolicy(health_check=health), protocol)
    if kind is None:
        assert list(cluster.health_checks) == []
        assert warnings == (
            f"cluster svc.ns:80: the {check} health check cannot probe port p ({protocol}); no active health check",
        )
        return
    (probe,) = cluster.health_checks
    assert probe.WhichOneof("health_checker") == kind
    assert (probe.interval.ToMilliseconds(), probe.timeout.ToMilliseconds()) == (2000, 500)
    assert (probe.unhealthy_threshold.value, probe.healthy_threshold.value) == (4, 1)
    if kind == "http_health_check":
        assert probe.http_health_check.path == "/ok"
        assert (probe.http_health_check.codec_client_type == http_pb2.HTTP2) is protocol.needs_http2_upstream
    assert warnings == ()
    # gRPC does no active health checking: nothing is sent, nothing is warned about.
    grpc_cluster, grpc_warnings = cluster_of(TrafficPolicy(health_check=health), protocol, GRPC)
    assert list(grpc_cluster.health_checks) == []
    assert grpc_warnings == ()


@pytest.mark.parametrize("protocol", list(Protocol), ids=str)
def test_http2_upstream_only_for_envoy_and_h2_ports(protocol: Protocol) -> None:
    cluster, _ = cluster_of(protocol=protocol)
    if protocol.needs_http2_upstream:
        options = http_protocol_options_pb2.HttpProtocolOptions()
        assert cluster.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
        assert options.explicit_http_config.HasField("http2_protocol_options")
    else:
        assert HTTP_OPTIONS not in cluster.typed_extension_protocol_options
    assert HTTP_OPTIONS not in cluster_of(protocol=protocol, group=GRPC)[0].typed_extension_protocol_options


def upstream_tls(cluster: Any) -> Any:
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    context = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(context)
    return context


@pytest.mark.parametrize(
    ("protocol", "alpn"),
    [
        pytest.param(Protocol.HTTP1, ["http/1.1"], id="http1"),
        pytest.param(Protocol.HTTP2, ["h2"], id="http2"),
        pytest.param(Protocol.GRPC, ["h2"], id="grpc"),
        pytest.param(Protocol.TCP, [], id="tcp"),
    ],
)
def test_envoy_upstream_tls_uses_sds(protocol: Protocol, alpn: list[str]) -> None:
    tls = UpstreamTls(trust="ca", sni="svc.example.com", client_certificate="me")
    context = upstream_tls(cluster_of(protocol=protocol, tls=tls)[0])
    assert context.sni == "svc.example.com"
    common = context.common_tls_context
    assert common.validation_context_sds_secret_config.name == "ca"
    assert common.validation_context_sds_secret_config.sds_config.HasField("ads")
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["me"]
    assert all(c.sds_config.HasField("ads") for c in common.tls_certificate_sds_secret_configs)
    assert list(common.alpn_protocols) == alpn


def test_envoy_upstream_tls_without_client_certificate() -> None:
    common = upstream_tls(cluster_of(tls=UpstreamTls(trust="ca"))[0]).common_tls_context
    assert list(common.tls_certificate_sds_secret_configs) == []
    assert common.validation_context_sds_secret_config.name == "ca"


@pytest.mark.parametrize("client_certificate", ["", "me"])
def test_grpc_upstream_tls_uses_certificate_providers(client_certificate: str) -> None:
    tls = UpstreamTls(trust="ca", sni="svc.example.com", client_certificate=client_certificate)
    context = upstream_tls(cluster_of(protocol=Protocol.GRPC, group=GRPC, tls=tls)[0])
    common = context.common_tls_context
    # gRPC NACKs any SDS secret config.
    assert not common.HasField("validation_context_sds_secret_config")
    assert list(common.tls_certificate_sds_secret_configs) == []
    assert common.validation_context.ca_certificate_provider_instance.instance_name == "ca"
    assert common.tls_certificate_provider_instance.instance_name == client_certificate
    assert common.HasField("tls_certificate_provider_instance") is bool(client_certificate)


@pytest.mark.parametrize("seconds", [0.000000001, 300, 1e12, math.inf])
def test_extreme_durations_do_not_crash(seconds: float) -> None:
    detection = OutlierDetection(interval=seconds, base_ejection_time=seconds)
    cluster, _ = cluster_of(TrafficPolicy(outlier_detection=detection))
    assert 0 < cluster.outlier_detection.interval.ToNanoseconds() <= 315_576_000 * 10**9


def test_secrets_are_only_those_the_group_uses() -> None:
    ca = TrustBundle("mesh-ca", (DATA / "test-ca.pem").read_text())
    client = TlsCertificate(
        "client", (DATA / "test-client.pem").read_text(), (DATA / "test-client.key.pem").read_text()
    )
    spare = TlsCertificate("spare", client.certificate_chain, client.private_key)  # used by no service
    secure = Service(
        "secure",
        "default",
        (ServicePort("https", 443, Protocol.HTTP1),),
        tls=UpstreamTls(trust="mesh-ca", client_certificate="client"),
    )
    mesh = Mesh.of([secure], certificates=[client, spare], trust_bundles=[ca])
    assert mesh.problems() == []
    secrets = {s.name: s for s in translate(mesh, SIDECAR).resources[TypeUrl.SECRET]}
    assert list(secrets) == ["client", "mesh-ca"]  # a key no cluster uses is never offered
    assert secrets["client"].tls_certificate.certificate_chain.inline_string == client.certificate_chain
    assert secrets["client"].tls_certificate.private_key.inline_string == client.private_key
    assert secrets["mesh-ca"].validation_context.trusted_ca.inline_string == ca.ca_certificates
    # gRPC cannot take SDS (it uses certificate providers): its group is given no secrets at all.
    assert translate(mesh, GRPC).resources[TypeUrl.SECRET] == ()
