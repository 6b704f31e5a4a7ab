"""The Gateway API source: GatewayClasses, Gateways, HTTPRoutes, GRPCRoutes, ReferenceGrants and
BackendTLSPolicies watched live (all namespaces), read into typed values; and the status of the
GatewayClasses meshplane owns.

Owns the source's life, on the watches every source of a CRD-defined API shares
(`crd_watching.py`): the client configuration, one `Watcher` per kind, and one per kind's
CustomResourceDefinition to tell a kind that is not installed from a failing one and to read the
CRDs' bundle versions for `SupportedVersion`. A CRD installed or changed wakes every watcher from
its backoff, so the source recovers as soon as the CRDs are installed. Writing GatewayClass status
is `ClassStatusWriter`'s, off the watch callbacks; writing the status of Gateways and routes is
`GatewayStatusWriter`'s (`gateway_writer`), from the status the merge hands it
(`gateway_writer.update`) and `serving`: the listen addresses of the connected gateway Envoys
that took a Gateway's listeners (`namespace/name` → addresses).

ConfigMaps are watched only for BackendTLSPolicies: one watch per ConfigMap a policy's
`caCertificateRefs` names (in the policy's namespace, selected by `metadata.name`), at most
`MAX_CA_CONFIG_MAPS`, started when `content()` reads a policy naming it and stopped when it
reads that none does. So meshplane holds
only those ConfigMaps (not every ConfigMap of the cluster, which may be large and many), at the cost
of a watch each; RBAC must still grant list/watch on configmaps cluster-wide, as the names are not
known in advance. `ca_certificates()` gives their `ca.crt`; a change of one is the change
(`CONFIG_MAP`, key) in the change set. A ConfigMap whose watch has not listed yet is absent.

Namespaces are watched only once a Gateway's listener selects routes' namespaces by label
(`allowedRoutes.namespaces.from: Selector`); from then on their labels are in the content
(`namespace_labels`) and a change of them is in the change set.

Contract: `synced` turns true once every watcher has completed its first list (so never while a
CRD is missing). `content()` returns the objects as an immutable `GatewayApiObjects`, reading
again only the objects that changed since the last call (the mappings of unchanged kinds are the
very ones returned before). `take_changes()` names what changed in that content since its
previous call (the first call: everything). `on_change()` is called synchronously after each
batch that changes the content once synced (and once at the sync); keep it cheap. `run()` ends
only by cancellation.

An update that changes only what no parser reads (`same_content`: `status`, and the metadata the
API server writes on every write) is no change of the content: it is not read again, not in the
change set and calls no `on_change()`. Every status write, meshplane's own included, comes back
on the watch as such an update; counted as a change, each would cost a merge and a translation of
every gateway group for nothing. The status writers still look at the object again (another
writer may have changed what meshplane owns there).

The content feeds the mesh: `Inventory.merge` resolves it (`resolve.py`) into the Gateways that
gateway proxies serve. Until the source has synced (the CRDs installed, every kind listed) its
content is empty: sidecars do not wait for the Gateway API.

Status: `errors` are what keeps the source from being in sync or its writes from landing (the
configuration, the CRDs not installed, a list or watch failing, a status write failing), cleared
when the API server answers again; `notes` say which objects break the CRDs' rules (at most
`MAX_PROBLEM_NOTES` of them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from meshplane.discovery.crd_watching import CrdWatching, WatchedKind, WatchingCrds
from meshplane.discovery.gateway_api.backend_tls_policies import parse_backend_tls_policy
from meshplane.discovery.gateway_api.class_status import bundle_version_of
from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.grpc_routes import parse_grpc_route
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.objects import (
    BACKEND_TLS_POLICY,
    GATEWAY,
    GATEWAY_CLASS,
    GRPC_ROUTE,
    HTTP_ROUTE,
    NAMESPACE_LABELS,
    REFERENCE_GRANT,
    GatewayApiChanges,
    GatewayApiObjects,
    Key,
)
from meshplane.discovery.gateway_api.reference_grants import parse_reference_grant
from meshplane.discovery.gateway_api.references import GATEWAY_GROUP
from meshplane.discovery.gateway_api.status_writer import ClassStatusWriter, GatewayStatusWriter
from meshplane.discovery.kubernetes import SERVICE_ACCOUNT
from meshplane.discovery.kubernetes_watching import Backoff, Change, Object, Resource, Watcher, key_of
from meshplane.model import SourceStatus

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger(__name__)

SOURCE_NAME = "gateway-api"
MAX_PROBLEM_NOTES = 50
NAMESPACES = Resource("Namespace", "/api/v1", "namespaces")
MAX_LABELS = 64  # per Namespace, read for selectors (a selector names a few)
CONFIG_MAPS = Resource("ConfigMap", "/api/v1", "configmaps")
# The change-set kind of a CA ConfigMap's change (not a Gateway API kind: its content is
# `ca_certificates()`).
CONFIG_MAP = "ConfigMap"
MAX_CA_CONFIG_MAPS = 256  # ConfigMaps watched for BackendTLSPolicies' CA certificates
MAX_CA_CERTIFICATES = 256 * 1024  # bytes of one ConfigMap's ca.crt kept; a larger one is refused
# Metadata the API server writes on every write, status writes included; no parser reads it.
# (`generation` is not among them: it moves with the spec, and the parsers read it.)
SERVER_WRITTEN_METADATA = frozenset({"resourceVersion", "managedFields", "selfLink"})


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind watched: its name, API resource, CRD name and parser."""

    name: str
    resource: Resource
    parse: Callable[[Any], Parsed[Any]]

    @property
    def crd(self) -> str:
        return f"{self.resource.plural}.{GATEWAY_GROUP}"


def _resource(kind: str, plural: str) -> Resource:
    return Resource(kind, f"/apis/{GATEWAY_GROUP}/v1", plural)


KINDS = (
    Kind(GATEWAY_CLASS, _resource(GATEWAY_CLASS, "gatewayclasses"), parse_gateway_class),
    Kind(GATEWAY, _resource(GATEWAY, "gateways"), parse_gateway),
    Kind(HTTP_ROUTE, _resource(HTTP_ROUTE, "httproutes"), parse_http_route),
    Kind(GRPC_ROUTE, _resource(GRPC_ROUTE, "grpcroutes"), parse_grpc_route),
    Kind(REFERENCE_GRANT, _resource(REFERENCE_GRANT, "referencegrants"), parse_reference_grant),
    Kind(BACKEND_TLS_POLICY, _resource(BACKEND_TLS_POLICY, "backendtlspolicies"), parse_backend_tls_policy),
)
CLASSES = KINDS[0]
# The kinds meshplane writes status on beside GatewayClass.
_STATUS_KINDS = (GATEWAY, HTTP_ROUTE, GRPC_ROUTE, BACKEND_TLS_POLICY)


def same_content(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether `new` is `old` but for `status` and `SERVER_WRITTEN_METADATA`: what the parsers
    read (the spec, the name, namespace, generation and creation time, and so that nothing a
    parser may come to read is missed, every other field and all other metadata: labels,
    annotations, uid, finalizers) is equal, so its parsed value is too. Compares values, never
    raises on a malformed object (a non-mapping `metadata` compares as a whole)."""
    if old.keys() - {"status"} != new.keys() - {"status"}:
        return False
    for key, value in new.items():
        if key == "status":
            continue
        before = old[key]
        if key == "metadata" and isinstance(value, Mapping) and isinstance(before, Mapping):
            if before.keys() - SERVER_WRITTEN_METADATA != value.keys() - SERVER_WRITTEN_METADATA:
                return False
            if any(before[name] != field for name, field in value.items() if name not in SERVER_WRITTEN_METADATA):
                return False
        elif before != value:
            return False
    return True


class GatewayApiSource(WatchingCrds):
    """The Gateway API objects of the cluster, and status for the GatewayClasses whose controller
    is `controller_name`. `client` is for tests and embedding; without it the configuration is
    loaded in `run()` (from `kubeconfig`, else as the Kubernetes source loads it). `now` gives the
    conditions' transition times."""

    def __init__(
        self,
        *,
        client: ApiClient | None = None,
        kubeconfig: Path | None = None,
        service_account: Path = SERVICE_ACCOUNT,
        controller_name: str = DEFAULT_CONTROLLER_NAME,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        watch_timeout_seconds: int = 300,
        page_size: int = 500,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        serving: Callable[[str], list[str]] = lambda gateway: [],
    ) -> None:
        self.controller_name = controller_name
        self._on_change = on_change
        self._watching = CrdWatching(
            tuple(WatchedKind(kind.name, kind.resource, kind.crd) for kind in KINDS),
            what="the Gateway API",
            on_objects=self._on_objects,
            on_crds=self._on_crds,
            client=client,
            kubeconfig=kubeconfig,
            service_account=service_account,
            backoff=backoff,
            watch_timeout_seconds=watch_timeout_seconds,
            page_size=page_size,
            rng=rng,
        )
        backoff, rng = self._watching.backoff, self._watching.rng
        self.writer = ClassStatusWriter(
            CLASSES.resource, controller_name, self._class_object, self.bundle_versions,
            backoff=backoff, rng=rng, now=now,
        )  # fmt: skip
        self.gateway_writer = GatewayStatusWriter(
            {kind.name: kind.resource for kind in KINDS if kind.name in _STATUS_KINDS},
            controller_name,
            self._object,
            serving,
            backoff=backoff,
            rng=rng,
            now=now,
        )
        self._synced = False
        self._parsed: dict[str, dict[Key, Parsed[Any]]] = {kind.name: {} for kind in KINDS}
        self._dirty: dict[str, set[Key]] = {kind.name: set() for kind in KINDS}
        self._content = GatewayApiObjects()
        self._changes = GatewayApiChanges(everything=True)
        self._notes: tuple[GatewayApiObjects | None, tuple[str, ...], int] = (None, (), 0)
        # The Namespace watch, started once a listener has a selector (`_namespaces_wanted`).
        self.namespaces: Watcher | None = None
        self._namespaces_wanted = asyncio.Event()
        self._namespaces_dirty = False
        # The CA ConfigMaps' watches (one per ConfigMap named by a BackendTLSPolicy), by key.
        self.config_maps: dict[Key, Watcher] = {}
        self._config_map_tasks: dict[Key, asyncio.Task[None]] = {}
        self._config_maps_wanted = asyncio.Event()
        self._ca_certificates: Mapping[Key, str] | None = MappingProxyType({})

    @property
    def synced(self) -> bool:
        return self._synced

    def bundle_versions(self) -> dict[str, str | None] | None:
        """The installed Gateway API CRDs watched, each with its bundle version (None: it has none);
        None until every CRD watch has listed."""
        installed = self._watching.installed()
        if installed is None:
            return None
        return {kind.crd: bundle_version_of(crd) for kind in KINDS for crd in installed[kind.name].values()}

    def take_changes(self) -> GatewayApiChanges:
        """What changed in `content()` since the previous call (the first call: everything), and
        forgets it: meant for one reader."""
        self.content()
        changes, self._changes = self._changes, GatewayApiChanges()
        return changes

    def content(self) -> GatewayApiObjects:
        """Every object as the watches hold it now, read (see the module contract)."""
        if not any(self._dirty.values()) and not self._namespaces_ready():
            return self._content
        changed: set[tuple[str, Key]] = set()
        replaced: dict[str, Any] = {}
        for kind in KINDS:
            dirty = self._dirty[kind.name]
            if not dirty:
                continue
            parsed = self._parsed[kind.name]
            watcher = self.watchers.get(kind.name)
            for key in dirty:
                obj = watcher.objects.get(key) if watcher is not None else None
                if obj is None:
                    parsed.pop(key, None)
                else:
                    parsed[key] = kind.parse(obj)
                changed.add((kind.name, key))
            dirty.clear()
            replaced[kind.name] = MappingProxyType(dict(sorted(parsed.items())))
        current = self._content
        self._content = GatewayApiObjects(
            gateway_classes=replaced.get(GATEWAY_CLASS, current.gateway_classes),
            gateways=replaced.get(GATEWAY, current.gateways),
            http_routes=replaced.get(HTTP_ROUTE, current.http_routes),
            grpc_routes=replaced.get(GRPC_ROUTE, current.grpc_routes),
            reference_grants=replaced.get(REFERENCE_GRANT, current.reference_grants),
            backend_tls_policies=replaced.get(BACKEND_TLS_POLICY, current.backend_tls_policies),
            namespace_labels=current.namespace_labels,
        )
        if self._namespaces_ready():
            self._namespaces_dirty = False
            self._content = dataclasses.replace(self._content, namespace_labels=self._namespace_labels())
            changed.add((NAMESPACE_LABELS, ("", "")))
        if BACKEND_TLS_POLICY in replaced:
            self._config_maps_wanted.set()
        if GATEWAY in replaced and any(
            listener.allowed_routes.namespaces == "Selector"
            for parsed in self._content.gateways.values()
            for listener in parsed.value.listeners
        ):
            self._namespaces_wanted.set()
        self._changes |= GatewayApiChanges(frozenset(changed))
        return self._content

    def _namespaces_ready(self) -> bool:
        """Whether the Namespaces changed and their watch has listed: their labels are to be read."""
        return self._namespaces_dirty and self.namespaces is not None and self.namespaces.synced

    def _namespace_labels(self) -> Mapping[str, Mapping[str, str]]:
        """Every Namespace's labels (at most `MAX_LABELS` each), by name."""
        assert self.namespaces is not None
        labels: dict[str, Mapping[str, str]] = {}
        for (_, name), obj in sorted(self.namespaces.objects.items()):
            raw = (obj.get("metadata") or {}).get("labels") or {}
            pairs = sorted((k, v) for k, v in raw.items() if isinstance(k, str) and isinstance(v, str))
            labels[name] = MappingProxyType(dict(pairs[:MAX_LABELS]))
        return MappingProxyType(labels)

    @property
    def status(self) -> SourceStatus:
        missing = self.missing_crds()
        errors = self._watching.errors(
            missing,
            f"the Gateway API CRDs are not installed: {', '.join(missing)} not found (install the standard"
            " channel, v1.6.x: kubectl apply --server-side -f"
            " https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.1/standard-install.yaml)",
        )
        errors += [w.last_error for w in self.config_maps.values() if w.last_error]
        errors += [w.last_error for w in (self.writer, self.gateway_writer) if w.last_error]
        content = self.content()
        notes, with_problems = self._notes_of(content)
        counts = {
            "gateway_classes": len(content.gateway_classes),
            "owned_gateway_classes": sum(
                1 for p in content.gateway_classes.values() if p.value.controller_name == self.controller_name
            ),
            "gateways": len(content.gateways),
            "http_routes": len(content.http_routes),
            "grpc_routes": len(content.grpc_routes),
            "reference_grants": len(content.reference_grants),
            "backend_tls_policies": len(content.backend_tls_policies),
            "ca_config_maps": len(self.config_maps),
            "objects_with_problems": with_problems,
        }
        return self._watching.source_status(
            SOURCE_NAME,
            self._synced,
            errors,
            counts,
            {
                "status_writes": self.writer.writes + self.gateway_writer.writes,
                "status_conflicts": self.writer.conflicts + self.gateway_writer.conflicts,
                "status_unchanged": self.writer.skipped + self.gateway_writer.skipped,
            },
            notes,
        )

    def _notes_of(self, content: GatewayApiObjects) -> tuple[tuple[str, ...], int]:
        """The notes for `content` and how many objects have problems: worked out once per content
        (a status request must not walk every object each time)."""
        if self._notes[0] is not content:
            problems = [
                str(problem)
                for kind in KINDS
                for parsed in content.of_kind(kind.name).values()
                for problem in parsed.problems
            ]
            notes = problems[:MAX_PROBLEM_NOTES]
            if len(problems) > MAX_PROBLEM_NOTES:
                notes.append(f"… and {len(problems) - MAX_PROBLEM_NOTES} more problems")
            count = sum(1 for kind in KINDS for parsed in content.of_kind(kind.name).values() if parsed.problems)
            self._notes = (content, tuple(notes), count)
        return self._notes[1], self._notes[2]

    async def run(self) -> None:
        """Load the configuration (retrying with backoff), then watch and write status forever."""
        async with self._watching.connected() as client, asyncio.TaskGroup() as group:
            self._watching.start(group)
            group.create_task(self.writer.run(client))
            group.create_task(self.gateway_writer.run(client))
            group.create_task(self._watch_namespaces(client))
            group.create_task(self._watch_config_maps(client))

    async def _watch_namespaces(self, client: ApiClient) -> None:
        """Watches Namespaces once a listener selects by them; ends only by cancellation."""
        await self._namespaces_wanted.wait()
        self.namespaces = Watcher(client, NAMESPACES, on_change=self._on_namespaces, **self._watching.options)
        await self.namespaces.run()

    def wanted_config_maps(self) -> list[Key]:
        """The ConfigMaps the BackendTLSPolicies' `caCertificateRefs` name (sorted; at most
        `MAX_CA_CONFIG_MAPS`)."""
        wanted = {
            (parsed.value.namespace, ref.name)
            for parsed in self._content.backend_tls_policies.values()
            for ref in parsed.value.ca_certificate_refs
            if ref.group == "" and ref.kind == CONFIG_MAP
        }
        return sorted(wanted)[:MAX_CA_CONFIG_MAPS]

    def ca_certificates(self) -> Mapping[Key, str]:
        """The `ca.crt` of each CA ConfigMap watched and listed, by (namespace, name); one without
        that key (or larger than `MAX_CA_CERTIFICATES`) is absent."""
        if self._ca_certificates is None:
            found: dict[Key, str] = {}
            for key, watcher in sorted(self.config_maps.items()):
                obj = watcher.objects.get(key)
                data = obj.get("data") if obj is not None else None
                text = data.get("ca.crt") if isinstance(data, Mapping) else None
                if isinstance(text, str) and len(text) <= MAX_CA_CERTIFICATES:
                    found[key] = text
            self._ca_certificates = MappingProxyType(found)
        return self._ca_certificates

    async def _watch_config_maps(self, client: ApiClient) -> None:
        """Keeps one watch per wanted CA ConfigMap; ends only by cancellation (stopping them)."""
        try:
            while True:
                await self._config_maps_wanted.wait()
                self._config_maps_wanted.clear()
                wanted = set(self.wanted_config_maps())
                for key in [key for key in self.config_maps if key not in wanted]:
                    self._config_map_tasks.pop(key).cancel()
                    del self.config_maps[key]
                    self._on_config_map(key, [])
                for key in sorted(wanted - set(self.config_maps)):
                    watcher = Watcher(
                        client,
                        CONFIG_MAPS,
                        namespace=key[0],
                        field_selector=f"metadata.name={key[1]}",
                        on_change=functools.partial(self._on_config_map, key),
                        **self._watching.options,
                    )
                    self.config_maps[key] = watcher
                    self._config_map_tasks[key] = asyncio.create_task(watcher.run())
        finally:
            for task in self._config_map_tasks.values():
                task.cancel()
            self._config_map_tasks.clear()

    def _on_config_map(self, key: Key, changes: list[Change]) -> None:
        """A CA ConfigMap changed (or its watch listed, or it is no longer watched)."""
        self._ca_certificates = None
        self._changes |= GatewayApiChanges(frozenset({(CONFIG_MAP, key)}))
        self._changed(True)

    def _on_namespaces(self, changes: list[Change]) -> None:
        if changes:
            self._namespaces_dirty = True
            self._changed(True)

    def _object(self, kind: str, key: Key) -> Object | None:
        watcher = self.watchers.get(kind)
        return watcher.objects.get(key) if watcher is not None else None

    def _class_object(self, name: str) -> Object | None:
        watcher = self.watchers.get(GATEWAY_CLASS)
        return watcher.objects.get(("", name)) if watcher is not None else None

    def _on_crds(self, changes: list[Change]) -> None:
        if changes:
            # A CRD installed (or Established, or upgraded): the classes' SupportedVersion is looked
            # at again (the watches failing for want of it were woken by `CrdWatching`).
            self._mark_all_classes()
        elif self.bundle_versions() is not None:
            self._mark_all_classes()  # the first lists are in: versions are known
        self._changed(False)

    def _mark_all_classes(self) -> None:
        watcher = self.watchers.get(GATEWAY_CLASS)
        if watcher is not None:
            self.writer.mark(name for _, name in watcher.objects)

    def _on_objects(self, kind: str, changes: list[Change]) -> None:
        keys = [key_of(new if new is not None else old or {}) for old, new in changes]
        # A status write (ours coming back, or someone's) leaves the parsed value as it is.
        dirty = [
            key
            for key, (old, new) in zip(keys, changes, strict=True)
            if old is None or new is None or not same_content(old, new)
        ]
        self._dirty[kind].update(dirty)
        if kind == GATEWAY_CLASS:
            self.writer.mark(name for _, name in keys)
        elif kind in _STATUS_KINDS:
            self.gateway_writer.mark(kind, keys)  # our write, or someone's, coming back
        self._changed(bool(dirty))

    def _changed(self, anything: bool) -> None:
        """After a batch: tell the owner, unless nothing changed or some watcher has not listed yet."""
        if not self._synced:
            if not self._watching.listed:
                return
            self._synced = True
            log.info("Gateway API synced: %s", ", ".join(f"{len(w.objects)} {k}" for k, w in self.watchers.items()))
        elif not anything:
            return
        self._on_change()
