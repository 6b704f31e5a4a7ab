"""The inventory: every source's content merged into the one `Mesh` the translators read.

Owns the merge and its precedence rules (documented in docs/kubernetes.md):

- A service defined by both the policy files and Kubernetes is served as the policy files define
  it; the clash is an error on the inventory's status (policy files are the operator's explicit
  word; Kubernetes objects are often created by charts the operator does not control).
- A route attached to a service (policy files, or a Service's timeout/retry annotations) wins in
  the same order: a Kubernetes annotation route for a service a policy-file route attaches to is
  left out, with an error.
- Policy-file routes may send traffic to Kubernetes services. A route whose backends or attached
  service do not exist in the merged mesh (e.g. the Kubernetes service was deleted) is left out,
  with an error, and the rest is served.

The merge keeps every `Service` object its sources gave, so a service that did not change is the
same object in the new mesh as in the last (identity checks downstream find what changed). It is
recomputed only when an input changed (by identity). Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import time
from collections.abc import Callable, Sequence

from meshplane.discovery.source_status import SourceStatus
from meshplane.model import Mesh, RouteTable, Service, ServiceRef

SOURCE_NAME = "inventory"


class Inventory:
    """Merges policy-file content (a `Mesh`) and Kubernetes content (services and routes)."""

    def __init__(self) -> None:
        self._inputs: tuple[object, ...] | None = None
        self._mesh: Mesh | None = None
        self.errors: tuple[str, ...] = ()
        self._merged_at: float | None = None

    @property
    def mesh(self) -> Mesh | None:
        """The last merged mesh (None before the first merge)."""
        return self._mesh

    @property
    def status(self) -> SourceStatus:
        mesh = self._mesh or Mesh()
        return SourceStatus(
            name=SOURCE_NAME,
            synced=True,
            last_success=self._merged_at,
            last_attempt=self._merged_at,
            errors=self.errors,
            counts={"services": len(mesh.services), "routes": len(mesh.routes)},
        )

    def merge(
        self,
        files: Mesh | None,
        kubernetes_services: Sequence[Service] = (),
        kubernetes_routes: Sequence[RouteTable] = (),
    ) -> Mesh:
        """The merged mesh; the same object as last time when no input changed.

        `kubernetes_services` must be in mesh order (namespace, name), as `KubernetesContent` is.
        """
        inputs = (files, kubernetes_services, kubernetes_routes)
        last = self._inputs
        if self._mesh is not None and last is not None and all(a is b for a, b in zip(inputs, last, strict=True)):
            return self._mesh
        files = files or Mesh()
        errors: list[str] = []
        # Linear in the policy files' services; the Kubernetes services are only walked when the
        # files define any (to find clashes): an endpoint change costs no sort and no dict here.
        policy = {service.ref: service for service in files.services}
        kubernetes = tuple(kubernetes_services)
        if policy:
            kept = []
            for service in kubernetes:
                twin = policy.get(service.ref)
                if twin is None:
                    kept.append(service)
                    continue
                errors.append(
                    f"service {service.ref} is defined by policy files ({twin.origin}) and by Kubernetes; "
                    "serving the policy files' definition"
                )
            services = tuple(heapq.merge(files.services, kept, key=_order))
        else:
            services = kubernetes

        def lookup(ref: ServiceRef) -> Service | None:
            return policy.get(ref) or _find(services, ref)

        routes: list[RouteTable] = []
        attached: dict[ServiceRef, RouteTable] = {}
        names: set[str] = set()
        for table in files.routes:
            problems = _route_problems(table, lookup)
            if problems:
                errors += problems
                continue
            routes.append(table)
            names.add(table.name)
            if table.service is not None:
                attached[table.service] = table
        for table in kubernetes_routes:
            if table.service is not None and (other := attached.get(table.service)) is not None:
                errors.append(
                    f"route {table.name} (Kubernetes annotations) and route {other.name} ({other.origin}) both "
                    f"attach to service {table.service}; serving the policy files' route"
                )
                continue
            if table.name in names or _route_problems(table, lookup):
                continue  # its service was dropped in favour of a policy file's: said above
            routes.append(table)

        # Everything else the files say (secrets, sites, cluster domain…) is theirs alone: kept as is.
        self._mesh = dataclasses.replace(files, services=services, routes=tuple(sorted(routes, key=lambda r: r.name)))
        self._inputs = inputs
        self.errors = tuple(errors)
        self._merged_at = time.time()
        return self._mesh


def _order(service: Service) -> tuple[str, str]:
    """Mesh order (as `Mesh.of` sorts): by namespace, then name."""
    return (service.namespace, service.name)


def _find(services: tuple[Service, ...], ref: ServiceRef) -> Service | None:
    """The service `ref` in `services` (in mesh order), by binary search."""
    index = bisect.bisect_left(services, (ref.namespace, ref.name), key=_order)
    if index < len(services) and services[index].namespace == ref.namespace and services[index].name == ref.name:
        return services[index]
    return None


def _route_problems(table: RouteTable, lookup: Callable[[ServiceRef], Service | None]) -> list[str]:
    """What makes `table` unservable against the merged services: unknown services or ports."""
    where = f"route {table.name}" + (f" ({table.origin})" if table.origin else "")
    found = []
    if table.service is not None and lookup(table.service) is None:
        found.append(f"{where}: unknown service {table.service}; route left out")
    for index, rule in enumerate(table.rules):
        for backend in rule.backends:
            target = lookup(backend.service)
            if target is None:
                found.append(f"{where} rule {index + 1}: unknown service {backend.service}; route left out")
                continue
            if backend.port is None and len(target.ports) > 1:
                found.append(f"{where} rule {index + 1}: service {backend.service} has several ports; route left out")
                continue
            port = target.port(backend.port)
            if port is None:
                found.append(f"{where} rule {index + 1}: service {backend.service} has no port {backend.port!r}")
            elif not port.protocol.is_http:
                found.append(f"{where} rule {index + 1}: port {port.name} of {backend.service} is not HTTP")
    return found
