"""`/changes`, `/changes/G`, `meshplane changes` and `meshplane wait`: has a generation reached
every proxy? Through an in-process xDS server whose clients answer by hand (they hold back ACKs,
NACK), with generations recorded as the publisher records them; and through the composition root,
for the cause of a policy-file edit and of a registration."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web

from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import RegisterInput
from meshplane.model import ProxyRole
from meshplane.status.changes import cause_summary
from meshplane.status.console import generation_line
from meshplane.status.document import StatusInputs
from meshplane.status.http import status_app
from meshplane.xds.publication import Cause, ChangeLog, Generation, PublishState
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl
from tests.edge_plane import GYM_GATEWAY, SIDECAR, gym_plane
from tests.test_diff import MESH, answer, meshplane, synced_proxy
from tests.xds_fixtures import CDS, EDS, XdsHarness, node, request, snapshot, start_harness

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "status-api.schema.json").read_text())
ANSWER_TIMEOUT = 10.0


def mesh_with_web_on(port: int) -> Snapshot:
    """`MESH` with the endpoints of `web` moved to `port`: an EDS change only."""
    return snapshot(
        ["api", "web"], endpoint_ports={"web": (port,)}, listeners={"main": "routes"}, route_clusters={"routes": "api"}
    )


@dataclass
class Plane:
    harness: XdsHarness
    log: ChangeLog
    url: str
    session: aiohttp.ClientSession
    number: int = 0

    def publish(self, new: Snapshot) -> int:
        """Sets `new` for every group, and records it as the publisher records a generation."""
        self.harness.publish(new)
        self.number += 1
        groups = set(self.harness.cache.groups()) | {SIDECAR}
        self.log.record(
            Generation(
                self.number,
                time.time(),
                Cause(("policy files",)),
                ("endpoints",),
                ("default/web",),
                1,
                {group: new.version for group in groups},
            ),
            {group: {str(t): new.of_type(t).version for t in TypeUrl} for group in groups},
        )
        return self.number

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.url}{path}", params=params) as response:
            return response.status, await response.json()

    async def generation_when(self, number: int, condition: Callable[[Any], bool]) -> Any:
        """`/changes/G` once it meets `condition` (the server handles a client's answers on its own
        schedule); fails with the last document after `ANSWER_TIMEOUT`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_TIMEOUT
        while True:
            status, document = await self.get(f"/changes/{number}")
            assert status == 200, document
            if condition(document):
                jsonschema.validate(document, {**SCHEMA, "$ref": "#/$defs/generation"})
                return document
            assert loop.time() < deadline, f"/changes/{number} never answered as expected:\n{json.dumps(document)}"
            await asyncio.sleep(0.01)


def proxies(reached: int, pending: int = 0, nacked: int = 0) -> Callable[[Any], bool]:
    def condition(document: Any) -> bool:
        counts = document["proxies"]
        return bool((counts["reached"], counts["pending"], counts["nacked"]) == (reached, pending, nacked))

    return condition


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    async for harness in start_harness():
        inputs = StatusInputs(sources=list, publish_state=PublishState, cache=harness.cache, registry=harness.registry)
        log = ChangeLog(keep=3)
        runner = web.AppRunner(status_app(inputs, changes=log), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with aiohttp.ClientSession() as session:
                plane = Plane(harness, log, f"http://127.0.0.1:{runner.addresses[0][1]}", session)
                plane.publish(MESH)  # generation 1: the first publication
                yield plane
        finally:
            await runner.cleanup()


async def test_a_generation_is_reached_once_every_proxy_acks_it_and_wait_exits_0(plane: Plane) -> None:
    streams = [await synced_proxy(plane.harness, node_id) for node_id in ("sidecar-1", "sidecar-2")]
    first = await plane.generation_when(1, proxies(reached=2))
    assert first["complete"] is True

    second = plane.publish(mesh_with_web_on(9090))
    for stream in streams:
        response = await stream.recv()
        assert response.type_url == EDS.value
        await answer(stream, response)
    document = await plane.generation_when(second, proxies(reached=2))
    assert document["complete"] is True
    assert document["proxies"]["total"] == 2
    assert document["cause"]["summary"] == "policy files (endpoints: default/web)"
    assert document["groups"][0]["version"] == mesh_with_web_on(9090).version

    status, listing = await plane.get("/changes")
    assert status == 200
    jsonschema.validate(listing, {**SCHEMA, "$ref": "#/$defs/changes"})
    assert [entry["generation"] for entry in listing["generations"]] == [2, 1]  # newest first

    run = await meshplane("wait", "--generation", "latest", "--server", plane.url)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "generation 2: reached by every proxy (2)\n"
    run = await meshplane("changes", "--server", plane.url)
    assert run.returncode == 0, run.stderr
    assert [line.split("  ", 2)[::2] for line in run.stdout.splitlines()] == [
        ["gen 2", "policy files (endpoints: default/web)  reached 2 of 2"],
        ["gen 1", "policy files (endpoints: default/web)  reached 2 of 2"],
    ]
    for stream in streams:
        await stream.close()


async def test_a_proxy_holding_back_its_ack_is_pending_and_wait_times_out_with_exit_2(plane: Plane) -> None:
    quick, slow = await synced_proxy(plane.harness, "quick"), await synced_proxy(plane.harness, "slow")
    number = plane.publish(mesh_with_web_on(9090))
    await answer(quick, await quick.recv())
    held = await slow.recv()  # its ACK held back
    document = await plane.generation_when(number, proxies(reached=1, pending=1))
    assert document["proxies"]["pending_nodes"] == ["slow"]
    assert document["complete"] is False

    run = await meshplane("wait", "--generation", str(number), "--timeout", "0.2", "--server", plane.url)
    assert run.returncode == 2, run.stderr
    assert run.stderr == f"generation {number}: 1 of 2 proxies still pending after 0.2s: slow\n"
    line = generation_line(document)
    assert line.endswith("policy files (endpoints: default/web)  reached 1 of 2, 1 pending: slow")

    await answer(slow, held)
    await plane.generation_when(number, proxies(reached=2))
    await quick.close()
    await slow.close()


async def test_a_nack_fails_the_generation_and_wait_exits_1_naming_the_proxy(plane: Plane) -> None:
    good, bad = await synced_proxy(plane.harness, "good"), await synced_proxy(plane.harness, "bad\x1b[2J")
    number = plane.publish(mesh_with_web_on(9090))
    await answer(good, await good.recv())
    await answer(bad, await bad.recv(), nack="endpoint web: port 9090 refused")
    document = await plane.generation_when(number, proxies(reached=1, nacked=1))
    assert document["proxies"]["nacked_nodes"] == [
        {
            "node": "bad\x1b[2J",
            "type": "EDS",
            "version": mesh_with_web_on(9090).of_type(EDS).version,
            "message": "endpoint web: port 9090 refused",
        }
    ]
    # The proxy keeps the config it ACKed before: generation 1 it has reached.
    await plane.generation_when(1, proxies(reached=2))

    run = await meshplane("wait", "--generation", str(number), "--server", plane.url)
    assert run.returncode == 1, run.stderr
    # The node id came from a client: its escape sequence is shown, not sent to the terminal.
    assert run.stderr == f"generation {number}: bad\\x1b[2J NACKED EDS: endpoint web: port 9090 refused\n"
    await good.close()
    await bad.close()


async def test_a_later_generations_ack_reaches_the_earlier_one(plane: Plane) -> None:
    stream = await synced_proxy(plane.harness, "sidecar-1")
    second = plane.publish(mesh_with_web_on(9090))
    await stream.recv()  # generation 2's endpoints, never answered
    await plane.generation_when(second, proxies(reached=0, pending=1))
    third = plane.publish(mesh_with_web_on(9191))
    response = await stream.recv()
    assert response.version_info == mesh_with_web_on(9191).of_type(EDS).version
    await answer(stream, response)
    await plane.generation_when(third, proxies(reached=1))
    await plane.generation_when(second, proxies(reached=1))
    await stream.close()


async def test_a_stream_subscribing_by_name_reaches_a_generation_when_it_holds_the_current_selection(
    plane: Plane,
) -> None:
    # EDS for `web` alone: the version it ACKs is its selection's, never a whole type's version.
    stream = plane.harness.ads()
    await stream.send(request(CDS, with_node=node("web-only")))
    await answer(stream, await stream.recv())
    await stream.send(request(EDS, ["web"]))
    endpoints = await stream.recv()
    assert endpoints.version_info != MESH.of_type(EDS).version
    await stream.send(request(EDS, ["web"], version=endpoints.version_info, nonce=endpoints.nonce))
    await plane.generation_when(1, proxies(reached=1))

    number = plane.publish(mesh_with_web_on(9090))
    changed = await stream.recv()
    await plane.generation_when(number, proxies(reached=0, pending=1))
    await stream.send(request(EDS, ["web"], version=changed.version_info, nonce=changed.nonce))
    await plane.generation_when(number, proxies(reached=1))
    await stream.close()


async def test_only_the_last_generations_are_kept_and_older_ones_are_404(plane: Plane) -> None:
    for port in (9001, 9002, 9003, 9004):
        plane.publish(mesh_with_web_on(port))  # generations 2 to 5; three are kept
    status, listing = await plane.get("/changes", limit="2")
    assert status == 200
    assert (listing["oldest_kept"], listing["newest"], listing["kept"]) == (3, 5, 3)
    assert [entry["generation"] for entry in listing["generations"]] == [5, 4]
    status, document = await plane.get("/changes/2")
    assert status == 404
    assert document == {"error": "generation 2 is older than the kept window (the oldest kept is 3, of 3)"}
    status, document = await plane.get("/changes/6")
    assert status == 404
    assert document == {"error": "generation 6 is not published yet (the newest is 5)"}
    status, document = await plane.get("/changes/3")
    assert status == 200
    assert document["proxies"] == {
        "total": 0,
        "reached": 0,
        "nacked": 0,
        "pending": 0,
        "pending_nodes": [],
        "nacked_nodes": [],
    }
    run = await meshplane("wait", "--generation", "2", "--server", plane.url)
    assert run.returncode == 3
    assert "older than the kept window" in run.stderr


@pytest.mark.parametrize(
    ("path", "params"),
    [
        pytest.param("/changes", {"limit": "0"}, id="limit-0"),
        pytest.param("/changes", {"limit": "101"}, id="limit-over-the-window"),
        pytest.param("/changes", {"limit": "x" * 1000}, id="limit-not-a-number"),
        pytest.param("/changes", {"since": "1"}, id="unknown-parameter"),
        pytest.param("/changes/abc", {}, id="generation-not-a-number"),
        pytest.param("/changes/" + "9" * 40, {}, id="generation-too-long"),
        pytest.param("/changes/1", {"limit": "1"}, id="generation-with-parameters"),
    ],
)
async def test_malformed_queries_are_400_and_quote_at_most_a_bounded_part(
    plane: Plane, path: str, params: dict[str, str]
) -> None:
    status, document = await plane.get(path, **params)
    assert status == 400
    assert len(document["error"]) < 300


def _recorded(log: ChangeLog, number: int, version: str) -> None:
    log.record(Generation(number, 0.0, Cause(), (), (), 0, {SIDECAR: version}), {SIDECAR: {str(CDS): version}})


def test_a_reverted_version_belongs_to_the_revert_and_versions_leave_with_their_generations() -> None:
    log = ChangeLog(keep=2)
    for number, version in ((1, "a"), (2, "b"), (3, "a")):
        _recorded(log, number, version)
    # A proxy holding "a" has what generation 3 published: the change of 2 is undone there too.
    assert log.generation_of(SIDECAR, str(CDS), "a") == 3
    assert log.generation_of(SIDECAR, str(CDS), "b") == 2
    _recorded(log, 4, "c")  # generation 2 leaves the window, and "b" with it
    assert log.generation_of(SIDECAR, str(CDS), "b") is None
    assert (log.oldest, log.newest, log.newest_for(SIDECAR)) == (3, 4, 4)
    assert [generation.number for generation in log.newest_first()] == [4, 3]
    assert log.get(2) is None


def test_the_cause_names_at_most_the_given_services_and_counts_the_rest() -> None:
    cause = Cause(("kubernetes", "edge registry"), devices_changed=None)
    summary = cause_summary(cause, ("routes", "devices", "endpoints"), ("a/x", "b/y"), 25)
    assert summary == "kubernetes, edge registry (routes; devices: all; endpoints: a/x, b/y and 23 more)"


async def _generation(plane: Any, condition: Callable[[Any], bool]) -> Any:
    """The newest generation of the plane's `/changes` once it meets `condition`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{plane.status_port}/changes", params={"limit": "1"}) as reply:
                assert reply.status == 200
                listing = await reply.json()
            newest = listing["generations"][0] if listing["generations"] else None
            if newest is not None and condition(newest):
                jsonschema.validate(listing, {**SCHEMA, "$ref": "#/$defs/changes"})
                return newest
            assert loop.time() < deadline, f"no such generation; last: {json.dumps(listing)}"
            await asyncio.sleep(0.02)


async def test_the_cause_of_a_policy_edit_and_of_a_registration(tmp_path: Path) -> None:
    async with gym_plane(tmp_path) as (plane, policy, _):
        assert plane.edge is not None
        first = await _generation(plane, lambda generation: generation["generation"] >= 1)

        services = policy / "services.yaml"
        # Written whole and renamed over, as editors save: a file the watcher reads half-written
        # would be a change of its own (a service missing, then back) before the port's.
        edit = policy / ".services.yaml.tmp"
        edit.write_text(services.read_text().replace("port: 9102", "port: 19102", 1))
        os.replace(edit, services)
        edited = await _generation(plane, lambda generation: generation["generation"] > first["generation"])
        assert edited["cause"]["sources"] == ["policy files"]
        assert edited["cause"]["parts"] == ["endpoints"]
        assert edited["cause"]["services"] == ["default/web"]
        assert edited["cause"]["summary"] == "policy files (endpoints: default/web)"
        sidecar = plane.cache.snapshot(SIDECAR)
        assert sidecar is not None
        assert any(entry["version"] == sidecar.version for entry in edited["groups"])

        await plane.edge.registry.register(
            Principal(PrincipalKind.CLASS, "bike"),
            RegisterInput(
                device_id="bike-1", device_class="bike", site="gym", endpoints=(("198.18.0.7", 8080),), ttl_seconds=60
            ),
        )
        registered = await _generation(plane, lambda generation: generation["generation"] > edited["generation"])
        assert registered["cause"]["sources"] == ["edge registry"]
        assert registered["cause"]["parts"] == ["devices"]
        assert registered["cause"]["devices_changed"] == 1
        assert registered["cause"]["summary"] == "edge registry (devices: 1 changed)"
        gateway = plane.cache.snapshot(GYM_GATEWAY)
        assert gateway is not None
        # Only the gateway's group was rebuilt: the sidecar's snapshot stands.
        assert [entry["version"] for entry in registered["groups"]] == [gateway.version]
        assert registered["groups"][0]["fields"]["role"] == str(ProxyRole.EDGE_GATEWAY)
