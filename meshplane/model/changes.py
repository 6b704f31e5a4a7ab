"""What differs between one mesh and the next: the change set that travels with every update.

Owns `MeshChanges`, and `DeviceChanges` (the edge registry's own change set: which devices).
Sources say what they changed (the Kubernetes source knows which Services and
EndpointSlices moved, the policy files which documents), the merge adds what its own decisions
changed, and the publisher rebuilds only the proxy groups whose role reads a changed part
(`meshplane.xds.translate.Dependencies` names the same parts). `MeshChanges.between` finds the
same by comparing two meshes by value: the reference the reported sets are tested against, and
what a source uses when it rebuilt its whole content anyway. Pure data; no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from meshplane.model.mesh import Mesh
from meshplane.model.services import Service, ServiceRef


@dataclass(frozen=True, slots=True)
class MeshChanges:
    """What differs between a mesh and the one before it, by part.

    `services`: a service added, removed or changed beyond its endpoints, or the cluster domain;
    `endpoints`: the services whose endpoints changed (when `services` is False, nothing else of
    them did); `routes`: the route tables; `secrets`: certificates or trust bundles; `sites`: the
    edge sites, the device trust and the device policies (all read by edge gateways only);
    `devices`: the admitted devices; `telemetry`: access logs, tracing, collectors and their
    per-rule overrides (the listeners and routes of every role that takes telemetry);
    `gateways`: the Kubernetes Gateways and the routes resolved onto them.
    `policy_objects`: a source's flag for the merge: some object of meshplane's own Kubernetes API
    (meshplane.io) changed, so the merge resolves them again and reports what that did to the mesh
    by part. It is not one of `PARTS`: no proxy reads objects, only the mesh (a merged change set
    carries it only as part of `everything()`).
    `MeshChanges()` is no change at all.

    A change set may say more than changed (a part marked that turns out equal costs a rebuild),
    never less: a part that differs and is not marked would leave proxies on old config.
    """

    services: bool = False
    endpoints: frozenset[ServiceRef] = frozenset()
    routes: bool = False
    secrets: bool = False
    sites: bool = False
    devices: bool = False
    telemetry: bool = False
    gateways: bool = False
    policy_objects: bool = False

    @staticmethod
    def everything() -> MeshChanges:
        """A first mesh, or one whose differences are not known: everything is rebuilt."""
        return MeshChanges(
            services=True,
            routes=True,
            secrets=True,
            sites=True,
            devices=True,
            telemetry=True,
            gateways=True,
            policy_objects=True,
        )

    @property
    def none(self) -> bool:
        return self == _NONE

    @property
    def endpoints_only(self) -> bool:
        """Only some services' endpoints changed (the publisher's fast path)."""
        return bool(self.endpoints) and not self.policy_objects and not any(getattr(self, part) for part in PARTS)

    def __or__(self, other: MeshChanges) -> MeshChanges:
        """Everything either says changed (two updates folded into one)."""
        return MeshChanges(
            services=self.services or other.services,
            endpoints=self.endpoints | other.endpoints,
            routes=self.routes or other.routes,
            secrets=self.secrets or other.secrets,
            sites=self.sites or other.sites,
            devices=self.devices or other.devices,
            telemetry=self.telemetry or other.telemetry,
            gateways=self.gateways or other.gateways,
            policy_objects=self.policy_objects or other.policy_objects,
        )

    def covers(self, other: MeshChanges) -> bool:
        """Whether this set says at least what `other` says (a part marked in `other` is marked
        here; an endpoint change is covered by its ref or by `services`)."""
        if any(getattr(other, part) and not getattr(self, part) for part in PARTS):
            return False
        if other.policy_objects and not self.policy_objects:
            return False
        return self.services or other.endpoints <= self.endpoints

    @staticmethod
    def between(old: Mesh | None, new: Mesh) -> MeshChanges:
        """What differs from `old` to `new`, found by value. Costs one comparison per part, and per
        service where the services differ: cheap where the same objects were kept (equal tuples of
        the same elements compare by identity first), as dear as comparing the meshes elsewhere."""
        if old is None:
            return MeshChanges.everything()
        parts: dict[str, bool] = {}
        for name in _MESH_FIELDS:
            before, after = getattr(old, name), getattr(new, name)
            if before is not after and before != after:
                parts[_PART_OF_FIELD.get(name, "services")] = True  # a field not mapped: assume the worst
        changed = _endpoint_changes(old.services, new.services)
        if changed is None:
            parts["services"] = True
            changed = frozenset()
        return MeshChanges(endpoints=changed, **parts)


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """Which live edge devices differ from what the registry's previous `take_changes()` saw.

    `ids`: devices registered, changed by a re-registration, deregistered or expired (look each up
    in the registry: absent means it is gone). A renewal, or a re-registration that leaves the
    device as it was, is not a change. `everything`: the changes are not known one by one (nothing
    was taken yet, the store was loaded, or more changed than there are devices): treat every
    device as changed, and `ids` as empty."""

    ids: frozenset[str] = frozenset()
    everything: bool = False

    @property
    def none(self) -> bool:
        return not self.ids and not self.everything


_NONE = MeshChanges()
# The parts marked by a flag (`endpoints` is a set of services, apart).
PARTS = ("services", "routes", "secrets", "sites", "devices", "telemetry", "gateways")
# Mesh fields beyond `services`, and the part each one is.
_PART_OF_FIELD = {
    "routes": "routes",
    "certificates": "secrets",
    "trust_bundles": "secrets",
    "cluster_domain": "services",
    "sites": "sites",
    "devices": "devices",
    "telemetry": "telemetry",
    "gateways": "gateways",
    "device_trust": "sites",  # read, like the sites, by the edge gateways only
    "device_policies": "sites",  # the same
}
_MESH_FIELDS = tuple(f.name for f in dataclasses.fields(Mesh) if f.name != "services")
_SERVICE_FIELDS = tuple(f.name for f in dataclasses.fields(Service) if f.name != "endpoints")


def service_changes(old: Service | None, new: Service | None) -> MeshChanges:
    """What replacing `old` by `new` (None: absent) changes: nothing, its endpoints, or the services."""
    if old is new:
        return _NONE
    if old is None or new is None or not only_endpoints_differ(old, new):
        return MeshChanges(services=True)
    return MeshChanges(endpoints=frozenset({new.ref})) if old.endpoints != new.endpoints else _NONE


def only_endpoints_differ(old: Service, new: Service) -> bool:
    """Whether `old` and `new` are equal but for their endpoints."""
    return all(getattr(old, name) == getattr(new, name) for name in _SERVICE_FIELDS)


def _endpoint_changes(old: tuple[Service, ...], new: tuple[Service, ...]) -> frozenset[ServiceRef] | None:
    """The services whose endpoints differ, when nothing else of the services does; else None."""
    if old is new:
        return frozenset()
    if len(old) != len(new):
        return None
    changed = []
    for before, after in zip(old, new, strict=True):
        if before is after:
            continue
        if not only_endpoints_differ(before, after):
            return None
        if before.endpoints != after.endpoints:
            changed.append(after.ref)
    return frozenset(changed)
