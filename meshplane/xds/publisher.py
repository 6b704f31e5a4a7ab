"""Turns the current mesh into a snapshot for every proxy group that has a stream.

Owns the step from model to cache: translate, serialise, check consistency, publish. It shares
work where the output is the same: clusters, listeners, routes and secrets depend on a group's
role and listener port only, so they are translated and serialised once per (role, port) and
shared by every locality's snapshot; only endpoints are per locality. When a new mesh differs
from the last only in endpoints, only endpoints are translated again (the fast path that keeps
endpoint churn cheap, as Contour and Istio found they must).

Never publishes a snapshot that fails `consistency_problems()`; the problems are kept for the
status endpoint and the last good snapshot keeps serving.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from meshplane.model import Locality, Mesh, ProxyGroup
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.snapshot import Resource, Snapshot, TypeResources
from meshplane.xds.translate import translate, translate_endpoints
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


def _topology(mesh: Mesh) -> Mesh:
    """The mesh without endpoints: equal topologies mean only endpoints changed."""
    return dataclasses.replace(
        mesh, services=tuple(dataclasses.replace(service, endpoints=()) for service in mesh.services)
    )


def _base_key(group: ProxyGroup) -> ProxyGroup:
    return dataclasses.replace(group, locality=Locality())


class SnapshotPublisher:
    """Publishes `Mesh` → snapshots into a `SnapshotCache`; builds a new group's at once when asked."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self._mesh: Mesh | None = None
        self._topology: Mesh | None = None
        # Per (role, port) group: CDS/LDS/RDS/SDS of the current topology, shared by every locality.
        self._bases: dict[ProxyGroup, Snapshot] = {}
        # Per (role, port) group and locality: EDS of the current mesh.
        self._endpoints: dict[tuple[ProxyGroup, Locality], TypeResources] = {}
        self._warnings: dict[ProxyGroup, tuple[str, ...]] = {}
        self.state = PublishState()
        cache.on_group_wanted = self._on_group_wanted

    @property
    def has_mesh(self) -> bool:
        return self._mesh is not None

    def publish(self, mesh: Mesh) -> None:
        """Makes `mesh` current for every group with streams; groups whose content is unchanged see nothing."""
        started = time.perf_counter()
        topology = _topology(mesh)
        endpoints_only = self._topology is not None and topology == self._topology
        self._endpoints.clear()
        if not endpoints_only:
            self._bases.clear()
            self._warnings.clear()
        self._mesh, self._topology = mesh, topology
        problems: list[str] = []
        groups = self._cache.groups()
        for group in groups:
            problems += self._publish_group(group)
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

    def _publish_group(self, group: ProxyGroup) -> list[str]:
        try:
            snapshot = self._build(group)
        except Exception as error:  # a translator bug must not take the server down; keep serving
            log.exception("translation failed for group %s", group)
            return [f"group {group}: translation failed: {error}"]
        problems = snapshot.consistency_problems()
        if problems:
            log.error("not publishing an inconsistent snapshot for group %s: %s", group, problems)
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
            translated = translate_endpoints(self._mesh, group)
            endpoints = TypeResources.of(
                TypeUrl.ENDPOINT, (Resource.of(TypeUrl.ENDPOINT, cla.cluster_name, cla) for cla in translated)
            )
            self._endpoints[(key, group.locality)] = endpoints
        if endpoints is base.of_type(TypeUrl.ENDPOINT):
            return base
        return base.with_type(endpoints)
