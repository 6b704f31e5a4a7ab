"""Services + EndpointSlices → model services: ports by name, conditions, locality, dual-stack, kinds."""

from __future__ import annotations

import pytest

from meshplane.discovery.kubernetes_mapping import health_of, map_service, protocol_of, route_name
from meshplane.model import Endpoint, EndpointHealth, Locality, Protocol, ServicePort
from tests.k8s import objects as k


@pytest.mark.parametrize(
    ("conditions", "health"),
    [
        ({"ready": True}, EndpointHealth.READY),
        ({}, EndpointHealth.READY),  # nil means ready, as the API documents
        ({"ready": False}, None),  # left out: Envoy's panic mode would send it traffic
        ({"ready": False, "serving": True}, EndpointHealth.SERVING),
        ({"ready": False, "serving": True, "terminating": True}, EndpointHealth.TERMINATING),
        ({"ready": False, "serving": False, "terminating": True}, None),
        ({"ready": True, "terminating": True}, EndpointHealth.TERMINATING),
    ],
    ids=["ready", "nil", "not-ready", "serving-only", "terminating-serving", "terminating-gone", "v1beta1-terminating"],
)
def test_conditions(conditions: dict[str, bool], health: EndpointHealth | None) -> None:
    assert health_of(conditions) == health


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        (k.port("web", 80, app_protocol="http"), Protocol.HTTP1),
        (k.port("web", 80, app_protocol="http2"), Protocol.HTTP2),
        (k.port("web", 80, app_protocol="h2c"), Protocol.HTTP2),
        (k.port("web", 80, app_protocol="kubernetes.io/h2c"), Protocol.HTTP2),
        (k.port("web", 80, app_protocol="grpc"), Protocol.GRPC),
        (k.port("web", 80, app_protocol="tcp"), Protocol.TCP),
        (k.port("grpc-api", 80), Protocol.GRPC),
        (k.port("tcp-db", 80), Protocol.TCP),
        (k.port("http2", 80), Protocol.HTTP2),
        (k.port("db", 80), Protocol.HTTP1),
        (k.port("grpc", 80, app_protocol="http"), Protocol.HTTP1),  # appProtocol first
    ],
    ids=[
        "http",
        "http2",
        "h2c",
        "k8s-h2c",
        "grpc",
        "tcp",
        "name-grpc",
        "name-tcp",
        "name-http2",
        "default",
        "app-first",
    ],
)
def test_protocol(port: dict[str, object], protocol: Protocol) -> None:
    assert protocol_of(port) == protocol


def test_several_slices_ports_by_name_and_zones() -> None:
    svc = k.service("shop", ports=[k.port("http", 80), k.port("grpc", 9090, app_protocol="grpc")])
    slices = [
        k.endpoint_slice(
            "shop-a", "shop", endpoints=[k.endpoint("10.0.0.1", zone="z1")], ports=[("http", 8080), ("grpc", 9000)]
        ),
        k.endpoint_slice("shop-b", "shop", endpoints=[k.endpoint("10.0.0.2", zone="z2")], ports=[("grpc", 9001)]),
        k.endpoint_slice("shop-c", "shop", endpoints=[k.endpoint("10.0.0.3")], ports=[("metrics", 9100)]),
    ]
    mapped = map_service(svc, slices)
    assert mapped.service is not None
    assert mapped.service.ports == (ServicePort("http", 80, Protocol.HTTP1), ServicePort("grpc", 9090, Protocol.GRPC))
    assert mapped.service.endpoints == (
        Endpoint("10.0.0.1", 8080, "http", Locality(zone="z1")),
        Endpoint("10.0.0.1", 9000, "grpc", Locality(zone="z1")),
        Endpoint("10.0.0.2", 9001, "grpc", Locality(zone="z2")),
    )
    assert mapped.service.origin == "kubernetes"


def test_unnamed_port_is_called_by_its_number() -> None:
    mapped = map_service(
        k.service("web", ports=[k.port("", 80)]),
        [k.endpoint_slice("w", "web", endpoints=[k.endpoint("10.0.0.1")], ports=[("", 8080)])],
    )
    assert mapped.service is not None
    assert mapped.service.ports == (ServicePort("80", 80),)
    assert mapped.service.endpoints == (Endpoint("10.0.0.1", 8080, "80"),)


def test_dual_stack_slices_both_count() -> None:
    slices = [
        k.endpoint_slice("web-v4", "web", endpoints=[k.endpoint("10.0.0.1")]),
        k.endpoint_slice("web-v6", "web", endpoints=[k.endpoint("fd00::0001")], address_type="IPv6"),
        k.endpoint_slice("web-fqdn", "web", endpoints=[k.endpoint("db.example.com")], address_type="FQDN"),
    ]
    mapped = map_service(k.service("web"), slices)
    assert mapped.service is not None
    assert [e.address for e in mapped.service.endpoints] == ["10.0.0.1", "fd00::1"]


def test_terminating_endpoints_are_kept_only_while_serving() -> None:
    endpoints = [
        k.endpoint("10.0.0.1"),
        k.endpoint("10.0.0.2", ready=False, serving=True, terminating=True),
        k.endpoint("10.0.0.3", ready=False, serving=False, terminating=True),
        k.endpoint("10.0.0.4", ready=False),
    ]
    mapped = map_service(k.service("web"), [k.endpoint_slice("w", "web", endpoints=endpoints)])
    assert mapped.service is not None
    assert [(e.address, e.health) for e in mapped.service.endpoints] == [
        ("10.0.0.1", EndpointHealth.READY),
        ("10.0.0.2", EndpointHealth.TERMINATING),
    ]


def test_an_address_in_two_slices_is_listed_once_with_the_better_health() -> None:
    slices = [
        k.endpoint_slice("a", "web", endpoints=[k.endpoint("10.0.0.1", ready=False, serving=True, terminating=True)]),
        k.endpoint_slice("b", "web", endpoints=[k.endpoint("10.0.0.1")]),
    ]
    mapped = map_service(k.service("web"), slices)
    assert mapped.service is not None
    assert [(e.address, e.health) for e in mapped.service.endpoints] == [("10.0.0.1", EndpointHealth.READY)]


def test_v1beta1_topology_gives_zone_and_region() -> None:
    slice_ = k.endpoint_slice("w", "web", api_version="discovery.k8s.io/v1beta1")
    slice_["endpoints"] = [
        {
            "addresses": ["10.0.0.1"],
            "conditions": {"ready": True},
            "topology": {"topology.kubernetes.io/zone": "eu-a", "topology.kubernetes.io/region": "eu"},
        }
    ]
    mapped = map_service(k.service("web"), [slice_])
    assert mapped.service is not None
    assert mapped.service.endpoints[0].locality == Locality("eu", "eu-a")


def test_node_of_an_endpoint_is_its_sub_zone() -> None:
    v1 = k.endpoint_slice("w1", "web", endpoints=[k.endpoint("10.0.0.1", zone="z1", node="node-7")])
    beta = k.endpoint_slice("w2", "web", api_version="discovery.k8s.io/v1beta1")
    beta["endpoints"] = [
        {
            "addresses": ["10.0.0.2"],
            "conditions": {"ready": True},
            "topology": {"topology.kubernetes.io/zone": "z2", "kubernetes.io/hostname": "node-9"},
        }
    ]
    mapped = map_service(k.service("web"), [v1, beta])
    assert mapped.service is not None
    assert [e.locality for e in mapped.service.endpoints] == [
        Locality("", "z1", "node-7"),
        Locality("", "z2", "node-9"),
    ]


def test_headless_service_maps_like_any_other() -> None:
    svc = k.service("db", cluster_ip="None")
    mapped = map_service(svc, [k.endpoint_slice("db-1", "db", endpoints=[k.endpoint("10.0.0.9")])])
    assert mapped.service is not None
    assert [e.address for e in mapped.service.endpoints] == ["10.0.0.9"]


def test_external_name_service() -> None:
    svc = k.service("pay", type_="ExternalName", external_name="pay.example.com.", ports=[k.port("https", 443)])
    mapped = map_service(svc, [k.endpoint_slice("stray", "pay", endpoints=[k.endpoint("10.0.0.1")])])
    assert mapped.service is not None
    assert mapped.service.external_name == "pay.example.com"
    assert mapped.service.endpoints == ()


@pytest.mark.parametrize(
    ("svc", "note"),
    [
        (k.service("dns", ports=[k.port("dns", 53, protocol="UDP")]), "only TCP ports are served"),
        (k.service("bare", ports=[]), "no TCP ports"),
        (
            k.service("ext", type_="ExternalName", external_name="bad name!", ports=[k.port("h", 80)]),
            "not a valid DNS name",
        ),
        (k.service("bad", ports=[k.port("Upper", 80)]), "lowercase DNS label"),
    ],
    ids=["udp-only", "no-ports", "bad-external-name", "bad-port-name"],
)
def test_unservable_services_are_skipped_with_a_reason(svc: dict[str, object], note: str) -> None:
    mapped = map_service(svc, [])
    assert mapped.service is None
    assert any(note in text for text in mapped.notes), mapped.notes


def test_udp_ports_are_left_out_and_tcp_kept() -> None:
    mapped = map_service(k.service("dns", ports=[k.port("dns", 53, protocol="UDP"), k.port("dns-tcp", 53)]), [])
    assert mapped.service is not None
    assert [p.name for p in mapped.service.ports] == ["dns-tcp"]
    assert any("UDP" in note for note in mapped.notes)


def test_timeout_annotation_makes_a_route_for_a_single_http_port() -> None:
    svc = k.service("web", annotations={"meshplane.io/timeout": "3s", "meshplane.io/retries": "attempts=4"})
    mapped = map_service(svc, [])
    assert mapped.route is not None
    assert mapped.route.name == route_name("default", "web")
    (rule,) = mapped.route.rules
    assert rule.timeout == 3.0
    assert rule.retry is not None
    assert rule.retry.attempts == 4


def test_timeout_annotation_on_two_http_ports_is_skipped() -> None:
    svc = k.service("web", ports=[k.port("a", 80), k.port("b", 81)], annotations={"meshplane.io/timeout": "3s"})
    mapped = map_service(svc, [])
    assert mapped.service is not None
    assert mapped.route is None
    assert any("exactly one HTTP port" in note for note in mapped.notes)
