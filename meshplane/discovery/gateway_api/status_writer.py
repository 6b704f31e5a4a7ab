"""Writing status through the status subresource: the conditions of the GatewayClasses meshplane
owns (`ClassStatusWriter`), and the status of its Gateways and of the routes naming them
(`GatewayStatusWriter`, the same loop over `object_status`'s rendering).

Owns the write loop: the watch callbacks only `mark()` a class (cheap, synchronous); `run()` takes
the marked ones one at a time, reads the class as the watch holds it now, asks `class_status` what
to write, and writes only when that differs from what the object holds, as a JSON merge patch on
`/status` carrying the object's resourceVersion (so a write based on an old copy is refused with
409 instead of undoing someone's newer one). Its write comes back on the watch, which marks the
class again; then nothing differs and nothing is written, so writes never loop.

After a 409 the class waits for the watch to bring its newer version (which marks it again); a 404
means it is gone. Any other failure (the API server unreachable, 5xx, 403) keeps it marked and
retries after a jittered exponential backoff, started over by the next success. Must not decide
which classes are owned nor what their conditions are beyond asking `ownership` and `class_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from meshplane.discovery.gateway_api.class_status import status_update
from meshplane.discovery.gateway_api.conditions import GatewayApiStatus
from meshplane.discovery.gateway_api.gateway_classes import parse_gateway_class
from meshplane.discovery.gateway_api.object_status import gateway_status, policy_status, route_status
from meshplane.discovery.gateway_api.objects import BACKEND_TLS_POLICY, GATEWAY, GRPC_ROUTE, HTTP_ROUTE
from meshplane.discovery.kubernetes_watching import Backoff, Resource

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
WRITE_SECONDS = 30.0


class ClassStatusWriter:
    """Writes `status.conditions` of the GatewayClasses (`resource`) whose controller is
    `controller_name`. `read(name)` is the class as the watch holds it (None when gone);
    `bundles()` the installed CRDs' bundle versions, None while not yet known (nothing is written
    then; mark the classes again once it is known).

    Counters for status: `writes` (accepted by the API server), `conflicts` (409s), `skipped`
    (looked at, nothing to write); `last_error` is the failure being retried, "" when none.
    """

    def __init__(
        self,
        resource: Resource,
        controller_name: str,
        read: Callable[[str], Mapping[str, Any] | None],
        bundles: Callable[[], Mapping[str, str | None] | None],
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.resource = resource
        self.controller_name = controller_name
        self._read = read
        self._bundles = bundles
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._now = now
        self._pending: set[str] = set()
        self._wanted = asyncio.Event()
        self.writes = 0
        self.conflicts = 0
        self.skipped = 0
        self.last_error = ""

    def mark(self, names: Iterable[str]) -> None:
        """Look at classes `names` again (any class: those not owned are skipped)."""
        marked = list(names)
        if marked:
            self._pending.update(marked)
            self._wanted.set()  # also when all were marked already: what is known may have changed

    def owns(self, obj: Mapping[str, Any]) -> bool:
        spec = obj.get("spec")
        return isinstance(spec, Mapping) and spec.get("controllerName") == self.controller_name

    async def run(self, client: ApiClient) -> None:
        """Writes what is marked, forever; ends only by cancellation."""
        failures = 0
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while self._pending and (bundles := self._bundles()) is not None:
                name = min(self._pending)
                self._pending.discard(name)
                obj = self._read(name)
                if obj is None or not self.owns(obj):
                    continue
                conditions = status_update(obj, parse_gateway_class(obj), bundles, self._now())
                if conditions is None:
                    self.skipped += 1
                    continue
                try:
                    status, reason = await self._write(client, name, obj, conditions)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # unreachable, timed out: keep it marked, back off
                    status, reason = 0, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                if status in (200, 201):
                    self.writes += 1
                    failures, self.last_error = 0, ""
                    log.info("GatewayClass %s: status written", name)
                elif status == 409:
                    self.conflicts += 1  # the watch brings the newer version, which marks it again
                elif status == 404:
                    pass  # deleted meanwhile
                else:
                    self._pending.add(name)
                    failures += 1
                    self.last_error = f"cannot write the status of GatewayClass {name}: {reason}"
                    delay = self._backoff.delay(failures, self._rng)
                    log.warning("%s; retrying in %.2f s", self.last_error, delay)
                    await asyncio.sleep(delay)

    async def _write(
        self, client: ApiClient, name: str, obj: Mapping[str, Any], conditions: list[dict[str, Any]]
    ) -> tuple[int, str]:
        """PATCHes `conditions` onto `/status` of class `name` at `obj`'s resourceVersion: the HTTP
        status, and what the server said when it refused."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        body = {"metadata": {"resourceVersion": version}, "status": {"conditions": conditions}}
        return await patch_status(client, f"{self.resource.path(None)}/{name}/status", body)


# A gateway Envoy taking (ACKing) its listeners is known to the xDS server only; nothing calls us
# when it happens, so the writer looks again this often (an in-memory check of the connected
# streams) while some Gateway's Programmed or addresses could change.
PROGRAMMED_POLL_SECONDS = 1.0


class GatewayStatusWriter:
    """Writes `status` of the Gateways meshplane serves and of the HTTPRoutes and GRPCRoutes naming
    them, as `object_status` renders it from the last resolution (`update()`).

    `resources` are the kinds' API resources (Gateway, HTTPRoute, GRPCRoute, and
    BackendTLSPolicy, whose `status.ancestors` are written when it is given); `read(kind, key)` is
    the object as the watch holds it (None: gone); `serving(namespace/name)` the listen addresses
    of the connected gateway Envoys that took the Gateway's listeners (empty: none). As the class
    writer: merge patches on `/status` at the object's resourceVersion, only when something
    differs; 409 waits for the watch's newer version (which marks it again), 404 forgets, any
    other failure retries with backoff. Counters as `ClassStatusWriter`'s.
    """

    def __init__(
        self,
        resources: Mapping[str, Resource],
        controller_name: str,
        read: Callable[[str, tuple[str, str]], Mapping[str, Any] | None],
        serving: Callable[[str], list[str]],
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_seconds: float = PROGRAMMED_POLL_SECONDS,
    ) -> None:
        self.resources = resources
        self.controller_name = controller_name
        self._read = read
        self._serving = serving
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._now = now
        self._poll = poll_seconds
        self._status = GatewayApiStatus()
        self._pending: set[tuple[str, tuple[str, str]]] = set()
        self._wanted = asyncio.Event()
        self._addresses: dict[tuple[str, str], list[str]] = {}
        # Nothing is written before the first status of a merge that read the Gateway API: until
        # then every route would seem to be owed nothing, and our entries would be wiped.
        self._ready = False
        self.writes = 0
        self.conflicts = 0
        self.skipped = 0
        self.last_error = ""

    def update(self, status: GatewayApiStatus) -> None:
        """The status owed now (the merge's); every object it or the previous one names is looked at."""
        previous, self._status = self._status, status
        if not self._ready:
            self._ready = True
            self._wanted.set()
        if previous is status:
            return
        for kind, before, after in (
            (GATEWAY, previous.gateways, status.gateways),
            (HTTP_ROUTE, previous.http_routes, status.http_routes),
            (GRPC_ROUTE, previous.grpc_routes, status.grpc_routes),
        ):
            self.mark(kind, {key for key in (*before, *after) if before.get(key) != after.get(key)})
        if BACKEND_TLS_POLICY in self.resources:
            before_policies, after_policies = previous.backend_tls_policies, status.backend_tls_policies
            self.mark(
                BACKEND_TLS_POLICY,
                {k for k in (*before_policies, *after_policies) if before_policies.get(k) != after_policies.get(k)},
            )

    def mark(self, kind: str, keys: Iterable[tuple[str, str]]) -> None:
        """Look at these objects of `kind` again (a watch event, a change of what is owed)."""
        marked = [(kind, key) for key in keys]
        if marked:
            self._pending.update(marked)
            self._wanted.set()

    def _check_programmed(self) -> None:
        """Marks the Gateways whose serving Envoys changed since last looked at."""
        for key in self._status.gateways:
            addresses = sorted(set(self._serving(f"{key[0]}/{key[1]}")))
            if self._addresses.get(key) != addresses:
                self._addresses[key] = addresses
                self.mark(GATEWAY, [key])
        for key in [key for key in self._addresses if key not in self._status.gateways]:
            del self._addresses[key]

    def _rendered(self, kind: str, key: tuple[str, str], obj: Mapping[str, Any]) -> dict[str, Any] | None:
        if kind == GATEWAY:
            wanted = self._status.gateways.get(key)
            if wanted is None:
                return None  # not ours (any more): its new controller writes it
            addresses = self._addresses.get(key)
            if addresses is None:
                addresses = self._addresses[key] = sorted(set(self._serving(f"{key[0]}/{key[1]}")))
            return gateway_status(obj, wanted, addresses, self._now())
        if kind == BACKEND_TLS_POLICY:
            policy = self._status.backend_tls_policies.get(key)
            return policy_status(obj, policy, self.controller_name, self._now())
        routes = self._status.http_routes if kind == HTTP_ROUTE else self._status.grpc_routes
        return route_status(obj, routes.get(key), self.controller_name, self._now())

    async def run(self, client: ApiClient) -> None:
        """Writes what is marked, forever; ends only by cancellation."""
        failures = 0
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that arrives as the
            # wait completes, and a loop meant to end by cancellation would run on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wanted.wait()
            self._wanted.clear()
            if not self._ready:
                continue
            self._check_programmed()
            while self._pending:
                kind, key = min(self._pending)
                self._pending.discard((kind, key))
                obj = self._read(kind, key)
                if obj is None:
                    continue
                status = self._rendered(kind, key, obj)
                if status is None:
                    self.skipped += 1
                    continue
                try:
                    code, reason = await self._write(client, kind, key, obj, status)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # unreachable, timed out: keep it marked, back off
                    code, reason = 0, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                named = f"{kind} {key[0]}/{key[1]}"
                if code in (200, 201):
                    self.writes += 1
                    failures, self.last_error = 0, ""
                    log.info("%s: status written", named)
                elif code == 409:
                    self.conflicts += 1
                elif code == 404:
                    pass
                else:
                    self._pending.add((kind, key))
                    failures += 1
                    self.last_error = f"cannot write the status of {named}: {reason}"
                    delay = self._backoff.delay(failures, self._rng)
                    log.warning("%s; retrying in %.2f s", self.last_error, delay)
                    await asyncio.sleep(delay)

    async def _write(
        self, client: ApiClient, kind: str, key: tuple[str, str], obj: Mapping[str, Any], status: dict[str, Any]
    ) -> tuple[int, str]:
        version = (obj.get("metadata") or {}).get("resourceVersion")
        body = {"metadata": {"resourceVersion": version}, "status": status}
        return await patch_status(client, f"{self.resources[kind].path(key[0])}/{key[1]}/status", body)


async def patch_status(client: ApiClient, path: str, body: Mapping[str, Any]) -> tuple[int, str]:
    """PATCHes `body` (a JSON merge patch) onto the status subresource at `path`: the HTTP status,
    and what the server said when it refused."""
    response: aiohttp.ClientResponse = await client.call_api(
        path,
        "PATCH",
        body=body,
        header_params={"Content-Type": MERGE_PATCH, "Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=aiohttp.ClientTimeout(total=WRITE_SECONDS),
    )
    try:
        text = ""
        if response.status not in (200, 201, 404, 409):
            text = await response.text()
            with contextlib.suppress(ValueError, AttributeError):
                text = json.loads(text).get("message", text)
        return int(response.status), f"HTTP {response.status}: {str(text)[:300]}"
    finally:
        response.release()
