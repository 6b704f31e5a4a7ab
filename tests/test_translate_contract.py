"""The translators' contract: every type present, sorted by name, deterministic, consistent, pure,
and never failing on a valid mesh (checked on a mesh combining every option, through real Envoy)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import Any

import pytest

import meshplane.xds.translate
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
    ProxyGroup,
    ProxyRole,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    TlsCertificate,
    TrafficPolicy,
    TrustBundle,
    UpstreamTls,
    WeightedBackend,
)
from meshplane.xds.names import EDGE_DEVICE_CA_SECRET, edge_device_validation_secret_name
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import Translation, translate, translate_endpoints
from meshplane.xds.types import TypeUrl
from tests.golden.cases import CASES, DATA, group_label
from tests.golden.edge_cases import EDGE_CASES, fleet_with_tls
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap

GROUPS = (
    ProxyGroup(),
    ProxyGroup(locality=Locality("eu", "eu-a"), outbound_port=15006),
    ProxyGroup(role=ProxyRole.GRPC),
    ProxyGroup(role=ProxyRole.GRPC, locality=Locality("us", "us-c")),
)


def resource_name(message: Any) -> str:
    return str(message.cluster_name if hasattr(message, "cluster_name") else message.name)


def every_option_mesh() -> Mesh:
    """Services for every combination of port protocol, balancer, health check and TLS, with
    endpoints in every health state and place, and route tables crossing them."""
    services = []
    ca = TrustBundle("ca", (DATA / "test-ca.pem").read_text())
    client = TlsCertificate(
        "client", (DATA / "test-client.pem").read_text(), (DATA / "test-client.key.pem").read_text()
    )
    places = [Locality("eu", "eu-a"), Locality("eu", "eu-b", "r1"), Locality("us", "us-c"), Locality()]
    combinations = itertools.product(list(Protocol), list(LoadBalancing), [None, *HealthCheckProtocol], [False, True])
    for index, (protocol, balancing, check, with_tls) in enumerate(combinations):
        port = ServicePort("p", 10000 + index, protocol)
        endpoints = tuple(
            Endpoint(f"10.{index // 250}.{index % 250}.{n}", port.port, "p", places[n % 4], health, weight=n + 1)
            for n, health in enumerate(EndpointHealth)
        )
        policy = TrafficPolicy(
            load_balancing=balancing,
            hash_key=HashKey(header="x-k") if balancing.is_consistent_hash else None,
            health_check=HealthCheck(check) if check else None,
            circuit_breakers=CircuitBreakers(max_requests=index),
            outlier_detection=OutlierDetection(consecutive_gateway_failure=1) if index % 2 else None,
            locality_failover=index % 3 != 0,
        )
        tls = UpstreamTls("ca", sni=f"s{index}.example.com", client_certificate="client" if index % 2 else "")
        services.append(
            Service(
                f"s{index}",
                "all",
                (port,),
                endpoints=endpoints,
                hosts=(f"s{index}.example.com", "shared.example.com"),
                policy=policy,
                tls=tls if with_tls else None,
            )
        )
    http = [s for s in services if s.ports[0].protocol.is_http]
    rule = RouteRule(
        RouteMatch(
            PathMatch(PathMatchKind.REGEX, "/a/.*"),
            (HeaderMatch("x-h", HeaderMatchKind.PREFIX, ""), HeaderMatch("x-r", HeaderMatchKind.REGEX, "^$")),
        ),
        tuple(WeightedBackend(s.ref, weight=i) for i, s in enumerate(http[:5])),
        timeout=1.5,
        retry=RetryPolicy(on=("5xx", "unavailable"), attempts=0, per_try_timeout=0.1),
        prefix_rewrite="/b/",
    )
    tables = [
        RouteTable(f"t{i}", (rule, RouteRule(RouteMatch(), (WeightedBackend(s.ref),))), service=s.ref)
        for i, s in enumerate(http[::7])
    ]
    tables.append(RouteTable("hosts", (rule,), hosts=("shared.example.com", "other.example.com")))
    return Mesh.of(services, tables, certificates=[client], trust_bundles=[ca])


EVERY_OPTION = every_option_mesh()
MESHES = [pytest.param(case.mesh, id=case.name) for case in CASES] + [
    pytest.param(Mesh.of([]), id="empty"),
    pytest.param(EVERY_OPTION, id="every-option"),
]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("group", GROUPS, ids=group_label)
def test_every_type_present_sorted_and_consistent(mesh: Mesh, group: ProxyGroup) -> None:
    assert mesh.problems() == []
    translation = translate(mesh, group)
    assert set(translation.resources) == set(TypeUrl)
    for messages in translation.resources.values():
        names = [resource_name(m) for m in messages]
        assert names == sorted(names)
        assert len(names) == len(set(names))
    snapshot = Snapshot.of(translation.resources)
    assert snapshot.consistency_problems() == []
    # Every cluster's EDS name has its endpoints, and every endpoint set belongs to a cluster.
    clusters = translation.resources[TypeUrl.CLUSTER]
    # (DNS clusters, for ExternalName services, carry their own load assignment and want no EDS.)
    wanted = sorted(c.eds_cluster_config.service_name for c in clusters if c.HasField("eds_cluster_config"))
    assert wanted == [resource_name(m) for m in translation.resources[TypeUrl.ENDPOINT]]


def serialised(translation: Translation) -> dict[TypeUrl, list[bytes]]:
    return {
        type_url: [m.SerializeToString(deterministic=True) for m in messages]
        for type_url, messages in translation.resources.items()
    }


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("group", GROUPS, ids=group_label)
def test_deterministic(mesh: Mesh, group: ProxyGroup) -> None:
    first, second = translate(mesh, group), translate(mesh, group)
    assert serialised(first) == serialised(second)
    assert first.warnings == second.warnings
    # Input order does not matter either: Mesh.of puts the parts in canonical order.
    shuffled = Mesh.of(
        list(reversed(mesh.services)),
        list(reversed(mesh.routes)),
        list(reversed(mesh.certificates)),
        list(reversed(mesh.trust_bundles)),
        mesh.cluster_domain,
    )
    assert serialised(translate(shuffled, group)) == serialised(first)
    endpoints = [m.SerializeToString(deterministic=True) for m in translate_endpoints(mesh, group)]
    assert endpoints == serialised(first)[TypeUrl.ENDPOINT]


# Every role, sited where an edge role needs a site (the edge meshes' sites; other meshes have none,
# which the edge roles translate with a warning).
EVERY_ROLE = (
    ProxyGroup(),
    ProxyGroup(role=ProxyRole.GRPC),
    ProxyGroup(role=ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin"),
    ProxyGroup(role=ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin", listen_address="127.0.0.1"),
    ProxyGroup(role=ProxyRole.DEVICE, site="gym-berlin"),
    ProxyGroup(role=ProxyRole.DEVICE, site="homes-nyc"),
    ProxyGroup(role=ProxyRole.MOBILE, site="gym-munich"),
)
SECRET_MESHES = [*MESHES, *(pytest.param(case.mesh, id=case.name) for case in EDGE_CASES)]


@pytest.mark.parametrize("mesh", SECRET_MESHES)
@pytest.mark.parametrize("group", EVERY_ROLE, ids=str)
def test_every_role_gets_exactly_the_secrets_its_clusters_name(mesh: Mesh, group: ProxyGroup) -> None:
    """Sidecars and edge gateways reach services over their TLS and get those services' secrets
    (no others: an unused certificate is never sent); an edge gateway at a site with `tls` also
    gets the site's certificate, the device CA and its site's live-device validation context; gRPC
    (certificate providers), devices and apps (no TLS on their clusters, see edge_device) get none.
    Always a publishable snapshot."""
    translation = translate(mesh, group)
    assert Snapshot.of(translation.resources).consistency_problems() == []
    used = {name for s in mesh.services if s.tls for name in (s.tls.trust, s.tls.client_certificate) if name}
    expected = used if group.role in (ProxyRole.SIDECAR, ProxyRole.EDGE_GATEWAY) else set()
    site = next((site for site in mesh.sites if site.id == group.site), None)
    if group.role is ProxyRole.EDGE_GATEWAY and site is not None and site.tls is not None:
        expected |= {site.tls.certificate, EDGE_DEVICE_CA_SECRET, edge_device_validation_secret_name(site.id)}
    assert {secret.name for secret in translation.resources[TypeUrl.SECRET]} == expected
    if group.role in (ProxyRole.DEVICE, ProxyRole.MOBILE):
        # Envoy Mobile has no SDS, and devices are not given the mesh's keys: no TLS at all.
        assert not any(c.HasField("transport_socket") for c in translation.resources[TypeUrl.CLUSTER])


def test_a_certificate_no_cluster_uses_is_never_sent() -> None:
    mesh = fleet_with_tls()
    assert "unused-client" in {certificate.name for certificate in mesh.certificates}
    for group in EVERY_ROLE:
        assert "unused-client" not in {s.name for s in translate(mesh, group).resources[TypeUrl.SECRET]}


def test_every_option_mesh_warns_about_what_it_leaves_out() -> None:
    warnings = translate(EVERY_OPTION, ProxyGroup()).warnings
    assert any("health check cannot probe" in w for w in warnings)
    assert any("'shared.example.com" in w and "already taken" in w for w in warnings)
    assert translate(EVERY_OPTION, ProxyGroup(role=ProxyRole.GRPC)).warnings == ()


@pytest.mark.parametrize("group", GROUPS, ids=group_label)
def test_envoy_accepts_every_option_mesh(group: ProxyGroup, tmp_path: Path) -> None:
    result = envoy_validate(validation_bootstrap(translate(EVERY_OPTION, group)), tmp_path / "every-option.json")
    assert result.returncode == 0, result.stdout + result.stderr


FORBIDDEN_IMPORTS = {
    "asyncio",
    "grpc",
    "aiofiles",
    "meshplane.xds.server",
    "meshplane.xds.cache",
    "meshplane.discovery",
}
IMPURE_CALLS = {"open", "print", "time", "random", "datetime", "uuid"}


@pytest.mark.parametrize(
    "path", sorted(Path(meshplane.xds.translate.__file__).parent.glob("*.py")), ids=lambda path: path.name
)
def test_translators_import_nothing_impure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    top_levels = {name.split(".")[0] for name in imported}
    assert not (imported | top_levels) & FORBIDDEN_IMPORTS
    assert not top_levels & IMPURE_CALLS
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & IMPURE_CALLS
