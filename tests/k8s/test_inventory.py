"""The inventory's merge: precedence on clashes, routes across sources, identity of unchanged services."""

from __future__ import annotations

from pathlib import Path

from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.kubernetes import KubernetesContent
from meshplane.discovery.policy_files import validate_policy
from meshplane.model import (
    Endpoint,
    Mesh,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    WeightedBackend,
)
from meshplane.model.changes import MeshChanges
from tests.k8s.merging import errors, merge


def svc(name: str, origin: str, address: str = "10.0.0.1") -> Service:
    return Service(name, "default", (ServicePort("http", 80),), (Endpoint(address, 8080, "http"),), origin=origin)


def route(name: str, to: str, attach: str | None = None, origin: str = "routes.yaml:1") -> RouteTable:
    rule = RouteRule(RouteMatch(), (WeightedBackend(ServiceRef("default", to)),))
    service = ServiceRef("default", attach) if attach else None
    return RouteTable(name, (rule,), service=service, hosts=() if attach else ("x.example.com",), origin=origin)


def test_policy_files_win_a_clash_and_it_is_reported() -> None:
    files = Mesh.of([svc("web", "mesh.yaml:3")])
    mesh = merge(Inventory(), files, (svc("web", "kubernetes", "10.9.9.9"), svc("api", "kubernetes")))
    assert [(s.name, s.origin) for s in mesh.services] == [("api", "kubernetes"), ("web", "mesh.yaml:3")]
    assert mesh.problems() == []


def test_clash_error_is_on_the_status() -> None:
    inventory = Inventory()
    merge(inventory, Mesh.of([svc("web", "mesh.yaml:3")]), (svc("web", "kubernetes"),))
    (error,) = inventory.status.errors
    assert error == (
        "service default/web is defined by policy files (mesh.yaml:3) and by Kubernetes; "
        "serving the policy files' definition"
    )


def test_policy_routes_may_point_at_kubernetes_services() -> None:
    files = Mesh.of([svc("web", "mesh.yaml:3")], [route("to-api", "api", attach="web")])
    inventory = Inventory()
    mesh = merge(inventory, files, (svc("api", "kubernetes"),))
    assert [r.name for r in mesh.routes] == ["to-api"]
    assert errors(inventory) == ()
    assert mesh.problems() == []


def test_a_route_to_a_missing_service_is_left_out_with_a_reason() -> None:
    files = Mesh.of([svc("web", "mesh.yaml:3")], [route("to-api", "api", attach="web"), route("plain", "web", None)])
    inventory = Inventory()
    mesh = merge(inventory, files, ())
    assert [r.name for r in mesh.routes] == ["plain"]
    assert errors(inventory) == ("route to-api (routes.yaml:1) rule 1: unknown service default/api; route left out",)


def test_annotation_routes_yield_to_policy_file_routes() -> None:
    files = Mesh.of([], [route("from-files", "web", attach="web")])
    inventory = Inventory()
    mesh = merge(
        inventory, files, (svc("web", "kubernetes"),), (route("kubernetes/default/web", "web", "web", "kubernetes"),)
    )
    assert [r.name for r in mesh.routes] == ["from-files"]
    assert any("both attach to service default/web" in e for e in errors(inventory))


def test_no_change_reported_gives_the_same_mesh_and_a_change_set_travels_through() -> None:
    inventory = Inventory()
    files = Mesh.of([svc("web", "mesh.yaml:3")])
    kube = KubernetesContent((svc("a", "kubernetes"), svc("b", "kubernetes")), ())
    first = inventory.merge(Contents(files, kube))
    assert first.changes == MeshChanges.everything()
    quiet = inventory.merge(Contents(files, kube, MeshChanges()))
    assert quiet.mesh is first.mesh
    assert quiet.changes.none
    moved = svc("b", "kubernetes", "10.0.0.2")
    reported = MeshChanges(endpoints=frozenset({moved.ref}))
    second = inventory.merge(Contents(files, KubernetesContent((kube.services[0], moved), ()), reported))
    assert second.changes == reported
    assert [s.name for s in second.mesh.services] == ["a", "b", "web"]
    assert second.mesh.services[1] is moved


async def test_policy_files_may_name_services_they_do_not_define_only_with_kubernetes(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(
        """routes:
  - name: to-api
    hosts: [shop.example.com]
    rules:
      - to: [{service: shop/api}]
"""
    )
    closed = await validate_policy(tmp_path)
    assert len(closed) == 1
    assert "unknown service shop/api" in closed[0]
    assert await validate_policy(tmp_path, open_world=True) == []
