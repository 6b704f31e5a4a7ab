"""A service's problems are computed once per object: the same answers as ever, and a reload that
hands an unchanged service over as the same object does not validate it again."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.model import Endpoint, Mesh, Problem, ProblemKind, Protocol, Service, ServicePort, TrafficPolicy
from meshplane.model.secrets import UpstreamTls
from meshplane.model.services import is_ip_address

HTTP = (ServicePort("http", 80, Protocol.HTTP1),)
GOOD = Service("web", "default", HTTP, (Endpoint("10.0.0.1", 8080, "http"), Endpoint("10.0.0.2", 8080, "http")))

BROKEN = {
    "valid": GOOD,
    "address": dataclasses.replace(GOOD, endpoints=(Endpoint("10.0.0.256", 8080, "http"),)),
    "endpoint-port-and-weight": dataclasses.replace(GOOD, endpoints=(Endpoint("::1", 0, "http", weight=129),)),
    "unknown-port-name": dataclasses.replace(GOOD, endpoints=(Endpoint("10.0.0.1", 8080, "grpc"),)),
    "ports-twice": dataclasses.replace(GOOD, ports=(*HTTP, *HTTP)),
    "names": dataclasses.replace(GOOD, name="Web", namespace="-", origin="a.yaml"),
    "hosts-and-sni": dataclasses.replace(GOOD, hosts=("bad host",), tls=UpstreamTls(trust="ca", sni="*.x")),
    "external-name-with-endpoints": dataclasses.replace(GOOD, external_name="db.example.com"),
    "policy": dataclasses.replace(GOOD, policy=TrafficPolicy(connect_timeout=-1.0)),
}

EXPECTED = {
    "valid": [],
    "address": ["service default/web: endpoint address '10.0.0.256' is not an IP address"],
    "endpoint-port-and-weight": [
        "service default/web: endpoint port 0 is out of range 1-65535",
        "service default/web: endpoint weight 129 is out of range 1-128",
    ],
    "unknown-port-name": ["service default/web: endpoint 10.0.0.1 names unknown port 'grpc'"],
    "ports-twice": [
        "service default/web: port name 'http' is declared twice",
        "service default/web: port 80 is declared twice",
    ],
    "names": [
        "service -/Web (a.yaml): name must be a lowercase RFC 1123 label",
        "service -/Web (a.yaml): namespace must be a lowercase RFC 1123 label",
    ],
    "hosts-and-sni": [
        "service default/web: host 'bad host' is not a valid host name",
        "service default/web: tls.sni '*.x' is not a host name",
    ],
    "external-name-with-endpoints": [
        "service default/web: a service with an external name has no endpoints of its own",
    ],
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_problems_are_the_same_when_asked_again(case: str) -> None:
    service = BROKEN[case]
    first = service.problems()
    if case in EXPECTED:
        assert [str(problem) for problem in first] == EXPECTED[case]
    else:
        assert first  # the policy's own wording is test_model's
    first.append(Problem(ProblemKind.INVALID, "", "", "a caller's own addition"))  # a caller may change its list …
    assert service.problems() == first[:-1]  # … never what the next caller gets
    assert dataclasses.replace(service).problems() == first[:-1]  # an equal new object: the same
    assert Mesh.of([service]).problems()[: len(first) - 1] == first[:-1]  # the mesh's own checks follow


def test_remembered_problems_stay_out_of_equality_and_copies() -> None:
    asked = dataclasses.replace(GOOD)
    asked.problems()
    assert asked == GOOD
    assert hash(asked) == hash(GOOD)
    assert repr(asked) == repr(GOOD)
    assert [field.name for field in dataclasses.fields(asked)] == [field.name for field in dataclasses.fields(GOOD)]
    broken = dataclasses.replace(asked, endpoints=(Endpoint("nowhere", 8080, "http"),))
    assert [str(problem) for problem in broken.problems()] == [
        "service default/web: endpoint address 'nowhere' is not an IP address"
    ]


def _service_yaml(name: str, port: int) -> str:
    return (
        f"  - name: {name}\n    namespace: default\n    port: 8080\n    endpoints:\n"
        f"      - {{address: 10.0.0.1, port: {port}}}\n      - {{address: 10.0.0.2, port: {port}}}\n"
    )


@pytest.fixture
def validated_endpoints(monkeypatch: pytest.MonkeyPatch) -> list[Endpoint]:
    """Every endpoint validated from now on, in order (`Endpoint.problems` is a service's main cost)."""
    seen: list[Endpoint] = []
    original: Callable[[Endpoint, str, str], list[Problem]] = Endpoint.problems

    def counting(endpoint: Endpoint, subject: str, where: str = "") -> list[Problem]:
        seen.append(endpoint)
        return original(endpoint, subject, where)

    monkeypatch.setattr(Endpoint, "problems", counting)
    return seen


async def test_a_reload_validates_only_the_service_that_changed(
    tmp_path: Path, validated_endpoints: list[Endpoint]
) -> None:
    (tmp_path / "a.yaml").write_text("services:\n" + _service_yaml("a-one", 80) + _service_yaml("a-two", 80))
    (tmp_path / "b.yaml").write_text("services:\n" + _service_yaml("b-one", 80))
    source = PolicyFileSource(tmp_path)
    assert await source.load()
    assert len(validated_endpoints) == 6  # the first load validates everything
    first = source.mesh
    assert first is not None

    validated_endpoints.clear()
    (tmp_path / "a.yaml").write_text("services:\n" + _service_yaml("a-one", 80) + _service_yaml("a-two", 81))
    assert await source.load()

    assert source.status.errors == ()
    assert {endpoint.port for endpoint in validated_endpoints} == {81}
    assert len(validated_endpoints) == 2  # a-two's endpoints: a-one (same file) and b-one are not asked again
    mesh = source.mesh
    assert mesh is not None
    assert [service.endpoints[0].port for service in mesh.services] == [80, 81, 80]


ADDRESSES = [
    "10.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "256.0.0.1",
    "010.0.0.1",  # leading zeros: refused, as ipaddress refuses them
    "1.2.3",
    "1.2.3.4.5",
    "1..2.3",
    " 1.2.3.4",
    "1.2.3.4\n",
    "1.2.3.4\x00",
    "\u0661.\u0662.\u0663.\u0664",  # non-ASCII (Arabic-Indic) digits
    "0x1.2.3.4",
    "::1",
    "fe80::1%eth0",
    "::ffff:1.2.3.4",
    "2001:db8::",
    "2001:db8:::1",
    "web.example.com",
    "",
]


@pytest.mark.parametrize("address", ADDRESSES, ids=[repr(address) for address in ADDRESSES])
def test_the_address_check_agrees_with_ipaddress(address: str) -> None:
    try:
        ipaddress.ip_address(address)
        expected = True
    except ValueError:
        expected = False
    assert is_ip_address(address) is expected
