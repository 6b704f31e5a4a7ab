"""List and watch one kind of Kubernetes object, keeping an exact local copy across reconnects.

Owns the list/watch protocol (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes),
after kopf's `watching.py`: list (paginated with `limit`/`continue`), then watch from the list's
resourceVersion with bookmarks requested; every event and bookmark advances the resourceVersion,
so a dropped stream resumes exactly where it stopped (nothing lost); a 410 Gone (the version was
compacted away) relists at once, and the relist replaces the copy wholesale, reporting as deleted
whatever vanished meanwhile (nothing duplicated, nothing stale). Errors reconnect after an
exponential backoff with full jitter; any answer of the server (a list, a watch opened, a 410)
starts the backoff over, and wakes the other watchers of the same `Reconnect` from theirs, so
after an API server outage every resource is listed again as soon as the server answers one.
Unknown event types are logged and skipped.

The requests go through `kubernetes_asyncio`'s ApiClient (configuration, authentication, TLS,
aiohttp transport), but bodies are read raw and parsed as JSON dicts: deserialising into the
generated model classes costs more than the mapping itself, and raw dicts let one code path serve
`discovery.k8s.io/v1` and `v1beta1` EndpointSlices. Must not know what the objects mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:  # a type only: importing the client costs ~0.25 s and ~60 MiB (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger(__name__)

Object = dict[str, Any]
Key = tuple[str, str]
# (old, new): added is (None, obj), modified (obj, obj'), deleted (obj, None).
Change = tuple[Object | None, Object | None]

DEFAULT_PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class Resource:
    """A kind of namespaced object by its API path: `/api/v1` + `services`, etc."""

    kind: str
    group_version_path: str
    plural: str

    def path(self, namespace: str | None) -> str:
        if namespace:
            return f"{self.group_version_path}/namespaces/{namespace}/{self.plural}"
        return f"{self.group_version_path}/{self.plural}"

    def __str__(self) -> str:
        return f"{self.group_version_path}/{self.plural}"


SERVICES = Resource("Service", "/api/v1", "services")
ENDPOINT_SLICES_V1 = Resource("EndpointSlice", "/apis/discovery.k8s.io/v1", "endpointslices")
ENDPOINT_SLICES_V1BETA1 = Resource("EndpointSlice", "/apis/discovery.k8s.io/v1beta1", "endpointslices")
SECRETS = Resource("Secret", "/api/v1", "secrets")


class ApiError(Exception):
    """The API server answered with an error status (or an ERROR event)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Gone(ApiError):
    """410 Gone: the resourceVersion (or continue token) is too old; only a fresh list helps."""


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _version_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


async def _get(
    client: ApiClient, path: str, query: Sequence[tuple[str, str]], limits: aiohttp.ClientTimeout
) -> aiohttp.ClientResponse:
    """A GET through the client (auth, TLS, host) with the body left unread; raises ApiError/Gone."""
    response: aiohttp.ClientResponse = await client.call_api(
        path,
        "GET",
        query_params=list(query),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=limits,
    )
    if response.status != 200:
        body = await response.text()
        response.release()
        message = body
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(body).get("message", body)
        raise (Gone if response.status == 410 else ApiError)(response.status, str(message)[:500])
    return response


async def get_json(client: ApiClient, path: str, seconds: float = 30.0) -> Any:
    """GET `path` and parse its JSON body (API discovery, e.g. `/apis/discovery.k8s.io`)."""
    response = await _get(client, path, (), aiohttp.ClientTimeout(total=seconds))
    try:
        return json.loads(await response.read())
    finally:
        response.release()


async def list_objects(
    client: ApiClient,
    resource: Resource,
    namespace: str | None = None,
    label_selector: str = "",
    page_size: int = DEFAULT_PAGE_SIZE,
    page_seconds: float = 60.0,
    field_selector: str = "",
) -> tuple[list[Object], str]:
    """Every object (in pages of `page_size`) and the list's resourceVersion, to watch from.

    A continue token that expired mid-way (410) starts the list again from the first page: pages
    of different versions must not be mixed.
    """
    while True:
        items: list[Object] = []
        token = ""
        try:
            while True:
                query = [("limit", str(page_size))]
                if label_selector:
                    query.append(("labelSelector", label_selector))
                if field_selector:
                    query.append(("fieldSelector", field_selector))
                if token:
                    query.append(("continue", token))
                limits = aiohttp.ClientTimeout(total=page_seconds)
                response = await _get(client, resource.path(namespace), query, limits)
                try:
                    body = json.loads(await response.read())
                finally:
                    response.release()
                items += body.get("items") or []
                meta = body.get("metadata") or {}
                token = meta.get("continue") or ""
                if not token:
                    return items, str(meta.get("resourceVersion") or "")
        except Gone:
            if not token:
                raise
            log.info("list of %s: continue token expired; listing again from the start", resource)


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The response's lines, of any length (aiohttp's readline() refuses lines over 128 KiB, and
    one EndpointSlice of 1,000 endpoints is larger)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:end], buffer[end + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


async def watch_events(
    client: ApiClient,
    resource: Resource,
    resource_version: str,
    namespace: str | None = None,
    label_selector: str = "",
    timeout_seconds: int = 300,
    field_selector: str = "",
    opened: Callable[[], None] = lambda: None,
) -> AsyncIterator[Object]:
    """The watch events after `resource_version`, as dicts with `type` and `object`, until the
    server ends the stream (normally after `timeout_seconds`). An ERROR event raises (Gone for 410).
    `opened()` is called once the server has accepted the watch (its 200), before any event."""
    query = [
        ("watch", "true"),
        ("allowWatchBookmarks", "true"),
        ("resourceVersion", resource_version),
        ("timeoutSeconds", str(timeout_seconds)),
    ]
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    # No total timeout: a watch is long. A read timeout a little past the server's own end catches
    # a dead connection that never closes (bookmarks and the timeout both send or close before it).
    limits = aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_seconds + 30)
    response = await _get(client, resource.path(namespace), query, limits)
    opened()
    try:
        async for line in _lines(response):
            event = json.loads(line)
            if event.get("type") == "ERROR":
                status = event.get("object") or {}
                code = int(status.get("code") or 500)
                raise (Gone if code == 410 else ApiError)(code, str(status.get("message") or status))
            yield event
    finally:
        response.release()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS's "full jitter"): uniform in [0, min(cap, base·2ⁿ)]."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap, self.base * 2 ** min(attempt, 30)))


class Reconnect:
    """Shared by the watchers of one API server: when one of them gets an answer after failing,
    the others stop waiting out their backoff and try again at once.

    Why: during an outage each watcher's backoff grows on its own (up to `Backoff.cap`); without
    this, the first watcher back relists Services while another still sleeps, and new Services
    are served with old EndpointSlices until it wakes (up to the cap). Use from one event loop.
    """

    def __init__(self) -> None:
        self._answered = asyncio.Event()

    def answered(self) -> None:
        """The server answered after a failure: end every `pause()` under way."""
        self._answered.set()
        self._answered = asyncio.Event()

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if `answered()` is called meanwhile."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that arrives as the
        # wait completes, and a loop meant to end by cancellation would run on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._answered.wait()


class Watcher:
    """Keeps `objects` equal to the API server's objects of one resource (one namespace, or all).

    Contract: `on_change(changes)` is called synchronously with every batch of changes, in order:
    each relist gives one batch with the difference from before, each watch event one change.
    An event that repeats what the copy holds (same resourceVersion) is not reported. `synced`
    turns true after the first complete list and stays true. `run()` ends only by cancellation.

    Health, for the source's status: `confirmed_at` is the wall-clock time (`time.time()`) the
    watcher last confirmed its copy is in sync (a complete list, a watch the server accepted from
    the copy's version, any watch event or BOOKMARK); `attempted_at` when it last sent a request;
    `last_error` the failure it is retrying, empty once the server answers again.
    """

    def __init__(
        self,
        client: ApiClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        on_change: Callable[[list[Change]], None] = lambda changes: None,
        backoff: Backoff | None = None,
        timeout_seconds: int = 300,
        page_size: int = DEFAULT_PAGE_SIZE,
        rng: random.Random | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.objects: dict[Key, Object] = {}
        self.resource_version = ""  # empty: list before watching
        self.synced = False
        self.last_error = ""
        self.relists = 0
        self.bookmarks = 0
        self.confirmed_at: float | None = None
        self.attempted_at: float | None = None
        self._failures = 0  # failed passes since the server last answered: the backoff's attempt
        self._on_change = on_change
        self._backoff = backoff or Backoff()
        self._timeout_seconds = timeout_seconds
        self._page_size = page_size
        self._rng = rng or random.Random()
        self._reconnect = reconnect or Reconnect()

    def __str__(self) -> str:
        where = f"{self.resource} in " + (f"namespace {self.namespace}" if self.namespace else "all namespaces")
        return where + (f" ({self.field_selector})" if self.field_selector else "")

    async def run(self) -> None:
        """One pass after another. A 410 Gone on a resumed watch relists at once (the server just
        answered); errors are logged and retried after a jittered backoff that starts over whenever
        the server answers."""
        empty_passes = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            resumed = bool(self.resource_version)
            try:
                progressed = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Gone as error:
                if resumed:
                    continue  # the version resumed from was compacted away: list again, now
                # A version it had just listed is already gone: not an answer to act on at once.
                await self._failed(error)
                continue
            except Exception as error:  # any failure of one pass: report it, back off, go again
                await self._failed(error)
                continue
            if progressed or loop.time() - started >= 1.0:
                empty_passes = 0
            else:
                # A stream that ends at once with nothing in it, again and again, must not spin.
                empty_passes += 1
                await self._reconnect.pause(self._backoff.delay(empty_passes, self._rng))

    async def _failed(self, error: BaseException) -> None:
        self.last_error = f"{self}: {_describe(error)}"
        self._failures += 1
        delay = self._backoff.delay(self._failures, self._rng)
        log.warning("%s; retrying in %.2f s", self.last_error, delay)
        await self._reconnect.pause(delay)

    def _attempt(self) -> None:
        self.attempted_at = time.time()

    def _answered(self) -> None:
        """The server answered: start the backoff over, and wake the other watchers if this one
        had been failing (the server is back for them too)."""
        if self._failures:
            self._failures = 0
            self._reconnect.answered()

    def _confirmed(self) -> None:
        """The server accepted a list or a watch from the copy's version: the copy is in sync
        (a watch's pending events follow on the stream), so the error retried is over."""
        self._answered()
        self.confirmed_at = time.time()
        self.last_error = ""

    async def run_once(self) -> bool:
        """One pass: list when there is no version to watch from, then follow one watch stream until
        the server ends it. True when it saw anything (a list or an event). Raises on errors; after
        a Gone the next pass lists again."""
        progressed = False
        if not self.resource_version:
            self._attempt()
            items, version = await list_objects(
                self.client,
                self.resource,
                self.namespace,
                self.label_selector,
                self._page_size,
                field_selector=self.field_selector,
            )
            self._confirmed()
            self._replace(items, version)
            progressed = True
        self._attempt()
        try:
            async for event in watch_events(
                self.client,
                self.resource,
                self.resource_version,
                self.namespace,
                self.label_selector,
                self._timeout_seconds,
                self.field_selector,
                opened=self._confirmed,
            ):
                self.confirmed_at = time.time()
                self._apply(event)
                progressed = True
        except Gone:
            # A 410 is an answer too: the backoff starts over, and the next pass lists at once.
            self._answered()
            log.info("%s: resourceVersion %s is gone; listing again", self, self.resource_version)
            self.resource_version = ""
            raise
        return progressed

    def _replace(self, items: list[Object], version: str) -> None:
        fresh = {key_of(item): item for item in items}
        changes: list[Change] = []
        for key, old in self.objects.items():
            new = fresh.get(key)
            if new is None:
                changes.append((old, None))
            elif _version_of(new) != _version_of(old):
                changes.append((old, new))
        changes += [(None, new) for key, new in fresh.items() if key not in self.objects]
        self.objects = fresh
        self.resource_version = version
        if self.synced:
            self.relists += 1
        self.synced = True
        log.info("%s: listed %d objects at resourceVersion %s", self, len(fresh), version)
        self._on_change(changes)

    def _advance(self, version: str) -> None:
        if _newer(version, self.resource_version):
            self.resource_version = version

    def _apply(self, event: Object) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        version = _version_of(obj)
        if kind == "BOOKMARK":
            self.bookmarks += 1
            self._advance(version)
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("%s: skipping an event of unknown type %r", self, kind)
            return
        key = key_of(obj)
        old = self.objects.get(key)
        self._advance(version)
        if kind == "DELETED":
            if old is not None:
                del self.objects[key]
                self._on_change([(old, None)])
            return
        if old is not None and _version_of(old) == version:
            return  # a repeat of what we hold
        self.objects[key] = obj
        self._on_change([(old, obj)])


def newer_object(obj: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether `obj` is a later version than `than` (of one name, seen on two watches), by the
    rule of `_newer`."""
    return _newer(_version_of(obj), _version_of(than))


def _newer(version: str, than: str) -> bool:
    """Whether `version` is past `than`. Kubernetes calls versions opaque, but every API server
    makes them etcd revisions; where both are numbers, compare them, because a DELETED event may
    carry the object's last version rather than the deletion's (kube-apiserver 1.20 without watch
    cache does), and resuming from it would replay events already seen."""
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return bool(version)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return str(error)
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to the API server: {error}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
