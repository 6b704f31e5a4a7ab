"""The mesh (GAMMA) from a policy directory: an HTTPRoute or GRPCRoute whose parentRef is a Service
configures every client's traffic to that Service.

- Unit: producer routes become the Service's route table (precedence, whole-segment prefixes);
  a consumer route (another namespace) makes a table for its namespace's clients; a parent Service that does
  not exist, or a port it lacks, is `NoMatchingParent`; a policy-file route for the same service
  is a conflict (files: an error; merged with Kubernetes: the files' route wins, a problem).
- End to end: a real sidecar Envoy follows an HTTPRoute with a Service parent (header match,
  weights), and an edit of it; grpcio's own xDS client follows a GRPCRoute with a Service parent.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from meshplane.demo.greeter import start_greeter
from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.resolve import resolve_mesh
from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.policy_files import check_policy
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import Mesh as ModelMesh
from meshplane.model import PathMatchKind, ProblemKind, RouteTable, Service, ServiceRef
from tests.test_envoy_integration import Mesh, answered_by, delta, mesh, service  # noqa: F401  (fixtures)
from tests.test_grpc_xds_client import run_client, write_grpc_bootstrap

SERVICES = """\
services:
  - {name: web, namespace: shop, port: 8080, endpoints: [{address: 127.0.0.1, port: 9001}]}
  - {name: api, namespace: shop, port: 8080, endpoints: [{address: 127.0.0.1, port: 9002}]}
"""


def route(namespace: str, parent: str, rules: str, name: str = "web") -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs: [{parent}]
  rules:
{rules}"""


SPLIT = """\
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: api, port: 8080}]
    - matches: [{headers: [{name: x-canary, value: "yes"}]}]
      backendRefs: [{name: api, port: 8080}]
    - backendRefs: [{name: web, port: 8080, weight: 1}, {name: api, port: 8080, weight: 1}]
"""


def objects(text: str) -> GatewayApiObjects:
    parsed = parse_policy(text, "p.yaml")
    assert parsed.errors == ()
    return GatewayApiObjects(http_routes={d.key: d.parsed for d in parsed.gateway_api if d.kind == "HTTPRoute"})


def services() -> dict[ServiceRef, Service]:
    return {service.ref: service for service in ModelMesh.of(list(parse_policy(SERVICES, "s.yaml").services)).services}


# --- resolution ---


def test_a_producer_route_becomes_the_services_route_table() -> None:
    found = resolve_mesh(objects(route("shop", "{kind: Service, group: '', name: web}", SPLIT)), services())
    (table,) = found.routes
    assert (table.name, table.service, table.origin) == (
        "gateway-api.shop.web",
        ServiceRef("shop", "web"),
        "HTTPRoute shop/web",
    )
    first = table.rules[0].match.path
    assert (first.kind, first.value) == (PathMatchKind.REGEX, "/api(/.*)?")  # whole segments: not /apiary
    assert [len(rule.match.headers) for rule in table.rules] == [0, 1, 0]
    assert [[b.weight for b in rule.backends] for rule in table.rules][-1] == [1, 1]
    (parent,) = found.status.http_routes[("shop", "web")].parents
    assert [(c.type, c.status) for c in parent.conditions] == [("Accepted", "True"), ("ResolvedRefs", "True")]
    assert (parent.parent.kind, parent.parent.namespace) == ("Service", "shop")


def test_a_grpcroute_service_match_takes_that_services_methods_only() -> None:
    grpc_services = """\
services:
  - {name: greeter, namespace: shop, port: 50051, protocol: grpc, endpoints: [{address: 127.0.0.1, port: 9}]}
"""
    text = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: '', name: greeter}]
  rules:
    - matches: [{method: {service: meshplane.demo.Greeter}}]
      backendRefs: [{name: greeter, port: 50051}]
"""
    parsed = parse_policy(text, "p.yaml")
    found_objects = GatewayApiObjects(grpc_routes={d.key: d.parsed for d in parsed.gateway_api})
    known = {s.ref: s for s in parse_policy(grpc_services, "s.yaml").services}
    (table,) = resolve_mesh(found_objects, known).routes
    path = table.rules[0].match.path
    assert path.kind is PathMatchKind.REGEX
    assert re.fullmatch(path.value, "/meshplane.demo.Greeter/SayHello")
    assert not re.fullmatch(path.value, "/meshplane.demo.GreeterTwo/SayHello")


def test_a_consumer_route_is_accepted_for_its_own_namespaces_clients() -> None:
    to_web = "    - backendRefs: [{name: web, namespace: shop, port: 8080}]\n"  # the parent itself: no grant needed
    text = route("store", "{kind: Service, group: '', name: web, namespace: shop}", to_web)
    found = resolve_mesh(objects(text), services())
    (table,) = found.routes
    assert (table.name, table.service, table.consumer) == (
        "gateway-api.shop.web@store",
        ServiceRef("shop", "web"),
        "store",
    )
    (parent,) = found.status.http_routes[("store", "web")].parents
    accepted = parent.conditions[0]
    assert (accepted.status, accepted.reason) == ("True", "Accepted")


def test_a_missing_parent_service_or_port_is_no_matching_parent() -> None:
    for parent, wanted in (
        ("{kind: Service, group: '', name: nowhere}", "Service shop/nowhere is not found"),
        ("{kind: Service, group: '', name: web, port: 9}", "Service shop/web has no port 9"),
    ):
        found = resolve_mesh(objects(route("shop", parent, SPLIT)), services())
        (status,) = found.status.http_routes[("shop", "web")].parents
        assert (status.conditions[0].reason, status.conditions[0].message) == ("NoMatchingParent", wanted)
        assert found.routes == ()


def test_a_policy_file_route_for_the_same_service_is_an_error_in_files(tmp_path: Path) -> None:
    own = "routes:\n  - {name: mine, service: shop/web, rules: [{to: [{service: shop/api}]}]}\n"
    parent = "{kind: Service, group: '', name: web}"
    (tmp_path / "a.yaml").write_text(SERVICES + own + "---\n" + route("shop", parent, SPLIT))
    check = asyncio.run(check_policy(tmp_path))
    assert any("both attach to service shop/web" in error for error in check.errors), check.errors


def test_merged_with_kubernetes_the_files_route_wins_with_a_conflict() -> None:
    own = "routes:\n  - {name: mine, service: shop/web, rules: [{to: [{service: shop/api}]}]}\n"
    files = parse_policy(SERVICES + own, "f.yaml")
    mesh_of_files = ModelMesh.of(list(files.services), list(files.routes))
    kubernetes = objects(route("shop", "{kind: Service, group: '', name: web}", SPLIT))
    merged = Inventory().merge(Contents(files=mesh_of_files, gateway_api=kubernetes))
    assert [table.name for table in merged.mesh.routes] == ["mine"]
    (conflict,) = [problem for problem in merged.problems if problem.kind is ProblemKind.CONFLICT]
    assert "serving route mine (f.yaml:5)" in conflict.message
    # Without the files' route, the Gateway API's is served, and its status is owed.
    alone = Inventory().merge(Contents(files=ModelMesh.of(list(files.services)), gateway_api=kubernetes))
    assert [table.name for table in alone.mesh.routes] == ["gateway-api.shop.web"]
    assert isinstance(alone.mesh.routes[0], RouteTable)
    assert alone.gateway_status.http_routes[("shop", "web")].parents[0].parent.kind == "Service"


# --- end to end ---

MESH_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-split}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 8080}}]
  rules:
{rules}"""


@pytest.mark.envoy
async def test_a_sidecar_follows_an_httproute_with_a_service_parent(mesh: Mesh) -> None:  # noqa: F811
    one, two = await mesh.backend("one"), await mesh.backend("two")
    mesh.write("services.yaml", "services:\n" + service("web", one.port) + service("canary", two.port))
    rules = """\
    - matches: [{headers: [{name: x-canary, value: "yes"}]}]
      backendRefs: [{name: canary, port: 8080}]
    - backendRefs: [{name: web, port: 8080, weight: 1}, {name: canary, port: 8080, weight: 1}]
"""
    mesh.write("route.yaml", MESH_ROUTE.format(rules=rules))
    envoy = await mesh.envoy("sidecar-gamma", True)

    async def canary_by_header() -> bool:
        return await answered_by(envoy, "web", "/", {"x-canary": "yes"}) == "two"

    await envoy.eventually(canary_by_header, "x-canary: yes to reach canary")
    seen: set[str | None] = set()

    async def split() -> bool:
        seen.add(await answered_by(envoy, "web"))
        return {"one", "two"} <= seen

    await envoy.eventually(split, "the 1:1 split to reach both web and canary")

    # The route edited: everything to web.
    mesh.write("route.yaml", MESH_ROUTE.format(rules="    - backendRefs: [{name: web, port: 8080}]\n"))

    async def all_to_web() -> bool:
        return await answered_by(envoy, "web", "/", {"x-canary": "yes"}) == "one"

    await envoy.eventually(all_to_web, "the edited route to send the canary header to web")
    assert not mesh.plane.registry.recent_nacks


GRPC_MESH = """\
services:
  - name: greeter
    port: 50051
    protocol: grpc
    endpoints: [{{address: 127.0.0.1, port: {one}}}]
  - name: greeter-two
    port: 50051
    protocol: grpc
    endpoints: [{{address: 127.0.0.1, port: {two}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: greeter}}
spec:
  parentRefs: [{{group: "", kind: Service, name: greeter}}]
  rules:
    - matches: [{{method: {{service: meshplane.demo.Greeter}}}}]  # every method: a regex for the client
      backendRefs: [{{name: greeter-two, port: 50051}}]
"""


async def test_a_grpc_xds_client_follows_a_grpcroute_with_a_service_parent(mesh: Mesh, tmp_path: Path) -> None:  # noqa: F811
    servers = {name: await start_greeter(name) for name in ("greeter-1", "greeter-2")}
    try:
        ports = {name: port for name, (_, port) in servers.items()}
        mesh.write("mesh.yaml", GRPC_MESH.format(one=ports["greeter-1"], two=ports["greeter-2"]))
        bootstrap = write_grpc_bootstrap(tmp_path / "grpc-bootstrap.json", mesh.plane.xds_port)
        replies = await run_client(bootstrap, "xds:///greeter:50051", "ada")
        assert replies == ["hello ada from greeter-2"]
        assert not mesh.plane.registry.recent_nacks
    finally:
        for server, _ in servers.values():
            await server.stop(None)
