"""`/diff?node=ID` and `meshplane diff NODE`: what a connected proxy holds against what it should
have now, through an in-process xDS server whose client answers by hand (it holds back ACKs, NACKs)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web

from meshplane.model import ProxyGroup, ProxyRole
from meshplane.status import console
from meshplane.status.diff import node_diff
from meshplane.status.document import StatusInputs
from meshplane.status.http import status_app
from meshplane.xds.publication import PublishState
from meshplane.xds.server.tracking import StreamKind, StreamRegistry
from meshplane.xds.snapshot import Snapshot
from tests.envoy_harness import REPO
from tests.xds_fixtures import (
    CDS,
    EDS,
    LDS,
    RDS,
    AdsStream,
    XdsHarness,
    node,
    request,
    snapshot,
    start_harness,
    unpack_names,
)

SCHEMA = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
ANSWER_TIMEOUT = 10.0

# A listener whose routes send to `api`; both clusters have endpoints.
MESH = snapshot(["api", "web"], listeners={"main": "routes"}, route_clusters={"routes": "api"})
# The routes moved to `web`, and `api` left the mesh.
API_GONE = snapshot(["web"], listeners={"main": "routes"}, route_clusters={"routes": "web"})
MESH_TWO_LISTENERS = snapshot(
    ["api"], listeners={"main": "routes", "other": "routes"}, route_clusters={"routes": "api"}
)


@dataclass
class Plane:
    harness: XdsHarness
    url: str
    session: aiohttp.ClientSession

    async def get(self, node_id: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.url}/diff", params={"node": node_id}) as response:
            return response.status, await response.json()

    async def diff_when(self, node_id: str, condition: Callable[[Any], bool]) -> Any:
        """The node's `/diff` once it meets `condition` (the server handles a client's requests on
        its own schedule); fails with the last document after `ANSWER_TIMEOUT`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_TIMEOUT
        while True:
            status, document = await self.get(node_id)
            assert status == 200, document
            if condition(document):
                jsonschema.validate(document, {**SCHEMA, "$ref": "#/$defs/diff"})
                return document
            assert loop.time() < deadline, f"/diff never answered as expected; last:\n{json.dumps(document, indent=1)}"
            await asyncio.sleep(0.01)


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    async for harness in start_harness():
        harness.current = MESH
        assert harness.services is not None
        inputs = StatusInputs(
            sources=list,
            publish_state=PublishState,
            cache=harness.cache,
            registry=harness.registry,
            subscriptions=harness.services.subscriptions_of,
        )
        runner = web.AppRunner(status_app(inputs), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with aiohttp.ClientSession() as session:
                yield Plane(harness, f"http://127.0.0.1:{runner.addresses[0][1]}", session)
        finally:
            await runner.cleanup()


# The names each type is asked for: every request repeats them (an ACK without them would
# unsubscribe from every named resource); CDS and LDS ask for everything.
NAMES = {CDS.value: [], EDS.value: ["api", "web"], LDS.value: [], RDS.value: ["routes"]}


async def answer(stream: AdsStream, response: Any, *, nack: str | None = None) -> None:
    """ACKs `response`, or NACKs it with the message `nack`."""
    names = NAMES[response.type_url]
    await stream.send(
        request(response.type_url, names, version=response.version_info, nonce=response.nonce, error=nack)
    )


async def synced_proxy(harness: XdsHarness, node_id: str) -> AdsStream:
    """An Envoy-like ADS stream of `node_id` that asked for and ACKed every type of the harness's
    current snapshot (`MESH`, or one with the same names)."""
    stream = harness.ads()
    await stream.send(request(CDS, with_node=node(node_id)))
    for type_url in (CDS, EDS, LDS, RDS):
        if type_url is not CDS:
            await stream.send(request(type_url, NAMES[type_url.value]))
        response = await stream.recv()
        assert response.type_url == type_url.value
        await answer(stream, response)
    return stream


async def ack_through(stream: AdsStream, type_url: Any) -> None:
    """ACKs every response up to and including the next one of `type_url` (after a cluster change
    the server may resend endpoints first, for the warming clusters)."""
    while True:
        response = await stream.recv()
        await answer(stream, response)
        if response.type_url == type_url.value:
            return


def listed(document: Any, type_name: str) -> dict[str, list[Any]]:
    entry = document["types"][type_name]
    return {kind: entry[kind] for kind in ("differing", "missing", "no_longer_current")}


def is_in_sync(document: Any) -> bool:
    return bool(document["in_sync"])


def versions(current: Snapshot, type_url: Any) -> dict[str, str]:
    return {name: resource.version for name, resource in current.of_type(type_url).by_name.items()}


async def meshplane(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a process; awaited, so the in-process endpoint keeps answering meanwhile."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "MESHPLANE_SERVER": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out.decode(), err.decode())


async def test_a_proxy_in_sync_lists_nothing_and_the_cli_exits_0(plane: Plane) -> None:
    stream = await synced_proxy(plane.harness, "sidecar-1")
    document = await plane.diff_when("sidecar-1", is_in_sync)
    assert {name: entry["in_sync"] for name, entry in document["types"].items()} == {
        "CDS": 2,
        "EDS": 2,
        "LDS": 1,
        "RDS": 1,
    }
    assert all(not items for name in document["types"] for items in listed(document, name).values())
    assert document["types"]["CDS"]["subscription"] == "wildcard"
    assert document["types"]["EDS"]["subscription"] == "names"
    assert document["version"] == MESH.version

    run = await meshplane("diff", "sidecar-1", "--server", plane.url)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"node sidecar-1 (group {document['group']}): in sync",
        "CDS  in sync: 2",
        "EDS  in sync: 2",
        "LDS  in sync: 1",
        "RDS  in sync: 1",
    ]
    await stream.close()


async def test_a_change_sent_and_not_acked_is_awaiting_and_a_nack_is_nacked(plane: Plane) -> None:
    stream = await synced_proxy(plane.harness, "sidecar-1")
    await plane.diff_when("sidecar-1", is_in_sync)
    changed = snapshot(
        ["api", "web"],
        endpoint_ports={"web": (9090,)},
        listeners={"main": "routes"},
        route_clusters={"routes": "api"},
    )
    plane.harness.publish(changed)
    response = await stream.recv()  # the new endpoints of `web`; its ACK held back
    assert response.type_url == EDS.value
    current = versions(changed, EDS)
    assert current["web"] != versions(MESH, EDS)["web"]

    def eds_listed(state: str) -> Callable[[Any], bool]:
        return lambda document: any(item["state"] == state for item in listed(document, "EDS")["differing"])

    # What was sent is the current version; until the proxy answers, it may not run it. The whole
    # response awaits its answer, `api` unchanged in it included.
    document = await plane.diff_when("sidecar-1", eds_listed("awaiting"))
    assert not document["in_sync"]
    assert listed(document, "EDS")["differing"] == [
        {"name": "api", "held_version": current["api"], "current_version": current["api"], "state": "awaiting"},
        {"name": "web", "held_version": current["web"], "current_version": current["web"], "state": "awaiting"},
    ]
    assert document["types"]["EDS"]["state"] == "STALE"
    assert document["types"]["CDS"]["in_sync"] == 2  # other types stay in sync

    await answer(stream, response, nack="endpoint web: port 9090 refused")
    document = await plane.diff_when("sidecar-1", eds_listed("nacked"))
    assert {item["name"]: item["state"] for item in listed(document, "EDS")["differing"]} == {
        "api": "nacked",
        "web": "nacked",
    }
    assert document["types"]["EDS"]["state"] == "NACKED"
    await stream.close()


async def test_a_type_held_back_behind_clusters_shows_the_held_version_against_the_current(plane: Plane) -> None:
    stream = await synced_proxy(plane.harness, "sidecar-1")
    await plane.diff_when("sidecar-1", is_in_sync)
    # Clusters and routes change together: routes wait for the proxy's ACK of the clusters (ADS
    # ordering), so it holds the old routes, ACKed, while the current ones differ.
    changed = snapshot(["api", "web"], connect_ms=500, listeners={"main": "routes"}, route_clusters={"routes": "web"})
    plane.harness.publish(changed)
    clusters = await stream.recv()
    assert clusters.type_url == CDS.value
    document = await plane.diff_when("sidecar-1", lambda document: bool(listed(document, "RDS")["differing"]))
    assert listed(document, "RDS")["differing"] == [
        {
            "name": "routes",
            "held_version": versions(MESH, RDS)["routes"],
            "current_version": versions(changed, RDS)["routes"],
            "state": "acked",
        }
    ]
    assert {item["state"] for item in listed(document, "CDS")["differing"]} == {"awaiting"}

    await answer(stream, clusters)
    await ack_through(stream, RDS)
    await plane.diff_when("sidecar-1", is_in_sync)
    await stream.close()


async def test_a_resource_removed_from_the_mesh_is_no_longer_current_until_acked(plane: Plane) -> None:
    stream = await synced_proxy(plane.harness, "sidecar-1")
    await plane.diff_when("sidecar-1", is_in_sync)
    plane.harness.publish(API_GONE)
    # The routes stop using `api` first; the proxy keeps the cluster until it ACKs them. Nothing
    # is answered yet (the endpoints of `api` may come first: they are gone too).
    unanswered = [await stream.recv()]
    while unanswered[-1].type_url != RDS.value:
        unanswered.append(await stream.recv())
    assert CDS.value not in {response.type_url for response in unanswered}
    document = await plane.diff_when("sidecar-1", lambda document: bool(listed(document, "CDS")["no_longer_current"]))
    assert listed(document, "CDS")["no_longer_current"] == [
        {"name": "api", "held_version": versions(MESH, CDS)["api"], "state": "acked"}
    ]
    assert document["types"]["CDS"]["in_sync"] == 1

    run = await meshplane("diff", "sidecar-1", "--server", plane.url, "--json")
    assert run.returncode == 1, run.stderr
    assert json.loads(run.stdout)["types"]["CDS"]["no_longer_current"][0]["name"] == "api"

    text = io.StringIO()
    assert await asyncio.to_thread(console.diff_command, plane.url, "sidecar-1", out=text) == 1
    lines = text.getvalue().splitlines()
    assert lines[0].endswith("differs from its group's current config")
    assert f"  - api  {versions(MESH, CDS)['api']} → not current  (acked)" in lines
    assert "CDS  in sync: 1" in lines

    for response in unanswered:
        await answer(stream, response)
    await ack_through(stream, CDS)  # the clusters without `api`
    document = await plane.diff_when("sidecar-1", is_in_sync)
    assert document["types"]["CDS"]["in_sync"] == 1
    await stream.close()


async def test_a_resource_it_should_have_and_does_not_hold_yet_is_missing(plane: Plane) -> None:
    stream = await synced_proxy(plane.harness, "sidecar-1")
    await plane.diff_when("sidecar-1", is_in_sync)
    # A new listener, with a cluster change: listeners wait for the proxy's ACK of the clusters.
    changed = snapshot(
        ["api", "web"],
        connect_ms=500,
        listeners={"main": "routes", "extra": "routes"},
        route_clusters={"routes": "api"},
    )
    plane.harness.publish(changed)
    clusters = await stream.recv()
    assert clusters.type_url == CDS.value
    document = await plane.diff_when("sidecar-1", lambda document: bool(listed(document, "LDS")["missing"]))
    assert listed(document, "LDS") == {
        "differing": [],
        "missing": [{"name": "extra", "current_version": versions(changed, LDS)["extra"]}],
        "no_longer_current": [],
    }
    assert document["types"]["LDS"]["in_sync"] == 1

    text = io.StringIO()
    assert await asyncio.to_thread(console.diff_command, plane.url, "sidecar-1", out=text) == 1
    assert f"  + extra  not held → {versions(changed, LDS)['extra']}" in text.getvalue().splitlines()

    await answer(stream, clusters)
    await ack_through(stream, LDS)
    await plane.diff_when("sidecar-1", is_in_sync)
    await stream.close()


async def test_what_a_proxy_should_have_is_what_its_streams_subscribed_to(plane: Plane) -> None:
    """An Envoy-like proxy that asks for one cluster by name (not every cluster): only that one is
    due, so the others are not listed as missing; the server's subscriptions say so, not a rule."""
    stream = plane.harness.ads()
    await stream.send(request(CDS, ["api"], with_node=node("sidecar-2")))
    response = await stream.recv()
    assert unpack_names(response) == ["api"]
    await stream.send(request(CDS, ["api"], version=response.version_info, nonce=response.nonce))
    document = await plane.diff_when("sidecar-2", lambda document: document["types"]["CDS"]["in_sync"] == 1)
    assert document["types"]["CDS"]["subscription"] == "names"
    assert listed(document, "CDS") == {"differing": [], "missing": [], "no_longer_current": []}
    await stream.close()


async def test_an_unknown_node_is_404_and_exit_2_and_node_ids_are_bounded(plane: Plane) -> None:
    status, document = await plane.get("nobody\n<script>")
    assert status == 404
    assert document == {"error": "no proxy with node id 'nobody\\n<script>' is connected"}
    jsonschema.validate(document, {**SCHEMA, "$ref": "#/$defs/error"})

    status, document = await plane.get("x" * 5000)
    assert status == 400
    assert "x" * 100 not in document["error"]

    async with plane.session.get(f"{plane.url}/diff") as response:
        assert response.status == 400

    run = await meshplane("diff", "nobody", "--server", plane.url)
    assert run.returncode == 2
    assert "404 no proxy with node id 'nobody' is connected" in run.stderr
    assert run.stdout == ""

    unreachable = await meshplane("diff", "nobody", "--server", "http://127.0.0.1:1")
    assert unreachable.returncode == 2
    assert "cannot reach the status endpoint" in unreachable.stderr


def test_a_grpc_client_subscribes_by_name_and_an_envoy_to_every_listener() -> None:
    registry = StreamRegistry()
    listeners = MESH_TWO_LISTENERS.of_type(LDS)
    for node_id, role in (("grpc-1", ProxyRole.GRPC), ("sidecar-1", ProxyRole.SIDECAR)):
        track = registry.open(StreamKind.SOTW_ADS, node_id, "c", ProxyGroup(role=role), "ua", "peer")
        registry.sent(track, LDS, "v", "1", (listeners.by_name["main"],))
        registry.acked(track, LDS, "v")
        document = node_diff(node_id, [track], MESH_TWO_LISTENERS)
        wanted = (
            [] if role is ProxyRole.GRPC else [{"name": "other", "current_version": listeners.by_name["other"].version}]
        )
        assert listed(document, "LDS") == {"differing": [], "missing": wanted, "no_longer_current": []}
        assert document["types"]["LDS"]["in_sync"] == 1
        assert document["in_sync"] is (role is ProxyRole.GRPC)
