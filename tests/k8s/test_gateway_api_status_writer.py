"""The GatewayClass status writer against a scripted HTTP server on 127.0.0.1: what the real API
server cannot be made to do on demand (refuse with 503, be unreachable, answer 409).

The writer retries a failed write with backoff until it lands, clearing its error; after a 409 it
waits for the class to be marked again (the watch bringing the newer version); it never writes a
class it does not own, nor before the CRDs' bundle versions are known.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration

from meshplane.discovery.gateway_api.source import CLASSES
from meshplane.discovery.gateway_api.status_writer import MERGE_PATCH, ClassStatusWriter
from tests.k8s.conftest import FAST_BACKOFF, wait_for
from tests.ports import free_port

BUNDLES = {"gatewayclasses.gateway.networking.k8s.io": "v1.6.1"}


class ScriptedServer:
    """Answers PATCH …/gatewayclasses/<name>/status with the next status of `script` (200 once it
    is used up), recording every request's name and body."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.requests: list[tuple[str, str, Any]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_patch(f"{CLASSES.resource.path(None)}/{{name}}/status", self._patch)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _patch(self, request: web.Request) -> web.Response:
        self.requests.append((request.match_info["name"], request.content_type, await request.json()))
        status = self.script.pop(0) if self.script else 200
        return web.json_response({"kind": "Status", "message": f"scripted {status}"}, status=status)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
async def client(server: ScriptedServer) -> AsyncIterator[ApiClient]:
    api = ApiClient(Configuration(host=f"http://127.0.0.1:{server.port}"))
    yield api
    await api.close()


def owned(name: str, controller: str = "meshplane.io/gateway-controller") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1, "resourceVersion": "41"},
        "spec": {"controllerName": controller},
    }


@pytest.fixture
async def start_writer(client: ApiClient) -> AsyncIterator[Callable[..., ClassStatusWriter]]:
    tasks: list[asyncio.Task[None]] = []

    def start(classes: dict[str, dict[str, Any]], bundles: Callable[[], Any] = lambda: BUNDLES) -> ClassStatusWriter:
        writer = ClassStatusWriter(
            CLASSES.resource,
            "meshplane.io/gateway-controller",
            classes.get,
            bundles,
            backoff=FAST_BACKOFF,
            rng=random.Random(3),
            now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        )
        tasks.append(asyncio.create_task(writer.run(client)))
        return writer

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_refused_write_is_retried_with_backoff_until_it_lands(
    server: ScriptedServer, start_writer: Callable[..., ClassStatusWriter]
) -> None:
    server.script = [503, 503, 500]
    writer = start_writer({"meshplane": owned("meshplane")})
    writer.mark(["meshplane"])
    await wait_for(lambda: writer.last_error, what="the first refusal to show")
    assert writer.last_error.startswith("cannot write the status of GatewayClass meshplane: HTTP 503: scripted 503")
    await wait_for(lambda: writer.writes == 1, what="the write to land")
    assert writer.last_error == ""
    assert len(server.requests) == 4
    name, content_type, body = server.requests[-1]
    assert (name, content_type) == ("meshplane", MERGE_PATCH)
    # Conditional on the version read: a write from an old copy is refused, never applied over a newer one.
    assert body["metadata"] == {"resourceVersion": "41"}
    assert [c["type"] for c in body["status"]["conditions"]] == ["Accepted", "SupportedVersion"]


async def test_an_unreachable_server_is_retried_until_it_answers(
    server: ScriptedServer, start_writer: Callable[..., ClassStatusWriter]
) -> None:
    await server.stop()
    writer = start_writer({"meshplane": owned("meshplane")})
    writer.mark(["meshplane"])
    await wait_for(lambda: "cannot write the status of GatewayClass meshplane" in writer.last_error, what="an error")
    await server.start()
    await wait_for(lambda: writer.writes == 1, what="the write once the server answers")
    assert writer.last_error == ""


async def test_after_a_conflict_the_class_waits_to_be_marked_again(
    server: ScriptedServer, start_writer: Callable[..., ClassStatusWriter]
) -> None:
    server.script = [409]
    classes = {"meshplane": owned("meshplane"), "zz-probe": owned("zz-probe")}
    writer = start_writer(classes)
    writer.mark(["meshplane"])
    await wait_for(lambda: writer.conflicts == 1, what="the conflict")
    # A probe marked after it is written next: the barrier showing the conflicted class was not retried.
    writer.mark(["zz-probe"])
    await wait_for(lambda: writer.writes == 1, what="the probe written")
    assert [name for name, _, _ in server.requests] == ["meshplane", "zz-probe"]
    # The watch brings the newer version and marks it: now it is written.
    classes["meshplane"] = {
        **owned("meshplane"),
        "metadata": {**owned("meshplane")["metadata"], "resourceVersion": "42"},
    }
    writer.mark(["meshplane"])
    await wait_for(lambda: writer.writes == 2, what="the write after the conflict")
    assert server.requests[-1][2]["metadata"] == {"resourceVersion": "42"}


async def test_classes_not_owned_and_unknown_versions_are_never_written(
    server: ScriptedServer, start_writer: Callable[..., ClassStatusWriter]
) -> None:
    known: list[Any] = [None]
    classes = {
        "a-other": owned("a-other", "example.com/other"),
        "b-ours": owned("b-ours"),
        "zz-probe": owned("zz-probe"),
    }
    writer = start_writer(classes, bundles=lambda: known[0])
    writer.mark(["a-other", "b-ours"])  # looked at while the versions are unknown: kept marked
    known[0] = BUNDLES
    writer.mark(["a-other", "b-ours", "zz-probe"])
    await wait_for(lambda: writer.writes == 2, what="ours and the probe written")
    assert [name for name, _, _ in server.requests] == ["b-ours", "zz-probe"]
