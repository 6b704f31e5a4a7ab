"""Gateway API route features: header modifiers, redirects, rewrites, method and query matches, mirrors,
named rules, fault injection, rate limits, CORS.

For each: what the model refuses and why, how a policy file writes it (and its `file:line`
errors), and the Envoy route it becomes, for sidecars and for proxyless gRPC clients. Traffic
through a real Envoy is in test_route_features_envoy.py.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from google.protobuf import json_format

from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import (
    CorsPolicy,
    FaultAbort,
    FaultDelay,
    FaultInjection,
    HeaderModifier,
    HeaderValue,
    Mesh,
    Mirror,
    PathMatch,
    PathMatchKind,
    ProblemKind,
    Protocol,
    ProxyGroup,
    ProxyRole,
    QueryMatch,
    QueryMatchKind,
    RateLimit,
    Redirect,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    WeightedBackend,
)
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl

SIDECAR = ProxyGroup()
GRPC = ProxyGroup(role=ProxyRole.GRPC)
WEB = ServiceRef("shop", "web")
TO_WEB = (WeightedBackend(WEB),)


def web() -> Service:
    # A gRPC port: both the sidecar's and proxyless gRPC's routes are built from the one table.
    return Service("web", "shop", (ServicePort("grpc", 80, Protocol.GRPC),))


def rule_problems(rule: RouteRule) -> list[str]:
    table = RouteTable("t", rules=(rule,), service=WEB)
    return [str(problem) for problem in Mesh.of([web()], [table]).problems()]


# --- the model ---


OK_RULES = [
    pytest.param(RouteRule(RouteMatch(method="GET"), TO_WEB), id="method"),
    pytest.param(
        RouteRule(
            RouteMatch(query=(QueryMatch("a", QueryMatchKind.EXACT, "1"), QueryMatch("b", QueryMatchKind.REGEX, "x+"))),
            TO_WEB,
        ),
        id="query",
    ),
    pytest.param(RouteRule(RouteMatch(), (), redirect=Redirect()), id="empty-redirect"),
    pytest.param(
        RouteRule(
            RouteMatch(PathMatch(PathMatchKind.PREFIX, "/old/")),
            (),
            redirect=Redirect("https", "example.com", 8443, prefix="/new/", status=308),
            response_headers=HeaderModifier(set=(HeaderValue("x-moved", "yes"),)),
        ),
        id="full-redirect",
    ),
    pytest.param(RouteRule(RouteMatch(), TO_WEB, path_rewrite="/v2", host_rewrite="api.internal"), id="rewrites"),
    pytest.param(
        RouteRule(
            RouteMatch(),
            TO_WEB,
            request_headers=HeaderModifier(
                set=(HeaderValue("X-Tenant", "shop"),), add=(HeaderValue("x-tenant", "b"),), remove=("x-debug",)
            ),
            response_headers=HeaderModifier(remove=("server",)),
        ),
        id="header-modifiers",
    ),
    pytest.param(RouteRule(RouteMatch(), TO_WEB, name="checkout-2"), id="named"),
    pytest.param(RouteRule(RouteMatch(), TO_WEB, mirrors=(Mirror(WEB), Mirror(WEB, 80, 0.5))), id="mirrors"),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, fault=FaultInjection(FaultDelay(0.001, 0), FaultAbort(200, 100))), id="fault"
    ),
    pytest.param(RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(1, 0.05, 1, "x-device-id")), id="rate-limit"),
    pytest.param(
        RouteRule(
            RouteMatch(),
            TO_WEB,
            cors=CorsPolicy(
                ("https://a.example.com", "http://*.example.com:8080", "http://10.0.0.1:3000"),
                ("GET", "*"),
                ("Content-Type",),
                ("*",),
                86400,
                allow_credentials=True,
            ),
        ),
        id="cors",
    ),
]


@pytest.mark.parametrize("rule", OK_RULES)
def test_the_model_takes_each_feature(rule: RouteRule) -> None:
    assert rule_problems(rule) == []


BAD_RULES = [
    pytest.param(RouteRule(RouteMatch(method="get"), TO_WEB), "method 'get' is not one of GET, HEAD", id="method"),
    pytest.param(
        RouteRule(RouteMatch(query=(QueryMatch("", QueryMatchKind.EXACT, "1"),)), TO_WEB),
        "query parameter name '' must be 1-256 characters",
        id="query-empty-name",
    ),
    pytest.param(
        RouteRule(RouteMatch(query=(QueryMatch("a"), QueryMatch("a"))), TO_WEB),
        "query parameter 'a' is matched twice",
        id="query-twice",
    ),
    pytest.param(
        RouteRule(RouteMatch(query=(QueryMatch("a", QueryMatchKind.REGEX, "(?=x)"),)), TO_WEB),
        "invalid regex '(?=x)'",
        id="query-regex-re2",
    ),
    pytest.param(
        RouteRule(RouteMatch(query=tuple(QueryMatch(f"q{index}") for index in range(17))), TO_WEB),
        "matches 17 query parameters, more than 16",
        id="query-too-many",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, redirect=Redirect()),
        "redirects, so it forwards nothing and cannot have backends",
        id="redirect-with-backends",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(), timeout=1.0, retry=RetryPolicy()),
        "redirects, so it forwards nothing and cannot have retries",
        id="redirect-with-retries",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(scheme="ftp")),
        "redirect scheme 'ftp' is not http or https",
        id="redirect-scheme",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(hostname="*.example.com")),
        "redirect hostname '*.example.com' is not a host name",
        id="redirect-wildcard-host",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(port=0)),
        "redirect port 0 is out of range 1-65535",
        id="redirect-port",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(status=300)),
        "redirect status 300 is not one of 301, 302, 303, 307, 308",
        id="redirect-status",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(path="/a", prefix="/b")),
        "replaces either the whole path or its prefix, not both",
        id="redirect-path-and-prefix",
    ),
    pytest.param(
        RouteRule(RouteMatch(PathMatch(PathMatchKind.EXACT, "/a")), (), redirect=Redirect(prefix="/b")),
        "a redirect prefix replaces a prefix path match; this rule matches none",
        id="redirect-prefix-without-prefix-match",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(path="no-slash")),
        "redirect path 'no-slash' must start with '/'",
        id="redirect-path",
    ),
    pytest.param(RouteRule(RouteMatch(), ()), "has no backends", id="neither-backends-nor-redirect"),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, path_rewrite="/a\nb"),
        "path rewrite '/a\\nb' must start with '/', hold no control characters",
        id="path-rewrite-control",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, path_rewrite="/" + "a" * 1024),
        "at most 1024 characters",
        id="path-rewrite-long",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, path_rewrite="/a", prefix_rewrite="/b"),
        "rewrites either the path prefix or the whole path, not both",
        id="two-path-rewrites",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, host_rewrite="api:8080"),
        "host rewrite 'api:8080' is not a host name",
        id="host-rewrite",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, request_headers=HeaderModifier(set=(HeaderValue("x y", "1"),))),
        "request headers: header name 'x y' must be a lowercase HTTP header name",
        id="modifier-name",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, request_headers=HeaderModifier(remove=(":path",))),
        "remove: header ':path' cannot be changed",
        id="modifier-pseudo-header",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, request_headers=HeaderModifier(set=(HeaderValue("Host", "a"),))),
        "set: header 'Host' cannot be changed",
        id="modifier-host",
    ),
    pytest.param(
        RouteRule(
            RouteMatch(),
            TO_WEB,
            response_headers=HeaderModifier(add=(HeaderValue("x-a", "1"), HeaderValue("X-A", "2"))),
        ),
        "response headers: add: header 'X-A' is listed twice",
        id="modifier-twice",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, response_headers=HeaderModifier(set=(HeaderValue("x-a", "1\r\nx-b: 2"),))),
        "value of header 'x-a' must be at most 4096 characters, without NUL, CR or LF",
        id="modifier-value-crlf",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, response_headers=HeaderModifier(set=(HeaderValue("x-a", "v" * 4097),))),
        "value of header 'x-a' must be at most 4096 characters",
        id="modifier-value-long",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, response_headers=HeaderModifier(remove=tuple(f"x-{i}" for i in range(33)))),
        "remove lists 33 headers, more than 32",
        id="modifier-too-many",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, mirrors=(Mirror(WEB, percent=100.5),)),
        "mirror percent 100.5 is out of range 0-100",
        id="mirror-percent",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, mirrors=(Mirror(WEB, percent=float("nan")),)),
        "mirror percent nan is out of range 0-100",
        id="mirror-percent-nan",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, mirrors=(Mirror(WEB),) * 9),
        "has 9 mirrors, more than 8",
        id="mirror-too-many",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(), mirrors=(Mirror(WEB),)),
        "redirects, so it forwards nothing and cannot have mirrors",
        id="mirror-with-redirect",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, mirrors=(Mirror(ServiceRef("shop", "nope")),)),
        "unknown service shop/nope",
        id="mirror-unknown-service",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, mirrors=(Mirror(WEB, "admin"),)),
        "service shop/web has no port 'admin'",
        id="mirror-unknown-port",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, fault=FaultInjection()),
        "a fault needs a delay, an abort or both",
        id="fault-empty",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, fault=FaultInjection(delay=FaultDelay(0.0001))),
        "fault delay 0.0001s is not within 1ms and 3600s",
        id="fault-delay-short",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, fault=FaultInjection(delay=FaultDelay(3601))),
        "fault delay 3601s is not within 1ms and 3600s",
        id="fault-delay-long",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, fault=FaultInjection(delay=FaultDelay(1, -1))),
        "fault delay percent -1 is out of range 0-100",
        id="fault-delay-percent",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, fault=FaultInjection(abort=FaultAbort(600))),
        "fault abort status 600 is out of range 200-599",
        id="fault-abort-status",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, fault=FaultInjection(abort=FaultAbort(503, 101))),
        "fault abort percent 101 is out of range 0-100",
        id="fault-abort-percent",
    ),
    pytest.param(
        RouteRule(RouteMatch(), (), redirect=Redirect(), fault=FaultInjection(abort=FaultAbort(503))),
        "redirects, so it forwards nothing and cannot have a fault",
        id="fault-with-redirect",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(0)),
        "rate limit requests 0 is out of range 1-1000000000",
        id="rate-limit-requests",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(1, burst=2**32)),
        "rate limit burst 4294967296 is out of range 1-1000000000",
        id="rate-limit-burst",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(1, 0.01)),
        "rate limit interval 0.01s is not within 50ms and 24h",
        id="rate-limit-interval",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(1, per_header="X-Device")),
        "rate limit per_header: header name 'X-Device' must be a lowercase HTTP header name",
        id="rate-limit-header",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(())),
        "cors: allow_origins must name at least one origin",
        id="cors-no-origins",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("https://Shop.example.com/",))),
        "cors: origin 'https://Shop.example.com/' must be '*' or scheme://host[:port]",
        id="cors-origin",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("https://*.example.*",))),
        "cors: origin 'https://*.example.*' must be '*' or scheme://host[:port]",
        id="cors-origin-wildcard",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("https://*." + "a" * 90 + ".com",))),
        "compiles to an RE2 program of size",
        id="cors-origin-regex-size",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("*",), ("FETCH",))),
        "cors: method 'FETCH' is not '*' nor one of GET",
        id="cors-method",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("*",), allow_headers=("x y",))),
        "cors: header name 'x y' must be a lowercase HTTP header name",
        id="cors-header",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("*",), max_age=86401)),
        "cors: max_age 86401 is out of range 0-86400 seconds",
        id="cors-max-age",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("*",), allow_credentials=True)),
        "cors: allow_credentials needs named origins, not '*'",
        id="cors-credentials-any-origin",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, cors=CorsPolicy(("*",) * 65)),
        "cors: allow_origins lists 65 entries, more than 64",
        id="cors-too-many",
    ),
    pytest.param(
        RouteRule(RouteMatch(), TO_WEB, name="Checkout"),
        "name 'Checkout' must be a lowercase RFC 1123 label",
        id="name-syntax",
    ),
]


@pytest.mark.parametrize(("rule", "reason"), BAD_RULES)
def test_the_model_refuses_bad_values_with_a_reason(rule: RouteRule, reason: str) -> None:
    found = rule_problems(rule)
    assert any(reason in problem for problem in found), found
    assert all(problem.startswith("route t") for problem in found)
    assert all(" rule 1" in problem for problem in found)


def test_rule_names_are_unique_within_a_route() -> None:
    rules = (RouteRule(RouteMatch(), TO_WEB, name="a"), RouteRule(RouteMatch(), TO_WEB, name="a"))
    found = RouteTable("t", rules=rules, service=WEB).problems()
    assert [(problem.kind, str(problem)) for problem in found] == [
        (ProblemKind.DUPLICATE, "route t: rule name 'a' is used by more than one rule")
    ]


# --- policy files ---


def parse(text: str) -> Any:
    return parse_policy(textwrap.dedent(text), "p.yaml")


def test_a_policy_file_writes_every_feature() -> None:
    parsed = parse(
        """\
        routes:
          - name: shop
            service: shop/web
            rules:
              - name: old
                match: {path: {prefix: /old/}}
                redirect: {scheme: https, hostname: example.com, port: 8443, prefix: /new/, status: 301}
                response_headers: {set: {x-moved: "yes"}}
              - match:
                  method: GET
                  query: [{name: lang, exact: en}, {name: page, regex: "[0-9]+"}]
                to: [shop/web]
                rewrite: {path: /v2, hostname: api.internal}
                request_headers:
                  set: {X-Tenant: shop}
                  add: {x-trace: "50%"}
                  remove: [x-debug]
                response_headers: {remove: [server]}
                mirror: [shop/web, {service: shop/web, port: grpc, percent: 0.5}]
                fault: {delay: {duration: 250ms, percent: 10}, abort: {status: 503}}
                rate_limit: {requests: 10, interval: 1m, burst: 20, per_header: x-device-id}
                cors:
                  allow_origins: ["https://*.example.com"]
                  allow_methods: [PUT]
                  allow_headers: [content-type]
                  expose_headers: [x-id]
                  max_age: 600
                  allow_credentials: true
        """
    )
    assert parsed.errors == ()
    (table,) = parsed.routes
    old, search = table.rules
    assert old == RouteRule(
        RouteMatch(PathMatch(PathMatchKind.PREFIX, "/old/")),
        (),
        name="old",
        redirect=Redirect("https", "example.com", 8443, prefix="/new/", status=301),
        response_headers=HeaderModifier(set=(HeaderValue("x-moved", "yes"),)),
    )
    assert search == RouteRule(
        RouteMatch(
            method="GET",
            query=(QueryMatch("lang", QueryMatchKind.EXACT, "en"), QueryMatch("page", QueryMatchKind.REGEX, "[0-9]+")),
        ),
        (WeightedBackend(WEB),),
        path_rewrite="/v2",
        host_rewrite="api.internal",
        request_headers=HeaderModifier(
            set=(HeaderValue("X-Tenant", "shop"),), add=(HeaderValue("x-trace", "50%"),), remove=("x-debug",)
        ),
        response_headers=HeaderModifier(remove=("server",)),
        mirrors=(Mirror(WEB), Mirror(WEB, "grpc", 0.5)),
        fault=FaultInjection(FaultDelay(0.25, 10), FaultAbort(503)),
        rate_limit=RateLimit(10, 60.0, 20, "x-device-id"),
        cors=CorsPolicy(("https://*.example.com",), ("PUT",), ("content-type",), ("x-id",), 600, True),
    )


def test_a_redirect_defaults_to_302() -> None:
    parsed = parse("routes:\n  - name: r\n    hosts: [a.example.com]\n    rules:\n      - redirect: {}\n")
    assert parsed.errors == ()
    assert parsed.routes[0].rules[0].redirect == Redirect(status=302)


RULE = "routes:\n  - name: r\n    hosts: [a.example.com]\n    rules:\n"

FILE_ERRORS = [
    pytest.param(
        RULE + "      - to: [web]\n        redirect: {status: 302}\n",
        "p.yaml:5: route.rules: a rule with a `redirect` answers the request itself and has no backends",
        id="redirect-and-backends",
    ),
    pytest.param(
        RULE + "      - redirect:\n          status: 300\n",
        "p.yaml:6: route.rules.redirect.status: 300 is not one of 301, 302, 303, 307, 308",
        id="redirect-status",
    ),
    pytest.param(
        RULE + "      - redirect:\n          scheme: ftp\n",
        "p.yaml:6: route.rules.redirect.scheme: 'ftp' is not one of http, https",
        id="redirect-scheme",
    ),
    pytest.param(
        RULE + "      - redirect: {path: /a, prefix: /b}\n",
        "p.yaml:5: route.rules.redirect: use either `path` or `prefix`, not both",
        id="redirect-path-and-prefix",
    ),
    pytest.param(
        RULE + "      - redirect: {code: 301}\n",
        "p.yaml:5: unknown key 'code' in route.rules.redirect",
        id="redirect-unknown-key",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        rewrite: {prefix: /a, path: /b}\n",
        "p.yaml:6: route.rules.rewrite: use either `prefix` or `path`, not both",
        id="rewrite-prefix-and-path",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        match:\n          method: get\n",
        "p.yaml:7: route.rules.match.method: 'get' is not an HTTP method (did you mean 'GET'?)",
        id="method",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        match:\n          query:\n            - {name: a, regex: (a}\n",
        "p.yaml:8: route.rules.match.query.regex: invalid regex '(a'",
        id="query-regex",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        match:\n          query:\n            - {name: a, exact: x, regex: y}\n",
        "p.yaml:8: route.rules.match.query needs exactly one of exact, regex",
        id="query-two-kinds",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        match:\n          query:\n            - {exact: x}\n",
        "p.yaml:8: route.rules.match.query needs `name`",
        id="query-no-name",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        request_headers:\n          set:\n            x y: 1\n",
        "p.yaml:8: route.rules.request_headers.set: header name 'x y' must be a lowercase HTTP header name",
        id="modifier-name",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        request_headers:\n          remove:\n            - Host\n",
        "p.yaml:8: route.rules.request_headers.remove: header 'Host' cannot be changed",
        id="modifier-host",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        response_headers:\n          replace: {a: b}\n",
        "p.yaml:7: unknown key 'replace' in route.rules.response_headers",
        id="modifier-unknown-key",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        response_headers:\n          set: [a, b]\n",
        "p.yaml:7: route.rules.response_headers.set must be a mapping, not a list",
        id="modifier-set-shape",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        mirror:\n          - {service: web, percent: 101}\n",
        "p.yaml:7: route.rules.mirror.percent: '101' is not a number from 0 to 100",
        id="mirror-percent",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        mirror:\n          - {service: web, weight: 1}\n",
        "p.yaml:7: unknown key 'weight' in route.rules.mirror",
        id="mirror-weight",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        mirror:\n          - {port: 80}\n",
        "p.yaml:7: route.rules.mirror needs `service`",
        id="mirror-no-service",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        fault: {}\n",
        "p.yaml:6: route.rules.fault needs `delay`, `abort` or both",
        id="fault-empty",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        fault:\n          delay: {percent: 5}\n",
        "p.yaml:7: route.rules.fault.delay needs `duration`",
        id="fault-delay-no-duration",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        fault:\n          delay: {duration: soon}\n",
        "p.yaml:7: route.rules.fault.delay.duration: 'soon' is not a duration",
        id="fault-delay-duration",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        fault:\n          abort:\n            status: 700\n",
        "p.yaml:8: route.rules.fault.abort.status: 700 is not an HTTP status from 200 to 599",
        id="fault-abort-status",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        fault:\n          abort: {status: 503, percent: half}\n",
        "p.yaml:7: route.rules.fault.abort.percent: 'half' is not a number from 0 to 100",
        id="fault-abort-percent",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        fault:\n          abort: {code: 503}\n",
        "p.yaml:7: unknown key 'code' in route.rules.fault.abort",
        id="fault-abort-unknown-key",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        rate_limit: {interval: 1s}\n",
        "p.yaml:6: route.rules.rate_limit needs `requests`",
        id="rate-limit-no-requests",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        rate_limit:\n          requests: many\n",
        "p.yaml:7: route.rules.rate_limit.requests must be a whole number",
        id="rate-limit-requests",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        rate_limit:\n          requests: 5\n          per_header: X Device\n",
        "p.yaml:8: route.rules.rate_limit.per_header: header name 'X Device' must be a lowercase HTTP header name",
        id="rate-limit-header",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        rate_limit: {requests: 5, per: x}\n",
        "p.yaml:6: unknown key 'per' in route.rules.rate_limit",
        id="rate-limit-unknown-key",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        cors: {allow_methods: [GET]}\n",
        "p.yaml:6: route.rules.cors needs `allow_origins`",
        id="cors-no-origins",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        cors:\n          allow_origins: https://a.example.com\n",
        "p.yaml:7: route.rules.cors.allow_origins must be a list",
        id="cors-origins-shape",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        cors:\n          allow_origins: ['*']\n          max_age: 10m\n",
        "p.yaml:8: route.rules.cors.max_age must be a whole number",
        id="cors-max-age",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        cors: {allow_origins: ['*'], allow_origin: x}\n",
        "p.yaml:6: unknown key 'allow_origin' in route.rules.cors (did you mean 'allow_origins'?)",
        id="cors-unknown-key",
    ),
    pytest.param(
        RULE + "      - to: [web]\n        name: [a]\n",
        "p.yaml:6: route.rules.name must be a string, not a list",
        id="name-shape",
    ),
]


@pytest.mark.parametrize(("text", "error"), FILE_ERRORS)
def test_policy_file_errors_name_file_line_and_reason(text: str, error: str) -> None:
    errors = parse_policy(text, "p.yaml").errors
    assert any(found.startswith(error) for found in errors), errors


def test_model_problems_of_a_policy_file_name_the_route_and_its_line() -> None:
    parsed = parse(
        RULE + "      - redirect: {hostname: 'bad host'}\n      - {name: x, to: [web]}\n      - {name: x, to: [web]}\n"
    )
    assert parsed.errors == ()
    found = [str(problem) for problem in parsed.routes[0].problems()]
    assert found == [
        "route r (p.yaml:2) rule 1: redirect hostname 'bad host' is not a host name (no wildcard, no port)",
        "route r (p.yaml:2): rule name 'x' is used by more than one rule",
    ]


# --- translation ---


def routes_of(rule: RouteRule, group: ProxyGroup = SIDECAR) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The routes of a table holding `rule` then a catch-all, as JSON, and the translation's warnings."""
    rules = (rule, RouteRule(RouteMatch(), TO_WEB))
    mesh = Mesh.of([web()], [RouteTable("t", rules=rules, service=WEB)])
    assert mesh.problems() == []
    translation = translate(mesh, group)
    configs = translation.resources[TypeUrl.ROUTE]
    (config,) = configs  # the sidecar's one, or gRPC's one for the one gRPC port
    vhosts: list[Any] = list(config.virtual_hosts)  # type: ignore[attr-defined]
    (vhost,) = [vhost for vhost in vhosts if vhost.name == "web.shop:80"]
    return [json_format.MessageToDict(route) for route in vhost.routes], translation.warnings


def test_header_modifiers_become_header_options_literal_and_lowercase() -> None:
    rule = RouteRule(
        RouteMatch(),
        TO_WEB,
        request_headers=HeaderModifier(
            set=(HeaderValue("X-Tenant", "50%"),), add=(HeaderValue("x-a", "1"),), remove=("X-Debug",)
        ),
        response_headers=HeaderModifier(set=(HeaderValue("x-b", "2"),), remove=("server",)),
    )
    (route, _), warnings = routes_of(rule)
    assert warnings == ()
    assert route["requestHeadersToAdd"] == [
        {"header": {"key": "x-tenant", "value": "50%%"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-a", "value": "1"}},  # APPEND_IF_EXISTS_OR_ADD, the default
    ]
    assert route["requestHeadersToRemove"] == ["x-debug"]
    assert route["responseHeadersToAdd"] == [
        {"header": {"key": "x-b", "value": "2"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}
    ]
    assert route["responseHeadersToRemove"] == ["server"]


@pytest.mark.parametrize(
    ("redirect", "expected"),
    [
        pytest.param(Redirect(), {"responseCode": "FOUND"}, id="default-302"),
        pytest.param(
            Redirect("https", "example.com", 8443, path="/new", status=301),
            {"schemeRedirect": "https", "hostRedirect": "example.com", "portRedirect": 8443, "pathRedirect": "/new"},
            id="all-301",
        ),
        pytest.param(Redirect(prefix="/new/", status=303), {"prefixRewrite": "/new/", "responseCode": "SEE_OTHER"}),
        pytest.param(Redirect(status=307), {"responseCode": "TEMPORARY_REDIRECT"}, id="307"),
        pytest.param(Redirect(status=308), {"responseCode": "PERMANENT_REDIRECT"}, id="308"),
    ],
)
def test_redirect(redirect: Redirect, expected: dict[str, Any]) -> None:
    rule = RouteRule(RouteMatch(PathMatch(PathMatchKind.PREFIX, "/old/")), (), redirect=redirect, name="moved")
    (route, _), _ = routes_of(rule)
    assert route == {"match": {"prefix": "/old/"}, "name": "moved", "redirect": expected}


def test_rewrites() -> None:
    (route, _), _ = routes_of(RouteRule(RouteMatch(), TO_WEB, path_rewrite="/v2\\x", host_rewrite="api.internal"))
    assert route["route"]["regexRewrite"] == {"pattern": {"regex": "^/.*$"}, "substitution": "/v2\\\\x"}
    assert route["route"]["hostRewriteLiteral"] == "api.internal"


def test_method_and_query_matches() -> None:
    query = (QueryMatch("lang", QueryMatchKind.EXACT, "en"), QueryMatch("page", QueryMatchKind.REGEX, "[0-9]+"))
    (route, _), _ = routes_of(RouteRule(RouteMatch(method="PUT", query=query), TO_WEB))
    assert route["match"] == {
        "prefix": "/",
        "headers": [{"name": ":method", "stringMatch": {"exact": "PUT"}}],
        "queryParameters": [
            {"name": "lang", "stringMatch": {"exact": "en"}},
            {"name": "page", "stringMatch": {"safeRegex": {"regex": "[0-9]+"}}},
        ],
    }


def test_mirrors_copy_all_or_a_share_per_million() -> None:
    (route, _), _ = routes_of(RouteRule(RouteMatch(), TO_WEB, mirrors=(Mirror(WEB), Mirror(WEB, percent=0.5))))
    assert route["route"]["requestMirrorPolicies"] == [
        {"cluster": "web.shop:80"},
        {"cluster": "web.shop:80", "runtimeFraction": {"defaultValue": {"numerator": 5000, "denominator": "MILLION"}}},
    ]


def test_a_fault_configures_the_fault_filter_on_its_route_and_in_every_http_listener() -> None:
    fault = FaultInjection(FaultDelay(0.25, 10), FaultAbort(503, 0.5))
    expected = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"fixedDelay": "0.250s", "percentage": {"numerator": 100000, "denominator": "MILLION"}},
        "abort": {"httpStatus": 503, "percentage": {"numerator": 5000, "denominator": "MILLION"}},
    }
    for group in (SIDECAR, GRPC):  # gRPC injects faults too
        (route, plain), warnings = routes_of(RouteRule(RouteMatch(), TO_WEB, fault=fault), group)
        assert warnings == ()
        assert route["typedPerFilterConfig"] == {"envoy.filters.http.fault": expected}
        assert "typedPerFilterConfig" not in plain
        table = RouteTable("t", (RouteRule(RouteMatch(), TO_WEB, fault=fault),), service=WEB)
        filters = http_filter_names(Mesh.of([web()], [table]), group)
        assert filters == [["envoy.filters.http.fault", "envoy.filters.http.router"]]


def test_a_rate_limit_is_a_token_bucket_per_route_and_per_client() -> None:
    bucket = {"maxTokens": 20, "tokensPerFill": 10, "fillInterval": "60s"}
    everything = {"defaultValue": {"numerator": 1000000, "denominator": "MILLION"}}
    (route, plain), warnings = routes_of(RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(10, 60, 20)))
    assert warnings == ()
    assert "typedPerFilterConfig" not in plain
    overall = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "statPrefix": "local_rate_limit",
        "tokenBucket": bucket,
        "filterEnabled": everything,
        "filterEnforced": everything,
    }
    assert route["typedPerFilterConfig"] == {"envoy.filters.http.local_ratelimit": overall}

    (route, _), _ = routes_of(RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(10, 60, 20, "x-device-id")))
    assert route["typedPerFilterConfig"]["envoy.filters.http.local_ratelimit"] == {
        **overall,
        "rateLimits": [{"actions": [{"requestHeaders": {"headerName": "x-device-id", "descriptorKey": "client"}}]}],
        "descriptors": [{"entries": [{"key": "client"}], "tokenBucket": bucket}],
        "alwaysConsumeDefaultTokenBucket": False,
        "maxDynamicDescriptors": 10000,
    }


def test_cors_policy() -> None:
    cors = CorsPolicy(
        ("https://a.example.com", "https://*.example.com", "*"), ("GET", "PUT"), ("content-type", "x-a"), ("x-b",), 600
    )
    (route, plain), warnings = routes_of(RouteRule(RouteMatch(), TO_WEB, cors=cors))
    assert warnings == ()
    assert "typedPerFilterConfig" not in plain
    assert route["typedPerFilterConfig"]["envoy.filters.http.cors"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allowOriginStringMatch": [
            {"exact": "https://a.example.com"},
            {"safeRegex": {"regex": "https://[a-z0-9.-]+\\.example\\.com"}},
            {"safeRegex": {"regex": ".*"}},
        ],
        "allowMethods": "GET, PUT",
        "allowHeaders": "content-type, x-a",
        "exposeHeaders": "x-b",
        "maxAge": "600",
        "allowCredentials": False,
    }
    mesh = Mesh.of([web()], [RouteTable("t", (RouteRule(RouteMatch(), TO_WEB, cors=cors),), service=WEB)])
    assert http_filter_names(mesh, SIDECAR) == [["envoy.filters.http.cors", "envoy.filters.http.router"]]
    assert http_filter_names(mesh, GRPC) == [["envoy.filters.http.router"]]
    (route, _), warnings = routes_of(RouteRule(RouteMatch(), TO_WEB, cors=cors), GRPC)
    assert "typedPerFilterConfig" not in route
    assert len(warnings) == 1


def test_grpc_gets_no_rate_limit_filter_nor_limits() -> None:
    rule = RouteRule(RouteMatch(), TO_WEB, rate_limit=RateLimit(10))
    (route, _), warnings = routes_of(rule, GRPC)
    assert "typedPerFilterConfig" not in route
    assert warnings == (
        "route t rule 1: proxyless gRPC applies no rewrites, header modifiers, mirrors, rate limits "
        "or CORS; they are left out",
    )
    mesh = Mesh.of([web()], [RouteTable("t", (rule,), service=WEB)])
    assert http_filter_names(mesh, GRPC) == [["envoy.filters.http.router"]]
    assert http_filter_names(mesh, SIDECAR) == [["envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]]


def http_filter_names(mesh: Mesh, group: ProxyGroup) -> list[list[str]]:
    """The distinct lists of HTTP filter names of the HTTP connection managers `group` gets from `mesh`."""
    found: set[tuple[str, ...]] = set()
    for listener in translate(mesh, group).resources[TypeUrl.LISTENER]:
        data = json_format.MessageToDict(listener)
        if "apiListener" in data:
            managers = [data["apiListener"]["apiListener"]]
        else:
            managers = [each["typedConfig"] for chain in data["filterChains"] for each in chain["filters"]]
        found |= {tuple(each["name"] for each in hcm["httpFilters"]) for hcm in managers if "httpFilters" in hcm}
    return [list(names) for names in sorted(found)]


def test_listeners_carry_no_fault_filter_while_no_rule_injects_faults() -> None:
    mesh = Mesh.of([web()], [RouteTable("t", (RouteRule(RouteMatch(), TO_WEB),), service=WEB)])
    for group in (SIDECAR, GRPC):
        assert http_filter_names(mesh, group) == [["envoy.filters.http.router"]]


def test_a_named_rule_names_its_route_and_an_unnamed_one_has_no_name() -> None:
    (named, unnamed), _ = routes_of(RouteRule(RouteMatch(), TO_WEB, name="checkout"))
    assert named["name"] == "checkout"
    assert "name" not in unnamed


# --- proxyless gRPC ---


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        pytest.param(
            RouteRule(RouteMatch(), (), redirect=Redirect()), "a redirect is no answer to a gRPC call", id="redirect"
        ),
        pytest.param(
            RouteRule(RouteMatch(query=(QueryMatch("a"),)), TO_WEB),
            "gRPC calls have no query parameters to match",
            id="query",
        ),
        pytest.param(RouteRule(RouteMatch(method="GET"), TO_WEB), "gRPC calls are POSTs, never GET", id="method"),
    ],
)
def test_grpc_leaves_out_rules_it_cannot_take_with_a_warning(rule: RouteRule, reason: str) -> None:
    routes, warnings = routes_of(rule, GRPC)
    assert warnings == (f"route t rule 1: {reason}; rule left out for proxyless gRPC",)
    assert routes == [{"match": {"prefix": "/"}, "route": {"cluster": "web.shop:80"}}]
    # Sidecars take all three.
    sidecar_routes, sidecar_warnings = routes_of(rule)
    assert len(sidecar_routes) == 2
    assert sidecar_warnings == ()


def test_grpc_takes_a_post_match_as_any_call() -> None:
    (route, _), warnings = routes_of(RouteRule(RouteMatch(method="POST"), TO_WEB, name="calls"), GRPC)
    assert warnings == ()
    assert route == {"match": {"prefix": "/"}, "name": "calls", "route": {"cluster": "web.shop:80"}}


def test_grpc_gets_no_rewrites_header_modifiers_or_mirrors_and_a_warning() -> None:
    rule = RouteRule(
        RouteMatch(),
        TO_WEB,
        path_rewrite="/x",
        host_rewrite="a.example.com",
        request_headers=HeaderModifier(remove=("x-a",)),
        response_headers=HeaderModifier(remove=("x-b",)),
        mirrors=(Mirror(WEB),),
    )
    (route, _), warnings = routes_of(rule, GRPC)
    assert route == {"match": {"prefix": "/"}, "route": {"cluster": "web.shop:80"}}
    assert warnings == (
        "route t rule 1: proxyless gRPC applies no rewrites, header modifiers, mirrors, rate limits "
        "or CORS; they are left out",
    )
