"""Calls the inventory's merge the way the tests of its precedence rules read best: positionally,
as the policy files' mesh and the Kubernetes source's content, every part reported changed."""

from __future__ import annotations

from collections.abc import Sequence

from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.kubernetes import KubernetesContent
from meshplane.model import Mesh, RouteTable, Service, TlsCertificate, TrustBundle
from meshplane.model.changes import MeshChanges


def merge(
    inventory: Inventory,
    files: Mesh | None,
    services: Sequence[Service] = (),
    routes: Sequence[RouteTable] = (),
    certificates: Sequence[TlsCertificate] = (),
    trust_bundles: Sequence[TrustBundle] = (),
) -> Mesh:
    """The merged mesh of the files' `files` and Kubernetes' services, routes and secrets."""
    kubernetes = KubernetesContent(tuple(services), tuple(routes), tuple(certificates), tuple(trust_bundles))
    return inventory.merge(Contents(files, kubernetes, MeshChanges.everything())).mesh


def errors(inventory: Inventory) -> tuple[str, ...]:
    """The last merge's problems as the inventory's status shows them."""
    return tuple(str(problem) for problem in inventory.problems)
