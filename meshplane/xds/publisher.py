"""Turns the current mesh into a snapshot for every proxy group that has a stream.

Owns the step from model to cache: translate, serialise, check consistency, publish. It shares
work where the output is the same: clusters, listeners, routes and secrets depend on a group's
role and listener port only, so they are translated and serialised once per (role, port) and
shared by every locality's snapshot; only endpoints are per locality. When a new mesh differs
from the last only in endpoints, only endpoints are translated again (the fast path that keeps
endpoint churn cheap, as Contour and Istio found they must), and only those of the services that
changed: a service whose `Service` object is the same as in the last mesh (sources reuse the
objects they did not change) keeps its serialised assignments, so one endpoint changed costs one
assignment translated and serialised per group, whatever the size of the mesh.

Never publishes a snapshot that fails `consistency_problems()`; the problems are kept for the
status endpoint and the last good snapshot keeps serving.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from meshplane.model import Locality, Mesh, ProxyGroup, Service, ServiceRef
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.snapshot import Resource, Snapshot, TypeResources
from meshplane.xds.translate import translate, translate_service_endpoints
from meshplane.xds.types import TypeUrl

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublishState:
    """What the last publication did, for the status endpoint."""

    published_at: float | None = None
    mesh_generation: int = 0
    endpoints_only: bool = False
    duration_seconds: float = 0.0
    groups: int = 0
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


_MESH_FIELDS = tuple(f.name for f in dataclasses.fields(Mesh) if f.name != "services")
_SERVICE_FIELDS = tuple(f.name for f in dataclasses.fields(Service) if f.name != "endpoints")


def endpoint_changes(old: Mesh | None, new: Mesh) -> list[Service] | None:
    """The services of `new` whose endpoints changed, when nothing but endpoints changed; else None.

    Cost: one identity check per service, plus a field comparison for the services that are not
    the same object as before (all of them when a source rebuilds every object; then this is as
    dear as comparing the meshes, which it replaces).
    """
    if old is None or len(old.services) != len(new.services):
        return None
    for name in _MESH_FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        if before is not after and before != after:
            return None
    changed = []
    for before, after in zip(old.services, new.services, strict=True):
        if before is after:
            continue
        for name in _SERVICE_FIELDS:
            if getattr(before, name) != getattr(after, name):
                return None
        if before.endpoints != after.endpoints:
            changed.append(after)
    return changed


def _base_key(group: ProxyGroup) -> ProxyGroup:
    return dataclasses.replace(group, locality=Locality())


class SnapshotPublisher:
    """Publishes `Mesh` → snapshots into a `SnapshotCache`; builds a new group's at once when asked."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self._mesh: Mesh | None = None
        # Per (role, port) group: CDS/LDS/RDS/SDS of the current topology, shared by every locality.
        self._bases: dict[ProxyGroup, Snapshot] = {}
        # Per (role, port) group and locality: EDS of the current mesh, and each service's share of
        # it (with the Service it was translated from, to reuse while that object is unchanged).
        self._endpoints: dict[tuple[ProxyGroup, Locality], TypeResources] = {}
        self._by_service: dict[tuple[ProxyGroup, Locality], dict[ServiceRef, tuple[Service, tuple[Resource, ...]]]] = {}
        self._warnings: dict[ProxyGroup, tuple[str, ...]] = {}
        self.state = PublishState()
        cache.on_group_wanted = self._on_group_wanted

    @property
    def has_mesh(self) -> bool:
        return self._mesh is not None

    def publish(self, mesh: Mesh) -> None:
        """Makes `mesh` current for every group with streams; groups whose content is unchanged see nothing."""
        started = time.perf_counter()
        changed = endpoint_changes(self._mesh, mesh)
        endpoints_only = changed is not None
        groups = self._cache.groups()
        if changed is not None:
            self._update_endpoints(changed, groups)
        else:
            self._endpoints.clear()
            self._bases.clear()
            self._warnings.clear()
            refs = {service.ref for service in mesh.services}
            for shares in self._by_service.values():
                for ref in [ref for ref in shares if ref not in refs]:
                    del shares[ref]
        kept = set(self._endpoints)
        self._mesh = mesh
        problems: list[str] = []
        for group in groups:
            # Assignments replaced by name in a consistent snapshot cannot make it inconsistent.
            # (Still held: a group of the same base that failed its check just now dropped it.)
            key = (_base_key(group), group.locality)
            fast = endpoints_only and key in kept and key in self._endpoints
            problems += self._publish_group(group, check=not fast)
        warnings = sorted({w for found in self._warnings.values() for w in found})
        self.state = PublishState(
            published_at=time.time(),
            mesh_generation=self.state.mesh_generation + 1,
            endpoints_only=endpoints_only,
            duration_seconds=time.perf_counter() - started,
            groups=len(groups),
            problems=tuple(problems),
            warnings=tuple(warnings),
        )
        log.info(
            "published mesh generation %d to %d groups in %.1f ms%s",
            self.state.mesh_generation,
            len(groups),
            self.state.duration_seconds * 1000,
            " (endpoints only)" if endpoints_only else "",
        )

    def snapshot_for(self, group: ProxyGroup) -> Snapshot | None:
        """What a proxy of `group` would get now, whether or not one is connected (for config dumps)."""
        if self._mesh is None:
            return None
        return self._build(group)

    def _on_group_wanted(self, group: ProxyGroup) -> None:
        if self._mesh is not None:
            self._publish_group(group)

    def _update_endpoints(self, changed: list[Service], groups: list[ProxyGroup]) -> None:
        """The endpoint fast path: replaces the assignments of `changed` services in every EDS set
        still wanted; the others keep their Resource objects (and serialised bytes)."""
        wanted = {(_base_key(group), group.locality) for group in groups}
        for key in list(self._endpoints):
            if key not in wanted:  # no stream left in that group: rebuilt whole if one comes back
                del self._endpoints[key]
        for key in [key for key in self._by_service if key not in wanted]:
            del self._by_service[key]
        for base_key in {key for key, _ in wanted}:
            if base_key.role.is_edge:
                # Edge roles embed endpoints in their clusters (STATIC for devices): no fast path.
                self._bases.pop(base_key, None)
                self._warnings.pop(base_key, None)
                for key in [key for key in self._endpoints if key[0] == base_key]:
                    del self._endpoints[key]
        for key, current in list(self._endpoints.items()):
            replaced = [resource for service in changed for resource in self._service_endpoints(key, service)]
            try:
                self._endpoints[key] = current.replacing(replaced)
            except KeyError:  # a name the set did not have: translate the group's endpoints whole
                del self._endpoints[key]

    def _service_endpoints(self, key: tuple[ProxyGroup, Locality], service: Service) -> tuple[Resource, ...]:
        """`service`'s share of the EDS of `key`, serialised; reused while the Service object is the same."""
        shares = self._by_service.setdefault(key, {})
        found = shares.get(service.ref)
        if found is not None and found[0] is service:
            return found[1]
        group = dataclasses.replace(key[0], locality=key[1])
        resources = tuple(
            Resource.of(TypeUrl.ENDPOINT, cla.cluster_name, cla) for cla in translate_service_endpoints(service, group)
        )
        shares[service.ref] = (service, resources)
        return resources

    def _publish_group(self, group: ProxyGroup, check: bool = True) -> list[str]:
        """Builds and publishes `group`'s snapshot. `check=False` skips the consistency check: only
        for an endpoint-only change, which replaces assignments by name and so cannot break it."""
        try:
            snapshot = self._build(group)
        except Exception as error:  # a translator bug must not take the server down; keep serving
            log.exception("translation failed for group %s", group)
            return [f"group {group}: translation failed: {error}"]
        problems = snapshot.consistency_problems() if check else []
        if problems:
            log.error("not publishing an inconsistent snapshot for group %s: %s", group, problems)
            # The endpoint fast path skips the check; it must not take this base as good: forget
            # its endpoint sets, so the next change is built and checked whole.
            base_key = _base_key(group)
            for key in [key for key in self._endpoints if key[0] == base_key]:
                del self._endpoints[key]
            return [f"group {group}: {problem}" for problem in problems]
        self._cache.set_snapshot(group, snapshot)
        return []

    def _build(self, group: ProxyGroup) -> Snapshot:
        assert self._mesh is not None
        key = _base_key(group)
        base = self._bases.get(key)
        if base is None:
            translation = translate(self._mesh, key)
            base = self._bases[key] = Snapshot.of(translation.resources)
            self._warnings[key] = translation.warnings
            self._endpoints[(key, Locality())] = base.of_type(TypeUrl.ENDPOINT)
        endpoints = self._endpoints.get((key, group.locality))
        if endpoints is None:
            shares = [self._service_endpoints((key, group.locality), service) for service in self._mesh.services]
            endpoints = TypeResources.of(TypeUrl.ENDPOINT, (resource for share in shares for resource in share))
            self._endpoints[(key, group.locality)] = endpoints
        if endpoints is base.of_type(TypeUrl.ENDPOINT):
            return base
        return base.with_type(endpoints)
