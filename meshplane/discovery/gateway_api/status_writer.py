"""Writing status through the status subresource: the conditions of the GatewayClasses meshplane
owns (`ClassStatusWriter`), and the status of its Gateways and of the routes naming them
(`GatewayStatusWriter`, the same loop over `object_status`'s rendering).

Owns the write loops: the watch callbacks only `mark()` an object (cheap, synchronous); `run()`
takes the marked ones in one sorted pass, reads each as the watch holds it now, asks
`class_status` / `object_status` what to write, and writes only when that differs from what the
object holds (`status_writing`: the merge patch at the object's resourceVersion, 409, 404 and
backoff, a turn for the event loop every few objects). Its write comes back on the watch, which
marks the object again; then nothing differs and nothing is written, so writes never loop. Must
not decide which classes are owned nor what their conditions are beyond asking `ownership` and
`class_status`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshplane.discovery.gateway_api.class_status import status_update
from meshplane.discovery.gateway_api.conditions import GatewayApiStatus
from meshplane.discovery.gateway_api.gateway_classes import parse_gateway_class
from meshplane.discovery.gateway_api.object_status import gateway_status, policy_status, route_status
from meshplane.discovery.gateway_api.objects import BACKEND_TLS_POLICY, GATEWAY, GRPC_ROUTE, HTTP_ROUTE
from meshplane.discovery.kubernetes_watching import Backoff, Resource
from meshplane.discovery.status_writing import MERGE_PATCH as MERGE_PATCH  # the tests name it here
from meshplane.discovery.status_writing import CountedWrites, Marked, StatusWrites, pass_over, wait_marked

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient


class ClassStatusWriter(CountedWrites):
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
        self._now = now
        self._marked: Marked[str] = Marked()
        self._outcomes = StatusWrites(backoff, rng)

    def mark(self, names: Iterable[str]) -> None:
        """Look at classes `names` again (any class: those not owned are skipped)."""
        self._marked.mark(names)

    def owns(self, obj: Mapping[str, Any]) -> bool:
        spec = obj.get("spec")
        return isinstance(spec, Mapping) and spec.get("controllerName") == self.controller_name

    async def run(self, client: ApiClient) -> None:
        """Writes what is marked, forever; ends only by cancellation."""
        while True:
            await self._marked.wanted.wait()
            self._marked.wanted.clear()
            while self._marked and (bundles := self._bundles()) is not None:
                await pass_over(self._marked.take(), functools.partial(self._look, client, bundles))

    async def _look(self, client: ApiClient, bundles: Mapping[str, str | None], name: str) -> None:
        obj = self._read(name)
        if obj is None or not self.owns(obj):
            return
        conditions = status_update(obj, parse_gateway_class(obj), bundles, self._now())
        if conditions is None:
            self._outcomes.skip()
            return
        path = f"{self.resource.path(None)}/{name}/status"
        if await self._outcomes.write(client, path, obj, {"conditions": conditions}, f"GatewayClass {name}"):
            self._marked.mark([name])


# A gateway Envoy taking (ACKing) its listeners is known to the xDS server only; nothing calls us
# when it happens, so the writer looks again this often (an in-memory check of the connected
# streams) while some Gateway's Programmed or addresses could change.
PROGRAMMED_POLL_SECONDS = 1.0


class GatewayStatusWriter(CountedWrites):
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
        self._now = now
        self._poll = poll_seconds
        self._status = GatewayApiStatus()
        self._marked: Marked[tuple[str, tuple[str, str]]] = Marked()
        self._outcomes = StatusWrites(backoff, rng)
        self._addresses: dict[tuple[str, str], list[str]] = {}
        # Nothing is written before the first status of a merge that read the Gateway API: until
        # then every route would seem to be owed nothing, and our entries would be wiped.
        self._ready = False

    def update(self, status: GatewayApiStatus) -> None:
        """The status owed now (the merge's); every object it or the previous one names is looked at."""
        previous, self._status = self._status, status
        if not self._ready:
            self._ready = True
            self._marked.wanted.set()
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
        self._marked.mark((kind, key) for key in keys)

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
        while True:
            await wait_marked(self._marked, self._poll)
            if not self._ready:
                continue
            self._check_programmed()
            while self._marked:
                await pass_over(self._marked.take(), functools.partial(self._look, client))

    async def _look(self, client: ApiClient, marked: tuple[str, tuple[str, str]]) -> None:
        kind, key = marked
        obj = self._read(kind, key)
        if obj is None:
            return
        status = self._rendered(kind, key, obj)
        if status is None:
            self._outcomes.skip()
            return
        path = f"{self.resources[kind].path(key[0])}/{key[1]}/status"
        if await self._outcomes.write(client, path, obj, status, f"{kind} {key[0]}/{key[1]}"):
            self._marked.mark([marked])
