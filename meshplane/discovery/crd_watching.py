"""Watching the kinds of an API that CustomResourceDefinitions install (the Gateway API's,
meshplane's own): the client configuration loaded with retries, one `Watcher` per kind (all
namespaces) and one per kind's CRD, and what a source's status says of them.

Owns what the sources of such APIs share: loading the configuration (the Kubernetes source's
`load_configuration`), retried with backoff and shown as the setup error meanwhile; the watches,
on the list/watch machinery of `kubernetes_watching.py` (relist on 410, BOOKMARKs, backoff), all
sharing one `Reconnect`, so that a CRD installed wakes every watcher from its backoff and the
source recovers without a restart; telling a kind whose CRD is not installed (`missing_crds`, one
picture once every CRD watch has listed) from a failing watch, whose error is then not shown (the
missing CRD is the reason); and the parts of a source's status that come from the watches (errors,
last success and attempt, relists). Must not read objects nor decide what they mean: the sources
do, in their `on_objects` and `on_crds` callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshplane.discovery.kubernetes import SERVICE_ACCOUNT, load_configuration
from meshplane.discovery.kubernetes_watching import Backoff, Change, Object, Reconnect, Resource, Watcher
from meshplane.model import SourceStatus

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger(__name__)

CRDS = Resource("CustomResourceDefinition", "/apis/apiextensions.k8s.io/v1", "customresourcedefinitions")


@dataclass(frozen=True, slots=True)
class WatchedKind:
    """One kind watched: its name, its API resource and the name of its CRD."""

    name: str
    resource: Resource
    crd: str


class CrdWatching:
    """The watches of `kinds` for one source (see the module docstring). `what` names the API in
    the setup error ("the Gateway API"); `client` is for tests and embedding (else the
    configuration is loaded from `kubeconfig`, else as the Kubernetes source loads it);
    `on_objects(kind name, changes)` and `on_crds(changes)` are the watches' callbacks (synchronous,
    on the event loop; keep them cheap)."""

    def __init__(
        self,
        kinds: tuple[WatchedKind, ...],
        *,
        what: str,
        on_objects: Callable[[str, list[Change]], None],
        on_crds: Callable[[list[Change]], None],
        client: ApiClient | None = None,
        kubeconfig: Path | None = None,
        service_account: Path = SERVICE_ACCOUNT,
        backoff: Backoff | None = None,
        watch_timeout_seconds: int = 300,
        page_size: int = 500,
        rng: random.Random | None = None,
    ) -> None:
        self.kinds = kinds
        self._what = what
        self._on_objects = on_objects
        self._on_crds = on_crds
        self.client = client
        self._kubeconfig = kubeconfig
        self._service_account = service_account
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.reconnect = Reconnect()
        # What every watcher of the source is made with (its other watches too: they share the
        # Reconnect, so a CRD installed wakes them all).
        self.options: dict[str, Any] = {
            "reconnect": self.reconnect,
            "backoff": self.backoff,
            "timeout_seconds": watch_timeout_seconds,
            "page_size": page_size,
            "rng": self.rng,
        }
        self.watchers: dict[str, Watcher] = {}  # by kind name
        self.crd_watchers: dict[str, Watcher] = {}  # by kind name
        self.setup_error = ""
        self.last_attempt: float | None = None

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[ApiClient]:
        """The client, once the configuration loads (retried with backoff until it does; the
        failure is `setup_error` meanwhile), with the watchers made; a client loaded here is
        closed on exit."""
        attempt = 0
        owned: ApiClient | None = None
        while self.client is None:
            self.last_attempt = time.time()
            try:
                from kubernetes_asyncio.client import ApiClient  # see TYPE_CHECKING above

                self.client = owned = ApiClient(await load_configuration(self._kubeconfig, self._service_account))
                self.setup_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as error:  # no configuration: say so, retry
                self.setup_error = f"cannot start watching {self._what}: {type(error).__name__}: {error}"
                attempt += 1
                delay = self.backoff.delay(attempt, self.rng)
                log.warning("%s; retrying in %.2f s", self.setup_error, delay)
                await asyncio.sleep(delay)
        client = self.client
        for kind in self.kinds:
            self.crd_watchers[kind.name] = Watcher(
                client, CRDS, field_selector=f"metadata.name={kind.crd}", on_change=self._crds_changed, **self.options
            )
            self.watchers[kind.name] = Watcher(
                client, kind.resource, on_change=self._objects_changed(kind.name), **self.options
            )
        try:
            yield client
        finally:
            if owned is not None:
                self.client = None
                with contextlib.suppress(Exception):
                    await owned.close()

    def start(self, group: asyncio.TaskGroup) -> None:
        """Runs every watcher (CRDs first) in `group`."""
        for watcher in self.all_watchers:
            group.create_task(watcher.run())

    def _objects_changed(self, kind: str) -> Callable[[list[Change]], None]:
        return lambda changes: self._on_objects(kind, changes)

    def _crds_changed(self, changes: list[Change]) -> None:
        if changes:
            # A CRD installed (or changed): the watches failing for want of it go again now.
            self.reconnect.answered()
        self._on_crds(changes)

    @property
    def all_watchers(self) -> list[Watcher]:
        return [*self.crd_watchers.values(), *self.watchers.values()]

    @property
    def listed(self) -> bool:
        """Whether every watcher (of the CRDs and of the objects) has completed its first list."""
        watchers = self.all_watchers
        return bool(watchers) and all(w.synced for w in watchers)

    def installed(self) -> dict[str, Mapping[tuple[str, str], Object]] | None:
        """Each kind's CRD objects as its watch holds them (empty: not installed), by kind name;
        None until every CRD watch has listed (one picture, not one CRD at a time)."""
        if len(self.crd_watchers) < len(self.kinds) or not all(w.synced for w in self.crd_watchers.values()):
            return None
        return {kind.name: self.crd_watchers[kind.name].objects for kind in self.kinds}

    def missing_crds(self) -> list[str]:
        """The CRDs of the kinds watched that are not installed; none until every CRD watch has
        listed."""
        installed = self.installed()
        return [] if installed is None else [kind.crd for kind in self.kinds if not installed[kind.name]]

    def errors(self, missing: list[str], missing_error: str) -> list[str]:
        """The setup error, `missing_error` when CRDs are `missing`, and each watch's error (but
        that of a kind whose CRD is missing: the missing CRD is the reason)."""
        errors = [self.setup_error] if self.setup_error else []
        if missing:
            errors.append(missing_error)
        missing_kinds = {kind.name for kind in self.kinds if kind.crd in missing}
        errors += [w.last_error for name, w in self.watchers.items() if w.last_error and name not in missing_kinds]
        errors += [w.last_error for w in self.crd_watchers.values() if w.last_error]
        return errors

    def last_success(self, synced: bool) -> float | None:
        """When every watch last heard from the API server (the oldest of them), once `synced`."""
        confirmed = [w.confirmed_at for w in self.all_watchers]
        if not synced or None in confirmed:
            return None
        return min(c for c in confirmed if c is not None)

    def last_attempt_at(self) -> float | None:
        attempts = [t for t in (self.last_attempt, *(w.attempted_at for w in self.all_watchers)) if t is not None]
        return max(attempts, default=None)

    @property
    def relists(self) -> int:
        return sum(w.relists for w in self.all_watchers)

    def source_status(
        self,
        name: str,
        synced: bool,
        errors: list[str],
        counts: Mapping[str, int],
        events: Mapping[str, int],
        notes: tuple[str, ...],
    ) -> SourceStatus:
        """The source's status, its times and `relists` count from the watches."""
        return SourceStatus(
            name=name,
            synced=synced,
            last_success=self.last_success(synced),
            last_attempt=self.last_attempt_at(),
            errors=tuple(errors),
            counts={**counts, "relists": self.relists},
            events=dict(events),
            notes=notes,
        )


class WatchingCrds:
    """For a source holding its `CrdWatching` as `_watching`: its watchers and missing CRDs."""

    _watching: CrdWatching

    @property
    def watchers(self) -> dict[str, Watcher]:
        """The objects' watchers, by kind name (none before `run()`)."""
        return self._watching.watchers

    @property
    def crd_watchers(self) -> dict[str, Watcher]:
        """The CRDs' watchers, by kind name (none before `run()`)."""
        return self._watching.crd_watchers

    def missing_crds(self) -> list[str]:
        """The CRDs of the kinds watched that are not installed; none until every CRD watch has
        listed (one picture, not one CRD at a time)."""
        return self._watching.missing_crds()
