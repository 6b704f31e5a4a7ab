"""`/topology` and the dashboard's pictures: the graph document's content, bounds and order (unit),
and what headless Chromium draws of a real control plane with real Envoys connected (a sidecar and
an edge gateway) and devices registered over the registry's gRPC API.

The live test drives one page over the Chrome DevTools protocol (a WebSocket): it waits for the
graph, writes a policy file, and waits for the new service to appear in the same page, never
reloaded. The screenshot test runs `chromium --headless --screenshot` and decodes the PNG with
`zlib` and `struct`. Every wait polls a condition with a deadline and shows what was last seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import subprocess
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import jsonschema
import pytest
from aiohttp import web

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.app import ControlPlane
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.model import (
    Device,
    DeviceEndpoint,
    Endpoint,
    Mesh,
    Mirror,
    ProxyGroup,
    ProxyRole,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    Site,
    WeightedBackend,
)
from meshplane.model.sites import GatewayAddress
from meshplane.status.dashboard import dashboard_html
from meshplane.status.document import StatusInputs
from meshplane.status.http import status_app
from meshplane.status.topology import KIND_ORDER, MAX_EDGES, MAX_NODES, CachedTopology, topology_document
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import PublishState
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack
from meshplane.xds.types import TypeUrl
from tests.edge_plane import QUICK, running_edge_plane
from tests.envoy_harness import REPO, Envoy, start_envoy
from tests.ports import free_port
from tests.test_dashboard import CHROMIUM_FLAGS, dashboard_when, require_chromium

SCHEMA = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
DEADLINE = 60.0
T = TypeVar("T")


def validate(document: Any) -> None:
    jsonschema.validate(document, {**SCHEMA, "$ref": "#/$defs/topology"})


def service(name: str, endpoints: int = 1, namespace: str = "default") -> Service:
    return Service(
        name,
        namespace,
        (ServicePort("http", 8080),),
        tuple(Endpoint("127.0.0.1", 9000 + index, "http") for index in range(endpoints)),
    )


def ref(name: str) -> ServiceRef:
    return ServiceRef("default", name)


CANARY = RouteTable(
    "api-split",
    (
        RouteRule(
            RouteMatch(),
            (WeightedBackend(ref("api"), weight=90), WeightedBackend(ref("api-canary"), weight=10)),
            mirrors=(Mirror(ref("shadow"), percent=5.0),),
        ),
    ),
    service=ref("api"),
)
MESH = Mesh.of(
    [service("web", 2), service("api"), service("api-canary"), service("shadow")],
    [CANARY],
    sites=[Site("gym", "local", gateways=(GatewayAddress("10.0.0.1", 15080),), device_ranges=("198.18.0.0/16",))],
)
SIDECARS = ProxyGroup()
GATEWAYS = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym")


def connect(registry: StreamRegistry, node_id: str, group: ProxyGroup, *, ack: bool = True) -> None:
    track = registry.open(StreamKind.DELTA_ADS, node_id, "c", group, "envoy 1.40", "ipv4:127.0.0.1:1")
    registry.sent(track, TypeUrl.CLUSTER, "v1", "1", ())
    if ack:
        registry.acked(track, TypeUrl.CLUSTER, "v1")
    else:
        registry.nacked(track, TypeUrl.CLUSTER, "v1", "rejected")


def by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["id"]: node for node in document["nodes"]}


def edge_set(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(edge["from"], edge["to"], edge["kind"]) for edge in document["edges"]}


def test_topology_draws_groups_routes_with_their_weights_and_mirrors_and_the_services_reached() -> None:
    registry = StreamRegistry()
    connect(registry, "a", SIDECARS)
    connect(registry, "b", SIDECARS, ack=False)
    document = topology_document(MESH, registry, 1.0)
    validate(document)
    nodes = by_id(document)
    sidecars = nodes[f"group:{SIDECARS}"]
    assert (sidecars["proxies"], sidecars["state"]) == (2, "NACKED")
    assert sidecars["sync"] == {"SYNCED": 1, "STALE": 0, "NACKED": 1, "NOT SENT": 0}
    assert nodes["service:default/web"]["endpoints"] == 2
    assert nodes["service:default/web"]["ports"] == [{"name": "http", "port": 8080, "protocol": "http1"}]
    routes = {(e["to"], e["kind"]): e for e in document["edges"] if e["from"] == "route:api-split"}
    assert routes[("service:default/api", "routes")]["shares"] == [90.0]
    assert routes[("service:default/api-canary", "routes")]["shares"] == [10.0]
    assert routes[("service:default/shadow", "mirror")]["percents"] == [5.0]
    reached = {edge["to"] for edge in document["edges"] if edge["from"] == sidecars["id"]}
    # `api` has a route table attached: the sidecars reach it through the table.
    assert reached == {"route:api-split", "service:default/web", "service:default/api-canary", "service:default/shadow"}
    assert document["more"] == {"nodes": 0, "nodes_by_kind": {}, "edges": 0}


def test_a_site_of_100000_devices_is_one_node_with_a_count_and_its_gateway_counts_its_proxies() -> None:
    devices = [
        Device(f"bike-{index}", "bike", "gym", (DeviceEndpoint(f"198.18.{index // 250}.{index % 250 + 1}", 80),))
        for index in range(100_000)
    ]
    mesh = Mesh.of(MESH.services, MESH.routes, sites=MESH.sites, devices=devices)
    registry = StreamRegistry()
    for node_id in ("gw-1", "gw-2"):
        connect(registry, node_id, GATEWAYS)
    connect(registry, "gw-elsewhere", ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=16000, site="gym"))
    document = topology_document(mesh, registry, 1.0)
    validate(document)
    nodes = by_id(document)
    assert len(document["nodes"]) == 2 + 1 + 2 + 1 + 1 + 4  # groups, site, gateways, devices, route, services
    assert nodes["site:gym"]["devices"] == 100_000
    assert nodes["devices:gym"]["count"] == 100_000
    declared = nodes["gateway:gym/10.0.0.1:15080"]
    assert (declared["declared"], declared["proxies"]) == (True, 2)
    # A connected gateway group listening at no declared address is shown, and says so.
    undeclared = nodes["gateway:gym/0.0.0.0:16000"]
    assert (undeclared["declared"], undeclared["proxies"]) == (False, 1)
    assert {
        ("site:gym", "gateway:gym/10.0.0.1:15080", "has"),
        ("gateway:gym/10.0.0.1:15080", "devices:gym", "carries"),
        (f"group:{GATEWAYS}", "gateway:gym/10.0.0.1:15080", "serves"),
    } <= edge_set(document)


def test_topology_is_bounded_counts_what_it_leaves_off_and_is_deterministic() -> None:
    services = [service(f"svc-{index:04}") for index in range(1000)]
    mesh = Mesh.of(services, sites=MESH.sites)
    registry = StreamRegistry()
    for index in range(5):
        connect(registry, f"sidecar-{index}", ProxyGroup(outbound_port=20000 + index))
    document = topology_document(mesh, registry, 1.0)
    validate(document)
    assert len(document["nodes"]) == MAX_NODES
    assert document["more"]["nodes"] == 5 + 3 + 1000 - MAX_NODES
    assert document["more"]["nodes_by_kind"] == {"service": 5 + 3 + 1000 - MAX_NODES}
    assert len(document["edges"]) == MAX_EDGES
    shown = {node["id"] for node in document["nodes"]}
    assert all(edge["from"] in shown and edge["to"] in shown for edge in document["edges"])
    assert document["more"]["edges"] == 5 * (MAX_NODES - 8) + 2 - MAX_EDGES
    # Kind order, then id; edges sorted; the same inputs give the same document.
    kinds = [KIND_ORDER.index(node["kind"]) for node in document["nodes"]]
    assert kinds == sorted(kinds)
    services_shown = [node["id"] for node in document["nodes"] if node["kind"] == "service"]
    assert services_shown == sorted(services_shown)
    assert services_shown[0] == "service:default/svc-0000"
    keys = [(edge["from"], edge["to"], edge["kind"]) for edge in document["edges"]]
    assert keys == sorted(keys)
    assert topology_document(mesh, registry, 1.0) == document


def test_before_the_first_merge_only_the_connected_groups_are_shown() -> None:
    registry = StreamRegistry()
    connect(registry, "early", SIDECARS)
    document = topology_document(None, registry, 1.0)
    validate(document)
    assert document["published"] is False
    assert [node["id"] for node in document["nodes"]] == [f"group:{SIDECARS}"]
    assert document["edges"] == []


def test_each_site_counts_its_own_devices_and_a_site_without_any_counts_none() -> None:
    sites = [Site(name, "local", device_ranges=("198.18.0.0/16",)) for name in ("a", "b", "c")]
    at = {"a": 3, "c": 2, "z-undeclared": 4}
    devices = [
        Device(f"{site}-{index}", "bike", site, (DeviceEndpoint("198.18.0.1", 80),))
        for site, count in at.items()
        for index in range(count)
    ]
    document = topology_document(Mesh.of([], sites=sites, devices=devices), StreamRegistry(), 1.0)
    validate(document)
    nodes = by_id(document)
    counts = {name: (nodes[f"site:{name}"]["devices"], nodes[f"devices:{name}"]["count"]) for name in "abc"}
    assert counts == {"a": (3, 3), "b": (0, 0), "c": (2, 2)}


@dataclass
class Scene:
    """What `/topology` is built from: a mesh, and a registry in which sidecar `a`'s stream
    (`synced`) was sent CDS and ACKed it, then sidecar `b`'s (`track`) was sent CDS and NACKed it."""

    mesh: Mesh
    registry: StreamRegistry
    synced: StreamTrack
    track: StreamTrack


def scene() -> Scene:
    registry = StreamRegistry()
    synced = registry.open(StreamKind.DELTA_ADS, "a", "c", SIDECARS, "envoy 1.40", "ipv4:127.0.0.1:1")
    registry.sent(synced, TypeUrl.CLUSTER, "v1", "1", ())
    registry.acked(synced, TypeUrl.CLUSTER, "v1")
    track = registry.open(StreamKind.DELTA_ADS, "b", "c", SIDECARS, "envoy 1.40", "ipv4:127.0.0.1:1")
    registry.sent(track, TypeUrl.CLUSTER, "v1", "1", ())
    registry.nacked(track, TypeUrl.CLUSTER, "v1", "rejected")
    return Scene(MESH, registry, synced, track)


def a_stream_opens(scene: Scene) -> None:
    # Sent nothing yet: it shows as a proxy of its group, NOT SENT.
    scene.registry.open(StreamKind.DELTA_ADS, "gw-1", "c", GATEWAYS, "envoy 1.40", "ipv4:127.0.0.1:1")


def a_stream_closes(scene: Scene) -> None:
    scene.registry.close(scene.synced)  # not the stream that changed last


def the_last_changed_stream_closes(scene: Scene) -> None:
    scene.registry.close(scene.track)


def a_response_is_sent(scene: Scene) -> None:
    scene.registry.sent(scene.track, TypeUrl.LISTENER, "v1", "2", ())


def an_ack(scene: Scene) -> None:
    scene.registry.acked(scene.track, TypeUrl.CLUSTER, "v1")


def a_nack_again(scene: Scene) -> None:
    scene.registry.nacked(scene.track, TypeUrl.CLUSTER, "v1", "rejected again")


def secrets_withheld_before_any_is_sent(scene: Scene) -> None:
    # Records SDS on `b`'s stream with nothing sent: no sequence number is taken.
    scene.registry.keys_withheld(scene.track, TypeUrl.SECRET, ["default/key"])


def a_delta_stream_catches_up(scene: Scene) -> None:
    # No response and no ACK: the NACKed type is recorded in sync at the current version.
    scene.registry.caught_up(scene.track, TypeUrl.CLUSTER, "v2", ())


def an_equal_mesh_merged_again(scene: Scene) -> None:
    scene.mesh = Mesh.of(MESH.services, MESH.routes, sites=MESH.sites)


def a_service_added(scene: Scene) -> None:
    scene.mesh = Mesh.of([*MESH.services, service("added")], MESH.routes, sites=MESH.sites)


def another_registry(scene: Scene) -> None:
    scene.registry = StreamRegistry()


CHANGES = [
    a_stream_opens,
    a_stream_closes,
    the_last_changed_stream_closes,
    a_response_is_sent,
    an_ack,
    a_nack_again,
    secrets_withheld_before_any_is_sent,
    a_delta_stream_catches_up,
    an_equal_mesh_merged_again,
    a_service_added,
    another_registry,
]


@pytest.mark.parametrize("change", CHANGES, ids=[change.__name__ for change in CHANGES])
def test_a_cached_topology_is_the_same_bytes_until_the_mesh_or_a_stream_changes_then_rebuilt(
    change: Callable[[Scene], None],
) -> None:
    builds = itertools.count(1.0)  # the clock moves once per build: generated_at says which build
    cache = CachedTopology(clock=lambda: next(builds))
    current = scene()
    first = cache.body(current.mesh, current.registry)
    assert first == json.dumps(topology_document(current.mesh, current.registry, 1.0)).encode()
    assert cache.body(current.mesh, current.registry) is first  # unchanged: the very same bytes
    change(current)
    rebuilt = cache.body(current.mesh, current.registry)
    assert rebuilt is not first
    # Built from what is there now, at the second build's time; then reused in its turn.
    assert rebuilt == json.dumps(topology_document(current.mesh, current.registry, 2.0)).encode()
    assert cache.body(current.mesh, current.registry) is rebuilt


def test_a_delta_stream_caught_up_after_its_nack_shows_in_sync_in_the_cached_topology() -> None:
    cache = CachedTopology()
    current = scene()
    before = json.loads(cache.body(current.mesh, current.registry))
    assert by_id(before)[f"group:{SIDECARS}"]["sync"]["NACKED"] == 1
    a_delta_stream_catches_up(current)
    after = json.loads(cache.body(current.mesh, current.registry))
    assert by_id(after)[f"group:{SIDECARS}"]["sync"] == {"SYNCED": 2, "STALE": 0, "NACKED": 0, "NOT SENT": 0}


# --- In headless Chromium, against a real control plane with real Envoys --------------------------

BIKES_TOKEN = "bikes"
SERVICES = """services:
  - {name: web, port: 8080, endpoints: [{address: 127.0.0.1, port: 9101}, {address: 127.0.0.1, port: 9102}]}
  - {name: api, port: 8080, endpoints: [{address: 127.0.0.1, port: 9201}]}
  - {name: api-canary, port: 8080, endpoints: [{address: 127.0.0.1, port: 9202}]}
"""
ROUTES = """routes:
  - name: api-split
    service: api
    rules:
      - to: [{service: api, weight: 90}, {service: api-canary, weight: 10}]
"""
ADDED = "services:\n  - {name: added, port: 8080, endpoints: [{address: 127.0.0.1, port: 9401}]}\n"


@dataclass
class Live:
    policy: Path
    plane: ControlPlane
    gateway_port: int
    envoys: list[Envoy] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.plane.status_port}"

    def write(self, name: str, text: str) -> None:
        temporary = (self.policy / name).with_suffix(".tmp")
        temporary.write_text(text)
        temporary.rename(self.policy / name)


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, deadline: float = DEADLINE) -> T:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: object = None
    while loop.time() < end:
        result = await check()
        if result:
            return result
        last = result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    """A control plane on three services, a route table and a site whose declared gateway is a
    real edge-gateway Envoy, a real sidecar Envoy, and three bikes registered at the site."""
    gateway_port = free_port()
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "services.yaml").write_text(SERVICES)
    (policy / "routes.yaml").write_text(ROUTES)
    (policy / "sites.yaml").write_text(
        "sites:\n  - {id: gym, region: local, zone: local-a, "
        f"gateways: ['127.0.0.1:{gateway_port}'], device_ranges: ['198.18.0.0/24']}}\n"
    )
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest(BIKES_TOKEN)}, class: bike}}\n")
    async with running_edge_plane(policy, tmp_path / "registry.db", tokens, LeaseSettings(), **QUICK) as plane:
        state = Live(policy, plane, gateway_port)
        workdir = tmp_path / "envoy"
        try:
            state.envoys.append(await start_envoy(workdir, plane.xds_port, node_id="sidecar-1"))
            state.envoys.append(
                await start_envoy(
                    workdir,
                    plane.xds_port,
                    node_id="gateway-1",
                    template="edge-gateway.yaml",
                    metadata={
                        "role": "edge-gateway",
                        "site": "gym",
                        "outbound_port": gateway_port,
                        "listen_address": "127.0.0.1",
                    },
                )
            )
            assert plane.edge is not None
            async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.edge.port}") as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                for index in range(3):
                    await stub.Register(
                        pb.RegisterRequest(
                            device_id=f"bike-{index}",
                            device_class="bike",
                            site="gym",
                            endpoints=[pb.Endpoint(address=f"198.18.0.{10 + index}", port=8080)],
                        ),
                        metadata=(("authorization", f"Bearer {BIKES_TOKEN}"),),
                    )
            yield state
        finally:
            for envoy in state.envoys:
                await envoy.stop()


class DevTools:
    """One headless Chromium page driven over the DevTools protocol: navigate, evaluate."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._next = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        number = self._next
        await self._socket.send_json({"id": number, "method": method, "params": params})
        while True:  # events arrive between answers; the answer carries our id
            message = await asyncio.wait_for(self._socket.receive_json(), 30)
            if message.get("id") == number:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")


@contextlib.asynccontextmanager
async def devtools_page() -> AsyncIterator[DevTools]:
    binary = require_chromium()
    port = free_port()
    # Chromium's helper processes may still write to the profile as the browser exits.
    with tempfile.TemporaryDirectory(prefix="meshplane-chromium-", ignore_cleanup_errors=True) as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            "about:blank",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with aiohttp.ClientSession() as session:

                async def page_socket() -> str | None:
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                            targets = await response.json()
                    except aiohttp.ClientError:
                        return None  # not listening yet
                    pages = [target["webSocketDebuggerUrl"] for target in targets if target["type"] == "page"]
                    return pages[0] if pages else None

                url = await eventually(page_socket, "Chromium's DevTools endpoint")
                async with session.ws_connect(url, max_msg_size=0) as socket:
                    yield DevTools(socket)
        finally:
            process.terminate()
            await process.wait()


# What the page's picture holds, read in the page: nodes with their counts, edges, and a marker
# the test leaves on `window` to prove the page was not reloaded.
PICTURE = """JSON.stringify({
  loaded: document.body ? document.body.dataset.loaded : null,  // null while still loading
  marker: window.testMarker || null,
  nodes: Object.fromEntries([...document.querySelectorAll('#topology [data-node]')].map(g =>
    [g.dataset.node, {kind: g.dataset.kind, proxies: g.dataset.proxies, count: g.dataset.count,
                      text: g.textContent}])),
  edges: [...document.querySelectorAll('#topology [data-edge]')].map(g =>
    [g.dataset.edge, g.dataset.kind, g.textContent]),
  marks: [...document.querySelectorAll('#timeline [data-mark]')].map(c => c.dataset.mark),
  spans: [...document.querySelectorAll('#timeline [data-span]')].map(r => r.dataset.span),
})"""


async def picture(page: DevTools) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(await page.evaluate(PICTURE))
    return value


async def test_the_picture_shows_the_live_mesh_and_updates_without_a_reload(live: Live) -> None:
    gateway = f"gateway:gym/127.0.0.1:{live.gateway_port}"
    async with devtools_page() as page:
        await page.call("Page.navigate", url=f"{live.url}/?refresh=1")

        async def drawn() -> dict[str, Any] | None:
            seen = await picture(page)
            nodes = seen["nodes"]
            groups = [node for node in nodes.values() if node["kind"] == "group"]
            ready = (
                seen["loaded"] == "true"
                and len(groups) == 2
                and all(group["proxies"] == "1" for group in groups)
                and nodes.get(gateway, {}).get("proxies") == "1"
                and nodes.get("devices:gym", {}).get("count") == "3"
            )
            return seen if ready else None

        seen = await eventually(drawn, "both proxies, the gateway and the three bikes in the picture")
        nodes = seen["nodes"]
        for expected in ("service:default/web", "service:default/api", "service:default/api-canary"):
            assert nodes[expected]["kind"] == "service"
        assert "2 endpoints" in nodes["service:default/web"]["text"]
        assert {"route:api-split", "site:gym"} <= set(nodes)
        edges = {(name, kind): text for name, kind, text in seen["edges"]}
        assert "90%" in edges[("route:api-split->service:default/api", "routes")]
        assert "10%" in edges[("route:api-split->service:default/api-canary", "routes")]
        assert ("site:gym->" + gateway, "has") in edges
        assert (gateway + "->devices:gym", "carries") in edges
        assert any(name.endswith("->" + gateway) and kind == "serves" for name, kind in edges)
        assert any(name.endswith("->service:default/web") and kind == "reaches" for name, kind in edges)
        assert seen["marks"], "the timeline marks the publications"

        await page.evaluate("window.testMarker = 'same page'")
        live.write("added.yaml", ADDED)

        async def added() -> dict[str, Any] | None:
            seen = await picture(page)
            # The change's generation reaches both proxies: its change → last ACK span is drawn.
            return seen if "service:default/added" in seen["nodes"] and seen["spans"] else None

        seen = await eventually(added, "the added service, and its change's ACK span, in the same page")
        assert seen["marker"] == "same page"
        assert any(name.endswith("->service:default/added") for name, _, _ in seen["edges"])


# --- The page's drawing, on documents served as they are: hostile labels, both /changes shapes -------

MARKUP = "<i id=injected>r</i>"
NOW = 1_800_000_100.0
STATUS = {
    "generated_at": NOW,
    "ready": True,
    "not_ready_reasons": [],
    "sources": [],
    "proxies": [],
    "recent_nacks": [],
    "groups": [],
}


def generation(number: int, reached: int, nacked: int, pending: int, **timing: Any) -> dict[str, Any]:
    return {
        "generation": number,
        "published_at": NOW - 10 + number,
        **timing,
        "cause": {"summary": f"policy files ({number})"},
        "proxies": {
            "total": reached + nacked + pending,
            "reached": reached,
            "nacked": nacked,
            "pending": pending,
            "pending_nodes": [],
            "nacked_nodes": [],
        },
        "complete": nacked + pending == 0,
    }


CHANGES = {
    "generations": [
        # Pending: the bar runs on to now. NACKed: red, to its last ACK. Reached, from before
        # `/changes` gave timings: a mark only.
        generation(3, 1, 0, 1, changed_at=NOW - 7.5, acks={"first_seconds": 0.2, "last_seconds": None, "acked": 1}),
        generation(2, 1, 1, 0, changed_at=NOW - 8.5, acks={"first_seconds": 0.1, "last_seconds": 0.3, "acked": 1}),
        generation(1, 2, 0, 0),
    ]
}
GROUP = "sidecar@-"
TOPOLOGY = {
    "generated_at": NOW,
    "published": True,
    "nodes": [
        {
            "id": f"group:{GROUP}",
            "kind": "group",
            "label": GROUP,
            "role": "sidecar",
            "site": None,
            "proxies": 2,
            "state": "STALE",
            "sync": {"SYNCED": 1, "STALE": 1, "NACKED": 0, "NOT SENT": 0},
        },
        {
            "id": f"route:{MARKUP}",
            "kind": "route",
            "label": MARKUP,
            "service": None,
            "hosts": ["x.example"],
            "more_hosts": 0,
            "rules": 1,
        },
        {
            "id": "service:default/web",
            "kind": "service",
            "label": "default/web",
            "namespace": "default",
            "name": "web",
            "endpoints": 2,
            "ports": [{"name": "http", "port": 8080, "protocol": "http1"}],
            "more_ports": 0,
        },
    ],
    "edges": [
        {"from": f"group:{GROUP}", "to": f"route:{MARKUP}", "kind": "reaches"},
        {"from": f"route:{MARKUP}", "to": "service:default/web", "kind": "routes", "shares": [100.0]},
    ],
    "more": {"nodes": 7, "nodes_by_kind": {"service": 7}, "edges": 0},
    "limits": {"nodes": MAX_NODES, "edges": MAX_EDGES},
}


@pytest.fixture
async def documents_endpoint() -> AsyncIterator[str]:
    """The dashboard over fixed documents (each valid by the schema where it has a definition)."""
    validate(TOPOLOGY)
    app = web.Application()
    app.router.add_get("/", _html)
    for path, document in (("/status", STATUS), ("/changes", CHANGES), ("/topology", TOPOLOGY)):
        app.router.add_get(path, _answer(document))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _html(request: web.Request) -> web.Response:
    return web.Response(text=dashboard_html(), content_type="text/html")


def _answer(document: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(document)

    return handler


async def test_the_pictures_insert_labels_as_text_and_draw_spans_only_where_changes_has_timings(
    documents_endpoint: str,
) -> None:
    page = await dashboard_when(f"{documents_endpoint}/", lambda page: bool(page.find("circle")))
    route = page.one("g", data_node=f"route:{MARKUP}")
    assert MARKUP in route.content
    assert not page.find(id="injected")
    assert page.one("g", data_edge=f"route:{MARKUP}->service:default/web").content.startswith("100%")
    assert page.one("g", data_node=f"group:{GROUP}").attrs["data-state"] == "STALE"
    assert "not drawn: 7 service" in page.one("div", id="topology-note").content

    colours = {"reached": "#1a7f37", "pending": "#9a6700", "nacked": "#cf222e"}
    for number, state in (("3", "pending"), ("2", "nacked"), ("1", "reached")):
        assert page.one("g", data_generation=number).attrs["data-state"] == state
        assert page.one("circle", data_mark=number).attrs["fill"] == colours[state]
    spans = {element.attrs["data-span"]: element for element in page.find("rect") if "data-span" in element.attrs}
    assert sorted(spans) == ["2", "3"]  # generation 1 has no timings: its mark only
    assert page.one("svg", id="timeline").attrs["data-spans"] == "2"
    # The pending span runs to the status document's now: longer than the NACKed one's 0.3 s.
    assert float(spans["3"].attrs["width"]) > float(spans["2"].attrs["width"])
    assert page.find("line", data_first_ack="3")


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGBA or RGB 8-bit pixels of a non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), (depth, interlace)
    assert colour in (2, 6), colour
    channels = 4 if colour == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = previous[x - channels] if x >= channels else 0
                guess = left + up - corner
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))
                line[x] = (line[x] + near[2]) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


async def test_a_screenshot_of_the_dashboard_shows_a_drawn_graph(live: Live, tmp_path: Path) -> None:
    async def groups_connected() -> bool:
        async with aiohttp.ClientSession() as session, session.get(f"{live.url}/topology") as response:
            document = await response.json()
        validate(document)
        return sum(1 for node in document["nodes"] if node["kind"] == "group" and node["proxies"]) == 2

    await eventually(groups_connected, "both proxies in /topology")
    shot = tmp_path / "dashboard.png"
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="meshplane-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--window-size=1280,1000",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            f"{live.url}/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode()[-2000:]
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 1000)
    # The graph's area (below the headings, where the topology is drawn): many colours, among
    # them the green of the synced groups' borders, not one flat background.
    area = [
        row[x * 4 : x * 4 + 3] if len(row) == width * 4 else row[x * 3 : x * 3 + 3]
        for row in rows[150:600]
        for x in range(20, 900)
    ]
    colours = set(area)
    assert len(colours) > 8, f"the graph area has {len(colours)} colours"
    assert any(g > 100 and r < 60 and b < 90 for r, g, b in colours), "no green border of a synced group"


async def test_the_endpoint_serves_the_topology_of_the_mesh_it_is_handed_and_refuses_parameters() -> None:
    registry = StreamRegistry()
    connect(registry, "a", SIDECARS)
    inputs = StatusInputs(
        sources=list, publish_state=PublishState, cache=SnapshotCache(), registry=registry, mesh=lambda: MESH
    )
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/topology"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["Cache-Control"] == "no-store"
                document = await response.json()
            async with session.get(url + "?node=a") as response:
                assert response.status == 400
                assert await response.json() == {"error": "/topology takes no parameters"}
    finally:
        await runner.cleanup()
    validate(document)
    assert by_id(document)["service:default/web"]["endpoints"] == 2
    assert by_id(document)[f"group:{SIDECARS}"]["proxies"] == 1


async def test_the_endpoint_answers_the_same_bytes_while_nothing_changes_and_the_new_mesh_after() -> None:
    registry = StreamRegistry()
    connect(registry, "a", SIDECARS)
    current = [MESH]
    inputs = StatusInputs(
        sources=list, publish_state=PublishState, cache=SnapshotCache(), registry=registry, mesh=lambda: current[0]
    )
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/topology"

    async def get(session: aiohttp.ClientSession) -> bytes:
        async with session.get(url) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            assert response.headers["Cache-Control"] == "no-store"
            return await response.read()

    try:
        async with aiohttp.ClientSession() as session:
            first, again = await get(session), await get(session)
            current[0] = Mesh.of([*MESH.services, service("added")], MESH.routes, sites=MESH.sites)
            changed = await get(session)
    finally:
        await runner.cleanup()
    assert again == first  # generated_at too: the document built for the first request
    assert "service:default/added" not in by_id(json.loads(first))
    document = json.loads(changed)
    validate(document)
    assert "service:default/added" in by_id(document)
