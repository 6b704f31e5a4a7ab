"""Refused xDS streams are counted by status code on /metrics and /status: each refusal provoked by
a real gRPC client against a running control plane, the counts read back over its HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import jsonschema
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from meshplane.app import ControlPlane, Settings
from meshplane.xds.server.tracking import REFUSAL_CODES
from tests.envoy_harness import REPO
from tests.xds_fixtures import CDS, AdsStream, node, request, unpack_names

LIMIT = 2
TOKEN = "sidecar-secret"
REFUSED = "meshplane_xds_streams_refused_total"
WEB = "web.default:8080"  # the cluster our translator names for service web, port 8080


@dataclass
class Plane:
    control: ControlPlane
    channel: grpc.aio.Channel
    http: aiohttp.ClientSession

    def ads(self, token: str | None = TOKEN) -> AdsStream:
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        return AdsStream(stub.StreamAggregatedResources(metadata=metadata))

    async def get(self, path: str) -> tuple[str, str]:
        url = f"http://127.0.0.1:{self.control.status_port}{path}"
        async with self.http.get(url) as response:
            assert response.status == 200, path
            return response.headers["Content-Type"], await response.text()

    async def refused_metric(self) -> dict[str, float]:
        """The refused-streams counter by code, from /metrics parsed as Prometheus does."""
        content_type, body = await self.get("/metrics")
        assert content_type.startswith("text/plain; version=0.0.4")
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(body):  # raises on invalid exposition
            if family.name == REFUSED.removesuffix("_total"):
                assert family.type == "counter"
                counts.update(
                    {sample.labels["grpc_code"]: sample.value for sample in family.samples if sample.name == REFUSED}
                )
        return counts

    async def refused_status(self) -> dict[str, int]:
        _, body = await self.get("/status")
        document = json.loads(body)
        schema = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
        jsonschema.validate(document, {**schema, "$ref": "#/$defs/status"})
        refused: dict[str, int] = document["refused_streams"]
        return refused


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "web.yaml").write_text(
        "services:\n  - {name: web, port: 8080, endpoints: [{address: 127.0.0.1, port: 9}]}\n"
    )
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}, role: sidecar}}\n")
    control = ControlPlane(
        Settings(
            config=policy,
            xds_address="127.0.0.1:0",
            status_address="127.0.0.1:0",
            xds_tokens=tokens,
            max_streams_per_client=LIMIT,
            shutdown_grace=0.5,
        )
    )
    await control.start()
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{control.xds_port}")
    try:
        async with aiohttp.ClientSession() as http:
            yield Plane(control, channel, http)
    finally:
        await channel.close(None)
        stop.set()
        await task


async def refused_with(stream: AdsStream, first: object, code: grpc.StatusCode, reason: str) -> None:
    """Sends `first` and checks the stream ends with `code` and `reason`. A stream refused on its
    headers (over its client's limit, or without a credential) may end before the client's write
    completes, which then fails with that very status: `status()` reads it back either way."""
    with contextlib.suppress(grpc.aio.AioRpcError):  # refused before the request went out
        await stream.send(first)
    status, message = await stream.status()
    assert status == code, message
    assert reason in message


async def test_every_refusal_is_counted_by_its_code_on_metrics_and_status(plane: Plane) -> None:
    # Before any refusal every code is exported at 0, so a rate() alert has a series from the start.
    assert await plane.refused_metric() == dict.fromkeys(REFUSAL_CODES, 0.0)
    assert await plane.refused_status() == dict.fromkeys(REFUSAL_CODES, 0)

    # RESOURCE_EXHAUSTED: one more stream than this client (127.0.0.1) may hold.
    held = [plane.ads() for _ in range(LIMIT)]
    for i, stream in enumerate(held):
        await stream.send(request(CDS, with_node=node(f"held-{i}")))
        assert unpack_names(await stream.recv()) == [WEB]
    await refused_with(
        plane.ads(), request(CDS, with_node=node("extra")), grpc.StatusCode.RESOURCE_EXHAUSTED, "per client"
    )
    for stream in held:  # OK arrives only once the handler ended: the slots are free again
        await stream.call.done_writing()
        assert (await stream.status())[0] == grpc.StatusCode.OK

    # UNAUTHENTICATED: neither a client certificate nor a known token.
    for token in (None, "wrong"):
        await refused_with(
            plane.ads(token),
            request(CDS, with_node=node("anonymous")),
            grpc.StatusCode.UNAUTHENTICATED,
            "requires a client certificate or a known bearer token",
        )
    # PERMISSION_DENIED: a sidecar's token claiming the grpc role.
    await refused_with(
        plane.ads(),
        request(CDS, with_node=node("impostor", role="grpc")),
        grpc.StatusCode.PERMISSION_DENIED,
        "does not grant role 'grpc'",
    )
    # INVALID_ARGUMENT: a request the server cannot serve.
    await refused_with(
        plane.ads(),
        request("type.googleapis.com/not.a.Type", with_node=node("confused")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown type_url",
    )

    expected = {
        "DEADLINE_EXCEEDED": 0,
        "RESOURCE_EXHAUSTED": 1,
        "UNAUTHENTICATED": 2,
        "PERMISSION_DENIED": 1,
        "INVALID_ARGUMENT": 1,
    }
    assert await plane.refused_metric() == {code: float(count) for code, count in expected.items()}
    assert await plane.refused_status() == expected

    # A client that behaves is served throughout, and nothing refused shows as a proxy.
    good = plane.ads()
    await good.send(request(CDS, with_node=node("good")))
    assert unpack_names(await good.recv()) == [WEB]
    _, body = await plane.get("/status")
    assert [proxy["node"] for proxy in json.loads(body)["proxies"]] == ["good"]
    await good.close()
