"""Writing the status of meshplane's own objects through the status subresource: `Accepted` and
`ResolvedRefs` as the merge worked them out (`Merged.object_status`), and `Programmed` from what
the connected proxies acknowledged.

Owns the write loop, on the parts every status writer shares (`status_writing`,
`status_conditions`): the watch callbacks and `update()` only `mark()` objects (cheap,
synchronous); `run()` takes the marked ones in one sorted pass with at most `concurrency` writes
in flight, reads each as the watch holds it now, renders its `status.conditions` (metav1.Condition:
type, status, reason, message of at most 32768 characters, `observedGeneration`,
`lastTransitionTime` kept while a condition's status stays) and writes only when that differs from
what the object holds, as a JSON merge patch on `/status` carrying the object's resourceVersion.
The write comes back on the watch, which marks the object again; then nothing differs, so writes
never loop. After a 409 the object waits for the watch to bring its newer version; a 404 means it
was deleted meanwhile; any other failure retries after a jittered exponential backoff.

`Programmed`, per object generation: when the merge first reports an accepted generation of an
object, the configuration generation published with that merge is the one that carries it. The
object is `Programmed=True` (reason `Programmed`) once every connected proxy that was sent
configuration holds that generation or a later one, as `holding(generation)` counts them;
`Programmed=False` (reason `Pending`) while not, with a message that stays the same while it waits
(naming the configuration generation waited on, not how many proxies hold it: with live counts
in it, every ACK would rewrite every waiting object). How many of how many proxies hold each
generation waited on is `progress()`, which the source shows on `/status`. With no proxy connected it is
`True` with reason `NoProxies`: nothing waits for it, and a proxy that connects gets it with its
first configuration. Once True it stays True for that object generation (a proxy connecting later
is sent the current configuration whole). A generation the merge refuses (`Accepted` False) is
`Programmed=False` with reason `Invalid`, its message naming the last accepted generation, which
proxies keep serving; one whose references do not resolve (`ResolvedRefs` False: a route to a
missing service is left out, a policy without its target applies to nothing) is `Invalid` too,
saying so. Counts are asked once per distinct configuration generation waited on, when `update()`
brings new objects to wait and otherwise at most once per `poll_seconds`, only if `revision()`
(the stream registry's revision) changed: an ACK costs nothing per object, and an object is
written again only when its Programmed's status or reason changes (every proxy holds the
generation it waits on, or none is connected any more). Must not decide
`Accepted` nor `ResolvedRefs`, nor know what a proxy is.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshplane.discovery.kubernetes_watching import Backoff, Resource
from meshplane.discovery.meshplane_api.conditions import (
    ACCEPTED,
    FALSE,
    MAX_MESSAGE,
    RESOLVED_REFS,
    TRUE,
    ObjectCondition,
    ObjectStatus,
)
from meshplane.discovery.meshplane_api.objects import ObjectKey
from meshplane.discovery.status_conditions import render_conditions as render
from meshplane.discovery.status_writing import CountedWrites, Marked, StatusWrites, pass_over, wait_marked

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

PROGRAMMED = "Programmed"
REASON_PROGRAMMED = "Programmed"
REASON_PENDING = "Pending"
REASON_NO_PROXIES = "NoProxies"
REASON_INVALID = "Invalid"
# What proxies acknowledged is known to the xDS server only; nothing calls us when it changes, so
# the writer looks at `revision()` this often while some object waits for its Programmed.
PROGRAMMED_POLL_SECONDS = 1.0
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class ProxiesHolding:
    """Of the `total` connected proxies that were sent configuration, `held` hold a configuration
    generation (it or a later one)."""

    held: int
    total: int


@dataclass(slots=True)
class _Programmed:
    """The Programmed of one object generation: the configuration generation `carried_by` that
    first carried it (0: refused), and once settled, the condition for good."""

    generation: int
    carried_by: int
    settled: ObjectCondition | None = None


def refused(status: ObjectStatus) -> str | None:
    """Why this generation is not served: the type of its condition that is False (Accepted, else
    ResolvedRefs: a route whose backend is missing is left out, a policy without its target applies
    to nothing), or None when it is served."""
    for kind in (ACCEPTED, RESOLVED_REFS):
        found = status.condition(kind)
        if found is not None and found.status == FALSE:
            return kind
    return None


def render_conditions(
    wanted: tuple[ObjectCondition, ...], generation: int, current: Any, now: datetime
) -> list[dict[str, Any]]:
    """`wanted` as metav1.Conditions observed at `generation` (`status_conditions`), against
    `current` (the object's status.conditions); messages cut to `MAX_MESSAGE` characters."""
    return render(((condition, generation) for condition in wanted), current, now, MAX_MESSAGE)


class MeshplaneStatusWriter(CountedWrites):
    """Writes `status.conditions` of meshplane's objects (see the module docstring).

    `resources`: each kind's API resource, by kind name; `read(key)` the object as the watch holds
    it (None: gone or not served); `holding(generation)` how many connected proxies hold that
    configuration generation; `revision()` a number that changes whenever `holding` may answer
    otherwise. Counters for status: `writes` (accepted by the API server), `conflicts` (409s),
    `skipped` (looked at, nothing to write); `last_error` is the failure being retried, "" when none.
    """

    def __init__(
        self,
        resources: Mapping[str, Resource],
        read: Callable[[ObjectKey], Mapping[str, Any] | None],
        *,
        holding: Callable[[int], ProxiesHolding],
        revision: Callable[[], int],
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_seconds: float = PROGRAMMED_POLL_SECONDS,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.resources = resources
        self._read = read
        self._holding = holding
        self._revision = revision
        self._now = now
        self._poll = poll_seconds
        self._concurrency = max(1, concurrency)
        self._status: Mapping[ObjectKey, ObjectStatus] = {}
        self._programmed: dict[ObjectKey, _Programmed] = {}
        self._waiting: dict[int, set[ObjectKey]] = {}  # configuration generation → objects waiting on it
        self._counts: dict[int, ProxiesHolding] = {}
        self._last_accepted: dict[ObjectKey, int] = {}
        self._revision_seen: int | None = None
        self._marked: Marked[ObjectKey] = Marked()
        self._outcomes = StatusWrites(backoff, rng)
        # Nothing is written before the first merge's status: until then every object would seem
        # to be owed nothing.
        self._ready = False

    def update(self, status: Mapping[ObjectKey, ObjectStatus], generation: int) -> None:
        """The status owed now (the merge's) and the configuration generation published with it;
        every object whose status or Programmed changed is looked at again."""
        previous, self._status = self._status, status
        self._ready = True
        self._marked.wanted.set()
        if previous is status:
            return  # the merge kept it (nothing of ours changed): neither is Programmed owed anew
        changed = [key for key in {*previous, *status} if previous.get(key) != status.get(key)]
        self.mark_all(changed)
        for key in changed:
            owed = status.get(key)
            if owed is None:
                self._forget(key)
                continue
            entry = self._programmed.get(key)
            why = refused(owed)
            if why is not None:
                invalid = self._invalid(key, owed.generation, why)
                if entry is None or entry.generation != owed.generation or entry.settled != invalid:
                    self._settle(key, _Programmed(owed.generation, 0), invalid)
                continue
            self._last_accepted[key] = owed.generation
            if entry is None or entry.generation != owed.generation or not entry.carried_by:
                self._unwait(key)
                self._programmed[key] = _Programmed(owed.generation, generation)
                self._waiting.setdefault(generation, set()).add(key)
                self.mark(key)
        self.check_proxies(force=True)

    def mark(self, key: ObjectKey) -> None:
        """Look at `key` again (a watch event, a change of what is owed)."""
        self._marked.mark((key,))

    def mark_all(self, keys: Iterable[ObjectKey]) -> None:
        self._marked.mark(keys)

    def programmed(self, key: ObjectKey) -> ObjectCondition | None:
        """The Programmed condition owed to `key` now (None: no status is owed)."""
        entry = self._programmed.get(key)
        if entry is None:
            return None
        if entry.settled is not None:
            return entry.settled
        return ObjectCondition(
            PROGRAMMED,
            FALSE,
            REASON_PENDING,
            f"waiting for the connected proxies to acknowledge configuration generation {entry.carried_by},"
            f" the first to carry generation {entry.generation} of this object (how many hold it: /status)",
        )

    def progress(self) -> list[tuple[int, ProxiesHolding, int]]:
        """Each configuration generation some object waits on, oldest first, with how many
        connected proxies held it when last counted and how many objects wait on it."""
        return [
            (generation, self._counts.get(generation, ProxiesHolding(0, 0)), len(keys))
            for generation, keys in sorted(self._waiting.items())
        ]

    @property
    def marked(self) -> frozenset[ObjectKey]:
        """The objects to look at on the next pass."""
        return self._marked.keys()

    @property
    def waiting(self) -> int:
        """Objects whose Programmed is not settled yet."""
        return sum(len(keys) for keys in self._waiting.values())

    def _invalid(self, key: ObjectKey, generation: int, why: str) -> ObjectCondition:
        """Programmed for a generation not served because its condition `why` is False."""
        if why == RESOLVED_REFS:
            message = f"generation {generation} is not served while its references do not resolve (see ResolvedRefs)"
            return ObjectCondition(PROGRAMMED, FALSE, REASON_INVALID, message)
        last = self._last_accepted.get(key)
        serving = (
            f"generation {last}, the last accepted, is still served"
            if last is not None and last != generation
            else "its last accepted generation, if any, is still served"
        )
        return ObjectCondition(
            PROGRAMMED, FALSE, REASON_INVALID, f"generation {generation} is not served (see Accepted); {serving}"
        )

    def _settle(self, key: ObjectKey, entry: _Programmed, condition: ObjectCondition) -> None:
        self._unwait(key)
        entry.settled = condition
        self._programmed[key] = entry
        self.mark(key)

    def _unwait(self, key: ObjectKey) -> None:
        entry = self._programmed.get(key)
        if entry is None or entry.settled is not None:
            return
        keys = self._waiting.get(entry.carried_by)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._waiting[entry.carried_by]
                self._counts.pop(entry.carried_by, None)

    def _forget(self, key: ObjectKey) -> None:
        self._unwait(key)
        self._programmed.pop(key, None)
        self._last_accepted.pop(key, None)

    def check_proxies(self, *, force: bool = False) -> None:
        """Asks `holding` about each configuration generation waited on, when the proxies may have
        moved, and keeps the counts for `progress()`; settles (and marks) the objects waiting on a
        generation once every proxy holds it (or none is connected). A count that moves without
        completing marks nothing: the Pending condition does not change with it."""
        revision = self._revision()
        if not force and revision == self._revision_seen:
            return
        self._revision_seen = revision
        for generation in sorted(self._waiting):
            counts = self._holding(generation)
            if counts == self._counts.get(generation):
                continue
            self._counts[generation] = counts
            if counts.total == 0 or counts.held >= counts.total:
                keys = sorted(self._waiting[generation])
                if counts.total == 0:
                    condition = ObjectCondition(
                        PROGRAMMED,
                        TRUE,
                        REASON_NO_PROXIES,
                        f"published in configuration generation {generation}; no proxy is connected, so none"
                        " waits for it: each proxy that connects gets it with its first configuration",
                    )
                else:
                    condition = ObjectCondition(
                        PROGRAMMED,
                        TRUE,
                        REASON_PROGRAMMED,
                        f"all {counts.total} connected proxies acknowledged configuration generation {generation}"
                        " or a later one",
                    )
                for key in keys:
                    self._settle(key, self._programmed[key], condition)

    def rendered(self, key: ObjectKey, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The `status` to write on `obj` for `key`, or None when nothing is owed or it holds it."""
        owed = self._status.get(key)
        if owed is None:
            return None
        programmed = self.programmed(key)
        wanted = (*owed.conditions, *([programmed] if programmed is not None else []))
        current = obj.get("status")
        held = current.get("conditions") if isinstance(current, Mapping) else None
        conditions = render_conditions(wanted, owed.generation, held, self._now())
        return None if conditions == held else {"conditions": conditions}

    async def run(self, client: ApiClient) -> None:
        """Writes what is marked, forever; ends only by cancellation."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            await wait_marked(self._marked, self._poll)
            if not self._ready:
                continue
            now = loop.time()
            if now - checked >= self._poll:
                # At most once per poll interval: a pass over the streams per generation waited on
                # (a few ms with thousands of proxies) must not follow every watch event.
                checked = now
                self.check_proxies()
            if self._marked:
                keys = self._marked.take()  # sorted once; the workers share it
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(self._concurrency, len(keys))):
                        group.create_task(pass_over(keys, functools.partial(self._look, client)))

    async def _look(self, client: ApiClient, key: ObjectKey) -> None:
        """Writes the status owed to `key` if the object does not hold it (one object of a pass)."""
        obj = self._read(key)
        if obj is None:
            return
        status = self.rendered(key, obj)
        if status is None:
            self._outcomes.skip()
            return
        path = f"{self.resources[key.kind].path(key.namespace or None)}/{key.name}/status"
        if await self._outcomes.write(client, path, obj, status, str(key)):
            self.mark(key)
