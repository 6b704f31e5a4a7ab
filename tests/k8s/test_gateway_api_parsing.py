"""The Gateway API parsers: what the CRDs' schema and CEL rules forbid becomes a problem naming the
object and the field (the 1.20 test API server runs no CEL, so meshplane must refuse it itself),
the spec's defaults are applied, nothing raises on any input, and every object the upstream
conformance suite applies parses.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import yaml

from meshplane.discovery.gateway_api.backend_tls_policies import parse_backend_tls_policy
from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.filters import Filter, Redirect
from meshplane.discovery.gateway_api.gateway_classes import controller_name_problem, parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.grpc_routes import parse_grpc_route
from meshplane.discovery.gateway_api.http_routes import duration_ms, parse_http_route
from meshplane.discovery.gateway_api.matches import DEFAULT_PATH, PathMatch
from meshplane.discovery.gateway_api.reference_grants import parse_reference_grant
from meshplane.discovery.gateway_api.references import GATEWAY_GROUP, BackendRef, ParentRef, SecretRef
from meshplane.model.problems import ProblemKind
from tests.k8s.gateway_api_crds import GATEWAY_API, GATEWAY_API_MISSING, VERSION
from tests.preconditions import require

PARSERS: dict[str, Callable[[Mapping[str, Any]], Parsed[Any]]] = {
    "GatewayClass": parse_gateway_class,
    "Gateway": parse_gateway,
    "HTTPRoute": parse_http_route,
    "GRPCRoute": parse_grpc_route,
    "ReferenceGrant": parse_reference_grant,
    "BackendTLSPolicy": parse_backend_tls_policy,
}
CONFORMANCE = GATEWAY_API / VERSION / "conformance"


def obj(kind: str, spec: Any, name: str = "x", namespace: str | None = "shop") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "generation": 3}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": kind, "metadata": meta, "spec": spec}


def gateway(*listeners: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return obj("Gateway", {"gatewayClassName": "meshplane", "listeners": list(listeners), **spec})


def route(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return obj("HTTPRoute", {"parentRefs": [{"name": "edge"}], "rules": list(rules), **spec})


def problems_of(parsed: Parsed[Any]) -> list[str]:
    return [str(problem) for problem in parsed.problems]


HTTP = {"name": "http", "port": 80, "protocol": "HTTP"}
HTTPS = {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}}

# (id, object, a fragment of the one problem expected)
REFUSED = [
    ("gateway-hostname-on-tcp", gateway({"name": "t", "port": 9000, "protocol": "TCP", "hostname": "a.example"}),
     "hostname must not be specified for protocol TCP"),
    ("gateway-hostname-on-udp", gateway({"name": "u", "port": 53, "protocol": "UDP", "hostname": "a.example"}),
     "hostname must not be specified for protocol UDP"),
    ("gateway-duplicate-listener-names", gateway(HTTP, {**HTTP, "port": 8080}),
     "listener name 'http' must be unique"),
    ("gateway-duplicate-port-protocol-hostname", gateway(HTTP, {**HTTP, "name": "other"}),
     "combination of port, protocol and hostname must be unique"),
    ("gateway-port-out-of-range", gateway({**HTTP, "port": 70000}), "spec.listeners[0].port: 70000 is not in 1..65535"),
    ("gateway-port-zero", gateway({**HTTP, "port": 0}), "is not in 1..65535"),
    ("gateway-port-not-a-number", gateway({**HTTP, "port": "80"}), "must be an integer"),
    ("gateway-tls-on-http", gateway({**HTTP, "tls": {"certificateRefs": [{"name": "c"}]}}),
     "tls must not be specified for protocol HTTP"),
    ("gateway-https-passthrough", gateway({**HTTPS, "tls": {"mode": "Passthrough"}}),
     "tls mode must be Terminate for protocol HTTPS"),
    ("gateway-tls-without-mode", gateway({"name": "tls", "port": 443, "protocol": "TLS"}),
     "tls mode must be set for protocol TLS"),
    ("gateway-terminate-without-certificates", gateway({**HTTPS, "tls": {"mode": "Terminate"}}),
     "certificateRefs or options must be specified when mode is Terminate"),
    ("gateway-no-listeners", gateway(), "spec.listeners: must have at least 1 item"),
    ("gateway-too-many-listeners", gateway(*({**HTTP, "name": f"l{i}", "port": 1000 + i} for i in range(65))),
     "has 65 items, more than the 64 allowed"),
    ("gateway-bad-hostname", gateway({**HTTP, "hostname": "Not_A_Host"}), "is not valid"),
    ("gateway-ip-address-not-an-ip", gateway(HTTP, addresses=[{"type": "IPAddress", "value": "nope"}]),
     "must be an IP address"),
    ("gateway-duplicate-address", gateway(HTTP, addresses=[{"value": "10.0.0.1"}, {"value": "10.0.0.1"}]),
     "IPAddress values must be unique"),
    ("gateway-selector-without-selector", gateway({**HTTP, "allowedRoutes": {"namespaces": {"from": "Selector"}}}),
     "from Selector needs a selector"),
    ("gateway-no-class", obj("Gateway", {"listeners": [HTTP]}), "spec.gatewayClassName: is required"),
    ("route-path-not-absolute", route({"matches": [{"path": {"type": "PathPrefix", "value": "shop"}}]}),
     "must be an absolute path and start with '/'"),
    ("route-exact-path-with-double-slash", route({"matches": [{"path": {"type": "Exact", "value": "/a//b"}}]}),
     "must not contain '//'"),
    ("route-path-with-dot-segment", route({"matches": [{"path": {"value": "/a/../b"}}]}), "must not contain '/../'"),
    ("route-path-with-encoded-slash", route({"matches": [{"path": {"value": "/a%2fb"}}]}), "must not contain '%2f'"),
    ("route-path-ending-in-dot", route({"matches": [{"path": {"value": "/a/."}}]}), "must not end with '/.'"),
    ("route-unknown-path-type", route({"matches": [{"path": {"type": "Glob", "value": "/*"}}]}),
     "'Glob' is not one of Exact, PathPrefix, RegularExpression"),
    ("route-too-many-rules", route(*({} for _ in range(17))), "spec.rules: has 17 items, more than the 16 allowed"),
    ("route-too-many-matches-in-a-rule", route({"matches": [{"path": {"value": f"/{i}"}} for i in range(65)]}),
     "has 65 items, more than the 64 allowed"),
    ("route-too-many-matches-in-all",
     route(*({"matches": [{"path": {"value": f"/{r}/{i}"}} for i in range(60)]} for r in range(3))),
     "180 matches in all"),
    ("route-unknown-filter-type", route({"filters": [{"type": "Teleport"}]}), "'Teleport' is not a filter type here"),
    ("route-filter-without-its-field", route({"filters": [{"type": "URLRewrite"}]}),
     "filter.urlRewrite must be specified for URLRewrite"),
    ("route-filter-with-another-types-field",
     route({"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {}, "urlRewrite": {}}]}),
     "filter.urlRewrite must be nil if the filter.type is not URLRewrite"),
    ("route-repeated-header-modifier",
     route({"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["a"]}}] * 2}),
     "RequestHeaderModifier filter cannot be repeated"),
    ("route-redirect-and-rewrite",
     route({"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
                        {"type": "URLRewrite", "urlRewrite": {"hostname": "a.example"}}]}),
     "either RequestRedirect or URLRewrite, but not both"),
    ("route-redirect-with-backends",
     route({"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}],
            "backendRefs": [{"name": "web", "port": 80}]}),
     "RequestRedirect filter must not be used together with backendRefs"),
    ("route-prefix-rewrite-without-one-prefix-match",
     route({"matches": [{"path": {"type": "Exact", "value": "/a"}}],
            "filters": [{"type": "URLRewrite",
                         "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}),
     "exactly one PathPrefix match must be specified"),
    ("route-rewrite-type-and-field-disagree",
     route({"filters": [{"type": "URLRewrite",
                         "urlRewrite": {"path": {"type": "ReplaceFullPath", "replacePrefixMatch": "/b"}}}]}),
     "type must be ReplacePrefixMatch when replacePrefixMatch is set"),
    ("route-redirect-status-code", route({"filters": [{"type": "RequestRedirect",
                                                       "requestRedirect": {"statusCode": 305}}]}),
     "305 is not one of 301, 302, 303, 307, 308"),
    ("route-service-backend-without-port", route({"backendRefs": [{"name": "web"}]}),
     "must have port for Service reference"),
    ("route-weight-out-of-range", route({"backendRefs": [{"name": "web", "port": 80, "weight": -1}]}),
     "-1 is not in 0..1000000"),
    ("route-backend-request-longer-than-request",
     route({"timeouts": {"request": "10s", "backendRequest": "1m"}}),
     "backendRequest timeout cannot be longer than request timeout"),
    ("route-timeout-not-a-duration", route({"timeouts": {"request": "10 seconds"}}), "is not a duration"),
    ("route-duplicate-rule-names", route({"name": "a"}, {"name": "a"}), "'a' must be unique within the route"),
    ("route-two-refs-to-one-parent-without-sections",
     route(parentRefs=[{"name": "edge", "sectionName": "http"}, {"name": "edge"}]),
     "sectionName must be specified when parentRefs includes 2 or more references to Gateway edge"),
    ("route-same-section-twice",
     route(parentRefs=[{"name": "edge", "sectionName": "http"}, {"name": "edge", "sectionName": "http"}]),
     "sectionName must be unique"),
    ("route-duplicate-hostname", route(hostnames=["a.example", "a.example"]), "'a.example' is listed twice"),
    ("route-too-many-hostnames", route(hostnames=[f"h{i}.example" for i in range(17)]),
     "more than the 16 allowed"),
    ("route-mirror-percent-and-fraction",
     route({"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80},
                                                                    "percent": 5, "fraction": {"numerator": 1}}}]}),
     "only one of percent or fraction may be specified"),
    ("route-header-match-twice",
     route({"matches": [{"headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]}]}),
     "is matched twice in one match"),
    ("route-unknown-method", route({"matches": [{"method": "FETCH"}]}), "'FETCH' is not one of GET"),
    ("route-spec-not-an-object", obj("HTTPRoute", ["rules"]), "spec: must be an object"),
    ("grpc-route-method-match-without-service-or-method",
     obj("GRPCRoute", {"rules": [{"matches": [{"method": {"type": "Exact"}}]}]}),
     "one or both of 'service' or 'method' must be specified"),
    ("grpc-route-http-only-filter",
     obj("GRPCRoute", {"rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}]}]}),
     "'URLRewrite' is not a filter type here"),
    ("grpc-route-bad-exact-service",
     obj("GRPCRoute", {"rules": [{"matches": [{"method": {"service": "a..b"}}]}]}), "is not valid"),
    ("class-without-controller", obj("GatewayClass", {}, namespace=None), "spec.controllerName: is required"),
    ("class-description-too-long", obj("GatewayClass", {"controllerName": "a.io/b", "description": "d" * 65},
                                       namespace=None), "longer than 64 characters"),
    ("grant-without-from", obj("ReferenceGrant", {"to": [{"group": "", "kind": "Secret"}]}),
     "spec.from: is required"),
    ("policy-both-ca-sources",
     obj("BackendTLSPolicy", {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                              "validation": {"hostname": "web.example", "wellKnownCACertificates": "System",
                                             "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}}),
     "must not contain both CACertificateRefs and WellKnownCACertificates"),
    ("policy-no-ca-source",
     obj("BackendTLSPolicy", {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                              "validation": {"hostname": "web.example"}}),
     "must specify either CACertificateRefs or WellKnownCACertificates"),
    ("policy-san-with-the-other-field",
     obj("BackendTLSPolicy", {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                              "validation": {"hostname": "web.example", "wellKnownCACertificates": "System",
                                             "subjectAltNames": [{"type": "Hostname", "uri": "spiffe://a"}]}}),
     "must not contain uri, if Type is set to Hostname"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "expected"), REFUSED, ids=[case for case, _, _ in REFUSED])
def test_what_the_crds_forbid_is_a_problem_naming_the_object_and_field(case: str, body: Any, expected: str) -> None:
    parsed = PARSERS[body["kind"]](body)
    found = problems_of(parsed)
    assert any(expected in message for message in found), found
    kind, namespace = body["kind"], body["metadata"].get("namespace")
    named = f"{kind} {namespace}/x" if namespace else f"{kind} x"
    assert all(message.startswith(f"{named}: ") for message in found), found
    assert {problem.kind for problem in parsed.problems} == {ProblemKind.INVALID}
    assert {problem.subject for problem in parsed.problems} == {named}


def test_a_valid_gateway_reads_whole_with_defaults() -> None:
    body = gateway(
        HTTP,
        {**HTTPS, "hostname": "*.example.com", "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {
            "matchLabels": {"team": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["a"]}]}},
            "kinds": [{"kind": "HTTPRoute"}]}},
        {"name": "tcp", "port": 9000, "protocol": "TCP"},
        addresses=[{"value": "10.0.0.1"}],
    )  # fmt: skip
    parsed = parse_gateway(body)
    assert parsed.problems == ()
    value = parsed.value
    assert (value.namespace, value.name, value.generation, value.gateway_class_name) == ("shop", "x", 3, "meshplane")
    http, https, tcp = value.listeners
    assert http.allowed_routes.namespaces == "Same"
    assert http.tls is None
    assert http.hostname is None
    assert https.tls is not None
    assert https.tls.mode == "Terminate"
    assert https.tls.certificate_refs == (SecretRef("cert"),)  # core group, kind Secret
    assert https.allowed_routes.selector is not None
    assert https.allowed_routes.selector.match_labels == (("team", "web"),)
    assert [(k.group, k.kind) for k in https.allowed_routes.kinds] == [(GATEWAY_GROUP, "HTTPRoute")]
    assert tcp.protocol == "TCP"
    assert [(a.type, a.value) for a in value.addresses] == [("IPAddress", "10.0.0.1")]


def test_a_valid_http_route_reads_whole_with_the_specs_defaults() -> None:
    body = route(
        {"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                     "headers": [{"name": "x-env", "value": "canary"}], "method": "GET"}],
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}}],
         "backendRefs": [{"name": "api-v1", "port": 8080, "weight": 90},
                         {"name": "api-v2", "namespace": "other", "port": 8080, "weight": 10, "filters": [
                             {"type": "ResponseHeaderModifier",
                              "responseHeaderModifier": {"add": [{"name": "x-v", "value": "2"}]}}]}],
         "timeouts": {"request": "10s", "backendRequest": "1500ms"}},
        {},
        hostnames=["shop.example.com"],
        parentRefs=[{"name": "edge", "sectionName": "https", "port": 443}, {"name": "edge", "sectionName": "http"}],
    )  # fmt: skip
    parsed = parse_http_route(body)
    assert parsed.problems == ()
    value = parsed.value
    assert value.hostnames == ("shop.example.com",)
    assert value.parent_refs == (
        ParentRef("edge", GATEWAY_GROUP, "Gateway", None, "https", 443),
        ParentRef("edge", GATEWAY_GROUP, "Gateway", None, "http", None),
    )
    api, default = value.rules
    assert api.name == "api"
    assert api.matches[0].path == PathMatch("PathPrefix", "/api")
    assert api.matches[0].method == "GET"
    assert [f.type for f in api.filters] == ["RequestHeaderModifier"]
    assert api.filters[0].request_headers is not None
    assert api.filters[0].request_headers.remove == ("x-b",)
    assert [(b.ref, b.ref.weight) for b in api.backends] == [
        (BackendRef("api-v1", "", "Service", None, 8080, 90), 90),
        (BackendRef("api-v2", "", "Service", "other", 8080, 10), 10),
    ]
    assert api.backends[1].filters[0].type == "ResponseHeaderModifier"
    assert api.timeouts is not None
    assert (api.timeouts.request_ms, api.timeouts.backend_request_ms) == (10_000, 1_500)
    # A rule without matches matches every path (the schema's default).
    assert default.matches[0].path == DEFAULT_PATH
    assert default.backends == ()


def test_an_http_route_without_rules_is_one_rule_matching_everything() -> None:
    parsed = parse_http_route(obj("HTTPRoute", {"parentRefs": [{"name": "edge"}]}))
    assert parsed.problems == ()
    (rule,) = parsed.value.rules
    assert rule.matches[0].path == DEFAULT_PATH


def test_every_filter_type_reads() -> None:
    filters = [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}, "percent": 10}},
        {"type": "URLRewrite", "urlRewrite": {"hostname": "b.example",
                                              "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
        {"type": "ExtensionRef", "extensionRef": {"group": "ext.example", "kind": "Thing", "name": "t"}},
        {"type": "CORS", "cors": {"allowOrigins": ["https://a.example"], "allowCredentials": True, "maxAge": 60}},
    ]  # fmt: skip
    parsed = parse_http_route(route({"matches": [{"path": {"value": "/v1"}}], "filters": filters}))
    assert parsed.problems == ()
    mirror, rewrite, extension, cors = parsed.value.rules[0].filters
    assert mirror.mirror is not None
    assert mirror.mirror.percent == 10
    assert mirror.mirror.backend.name == "m"
    assert rewrite.rewrite is not None
    assert rewrite.rewrite.path is not None
    assert rewrite.rewrite.path.value == "/v2"
    assert extension.extension is not None
    assert extension.extension.kind == "Thing"
    assert cors.cors is not None
    assert (cors.cors.allow_credentials, cors.cors.max_age) == (True, 60)
    redirect = parse_http_route(
        route({"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]})
    )
    assert redirect.problems == ()
    (only,) = redirect.value.rules[0].filters
    assert only == Filter("RequestRedirect", redirect=Redirect(scheme="https", status_code=301))


def test_grpc_route_reads() -> None:
    body = obj("GRPCRoute", {
        "parentRefs": [{"name": "edge"}], "hostnames": ["grpc.example"],
        "rules": [{"matches": [{"method": {"service": "grpc.health.v1.Health", "method": "Check"},
                                "headers": [{"name": "x-a", "value": "1"}]}],
                   "backendRefs": [{"name": "health", "port": 50051}]}, {}],
    })  # fmt: skip
    parsed = parse_grpc_route(body)
    assert parsed.problems == ()
    first, everything = parsed.value.rules
    method = first.matches[0].method
    assert method is not None
    assert (method.type, method.service, method.method) == (
        "Exact",
        "grpc.health.v1.Health",
        "Check",
    )
    assert first.backends[0].ref == BackendRef("health", port=50051)
    assert everything.matches == ()


def test_reference_grant_and_backend_tls_policy_read() -> None:
    grant = parse_reference_grant(obj("ReferenceGrant", {
        "from": [{"group": GATEWAY_GROUP, "kind": "HTTPRoute", "namespace": "web"}],
        "to": [{"group": "", "kind": "Service"}, {"group": "", "kind": "Secret", "name": "cert"}],
    }))  # fmt: skip
    assert grant.problems == ()
    assert [(t.kind, t.name) for t in grant.value.to] == [("Service", None), ("Secret", "cert")]
    policy = parse_backend_tls_policy(obj("BackendTLSPolicy", {
        "targetRefs": [{"group": "", "kind": "Service", "name": "web", "sectionName": "https"}],
        "validation": {"hostname": "web.example",
                       "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}],
                       "subjectAltNames": [{"type": "URI", "uri": "spiffe://cluster/web"}]},
    }))  # fmt: skip
    assert policy.problems == ()
    assert policy.value.hostname == "web.example"
    assert [(s.type, s.value) for s in policy.value.subject_alt_names] == [("URI", "spiffe://cluster/web")]


@pytest.mark.parametrize(
    ("text", "milliseconds"),
    [("0s", 0), ("10s", 10_000), ("1h30m", 5_400_000), ("500ms", 500), ("1m1s1ms", 61_001), ("1.5s", None), ("", None)],
)
def test_durations(text: str, milliseconds: int | None) -> None:
    assert duration_ms(text) == milliseconds


@pytest.mark.parametrize(
    ("name", "valid"),
    [("meshplane.io/gateway-controller", True), ("example.com/a/b", True), ("no-domain", False), ("A.io/x", False)],
)
def test_controller_names(name: str, valid: bool) -> None:
    assert (controller_name_problem(name) is None) is valid


def conformance_objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in [CONFORMANCE / "base" / "manifests.yaml", *sorted((CONFORMANCE / "tests").glob("*.yaml"))]:
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(document, dict) and document.get("kind") in PARSERS:
                name = document.get("metadata", {}).get("name")
                found.append((f"{path.name}#{index}:{document['kind']}/{name}", document))
    return found


# Conformance manifests carry placeholders the suite fills in before applying them.
PLACEHOLDERS = ("{GATEWAY_CONTROLLER_NAME}", "PLACEHOLDER_")


def test_every_conformance_object_parses_without_a_problem_but_its_placeholders() -> None:
    require(GATEWAY_API_MISSING)
    found = conformance_objects()
    kinds = {document["kind"] for _, document in found}
    assert kinds == set(PARSERS), kinds
    assert len(found) > 250
    unexpected = {}
    for where, document in found:
        parsed = PARSERS[document["kind"]](document)
        messages = [m for m in problems_of(parsed) if not any(p in m for p in PLACEHOLDERS)]
        if messages:
            unexpected[where] = messages
    assert unexpected == {}


def _mutations(value: Any, rng: random.Random) -> Any:
    """`value` with random parts replaced by values of the wrong type, out of range or huge."""
    junk = [None, 0, -1, 10**12, "", "x" * 5000, [], {}, True, "/", [1, 2], {"a": None}]
    if isinstance(value, dict):
        out = {k: _mutations(v, rng) for k, v in value.items()}
        if out and rng.random() < 0.3:
            out[rng.choice(list(out))] = rng.choice(junk)
        return out
    if isinstance(value, list):
        out_list = [_mutations(v, rng) for v in value]
        if rng.random() < 0.2:
            out_list.append(rng.choice(junk))
        return out_list
    return rng.choice(junk) if rng.random() < 0.15 else value


def test_no_input_makes_a_parser_raise() -> None:
    require(GATEWAY_API_MISSING)
    rng = random.Random(2026)
    for _, document in conformance_objects():
        parse = PARSERS[document["kind"]]
        for _ in range(5):
            mutated = _mutations(copy.deepcopy(document), rng)
            parsed = parse(mutated)  # must not raise
            assert isinstance(parsed.problems, tuple)
        broken_bodies: list[Any] = [None, [], "text", {"metadata": "x", "spec": 5}, {"spec": {"listeners": "all"}}]
        for broken in broken_bodies:
            parse(broken if isinstance(broken, dict) else {"spec": broken})


def test_problems_are_bounded_by_the_schema_bounds() -> None:
    huge = route(*({"matches": [{"path": {"value": f"/{i}"}} for i in range(1000)]} for _ in range(1000)))
    parsed = parse_http_route(huge)
    assert len(parsed.value.rules) == 16
    assert all(len(rule.matches) == 64 for rule in parsed.value.rules)
    assert len(parsed.problems) <= 20
