"""The meshes of the edge roles' golden files (edge-gateway, device, mobile), each with its groups.

Output lands in tests/golden/edge_out/<case>.<group>.<cds|eds|lds|rds|sds|rtds>.yaml
(test_edge_golden.py); the core cases keep tests/golden/out/ to themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from meshplane.model import (
    Device,
    DeviceEndpoint,
    Endpoint,
    EndpointHealth,
    GatewayAddress,
    HeaderMatch,
    HeaderMatchKind,
    Locality,
    Mesh,
    Protocol,
    ProxyGroup,
    ProxyRole,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    Site,
    TlsCertificate,
    TrustBundle,
    UpstreamTls,
    WeightedBackend,
)
from meshplane.model.device_policy import (
    DefaultAccess,
    DevicePolicy,
    DeviceRateLimit,
    JwtProvider,
    PathKind,
    PathRule,
    ServiceAccess,
)
from meshplane.model.services import DnsEndpoints, DnsResolver
from meshplane.model.sites import DeviceTrust, SiteTls

DATA = Path(__file__).parent.parent / "data"  # TEST-ONLY certificates, see tests/data/README.md

CLOUD = Locality("eu-central", "eu-central-1a")

BERLIN = Site(
    "gym-berlin",
    "eu-central",
    "berlin",
    gateways=(GatewayAddress("10.20.0.2", 15080), GatewayAddress("10.20.0.3", 15080)),
    device_ranges=("10.20.0.0/16", "fd20::/48"),
)
MUNICH = Site(
    "gym-munich",
    "eu-central",
    "munich",
    gateways=(GatewayAddress("10.30.0.2", 15080),),
    device_ranges=("10.30.0.0/16",),
)
HAMBURG = Site("gym-hamburg", "eu-central", "hamburg", gateways=(GatewayAddress("10.40.0.2", 15080),))
HOMES = Site("homes-nyc", "us-east", device_ranges=("192.168.0.0/16",))  # no gateways: the cloud directly


@dataclass(frozen=True)
class EdgeCase:
    name: str
    mesh: Mesh
    groups: tuple[ProxyGroup, ...]


def edge_label(group: ProxyGroup) -> str:
    label = f"{group.role}-{group.site}"
    return f"{label}-{group.listen_address}" if group.listen_address else label


def fleet() -> Mesh:
    """Cloud services (one with a canary for new firmware and for treadmills, one gRPC, one TCP the
    edge leaves out), four sites in two regions, and devices at two of them."""
    catalog = ServiceRef("fitness", "catalog")
    catalog_canary = ServiceRef("fitness", "catalog-canary")
    http = ServicePort("http", 8080, Protocol.HTTP1)
    services = [
        Service("catalog", "fitness", (http,), endpoints=(Endpoint("10.0.1.10", 8080, "http", CLOUD),)),
        Service("catalog-canary", "fitness", (http,), endpoints=(Endpoint("10.0.1.20", 8080, "http", CLOUD),)),
        Service(
            "telemetry",
            "fitness",
            (ServicePort("grpc", 9090, Protocol.GRPC), ServicePort("db", 5432, Protocol.TCP)),
            endpoints=(
                Endpoint("10.0.2.10", 9090, "grpc", CLOUD),
                Endpoint("10.0.2.11", 9090, "grpc", Locality("eu-central", "eu-central-1b")),
                Endpoint("10.0.2.12", 9090, "grpc", CLOUD, health=EndpointHealth.TERMINATING),
                Endpoint("10.0.2.10", 5432, "db", CLOUD),
            ),
        ),
    ]
    canary = RouteTable(
        name="catalog-canary",
        service=catalog,
        rules=(
            RouteRule(
                match=RouteMatch(headers=(HeaderMatch("x-device-class", HeaderMatchKind.EXACT, "tread"),)),
                backends=(WeightedBackend(catalog_canary),),
            ),
            RouteRule(
                match=RouteMatch(headers=(HeaderMatch("x-firmware-version", HeaderMatchKind.PREFIX, "4."),)),
                backends=(WeightedBackend(catalog, weight=90), WeightedBackend(catalog_canary, weight=10)),
                retry=RetryPolicy(on=("5xx",), attempts=1),
            ),
            RouteRule(match=RouteMatch(), backends=(WeightedBackend(catalog),)),
        ),
    )
    devices = [
        Device("bike-0001", "bike", "gym-berlin", (DeviceEndpoint("10.20.1.5", 8080),), "3.2.1", (("row", "a"),)),
        Device(
            "tread-0007",
            "tread",
            "gym-berlin",
            (DeviceEndpoint("10.20.1.6", 8080), DeviceEndpoint("fd20::6", 8080)),
            "4.0.0",
        ),
        Device("bike-0009", "bike", "gym-munich", (DeviceEndpoint("10.30.1.9", 8080),), "3.2.1"),
    ]
    return Mesh.of(services, [canary], sites=[BERLIN, MUNICH, HAMBURG, HOMES], devices=devices)


def fleet_with_tls() -> Mesh:
    """The fleet with upstream mTLS to the catalog (client certificate and CA bundle, real test-only
    PEM) and a certificate no service uses: the gateway gets exactly the catalog's two secrets
    over SDS and adds the TLS; devices and apps reach the catalog through gateways only (no SDS,
    no TLS, no direct tier), and not at all from a site whose region has no gateway."""
    mesh = fleet()
    tls = UpstreamTls(trust="cloud-ca", sni="catalog.fitness.internal", client_certificate="edge-client")
    services = tuple(replace(s, tls=tls) if s.name == "catalog" else s for s in mesh.services)
    client = (DATA / "test-client.pem").read_text(), (DATA / "test-client.key.pem").read_text()
    return replace(
        mesh,
        services=services,
        certificates=(
            TlsCertificate("edge-client", *client, origin="tests/data/test-client.pem"),
            TlsCertificate("unused-client", *client, origin="tests/data/test-client.pem"),
        ),
        trust_bundles=(TrustBundle("cloud-ca", (DATA / "test-ca.pem").read_text(), origin="tests/data/test-ca.pem"),),
    )


def fleet_with_dns() -> Mesh:
    """The fleet with a cloud service named by DNS (strict, asked of the cloud's own resolver): the
    gateway gets a DNS cluster for it, resolving the names itself; devices and apps reach it through
    gateways only (no direct tier: a STATIC cluster holds no names), and not at all from a site
    whose region has no gateway."""
    mesh = fleet()
    weather = Service(
        "weather",
        "fitness",
        (ServicePort("http", 8080, Protocol.HTTP1),),
        dns=DnsEndpoints(
            (
                Endpoint("weather-a.cloud.internal", 8080, "http", CLOUD),
                Endpoint("weather-b.cloud.internal", 8080, "http"),
            ),
            refresh=10.0,
            resolvers=(DnsResolver("10.0.0.53"),),
        ),
    )
    return replace(mesh, services=(*mesh.services, weather))


def fleet_zero_trust() -> Mesh:
    """The fleet with zero trust at Berlin (`tls`: devices' certificates required, mTLS to devices)
    and the registry's CA as the device trust (test-only PEM stand-ins): the gateway's device
    listener terminates TLS with the site's certificate over SDS and checks each request's
    certificate against the live devices; its cloud-facing listener refuses Berlin's device ranges;
    each device cluster presents the site's certificate and requires the device's own. A Berlin
    device reaches the cloud only through Berlin's gateways over mTLS with the certificate its
    bootstrap names; one naming none, and an app, reach nothing there (fail closed)."""
    mesh = fleet()
    client = (DATA / "test-client.pem").read_text(), (DATA / "test-client.key.pem").read_text()
    sites = tuple(
        replace(site, tls=SiteTls("gym-berlin-gateway")) if site.id == BERLIN.id else site for site in mesh.sites
    )
    return replace(
        mesh,
        sites=sites,
        certificates=(TlsCertificate("gym-berlin-gateway", *client, origin="tests/data/test-client.pem"),),
        device_trust=DeviceTrust("meshplane.local", (DATA / "test-ca.pem").read_text()),
    )


# A test-only public key (P-256), fixed so that the golden files are.
POLICY_JWKS = (
    '{"keys": [{"kty": "EC", "crv": "P-256", "x": "ofT9AD5TPRkzmpbXV9z3HMWXqj7CnXM1JzVFyUxGiLk", '
    '"y": "qv8VGejosCDSzMjUjuWwWQ260Coa6KhW_4_i5xTmf-U"}]}'
)


def fleet_device_policy() -> Mesh:
    """The fleet under device policy: bikes may GET the catalog's /rides and nothing else, at 20
    requests a second each (Munich: their allow-list and limit; other classes everything); Berlin
    is zero trust (`default: deny`: treadmills, named by no policy, reach nothing) and its apps need
    a JWT for the catalog canary. A route table reached by its own host (`rides.example.com`)
    sends to the catalog, so it carries the catalog's allow-list; the catalog's canary table sends
    some requests to the canary, so those routes carry the canary's checks (nobody's allowance, a
    token), whichever host named them."""
    mesh = fleet()
    catalog, canary = ServiceRef("fitness", "catalog"), ServiceRef("fitness", "catalog-canary")
    rides = RouteTable(
        name="rides-web",
        hosts=("rides.example.com",),
        rules=(RouteRule(match=RouteMatch(), backends=(WeightedBackend(catalog),)),),
    )
    policies = [
        DevicePolicy(
            "bikes",
            classes=("bike",),
            allow=(ServiceAccess(catalog, (PathRule(PathKind.PREFIX, "/rides"),), ("GET",)),),
            rate_limit=DeviceRateLimit(20, 1.0, 40),
        ),
        DevicePolicy("berlin-zero-trust", sites=(BERLIN.id,), default=DefaultAccess.DENY),
        DevicePolicy(
            "berlin-apps",
            sites=(BERLIN.id,),
            jwt_providers=(JwtProvider("accounts", "https://accounts.example.com", ("fitness-app",), POLICY_JWKS),),
            require_jwt=(ServiceAccess(canary),),
        ),
    ]
    routes = tuple(sorted((*mesh.routes, rides), key=lambda table: table.name))
    return replace(mesh, routes=routes, device_policies=tuple(policies))


EDGE_CASES: tuple[EdgeCase, ...] = (
    EdgeCase(
        "fleet_device_policy",
        fleet_device_policy(),
        (
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin"),
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-munich"),
        ),
    ),
    EdgeCase(
        "fleet_zero_trust",
        fleet_zero_trust(),
        (
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin"),
            ProxyGroup(ProxyRole.DEVICE, site="gym-berlin"),
            ProxyGroup(ProxyRole.MOBILE, site="gym-berlin"),
        ),
    ),
    EdgeCase(
        "fleet_dns",
        fleet_with_dns(),
        (
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin"),
            ProxyGroup(ProxyRole.DEVICE, site="gym-berlin"),
            ProxyGroup(ProxyRole.DEVICE, site="homes-nyc"),
            ProxyGroup(ProxyRole.MOBILE, site="gym-munich"),
        ),
    ),
    EdgeCase(
        "fleet_tls",
        fleet_with_tls(),
        (
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin"),
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin", listen_address="127.0.0.1"),
            ProxyGroup(ProxyRole.DEVICE, site="gym-berlin"),
            ProxyGroup(ProxyRole.DEVICE, site="homes-nyc"),
            ProxyGroup(ProxyRole.MOBILE, site="gym-munich"),
        ),
    ),
    EdgeCase(
        "fleet",
        fleet(),
        (
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin"),
            ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-hamburg"),
            ProxyGroup(ProxyRole.DEVICE, site="gym-berlin"),
            ProxyGroup(ProxyRole.DEVICE, site="homes-nyc"),
            ProxyGroup(ProxyRole.MOBILE, site="gym-munich"),
        ),
    ),
)
