"""The kinds of meshplane's Kubernetes API: their names, plurals, scope, and which policy-file
section each one's `spec` is.

Owns the table every other part walks (the CRD generator, the object reader, the source's watches,
`meshplane convert`). A kind is a `Kind` entry here whose `section` names a section of the policy
format's field table (`meshplane.discovery.policy_fields`), read by that section's reader
(`policy_schema._SPEC_READERS`); the CRD, documents in policy files and the tests holding the reader
to the table follow. Where its content goes in the mesh is the merge's (`inventory.py`). Must not
read or parse anything.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "meshplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# The CRDs' category: `kubectl get meshplane` lists every object of these kinds.
CATEGORY = "meshplane"


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind. `section`: the policy-file section its `spec` holds (keys spelled as in the files);
    `metadata_keys`: the section's keys that metadata stands for ("name" and "namespace" for
    metadata.name and .namespace, "id" for metadata.name), which its spec must not hold;
    `short_names`: for kubectl."""

    name: str
    plural: str
    namespaced: bool
    section: str = ""
    metadata_keys: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()

    @property
    def singular(self) -> str:
        return self.name.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.name}List"


EXTERNAL_SERVICE = "ExternalService"
TRAFFIC_POLICY = "TrafficPolicy"
MESH_ROUTE = "MeshRoute"
EDGE_SITE = "EdgeSite"
MESH_TELEMETRY = "MeshTelemetry"
DEVICE_POLICY = "DevicePolicy"

KINDS: tuple[Kind, ...] = (
    Kind(EXTERNAL_SERVICE, "externalservices", True, "service", ("name", "namespace"), ("mpes",)),
    Kind(TRAFFIC_POLICY, "trafficpolicies", True, "traffic_policy", (), ("mptp",)),
    Kind(MESH_ROUTE, "meshroutes", True, "route", ("name",), ("mpr",)),
    Kind(EDGE_SITE, "edgesites", False, "site", ("id",), ("mpsite",)),
    Kind(MESH_TELEMETRY, "meshtelemetries", True, "telemetry", (), ("mptel",)),
    # Cluster-scoped, as EdgeSite: it selects sites and device classes, which belong to no namespace,
    # and what the devices of a site may reach is the operator's word, not a tenant's.
    Kind(DEVICE_POLICY, "devicepolicies", False, "device_policy", ("name",), ("mpdp",)),
)
_BY_NAME = {kind.name: kind for kind in KINDS}


def kind_named(name: str) -> Kind | None:
    """The kind called `name` (as in an object's `kind`), or None."""
    return _BY_NAME.get(name)
