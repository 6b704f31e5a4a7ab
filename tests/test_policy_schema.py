"""The policy-file format, parsed from text: every field, every error with its line, durations, and the
model problems (duplicates, references) that a parsed policy's origins make point at files and lines."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import TypeVar

import pytest

from meshplane.discovery.policy_schema import (
    KEYS,
    MAX_NODES,
    CertificateFiles,
    FileRef,
    ParsedPolicy,
    TrustBundleFile,
    parse_duration,
    parse_policy,
)
from meshplane.model import (
    CircuitBreakers,
    Endpoint,
    EndpointHealth,
    HashKey,
    HeaderMatch,
    HeaderMatchKind,
    HealthCheck,
    HealthCheckProtocol,
    LoadBalancing,
    Locality,
    Mesh,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
    Protocol,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    TlsCertificate,
    TrafficPolicy,
    TrustBundle,
    UpstreamTls,
    WeightedBackend,
)

_T = TypeVar("_T", Service, RouteTable)

HTTP = ServicePort("http", 8080, Protocol.HTTP1)
API = ServiceRef("default", "api")


def parse(text: str, source: str = "p.yaml") -> ParsedPolicy:
    return parse_policy(textwrap.dedent(text), source)


def without_origin(item: _T) -> _T:
    return dataclasses.replace(item, origin="")


# --- services: every field ---

SERVICE_CASES = [
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
        """,
        Service("web", "default", (HTTP,)),
        id="shorthand-port-defaults-to-http1-named-http",
    ),
    pytest.param(
        """\
        services:
          - {name: greeter, port: 50051, protocol: grpc}
        """,
        Service("greeter", "default", (ServicePort("grpc", 50051, Protocol.GRPC),)),
        id="shorthand-grpc-named-grpc",
    ),
    pytest.param(
        """\
        services:
          - {name: db, port: 5432, protocol: tcp}
        """,
        Service("db", "default", (ServicePort("tcp", 5432, Protocol.TCP),)),
        id="shorthand-tcp-named-tcp",
    ),
    pytest.param(
        """\
        services:
          - {name: web, port: 8080, protocol: http2}
        """,
        Service("web", "default", (ServicePort("http", 8080, Protocol.HTTP2),)),
        id="shorthand-http2-named-http",
    ),
    pytest.param(
        """\
        services:
          - name: web
            namespace: shop
            hosts: [www.example.com, "*.example.org"]
            port: 8080
        """,
        Service("web", "shop", (HTTP,), hosts=("www.example.com", "*.example.org")),
        id="namespace-and-hosts",
    ),
    pytest.param(
        """\
        services:
          - name: cart
            ports:
              - {name: web, port: 8080}
              - {port: 9090, protocol: grpc}
              - {name: admin, port: 9901, protocol: tcp}
        """,
        Service(
            "cart",
            "default",
            (
                ServicePort("web", 8080, Protocol.HTTP1),
                ServicePort("grpc", 9090, Protocol.GRPC),
                ServicePort("admin", 9901, Protocol.TCP),
            ),
        ),
        id="ports-list-name-defaults-by-protocol",
    ),
    pytest.param(
        """\
        services:
          - name: cart
            ports: [{name: http, port: 8080}, {name: admin, port: 9901, protocol: tcp}]
            endpoints:
              - address: 10.0.0.1
        """,
        Service(
            "cart",
            "default",
            (HTTP, ServicePort("admin", 9901, Protocol.TCP)),
            endpoints=(Endpoint("10.0.0.1", 8080, "http"), Endpoint("10.0.0.1", 9901, "admin")),
        ),
        id="endpoint-without-port-serves-every-port-at-its-number",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            endpoints:
              - {address: 127.0.0.1, port: 9101}
              - {address: "::1", port: 9102}
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            endpoints=(Endpoint("127.0.0.1", 9101, "http"), Endpoint("::1", 9102, "http")),
        ),
        id="endpoint-port-for-single-port-service",
    ),
    pytest.param(
        """\
        services:
          - name: cart
            ports: [{name: http, port: 8080}, {name: admin, port: 9901, protocol: tcp}]
            endpoints:
              - address: 10.0.0.1
                ports: {admin: 19901}
        """,
        Service(
            "cart",
            "default",
            (HTTP, ServicePort("admin", 9901, Protocol.TCP)),
            endpoints=(Endpoint("10.0.0.1", 19901, "admin"),),
        ),
        id="endpoint-ports-by-name",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            endpoints:
              - address: 10.0.0.1
                region: eu-west-1
                zone: eu-west-1a
                sub_zone: rack-7
                health: terminating
                weight: 3
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            endpoints=(
                Endpoint(
                    "10.0.0.1",
                    8080,
                    "http",
                    Locality("eu-west-1", "eu-west-1a", "rack-7"),
                    EndpointHealth.TERMINATING,
                    3,
                ),
            ),
        ),
        id="endpoint-locality-health-weight",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy:
              connect_timeout: 250ms
              load_balancing: least_request
              locality_failover: false
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(
                connect_timeout=0.25, load_balancing=LoadBalancing.LEAST_REQUEST, locality_failover=False
            ),
        ),
        id="policy-scalars",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy:
              load_balancing: ring_hash
              hash_key: {header: x-user}
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(load_balancing=LoadBalancing.RING_HASH, hash_key=HashKey(header="x-user")),
        ),
        id="policy-hash-key-header",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy:
              load_balancing: maglev
              hash_key: {cookie: session}
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(load_balancing=LoadBalancing.MAGLEV, hash_key=HashKey(cookie="session")),
        ),
        id="policy-hash-key-cookie",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy:
              load_balancing: ring_hash
              hash_key: {source_ip: true}
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(load_balancing=LoadBalancing.RING_HASH, hash_key=HashKey(source_ip=True)),
        ),
        id="policy-hash-key-source-ip",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy:
              circuit_breakers:
                max_connections: 100
                max_pending_requests: 10
                max_requests: 1000
                max_retries: 3
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(circuit_breakers=CircuitBreakers(100, 10, 1000, 3)),
        ),
        id="policy-circuit-breakers",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy:
              outlier_detection:
                consecutive_5xx: 3
                consecutive_gateway_failure: 2
                interval: 5s
                base_ejection_time: 1m
                max_ejection_percent: 50
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(outlier_detection=OutlierDetection(3, 2, 5.0, 60.0, 50)),
        ),
        id="policy-outlier-detection",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy: {outlier_detection: {}, health_check: {}}
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(outlier_detection=OutlierDetection(), health_check=HealthCheck()),
        ),
        id="policy-empty-mappings-mean-defaults",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8080
            policy:
              health_check:
                protocol: grpc
                path: /ready
                interval: 2s
                timeout: 500ms
                unhealthy_threshold: 4
                healthy_threshold: 1
        """,
        Service(
            "web",
            "default",
            (HTTP,),
            policy=TrafficPolicy(health_check=HealthCheck(HealthCheckProtocol.GRPC, "/ready", 2.0, 0.5, 4, 1)),
        ),
        id="policy-health-check",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8443
            tls: {trust: internal-ca, sni: web.internal, client_certificate: mesh-client}
        """,
        Service(
            "web",
            "default",
            (ServicePort("http", 8443),),
            tls=UpstreamTls("internal-ca", "web.internal", "mesh-client"),
        ),
        id="tls",
    ),
    pytest.param(
        """\
        services:
          - name: web
            port: 8443
            tls: {trust: internal-ca}
        """,
        Service("web", "default", (ServicePort("http", 8443),), tls=UpstreamTls("internal-ca")),
        id="tls-trust-only",
    ),
]


@pytest.mark.parametrize(("text", "expected"), SERVICE_CASES)
def test_service_fields(text: str, expected: Service) -> None:
    parsed = parse(text)
    assert parsed.errors == ()
    assert [without_origin(service) for service in parsed.services] == [expected]


# --- routes: every field ---


def rule(*backends: WeightedBackend, **fields: object) -> RouteRule:
    return RouteRule(backends=backends, **fields)  # type: ignore[arg-type]


ROUTE_CASES = [
    pytest.param(
        """\
        routes:
          - name: api
            service: api
            rules:
              - to: [api]
        """,
        RouteTable("api", (rule(WeightedBackend(API), match=RouteMatch()),), service=API),
        id="minimal-name-means-namespace-default",
    ),
    pytest.param(
        """\
        routes:
          - name: cart
            service: shop/cart
            hosts: [cart.example.com]
            rules:
              - backends: [{service: shop/cart, port: http, weight: 7}]
        """,
        RouteTable(
            "cart",
            (rule(WeightedBackend(ServiceRef("shop", "cart"), "http", 7), match=RouteMatch()),),
            service=ServiceRef("shop", "cart"),
            hosts=("cart.example.com",),
        ),
        id="namespaced-service-hosts-backends-port-name",
    ),
    pytest.param(
        """\
        routes:
          - name: edge
            hosts: [api.example.com]
            rules:
              - to: [{service: api, port: 8080}]
        """,
        RouteTable("edge", (rule(WeightedBackend(API, 8080), match=RouteMatch()),), hosts=("api.example.com",)),
        id="hosts-only-port-number",
    ),
    pytest.param(
        """\
        routes:
          - name: api
            service: api
            rules:
              - match: {path: {prefix: /v1/}}
                to: [api]
              - match: {path: {exact: /healthz}}
                to: [api]
              - match: {path: {regex: "/users/[0-9]+"}}
                to: [api]
        """,
        RouteTable(
            "api",
            (
                rule(WeightedBackend(API), match=RouteMatch(PathMatch(PathMatchKind.PREFIX, "/v1/"))),
                rule(WeightedBackend(API), match=RouteMatch(PathMatch(PathMatchKind.EXACT, "/healthz"))),
                rule(WeightedBackend(API), match=RouteMatch(PathMatch(PathMatchKind.REGEX, "/users/[0-9]+"))),
            ),
            service=API,
        ),
        id="path-prefix-exact-regex",
    ),
    pytest.param(
        """\
        routes:
          - name: api
            service: api
            rules:
              - match:
                  headers:
                    - {name: x-canary, exact: always}
                    - {name: x-version, prefix: "010"}
                    - {name: user-agent, regex: ".*curl.*"}
                    - {name: x-debug, present: true, invert: yes}
                to: [api]
        """,
        RouteTable(
            "api",
            (
                rule(
                    WeightedBackend(API),
                    match=RouteMatch(
                        headers=(
                            HeaderMatch("x-canary", HeaderMatchKind.EXACT, "always"),
                            HeaderMatch("x-version", HeaderMatchKind.PREFIX, "010"),
                            HeaderMatch("user-agent", HeaderMatchKind.REGEX, ".*curl.*"),
                            HeaderMatch("x-debug", HeaderMatchKind.PRESENT, "", invert=True),
                        )
                    ),
                ),
            ),
            service=API,
        ),
        id="headers-every-kind-and-invert",
    ),
    pytest.param(
        """\
        routes:
          - name: api
            service: api
            rules:
              - to:
                  - {service: api, weight: 90}
                  - {service: api-canary, weight: 10}
                timeout: 3s
                retries: {on: [5xx, reset, connect-failure], attempts: 2, per_try_timeout: 500ms}
                rewrite: {prefix: /}
        """,
        RouteTable(
            "api",
            (
                rule(
                    WeightedBackend(API, weight=90),
                    WeightedBackend(ServiceRef("default", "api-canary"), weight=10),
                    match=RouteMatch(),
                    timeout=3.0,
                    retry=RetryPolicy(("5xx", "reset", "connect-failure"), 2, 0.5),
                    prefix_rewrite="/",
                ),
            ),
            service=API,
        ),
        id="split-timeout-retries-rewrite",
    ),
    pytest.param(
        """\
        routes:
          - name: api
            service: api
            rules:
              - to: [api]
                retries: {on: "gateway-error, unavailable", attempts: 0}
              - to: [api]
                retries: {}
        """,
        RouteTable(
            "api",
            (
                rule(WeightedBackend(API), match=RouteMatch(), retry=RetryPolicy(("gateway-error", "unavailable"), 0)),
                rule(WeightedBackend(API), match=RouteMatch(), retry=RetryPolicy()),
            ),
            service=API,
        ),
        id="retries-comma-string-and-defaults",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ROUTE_CASES)
def test_route_fields(text: str, expected: RouteTable) -> None:
    parsed = parse(text)
    assert parsed.errors == ()
    assert [without_origin(route) for route in parsed.routes] == [expected]


def test_secret_fields_are_file_references_with_lines() -> None:
    parsed = parse(
        """\
        secrets:
          - name: mesh-client
            certificate_file: certs/client.crt
            key_file: /etc/mesh/client.key
          - {name: internal-ca, ca_file: certs/ca.pem}
        """
    )
    assert parsed.errors == ()
    assert parsed.secrets == (
        CertificateFiles(
            "mesh-client",
            FileRef("certs/client.crt", "p.yaml:3"),
            FileRef("/etc/mesh/client.key", "p.yaml:4"),
            "p.yaml:2",
        ),
        TrustBundleFile("internal-ca", FileRef("certs/ca.pem", "p.yaml:5"), "p.yaml:5"),
    )


def test_origins_are_source_and_line_of_each_definition() -> None:
    parsed = parse(
        """\
        # services first
        services:
          - name: web
            port: 8080

          - name: api
            port: 8080
        ---
        routes:
          - name: api
            service: api
            rules: [{to: [api]}]
        """,
        source="policy/mesh.yaml",
    )
    assert parsed.errors == ()
    assert [service.origin for service in parsed.services] == ["policy/mesh.yaml:3", "policy/mesh.yaml:6"]
    assert [route.origin for route in parsed.routes] == ["policy/mesh.yaml:10"]


def test_several_documents_and_empty_ones_merge() -> None:
    parsed = parse(
        """\
        ---
        ---
        services: [{name: a, port: 1}]
        ---
        # nothing here
        ---
        services: [{name: b, port: 2}]
        """
    )
    assert parsed.errors == ()
    assert [service.name for service in parsed.services] == ["a", "b"]


def test_every_document_of_many_has_its_keys_checked() -> None:
    # Each document's nodes are freed once read; a later document's mapping may then get the id of
    # an earlier one, and must still be checked.
    good = "services:\n  - {name: a, port: 80}\n"
    bad = "services:\n  - {name: b, port: 80, bogus: 1}\n"
    parsed = parse("---\n".join([good] * 100 + [bad] * 100))
    assert len(parsed.errors) == 100
    assert all("unknown key 'bogus' in service" in error for error in parsed.errors)


@pytest.mark.parametrize(
    "tagged", ["!!bool abc", "!!timestamp abc", "!!int ''", "!!float ''", "!!timestamp 2001-02-30"]
)
def test_a_value_its_explicit_tag_does_not_fit_is_its_text(tagged: str) -> None:
    parsed = parse(f"services:\n  - name: {tagged}\n    port: {tagged}\n")
    text = tagged.split(" ", 1)[1].strip("'")
    assert [service.name for service in parsed.services] == [text]
    assert parsed.errors == (f"p.yaml:3: service.port must be a whole number, not {text!r}",)


def _endpoints(text: str) -> tuple[tuple[Endpoint, ...], tuple[str, ...]]:
    parsed = parse(text)
    return tuple(endpoint for service in parsed.services for endpoint in service.endpoints), parsed.errors


# Endpoints near the common `{address: A, port: P}` shape, which has a fast path: each reads as the
# general reading does (YAML 1.1's integers, tags, order, extra keys, several ports).
ENDPOINT_SPELLING_CASES = [
    pytest.param("{address: 10.0.0.1, port: 80}", [Endpoint("10.0.0.1", 80, "http")], id="plain"),
    pytest.param("{port: 80, address: 10.0.0.1}", [Endpoint("10.0.0.1", 80, "http")], id="port-first"),
    pytest.param("{address: 10.0.0.1, port: 010}", [Endpoint("10.0.0.1", 8, "http")], id="octal"),
    pytest.param("{address: 10.0.0.1, port: 0x50}", [Endpoint("10.0.0.1", 80, "http")], id="hex"),
    pytest.param("{address: 10.0.0.1, port: 8_0}", [Endpoint("10.0.0.1", 80, "http")], id="underscore"),
    pytest.param("{address: 10.0.0.1, port: 1:20}", [Endpoint("10.0.0.1", 80, "http")], id="sexagesimal"),
    pytest.param("{address: 10.0.0.1, port: +80}", [Endpoint("10.0.0.1", 80, "http")], id="signed"),
    pytest.param("{address: 10.0.0.1, port: 0}", [Endpoint("10.0.0.1", 0, "http")], id="zero"),
    pytest.param("{address: 10.0.0.1, port: !!int '80'}", [Endpoint("10.0.0.1", 80, "http")], id="tagged-int"),
    pytest.param("{address: !!str 10.0.0.1, port: 80}", [Endpoint("10.0.0.1", 80, "http")], id="tagged-str"),
    pytest.param("{address: '10.0.0.1', port: 80}", [Endpoint("10.0.0.1", 80, "http")], id="quoted-address"),
    pytest.param("{address: 1, port: 80}", [Endpoint("1", 80, "http")], id="integer-address"),
    pytest.param("{address: 10.0.0.1, port: 80, weight: 3}", [Endpoint("10.0.0.1", 80, "http", weight=3)], id="weight"),
    pytest.param("{address: 10.0.0.1, zone: z1}", [Endpoint("10.0.0.1", 8080, "http", Locality(zone="z1"))], id="zone"),
]


@pytest.mark.parametrize(("entry", "expected"), ENDPOINT_SPELLING_CASES)
def test_endpoint_spellings(entry: str, expected: list[Endpoint]) -> None:
    assert _endpoints(f"services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {entry}\n") == (
        tuple(expected),
        (),
    )


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        pytest.param("{address: 10.0.0.1, port: '80'}", "service.endpoints.port must be a whole number", id="quoted"),
        pytest.param("{address: 10.0.0.1, port: 8.0}", "service.endpoints.port must be a whole number", id="float"),
        pytest.param("{address: ~, port: 80}", "service.endpoints.address must be a string", id="null-address"),
        pytest.param("{address: [a], port: 80}", "service.endpoints.address must be a string", id="list-address"),
        pytest.param("{address: a, address: b}", "duplicate key 'address'", id="duplicate"),
        pytest.param("{address: a, port: 80, bogus: 1}", "unknown key 'bogus'", id="unknown"),
    ],
)
def test_endpoint_spellings_refused(entry: str, error: str) -> None:
    _, errors = _endpoints(f"services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {entry}\n")
    assert [message for message in errors if error in message], errors


def test_an_endpoint_of_a_service_with_several_ports_names_them() -> None:
    text = """\
        services:
          - name: web
            ports: [{name: http, port: 80}, {name: grpc, port: 90, protocol: grpc}]
            endpoints:
              - {address: 10.0.0.1, port: 81}
              - {address: 10.0.0.2}
        """
    endpoints, errors = _endpoints(text)
    assert errors == (
        "p.yaml:5: service.endpoints.port: the service has several ports (http, grpc); "
        "map each with `ports: {name: number}`",
    )
    assert endpoints == (Endpoint("10.0.0.2", 80, "http"), Endpoint("10.0.0.2", 90, "grpc"))


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "services: []\nroutes: []\nsecrets: []\n"])
def test_empty_files_are_valid_and_empty(text: str) -> None:
    assert parse(text) == ParsedPolicy()


def test_anchors_aliases_and_merge_keys_share_settings() -> None:
    parsed = parse(
        """\
        services:
          - name: web
            port: 8080
            policy: &standard
              connect_timeout: 2s
              load_balancing: least_request
          - name: api
            port: 8080
            policy:
              <<: *standard
              connect_timeout: 500ms
        """
    )
    assert parsed.errors == ()
    assert [service.policy for service in parsed.services] == [
        TrafficPolicy(connect_timeout=2.0, load_balancing=LoadBalancing.LEAST_REQUEST),
        TrafficPolicy(connect_timeout=0.5, load_balancing=LoadBalancing.LEAST_REQUEST),
    ]


def test_an_alias_bomb_stops_with_an_error() -> None:
    # 100 routes x 100 rules x 100 backends from about 300 lines of aliases.
    backends = ", ".join(["api"] * 100)
    lines = ["routes:", "  - name: r0", "    service: api", "    rules: &rules", f"      - to: &backends [{backends}]"]
    lines += ["      - to: *backends"] * 99
    lines += [f"  - {{name: r{index}, service: api, rules: *rules}}" for index in range(1, 100)]
    parsed = parse("\n".join(lines))
    assert f"p.yaml:1: more than {MAX_NODES} YAML nodes once aliases are expanded" in parsed.errors


# --- durations ---

DURATION_CASES = [
    pytest.param("250ms", 0.25, id="milliseconds"),
    pytest.param("1s", 1.0, id="seconds"),
    pytest.param("1.5s", 1.5, id="fractional-seconds"),
    pytest.param(".5s", 0.5, id="leading-dot"),
    pytest.param("2m", 120.0, id="minutes"),
    pytest.param("1h", 3600.0, id="hours"),
    pytest.param("1m30s", 90.0, id="combined"),
    pytest.param("0s", 0.0, id="zero"),
    pytest.param(" 3s ", 3.0, id="surrounding-space"),
    pytest.param("", None, id="empty"),
    pytest.param("3", None, id="text-without-unit"),
    pytest.param("s", None, id="unit-without-number"),
    pytest.param("2x", None, id="unknown-unit"),
    pytest.param("-1s", None, id="negative"),
    pytest.param("1 s", None, id="inner-space"),
    pytest.param("1d", None, id="days-unsupported"),
]


@pytest.mark.parametrize(("text", "seconds"), DURATION_CASES)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("250ms", 0.25, id="string"),
        pytest.param("3", 3.0, id="integer-seconds"),
        pytest.param("0.25", 0.25, id="float-seconds"),
    ],
)
def test_durations_in_files(value: str, seconds: float) -> None:
    parsed = parse(f"services: [{{name: web, port: 1, policy: {{connect_timeout: {value}}}}}]")
    assert parsed.errors == ()
    assert parsed.services[0].policy.connect_timeout == seconds


# --- errors: each with its line ---

ERROR_CASES = [
    # shape of the file
    pytest.param("servces: []\n", "p.yaml:1: unknown key 'servces' in document (did you mean 'services'?)", id="typo"),
    pytest.param(
        "services: []\nkind: Mesh\n",
        "p.yaml:2: unknown key 'kind' in document "
        "(expected one of: services, routes, secrets, sites, device_policies, telemetry)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "- services\n", "p.yaml:1: a policy document must be a mapping with services, routes and/or secrets", id="list"
    ),
    pytest.param("services:\n  name: web\n", "p.yaml:2: services must be a list, not a mapping", id="not-a-list"),
    pytest.param("services: [web]\n", "p.yaml:1: service must be a mapping, not 'web'", id="item-not-mapping"),
    pytest.param(
        "services:\n  - name: web\n    port: 8080\n    name: api\n",
        "p.yaml:4: service: duplicate key 'name' (first at line 2)",
        id="duplicate-key",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: [8080\n",
        "p.yaml:4: invalid YAML: expected ',' or ']', but got '<stream end>'",
        id="invalid-yaml",
    ),
    pytest.param(
        "services:\n  - name: web\n\tport: 8080\n",
        "p.yaml:3: invalid YAML: found character '\\t' that cannot start any token",
        id="tab-indent",
    ),
    pytest.param(
        "services:\n  - name: !env NAME\n    port: 1\n",
        "p.yaml:2: service.name: YAML tag !env is not supported",
        id="custom-tag",
    ),
    # services
    pytest.param("services:\n  - port: 8080\n", "p.yaml:2: service needs `name`", id="service-without-name"),
    pytest.param(
        "services:\n  - name: web\n    prot: 8080\n",
        "p.yaml:3: unknown key 'prot' in service (did you mean 'port'?)",
        id="service-unknown-key",
    ),
    pytest.param(
        "services:\n  - name:\n    port: 8080\n",
        "p.yaml:2: service.name must be a string, not empty",
        id="service-name-empty",
    ),
    pytest.param(
        "services:\n  - name: web\n    hosts: www.example.com\n",
        "p.yaml:3: service.hosts must be a list, not 'www.example.com'",
        id="hosts-not-a-list",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: eighty\n",
        "p.yaml:3: service.port must be a whole number, not 'eighty'",
        id="port-not-a-number",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80.5\n",
        "p.yaml:3: service.port must be a whole number, not '80.5'",
        id="port-not-whole",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 8080\n    protocol: http3\n",
        "p.yaml:4: service.protocol: 'http3' is not one of http1, http2, grpc, tcp (did you mean 'http2'?)",
        id="bad-protocol",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 8080\n    ports: [{name: http, port: 8080}]\n",
        "p.yaml:2: service: use either `port` (with `protocol`) or `ports`, not both",
        id="port-and-ports",
    ),
    pytest.param(
        "services:\n  - name: web\n    protocol: grpc\n",
        "p.yaml:3: service.protocol goes with `port`; this service has none",
        id="protocol-without-port",
    ),
    pytest.param(
        "services:\n  - name: web\n    ports:\n      - {name: http}\n",
        "p.yaml:4: service.ports needs `port`",
        id="ports-entry-without-port",
    ),
    pytest.param(
        "services:\n  - name: web\n    ports:\n      - {name: http, port: 1, proto: tcp}\n",
        "p.yaml:4: unknown key 'proto' in service.ports (did you mean 'protocol'?)",
        id="ports-unknown-key",
    ),
    # endpoints
    pytest.param(
        "services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {port: 9101}\n",
        "p.yaml:5: service.endpoints needs `address`",
        id="endpoint-without-address",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {address: 10.0.0.1, zones: a}\n",
        "p.yaml:5: unknown key 'zones' in service.endpoints (did you mean 'zone'?)",
        id="endpoint-unknown-key",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 8080\n    endpoints:\n      - address: 10.0.0.1\n        health: up\n",
        "p.yaml:6: service.endpoints.health: 'up' is not one of ready, serving, terminating, unhealthy"
        " (expected one of: ready, serving, terminating, unhealthy)",
        id="endpoint-bad-health",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 8080\n    endpoints:\n      - address: 10.0.0.1\n        weight: heavy\n",
        "p.yaml:6: service.endpoints.weight must be a whole number, not 'heavy'",
        id="endpoint-weight-not-a-number",
    ),
    pytest.param(
        "services:\n"
        "  - name: web\n"
        "    ports: [{name: http, port: 80}, {name: admin, port: 90}]\n"
        "    endpoints:\n"
        "      - address: 10.0.0.1\n"
        "        port: 9101\n",
        "p.yaml:6: service.endpoints.port: the service has several ports (http, admin); "
        "map each with `ports: {name: number}`",
        id="endpoint-port-ambiguous",
    ),
    pytest.param(
        "services:\n"
        "  - name: web\n"
        "    ports: [{name: http, port: 80}]\n"
        "    endpoints:\n"
        "      - address: 10.0.0.1\n"
        "        ports:\n"
        "          htp: 9101\n",
        "p.yaml:7: service.endpoints.ports: the service has no port named 'htp' (did you mean 'http'?)",
        id="endpoint-unknown-port-name",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    endpoints:\n"
        "      - {address: 10.0.0.1, port: 1, ports: {http: 2}}\n",
        "p.yaml:5: service.endpoints: use either `port` or `ports`, not both",
        id="endpoint-port-and-ports",
    ),
    # policy
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      load_balancer: random\n",
        "p.yaml:5: unknown key 'load_balancer' in service.policy (did you mean 'load_balancing'?)",
        id="policy-unknown-key",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      load_balancing: roundrobin\n",
        "p.yaml:5: service.policy.load_balancing: 'roundrobin' is not one of round_robin, least_request, ring_hash,"
        " maglev, random (did you mean 'round_robin'?)",
        id="policy-bad-load-balancing",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      connect_timeout: 2x\n",
        "p.yaml:5: service.policy.connect_timeout: '2x' is not a duration"
        ' (use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds)',
        id="duration-bad-unit",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      connect_timeout: -1\n",
        "p.yaml:5: service.policy.connect_timeout: '-1' is not a duration"
        ' (use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds)',
        id="duration-negative-number",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      connect_timeout: .inf\n",
        "p.yaml:5: service.policy.connect_timeout: '.inf' is not a duration"
        ' (use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds)',
        id="duration-infinite",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      connect_timeout: '5'\n",
        "p.yaml:5: service.policy.connect_timeout: '5' is not a duration"
        ' (use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds)',
        id="duration-quoted-number",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      locality_failover: maybe\n",
        "p.yaml:5: service.policy.locality_failover must be true or false, not 'maybe'",
        id="policy-bad-boolean",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      hash_key: {headers: x-user}\n",
        "p.yaml:5: unknown key 'headers' in service.policy.hash_key (did you mean 'header'?)",
        id="hash-key-unknown-key",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      circuit_breakers: {max_connection: 1}\n",
        "p.yaml:5: unknown key 'max_connection' in service.policy.circuit_breakers (did you mean 'max_connections'?)",
        id="circuit-breakers-unknown-key",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      circuit_breakers:\n        max_requests: lots\n",
        "p.yaml:6: service.policy.circuit_breakers.max_requests must be a whole number, not 'lots'",
        id="circuit-breakers-not-a-number",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      outlier_detection:\n        interval: soon\n",
        "p.yaml:6: service.policy.outlier_detection.interval: 'soon' is not a duration"
        ' (use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds)',
        id="outlier-detection-bad-duration",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      outlier_detection:\n",
        "p.yaml:5: service.policy.outlier_detection must be a mapping, not empty",
        id="outlier-detection-empty",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    policy:\n      health_check: {protocol: https}\n",
        "p.yaml:5: service.policy.health_check.protocol: 'https' is not one of http, tcp, grpc (did you mean 'http'?)",
        id="health-check-bad-protocol",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    tls: {sni: web.internal}\n",
        "p.yaml:4: service.tls needs `trust` (the name of a CA bundle secret)",
        id="tls-without-trust",
    ),
    pytest.param(
        "services:\n  - name: web\n    port: 80\n    tls: {trust: ca, client_cert: me}\n",
        "p.yaml:4: unknown key 'client_cert' in service.tls (did you mean 'client_certificate'?)",
        id="tls-unknown-key",
    ),
    # routes
    pytest.param("routes:\n  - service: api\n    rules: []\n", "p.yaml:2: route needs `name`", id="route-without-name"),
    pytest.param(
        "routes:\n  - name: api\n    service: a/b/c\n    rules: []\n",
        'p.yaml:3: route.service: \'a/b/c\' is not "name" or "namespace/name"',
        id="route-bad-service-ref",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rule: []\n",
        "p.yaml:4: unknown key 'rule' in route (did you mean 'rules'?)",
        id="route-unknown-key",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - {to: [api], retry: {}}\n",
        "p.yaml:5: unknown key 'retry' in route.rules (did you mean 'retries'?)",
        id="rule-unknown-key",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - {to: [api], backends: [api]}\n",
        "p.yaml:5: route.rules: `to` is another name for `backends`; use one of them",
        id="rule-to-and-backends",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - to: [api]\n        timeout: forever\n",
        "p.yaml:6: route.rules.timeout: 'forever' is not a duration"
        ' (use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds)',
        id="rule-bad-timeout",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n"
        "      - match: {paths: {prefix: /}}\n        to: [api]\n",
        "p.yaml:5: unknown key 'paths' in route.rules.match (did you mean 'path'?)",
        id="match-unknown-key",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - match:\n          path: {prefix: /, exact: /}\n"
        "        to: [api]\n",
        "p.yaml:6: route.rules.match.path needs exactly one of prefix, exact, regex",
        id="path-two-kinds",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - match:\n          path: {starts: /}\n"
        "        to: [api]\n",
        "p.yaml:6: unknown key 'starts' in route.rules.match.path (expected one of: prefix, exact, regex)",
        id="path-unknown-kind",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - match:\n          headers:\n"
        "            - {name: x-canary}\n        to: [api]\n",
        "p.yaml:7: route.rules.match.headers needs exactly one of exact, prefix, regex, present",
        id="header-without-kind",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - match:\n          headers:\n"
        "            - {exact: always}\n        to: [api]\n",
        "p.yaml:7: route.rules.match.headers needs `name`",
        id="header-without-name",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - match:\n          headers:\n"
        "            - name: x-canary\n              present: false\n        to: [api]\n",
        "p.yaml:8: route.rules.match.headers.present must be true; add `invert: true` to match absence",
        id="header-present-false",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - match:\n          headers:\n"
        "            - {name: x-canary, exact: a, inverted: true}\n        to: [api]\n",
        "p.yaml:7: unknown key 'inverted' in route.rules.match.headers (did you mean 'invert'?)",
        id="header-unknown-key",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - to:\n          - {weight: 10}\n",
        "p.yaml:6: route.rules.backends needs `service`",
        id="backend-without-service",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - to:\n          - {service: api, weigth: 10}\n",
        "p.yaml:6: unknown key 'weigth' in route.rules.backends (did you mean 'weight'?)",
        id="backend-unknown-key",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - to:\n          - /api\n",
        'p.yaml:6: route.rules.backends: \'/api\' is not "name" or "namespace/name"',
        id="backend-bad-service-ref",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - to: [api]\n        retries:\n"
        "          on: [5xxx]\n",
        "p.yaml:7: route.rules.retries.on: unknown retry condition '5xxx' (did you mean '5xx'?)",
        id="retries-unknown-condition",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - to: [api]\n        retries: {attempt: 3}\n",
        "p.yaml:6: unknown key 'attempt' in route.rules.retries (did you mean 'attempts'?)",
        id="retries-unknown-key",
    ),
    pytest.param(
        "routes:\n  - name: api\n    service: api\n    rules:\n      - to: [api]\n        rewrite: {host: a}\n",
        "p.yaml:6: unknown key 'host' in route.rules.rewrite (did you mean 'hostname'?)",
        id="rewrite-unknown-key",
    ),
    # secrets
    pytest.param("secrets:\n  - ca_file: ca.pem\n", "p.yaml:2: secret needs `name`", id="secret-without-name"),
    pytest.param(
        "secrets:\n  - name: ca\n",
        "p.yaml:2: secret needs `certificate_file` and `key_file`, or `ca_file`",
        id="secret-without-files",
    ),
    pytest.param(
        "secrets:\n  - name: me\n    certificate_file: me.crt\n",
        "p.yaml:2: secret needs both `certificate_file` and `key_file`",
        id="certificate-without-key",
    ),
    pytest.param(
        "secrets:\n  - {name: me, certificate_file: me.crt, key_file: me.key, ca_file: ca.pem}\n",
        "p.yaml:2: secret: a secret is a certificate (certificate_file + key_file) or a CA bundle (ca_file), not both",
        id="certificate-and-ca",
    ),
    pytest.param(
        "secrets:\n  - {name: ca, ca_file: ''}\n", "p.yaml:2: secret.ca_file must not be empty", id="empty-file-path"
    ),
    pytest.param(
        "secrets:\n  - {name: ca, ca_fle: ca.pem}\n",
        "p.yaml:2: unknown key 'ca_fle' in secret (did you mean 'ca_file'?)",
        id="secret-unknown-key",
    ),
]


@pytest.mark.parametrize(("text", "error"), ERROR_CASES)
def test_errors_name_file_line_and_reason(text: str, error: str) -> None:
    assert error in parse(text).errors


def test_every_error_is_collected_not_just_the_first() -> None:
    parsed = parse(
        """\
        services:
          - name: web
            port: eighty
            policy:
              connect_timeout: 2x
              load_balancer: random
        routes:
          - service: web
        secrets:
          - name: ca
        extra: 1
        """
    )
    assert parsed.errors == (
        "p.yaml:3: service.port must be a whole number, not 'eighty'",
        "p.yaml:5: service.policy.connect_timeout: '2x' is not a duration"
        ' (use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds)',
        "p.yaml:6: unknown key 'load_balancer' in service.policy (did you mean 'load_balancing'?)",
        "p.yaml:8: route needs `name`",
        "p.yaml:10: secret needs `certificate_file` and `key_file`, or `ca_file`",
        "p.yaml:11: unknown key 'extra' in document "
        "(expected one of: services, routes, secrets, sites, device_policies, telemetry)",
    )


def test_a_bad_field_keeps_its_default_and_the_rest_of_the_object() -> None:
    parsed = parse("services:\n  - {name: web, port: 8080, policy: {connect_timeout: 2x, load_balancing: random}}\n")
    assert len(parsed.errors) == 1
    assert parsed.services[0].policy == TrafficPolicy(load_balancing=LoadBalancing.RANDOM)


def test_an_aliased_mistake_is_reported_once() -> None:
    parsed = parse(
        """\
        services:
          - {name: a, port: 1, policy: &p {connect_timeout: 2x}}
          - {name: b, port: 1, policy: *p}
          - {name: c, port: 1, policy: *p}
        """
    )
    assert len(parsed.errors) == 1


def test_on_is_a_key_not_yaml_11_true() -> None:
    parsed = parse("routes:\n  - {name: r, service: api, rules: [{to: [api], retries: {on: [reset]}}]}\n")
    assert parsed.errors == ()
    assert parsed.routes[0].rules[0].retry == RetryPolicy(("reset",))


def test_every_section_rejects_unknown_keys() -> None:
    # The KEYS table is the format's vocabulary; each section must be reachable and strict.
    assert set(KEYS) >= {"document", "service", "route", "secret"}
    for section, keys in KEYS.items():
        assert len(set(keys)) == len(keys), section


# --- what the model finds, pointed at files and lines by the origins ---


def problems(*files: tuple[str, str]) -> list[str]:
    parsed = [parse(text, source) for source, text in files]
    for one in parsed:
        assert one.errors == ()
    pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
    mesh = Mesh.of(
        [service for one in parsed for service in one.services],
        [route for one in parsed for route in one.routes],
        [
            TlsCertificate(secret.name, pem, key, origin=secret.origin)
            for one in parsed
            for secret in one.secrets
            if isinstance(secret, CertificateFiles)
        ],
        [
            TrustBundle(secret.name, pem, origin=secret.origin)
            for one in parsed
            for secret in one.secrets
            if isinstance(secret, TrustBundleFile)
        ],
    )
    return [str(problem) for problem in mesh.problems()]


MODEL_PROBLEM_CASES = [
    pytest.param(
        [
            ("a.yaml", "services:\n  - {name: web, port: 80}\n"),
            ("b.yaml", "# web\n\nservices:\n  - {name: web, port: 81}\n"),
        ],
        "service default/web is defined twice: in a.yaml:2 and in b.yaml:4",
        id="service-twice-across-files",
    ),
    pytest.param(
        [
            (
                "a.yaml",
                "services: [{name: api, port: 80}]\nroutes:\n  - {name: r, service: api, rules: [{to: [api]}]}\n",
            ),
            ("b.yaml", "routes:\n  - {name: r, hosts: [x.example.com], rules: [{to: [api]}]}\n"),
        ],
        "route r is defined twice: in a.yaml:3 and in b.yaml:2",
        id="route-twice-across-files",
    ),
    pytest.param(
        [
            ("a.yaml", "secrets:\n  - {name: ca, ca_file: a.pem}\n"),
            ("b.yaml", "secrets:\n  - {name: ca, ca_file: b.pem}\n"),
        ],
        "secret ca is defined twice: in a.yaml:2 and in b.yaml:2",
        id="secret-twice-across-files",
    ),
    pytest.param(
        [("a.yaml", "routes:\n  - {name: r, service: api, rules: [{to: [api]}]}\n")],
        "route r (a.yaml:2): unknown service default/api",
        id="route-unknown-service",
    ),
    pytest.param(
        [
            ("a.yaml", "services: [{name: api, port: 80}]\n"),
            ("b.yaml", "routes:\n  - {name: r, service: api, rules: [{to: [api-canry]}]}\n"),
        ],
        "route r (b.yaml:2) rule 1: unknown service default/api-canry",
        id="backend-unknown-service",
    ),
    pytest.param(
        [
            ("a.yaml", "services: [{name: api, port: 80}]\n"),
            ("b.yaml", "routes:\n  - {name: r, service: api, rules: [{to: [{service: api, port: admin}]}]}\n"),
        ],
        "route r (b.yaml:2) rule 1: service default/api has no port 'admin'",
        id="backend-unknown-port",
    ),
    pytest.param(
        [("a.yaml", "services:\n  - {name: web, port: 80, tls: {trust: internal-ca}}\n")],
        "service default/web (a.yaml:2): tls.trust names unknown CA bundle 'internal-ca'",
        id="tls-unknown-trust-bundle",
    ),
    pytest.param(
        [("a.yaml", "services:\n  - name: web\n    port: 80\n    endpoints: [{address: 10.0.0.256, weight: 0}]\n")],
        "service default/web (a.yaml:2): endpoint address '10.0.0.256' is not an IP address",
        id="endpoint-not-an-ip",
    ),
    pytest.param(
        [("a.yaml", "services:\n  - {name: Web, port: 80}\n")],
        "service default/Web (a.yaml:2): name must be a lowercase RFC 1123 label",
        id="bad-service-name",
    ),
]


@pytest.mark.parametrize(("files", "problem"), MODEL_PROBLEM_CASES)
def test_model_problems_name_files_and_lines(files: list[tuple[str, str]], problem: str) -> None:
    assert problem in problems(*files)
