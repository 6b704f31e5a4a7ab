"""Mesh (GAMMA) routes on one port of a Service: a parentRef's `port` narrows the route to it.

- Resolution: a parentRef with a port makes that port's route table (`gateway-api.ns.name.port`),
  Accepted even on a Service of several ports; the Service-wide routes' rules join it, in the one
  precedence order; a port the Service lacks stays `NoMatchingParent`.
- Model: two tables on one service port conflict; a table on a port the service lacks is refused.
- Translation: the port's virtual host follows its own table, the other ports the Service-wide
  table or, with none, the default route (upstream's MeshPorts, as data).
"""

from __future__ import annotations

from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.resolve import resolve_mesh
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import (
    HeaderModifier,
    HeaderValue,
    Mesh,
    ProblemKind,
    Protocol,
    ProxyGroup,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    TrafficPolicy,
    WeightedBackend,
)
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl

ECHO = ServiceRef("mesh", "echo")
TWO_PORTS = (ServicePort("http", 80), ServicePort("http-alt", 8080))


def echo(name: str = "echo") -> Service:
    return Service(name, "mesh", TWO_PORTS, policy=TrafficPolicy())


def route(name: str, parent: str, header: str) -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: mesh}}
spec:
  parentRefs: [{parent}]
  rules:
    - filters:
        - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: {header}}}]}}}}
      backendRefs: [{{name: echo, port: 80}}]
"""


def resolved(*texts: str) -> tuple[tuple[RouteTable, ...], dict[tuple[str, str], str]]:
    parsed = parse_policy("---\n".join(texts), "p.yaml")
    assert parsed.errors == ()
    objects = GatewayApiObjects(http_routes={d.key: d.parsed for d in parsed.gateway_api if d.kind == "HTTPRoute"})
    found = resolve_mesh(objects, {ECHO: echo()})
    accepted = {
        key: f"{status.parents[0].conditions[0].status} {status.parents[0].conditions[0].reason}"
        for key, status in found.status.http_routes.items()
    }
    return found.routes, accepted


def response_header(table: RouteTable) -> list[str]:
    return [
        header.value
        for rule in table.rules
        for modifier in [rule.response_headers]
        if modifier is not None
        for header in modifier.set
    ]


def test_a_parent_port_on_a_service_of_several_ports_makes_that_ports_table() -> None:
    tables, accepted = resolved(route("on-80", "{kind: Service, group: '', name: echo, port: 80}", "v1"))
    assert accepted == {("mesh", "on-80"): "True Accepted"}
    (table,) = tables
    assert (table.name, table.service, table.port) == ("gateway-api.mesh.echo.80", ECHO, 80)
    assert response_header(table) == ["v1"]


def test_the_service_wide_rules_join_a_ports_table_and_keep_their_own() -> None:
    tables, accepted = resolved(
        route("on-80", "{kind: Service, group: '', name: echo, port: 80}", "port"),
        route("all", "{kind: Service, group: '', name: echo}", "all"),
    )
    assert set(accepted.values()) == {"True Accepted"}
    by_name = {table.name: table for table in tables}
    assert sorted(by_name) == ["gateway-api.mesh.echo", "gateway-api.mesh.echo.80"]
    assert by_name["gateway-api.mesh.echo"].port is None
    assert response_header(by_name["gateway-api.mesh.echo"]) == ["all"]
    # Equal matches: the older route first; both were made at once, so by namespace/name ("all").
    assert response_header(by_name["gateway-api.mesh.echo.80"]) == ["all", "port"]
    assert "HTTPRoute mesh/all" in by_name["gateway-api.mesh.echo.80"].origin


def test_a_port_the_service_lacks_is_still_no_matching_parent() -> None:
    tables, accepted = resolved(route("on-9", "{kind: Service, group: '', name: echo, port: 9}", "x"))
    assert (tables, accepted) == ((), {("mesh", "on-9"): "False NoMatchingParent"})


def one_rule(header: str) -> tuple[RouteRule, ...]:
    modifier = HeaderModifier(set=(HeaderValue("X-Header-Set", header),))
    return (RouteRule(RouteMatch(), (WeightedBackend(ECHO, 80),), response_headers=modifier),)


def test_two_tables_on_one_service_port_conflict_and_a_missing_port_is_refused() -> None:
    twice = Mesh.of(
        [echo()],
        [
            RouteTable("a", one_rule("a"), service=ECHO, port=80),
            RouteTable("b", one_rule("b"), service=ECHO, port=80),
            RouteTable("c", one_rule("c"), service=ECHO),
        ],
    )
    (conflict,) = twice.problems()
    assert conflict.kind is ProblemKind.CONFLICT
    assert "both attach to service mesh/echo port 80" in conflict.message
    missing = Mesh.of([echo()], [RouteTable("a", one_rule("a"), service=ECHO, port=9)])
    assert [problem.message for problem in missing.problems()] == ["route a (): service mesh/echo has no port 9"]
    assert "needs a service" in RouteTable("a", one_rule("a"), hosts=("a.example",), port=80).problems()[0].message


def set_headers(mesh: Mesh) -> dict[str, list[str]]:
    """Each virtual host's X-Header-Set values (none: the default route)."""
    assert mesh.problems() == []
    (config,) = translate(mesh, ProxyGroup()).resources[TypeUrl.ROUTE]
    return {
        vhost.name: [option.header.value for route in vhost.routes for option in route.response_headers_to_add]
        for vhost in config.virtual_hosts
    }


def test_upstream_mesh_ports_as_data_a_port_table_serves_its_port_only() -> None:
    v1, v2 = echo("echo-v1"), echo("echo-v2")
    on_80 = RouteTable("gateway-api.mesh.echo-v1.80", one_rule("v1"), service=v1.ref, port=80)
    every = RouteTable("gateway-api.mesh.echo-v2", one_rule("v2"), service=v2.ref)
    found = set_headers(Mesh.of([echo(), v1, v2], [on_80, every]))
    assert found["echo-v1.mesh:80"] == ["v1"]
    assert found["echo-v1.mesh:8080"] == []  # the default route: the port's own table is absent
    assert found["echo-v2.mesh:80"] == found["echo-v2.mesh:8080"] == ["v2"]


def test_a_port_table_on_a_port_that_is_not_http_warns() -> None:
    db = Service(
        "db", "mesh", (ServicePort("http", 80), ServicePort("tcp", 5432, Protocol.TCP)), policy=TrafficPolicy()
    )
    table = RouteTable("t", one_rule("x"), service=db.ref, port=5432)
    translation = translate(Mesh.of([db, echo()], [table]), ProxyGroup())
    assert translation.warnings == ("route t: service mesh/db has no HTTP port 5432 to attach to",)
