"""Change sets are data, and they never say less than changed.

The sources report what changed (`take_changes()`), the merge adds what its own decisions changed,
and the publisher rebuilds from that alone. So each reported set must cover what comparing the
two meshes by value finds (`MeshChanges.between`): a part that differs and is not reported would
leave proxies on old config. Checked here over random sequences of Kubernetes events, policy-file
edits and registrations, and over the merge's own substitutions (a service kept on its previous
TLS, one left out until its secret exists).
"""

from __future__ import annotations

import random
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.kubernetes import KubernetesContent, KubernetesSource
from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import EdgeRegistry, RegisterInput
from meshplane.discovery.registry.store import MemoryStore
from meshplane.model import Endpoint, Mesh, Service, ServicePort, Site, TrustBundle, UpstreamTls
from meshplane.model.changes import DeviceChanges, MeshChanges
from tests.k8s import objects as k

NAMES = [f"svc-{index}" for index in range(6)]


def kubernetes_mesh(content: KubernetesContent) -> Mesh:
    return Mesh(content.services, content.routes, content.certificates, content.trust_bundles)


def random_event(rng: random.Random, source: KubernetesSource) -> None:
    """One watch batch: a Service or slice added, changed or deleted, or an annotation moved."""
    name = rng.choice(NAMES)
    kind = rng.choice(["service", "slice", "slice", "slice", "annotation", "delete-service", "delete-slice"])
    if kind == "service":
        ports = [k.port("http", 80)] if rng.random() < 0.7 else [k.port("http", 80), k.port("grpc", 9000)]
        source._on_services([(None, k.service(name, ports=ports))])
    elif kind == "annotation":
        annotations = {"meshplane.io/timeout": rng.choice(["1s", "2s"])} if rng.random() < 0.8 else {}
        source._on_services([(None, k.service(name, annotations=annotations))])
    elif kind == "slice":
        addresses = [f"10.0.{NAMES.index(name)}.{rng.randint(1, 4)}" for _ in range(rng.randint(0, 3))]
        endpoints = [k.endpoint(address, ready=rng.random() < 0.8) for address in addresses]
        source._on_slices([(None, k.endpoint_slice(f"{name}-{rng.randint(1, 2)}", name, endpoints=endpoints))])
    elif kind == "delete-service":
        source._on_services([(k.service(name), None)])
    else:
        source._on_slices([(k.endpoint_slice(f"{name}-{rng.randint(1, 2)}", name), None)])


@pytest.mark.parametrize("seed", range(20))
def test_the_kubernetes_source_reports_every_change_it_makes(seed: int) -> None:
    rng = random.Random(seed)
    source = KubernetesSource(client=object())  # type: ignore[arg-type]  # never runs: events are fed in
    before: Mesh | None = None
    endpoint_only_reports = 0
    for _ in range(60):
        for _ in range(rng.randint(1, 3)):
            random_event(rng, source)
        reported = source.take_changes()
        after = kubernetes_mesh(source.content())
        found = MeshChanges.between(before, after)
        assert reported.covers(found), (reported, found)
        endpoint_only_reports += reported.endpoints_only
        before = after
    assert endpoint_only_reports > 0  # the sequences exercised the fast path, not only `services`


def policy_text(rng: random.Random, names: list[str]) -> str:
    lines = ["services:"]
    for name in names:
        lines += [
            f"  - name: {name}",
            "    ports: [{name: http, port: 80}]",
            "    endpoints:",
            *(
                f"      - {{address: 10.1.{names.index(name)}.{host}, port: 8080}}"
                for host in range(1, rng.randint(2, 4))
            ),
        ]
        if rng.random() < 0.3:
            lines.append(f"    policy: {{connect_timeout: {rng.choice(['1s', '2s'])}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(5))
async def test_the_policy_source_reports_every_change_it_makes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = PolicyFileSource(tmp_path)
    before: Mesh | None = None
    for _ in range(15):
        for file in ("a.yaml", "b.yaml"):
            if rng.random() < 0.6:
                (tmp_path / file).write_text(
                    policy_text(rng, rng.sample(NAMES[:3] if file == "a.yaml" else NAMES[3:], 2))
                )
        await source.load()
        after = source.mesh
        assert after is not None, source.status.errors
        reported = source.take_changes()
        found = MeshChanges.between(before, after)
        assert reported.covers(found), (reported, found)
        before = after


def web(*hosts: int, tls: UpstreamTls | None = None) -> Service:
    endpoints = tuple(Endpoint(f"10.2.0.{host}", 8443, "https") for host in hosts)
    return Service("web", "shop", (ServicePort("https", 443),), endpoints, tls=tls, origin="kubernetes")


def test_the_merge_reports_what_its_substitutions_change() -> None:
    """A Secret created after the service naming it: the source reports secrets only, but the
    service joins the mesh, so the merge must report services too."""
    bundle = TrustBundle(
        "shop/mesh-ca#ca", "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n", "kubernetes"
    )
    tls = UpstreamTls("shop/mesh-ca#ca")
    inventory = Inventory()
    first = inventory.merge(Contents(None, KubernetesContent((web(1, tls=tls),), ())))
    assert first.mesh.services == ()  # left out until its CA bundle exists
    steps: list[tuple[KubernetesContent, MeshChanges]] = [
        (KubernetesContent((web(1, tls=tls),), (), (), (bundle,)), MeshChanges(secrets=True)),
        (KubernetesContent((web(1, 2, tls=tls),), (), (), (bundle,)), MeshChanges(endpoints=frozenset({web().ref}))),
        (KubernetesContent((web(1, 2, tls=tls),), (), (), ()), MeshChanges(secrets=True)),  # carried over
        (KubernetesContent((web(2, tls=tls),), (), (), ()), MeshChanges(endpoints=frozenset({web().ref}))),
        (KubernetesContent((web(2),), (), (), ()), MeshChanges(services=True)),  # the reference goes
    ]
    before = first.mesh
    for content, reported in steps:
        merged = inventory.merge(Contents(None, content, reported))
        found = MeshChanges.between(before, merged.mesh)
        assert merged.changes.covers(found), (merged.changes, found)
        before = merged.mesh
    assert before.trust_bundles == ()


async def test_registrations_reach_the_merged_mesh_as_device_changes_only() -> None:
    site = Site("gym-1", "eu", device_ranges=("10.20.0.0/16",))
    registry = EdgeRegistry(MemoryStore(), lambda: {site.id: site})
    await registry.load()
    inventory = Inventory()
    files = Mesh(sites=(site,))
    inventory.merge(Contents(files, None, MeshChanges.everything(), registry, registry.take_changes()))
    bikes = Principal(PrincipalKind.CLASS, "bike")
    request: dict[str, Any] = {"device_class": "bike", "site": site.id, "version": "1", "ttl_seconds": 30}
    await registry.register(bikes, RegisterInput(device_id="bike-1", endpoints=(("10.20.0.5", 8080),), **request))

    merged = inventory.merge(Contents(files, None, MeshChanges(), registry, registry.take_changes()))

    assert merged.changes == MeshChanges(devices=True)
    assert [device.id for device in merged.mesh.devices] == ["bike-1"]
    quiet = inventory.merge(Contents(files, None, MeshChanges(), registry, DeviceChanges()))
    assert quiet.changes.none
    assert quiet.mesh is merged.mesh


def _gateway_api(route_backend: str) -> GatewayApiObjects:
    """A Gateway of meshplane's class with one HTTPRoute sending everything to `route_backend`."""
    gateway_class = {"metadata": {"name": "mesh", "generation": 1}, "spec": {"controllerName": DEFAULT_CONTROLLER_NAME}}
    gateway = {
        "metadata": {"namespace": "shop", "name": "edge", "generation": 1},
        "spec": {"gatewayClassName": "mesh", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    }
    route = {
        "metadata": {"namespace": "shop", "name": "web", "generation": 1},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": route_backend, "port": 443}]}]},
    }
    return GatewayApiObjects(
        gateway_classes=MappingProxyType({("", "mesh"): parse_gateway_class(gateway_class)}),
        gateways=MappingProxyType({("shop", "edge"): parse_gateway(gateway)}),
        http_routes=MappingProxyType({("shop", "web"): parse_http_route(route)}),
    )


def test_the_merge_reports_what_gateway_api_changes_and_service_changes_do_to_gateways() -> None:
    """Gateways are resolved against the merged services: the Gateway API source reports
    `gateways`, Kubernetes `services`; a Service going changes the Gateway (its rule answers 500),
    an endpoint change alone leaves the Gateway as it was."""
    inventory = Inventory()
    first = inventory.merge(Contents(None, KubernetesContent((web(1),), ()), gateway_api=_gateway_api("web")))
    (gateway,) = first.mesh.gateways
    assert gateway.listeners[0].hosts[0].rules[0].rule.backends[0].service == web().ref
    steps: list[tuple[KubernetesContent, GatewayApiObjects, MeshChanges]] = [
        (KubernetesContent((web(1, 2),), ()), _gateway_api("web"), MeshChanges(endpoints=frozenset({web().ref}))),
        (KubernetesContent((web(1, 2),), ()), _gateway_api("nowhere"), MeshChanges(gateways=True)),
        (KubernetesContent((web(1, 2),), ()), _gateway_api("web"), MeshChanges(gateways=True)),
        (KubernetesContent((), ()), _gateway_api("web"), MeshChanges(services=True)),  # the Service goes
    ]
    before = first.mesh
    for content, objects, reported in steps:
        merged = inventory.merge(Contents(None, content, reported, gateway_api=objects))
        found = MeshChanges.between(before, merged.mesh)
        assert merged.changes.covers(found), (merged.changes, found)
        assert merged.changes.gateways == (before.gateways != merged.mesh.gateways)
        before = merged.mesh
    (gateway,) = before.gateways
    assert gateway.listeners[0].hosts[0].rules[0].fails_all
    status = merged.gateway_status.http_routes[("shop", "web")].parents[0].conditions
    assert [(c.type, c.status, c.reason) for c in status] == [
        ("Accepted", "True", "Accepted"),
        ("ResolvedRefs", "False", "BackendNotFound"),
    ]
