"""The Kubernetes source: Services and EndpointSlices (and, opted in, Secrets), watched live, → model.

Owns the source's life: loading the client configuration (a kubeconfig, or the pod's service
account), choosing the EndpointSlice API version the server serves (`discovery.k8s.io/v1`, else
`v1beta1`), running one `Watcher` per resource and namespace, joining slices to their Service by
the `kubernetes.io/service-name` label, and keeping the mapped services up to date. With
`secrets=True` it also watches the Secrets labelled `secret_selector` of the two types served
(`kubernetes_secrets.py`), giving certificates and CA bundles; a Secret whose update cannot be
served keeps its last good version (with a note), a deleted one is gone.

Contract: `synced` turns true only when every watcher has completed its first full list (Services
and EndpointSlices, and Secrets when enabled, in every selected namespace); before that
`content()` must not be published. `content()` re-maps only the services whose Service or
slices changed since the last call and returns, for every other service, the very `Service`
object it returned before, so downstream identity checks (`is`) find what changed without
comparing (certificates and CA bundles likewise keep their tuples while unchanged).
`take_changes()` says what changed in that content since its previous call, as a change set built
from the objects the watches reported (a Service or slice event of one service changes that
service, its endpoints alone when nothing else of it moved); the merge passes it on, so nothing
downstream compares content to find it. `on_change()` is called synchronously after each batch
of changes; keep it cheap (poke a debouncer). `run()` ends only by cancellation.

Status: `errors` are what stops the source from being in sync (it cannot start, a list or watch
fails) and clear as soon as the API server answers again; `notes` are what mapping left out of
single objects (a UDP port, a bad annotation, a Secret not served or kept at its last good
version). `last_success` is when the least recently confirmed watcher last confirmed its copy
(see `Watcher`), so on a healthy quiet cluster its age stays within the bookmark interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshplane.discovery.kubernetes_annotations import AnnotationPolicy, policy_of
from meshplane.discovery.kubernetes_mapping import Mapped, map_service, service_key_of_slice
from meshplane.discovery.kubernetes_secrets import (
    DEFAULT_SECRET_SELECTOR,
    SECRET_TYPES,
    MappedSecret,
    map_secret,
    selector_problem,
)
from meshplane.discovery.kubernetes_watching import (
    ENDPOINT_SLICES_V1,
    ENDPOINT_SLICES_V1BETA1,
    SECRETS,
    SERVICES,
    Backoff,
    Change,
    Key,
    Object,
    Reconnect,
    Resource,
    Watcher,
    get_json,
    newer_object,
)
from meshplane.model import RouteTable, Service, SourceStatus, TlsCertificate, TrustBundle
from meshplane.model.changes import MeshChanges, service_changes

if TYPE_CHECKING:
    # Imported where used, when the source runs: `kubernetes_asyncio` and its generated models
    # cost ~0.25 s and ~60 MiB of every `meshplane serve`, including those without --kubernetes
    # (the composition root imports this module either way).
    from kubernetes_asyncio.client import ApiClient, Configuration

log = logging.getLogger(__name__)

SOURCE_NAME = "kubernetes"

# A Secret as watched: (type, namespace, name). The type is the watch's (one per type served), so
# each watch stream owns its own keys: a Secret deleted and recreated with another type arrives as
# a DELETED on one stream and an ADDED on the other, in either order, and neither can remove what
# the other brought.
SecretKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class KubernetesContent:
    """What the source serves: services (sorted by namespace, name), the routes their annotations
    make, and the certificates and CA bundles of the Secrets watched (sorted by name)."""

    services: tuple[Service, ...]
    routes: tuple[RouteTable, ...]
    certificates: tuple[TlsCertificate, ...] = ()
    trust_bundles: tuple[TrustBundle, ...] = ()


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


async def load_configuration(kubeconfig: Path | None = None, service_account: Path = SERVICE_ACCOUNT) -> Configuration:
    """The client configuration: `kubeconfig` if given, else `$KUBECONFIG` or `~/.kube/config` if
    present, else the pod's service account (in-cluster: `KUBERNETES_SERVICE_HOST`/`_PORT` and the
    `token` and `ca.crt` in `service_account`). Raises when none works."""
    from kubernetes_asyncio import config as kube_config
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import incluster_config

    configuration = Configuration()
    default = _default_kubeconfig()
    if kubeconfig is not None or default is not None:
        await kube_config.load_kube_config(
            config_file=str(kubeconfig or default), client_configuration=configuration, persist_config=False
        )
    else:
        loader = incluster_config.InClusterConfigLoader(
            token_filename=str(service_account / "token"), cert_filename=str(service_account / "ca.crt")
        )
        loader.load_and_set(client_configuration=configuration)
    return configuration


def _default_kubeconfig() -> Path | None:
    """The first file of `$KUBECONFIG`, else `~/.kube/config`, when it exists (a quick stat)."""
    path = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    return path if path.is_file() else None


async def endpoint_slice_resource(client: ApiClient) -> Resource:
    """`discovery.k8s.io/v1` EndpointSlices if the server serves them, else `v1beta1` (Kubernetes < 1.21)."""
    group = await get_json(client, "/apis/discovery.k8s.io")
    versions = {version.get("version") for version in group.get("versions") or ()}
    if "v1" in versions:
        return ENDPOINT_SLICES_V1
    if "v1beta1" in versions:
        log.info("the API server serves no discovery.k8s.io/v1; using v1beta1 EndpointSlices")
        return ENDPOINT_SLICES_V1BETA1
    raise RuntimeError(f"the API server serves no EndpointSlices (discovery.k8s.io versions: {sorted(versions)})")


class KubernetesSource:
    """Services (optionally filtered by a label selector) and EndpointSlices in `namespaces` (all when
    empty). `client` is for tests and embedding; without it the configuration is loaded in `run()`.
    Raises ValueError for `secrets` with an empty `secret_selector` (it would read every Secret of
    the types served, not only those an owner marked)."""

    def __init__(
        self,
        *,
        client: ApiClient | None = None,
        kubeconfig: Path | None = None,
        service_account: Path = SERVICE_ACCOUNT,
        namespaces: Sequence[str] = (),
        service_selector: str = "",
        secrets: bool = False,
        secret_selector: str = DEFAULT_SECRET_SELECTOR,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        watch_timeout_seconds: int = 300,
        page_size: int = 500,
        rng: random.Random | None = None,
    ) -> None:
        if secrets and (problem := selector_problem(secret_selector)) is not None:
            raise ValueError(problem)
        self._client = client
        self._kubeconfig = kubeconfig
        self._service_account = service_account
        self.namespaces: tuple[str | None, ...] = tuple(dict.fromkeys(namespaces)) or (None,)
        self.service_selector = service_selector
        self.secrets = secrets
        self.secret_selector = secret_selector
        self._on_change = on_change
        self._backoff = backoff or Backoff()
        self._watch_timeout = watch_timeout_seconds
        self._page_size = page_size
        self._rng = rng or random.Random()
        self.watchers: list[Watcher] = []
        self.slice_resource: Resource | None = None
        self._setup_error = ""
        self._synced = False
        self._last_attempt: float | None = None  # of the start-up (configuration and API discovery)
        # What the watchers hold, indexed for the join.
        self._services: dict[Key, Object] = {}
        self._slices_of: dict[Key, dict[Key, Object]] = {}  # service key -> slice key -> slice
        self._slice_owner: dict[Key, Key] = {}  # slice key -> service key
        # The mapping, per service key; only dirty keys are mapped again.
        self._annotations: dict[Key, tuple[Any, AnnotationPolicy]] = {}
        self._mapped: dict[Key, Mapped] = {}
        self._position: dict[Key, int] = {}  # index in the served services tuple
        self._routes: dict[Key, RouteTable] = {}
        self._notes_of: dict[Key, tuple[str, ...]] = {}
        self._dirty: set[Key] = set()
        self._content: KubernetesContent | None = None
        self._changes = MeshChanges.everything()  # in `_content` since the last `take_changes()`
        self._notes: tuple[str, ...] = ()
        # Secrets: the objects watched, what is served of each (its last good mapping), and notes.
        self._secret_objects: dict[SecretKey, Object] = {}
        self._secrets_served: dict[SecretKey, MappedSecret] = {}
        self._secret_notes: dict[SecretKey, tuple[str, ...]] = {}
        self._dirty_secrets: set[SecretKey] = set()

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def status(self) -> SourceStatus:
        errors = [self._setup_error] if self._setup_error else []
        errors += [watcher.last_error for watcher in self.watchers if watcher.last_error]
        content = self.content() if self._synced else None
        secret_notes = tuple(note for key in sorted(self._secret_notes) for note in self._secret_notes[key])
        confirmed = [watcher.confirmed_at for watcher in self.watchers]
        attempts = [t for t in (self._last_attempt, *(w.attempted_at for w in self.watchers)) if t is not None]
        return SourceStatus(
            name=SOURCE_NAME,
            synced=self._synced,
            # In sync as of the watcher that confirmed it longest ago.
            last_success=min(c for c in confirmed if c is not None) if self._synced and None not in confirmed else None,
            last_attempt=max(attempts, default=None),
            errors=tuple(errors),
            notes=(*self._notes, *secret_notes),
            counts={
                "services": len(content.services) if content else 0,
                "endpoints": sum(len(s.endpoints) for s in content.services) if content else 0,
                "kubernetes_services": len(self._services),
                "endpoint_slices": len(self._slice_owner),
                "skipped_services": sum(1 for mapped in self._mapped.values() if mapped.service is None),
                "relists": sum(watcher.relists for watcher in self.watchers),
                "kubernetes_secrets": len(self._secret_objects),
                "certificates": len(content.certificates) if content else 0,
                "trust_bundles": len(content.trust_bundles) if content else 0,
            },
        )

    def take_changes(self) -> MeshChanges:
        """What changed in `content()` since the previous call (the first call: everything), and
        forgets it: meant for one reader, the merge."""
        self.content()  # folds in the changes not mapped yet
        changes, self._changes = self._changes, MeshChanges()
        return changes

    def content(self) -> KubernetesContent:
        """The services and routes as the watched objects describe them now (see the module contract).

        Costs what changed: dirty services are mapped again, and the served tuple is patched in
        place when no service came or went (sorted again only then).
        """
        if self._content is not None and not self._dirty and not self._dirty_secrets:
            return self._content
        previous = self._content or KubernetesContent((), ())
        certificates, trust_bundles = self._secret_content(previous)
        membership_changed = routes_changed = notes_changed = False
        replaced: list[tuple[int, Service]] = []
        changes = MeshChanges()
        for key in self._dirty:
            old = self._mapped.get(key)
            mapped = self._map(key, old)
            if mapped is None:
                self._mapped.pop(key, None)
            else:
                self._mapped[key] = mapped
            old_service = old.service if old is not None else None
            new_service = mapped.service if mapped is not None else None
            if (old_service is None) != (new_service is None):
                membership_changed = True
            elif new_service is not None and new_service is not old_service:
                replaced.append((self._position[key], new_service))
                changes |= service_changes(old_service, new_service)
            new_route = mapped.route if mapped is not None else None
            if (old.route if old is not None else None) is not new_route:
                routes_changed = True
                if new_route is None:
                    self._routes.pop(key, None)
                else:
                    self._routes[key] = new_route
            new_notes = mapped.notes if mapped is not None else ()
            if (old.notes if old is not None else ()) != new_notes:
                notes_changed = True
                if new_notes:
                    self._notes_of[key] = new_notes
                else:
                    self._notes_of.pop(key, None)
        self._dirty.clear()
        if membership_changed:
            order = sorted(key for key, mapped in self._mapped.items() if mapped.service is not None)
            self._position = {key: index for index, key in enumerate(order)}
            services = tuple(service for key in order if (service := self._mapped[key].service) is not None)
        elif replaced:
            patched = list(previous.services)
            for index, service in replaced:
                patched[index] = service
            services = tuple(patched)
        else:
            services = previous.services
        routes = tuple(self._routes[key] for key in sorted(self._routes)) if routes_changed else previous.routes
        if notes_changed:
            self._notes = tuple(note for key in sorted(self._notes_of) for note in self._notes_of[key])
        self._changes |= changes | MeshChanges(
            services=membership_changed,
            routes=routes_changed,
            secrets=certificates is not previous.certificates or trust_bundles is not previous.trust_bundles,
        )
        if (
            services is previous.services
            and routes is previous.routes
            and certificates is previous.certificates
            and trust_bundles is previous.trust_bundles
            and self._content is not None
        ):
            return self._content
        self._content = KubernetesContent(services, routes, certificates, trust_bundles)
        return self._content

    def _secret_content(
        self, previous: KubernetesContent
    ) -> tuple[tuple[TlsCertificate, ...], tuple[TrustBundle, ...]]:
        """The certificates and CA bundles after mapping the dirty Secrets; the previous tuples when
        nothing served changed. A Secret that cannot be served keeps its last good mapping (its
        note says so): a bad rotation must not take a working certificate from the proxies."""
        if not self._dirty_secrets:
            return previous.certificates, previous.trust_bundles
        for key in self._dirty_secrets:
            obj = self._secret_objects.get(key)
            if obj is None:
                self._secrets_served.pop(key, None)
                self._secret_notes.pop(key, None)
                continue
            mapped = map_secret(obj)
            if mapped.served:
                self._secrets_served[key] = mapped
                self._secret_notes.pop(key, None)
            elif key in self._secrets_served:
                notes = tuple(
                    note.removesuffix("; not served") + "; serving its last good version" for note in mapped.notes
                )
                self._secret_notes[key] = notes
            else:
                self._secret_notes[key] = mapped.notes
        self._dirty_secrets.clear()
        # Two types of one namespace/name: the old one's DELETED is on its way on its own stream;
        # meanwhile the newer object is served.
        newest: dict[Key, SecretKey] = {}
        for key in sorted(self._secret_objects):
            other = newest.get(key[1:])
            if other is None or newer_object(self._secret_objects[key], self._secret_objects[other]):
                newest[key[1:]] = key
        served = [self._secrets_served[key] for key in sorted(self._secrets_served) if newest.get(key[1:]) == key]
        certificates = tuple(sorted((m.certificate for m in served if m.certificate), key=lambda c: c.name))
        bundles = tuple(sorted((m.bundle for m in served if m.bundle), key=lambda b: b.name))
        if certificates == previous.certificates:
            certificates = previous.certificates
        if bundles == previous.trust_bundles:
            bundles = previous.trust_bundles
        return certificates, bundles

    def _map(self, key: Key, previous: Mapped | None) -> Mapped | None:
        """Service `key` mapped anew (None when it is gone); unchanged parts keep their old objects."""
        obj = self._services.get(key)
        if obj is None:
            self._annotations.pop(key, None)
            return None
        annotations = (obj.get("metadata") or {}).get("annotations")
        cached = self._annotations.get(key)
        if cached is None or cached[0] != annotations:
            cached = self._annotations[key] = (annotations, policy_of(obj))
        mapped = map_service(obj, (self._slices_of.get(key) or {}).values(), cached[1])
        if previous is None:
            return mapped
        # Unchanged parts (e.g. only a resourceVersion moved) keep the very objects served before.
        service = previous.service if previous.service == mapped.service else mapped.service
        route = previous.route if previous.route == mapped.route else mapped.route
        return Mapped(service, route, mapped.notes)

    async def run(self) -> None:
        """Connect (retrying with backoff until the API server answers), then watch forever."""
        attempt = 0
        owned: ApiClient | None = None
        while True:
            self._last_attempt = time.time()
            try:
                if self._client is None:
                    from kubernetes_asyncio.client import ApiClient  # see TYPE_CHECKING above

                    self._client = owned = ApiClient(await load_configuration(self._kubeconfig, self._service_account))
                client = self._client
                self.slice_resource = await endpoint_slice_resource(client)
                self._setup_error = ""
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:  # configuration or discovery failed: say so, retry
                self._setup_error = f"cannot start watching Kubernetes: {type(error).__name__}: {error}"
                attempt += 1
                delay = self._backoff.delay(attempt, self._rng)
                log.warning("%s; retrying in %.2f s", self._setup_error, delay)
                await asyncio.sleep(delay)
        self.watchers = self._make_watchers(client, self.slice_resource)
        try:
            async with asyncio.TaskGroup() as group:
                for watcher in self.watchers:
                    group.create_task(watcher.run())
        finally:
            if owned is not None:
                self._client = None
                with contextlib.suppress(Exception):
                    await owned.close()

    def _make_watchers(self, client: ApiClient, slices: Resource) -> list[Watcher]:
        common: dict[str, Any] = {
            # One API server: when it answers one watcher after an outage, all of them go again.
            "reconnect": Reconnect(),
            "backoff": self._backoff,
            "timeout_seconds": self._watch_timeout,
            "page_size": self._page_size,
            "rng": self._rng,
        }
        watchers = []
        for namespace in self.namespaces:
            watchers.append(
                Watcher(
                    client,
                    SERVICES,
                    namespace=namespace,
                    label_selector=self.service_selector,
                    on_change=self._on_services,
                    **common,
                )
            )
            watchers.append(Watcher(client, slices, namespace=namespace, on_change=self._on_slices, **common))
            if self.secrets:
                watchers += [
                    Watcher(
                        client,
                        SECRETS,
                        namespace=namespace,
                        label_selector=self.secret_selector,
                        field_selector=f"type={secret_type}",
                        on_change=functools.partial(self._on_secrets, secret_type),
                        **common,
                    )
                    for secret_type in SECRET_TYPES
                ]
        return watchers

    def _on_services(self, changes: list[Change]) -> None:
        for old, new in changes:
            key = _key(new if new is not None else old)
            if new is None:
                self._services.pop(key, None)
            else:
                self._services[key] = new
            self._dirty.add(key)
        self._changed(bool(changes))

    def _on_slices(self, changes: list[Change]) -> None:
        for old, new in changes:
            slice_key = _key(new if new is not None else old)
            owner = self._slice_owner.pop(slice_key, None)
            if owner is not None:
                self._slices_of[owner].pop(slice_key, None)
                if not self._slices_of[owner]:
                    del self._slices_of[owner]
                self._dirty.add(owner)
            if new is not None and (service := service_key_of_slice(new)) is not None:
                self._slice_owner[slice_key] = service
                self._slices_of.setdefault(service, {})[slice_key] = new
                self._dirty.add(service)
        self._changed(bool(changes))

    def _on_secrets(self, secret_type: str, changes: list[Change]) -> None:
        for old, new in changes:
            key = (secret_type, *_key(new if new is not None else old))
            if new is None:
                self._secret_objects.pop(key, None)
            else:
                self._secret_objects[key] = new
            self._dirty_secrets.add(key)
        self._changed(bool(changes))

    def _changed(self, anything: bool) -> None:
        """After a batch: tell the pipeline, unless nothing changed (a relist that found it all
        as it was) or some watcher has not yet completed its first list."""
        if not anything and self._synced:
            return
        if not self._synced:
            if not self.watchers or not all(watcher.synced for watcher in self.watchers):
                return
            self._synced = True
            log.info(
                "Kubernetes synced: %d services, %d endpoint slices%s",
                len(self._services),
                len(self._slice_owner),
                f", {len(self._secret_objects)} secrets" if self.secrets else "",
            )
        self._on_change()


def _key(obj: Object | None) -> Key:
    assert obj is not None
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
