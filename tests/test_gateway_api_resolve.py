"""Gateway API objects → model Gateways and status: the spec's rules as named cases (pure, fast).

Each case builds the objects as the API server sends them (JSON), parses them with the source's
parsers and resolves them; the expectations follow the conformance tests of gateway-api v1.6
(httproute-simple-same-namespace, -hostname-intersection, -matching, -invalid-backendref-*,
-invalid-parentref-*, gateway-invalid-tls-configuration, httproute-invalid-cross-namespace-*).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from meshplane.discovery.gateway_api.conditions import GatewayApiStatus, programmed
from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.grpc_routes import parse_grpc_route
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.reference_grants import parse_reference_grant
from meshplane.discovery.gateway_api.resolve import Resolution, intersect, resolve
from meshplane.model import (
    Endpoint,
    Gateway,
    PathMatchKind,
    Protocol,
    Service,
    ServicePort,
    ServiceRef,
    WeightedBackend,
)

NS = "shop"
V1 = "gateway.networking.k8s.io/v1"


def service(name: str, namespace: str = NS, port: int = 8080) -> Service:
    return Service(
        name=name,
        namespace=namespace,
        ports=(ServicePort("http", port, Protocol.HTTP1),),
        endpoints=(Endpoint("10.0.0.1", port, "http"),),
    )


SERVICES = {s.ref: s for s in (service("web"), service("api"), service("billing", "money"))}


def gateway_class(name: str = "mesh", controller: str = DEFAULT_CONTROLLER_NAME) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "GatewayClass", "metadata": {"name": name, "generation": 1},
            "spec": {"controllerName": controller}}  # fmt: skip


def gateway(
    listeners: list[dict[str, Any]], name: str = "edge", class_name: str = "mesh", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": V1,
        "kind": "Gateway",
        "metadata": {"namespace": NS, "name": name, "generation": 3},
        "spec": {"gatewayClassName": class_name, "listeners": listeners, **spec},
    }


def http(name: str = "http", port: int = 80, **more: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": "HTTP", **more}


def route(
    name: str = "web",
    *,
    namespace: str = NS,
    parents: list[dict[str, Any]] | None = None,
    hostnames: list[str] | None = None,
    rules: list[dict[str, Any]] | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": parents if parents is not None else [{"name": "edge", "namespace": NS}]}
    if hostnames is not None:
        spec["hostnames"] = hostnames
    spec["rules"] = rules if rules is not None else [{"backendRefs": [{"name": "web", "port": 8080}]}]
    return {
        "apiVersion": V1,
        "kind": "HTTPRoute",
        "metadata": {"namespace": namespace, "name": name, "generation": 7, "creationTimestamp": created},
        "spec": spec,
    }


def grant(namespace: str, from_namespace: str, kind: str = "Service", name: str | None = None) -> dict[str, Any]:
    to: dict[str, Any] = {"group": "", "kind": kind}
    if name:
        to["name"] = name
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"namespace": namespace, "name": "allow", "generation": 1},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from_namespace}],
                 "to": [to]},
    }  # fmt: skip


def keyed(items: list[Parsed[Any]]) -> Mapping[tuple[str, str], Parsed[Any]]:
    return MappingProxyType({(getattr(p.value, "namespace", ""), p.value.name): p for p in items})


def resolved(
    gateways: list[dict[str, Any]],
    routes: list[dict[str, Any]] = (),  # type: ignore[assignment]
    grants: list[dict[str, Any]] = (),  # type: ignore[assignment]
    *,
    certificates: frozenset[str] = frozenset(),
    classes: list[dict[str, Any]] | None = None,
    grpc_routes: list[dict[str, Any]] = (),  # type: ignore[assignment]
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Resolution:
    objects = GatewayApiObjects(
        gateway_classes=MappingProxyType(
            {("", c["metadata"]["name"]): parse_gateway_class(c) for c in (classes or [gateway_class()])}
        ),
        gateways=keyed([parse_gateway(g) for g in gateways]),
        http_routes=keyed([parse_http_route(r) for r in routes]),
        grpc_routes=keyed([parse_grpc_route(r) for r in grpc_routes]),
        reference_grants=keyed([parse_reference_grant(g) for g in grants]),
    )
    return resolve(objects, DEFAULT_CONTROLLER_NAME, SERVICES, certificates, labels)


def conditions(found: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in found.conditions}


def route_conditions(status: GatewayApiStatus, name: str = "web", index: int = 0) -> dict[str, tuple[str, str]]:
    return conditions(status.http_routes[(NS, name)].parents[index])


def only_gateway(result: Resolution) -> Gateway:
    (found,) = result.gateways
    return found


# --- Gateways and listeners ---


def test_a_gateway_of_another_controller_is_neither_served_nor_given_status() -> None:
    result = resolved(
        [gateway([http()], class_name="other")],
        [route()],
        classes=[gateway_class(), gateway_class("other", "example.com/else")],
    )
    assert result.gateways == ()
    assert dict(result.status.gateways) == {}
    assert dict(result.status.http_routes) == {}


def test_an_accepted_gateway_with_one_http_listener() -> None:
    result = resolved([gateway([http()])], [route()])
    status = result.status.gateways[(NS, "edge")]
    assert conditions(status) == {"Accepted": ("True", "Accepted")}
    (listener,) = status.listeners
    assert conditions(listener) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
        "Conflicted": ("False", "NoConflicts"),
    }
    assert listener.attached_routes == 1
    assert [(k.group, k.kind) for k in listener.supported_kinds] == [
        ("gateway.networking.k8s.io", "HTTPRoute"),
        ("gateway.networking.k8s.io", "GRPCRoute"),
    ]
    assert all(c.observed_generation == 3 for c in status.conditions + listener.conditions)
    served = only_gateway(result)
    assert served.key == f"{NS}/edge"
    ((host,),) = [listener.hosts for listener in served.listeners]
    assert host.hostname == "*"
    (rule,) = host.rules
    assert rule.rule.backends == (WeightedBackend(ServiceRef(NS, "web"), 8080, 1),)
    assert rule.unresolved_weight == 0


@pytest.mark.parametrize(
    ("listener", "reason"),
    [
        pytest.param({"name": "tcp", "port": 9000, "protocol": "TCP"}, "UnsupportedProtocol", id="tcp"),
        pytest.param({"name": "udp", "port": 9000, "protocol": "UDP"}, "UnsupportedProtocol", id="udp"),
    ],
)
def test_a_listener_of_a_protocol_not_served_is_not_accepted(listener: dict[str, Any], reason: str) -> None:
    result = resolved([gateway([http(), listener])])
    status = result.status.gateways[(NS, "edge")]
    assert conditions(status)["Accepted"] == ("True", "ListenersNotValid")
    assert conditions(status.listeners[1])["Accepted"] == ("False", reason)
    assert status.listeners[1].supported_kinds == ()
    assert [listener.name for listener in only_gateway(result).listeners] == ["http"]


def test_listeners_of_two_protocols_on_one_port_conflict() -> None:
    https = {"name": "tls", "port": 80, "protocol": "HTTPS", "hostname": "a.example",
             "tls": {"certificateRefs": [{"name": "cert"}]}}  # fmt: skip
    result = resolved([gateway([http(), https])], certificates=frozenset({f"{NS}/cert"}))
    status = result.status.gateways[(NS, "edge")]
    assert [conditions(listener)["Conflicted"] for listener in status.listeners] == [
        ("True", "ProtocolConflict"),
        ("True", "ProtocolConflict"),
    ]
    assert conditions(status)["Accepted"] == ("False", "ListenersNotValid")
    assert result.gateways == ()


@pytest.mark.parametrize(
    ("ref", "certificates", "grants", "reason"),
    [
        pytest.param({"name": "cert"}, {f"{NS}/cert"}, [], None, id="served"),
        pytest.param({"name": "missing"}, set(), [], "InvalidCertificateRef", id="not-served"),
        pytest.param({"name": "cert", "kind": "ConfigMap"}, set(), [], "InvalidCertificateRef", id="not-a-secret"),
        pytest.param(
            {"name": "cert", "namespace": "certs"}, {"certs/cert"}, [], "RefNotPermitted", id="cross-namespace"
        ),
        pytest.param(
            {"name": "cert", "namespace": "certs"},
            {"certs/cert"},
            [
                {
                    "apiVersion": "gateway.networking.k8s.io/v1beta1",
                    "kind": "ReferenceGrant",
                    "metadata": {"namespace": "certs", "name": "g", "generation": 1},
                    "spec": {
                        "from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": NS}],
                        "to": [{"group": "", "kind": "Secret"}],
                    },
                }
            ],
            None,
            id="cross-namespace-granted",
        ),
    ],
)
def test_an_https_listeners_certificate_refs(
    ref: dict[str, Any], certificates: set[str], grants: list[dict[str, Any]], reason: str | None
) -> None:
    https = {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [ref]}}
    result = resolved([gateway([https])], grants=grants, certificates=frozenset(certificates))
    (listener,) = result.status.gateways[(NS, "edge")].listeners
    if reason is None:
        assert conditions(listener)["ResolvedRefs"] == ("True", "ResolvedRefs")
        (served,) = only_gateway(result).listeners
        assert served.certificates == tuple(sorted(certificates))
    else:
        assert conditions(listener)["ResolvedRefs"] == ("False", reason)
        assert result.gateways == ()


def test_an_unserved_certificate_says_how_to_serve_it() -> None:
    https = {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "c"}]}}
    (listener,) = resolved([gateway([https])]).status.gateways[(NS, "edge")].listeners
    (resolved_refs,) = [c for c in listener.conditions if c.type == "ResolvedRefs"]
    assert "meshplane.io/sds=true" in resolved_refs.message


def test_an_invalid_route_kind_is_not_a_supported_kind() -> None:
    listener = http(allowedRoutes={"kinds": [{"kind": "HTTPRoute"}, {"kind": "TCPRoute"}]})
    status = resolved([gateway([listener])]).status.gateways[(NS, "edge")]
    assert conditions(status.listeners[0])["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    assert [k.kind for k in status.listeners[0].supported_kinds] == ["HTTPRoute"]


def test_a_gateway_asking_for_addresses_is_not_accepted() -> None:
    result = resolved([gateway([http()], addresses=[{"type": "IPAddress", "value": "10.1.1.1"}])])
    assert conditions(result.status.gateways[(NS, "edge")])["Accepted"] == ("False", "UnsupportedAddress")
    assert result.gateways == ()


def test_programmed_follows_what_the_envoys_took() -> None:
    status = resolved([gateway([http(), {"name": "tcp", "port": 9, "protocol": "TCP"}])]).status.gateways[(NS, "edge")]
    pending, listeners = programmed(status, serving=False)
    assert (pending.status, pending.reason) == ("False", "Pending")
    assert [(c.status, c.reason) for c in listeners] == [("False", "Pending"), ("False", "Invalid")]
    done, listeners = programmed(status, serving=True)
    assert (done.status, done.reason) == ("True", "Programmed")
    assert [(c.status, c.reason) for c in listeners] == [("True", "Programmed"), ("False", "Invalid")]


# --- attachment ---


@pytest.mark.parametrize(
    ("listener_hostname", "route_hostnames", "expected"),
    [
        pytest.param(None, (), ("*",), id="neither"),
        pytest.param(None, ("a.example",), ("a.example",), id="route-only"),
        pytest.param("a.example", (), ("a.example",), id="listener-only"),
        pytest.param("a.example", ("a.example", "b.example"), ("a.example",), id="equal"),
        pytest.param("*.example", ("a.example", "x.a.example", "example"), ("a.example", "x.a.example"), id="wild"),
        pytest.param("a.example", ("*.example",), ("a.example",), id="route-wildcard"),
        pytest.param("*.example", ("*.a.example",), ("*.a.example",), id="narrower-wildcard"),
        pytest.param("*.a.example", ("*.example",), ("*.a.example",), id="wider-wildcard"),
        pytest.param("a.example", ("b.example",), (), id="none"),
    ],
)
def test_hostname_intersection(listener_hostname: str | None, route_hostnames: tuple[str, ...], expected: Any) -> None:
    assert intersect(listener_hostname, route_hostnames) == expected


def test_a_route_whose_hostnames_meet_no_listener_is_not_accepted() -> None:
    result = resolved([gateway([http(hostname="a.example")])], [route(hostnames=["b.example"])])
    assert route_conditions(result.status)["Accepted"] == ("False", "NoMatchingListenerHostname")
    assert result.status.gateways[(NS, "edge")].listeners[0].attached_routes == 0


@pytest.mark.parametrize(
    "parent",
    [
        pytest.param({"name": "edge", "sectionName": "nope"}, id="section-name"),
        pytest.param({"name": "edge", "port": 81}, id="port"),
    ],
)
def test_a_parent_ref_naming_no_listener_is_no_matching_parent(parent: dict[str, Any]) -> None:
    result = resolved([gateway([http()])], [route(parents=[parent])])
    assert route_conditions(result.status)["Accepted"] == ("False", "NoMatchingParent")


def test_section_name_attaches_to_that_listener_only() -> None:
    result = resolved(
        [gateway([http(), http("other", 8080)])], [route(parents=[{"name": "edge", "sectionName": "other"}])]
    )
    status = result.status.gateways[(NS, "edge")]
    assert [listener.attached_routes for listener in status.listeners] == [0, 1]
    by_name = {listener.name: listener for listener in only_gateway(result).listeners}
    assert by_name["http"].hosts == ()
    assert len(by_name["other"].hosts) == 1


@pytest.mark.parametrize(
    ("allowed", "route_namespace", "labels", "reason"),
    [
        pytest.param(None, "other", None, "NotAllowedByListeners", id="same-by-default"),
        pytest.param({"namespaces": {"from": "All"}}, "other", None, None, id="all"),
        pytest.param(
            {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}},
            "other",
            {"other": {"team": "shop"}},
            None,
            id="selector-matches",
        ),
        pytest.param(
            {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}},
            "other",
            {"other": {"team": "ops"}},
            "NotAllowedByListeners",
            id="selector-does-not",
        ),
        pytest.param(
            {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}},
            "other",
            None,
            "NotAllowedByListeners",
            id="selector-without-namespace-labels",
        ),
        pytest.param({"kinds": [{"kind": "GRPCRoute"}]}, NS, None, "NotAllowedByListeners", id="kind"),
    ],
)
def test_allowed_routes(
    allowed: dict[str, Any] | None,
    route_namespace: str,
    labels: Mapping[str, Mapping[str, str]] | None,
    reason: str | None,
) -> None:
    listener = http(allowedRoutes=allowed) if allowed is not None else http()
    result = resolved([gateway([listener])], [route(namespace=route_namespace)], labels=labels)
    found = conditions(result.status.http_routes[(route_namespace, "web")].parents[0])
    assert found["Accepted"] == (("True", "Accepted") if reason is None else ("False", reason))


def test_a_route_with_problems_is_not_accepted() -> None:
    bad = route(rules=[{"matches": [{"path": {"type": "Exact", "value": "no-slash"}}]}])
    result = resolved([gateway([http()])], [bad])
    assert route_conditions(result.status)["Accepted"] == ("False", "UnsupportedValue")
    assert only_gateway(result).listeners[0].hosts == ()


def grpc_route(rules: list[dict[str, Any]], hostnames: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": [{"name": "edge"}], "rules": rules}
    if hostnames is not None:
        spec["hostnames"] = hostnames
    return {
        "apiVersion": V1,
        "kind": "GRPCRoute",
        "metadata": {"namespace": NS, "name": "rpc", "generation": 2, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }


GRPC_SERVICES = {
    **SERVICES,
    ServiceRef(NS, "greeter"): Service(
        "greeter", NS, (ServicePort("grpc", 9000, Protocol.GRPC),), (Endpoint("10.0.0.2", 9000, "grpc"),)
    ),
}


@pytest.mark.parametrize(
    ("method", "kind", "path"),
    [
        pytest.param({"service": "helloworld.Greeter", "method": "SayHello"}, PathMatchKind.EXACT,
                     "/helloworld.Greeter/SayHello", id="service-and-method"),
        pytest.param({"service": "helloworld.Greeter"}, PathMatchKind.PREFIX, "/helloworld.Greeter", id="service"),
        pytest.param({"method": "SayHello"}, PathMatchKind.REGEX, "/[^/]+/SayHello", id="method"),
        pytest.param({"type": "RegularExpression", "service": "hello.*", "method": "Say.*"}, PathMatchKind.REGEX,
                     "/hello.*/Say.*", id="regex"),
    ],
)  # fmt: skip
def test_a_grpc_method_match_is_a_path_match(method: dict[str, Any], kind: PathMatchKind, path: str) -> None:
    route = grpc_route([{"matches": [{"method": method}], "backendRefs": [{"name": "greeter", "port": 9000}]}])
    objects = GatewayApiObjects(
        gateway_classes=MappingProxyType({("", "mesh"): parse_gateway_class(gateway_class())}),
        gateways=keyed([parse_gateway(gateway([http()]))]),
        grpc_routes=keyed([parse_grpc_route(route)]),
    )
    result = resolve(objects, DEFAULT_CONTROLLER_NAME, GRPC_SERVICES, frozenset())
    assert conditions(result.status.grpc_routes[(NS, "rpc")].parents[0]) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
    (rule,) = only_gateway(result).listeners[0].hosts[0].rules
    assert (rule.rule.match.path.kind, rule.rule.match.path.value) == (kind, path)
    assert rule.rule.match.method == "POST"
    assert rule.rule.timeout == 0  # streams are not cut at Envoy's default 15 s
    assert rule.failure_status == 503


def test_a_grpc_backend_must_speak_http2_and_unresolved_ones_answer_503() -> None:
    route = grpc_route([{"backendRefs": [{"name": "web", "port": 8080}]}])
    result = resolved([gateway([http()])], grpc_routes=[route])
    assert conditions(result.status.grpc_routes[(NS, "rpc")].parents[0])["ResolvedRefs"] == (
        "False",
        "UnsupportedProtocol",
    )
    (rule,) = only_gateway(result).listeners[0].hosts[0].rules
    assert rule.fails_all
    assert rule.failure_status == 503


def test_http_rules_come_before_grpc_rules_on_one_hostname() -> None:
    objects = GatewayApiObjects(
        gateway_classes=MappingProxyType({("", "mesh"): parse_gateway_class(gateway_class())}),
        gateways=keyed([parse_gateway(gateway([http()]))]),
        http_routes=keyed([parse_http_route(route(rules=[{"matches": [{"path": {"value": "/web"}}],
                                                          "backendRefs": [{"name": "web", "port": 8080}]}]))]),
        grpc_routes=keyed([parse_grpc_route(grpc_route([{"backendRefs": [{"name": "greeter", "port": 9000}]}]))]),
    )  # fmt: skip
    result = resolve(objects, DEFAULT_CONTROLLER_NAME, GRPC_SERVICES, frozenset())
    rules = only_gateway(result).listeners[0].hosts[0].rules
    assert [r.rule.backends[0].service.name for r in rules] == ["web", "greeter"]


# --- backends ---


@pytest.mark.parametrize(
    ("backend", "grants", "reason"),
    [
        pytest.param({"name": "nope", "port": 8080}, [], "BackendNotFound", id="missing-service"),
        pytest.param({"name": "web", "port": 9999}, [], "BackendNotFound", id="missing-port"),
        pytest.param({"name": "web", "port": 8080, "kind": "Unknown"}, [], "InvalidKind", id="unknown-kind"),
        pytest.param(
            {"name": "billing", "namespace": "money", "port": 8080}, [], "RefNotPermitted", id="cross-namespace"
        ),
        pytest.param(
            {"name": "billing", "namespace": "money", "port": 8080},
            [grant("money", NS, name="other")],
            "RefNotPermitted",
            id="grant-for-another-name",
        ),
    ],
)
def test_an_unresolved_backend_answers_500_and_says_why(
    backend: dict[str, Any], grants: list[dict[str, Any]], reason: str
) -> None:
    result = resolved([gateway([http()])], [route(rules=[{"backendRefs": [backend]}])], grants)
    conds = route_conditions(result.status)
    assert conds["Accepted"] == ("True", "Accepted")
    assert conds["ResolvedRefs"] == ("False", reason)
    (rule,) = only_gateway(result).listeners[0].hosts[0].rules
    assert rule.fails_all


def test_a_reference_grant_lets_a_route_use_another_namespaces_service() -> None:
    backend = {"name": "billing", "namespace": "money", "port": 8080}
    result = resolved([gateway([http()])], [route(rules=[{"backendRefs": [backend]}])], [grant("money", NS)])
    assert route_conditions(result.status)["ResolvedRefs"] == ("True", "ResolvedRefs")
    (rule,) = only_gateway(result).listeners[0].hosts[0].rules
    assert rule.rule.backends == (WeightedBackend(ServiceRef("money", "billing"), 8080, 1),)


def test_a_partly_resolved_rule_keeps_the_unresolved_share() -> None:
    backends = [{"name": "web", "port": 8080, "weight": 3}, {"name": "gone", "port": 8080, "weight": 1}]
    result = resolved([gateway([http()])], [route(rules=[{"backendRefs": backends}])])
    (rule,) = only_gateway(result).listeners[0].hosts[0].rules
    assert [b.weight for b in rule.rule.backends] == [3]
    assert rule.unresolved_weight == 1
    assert not rule.fails_all


def test_weight_zero_backends_get_nothing_and_all_zero_answers_500() -> None:
    some = [{"name": "web", "port": 8080, "weight": 0}, {"name": "api", "port": 8080}]
    none = [{"name": "web", "port": 8080, "weight": 0}]
    result = resolved(
        [gateway([http()])],
        [route(rules=[{"matches": [{"path": {"value": "/a"}}], "backendRefs": some}, {"backendRefs": none}])],
    )
    first, second = only_gateway(result).listeners[0].hosts[0].rules
    assert [b.service.name for b in first.rule.backends] == ["api"]
    assert second.fails_all
    assert route_conditions(result.status)["ResolvedRefs"] == ("True", "ResolvedRefs")


# --- precedence ---


def test_rules_are_ordered_by_the_specs_precedence() -> None:
    def rule(path: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"matches": [{"path": path, **more}], "backendRefs": [{"name": "web", "port": 8080}]}

    routes = [
        route("older", created="2025-01-01T00:00:00Z", rules=[rule({"type": "PathPrefix", "value": "/a"})]),
        route(
            "newer",
            created="2026-06-01T00:00:00Z",
            rules=[
                rule({"type": "PathPrefix", "value": "/a"}),
                rule({"type": "PathPrefix", "value": "/a/b"}),
                rule({"type": "Exact", "value": "/a"}),
                rule({"type": "PathPrefix", "value": "/a"}, method="GET"),
                rule({"type": "PathPrefix", "value": "/a"}, headers=[{"name": "x", "value": "1"}]),
                rule(
                    {"type": "PathPrefix", "value": "/a"},
                    headers=[{"name": "x", "value": "1"}, {"name": "y", "value": "2"}],
                ),
                rule({"type": "PathPrefix", "value": "/a"}, queryParams=[{"name": "q", "value": "1"}]),
            ],
        ),
    ]
    result = resolved([gateway([http()])], routes)
    rules = only_gateway(result).listeners[0].hosts[0].rules
    shown = [
        (r.rule.match.path.kind.value, r.rule.match.path.value, r.rule.match.method, len(r.rule.match.headers),
         len(r.rule.match.query))
        for r in rules
    ]  # fmt: skip
    assert shown == [
        ("exact", "/a", None, 0, 0),
        ("prefix", "/a/b", None, 0, 0),
        ("prefix", "/a", "GET", 0, 0),
        ("prefix", "/a", None, 2, 0),
        ("prefix", "/a", None, 1, 0),
        ("prefix", "/a", None, 0, 1),
        ("prefix", "/a", None, 0, 0),  # the older route's, before the newer's equal one
        ("prefix", "/a", None, 0, 0),
    ]


def test_matches_of_one_rule_become_rules_ored_together() -> None:
    matches = [{"path": {"type": "Exact", "value": "/x"}}, {"headers": [{"name": "v", "value": "2"}]}]
    rule = {"matches": matches, "backendRefs": [{"name": "web", "port": 8080}]}
    result = resolved([gateway([http()])], [route(rules=[rule])])
    rules = only_gateway(result).listeners[0].hosts[0].rules
    assert [r.rule.match.path.kind for r in rules] == [PathMatchKind.EXACT, PathMatchKind.PREFIX]


def test_filters_become_the_models() -> None:
    modifier = {"set": [{"name": "X-A", "value": "1"}], "remove": ["x-b"]}
    rewrite = {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}
    rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/old/"}}],
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": modifier},
            {"type": "URLRewrite", "urlRewrite": rewrite},
        ],
        "backendRefs": [{"name": "web", "port": 8080}],
    }
    redirect = {
        "matches": [{"path": {"type": "Exact", "value": "/moved"}}],
        "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example", "statusCode": 301}}],
    }
    result = resolved([gateway([http()])], [route(rules=[rule, redirect])])
    exact, prefix = only_gateway(result).listeners[0].hosts[0].rules
    assert exact.rule.redirect is not None
    assert exact.rule.redirect.hostname == "new.example"
    assert exact.rule.redirect.status == 301
    assert not exact.fails_all
    assert prefix.rule.match.path.value == "/old"  # a trailing slash is ignored
    assert prefix.rule.prefix_rewrite == "/new"
    assert prefix.rule.request_headers is not None
    assert [h.name for h in prefix.rule.request_headers.set] == ["X-A"]
    assert prefix.rule.request_headers.remove == ("x-b",)


def test_an_extension_ref_filter_answers_500() -> None:
    rule = {
        "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Magic", "name": "m"}}],
        "backendRefs": [{"name": "web", "port": 8080}],
    }
    result = resolved([gateway([http()])], [route(rules=[rule])])
    assert route_conditions(result.status)["ResolvedRefs"] == ("False", "InvalidKind")
    assert only_gateway(result).listeners[0].hosts[0].rules[0].fails_all


def test_resolution_is_deterministic() -> None:
    args = ([gateway([http(), http("b", 81)])], [route(), route("api", hostnames=["a.example"])])
    assert resolved(*args) == resolved(*args)
