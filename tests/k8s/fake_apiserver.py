"""A fake Kubernetes API server speaking the real wire protocol over HTTP on 127.0.0.1.

For what a real kube-apiserver cannot be made to show on demand (tests/k8s/test_kubernetes_apiserver.py
uses a real one for the rest): `discovery.k8s.io/v1` EndpointSlices, 410 Gone at a chosen moment,
expired continue tokens, watch streams cut mid-line, a server that is down.

What it implements, after https://kubernetes.io/docs/reference/using-api/api-concepts/:
- one resourceVersion counter for everything (as etcd's revision), kept in `metadata.resourceVersion`;
- list (cluster-wide or per namespace) with `labelSelector` (`k=v`, `k!=v`, `k`, `!k`, comma-joined),
  `fieldSelector` (`path=v`, `path==v`, `path!=v`, comma-joined; e.g. a Secret's `type`), `limit`
  and `continue` (pages of one consistent snapshot; `expire_continue_tokens()` makes them 410);
- watch (`watch=true`): a chunked stream of one JSON event per line (ADDED, MODIFIED, DELETED,
  BOOKMARK when `allowWatchBookmarks`, ERROR), starting after `resourceVersion` from the history;
  an object leaving a selector shows as DELETED, entering as ADDED (as the real watch cache does);
  a version older than the compacted history gets an ERROR event with a 410 Status (or an HTTP 410
  when `gone_as_http_status`); `timeoutSeconds` ends the stream;
- API discovery for `discovery.k8s.io` (`served_slice_versions`).
Faults: `drop_watches(mid_line=True)`, `compact()`, `fail_next_requests(n, status)`, `stop()`/`start()`
on the same port. Order: `hold_events(kind, field_selector)` holds back the live events of those
watches until `release_events()`, so one watch stream's event arrives after another's.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.ports import free_port

Obj = dict[str, Any]

# plural -> (group-version path prefix, kind, apiVersion)
RESOURCES = {
    ("/api/v1", "services"): ("Service", "v1"),
    ("/api/v1", "secrets"): ("Secret", "v1"),
    ("/apis/discovery.k8s.io/v1", "endpointslices"): ("EndpointSlice", "discovery.k8s.io/v1"),
    ("/apis/discovery.k8s.io/v1beta1", "endpointslices"): ("EndpointSlice", "discovery.k8s.io/v1beta1"),
}


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _matches(selector: str, labels: dict[str, str]) -> bool:
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.strip().rstrip("=")) != value.strip().lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _fields_match(selector: str, obj: Obj) -> bool:
    """A field selector as the API server reads it (equality terms only, as it supports)."""
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            path, value = term.split("!=", 1)
            if _field(obj, path.strip()) == value.strip():
                return False
        else:
            path, value = term.split("=", 1)
            if _field(obj, path.strip()) != value.strip().lstrip("="):
                return False
    return True


@dataclass
class _Watch:
    kind: str
    namespace: str | None
    selector: str
    field_selector: str = ""
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)
    response: web.StreamResponse | None = None
    request: web.Request | None = None


@dataclass
class Request:
    """One request the server saw, for assertions."""

    path: str
    query: dict[str, str]


class FakeApiServer:
    """See the module docstring. Objects are plain dicts as the API sends them."""

    def __init__(self, *, port: int | None = None, served_slice_versions: tuple[str, ...] = ("v1",)) -> None:
        self.port = port or free_port()
        self.served_slice_versions = served_slice_versions
        self.gone_as_http_status = False
        self.version = 100
        self.compacted = 0  # watches from a version below this get 410
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {"Service": {}, "EndpointSlice": {}, "Secret": {}}
        self.history: list[tuple[int, str, str, Obj]] = []  # (version, kind, event type, object)
        self.requests: list[Request] = []
        self._watches: list[_Watch] = []
        self._continue: dict[str, tuple[int, list[Obj]]] = {}
        # Injected failures, in order: [requests left, status, path part]. Kept as counts, never one
        # entry per request: "unreachable until cleared" asks for 10**9 of them.
        self._failures: list[list[Any]] = []
        self._holding: dict[tuple[str, str], int] = {}  # (kind, field selector) -> version when held
        self._held: list[tuple[_Watch, tuple[str, Obj]]] = []
        self._runner: web.AppRunner | None = None
        self.on_request: Callable[[Request], None] = lambda request: None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- life --------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/apis/discovery.k8s.io", self._discovery)
        app.router.add_get("/apis/discovery.k8s.io/", self._discovery)
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- content -----------------------------------------------------------------------------------

    def apply(self, obj: Obj) -> Obj:
        """Create or replace `obj` (kind, metadata.namespace/name); returns the stored copy."""
        obj = copy.deepcopy(obj)
        kind = obj["kind"]
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", "default"), meta["name"])
        meta["namespace"] = key[0]
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        meta.setdefault("uid", f"uid-{kind}-{key[0]}-{key[1]}")
        old = self.objects[kind].get(key)
        self.objects[kind][key] = obj
        self._emit(kind, "MODIFIED" if old is not None else "ADDED", obj, old)
        return obj

    def apply_many(self, objs: list[Obj]) -> None:
        for obj in objs:
            self.apply(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        old = self.objects[kind].pop((namespace, name))
        self.version += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.version)
        self._emit(kind, "DELETED", gone, None)

    def compact(self) -> None:
        """Forget the history: every watch from an older version now gets 410 Gone."""
        self.compacted = self.version
        self.history.clear()

    def expire_continue_tokens(self) -> None:
        self._continue.clear()

    def fail_next_requests(self, count: int, status: int = 503, *, path_contains: str = "") -> None:
        """The next `count` list/watch requests (whose path contains `path_contains`) get `status`."""
        if count > 0:
            self._failures.append([count, status, path_contains])

    def clear_failures(self) -> None:
        self._failures.clear()

    def bookmark(self) -> None:
        """Send every open watch that asked for bookmarks a BOOKMARK at the current version."""
        for watch in self._watches:
            watch.queue.put_nowait(("BOOKMARK", {"metadata": {"resourceVersion": str(self.version)}}))

    def drop_watches(self, *, mid_line: bool = False) -> None:
        """Cut every open watch connection (after half an event when `mid_line`)."""
        for watch in self._watches:
            watch.queue.put_nowait(("CUT-MID-LINE" if mid_line else "CUT", {}))

    def send_error(self, code: int = 410) -> None:
        """An ERROR event (with a Status of `code`) on every open watch."""
        for watch in self._watches:
            watch.queue.put_nowait(("ERROR", _status(code, "Expired", "too old resource version")))

    def hold_events(self, kind: str, field_selector: str = "") -> None:
        """Hold back the events (from now on) of every watch of `kind` with exactly `field_selector`
        until `release_events()`: the other watches' events arrive first. A watch opened later holds
        them too, those it replays from the history included (a source reports synced after its
        lists, before its watches are open)."""
        self._holding.setdefault((kind, field_selector), self.version)

    def release_events(self) -> None:
        """Send the events held back, in order, and hold no more."""
        self._holding.clear()
        for watch, item in self._held:
            watch.queue.put_nowait(item)
        self._held.clear()

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def watches_of(self, kind: str) -> int:
        return sum(1 for watch in self._watches if watch.kind == kind)

    def _emit(self, kind: str, event: str, obj: Obj, old: Obj | None) -> None:
        self.history.append((self.version, kind, event, obj))
        for watch in self._watches:
            if watch.kind != kind:
                continue
            meta = obj["metadata"]
            if watch.namespace and meta["namespace"] != watch.namespace:
                continue
            now = _matches(watch.selector, meta.get("labels") or {}) and _fields_match(watch.field_selector, obj)
            before = (
                old is not None
                and _matches(watch.selector, (old["metadata"].get("labels") or {}))
                and _fields_match(watch.field_selector, old)
            )
            if event == "MODIFIED" and now and not before:
                event = "ADDED"
            elif event == "MODIFIED" and before and not now:
                event, now = "DELETED", True
            elif event == "DELETED":
                now = _matches(watch.selector, meta.get("labels") or {}) and _fields_match(watch.field_selector, obj)
            if now and (watch.kind, watch.field_selector) in self._holding:
                self._held.append((watch, (event, obj)))
            elif now:
                watch.queue.put_nowait((event, obj))

    # --- HTTP --------------------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        self._record(request)
        versions = [{"groupVersion": f"discovery.k8s.io/{v}", "version": v} for v in self.served_slice_versions]
        return web.json_response(
            {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": "discovery.k8s.io",
                "versions": versions,
                "preferredVersion": versions[0],
            }
        )

    def _record(self, request: web.Request) -> Request:
        seen = Request(request.path, dict(request.query))
        self.requests.append(seen)
        self.on_request(seen)
        return seen

    def _route(self, path: str) -> tuple[str, str, str | None] | None:
        """(kind, apiVersion, namespace) for a list/watch path; None when not served."""
        for (prefix, plural), (kind, api_version) in RESOURCES.items():
            if kind == "EndpointSlice" and prefix.rsplit("/", 1)[1] not in self.served_slice_versions:
                continue
            if path == f"{prefix}/{plural}":
                return kind, api_version, None
            head = f"{prefix}/namespaces/"
            if path.startswith(head) and path.endswith(f"/{plural}"):
                namespace = path[len(head) : -len(plural) - 1]
                if namespace and "/" not in namespace:
                    return kind, api_version, namespace
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        for index, (left, code, part) in enumerate(self._failures):
            if part in request.path:
                if left > 1:
                    self._failures[index][0] = left - 1
                else:
                    del self._failures[index]
                return web.json_response(_status(code, "ServiceUnavailable", "injected failure"), status=code)
        route = self._route(request.path)
        if route is None:
            return web.json_response(
                _status(404, "NotFound", "the server could not find the requested resource"), status=404
            )
        kind, api_version, namespace = route
        selector = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, kind, namespace, selector, fields)
        return self._list(request, kind, api_version, namespace, selector, fields)

    def _visible(self, kind: str, namespace: str | None, selector: str, fields: str = "") -> list[Obj]:
        return [
            obj
            for key, obj in sorted(self.objects[kind].items())
            if (not namespace or key[0] == namespace)
            and _matches(selector, obj["metadata"].get("labels") or {})
            and _fields_match(fields, obj)
        ]

    def _list(
        self, request: web.Request, kind: str, api_version: str, namespace: str | None, selector: str, fields: str = ""
    ) -> web.Response:
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue")
        if token:
            if token not in self._continue:
                return web.json_response(
                    _status(410, "Expired", "the provided continue parameter is too old"), status=410
                )
            version, remaining = self._continue.pop(token)
        else:
            version, remaining = self.version, self._visible(kind, namespace, selector, fields)
        page, rest = (remaining[:limit], remaining[limit:]) if limit else (remaining, [])
        meta: Obj = {"resourceVersion": str(version)}
        if rest:
            next_token = base64.b64encode(json.dumps([version, len(self._continue), id(rest)]).encode()).decode()
            self._continue[next_token] = (version, rest)
            meta["continue"] = next_token
        return web.json_response({"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": page})

    async def _watch(
        self, request: web.Request, kind: str, namespace: str | None, selector: str, fields: str = ""
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        if since and since < self.compacted and self.gone_as_http_status:
            return web.json_response(_status(410, "Expired", f"too old resource version: {since}"), status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watch = _Watch(kind, namespace, selector, fields, response=response, request=request)
        if since and since < self.compacted:
            await self._write(response, "ERROR", _status(410, "Expired", f"too old resource version: {since}"))
            return response
        # Replay history after `since`, then live events (registered before replay: nothing missed).
        self._watches.append(watch)
        try:
            for version, event_kind, event, obj in list(self.history):
                if version > since and event_kind == kind:
                    meta = obj["metadata"]
                    if (
                        (not namespace or meta["namespace"] == namespace)
                        and _matches(selector, meta.get("labels") or {})
                        and _fields_match(fields, obj)
                    ):
                        held_since = self._holding.get((kind, fields))
                        if held_since is not None and version > held_since:
                            self._held.append((watch, (event, obj)))
                        else:
                            await self._write(response, event, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    break
                event, obj = item
                if event == "BOOKMARK" and not bookmarks:
                    continue
                if event == "CUT":
                    self._abort(request)
                    return response
                if event == "CUT-MID-LINE":
                    await response.write(b'{"type":"ADDED","object":{"kind":')
                    self._abort(request)
                    return response
                if event in ("ADDED", "MODIFIED", "DELETED") and int(obj["metadata"]["resourceVersion"]) <= since:
                    continue  # replayed already
                await self._write(response, event, obj if event != "BOOKMARK" else self._bookmark_object(kind, obj))
                if event == "ERROR":
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        finally:
            if watch in self._watches:
                self._watches.remove(watch)
        await response.write_eof()
        return response

    @staticmethod
    def _bookmark_object(kind: str, obj: Obj) -> Obj:
        return {"kind": kind, "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}}

    @staticmethod
    def _abort(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()

    @staticmethod
    async def _write(response: web.StreamResponse, event: str, obj: Obj) -> None:
        await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
