"""A backendRef's own RequestHeaderModifier (the Gateway API's HTTPRouteBackendRequestHeaderModification).

- Resolution keeps the filter on that backend's share (`WeightedBackend.request_headers`) and the
  route stays ResolvedRefs True; any other filter on a backendRef is still refused.
- The translation gives each backend its own weighted cluster entry with its header changes,
  a single backend too; the unresolved share keeps them; a rule without them is unchanged.
- Envoy accepts the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)

from meshplane.model import (
    Gateway,
    GatewayHost,
    GatewayListener,
    HeaderModifier,
    HeaderValue,
    ListenerProtocol,
    Mesh,
    PathMatch,
    PathMatchKind,
    WeightedBackend,
)
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap
from tests.test_gateway_api_resolve import gateway, http, only_gateway, resolved, route, route_conditions
from tests.test_gateway_api_translate import API, GROUP, WEB, forward, service

V1 = HeaderModifier(set=(HeaderValue("Backend", "v1"),), remove=("X-Drop",))
V2 = HeaderModifier(add=(HeaderValue("Backend", "v2%"),))


def header_filter(value: str) -> dict[str, Any]:
    modifier = {"set": [{"name": "Backend", "value": value}], "remove": ["X-Drop"]}
    return {"type": "RequestHeaderModifier", "requestHeaderModifier": modifier}


def test_resolution_keeps_a_backends_header_modifier_on_its_share() -> None:
    backends = [
        {"name": "web", "port": 8080, "weight": 10, "filters": [header_filter("web")]},
        {"name": "api", "port": 8080, "weight": 10},
    ]
    result = resolved([gateway([http()])], [route(rules=[{"backendRefs": backends}])])
    assert route_conditions(result.status)["ResolvedRefs"] == ("True", "ResolvedRefs")
    (rule,) = only_gateway(result).listeners[0].hosts[0].rules
    web, api = rule.rule.backends
    assert web.request_headers == HeaderModifier(set=(HeaderValue("Backend", "web"),), remove=("X-Drop",))
    assert api.request_headers is None
    assert rule.rule.request_headers is None


def test_other_filters_on_a_backend_still_answer_500() -> None:
    mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "api", "port": 8080}}}
    backends = [{"name": "web", "port": 8080, "filters": [header_filter("web"), mirror]}]
    result = resolved([gateway([http()])], [route(rules=[{"backendRefs": backends}])])
    assert route_conditions(result.status)["ResolvedRefs"] == ("False", "InvalidKind")
    assert only_gateway(result).listeners[0].hosts[0].rules[0].fails_all


def mesh_of(*rules: Any) -> Mesh:
    listener = GatewayListener("http", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", tuple(rules)),))
    return Mesh.of([service(WEB), service(API)], gateways=[Gateway("shop", "edge", (listener,))])


def routes_of(mesh: Mesh) -> list[Any]:
    (config,) = dict(translate(mesh, GROUP).resources)[TypeUrl.ROUTE]
    (host,) = config.virtual_hosts
    return list(host.routes)


def headers_of(entry: Any) -> tuple[list[tuple[str, str, int]], list[str]]:
    added = [(o.header.key, o.header.value, o.append_action) for o in entry.request_headers_to_add]
    return added, list(entry.request_headers_to_remove)


def test_each_backend_gets_its_own_header_changes() -> None:
    rule = forward(
        PathMatch(PathMatchKind.PREFIX, "/"),
        WeightedBackend(WEB, 8080, 10, request_headers=V1),
        WeightedBackend(API, 8080, 30, request_headers=V2),
    )
    (route,) = routes_of(mesh_of(rule))
    v1, v2 = route.route.weighted_clusters.clusters
    assert (v1.weight.value, v2.weight.value) == (10, 30)
    assert "web" in v1.name
    assert "api" in v2.name
    added, removed = headers_of(v1)
    assert [(key, value) for key, value, _ in added] == [("backend", "v1")]
    assert removed == ["x-drop"]
    added, removed = headers_of(v2)
    assert [(key, value) for key, value, _ in added] == [("backend", "v2%%")]  # literal, not a substitution
    assert removed == []
    assert not route.request_headers_to_add  # nothing of it on the rule's own changes


def test_a_single_backend_with_header_changes_is_a_weighted_cluster_of_one() -> None:
    rule = forward(PathMatch(PathMatchKind.PREFIX, "/"), WeightedBackend(WEB, 8080, request_headers=V1))
    (route,) = routes_of(mesh_of(rule))
    assert not route.route.cluster
    (entry,) = route.route.weighted_clusters.clusters
    assert headers_of(entry)[1] == ["x-drop"]


def test_the_unresolved_share_keeps_the_backends_header_changes() -> None:
    rule = forward(
        PathMatch(PathMatchKind.PREFIX, "/"), WeightedBackend(WEB, 8080, 3, request_headers=V1), unresolved=1
    )
    (route,) = routes_of(mesh_of(rule))
    web, unresolved = route.route.weighted_clusters.clusters
    assert (web.weight.value, unresolved.weight.value) == (3, 1)
    assert headers_of(web)[1] == ["x-drop"]
    assert not unresolved.request_headers_to_add


def test_a_rule_without_backend_header_changes_is_unchanged() -> None:
    (route,) = routes_of(mesh_of(forward(PathMatch(PathMatchKind.PREFIX, "/"), WeightedBackend(WEB, 8080))))
    assert route.route.cluster
    assert not route.route.HasField("weighted_clusters")


def test_two_backends_of_one_port_keep_their_own_header_changes() -> None:
    rule = forward(
        PathMatch(PathMatchKind.PREFIX, "/"),
        WeightedBackend(WEB, 8080, 1, request_headers=V1),
        WeightedBackend(WEB, 8080, 1, request_headers=V2),
    )
    (route,) = routes_of(mesh_of(rule))
    first, second = route.route.weighted_clusters.clusters
    assert first.name == second.name
    assert headers_of(first) != headers_of(second)


def test_envoy_accepts_backend_header_changes(tmp_path: Path) -> None:
    rule = forward(
        PathMatch(PathMatchKind.PREFIX, "/"),
        WeightedBackend(WEB, 8080, 1, request_headers=V1),
        WeightedBackend(API, 8080, 1, request_headers=V2),
        WeightedBackend(API, 8080, 1, request_headers=V1),  # one cluster named twice: Envoy takes it
    )
    bootstrap = validation_bootstrap(translate(mesh_of(rule), GROUP))
    for listener in bootstrap.static_resources.listeners:
        for chain in listener.filter_chains:
            hcm = HttpConnectionManager()
            chain.filters[0].typed_config.Unpack(hcm)
            assert hcm.route_config.virtual_hosts[0].routes[0].route.weighted_clusters.clusters
    result = envoy_validate(bootstrap, tmp_path / "gateway.json")
    assert result.returncode == 0, result.stdout + result.stderr
