"""The source of meshplane's own Kubernetes API (group meshplane.io): every object of its kinds
watched live, read off the event loop into `MeshplaneObjects`, and the status of those served.

Owns the source's life, on the watches every source of a CRD-defined API shares
(`crd_watching.py`, as the Gateway API source does): the client configuration, one `Watcher` per
kind of `KINDS` (all namespaces), and one per kind's CustomResourceDefinition to tell a kind whose
CRD is not installed from a failing watch. A CRD installed wakes every watcher from its backoff,
so the source recovers as soon as the CRDs are installed, without a restart.

Reading: the watch callbacks only note which objects changed (cheap, on the event loop); `run()`
reads them in a worker thread, one batch per wake-up (each watch batch, or several that came
meanwhile), with `parse_object`, each object once per uid and generation (`_identity` says why
not per resourceVersion). Must not decide
precedence nor what an object's status says: the merge does (`Merged.object_status`), and
`MeshplaneStatusWriter` (`writer`) writes it.

Namespaces: with `namespaces` given (`--watch-namespaces`), only objects of namespaced kinds in
those namespaces are served; any other is ignored, visibly: counted (`ignored_objects`) and named
in the status notes (the first `MAX_IGNORED_NAMED`), and no status is written on it. Cluster-scoped
kinds (EdgeSite, DevicePolicy: those of `KINDS` not `namespaced`) are always served. The watches
stay cluster-wide so that what is ignored can be shown.

Contract: `synced` turns true once every watcher has completed its first list and those objects
are read (so never while a CRD is missing). `content()` returns the objects read, an immutable
value replaced (never changed) when they change. `take_changes()` says whether that content
changed since its previous call (the first call: True). `on_change()` is called synchronously
after each read batch once synced; keep it cheap. `run()` ends only by cancellation.

Status: `errors` are what keeps the source from being in sync or its writes from landing (the
configuration, the CRDs not installed, a list or watch failing, a status write failing), cleared
when the API server answers again; `notes` name the objects ignored for their namespace and the
objects refused, with the reason (at most `MAX_PROBLEM_NOTES`), and say how many of how many
connected proxies hold each configuration generation that objects wait on for `Programmed` (the
counts that the objects' own Pending conditions leave out, at most `MAX_PROGRESS_NOTES`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from meshplane.discovery.crd_watching import CrdWatching, WatchedKind, WatchingCrds
from meshplane.discovery.kubernetes import SERVICE_ACCOUNT
from meshplane.discovery.kubernetes_watching import Backoff, Change, Object, Resource, key_of
from meshplane.discovery.meshplane_api.kinds import API_VERSION, GROUP, KINDS, VERSION, Kind
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, ObjectKey, ParsedObject, parse_object
from meshplane.discovery.meshplane_api.status_writer import MeshplaneStatusWriter, ProxiesHolding
from meshplane.model import SourceStatus

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger(__name__)

SOURCE_NAME = "meshplane-api"
MAX_PROBLEM_NOTES = 50
MAX_IGNORED_NAMED = 20  # ignored objects named in the notes; all are counted
MAX_PROGRESS_NOTES = 5  # configuration generations waited on, named in the notes (oldest first)
INSTALL_HINT = "install them: kubectl apply -k deploy/kubernetes/crds/"


# A namespace's name is a DNS-1123 label (at most 63 characters).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def namespaces_problem(namespaces: Iterable[str]) -> str | None:
    """Why `namespaces` (of `--watch-namespaces`) cannot be watched, or None: each must be a
    namespace name (a DNS-1123 label)."""
    bad = [name for name in namespaces if not _NAMESPACE.fullmatch(name)]
    if not bad:
        return None
    shown = ", ".join(repr(name[:70]) for name in bad[:5])
    return f"not a namespace name (a DNS-1123 label: lower-case letters, digits and '-', at most 63): {shown}"


def resource_of(kind: Kind) -> Resource:
    """The API resource of `kind` (served at /apis/meshplane.io/v1alpha1/…)."""
    return Resource(kind.name, f"/apis/{GROUP}/{VERSION}", kind.plural)


def crd_name(kind: Kind) -> str:
    """The name of `kind`'s CustomResourceDefinition: `<plural>.meshplane.io`."""
    return f"{kind.plural}.{GROUP}"


@dataclass(frozen=True, slots=True)
class _Read:
    """One object as last read: its identity when read (`_identity`), and the result."""

    uid: str
    version: str
    parsed: ParsedObject


def _identity(obj: Mapping[str, Any]) -> tuple[str, str]:
    """What an object is read anew for: its uid and its generation. What `parse_object` reads (the
    spec, and name, namespace, generation and creationTimestamp) changes only with a new
    generation: with the status subresource the API server bumps it on every change of the spec,
    and the rest are immutable. So a status write (ours, coming back on the watch) or a label
    change, each a new resourceVersion, is not read again. An object without a generation is
    read once per resourceVersion."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    if isinstance(generation, int) and not isinstance(generation, bool) and generation > 0:
        return str(meta.get("uid") or ""), f"generation {generation}"
    return str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")


def read_batch(kind: Kind, objects: Iterable[Object]) -> list[ParsedObject]:
    """`objects` of `kind` read with `parse_object` (run in a worker thread). A list's items may
    lack `apiVersion` and `kind` (the list carries them); they are filled in from the watch."""
    read = []
    for obj in objects:
        if obj.get("kind") != kind.name or obj.get("apiVersion") != API_VERSION:
            obj = {**obj, "apiVersion": API_VERSION, "kind": kind.name}
        read.append(parse_object(obj))
    return read


class MeshplaneApiSource(WatchingCrds):
    """The objects of meshplane's kinds in the cluster (`namespaces`: the namespaces served; empty:
    all). `client` is for tests and embedding; without it the configuration is loaded in `run()`
    (from `kubeconfig`, else as the Kubernetes source loads it). `holding(generation)` says how
    many connected proxies hold a configuration generation (for `Programmed`; see
    `MeshplaneStatusWriter`), `revision()` when that may have changed; `now` gives the conditions'
    transition times."""

    def __init__(
        self,
        *,
        client: ApiClient | None = None,
        kubeconfig: Path | None = None,
        service_account: Path = SERVICE_ACCOUNT,
        namespaces: Iterable[str] = (),
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        watch_timeout_seconds: int = 300,
        page_size: int = 500,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        holding: Callable[[int], ProxiesHolding] = lambda generation: ProxiesHolding(0, 0),
        revision: Callable[[], int] = lambda: 0,
    ) -> None:
        self.namespaces = frozenset(namespaces)
        self._on_change = on_change
        self._watching = CrdWatching(
            tuple(WatchedKind(kind.name, resource_of(kind), crd_name(kind)) for kind in KINDS),
            what="meshplane's API",
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
        self.writer = MeshplaneStatusWriter(
            {kind.name: resource_of(kind) for kind in KINDS},
            self._object,
            holding=holding,
            revision=revision,
            backoff=self._watching.backoff,
            rng=self._watching.rng,
            now=now,
        )
        self._synced = False
        self._dirty: dict[str, set[tuple[str, str]]] = {kind.name: set() for kind in KINDS}
        self._wanted = asyncio.Event()
        self._read: dict[ObjectKey, _Read] = {}
        self._ignored: set[ObjectKey] = set()
        self._content = MeshplaneObjects()
        self._changed_since_taken = True
        self._told_missing = False  # the owner was told the CRDs are missing (see _after_batch)
        self._notes: tuple[MeshplaneObjects | None, frozenset[ObjectKey], tuple[str, ...], Mapping[str, int]] = (
            None,
            frozenset(),
            (),
            MappingProxyType({}),
        )
        self.parsed = 0  # objects read with parse_object since start (see _identity)
        self.read_batches = 0
        self._reading = False

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def pending(self) -> bool:
        """Whether some change seen on the watches is not read yet (or being read)."""
        return self._reading or any(self._dirty.values())

    @property
    def crds_missing(self) -> bool:
        """Whether some CRD is known not to be installed (the source cannot sync until it is)."""
        return bool(self.missing_crds())

    def content(self) -> MeshplaneObjects:
        """The objects read, by key (see the module contract); ignored objects are not in it."""
        return self._content

    def take_changes(self) -> bool:
        """Whether `content()` changed since the previous call (the first call: True), and forgets
        it: meant for one reader."""
        changed, self._changed_since_taken = self._changed_since_taken, False
        return changed

    def serves(self, namespace: str) -> bool:
        """Whether objects in `namespace` are served ("" is a cluster-scoped object: always)."""
        return not namespace or not self.namespaces or namespace in self.namespaces

    @property
    def ignored(self) -> list[ObjectKey]:
        """The objects ignored for their namespace, sorted."""
        return sorted(self._ignored)

    @property
    def status(self) -> SourceStatus:
        missing = self.missing_crds()
        errors = self._watching.errors(
            missing, f"meshplane's CRDs are not installed: {', '.join(missing)} not found ({INSTALL_HINT})"
        )
        if self.writer.last_error:
            errors.append(self.writer.last_error)
        content = self._content
        notes, counted = self._notes_of(content)
        counts = {
            **counted,
            "ignored_objects": len(self._ignored),
            "programmed_waiting": self.writer.waiting,
        }
        return self._watching.source_status(
            SOURCE_NAME,
            self._synced,
            errors,
            counts,
            {
                "objects_read": self.parsed,
                "read_batches": self.read_batches,
                "status_writes": self.writer.writes,
                "status_conflicts": self.writer.conflicts,
                "status_unchanged": self.writer.skipped,
            },
            (*notes, *self._progress_notes()),
        )

    def _progress_notes(self) -> list[str]:
        """How far the proxies are with each configuration generation objects wait on (the live
        counts the objects' Pending conditions leave out, so that an ACK rewrites no object)."""
        progress = self.writer.progress()
        notes = [
            f"Programmed: {counts.held} of {counts.total} connected proxies hold configuration generation"
            f" {generation}; {waiting} objects wait for it"
            for generation, counts, waiting in progress[:MAX_PROGRESS_NOTES]
        ]
        if len(progress) > MAX_PROGRESS_NOTES:
            notes.append(f"Programmed: … and {len(progress) - MAX_PROGRESS_NOTES} more configuration generations")
        return notes

    def _notes_of(self, content: MeshplaneObjects) -> tuple[tuple[str, ...], Mapping[str, int]]:
        """The notes for `content` and the ignored objects, and the counts of `content` (per kind
        plural, and `refused_objects`, those parsing refused): worked out once per content and set
        of ignored objects (a status request must not walk every object each time)."""
        ignored = frozenset(self._ignored)
        if self._notes[0] is not content or self._notes[1] != ignored:
            notes: list[str] = []
            if ignored:
                named = ", ".join(str(key) for key in sorted(ignored)[:MAX_IGNORED_NAMED])
                more = f" and {len(ignored) - MAX_IGNORED_NAMED} more" if len(ignored) > MAX_IGNORED_NAMED else ""
                watched = ", ".join(sorted(self.namespaces))
                notes.append(
                    f"{len(ignored)} objects ignored, outside the watched namespaces ({watched}): {named}{more}"
                )
            refused = [parsed for parsed in content.objects.values() if parsed.errors]
            problems = [f"{parsed.key}: {error}" for parsed in refused for error in parsed.errors]
            notes += problems[:MAX_PROBLEM_NOTES]
            if len(problems) > MAX_PROBLEM_NOTES:
                notes.append(f"… and {len(problems) - MAX_PROBLEM_NOTES} more problems")
            counts = dict.fromkeys((kind.plural for kind in KINDS), 0)
            plurals = {kind.name: kind.plural for kind in KINDS}
            for key in content.objects:
                counts[plurals[key.kind]] += 1
            counts["refused_objects"] = len(refused)
            self._notes = (content, ignored, tuple(notes), MappingProxyType(counts))
        return self._notes[2], self._notes[3]

    async def run(self) -> None:
        """Load the configuration (retrying with backoff), then watch, read and write status forever."""
        async with self._watching.connected() as client, asyncio.TaskGroup() as group:
            self._watching.start(group)
            group.create_task(self._read_loop())
            group.create_task(self.writer.run(client))

    def _object(self, key: ObjectKey) -> Object | None:
        """The object as the watch holds it now (None: gone, or not served)."""
        watcher = self.watchers.get(key.kind)
        if watcher is None or not self.serves(key.namespace):
            return None
        return watcher.objects.get((key.namespace, key.name))

    def _on_crds(self, changes: list[Change]) -> None:
        self._wanted.set()  # a CRD listed or installed: whether the source syncs may have changed

    def _on_objects(self, kind: str, changes: list[Change]) -> None:
        self._dirty[kind].update(key_of(new if new is not None else old or {}) for old, new in changes)
        for old, new in changes:
            obj = new if new is not None else old or {}
            namespace, name = key_of(obj)
            self.writer.mark(ObjectKey(kind, namespace, name))  # our write, or someone's, coming back
        self._wanted.set()

    async def _read_loop(self) -> None:
        """Reads what the watches changed, one batch per wake-up; ends only by cancellation."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.read_pending()

    async def read_pending(self) -> None:
        """One batch: the objects changed since the last batch, read in a worker thread (those whose
        uid and generation were read before are not read again), then adopted on the loop."""
        to_read: dict[str, list[Object]] = {}
        gone: list[ObjectKey] = []
        ignored: set[ObjectKey] = set()
        for kind in KINDS:
            dirty, self._dirty[kind.name] = self._dirty[kind.name], set()
            watcher = self.watchers.get(kind.name)
            for namespace, name in dirty:
                key = ObjectKey(kind.name, namespace, name)
                obj = watcher.objects.get((namespace, name)) if watcher is not None else None
                if obj is None:
                    gone.append(key)
                elif self.serves(namespace) or not kind.namespaced:
                    known = self._read.get(key)
                    if known is None or (known.uid, known.version) != _identity(obj):
                        to_read.setdefault(kind.name, []).append(obj)
                else:
                    ignored.add(key)
                    gone.append(key)
        read: list[tuple[str, str, ParsedObject, ObjectKey]] = []
        self._reading = True
        try:
            await self._read_into(to_read, read)
        finally:
            self._reading = False
        changed = self._adopt(read, gone, ignored)
        self._after_batch(changed)

    async def _read_into(
        self, to_read: dict[str, list[Object]], read: list[tuple[str, str, ParsedObject, ObjectKey]]
    ) -> None:
        """Reads `to_read` (by kind name) in one worker thread, appending to `read`."""
        if to_read:
            batches = [(kind, to_read[kind.name]) for kind in KINDS if kind.name in to_read]
            results = await asyncio.to_thread(lambda: [(objs, read_batch(kind, objs)) for kind, objs in batches])
            self.read_batches += 1
            for (kind, _), (objs, parsed_list) in zip(batches, results, strict=True):
                for obj, parsed in zip(objs, parsed_list, strict=True):
                    namespace, name = key_of(obj)
                    read.append((*_identity(obj), parsed, ObjectKey(kind.name, namespace, name)))
                    self.parsed += 1

    def _adopt(
        self, read: list[tuple[str, str, ParsedObject, ObjectKey]], gone: list[ObjectKey], ignored: set[ObjectKey]
    ) -> bool:
        """Makes a batch current: whether the content changed. The watch may have moved on while the
        batch was read: what it read is adopted all the same (the newer version is dirty again)."""
        changed = False
        for key in gone:
            if self._read.pop(key, None) is not None:
                changed = True
            if key not in ignored:
                self._ignored.discard(key)
        self._ignored |= ignored
        for uid, version, parsed, key in read:
            # The content is keyed by the watch's key, whatever the object's body claims.
            self._read[key] = _Read(uid, version, parsed if parsed.key == key else _rekeyed(parsed, key))
            self._ignored.discard(key)
            changed = True
        if changed:
            self._content = MeshplaneObjects(
                MappingProxyType({key: entry.parsed for key, entry in sorted(self._read.items())})
            )
            self._changed_since_taken = True
        return changed

    def _after_batch(self, anything: bool) -> None:
        """After a batch: tell the owner, unless nothing changed or some watcher has not listed yet."""
        if not self._synced:
            if not self._watching.listed or any(self._dirty.values()):
                if self.crds_missing and not self._told_missing:
                    # The owner holds its publication back until this source syncs, unless the CRDs
                    # are missing: now they are known to be, it may go on without it.
                    self._told_missing = True
                    self._on_change()
                return
            self._synced = True
            log.info(
                "meshplane API synced: %s",
                ", ".join(f"{len(w.objects)} {kind}" for kind, w in self.watchers.items()),
            )
        elif not anything:
            return
        self._on_change()


def _rekeyed(parsed: ParsedObject, key: ObjectKey) -> ParsedObject:
    """`parsed` under the watch's `key` (a body's own kind, namespace or name is not trusted), with
    an error saying so when they differ."""
    return dataclasses.replace(
        parsed, key=key, errors=(*parsed.errors, f"the object names itself {parsed.key}, not {key}")
    )
