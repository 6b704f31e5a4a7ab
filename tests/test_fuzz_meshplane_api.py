"""Property tests for meshplane's own API through the real decoding path: an object of any kind,
its spec random JSON or a valid spec with one value replaced, is created on a real kube-apiserver
(its CRDs the loosest a cluster may have: every field kept as sent, so the API server refuses
nothing and the spec reaches meshplane as written), comes back on the source's watch as JSON, is
read by `parse_object` in the source's worker thread, and merged. Whatever it holds: nothing
raises, the merge owes it an `Accepted` condition with a reason, and the other objects (an
ExternalService, its TrafficPolicy and a MeshRoute, created first) stay accepted and served as
they were.

And an object updated from a good spec to any spec: when meshplane refuses the new generation, the
last good one keeps serving (the merged mesh is the one the good generation made), and whatever
the merge says of it (the fuzzed reason, control characters and all) reaches the object's
`status.conditions` through the source's own status writer, as the merge said it, cut to the
CRD's bound; the API server takes every such write.

The API server, the source and its event loop run in a thread of their own for the whole module;
each example is one object created there, awaited on the watch, merged and deleted.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.meshplane_api.conditions import ACCEPTED, MAX_MESSAGE, REASON_INVALID
from meshplane.discovery.meshplane_api.kinds import (
    DEVICE_POLICY,
    EDGE_SITE,
    EXTERNAL_SERVICE,
    KINDS,
    MESH_ROUTE,
    MESH_TELEMETRY,
    TRAFFIC_POLICY,
    kind_named,
)
from meshplane.discovery.meshplane_api.objects import ObjectKey
from meshplane.discovery.meshplane_api.source import MeshplaneApiSource
from meshplane.model import ServiceRef
from tests.k8s.conftest import FAST_BACKOFF
from tests.k8s.meshplane_api_fixtures import create, delete, minimal_crd, path_of
from tests.k8s.real_apiserver import CRDS, KUBE_MISSING, Cluster, call, call_ok, module_cluster, wait_established
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(900), requires(KUBE_MISSING)]
T = TypeVar("T")
NS = "fuzz"
DEADLINE = 30.0

# A valid spec per kind: mutated one value at a time. The TrafficPolicy's targets the anchor
# service, which the older anchor policy holds: it is refused (Conflicted), the anchor's kept.
VALID: dict[str, dict[str, Any]] = {
    EXTERNAL_SERVICE: {
        "ports": [{"name": "http", "port": 8080, "protocol": "http1"}],
        "endpoints": [{"address": "127.0.0.1", "port": 9000, "zone": "a", "weight": 2}],
        "hosts": ["pay.example.com"],
        "policy": {"connect_timeout": "1s", "load_balancing": "least_request"},
    },
    TRAFFIC_POLICY: {
        "target_refs": [{"group": "meshplane.io", "kind": "ExternalService", "name": "anchor"}],
        "connect_timeout": "500ms",
        "circuit_breakers": {"max_connections": 10},
        "outlier_detection": {"consecutive_5xx": 3},
    },
    MESH_ROUTE: {
        "hosts": ["r.example.com"],
        "rules": [
            {
                "match": {"path": {"prefix": "/a"}, "headers": [{"name": "x-a", "exact": "1"}]},
                "backends": [{"service": "anchor", "weight": 3}],
                "timeout": "2s",
                "retries": {"on": ["5xx"], "attempts": 2},
            }
        ],
    },
    EDGE_SITE: {"region": "eu", "zone": "eu-1", "gateways": ["127.0.0.1:15080"], "device_ranges": ["10.20.0.0/16"]},
    MESH_TELEMETRY: {"access_logs": [{"to": "stdout"}]},
    DEVICE_POLICY: {
        "classes": ["bike"],
        "allow": [{"service": "fuzz/anchor", "paths": [{"prefix": "/rides"}], "methods": ["GET"]}],
        "rate_limit": {"requests": 5, "interval": "1s", "burst": 10},
    },
}


def _all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _all_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _all_keys(item)}
    return set()


# The good generation an updated object starts from: VALID, but for the TrafficPolicy, which there
# loses to the anchor's; here it targets a service of its own, so that its good generation serves.
GOOD: dict[str, dict[str, Any]] = {
    **VALID,
    TRAFFIC_POLICY: {
        **VALID[TRAFFIC_POLICY],
        "target_refs": [{"group": "meshplane.io", "kind": "ExternalService", "name": "spare"}],
    },
}
JSON_PATCH = "application/json-patch+json"

KNOWN_KEYS = sorted({key for spec in VALID.values() for key in _all_keys(spec)})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "0s", "1ms", "500s", "-1s", "1e9s", "http1", "tcp", "::1", "10.0.0.0/0", "a" * 300]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def _paths(value: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield here
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*here, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*here, index))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replaced(value[head], rest, new)
    return copy


@st.composite
def near_misses(draw: st.DrawFn, kind: str) -> Any:
    """`kind`'s valid spec with one value (anywhere in it, or the whole) replaced by any JSON."""
    spec = VALID[kind]
    path = draw(st.sampled_from([p for p in _paths(spec) if p]))
    return _replaced(spec, path, draw(st.one_of(_alike(_at(spec, path)), json_values)))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _alike(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same JSON type as `value` (a near miss that passes a type check)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(min_value=-(2**31), max_value=2**31)
    if isinstance(value, str):
        return st.one_of(st.text(max_size=20), st.just(value + "x"), st.just(value[:-1]))
    return json_values


@st.composite
def fuzzed(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from([kind.name for kind in KINDS]))
    spec = draw(
        st.one_of(st.just(VALID[kind]), near_misses(kind), st.dictionaries(keys, json_values, max_size=6), json_values)
    )
    return kind, spec


class Harness:
    """A real API server's client, a running MeshplaneApiSource and their event loop, in a thread."""

    def __init__(self, cluster: Cluster) -> None:
        assert cluster.uncached is not None
        self.server = cluster.uncached
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.names = itertools.count()
        self.generations = itertools.count(1)  # configuration generations, for the status writer
        self.admin: ApiClient | None = None
        self.source: MeshplaneApiSource | None = None
        self.task: asyncio.Task[None] | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(DEADLINE * 4)

    async def start(self) -> None:
        self.admin = self.server.client()
        for kind in KINDS:
            status, answer = await call(self.admin, "POST", CRDS, minimal_crd(kind))
            assert status in (201, 409), answer
        await wait_established(self.admin, [crd["metadata"]["name"] for crd in map(minimal_crd, KINDS)])
        status, answer = await call(
            self.admin,
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        )
        assert status in (201, 409), answer
        await create(
            self.admin, EXTERNAL_SERVICE, "anchor", NS, {"port": 8080, "endpoints": [{"address": "127.0.0.1"}]}
        )
        await create(self.admin, TRAFFIC_POLICY, "anchor", NS, {**VALID[TRAFFIC_POLICY], "connect_timeout": "2s"})
        await create(
            self.admin,
            MESH_ROUTE,
            "anchor",
            NS,
            {"service": "anchor", "rules": [{"backends": [{"service": "anchor"}]}]},
        )
        await create(self.admin, EXTERNAL_SERVICE, "spare", NS, {"port": 8081, "endpoints": [{"address": "127.0.0.2"}]})
        self.source = MeshplaneApiSource(client=self.admin, backoff=FAST_BACKOFF)
        self.task = asyncio.create_task(self.source.run())
        await self._until(
            lambda: self.source is not None and self.source.synced and len(self.source.content().objects) >= 4
        )

    async def _until(self, condition: Any) -> None:
        end = self.loop.time() + DEADLINE
        while not condition():
            if self.loop.time() > end:
                raise AssertionError(f"timed out; the source's status: {self.source.status if self.source else None}")
            await asyncio.sleep(0.005)

    async def round_trip(self, kind: str, spec: Any) -> tuple[ObjectKey, Any] | None:
        """Creates the object, waits until the source has read it, and merges: the key and the
        merge's result; None when the API server refused the object (nothing reaches meshplane)."""
        assert self.admin is not None
        assert self.source is not None
        source = self.source
        name = f"fuzzed-{next(self.names)}"
        found = kind_named(kind)
        assert found is not None
        namespaced = found.namespaced
        body = {"apiVersion": "meshplane.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        if namespaced:
            body["metadata"]["namespace"] = NS
        path = path_of(kind, NS)
        status, answer = await call(self.admin, "POST", path, body)
        if status != 201:
            assert status in (400, 422), answer  # refused at the door: a clear error, never a 5xx
            return None
        key = ObjectKey(kind, NS if namespaced else "", name)
        await self._until(lambda: key in source.content().objects and not source.pending)
        merged = Inventory(kubernetes_secrets=False).merge(Contents(meshplane_api=source.content()))
        await delete(self.admin, kind, name, NS if namespaced else "")
        await self._until(lambda: key not in source.content().objects)
        return key, merged

    async def update(self, kind: str, spec: Any) -> tuple[ObjectKey, Any, Any, dict[str, Any]] | None:
        """Creates the object with its good spec and merges; replaces its spec with `spec` and
        merges again with the same inventory (which holds the last good generation); hands the
        second merge's status to the source's status writer and waits until the object holds it.
        The key, both merges and the object's status as the API server then holds it; None when
        the API server refused the update."""
        assert self.admin is not None
        assert self.source is not None
        source = self.source
        found = kind_named(kind)
        assert found is not None
        name = f"updated-{next(self.names)}"
        namespace = NS if found.namespaced else ""
        key = ObjectKey(kind, namespace, name)
        inventory = Inventory(kubernetes_secrets=False)
        await create(self.admin, kind, name, NS, GOOD[kind])
        await self._until(lambda: key in source.content().objects and not source.pending)
        good = inventory.merge(Contents(meshplane_api=source.content()))
        try:
            path = f"{path_of(kind, NS)}/{name}"
            status, answer = await call(
                self.admin, "PATCH", path, [{"op": "replace", "path": "/spec", "value": spec}], JSON_PATCH
            )
            if status != 200:
                assert status in (400, 422), answer  # refused at the door: a clear error, never a 5xx
                return None
            generation = answer["metadata"]["generation"]
            if generation == 1:
                return None  # the same spec: no new generation
            await self._until(
                lambda: (
                    key in source.content().objects
                    and source.content().objects[key].generation == generation
                    and not source.pending
                )
            )
            fuzzed = inventory.merge(Contents(meshplane_api=source.content()))
            owed = fuzzed.object_status[key]
            source.writer.update(fuzzed.object_status, next(self.generations))

            async def written() -> dict[str, Any] | None:
                assert self.admin is not None
                held = await call_ok(self.admin, "GET", path)
                conditions = {c["type"]: c for c in (held.get("status") or {}).get("conditions") or ()}
                accepted = conditions.get(ACCEPTED, {})
                return conditions if accepted.get("observedGeneration") == owed.generation else None

            end = self.loop.time() + DEADLINE
            while (held := await written()) is None:
                if self.loop.time() > end:
                    raise AssertionError(f"status never written; the writer: {source.writer.last_error!r}")
                await asyncio.sleep(0.01)
            return key, good, fuzzed, held
        finally:
            await delete(self.admin, kind, name, namespace)
            await self._until(lambda: key not in source.content().objects)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.admin is not None:
            await self.admin.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    for cluster in module_cluster(Path(tmp_path_factory.mktemp("kube-meshplane-api-fuzz")), cached=False):
        running = Harness(cluster)
        try:
            running.run(running.start())
            yield running
        finally:
            running.run(running.stop())
            running.loop.call_soon_threadsafe(running.loop.stop)
            running.thread.join(10)


ANCHORS = [
    ObjectKey(EXTERNAL_SERVICE, NS, "anchor"),
    ObjectKey(TRAFFIC_POLICY, NS, "anchor"),
    ObjectKey(MESH_ROUTE, NS, "anchor"),
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(fuzzed())
def test_any_object_is_read_and_merged_with_a_reason_and_the_others_stay_served(
    harness: Harness, drawn: tuple[str, Any]
) -> None:
    kind, spec = drawn
    found = harness.run(harness.round_trip(kind, spec))
    if found is None:
        event(f"{kind}: refused by the API server")
        return
    key, merged = found
    owed = merged.object_status.get(key)
    assert owed is not None, f"no status owed to {key}"
    accepted = owed.condition(ACCEPTED)
    assert accepted is not None
    assert accepted.reason
    event(f"{kind}: Accepted={accepted.status}")
    if accepted.status == "False":
        assert accepted.message
    for anchor in ANCHORS:
        status = merged.object_status[anchor].condition(ACCEPTED)
        assert status is not None
        assert status.status == "True", (anchor, status)
    service = next(s for s in merged.mesh.services if s.ref == ServiceRef(NS, "anchor"))
    assert service.policy.connect_timeout == 2.0
    assert any(route.origin == f"{MESH_ROUTE} {NS}/anchor" for route in merged.mesh.routes)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(fuzzed())
def test_an_object_updated_to_any_spec_keeps_its_last_good_version_serving_and_its_status_says_why(
    harness: Harness, drawn: tuple[str, Any]
) -> None:
    kind, spec = drawn
    found = harness.run(harness.update(kind, spec))
    if found is None:
        event(f"{kind}: the update refused by the API server, or no new generation")
        return
    key, good, fuzzed, held = found
    first = good.object_status[key].condition(ACCEPTED)
    assert first is not None
    assert first.status == "True", (key, first)  # the good generation is served
    owed = fuzzed.object_status[key]
    accepted = owed.condition(ACCEPTED)
    assert accepted is not None
    assert accepted.reason
    event(f"{kind}: updated, Accepted={accepted.status} ({accepted.reason})")
    if accepted.status == "False" and accepted.reason == REASON_INVALID:
        # Refused: the last good generation keeps serving, so the mesh is the good one's.
        assert fuzzed.mesh == good.mesh, key
        assert "generation 1" in accepted.message, accepted.message
    # What the merge owes reached the object, through the status writer: every condition as the
    # merge said it, its message cut to the CRD's bound (JSON carries any character escaped).
    for condition in owed.conditions:
        written = held[condition.type]
        assert (written["status"], written["reason"]) == (condition.status, condition.reason)
        assert written["message"] == condition.message[:MAX_MESSAGE]
        assert len(written["message"]) <= MAX_MESSAGE
        assert written["observedGeneration"] == owed.generation
    assert "Programmed" in held
