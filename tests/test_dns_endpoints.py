"""Services whose endpoints are DNS names: the model's rules, the policy format, the clusters every
role gets, the change sets, and the test DNS server itself. Real Envoy and gRPC are in
test_dns_endpoints_envoy.py."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import Endpoint, EndpointHealth, Locality, Mesh, ProxyGroup, ProxyRole, Service, ServicePort
from meshplane.model.changes import MeshChanges
from meshplane.model.services import (
    DnsEndpoints,
    DnsResolution,
    DnsResolver,
    LookupFamily,
    dns_name_problem,
    is_meant_as_dns_name,
)
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import translate, translate_endpoints
from meshplane.xds.types import TypeUrl
from tests.dns_server import DnsServer
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap
from tests.test_gateway_api_translate import API
from tests.test_gateway_api_translate import GROUP as GATEWAY_GROUP
from tests.test_gateway_api_translate import MESH as GATEWAY_MESH

Cluster = cluster_pb2.Cluster
SOURCE = "dns.yaml"
HTTP = ServicePort("http", 8080)


def dns_service(*names: str, **settings: Any) -> Service:
    endpoints = tuple(Endpoint(name, 8080, "http") for name in names)
    return Service("pay", "shop", (HTTP,), dns=DnsEndpoints(endpoints, **settings), origin="dns.yaml:3")


def messages(service: Service) -> list[str]:
    return [problem.message for problem in service.problems()]


SIDECAR = ProxyGroup()


def cluster_of(mesh: Mesh, group: ProxyGroup = SIDECAR, name: str = "pay.shop:8080") -> Any:
    built: tuple[Any, ...] = translate(mesh, group).resources[TypeUrl.CLUSTER]
    return {c.name: c for c in built}[name]


def dns_config(cluster: Any) -> Any:
    assert cluster.cluster_type.name == "envoy.clusters.dns"
    config = dns_cluster_pb2.DnsCluster()
    assert cluster.cluster_type.typed_config.Unpack(config)
    return config


# --- the model ---


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("api.example.com", None, id="plain"),
        pytest.param("API-2.Example.com", None, id="either-case"),
        pytest.param("localhost", None, id="one-label"),
        pytest.param("a" * 63 + ".example.com", None, id="63-char-label"),
        pytest.param("a" * 64 + ".example.com", "has the label", id="64-char-label"),
        pytest.param(".".join(["abcdefghi"] * 26), "at most 253", id="too-long"),
        pytest.param("-api.example.com", "has the label", id="leading-hyphen"),
        pytest.param("api-.example.com", "has the label", id="trailing-hyphen"),
        pytest.param("api..example.com", "has the label", id="empty-label"),
        pytest.param("api_x.example.com", "has the label", id="underscore"),
        pytest.param("*.example.com", "wildcard", id="wildcard"),
        pytest.param("api.example.com.", "ends with a dot", id="trailing-dot"),
        pytest.param("host.123", "last label is a number", id="numeric-top-label"),
        pytest.param("", "is empty", id="empty"),
        pytest.param("bücher.example", "has the label", id="not-ascii"),
    ],
)
def test_dns_names_follow_rfc_1123(name: str, why: str | None) -> None:
    found = dns_name_problem(name)
    assert found is None if why is None else (found is not None and why in found)


@pytest.mark.parametrize(
    ("address", "named"),
    [
        ("10.0.0.1", False),
        ("10.0.0.256", False),
        ("10.0", False),
        ("fd00::1", False),
        ("::", False),
        ("api.example.com", True),
        ("localhost", True),
        ("host.123", True),
        ("", True),
    ],
)
def test_an_address_is_meant_as_a_name_unless_it_is_shaped_like_an_ip(address: str, named: bool) -> None:
    assert is_meant_as_dns_name(address) is named


def test_a_valid_dns_service_has_no_problems() -> None:
    assert messages(dns_service("a.example.com", "b.example.com")) == []
    assert messages(dns_service("a.example.com", resolution=DnsResolution.LOGICAL, refresh=30.0)) == []


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        pytest.param(
            dataclasses.replace(dns_service("a.example.com"), endpoints=(Endpoint("10.0.0.1", 8080, "http"),)),
            "mixes IP addresses and DNS names",
            id="mix",
        ),
        pytest.param(dns_service("10.0.0.1"), "is an IP address, not a DNS name", id="ip-as-name"),
        pytest.param(dns_service("a" * 300), "at most 253", id="too-long"),
        pytest.param(
            dns_service("a.example.com", "b.example.com", resolution=DnsResolution.LOGICAL),
            "logical resolution takes one name per port",
            id="logical-two-names",
        ),
        pytest.param(dns_service(), "port 'http' has no DNS endpoint", id="port-without-name"),
        pytest.param(dns_service("a.example.com", refresh=0.001), "dns.refresh must be within", id="refresh"),
        pytest.param(
            dns_service("a.example.com", resolvers=(DnsResolver("dns.example.com"),)),
            "is not an IP address",
            id="resolver-name",
        ),
        pytest.param(
            dns_service("a.example.com", resolvers=(DnsResolver("10.0.0.53", 0),)), "out of range", id="resolver-port"
        ),
        pytest.param(
            dns_service("a.example.com", resolvers=tuple(DnsResolver(f"10.0.0.{i}") for i in range(9))),
            "at most 8",
            id="too-many-resolvers",
        ),
        pytest.param(dns_service(*(f"h{i}.example.com" for i in range(65))), "at most 64", id="too-many-names"),
        pytest.param(
            dataclasses.replace(dns_service("a.example.com"), external_name="b.example.com"),
            "has no endpoints of its own",
            id="with-external-name",
        ),
    ],
)
def test_bad_dns_services_are_refused_with_a_reason_at_their_origin(service: Service, expected: str) -> None:
    found = messages(service)
    assert any(expected in message for message in found), found
    assert all(message.startswith("service shop/pay (dns.yaml:3): ") for message in found)


def test_a_changed_name_is_a_service_change_never_an_endpoint_only_one() -> None:
    """The names travel inside the clusters: the endpoint fast path (EDS only) must not take them."""
    before = Mesh.of([dns_service("a.example.com")])
    after = Mesh.of([dns_service("b.example.com")])
    changes = MeshChanges.between(before, after)
    assert changes.services
    assert not changes.endpoints_only


# --- the policy format ---


def parsed(text: str) -> tuple[list[Service], list[str]]:
    result = parse_policy(text, SOURCE)
    return list(result.services), list(result.errors)


def test_the_policy_format_reads_dns_endpoints_and_their_settings() -> None:
    services, errors = parsed(
        """services:
  - name: pay
    namespace: shop
    ports: [{name: http, port: 8080}, {name: admin, port: 9000}]
    dns:
      resolution: strict
      refresh: 250ms
      lookup_family: v6
      resolvers: [10.0.0.53, "10.0.0.54:5353", "fd00::53", "[fd00::54]:5353"]
    endpoints:
      - {address: pay-a.example.com, zone: eu-1, weight: 3}
      - {address: pay-b.example.com, ports: {http: 80}}
"""
    )
    assert errors == []
    (service,) = services
    assert service.endpoints == ()
    assert service.dns == DnsEndpoints(
        (
            Endpoint("pay-a.example.com", 8080, "http", Locality(zone="eu-1"), weight=3),
            Endpoint("pay-a.example.com", 9000, "admin", Locality(zone="eu-1"), weight=3),
            Endpoint("pay-b.example.com", 80, "http"),
        ),
        resolution=DnsResolution.STRICT,
        refresh=0.25,
        lookup_family=LookupFamily.V6,
        resolvers=(
            DnsResolver("10.0.0.53"),
            DnsResolver("10.0.0.54", 5353),
            DnsResolver("fd00::53"),
            DnsResolver("fd00::54", 5353),
        ),
    )
    assert service.problems() == []


def test_defaults_strict_following_the_ttl_any_family_the_hosts_resolver() -> None:
    services, errors = parsed(
        "services:\n  - name: pay\n    port: 80\n    endpoints: [{address: localhost, port: 8080}]\n"
    )
    assert errors == []
    assert services[0].dns == DnsEndpoints((Endpoint("localhost", 8080, "http"),))
    assert services[0].dns.resolution is DnsResolution.STRICT
    assert services[0].dns.refresh is None
    assert services[0].dns.lookup_family is LookupFamily.AUTO


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        pytest.param(
            "    port: 80\n    endpoints:\n      - {address: 10.0.0.1}\n      - {address: a.example.com}\n",
            "dns.yaml:5: service.endpoints: mixes IP addresses (10.0.0.1) and DNS names (a.example.com)",
            id="mix",
        ),
        pytest.param(
            "    port: 80\n    dns: {resolution: logical}\n    endpoints: [{address: 10.0.0.1, port: 80}]\n",
            "dns.yaml:4: service.dns: applies to endpoints named by DNS; this service has none",
            id="dns-without-names",
        ),
        pytest.param(
            "    port: 80\n    dns: {resolution: round}\n    endpoints: [{address: a.example.com}]\n",
            "dns.yaml:4: service.dns.resolution: 'round' is not one of strict, logical",
            id="bad-resolution",
        ),
        pytest.param(
            "    port: 80\n    dns: {refresh: soon}\n    endpoints: [{address: a.example.com}]\n",
            "dns.yaml:4: service.dns.refresh: 'soon' is not a duration",
            id="bad-refresh",
        ),
        pytest.param(
            "    port: 80\n    dns:\n      resolvers: ['[fd00::1]x']\n    endpoints: [{address: a.example.com}]\n",
            "dns.yaml:5: service.dns.resolvers: '[fd00::1]x' is not an IP address with an optional port",
            id="bad-resolver",
        ),
        pytest.param(
            "    port: 80\n    dns: {ttl: 5}\n    endpoints: [{address: a.example.com}]\n",
            "dns.yaml:4: unknown key 'ttl' in service.dns",
            id="unknown-key",
        ),
        pytest.param(
            "    port: 80\n    endpoints: [{address: a.example.com, ports: {grpc: 90}}]\n",
            "dns.yaml:4: service.endpoints.ports: the service has no port named 'grpc'",
            id="unknown-port-of-an-endpoint",
        ),
    ],
)
def test_bad_dns_input_in_a_file_is_refused_at_its_line(service: str, expected: str) -> None:
    _, errors = parsed("services:\n  - name: pay\n" + service)
    assert any(error.startswith(expected) for error in errors), errors


def test_a_bad_name_in_a_file_is_refused_by_the_model_at_the_services_line() -> None:
    services, errors = parsed("services:\n  - name: pay\n    port: 80\n    endpoints: [{address: a_b.example.com}]\n")
    assert errors == []
    (problem,) = services[0].problems()
    assert problem.message.startswith("service default/pay (dns.yaml:2): endpoint name 'a_b.example.com' has the label")


name_text = st.text(alphabet="abcXYZ019-._*:[]", max_size=300)


@settings(max_examples=150, deadline=None)
@given(addresses=st.lists(name_text, max_size=4), resolvers=st.lists(name_text, max_size=3), refresh=name_text)
def test_fuzzed_dns_services_never_crash_and_every_error_has_a_line(
    addresses: list[str], resolvers: list[str], refresh: str
) -> None:
    document = {
        "services": [
            {
                "name": "pay",
                "port": 80,
                "dns": {"resolvers": resolvers, "refresh": refresh},
                "endpoints": [{"address": address} for address in addresses],
            }
        ]
    }
    result = parse_policy(yaml.safe_dump(document), SOURCE)
    assert all(error.startswith(f"{SOURCE}:") for error in result.errors)
    for service in result.services:
        for problem in service.problems():
            assert problem.where.startswith(f"{SOURCE}:")
        if not service.problems():
            translate(Mesh.of([service]), ProxyGroup())
            translate(Mesh.of([service]), ProxyGroup(role=ProxyRole.GRPC))


# --- translation ---


def test_envoy_gets_a_strict_dns_cluster_with_the_names_inline_and_no_eds() -> None:
    service = dns_service("b.example.com", "A.example.com", refresh=30.0, resolvers=(DnsResolver("10.0.0.53", 5353),))
    mesh = Mesh.of([service])
    cluster = cluster_of(mesh)
    assert not cluster.HasField("eds_cluster_config")
    config = dns_config(cluster)
    assert not config.all_addresses_in_single_endpoint
    assert config.dns_refresh_rate.seconds == 30
    assert not config.respect_dns_ttl
    assert config.dns_lookup_family == dns_pb2.V4_PREFERRED
    resolver = cares_dns_resolver_pb2.CaresDnsResolverConfig()
    assert config.typed_dns_resolver_config.name == "envoy.network.dns_resolver.cares"
    assert config.typed_dns_resolver_config.typed_config.Unpack(resolver)
    assert [(r.socket_address.address, r.socket_address.port_value) for r in resolver.resolvers] == [
        ("10.0.0.53", 5353)
    ]
    hosts = [lb.endpoint.address.socket_address for lb in cluster.load_assignment.endpoints[0].lb_endpoints]
    assert [(h.address, h.port_value) for h in hosts] == [("a.example.com", 8080), ("b.example.com", 8080)]
    assert translate(mesh, ProxyGroup()).resources[TypeUrl.ENDPOINT] == ()
    assert translate_endpoints(mesh, ProxyGroup()) == ()
    assert Snapshot.of(translate(mesh, ProxyGroup()).resources).consistency_problems() == []


def test_logical_resolution_ttl_and_family_reach_envoy() -> None:
    config = dns_config(
        cluster_of(
            Mesh.of([dns_service("a.example.com", resolution=DnsResolution.LOGICAL, lookup_family=LookupFamily.V4)])
        )
    )
    assert config.all_addresses_in_single_endpoint
    assert config.respect_dns_ttl
    assert not config.HasField("dns_refresh_rate")
    assert not config.HasField("typed_dns_resolver_config")
    assert config.dns_lookup_family == dns_pb2.V4_ONLY


def test_names_keep_localities_weights_and_health_with_no_failover_by_the_proxys_zone() -> None:
    """The cluster is shared by every proxy of a role: its priorities cannot depend on where one is."""
    endpoints = (
        Endpoint("near.example.com", 8080, "http", Locality("eu", "eu-1"), weight=3),
        Endpoint("far.example.com", 8080, "http", Locality("us", "us-1")),
        Endpoint("old.example.com", 8080, "http", health=EndpointHealth.TERMINATING),
    )
    service = Service("pay", "shop", (HTTP,), dns=DnsEndpoints(endpoints))
    service = dataclasses.replace(service, policy=dataclasses.replace(service.policy, locality_failover=True))
    mesh = Mesh.of([service])
    here = cluster_of(mesh, ProxyGroup(locality=Locality("us", "us-1"))).load_assignment
    assert here == cluster_of(mesh, ProxyGroup(locality=Locality("eu", "eu-1"))).load_assignment
    tiers = [
        (
            tier.priority,
            tier.locality.zone,
            tier.load_balancing_weight.value,
            [lb.health_status for lb in tier.lb_endpoints],
        )
        for tier in here.endpoints
    ]
    assert tiers == [(0, "eu-1", 3, [1]), (0, "us-1", 1, [1]), (1, "", 1, [3])]  # HEALTHY=1, DRAINING=3


def test_proxyless_grpc_gets_a_logical_dns_cluster_with_one_name_whatever_the_mode() -> None:
    mesh = Mesh.of([dns_service("b.example.com", "a.example.com")])
    translation = translate(mesh, ProxyGroup(role=ProxyRole.GRPC))
    cluster = cluster_of(mesh, ProxyGroup(role=ProxyRole.GRPC))
    assert cluster.type == Cluster.LOGICAL_DNS
    assert not cluster.HasField("cluster_type")
    (tier,) = cluster.load_assignment.endpoints
    (only,) = tier.lb_endpoints
    assert only.endpoint.address.socket_address.address == "a.example.com"
    assert any("it uses a.example.com:8080, not b.example.com:8080" in w for w in translation.warnings)


def test_a_gateway_api_gateway_reaches_a_dns_backend_without_eds_and_envoy_accepts_it(tmp_path: Path) -> None:
    services = tuple(
        dataclasses.replace(s, endpoints=(), dns=DnsEndpoints((Endpoint("api.example.com", 9000, "http"),)))
        if s.ref == API
        else s
        for s in GATEWAY_MESH.services
    )
    mesh = dataclasses.replace(GATEWAY_MESH, services=services)
    translation = translate(mesh, GATEWAY_GROUP)
    built: tuple[Any, ...] = translation.resources[TypeUrl.CLUSTER]
    clusters = {c.name: c for c in built}
    assert clusters["api.shop:8080"].cluster_type.name == "envoy.clusters.dns"
    assignments: tuple[Any, ...] = translation.resources[TypeUrl.ENDPOINT]
    assert "api.shop:8080" not in {a.cluster_name for a in assignments}
    assert Snapshot.of(translation.resources).consistency_problems() == []
    # Its clusters through Envoy (the routes name a deliberately missing cluster: unresolved backends).
    bootstrap = validation_bootstrap(translation)
    bootstrap.static_resources.ClearField("listeners")
    result = envoy_validate(bootstrap, tmp_path / "gateway.json")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", [ProxyRole.DEVICE, ProxyRole.MOBILE])
def test_edge_devices_reach_a_dns_service_through_gateways_only(role: ProxyRole) -> None:
    mesh = Mesh.of([dns_service("a.example.com")])
    translation = translate(mesh, ProxyGroup(role=role, site="nowhere"))
    built: tuple[Any, ...] = translation.resources[TypeUrl.CLUSTER]
    (cluster,) = built
    assert cluster.type == Cluster.STATIC
    assert not cluster.HasField("cluster_type")
    assert list(cluster.load_assignment.endpoints) == []
    assert any("DNS endpoints; edge devices reach it through gateways only" in w for w in translation.warnings)


# --- the test DNS server ---


def query(name: str, qtype: int = 1, ident: int = 7) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_the_test_dns_server_answers_a_aaaa_and_unknown_names() -> None:
    server = DnsServer("127.0.0.1", 0, ttl=1)
    server.set("Pay.Meshplane.test", "127.0.0.2", "127.0.0.3")
    answer = server.answer(query("pay.meshplane.TEST"))
    assert answer is not None
    ident, flags, questions, count, _, _ = struct.unpack_from("!HHHHHH", answer)
    assert (ident, flags & 0x800F, questions, count) == (7, 0x8000, 1, 2)
    assert answer.endswith(bytes([127, 0, 0, 3]))
    empty = server.answer(query("pay.meshplane.test", qtype=28))  # AAAA: no such records, the name exists
    assert empty is not None
    assert struct.unpack_from("!HHHHHH", empty)[1] & 0xF == 0
    missing = server.answer(query("other.meshplane.test"))
    assert missing is not None
    assert struct.unpack_from("!HHHHHH", missing)[1] & 0xF == 3
    assert server.answer(b"\x00\x01") is None
    assert server.queries["pay.meshplane.test"] == 2
