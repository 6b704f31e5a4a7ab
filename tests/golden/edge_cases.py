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


EDGE_CASES: tuple[EdgeCase, ...] = (
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
