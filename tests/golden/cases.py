"""The meshes the golden files are made from, each with the proxy groups it is translated for.

Each case shows one concern; together they use every model option the translators read. Output
lands in tests/golden/out/<case>.<group>.<cds|eds|lds|rds|sds>.yaml (see test_golden.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshplane.model import (
    CircuitBreakers,
    CorsPolicy,
    Endpoint,
    EndpointHealth,
    FaultAbort,
    FaultDelay,
    FaultInjection,
    HashKey,
    HeaderMatch,
    HeaderMatchKind,
    HeaderModifier,
    HeaderValue,
    HealthCheck,
    HealthCheckProtocol,
    LoadBalancing,
    Locality,
    Mesh,
    Mirror,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
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
    TlsCertificate,
    TrafficPolicy,
    TrustBundle,
    UpstreamTls,
    WeightedBackend,
)
from meshplane.model.proxy import XdsApiType
from meshplane.model.services import DnsEndpoints, DnsResolution, DnsResolver, LookupFamily

DATA = Path(__file__).parent.parent / "data"  # TEST-ONLY certificates, see tests/data/README.md

SIDECAR = ProxyGroup()
GRPC = ProxyGroup(role=ProxyRole.GRPC)
# A sidecar on the per-type services: every EDS, RDS and SDS source names them, not ADS.
PER_TYPE = ProxyGroup(xds_api_type=XdsApiType.DELTA_GRPC, xds_cluster="meshplane")
EU_WEST_A = Locality("eu-west", "eu-west-a")
EU_WEST_B = Locality("eu-west", "eu-west-b")
US_EAST_C = Locality("us-east", "us-east-c")


@dataclass(frozen=True)
class GoldenCase:
    name: str
    mesh: Mesh
    groups: tuple[ProxyGroup, ...]


def group_label(group: ProxyGroup) -> str:
    """A file-name-safe label: `sidecar`, `grpc`, `sidecar-eu-west-eu-west-a`, `sidecar-15006`,
    `sidecar-per-type-delta_grpc` (its xDS cluster is always PER_TYPE's, `meshplane`)."""
    parts = [str(group.role), group.locality.region, group.locality.zone, group.locality.sub_zone]
    if group.role is ProxyRole.SIDECAR and group.outbound_port != SIDECAR.outbound_port:
        parts.append(str(group.outbound_port))
    if group.xds_api_type is not XdsApiType.ADS:
        assert group.xds_cluster == PER_TYPE.xds_cluster, "one xDS cluster name in the golden files"
        parts.append(f"per-type-{group.xds_api_type}")
    return "-".join(part for part in parts if part)


def http(name: str = "http", port: int = 8080) -> ServicePort:
    return ServicePort(name, port, Protocol.HTTP1)


def ready(address: str, port: int, port_name: str = "http", **kwargs: object) -> Endpoint:
    return Endpoint(address, port, port_name, **kwargs)  # type: ignore[arg-type]


def plain() -> Mesh:
    """Two HTTP services, nothing else: the smallest useful config."""
    return Mesh.of(
        [
            Service("web", "shop", (http(),), endpoints=(ready("10.0.0.11", 8080), ready("10.0.0.12", 8080))),
            Service("api", "shop", (http(port=80),), endpoints=(ready("10.0.1.10", 8000, weight=3),)),
        ]
    )


def multi_port() -> Mesh:
    """HTTP/1, HTTP/2, gRPC and TCP ports on one service; TCP ports clashing with each other and
    with the outbound port; one service name in two namespaces (so no bare name for either)."""
    orders_ports = (
        http(port=8080),
        ServicePort("grpc", 9090, Protocol.GRPC),
        ServicePort("h2", 8443, Protocol.HTTP2),
        ServicePort("postgres", 5432, Protocol.TCP),
    )
    orders_endpoints = tuple(
        ready(address, port.port, port.name) for address in ("10.1.0.5", "10.1.0.6") for port in orders_ports
    )
    return Mesh.of(
        [
            Service("orders", "shop", orders_ports, endpoints=orders_endpoints, hosts=("orders.example.com",)),
            Service("orders", "legacy", (http(port=80),), endpoints=(ready("10.9.0.1", 80),)),
            # billing/ledger sorts before shop/orders, so it keeps TCP port 5432.
            Service(
                "ledger",
                "billing",
                (ServicePort("postgres", 5432, Protocol.TCP),),
                endpoints=(ready("10.2.0.7", 5432, "postgres"),),
            ),
            # The sidecar's own outbound port: no TCP listener for it.
            Service("cache", "shop", (ServicePort("redis", 15001, Protocol.TCP),)),
        ]
    )


def routes() -> Mesh:
    """Route tables: a canary split, header and regex matches, retries, timeouts, a prefix rewrite,
    a table with its own hosts, and host aliases that collide."""
    reviews = ServiceRef("books", "reviews")
    reviews_v2 = ServiceRef("books", "reviews-v2")
    ratings = ServiceRef("books", "ratings")
    details = ServiceRef("books", "details")
    tables = [
        RouteTable(
            name="reviews-canary",
            service=reviews,
            rules=(
                RouteRule(
                    match=RouteMatch(headers=(HeaderMatch("x-canary", HeaderMatchKind.EXACT, "always"),)),
                    backends=(WeightedBackend(reviews_v2),),
                ),
                RouteRule(
                    match=RouteMatch(
                        path=PathMatch(PathMatchKind.REGEX, r"/api/v[0-9]+/reviews/[^/]+"),
                        headers=(HeaderMatch("x-debug", HeaderMatchKind.PRESENT, invert=True),),
                    ),
                    backends=(WeightedBackend(reviews),),
                    timeout=0,
                ),
                RouteRule(
                    match=RouteMatch(),
                    backends=(WeightedBackend(reviews, weight=90), WeightedBackend(reviews_v2, weight=10)),
                    timeout=3,
                    retry=RetryPolicy(on=("5xx", "reset", "connect-failure"), attempts=3, per_try_timeout=0.5),
                ),
            ),
        ),
        RouteTable(
            name="ratings",
            service=ratings,
            rules=(
                RouteRule(
                    match=RouteMatch(
                        path=PathMatch(PathMatchKind.EXACT, "/books.Ratings/Get"),
                        headers=(HeaderMatch("x-user", HeaderMatchKind.PREFIX, "vip-"),),
                    ),
                    backends=(WeightedBackend(ratings, "grpc"),),
                    timeout=0.25,
                    retry=RetryPolicy(on=("unavailable", "5xx", "cancelled"), attempts=2, per_try_timeout=0.1),
                ),
                RouteRule(
                    match=RouteMatch(path=PathMatch(PathMatchKind.PREFIX, "/books.Ratings/")),
                    backends=(WeightedBackend(ratings, 50051),),
                    retry=RetryPolicy(on=("5xx",), attempts=1),
                ),
            ),
        ),
        RouteTable(
            name="storefront",
            hosts=("shop.example.com", "details.example.com", "*.books.example.com"),
            rules=(
                RouteRule(
                    match=RouteMatch(path=PathMatch(PathMatchKind.PREFIX, "/reviews/")),
                    backends=(WeightedBackend(reviews),),
                    prefix_rewrite="/api/v1/reviews/",
                ),
                RouteRule(
                    match=RouteMatch(
                        headers=(
                            HeaderMatch("user-agent", HeaderMatchKind.REGEX, ".*Mobile.*"),
                            HeaderMatch("x-lite", HeaderMatchKind.EXACT, "1", invert=True),
                        )
                    ),
                    backends=(WeightedBackend(details, weight=1), WeightedBackend(reviews, weight=1)),
                ),
                RouteRule(match=RouteMatch(), backends=(WeightedBackend(details),)),
            ),
        ),
    ]
    return Mesh.of(
        [
            Service("reviews", "books", (http(port=9080),), endpoints=(ready("10.3.0.1", 9080),)),
            Service("reviews-v2", "books", (http(port=9080),), endpoints=(ready("10.3.0.2", 9080),)),
            Service(
                "ratings",
                "books",
                (ServicePort("grpc", 50051, Protocol.GRPC),),
                endpoints=(ready("10.3.1.1", 50051, "grpc"),),
                hosts=("ratings.example.com",),
            ),
            # Both want details.example.com: books/catalog sorts first and keeps it.
            Service("details", "books", (http(port=9080),), hosts=("details.example.com", "DETAILS.books.example.com")),
            Service("catalog", "books", (http(port=80),), hosts=("details.example.com",)),
        ],
        routes=tables,
    )


def policies() -> Mesh:
    """Every traffic-policy option: each balancer, hash keys, breakers, outlier detection, health checks."""
    grpc_port = ServicePort("grpc", 7070, Protocol.GRPC)
    return Mesh.of(
        [
            Service(
                "least",
                "pol",
                (http(),),
                endpoints=(ready("10.4.0.1", 8080),),
                policy=TrafficPolicy(
                    connect_timeout=0.25,
                    load_balancing=LoadBalancing.LEAST_REQUEST,
                    circuit_breakers=CircuitBreakers(
                        max_connections=100, max_pending_requests=10, max_requests=1000, max_retries=3
                    ),
                    outlier_detection=OutlierDetection(
                        consecutive_5xx=3,
                        consecutive_gateway_failure=2,
                        interval=5,
                        base_ejection_time=15,
                        max_ejection_percent=50,
                    ),
                    health_check=HealthCheck(HealthCheckProtocol.HTTP, path="/ready", interval=2, timeout=0.5),
                ),
            ),
            Service(
                "ring",
                "pol",
                (ServicePort("h2", 8443, Protocol.HTTP2),),
                endpoints=(ready("10.4.1.1", 8443, "h2"), ready("10.4.1.2", 8443, "h2")),
                policy=TrafficPolicy(
                    load_balancing=LoadBalancing.RING_HASH,
                    hash_key=HashKey(header="x-user-id"),
                    circuit_breakers=CircuitBreakers(max_requests=50),
                    health_check=HealthCheck(HealthCheckProtocol.HTTP, path="/healthz"),
                ),
            ),
            Service(
                "maglev",
                "pol",
                (grpc_port,),
                endpoints=(ready("10.4.2.1", 7070, "grpc"),),
                policy=TrafficPolicy(
                    load_balancing=LoadBalancing.MAGLEV,
                    hash_key=HashKey(cookie="session"),
                    outlier_detection=OutlierDetection(),
                    health_check=HealthCheck(
                        HealthCheckProtocol.GRPC, interval=3, timeout=1, unhealthy_threshold=2, healthy_threshold=1
                    ),
                ),
            ),
            Service(
                "sticky",
                "pol",
                (grpc_port,),
                endpoints=(ready("10.4.3.1", 7070, "grpc"),),
                policy=TrafficPolicy(load_balancing=LoadBalancing.RING_HASH, hash_key=HashKey(source_ip=True)),
            ),
            Service(
                "random",
                "pol",
                (http(), ServicePort("raw", 9000, Protocol.TCP)),
                endpoints=(ready("10.4.4.1", 8080), ready("10.4.4.1", 9000, "raw")),
                policy=TrafficPolicy(
                    load_balancing=LoadBalancing.RANDOM,
                    locality_failover=False,
                    # An HTTP check cannot probe the TCP port: that cluster gets none (with a warning).
                    health_check=HealthCheck(HealthCheckProtocol.HTTP),
                ),
            ),
            Service(
                "tcpcheck",
                "pol",
                (ServicePort("raw", 9100, Protocol.TCP),),
                endpoints=(ready("10.4.5.1", 9100, "raw"),),
                policy=TrafficPolicy(health_check=HealthCheck(HealthCheckProtocol.TCP, interval=1, timeout=0.2)),
            ),
        ]
    )


def locality() -> Mesh:
    """Endpoints in three zones of two regions, every health state, a duplicate, IPv6, and a
    service without endpoints; one service opts out of locality failover."""
    checkout_endpoints = (
        ready("10.5.0.1", 8080, locality=EU_WEST_A, weight=2),
        ready("10.5.0.2", 8080, locality=EU_WEST_A, health=EndpointHealth.SERVING),
        ready("10.5.0.3", 8080, locality=EU_WEST_A, health=EndpointHealth.TERMINATING),
        ready("10.5.1.1", 8080, locality=EU_WEST_B),
        ready("10.5.1.2", 8080, locality=EU_WEST_B, health=EndpointHealth.UNHEALTHY),
        ready("10.6.0.1", 8080, locality=US_EAST_C),
        ready("10.6.0.2", 8080, locality=Locality("us-east", "us-east-c", "rack-7")),
        ready("fd00::6:3", 8080, locality=US_EAST_C, weight=5),
        ready("10.6.0.9", 8080, locality=US_EAST_C, health=EndpointHealth.TERMINATING),
        ready("10.7.0.1", 8080),  # locality unknown
        ready("10.5.0.1", 8080, locality=EU_WEST_A),  # listed twice: dropped, with a warning
        ready("10.5.0.1", 9090, "grpc", locality=EU_WEST_A),
        ready("10.6.0.1", 9090, "grpc", locality=US_EAST_C),
    )
    inventory_endpoints = (
        ready("10.8.0.1", 8080, locality=EU_WEST_A),
        ready("10.8.1.1", 8080, locality=US_EAST_C),
        ready("10.8.1.2", 8080, locality=US_EAST_C, health=EndpointHealth.TERMINATING),
    )
    return Mesh.of(
        [
            Service(
                "checkout",
                "shop",
                (http(), ServicePort("grpc", 9090, Protocol.GRPC)),
                endpoints=checkout_endpoints,
            ),
            Service(
                "inventory",
                "shop",
                (http(),),
                endpoints=inventory_endpoints,
                policy=TrafficPolicy(locality_failover=False),
            ),
            Service("empty", "shop", (http(),)),
        ]
    )


def tls() -> Mesh:
    """Upstream TLS: mTLS with SNI over HTTP, TLS to a gRPC port, TLS over TCP; real (test-only) PEM."""
    mesh_ca = TrustBundle("mesh-ca", (DATA / "test-ca.pem").read_text(), origin="tests/data/test-ca.pem")
    client = TlsCertificate(
        "payments-client",
        (DATA / "test-client.pem").read_text(),
        (DATA / "test-client.key.pem").read_text(),
        origin="tests/data/test-client.pem",
    )
    return Mesh.of(
        [
            Service(
                "payments",
                "pay",
                (ServicePort("https", 8443, Protocol.HTTP1),),
                endpoints=(ready("10.9.1.1", 8443, "https"),),
                tls=UpstreamTls(trust="mesh-ca", sni="payments.example.internal", client_certificate="payments-client"),
            ),
            Service(
                "ledger",
                "pay",
                (ServicePort("grpc", 9443, Protocol.GRPC), ServicePort("pg", 5433, Protocol.TCP)),
                endpoints=(ready("10.9.2.1", 9443, "grpc"), ready("10.9.2.1", 5433, "pg")),
                tls=UpstreamTls(trust="mesh-ca"),
            ),
        ],
        certificates=[client],
        trust_bundles=[mesh_ca],
    )


def external_name() -> Mesh:
    """A Kubernetes ExternalName service (a DNS cluster, no EDS) beside an EDS one, both routable."""
    return Mesh.of(
        [
            Service(
                "payments",
                "shop",
                (http(port=443), ServicePort("grpc", 9090, Protocol.GRPC)),
                external_name="payments.example.com",
                policy=TrafficPolicy(connect_timeout=2.0),
                origin="kubernetes",
            ),
            Service("web", "shop", (http(),), endpoints=(ready("10.0.0.11", 8080),), origin="kubernetes"),
        ]
    )


def dns_endpoints() -> Mesh:
    """Services whose endpoints are DNS names: strict (two names in two localities, weighted, one
    draining; a fixed refresh and the service's own resolver), logical on two ports (following the
    answers' TTL, IPv6 only), and one the gRPC role gets a single name of; all routable."""
    return Mesh.of(
        [
            Service(
                "payments",
                "shop",
                (http(port=443),),
                dns=DnsEndpoints(
                    (
                        ready("pay-a.example.com", 443, locality=EU_WEST_A, weight=2),
                        ready("pay-b.example.com", 443, locality=US_EAST_C),
                        ready("pay-old.example.com", 443, health=EndpointHealth.TERMINATING),
                    ),
                    refresh=30.0,
                    resolvers=(DnsResolver("10.0.0.53"), DnsResolver("fd00::53", 5353)),
                ),
                policy=TrafficPolicy(connect_timeout=2.0),
            ),
            Service(
                "ledger",
                "shop",
                (http(), ServicePort("grpc", 9090, Protocol.GRPC)),
                dns=DnsEndpoints(
                    (ready("ledger.example.com", 8080), ready("ledger-rpc.example.com", 9090, "grpc")),
                    resolution=DnsResolution.LOGICAL,
                    lookup_family=LookupFamily.V6,
                ),
            ),
        ]
    )


def route_features() -> Mesh:
    """The Gateway API's route features: named rules, a redirect, method and query matches, path and
    host rewrites, request and response header modifiers, mirrors, faults, rate limits and CORS (and
    so their filters in the listeners); on a gRPC port too, which takes only some."""
    shop = ServiceRef("shop", "web")
    web = Service(
        "web",
        "shop",
        (http(), ServicePort("grpc", 9090, Protocol.GRPC)),
        endpoints=(ready("10.0.0.11", 8080), ready("10.0.0.11", 9090, "grpc")),
    )
    rules = (
        RouteRule(
            RouteMatch(PathMatch(PathMatchKind.PREFIX, "/old/")),
            (),
            name="moved",
            redirect=Redirect("https", "shop.example.com", 8443, prefix="/new/", status=301),
            response_headers=HeaderModifier(set=(HeaderValue("x-moved", "yes"),)),
        ),
        RouteRule(
            RouteMatch(
                PathMatch(PathMatchKind.EXACT, "/search"),
                method="GET",
                query=(
                    QueryMatch("lang", QueryMatchKind.EXACT, "en"),
                    QueryMatch("page", QueryMatchKind.REGEX, "[0-9]+"),
                ),
            ),
            (WeightedBackend(shop, "http"),),
            name="search",
            path_rewrite="/v2/search",
            host_rewrite="search.internal",
            request_headers=HeaderModifier(
                set=(HeaderValue("x-tenant", "shop"),), add=(HeaderValue("x-trace", "50%"),), remove=("x-debug",)
            ),
            response_headers=HeaderModifier(add=(HeaderValue("x-served-by", "mesh"),), remove=("x-internal",)),
            mirrors=(Mirror(shop, "grpc"), Mirror(shop, "http", 12.5)),
            rate_limit=RateLimit(10, 1.0, 20, per_header="x-device-id"),
            cors=CorsPolicy(
                allow_origins=("https://shop.example.com", "https://*.shop.example.com", "*"),
                allow_methods=("GET", "POST"),
                allow_headers=("content-type",),
                expose_headers=("x-request-id",),
                max_age=600,
            ),
        ),
        RouteRule(
            RouteMatch(method="POST"),
            (WeightedBackend(shop, "grpc"),),
            name="calls",
            fault=FaultInjection(FaultDelay(0.5, 10), FaultAbort(503, 5)),
            rate_limit=RateLimit(100, 60.0),
        ),
    )
    return Mesh.of([web], [RouteTable("web-features", rules, service=shop)])


CASES: tuple[GoldenCase, ...] = (
    GoldenCase("plain", plain(), (SIDECAR, GRPC)),
    GoldenCase("multi_port", multi_port(), (SIDECAR, ProxyGroup(outbound_port=15006), GRPC)),
    GoldenCase("routes", routes(), (SIDECAR, GRPC)),
    GoldenCase("policies", policies(), (SIDECAR, GRPC)),
    GoldenCase(
        "locality",
        locality(),
        (
            SIDECAR,
            ProxyGroup(locality=EU_WEST_A),
            ProxyGroup(locality=Locality("eu-west")),
            ProxyGroup(role=ProxyRole.GRPC, locality=EU_WEST_A),
        ),
    ),
    GoldenCase("tls", tls(), (SIDECAR, GRPC, PER_TYPE)),
    GoldenCase("external_name", external_name(), (SIDECAR, GRPC)),
    GoldenCase("route_features", route_features(), (SIDECAR, GRPC)),
    GoldenCase("dns_endpoints", dns_endpoints(), (SIDECAR, GRPC)),
)
