"""EDS translation: priorities, localities, weights, health, and the endpoint fast path."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import health_check_pb2

from meshplane.model import (
    Endpoint,
    EndpointHealth,
    Locality,
    Mesh,
    Protocol,
    ProxyGroup,
    ProxyRole,
    Service,
    ServicePort,
    TrafficPolicy,
)
from meshplane.xds.translate import translate, translate_endpoints
from meshplane.xds.types import TypeUrl
from tests.golden.cases import CASES

ZONE_A = Locality("eu", "eu-a")
ZONE_B = Locality("eu", "eu-b")
ZONE_C = Locality("us", "us-c")
UNKNOWN = Locality()
PORT = ServicePort("http", 8080)


def endpoint(address: str, where: Locality, health: EndpointHealth = EndpointHealth.READY, weight: int = 1) -> Endpoint:
    return Endpoint(address, 8080, "http", locality=where, health=health, weight=weight)


def assignment(endpoints: list[Endpoint], proxy: Locality, *, failover: bool = True) -> Any:
    service = Service(
        "svc", "ns", (PORT,), endpoints=tuple(endpoints), policy=TrafficPolicy(locality_failover=failover)
    )
    (cla,) = translate_endpoints(Mesh.of([service]), ProxyGroup(locality=proxy))
    return cla


def priorities(cla: Any) -> dict[str, int]:
    """Each endpoint address → its priority."""
    return {
        lb.endpoint.address.socket_address.address: group.priority
        for group in cla.endpoints
        for lb in group.lb_endpoints
    }


SPREAD = [
    endpoint("10.0.0.1", ZONE_A),
    endpoint("10.0.0.2", ZONE_B),
    endpoint("10.0.0.3", ZONE_C),
    endpoint("10.0.0.4", UNKNOWN),
    endpoint("10.0.0.9", ZONE_A, EndpointHealth.TERMINATING),
]


@pytest.mark.parametrize(
    ("endpoints", "proxy", "failover", "expected"),
    [
        pytest.param(
            SPREAD,
            ZONE_A,
            True,
            {"10.0.0.1": 0, "10.0.0.2": 1, "10.0.0.3": 2, "10.0.0.4": 2, "10.0.0.9": 3},
            id="zone-region-elsewhere-terminating",
        ),
        pytest.param(
            SPREAD,
            Locality("eu"),
            True,
            {"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 1, "10.0.0.4": 1, "10.0.0.9": 2},
            id="proxy-knows-only-its-region",
        ),
        pytest.param(
            SPREAD,
            Locality("ap", "ap-z"),
            True,
            {"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.4": 0, "10.0.0.9": 1},
            id="nothing-near-the-proxy",
        ),
        pytest.param(
            SPREAD,
            UNKNOWN,
            True,
            {"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.4": 0, "10.0.0.9": 1},
            id="proxy-locality-unknown",
        ),
        pytest.param(
            SPREAD,
            ZONE_A,
            False,
            {"10.0.0.1": 0, "10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.4": 0, "10.0.0.9": 1},
            id="failover-off",
        ),
        pytest.param(
            [endpoint("10.0.0.3", ZONE_C), endpoint("10.0.0.9", ZONE_A, EndpointHealth.TERMINATING)],
            ZONE_A,
            True,
            {"10.0.0.3": 0, "10.0.0.9": 1},
            id="gaps-renumbered",
        ),
        pytest.param(
            [endpoint("10.0.0.9", ZONE_A, EndpointHealth.TERMINATING)],
            ZONE_A,
            True,
            {"10.0.0.9": 0},
            id="only-terminating",
        ),
        pytest.param(
            [endpoint("10.0.0.1", Locality("", "eu-a")), endpoint("10.0.0.2", Locality("eu", "eu-a"))],
            Locality("", "eu-a"),
            True,
            {"10.0.0.1": 0, "10.0.0.2": 1},
            id="zone-needs-the-same-region",
        ),
        pytest.param(
            [endpoint("10.0.0.1", Locality("eu", "")), endpoint("10.0.0.2", Locality("eu", "eu-a"))],
            Locality("eu", ""),
            True,
            {"10.0.0.1": 0, "10.0.0.2": 0},
            id="unknown-zone-never-matches-a-zone",
        ),
    ],
)
def test_priorities(endpoints: list[Endpoint], proxy: Locality, failover: bool, expected: dict[str, int]) -> None:
    cla = assignment(endpoints, proxy, failover=failover)
    assert priorities(cla) == expected


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_priorities_are_contiguous_from_zero_and_terminating_is_lowest(case: Any) -> None:
    draining_status = health_check_pb2.DRAINING
    for group in case.groups:
        for cla in translate_endpoints(case.mesh, group):
            used = sorted({localities.priority for localities in cla.endpoints})
            assert used == list(range(len(used))), cla.cluster_name
            draining = {
                g.priority for g in cla.endpoints for lb in g.lb_endpoints if lb.health_status == draining_status
            }
            others = {g.priority for g in cla.endpoints for lb in g.lb_endpoints if lb.health_status != draining_status}
            if draining and others:
                assert min(draining) > max(others), cla.cluster_name


def test_localities_are_grouped_weighted_and_sorted() -> None:
    cla = assignment(
        [
            endpoint("10.0.0.2", ZONE_A, weight=3),
            endpoint("10.0.0.1", ZONE_A, weight=2),
            endpoint("10.0.1.1", ZONE_B, EndpointHealth.UNHEALTHY, weight=7),
            endpoint("10.0.2.1", Locality("eu", "eu-b", "rack-1")),
        ],
        UNKNOWN,
    )
    summary = [
        (g.priority, g.locality.region, g.locality.zone, g.locality.sub_zone, g.load_balancing_weight.value)
        for g in cla.endpoints
    ]
    assert summary == [(0, "eu", "eu-a", "", 5), (0, "eu", "eu-b", "", 7), (0, "eu", "eu-b", "rack-1", 1)]
    assert [lb.endpoint.address.socket_address.address for lb in cla.endpoints[0].lb_endpoints] == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert all(g.HasField("locality") for g in cla.endpoints)


def test_unknown_locality_is_still_set() -> None:
    cla = assignment([endpoint("10.0.0.1", UNKNOWN)], UNKNOWN)
    assert cla.endpoints[0].HasField("locality")
    assert cla.endpoints[0].load_balancing_weight.value == 1


@pytest.mark.parametrize(
    ("health", "status"),
    [
        pytest.param(EndpointHealth.READY, health_check_pb2.HEALTHY, id="ready"),
        pytest.param(EndpointHealth.SERVING, health_check_pb2.DEGRADED, id="serving"),
        pytest.param(EndpointHealth.TERMINATING, health_check_pb2.DRAINING, id="terminating"),
        pytest.param(EndpointHealth.UNHEALTHY, health_check_pb2.UNHEALTHY, id="unhealthy"),
    ],
)
def test_health_status(health: EndpointHealth, status: int) -> None:
    cla = assignment([endpoint("10.0.0.1", ZONE_A, health, weight=4)], ZONE_A)
    (lb,) = cla.endpoints[0].lb_endpoints
    assert lb.health_status == status
    assert lb.load_balancing_weight.value == 4


def test_only_the_ports_own_endpoints() -> None:
    service = Service(
        "svc",
        "ns",
        (ServicePort("http", 80), ServicePort("admin", 9901), ServicePort("grpc", 9090, Protocol.GRPC)),
        endpoints=(Endpoint("10.0.0.1", 8080, "http"), Endpoint("10.0.0.1", 9901, "admin")),
    )
    by_name = {cla.cluster_name: cla for cla in translate_endpoints(Mesh.of([service]), ProxyGroup())}
    ports = {
        name: [lb.endpoint.address.socket_address.port_value for lb in cla.endpoints[0].lb_endpoints]
        for name, cla in by_name.items()
        if cla.endpoints
    }
    assert ports == {"svc.ns:80": [8080], "svc.ns:9901": [9901]}
    # A port without endpoints still gets its assignment, so its cluster does not warm forever.
    assert list(by_name["svc.ns:9090"].endpoints) == []


def test_duplicate_endpoint_is_dropped_with_a_warning() -> None:
    service = Service(
        "svc",
        "ns",
        (PORT,),
        endpoints=(
            endpoint("10.0.0.1", ZONE_A, weight=2),
            endpoint("10.0.0.1", ZONE_B, EndpointHealth.TERMINATING),
            endpoint("fd00::1", ZONE_A),
            endpoint("fd00:0::1", ZONE_A),  # the same address, spelt differently
        ),
    )
    translation = translate(Mesh.of([service]), ProxyGroup())
    (cla,) = translation.resources[TypeUrl.ENDPOINT]
    addresses = [lb.endpoint.address.socket_address.address for g in cla.endpoints for lb in g.lb_endpoints]
    assert addresses == ["10.0.0.1", "fd00::1"]
    assert cla.endpoints[0].lb_endpoints[0].load_balancing_weight.value == 2  # the first one kept
    assert translation.warnings == (
        "endpoints svc.ns:8080: 10.0.0.1:8080 is listed twice; kept the first",
        "endpoints svc.ns:8080: fd00:0::1:8080 is listed twice; kept the first",
    )


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_fast_path_equals_full_translation(case: Any) -> None:
    for group in (*case.groups, ProxyGroup(role=ProxyRole.GRPC, locality=ZONE_C)):
        fast = [m.SerializeToString(deterministic=True) for m in translate_endpoints(case.mesh, group)]
        full = [
            m.SerializeToString(deterministic=True) for m in translate(case.mesh, group).resources[TypeUrl.ENDPOINT]
        ]
        assert fast == full
