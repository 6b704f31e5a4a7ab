"""Turns the current mesh into a snapshot for every proxy group that has a stream.

Owns the step from model to cache: translate, serialise, check consistency, publish. It shares
work where the output is the same: clusters, listeners, routes and secrets depend on a group's
role and listener port only, so they are translated and serialised once per (role, port) and
shared by every locality's snapshot; only endpoints are per locality.

What to rebuild is decided from data, not from roles: a publication comes with `MeshChanges` (the
parts of the mesh that differ from the last one, as the sources and the merge reported them), each
role's translator declares the parts it reads (`translate.Dependencies`), and a group is
translated again only when a change reaches a part its role reads. A change of endpoints alone,
for a role that gets them over EDS, replaces the assignments of the services that changed and
nothing else (the fast path that keeps endpoint churn cheap, as Contour and Istio found they
must); a device registration rebuilds the groups of roles that read devices (edge gateways) and
leaves every sidecar's snapshot as it was. A change that reaches a role but neither the services
nor their endpoints (a Gateway's routes) translates its groups again and keeps each locality's
endpoints, which are a function of the services alone.

Builds happen in two places only, both outside any stream: `publish` (called by the debounced
rebuild) and `run` (a loop building the groups streams asked for and the cache did not have, which
the cache reports through `on_group_wanted` without waiting for it). `snapshot_for` builds a
preview for the status endpoint and writes nothing: not the memo, not the cache.

Each publication that changes something (and the first) is a generation, recorded in `changes`
(a `ChangeLog`, read by the status endpoint's `/changes`): its cause, when its change was first
observed (as the caller says), and the snapshot version of every group it rebuilt or whose
endpoints it replaced.

Never publishes a snapshot that fails `consistency_problems()`; the problems are kept for the
status endpoint and the last good snapshot keeps serving. The check skips the parts a snapshot
shares, as the very same sets, with one already published (the group's last, or the last of any
group): a route change looks at the listeners, not again at every cluster.

Groups translated from the same mesh share whole sets where their translators hand back the same
messages (every Gateway's proxy gets the same clusters, endpoints and secrets): `Snapshot.of` takes
them from the bases already built, so such a set is serialised and versioned once, not per group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time

from meshplane.model import Locality, Mesh, ProxyGroup, Service, ServiceRef
from meshplane.model.changes import PARTS, MeshChanges
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import MAX_NAMED_SERVICES, Cause, ChangeLog, Generation, Instant, PublishState
from meshplane.xds.snapshot import Resource, Snapshot, TypeResources
from meshplane.xds.translate import Dependencies, dependencies, translate, translate_service_endpoints
from meshplane.xds.types import TypeUrl

log = logging.getLogger(__name__)


class Reach(enum.Enum):
    """How far `MeshChanges` reach into the config of one role."""

    NONE = "none"  # nothing the role reads changed: its snapshots stay as they are
    ENDPOINTS = "endpoints"  # only EDS assignments of some services: replace those
    ALL = "all"  # translate again


def reach(changes: MeshChanges, depends: Dependencies) -> Reach:
    """Which rebuild `changes` call for in a role that reads what `depends` says."""
    if any(getattr(changes, part) and getattr(depends, part) for part in PARTS):
        return Reach.ALL
    if changes.endpoints and depends.endpoints:
        return Reach.ENDPOINTS if depends.eds else Reach.ALL
    return Reach.NONE


def _base_key(group: ProxyGroup) -> ProxyGroup:
    return dataclasses.replace(group, locality=Locality())


def build_snapshot(mesh: Mesh, group: ProxyGroup) -> tuple[Snapshot, tuple[str, ...]]:
    """What a proxy of `group` gets from `mesh`, and the translation's warnings: a pure function.

    The publisher's memo holds results of this function, assembled the same way (the base of the
    group's (role, port), its locality's endpoints from each service's share), so a preview built
    here equals what a connected proxy of the group is sent.
    """
    key = _base_key(group)
    translation = translate(mesh, key)
    base = Snapshot.of(translation.resources)
    if group.locality == key.locality:
        return base, translation.warnings
    endpoints = TypeResources.of(
        TypeUrl.ENDPOINT,
        (
            Resource.of(TypeUrl.ENDPOINT, cla.cluster_name, cla)
            for service in mesh.services
            for cla in translate_service_endpoints(service, group)
        ),
    )
    return base.with_type(endpoints), translation.warnings


_EndpointKey = tuple[ProxyGroup, Locality]


class SnapshotPublisher:
    """Publishes `Mesh` → snapshots into a `SnapshotCache`, and builds the groups streams ask for.

    Run `run()` as a task: it builds, outside the stream that asked, the snapshot of a group a
    stream subscribed to before the cache had one; it ends only when cancelled. `publish` and
    `build_wanted` must be called on the event loop's thread (they share the memo); `snapshot_for`
    may be called from any thread. `changes`: the change log to record generations in (the stream
    registry notes ACKs in the same one); a new one when not given.
    """

    def __init__(self, cache: SnapshotCache, changes: ChangeLog | None = None) -> None:
        self._cache = cache
        self._mesh: Mesh | None = None
        self._generation = 0
        # The memo: parts of `build_snapshot(self._mesh, group)`, so of the current mesh generation
        # only (what `MeshChanges` reach is dropped or replaced as each mesh comes), and only for groups
        # with streams (the others are dropped at each publication and each build pass): its size
        # is bounded by the groups served, whatever previews or past groups asked. Per (role, port)
        # group, CDS/LDS/RDS/SDS shared by every locality; per (role, port) group and locality,
        # EDS, and each service's share of it (with the Service it was translated from, reused
        # while that object is unchanged).
        self._bases: dict[ProxyGroup, Snapshot] = {}
        # Bases a change reached, until translated again: what they share with the new one (the
        # messages a translator hands back unchanged) is not serialised again (`Snapshot.of`).
        self._replaced: dict[ProxyGroup, Snapshot] = {}
        self._endpoints: dict[_EndpointKey, TypeResources] = {}
        self._by_service: dict[_EndpointKey, dict[ServiceRef, tuple[Service, tuple[Resource, ...]]]] = {}
        self._warnings: dict[ProxyGroup, tuple[str, ...]] = {}
        # Per group: why its last build was not published (kept until the group is built again).
        self._problems: dict[ProxyGroup, list[str]] = {}
        # Per group: the snapshot this publisher last published for it, and the last it published
        # for any group: both consistent, so what a new snapshot shares with them is not checked again.
        self._published: dict[ProxyGroup, Snapshot] = {}
        self._last_published: Snapshot | None = None
        # Groups a stream wants that the cache has no snapshot for: built by `run`.
        self._wanted: set[ProxyGroup] = set()
        self._wanted_event = asyncio.Event()
        self.state = PublishState()
        self.changes = changes if changes is not None else ChangeLog()
        # Groups the last publication translated again (whole or their endpoints); the others kept theirs.
        self.rebuilt = 0
        cache.on_group_wanted = self._on_group_wanted

    @property
    def has_mesh(self) -> bool:
        return self._mesh is not None

    def publish(
        self,
        mesh: Mesh,
        changes: MeshChanges | None = None,
        cause: Cause | None = None,
        changed: Instant | None = None,
    ) -> None:
        """Makes `mesh` current for every group with streams; groups whose content is unchanged see nothing.

        `changes`: what differs from the last published mesh, as the sources and the merge said
        (it may say more than changed, never less); None: found by comparing the meshes
        (`MeshChanges.between`). Groups whose role reads none of it are not translated again.
        `cause`: why, for the generation's record in `changes` (no source named when None);
        `changed`: when the change was first observed, for the same record (None: now).
        """
        started = time.perf_counter()
        if self._mesh is None:
            changes = MeshChanges.everything()
        elif changes is None:
            changes = MeshChanges.between(self._mesh, mesh)
        groups = self._cache.groups()
        self._forget_unwanted(groups)
        reaches = {key: reach(changes, dependencies(key.role)) for key in {_base_key(group) for group in groups}}
        self._mesh = mesh
        self._generation += 1
        self._wanted.clear()  # every group with a stream is looked at below
        fast = self._apply(changes, reaches, mesh)
        rebuilt = 0
        affected: dict[ProxyGroup, Snapshot] = {}
        for group in groups:
            key = _base_key(group)
            if reaches[key] is Reach.NONE and (self._cache.snapshot(group) is not None or group in self._problems):
                continue  # nothing it reads changed: its snapshot (or its problems) stand
            rebuilt += 1
            # Assignments replaced by name in a consistent snapshot cannot make it inconsistent.
            # (Not when that base failed its check just now: then its endpoint sets are gone.)
            check = not ((key, group.locality) in fast and (key, group.locality) in self._endpoints)
            self._publish_group(group, check=check)
            snapshot = self._cache.snapshot(group)
            if snapshot is not None and group not in self._problems:
                affected[group] = snapshot
        if self._generation == 1 or not changes.none:
            self._record_generation(changes, cause or Cause(), affected, changed)
        self.rebuilt = rebuilt
        self.state = PublishState(
            published_at=time.time(),
            mesh_generation=self._generation,
            endpoints_only=changes.endpoints_only,
            duration_seconds=time.perf_counter() - started,
            groups=len(groups),
            problems=tuple(problem for group in groups for problem in self._problems.get(group, ())),
            warnings=tuple(sorted({w for found in self._warnings.values() for w in found})),
        )
        log.info(
            "published mesh generation %d: %d of %d groups rebuilt in %.1f ms%s",
            self._generation,
            rebuilt,
            len(groups),
            self.state.duration_seconds * 1000,
            " (endpoints only)" if self.state.endpoints_only else "",
        )

    def _record_generation(
        self, changes: MeshChanges, cause: Cause, affected: dict[ProxyGroup, Snapshot], changed: Instant | None
    ) -> None:
        parts = [part for part in PARTS if getattr(changes, part)]
        if changes.endpoints:
            parts.append("endpoints")
        services = sorted(str(ref) for ref in changes.endpoints)
        generation = Generation(
            number=self._generation,
            published_at=time.time(),
            cause=cause,
            parts=tuple(parts),
            services=tuple(services[:MAX_NAMED_SERVICES]),
            services_changed=len(services),
            groups={group: snapshot.version for group, snapshot in affected.items()},
            changed=changed,
        )
        versions = {
            group: {str(type_url): snapshot.of_type(type_url).version for type_url in TypeUrl}
            for group, snapshot in affected.items()
        }
        self.changes.record(generation, versions)

    def snapshot_for(self, group: ProxyGroup) -> Snapshot | None:
        """What a proxy of `group` would get now, whether or not one is connected (for config dumps).

        A preview: built whole from the current mesh, stored nowhere (neither the memo nor the
        cache), so any number of distinct queries leave both as they were. None before a mesh.
        Safe to call from another thread (it reads the current mesh once; the mesh is immutable).
        """
        mesh = self._mesh
        if mesh is None:
            return None
        return build_snapshot(mesh, group)[0]

    def memo_size(self) -> int:
        """Entries the memo holds (bases and endpoint sets): bounded by the groups with streams."""
        return len(self._bases) + len(self._endpoints)

    async def run(self) -> None:
        """Builds each group a stream wants and the cache lacks, soon after the stream subscribed
        (the stream is woken by the cache when the snapshot is set). Ends only when cancelled."""
        while True:
            await self._wanted_event.wait()
            self._wanted_event.clear()
            self.build_wanted()

    def build_wanted(self) -> None:
        """One pass of `run`: builds and publishes every wanted group still without a snapshot."""
        wanted, self._wanted = self._wanted, set()
        if self._mesh is None:
            return  # the first publication builds every group with a stream
        self._forget_unwanted(self._cache.groups())  # streams that left: the memo stays bounded
        for group in sorted(wanted):
            if self._cache.lacks_snapshot(group):
                self._publish_group(group)

    def _on_group_wanted(self, group: ProxyGroup) -> None:
        # Called inside a stream's attach: note it, build later (`run`), never here.
        self._wanted.add(group)
        self._wanted_event.set()

    def _forget_unwanted(self, groups: list[ProxyGroup]) -> None:
        """Drops the memo of groups no stream wants any more: rebuilt whole if one comes back."""
        bases = {_base_key(group) for group in groups}
        wanted = {(_base_key(group), group.locality) for group in groups}
        for key in [key for key in self._bases if key not in bases]:
            del self._bases[key]
        for key in [key for key in self._replaced if key not in bases]:
            del self._replaced[key]
            self._warnings.pop(key, None)
        for endpoint_key in [k for k in self._endpoints if k not in wanted]:
            del self._endpoints[endpoint_key]
        for endpoint_key in [k for k in self._by_service if k not in wanted]:
            del self._by_service[endpoint_key]
        kept = set(groups)
        for group in [group for group in self._problems if group not in kept]:
            del self._problems[group]
        for group in [group for group in self._published if group not in kept]:
            del self._published[group]

    def _apply(self, changes: MeshChanges, reaches: dict[ProxyGroup, Reach], mesh: Mesh) -> set[_EndpointKey]:
        """Brings the memo to `mesh`: forgets what a change reaches whole, replaces the assignments
        of the services whose endpoints changed where that is all that changed. Returns the
        endpoint sets updated that way (which need no new consistency check)."""
        if changes.services:
            # Services gone: their shares go too (the others stay, reused while unchanged).
            refs = {service.ref for service in mesh.services}
            for shares in self._by_service.values():
                for ref in [ref for ref in shares if ref not in refs]:
                    del shares[ref]
        # A locality's endpoints are its services' shares (`translate_service_endpoints`), a function
        # of the services alone: a change of anything else (a route of a Gateway) leaves them good.
        endpoints_stand = not changes.services and not changes.endpoints
        for key, found in reaches.items():
            if found is Reach.ALL:
                if (old_base := self._bases.pop(key, None)) is not None:
                    self._replaced[key] = old_base
                self._warnings.pop(key, None)
                for endpoint_key in [k for k in self._endpoints if k[0] == key and not endpoints_stand]:
                    del self._endpoints[endpoint_key]
        # (Not a walk of every service for a change that names none: `ref` builds a value each time.)
        services = (
            [service for service in mesh.services if service.ref in changes.endpoints] if changes.endpoints else []
        )
        fast: set[_EndpointKey] = set()
        for endpoint_key, current in list(self._endpoints.items()):
            if reaches.get(endpoint_key[0]) is not Reach.ENDPOINTS:
                continue
            replaced = [r for service in services for r in self._service_endpoints(endpoint_key, service)]
            try:
                self._endpoints[endpoint_key] = current.replacing(replaced)
                fast.add(endpoint_key)
            except KeyError:  # a name the set did not have: translate the group's endpoints whole
                del self._endpoints[endpoint_key]
        return fast

    def _service_endpoints(self, key: _EndpointKey, service: Service) -> tuple[Resource, ...]:
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

    def _publish_group(self, group: ProxyGroup, check: bool = True) -> None:
        """Builds and publishes `group`'s snapshot, or records why not (`self._problems`).
        `check=False` skips the consistency check: only for assignments replaced by name."""
        self._problems.pop(group, None)
        try:
            snapshot = self._build(group)
        except Exception as error:  # a translator bug must not take the server down; keep serving
            log.exception("translation failed for group %s", group)
            self._problems[group] = [f"group {group}: translation failed: {error}"]
            return
        passed = [found for found in (self._published.get(group), self._last_published) if found is not None]
        problems = snapshot.consistency_problems(passed) if check else []
        if problems:
            log.error("not publishing an inconsistent snapshot for group %s: %s", group, problems)
            # The endpoint fast path skips the check; it must not take this base as good: forget
            # its endpoint sets, so the next change is built and checked whole.
            base_key = _base_key(group)
            for key in [key for key in self._endpoints if key[0] == base_key]:
                del self._endpoints[key]
            self._problems[group] = [f"group {group}: {problem}" for problem in problems]
            return
        self._cache.set_snapshot(group, snapshot)
        self._published[group] = self._last_published = snapshot

    def _build(self, group: ProxyGroup) -> Snapshot:
        """`build_snapshot(self._mesh, group)`, from the memo where it has the parts."""
        assert self._mesh is not None
        key = _base_key(group)
        base = self._bases.get(key)
        if base is None:
            translation = translate(self._mesh, key)
            # The other bases: what this one shares with them (as the very messages) is not made again.
            shared = list(self._bases.values())
            base = self._bases[key] = Snapshot.of(translation.resources, self._replaced.pop(key, None), shared)
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
