"""Problems are values: each has a kind, a subject and a place besides its message, and code decides
by kind (the open-world policy files, the registry's malformed addresses), never by the text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meshplane.discovery.policy_files import validate_policy
from meshplane.model import (
    Device,
    DeviceEndpoint,
    Endpoint,
    GatewayAddress,
    Mesh,
    Problem,
    ProblemKind,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    Site,
    TrustBundle,
    UpstreamTls,
    WeightedBackend,
    forbidden_address_reason,
)

WEB = Service("web", "default", (ServicePort("http", 80),), (Endpoint("10.0.0.1", 8080, "http"),), origin="a.yaml:2")
API_REF = ServiceRef("default", "api")
BERLIN = Site("gym-berlin", "eu", gateways=(GatewayAddress("10.20.0.2", 15080),), device_ranges=("10.20.0.0/16",))


def route(name: str, *backends: WeightedBackend, service: ServiceRef | None = WEB.ref) -> RouteTable:
    return RouteTable(name, (RouteRule(RouteMatch(), backends),), service=service, origin="r.yaml:1")


def test_a_problem_shows_as_its_message() -> None:
    problem = Problem(ProblemKind.INVALID, "service default/web", "a.yaml:2", "service default/web (a.yaml:2): bad")
    assert str(problem) == problem.message
    assert f"{problem}" == problem.message
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.message = "other"  # type: ignore[misc]
    assert not hasattr(problem, "__dict__")  # slotted


# (mesh, the problem it must have): kind, subject and where beside the very message users see.
MESH_CASES = [
    pytest.param(
        Mesh.of([dataclasses.replace(WEB, endpoints=(Endpoint("web-1", 8080, "http"),))]),
        Problem(
            ProblemKind.NOT_AN_IP_ADDRESS,
            "service default/web",
            "a.yaml:2",
            "service default/web (a.yaml:2): endpoint address 'web-1' is not an IP address",
        ),
        id="endpoint-not-an-ip",
    ),
    pytest.param(
        Mesh.of([dataclasses.replace(WEB, endpoints=(Endpoint("10.0.0.1", 8080, "grpc"),))]),
        Problem(
            ProblemKind.UNKNOWN_PORT,
            "service default/web",
            "a.yaml:2",
            "service default/web (a.yaml:2): endpoint 10.0.0.1 names unknown port 'grpc'",
        ),
        id="endpoint-unknown-port",
    ),
    pytest.param(
        Mesh.of([WEB, dataclasses.replace(WEB, origin="b.yaml:7")]),
        Problem(
            ProblemKind.DUPLICATE,
            "service default/web",
            "b.yaml:7",
            "service default/web is defined twice: in a.yaml:2 and in b.yaml:7",
        ),
        id="service-twice",
    ),
    pytest.param(
        Mesh.of([WEB], [route("r", WeightedBackend(WEB.ref)), route("s", WeightedBackend(WEB.ref))]),
        Problem(
            ProblemKind.CONFLICT,
            "route s",
            "r.yaml:1",
            "route s (r.yaml:1) and route r (r.yaml:1) both attach to service default/web",
        ),
        id="two-routes-attach",
    ),
    pytest.param(
        Mesh.of([WEB], [route("r", WeightedBackend(API_REF))]),
        Problem(
            ProblemKind.UNKNOWN_SERVICE, "route r", "r.yaml:1", "route r (r.yaml:1) rule 1: unknown service default/api"
        ),
        id="backend-unknown-service",
    ),
    pytest.param(
        Mesh.of([WEB], [route("r", WeightedBackend(WEB.ref), service=API_REF)]),
        Problem(ProblemKind.UNKNOWN_SERVICE, "route r", "r.yaml:1", "route r (r.yaml:1): unknown service default/api"),
        id="route-unknown-service",
    ),
    pytest.param(
        Mesh.of([WEB], [route("r", WeightedBackend(WEB.ref, port="admin"))]),
        Problem(
            ProblemKind.UNKNOWN_PORT,
            "route r",
            "r.yaml:1",
            "route r (r.yaml:1) rule 1: service default/web has no port 'admin'",
        ),
        id="backend-unknown-port",
    ),
    pytest.param(
        Mesh.of([dataclasses.replace(WEB, tls=UpstreamTls(trust="internal-ca"))]),
        Problem(
            ProblemKind.UNKNOWN_SECRET,
            "service default/web",
            "a.yaml:2",
            "service default/web (a.yaml:2): tls.trust names unknown CA bundle 'internal-ca'",
        ),
        id="unknown-file-secret",
    ),
    pytest.param(
        Mesh.of([dataclasses.replace(WEB, tls=UpstreamTls(trust="shop/ca#ca"))]),
        Problem(
            ProblemKind.UNKNOWN_NAMESPACED_SECRET,
            "service default/web",
            "a.yaml:2",
            "service default/web (a.yaml:2): tls.trust names unknown CA bundle 'shop/ca#ca'",
        ),
        id="unknown-kubernetes-secret",
    ),
    pytest.param(
        Mesh.of([], trust_bundles=[TrustBundle("ca", "not pem", origin="s.yaml:3")]),
        Problem(ProblemKind.INVALID, "secret ca", "s.yaml:3", "secret ca (s.yaml:3): CA bundle is not PEM"),
        id="secret-not-pem",
    ),
    pytest.param(
        Mesh.of(
            [], sites=[BERLIN], devices=[Device("bike-7", "bike", "gym-munich", (DeviceEndpoint("10.20.0.5", 80),))]
        ),
        Problem(ProblemKind.UNKNOWN_SITE, "device bike-7", "", "device bike-7: unknown site 'gym-munich'"),
        id="device-unknown-site",
    ),
    pytest.param(
        Mesh.of(
            [], sites=[BERLIN], devices=[Device("bike-7", "bike", "gym-berlin", (DeviceEndpoint("127.0.0.1", 80),))]
        ),
        Problem(
            ProblemKind.FORBIDDEN_ADDRESS, "device bike-7", "", "device bike-7: address 127.0.0.1 is a loopback address"
        ),
        id="device-loopback",
    ),
    pytest.param(
        Mesh.of([], sites=[dataclasses.replace(BERLIN, gateways=(GatewayAddress("gw.local", 15080),))]),
        Problem(
            ProblemKind.NOT_AN_IP_ADDRESS,
            "site gym-berlin",
            "",
            "site gym-berlin: gateway address 'gw.local' is not an IP address",
        ),
        id="site-gateway-not-an-ip",
    ),
]


@pytest.mark.parametrize(("mesh", "expected"), MESH_CASES)
def test_each_problem_says_its_kind_subject_and_place(mesh: Mesh, expected: Problem) -> None:
    assert expected in mesh.problems()


def test_a_route_rule_problem_names_the_route_and_the_rule_in_its_message_only() -> None:
    table = RouteTable("r", (RouteRule(RouteMatch(), ()),), hosts=("x.example.com",), origin="r.yaml:1")
    assert table.problems() == [
        Problem(ProblemKind.INVALID, "route r", "r.yaml:1", "route r (r.yaml:1) rule 1: has no backends")
    ]


ADDRESS_CASES = [
    pytest.param("10.20.0.5", None, id="allowed"),
    pytest.param("gateway.local", ProblemKind.NOT_AN_IP_ADDRESS, id="host-name"),
    pytest.param("169.254.169.254", ProblemKind.FORBIDDEN_ADDRESS, id="metadata"),
    pytest.param("::ffff:127.0.0.1", ProblemKind.FORBIDDEN_ADDRESS, id="mapped-loopback"),
]


@pytest.mark.parametrize(("address", "kind"), ADDRESS_CASES)
def test_a_refused_device_address_says_whether_it_is_an_address_at_all(address: str, kind: ProblemKind | None) -> None:
    refusal = forbidden_address_reason(address)
    assert (refusal.kind if refusal is not None else None) is kind
    if refusal is not None:
        assert str(refusal) == refusal.reason


POLICY = """\
services:
  - name: web
    port: 80
    tls: {{trust: {trust}}}
routes:
  - {{name: r, service: web, rules: [{{to: [api]}}]}}
"""


@pytest.mark.parametrize(
    ("trust", "open_world", "expected"),
    [
        pytest.param(
            "shop/ca#ca",
            False,
            [
                "service default/web (policy.yaml:2): tls.trust names unknown CA bundle 'shop/ca#ca'",
                "route r (policy.yaml:6) rule 1: unknown service default/api",
            ],
            id="closed-world-refuses-both",
        ),
        pytest.param("shop/ca#ca", True, [], id="open-world-leaves-both-to-the-merge"),
        pytest.param(
            "internal-ca",
            True,
            ["service default/web (policy.yaml:2): tls.trust names unknown CA bundle 'internal-ca'"],
            id="open-world-still-refuses-a-file-secret",
        ),
    ],
)
async def test_open_world_drops_the_problems_another_source_may_resolve_by_kind(
    tmp_path: Path, trust: str, open_world: bool, expected: list[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(trust=trust))
    origins = [error.replace("policy.yaml", str(path)) for error in expected]  # origins name the path given
    assert await validate_policy(path, open_world=open_world) == origins
