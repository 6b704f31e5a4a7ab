"""The inventory's merge: precedence on clashes, routes across sources, identity of unchanged services."""

from __future__ import annotations

from pathlib import Path

from meshplane.discovery.inventory import Inventory
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


def svc(name: str, origin: str, address: str = "10.0.0.1") -> Service:
    return Service(name, "default", (ServicePort("http", 80),), (Endpoint(address, 8080, "http"),), origin=origin)


def route(name: str, to: str, attach: str | None = None, origin: str = "routes.yaml:1") -> RouteTable:
    rule = RouteRule(RouteMatch(), (WeightedBackend(ServiceRef("default", to)),))
    service = ServiceRef("default", attach) if attach else None
    return RouteTable(name, (rule,), service=service, hosts=() if attach else ("x.example.com",), origin=origin)


def test_policy_files_win_a_clash_and_it_is_reported() -> None:
    files = Mesh.of([svc("web", "mesh.yaml:3")])
    mesh = Inventory().merge(files, (svc("web", "kubernetes", "10.9.9.9"), svc("api", "kubernetes")))
    assert [(s.name, s.origin) for s in mesh.services] == [("api", "kubernetes"), ("web", "mesh.yaml:3")]
    assert mesh.problems() == []


def test_clash_error_is_on_the_status() -> None:
    inventory = Inventory()
    inventory.merge(Mesh.of([svc("web", "mesh.yaml:3")]), (svc("web", "kubernetes"),))
    (error,) = inventory.status.errors
    assert error == (
        "service default/web is defined by policy files (mesh.yaml:3) and by Kubernetes; "
        "serving the policy files' definition"
    )


def test_policy_routes_may_point_at_kubernetes_services() -> None:
    files = Mesh.of([svc("web", "mesh.yaml:3")], [route("to-api", "api", attach="web")])
    inventory = Inventory()
    mesh = inventory.merge(files, (svc("api", "kubernetes"),))
    assert [r.name for r in mesh.routes] == ["to-api"]
    assert inventory.errors == ()
    assert mesh.problems() == []


def test_a_route_to_a_missing_service_is_left_out_with_a_reason() -> None:
    files = Mesh.of([svc("web", "mesh.yaml:3")], [route("to-api", "api", attach="web"), route("plain", "web", None)])
    inventory = Inventory()
    mesh = inventory.merge(files, ())
    assert [r.name for r in mesh.routes] == ["plain"]
    assert inventory.errors == ("route to-api (routes.yaml:1) rule 1: unknown service default/api; route left out",)


def test_annotation_routes_yield_to_policy_file_routes() -> None:
    files = Mesh.of([], [route("from-files", "web", attach="web")])
    inventory = Inventory()
    mesh = inventory.merge(
        files, (svc("web", "kubernetes"),), (route("kubernetes/default/web", "web", "web", "kubernetes"),)
    )
    assert [r.name for r in mesh.routes] == ["from-files"]
    assert any("both attach to service default/web" in e for e in inventory.errors)


def test_unchanged_inputs_give_the_same_mesh_and_services_keep_identity() -> None:
    inventory = Inventory()
    files = Mesh.of([svc("web", "mesh.yaml:3")])
    kube = (svc("a", "kubernetes"), svc("b", "kubernetes"))
    first = inventory.merge(files, kube)
    assert inventory.merge(files, kube) is first
    changed = (kube[0], svc("b", "kubernetes", "10.0.0.2"))
    second = inventory.merge(files, changed)
    assert second is not first
    same = [s for s in second.services if any(s is t for t in first.services)]
    assert [s.name for s in same] == ["a", "web"]


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
