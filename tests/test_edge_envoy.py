"""Edge roles end to end through real Envoy: registry → control plane → Envoy → a device or the cloud.

- An edge-gateway Envoy routes a "cloud" request to a registered local backend standing in for a
  device, by device id, and stops once the device's lease expires.
- A device Envoy reaches a cloud service through its site's gateway, and fails over to the
  direct route when the gateway is gone.

The registry refuses loopback device addresses whatever the site's ranges say, so the stand-in
device lives on a network the test makes: a namespace joined by a veth pair (tests/netns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.app import ControlPlane
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.xds.translate.edge_gateway import DEVICE_HEADER
from tests.edge_plane import QUICK, running_edge_plane
from tests.envoy_harness import Backend, Envoy, free_port, start_backend, start_envoy
from tests.netns import DeviceHost, make_device_host, unavailable_reason
from tests.preconditions import require, requires

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy"), requires(unavailable_reason())]

DEVICE_TOKEN = "edge-e2e-bike-1"
METADATA = (("authorization", f"Bearer {DEVICE_TOKEN}"),)


@dataclass
class Edge:
    policy: Path
    workdir: Path
    plane: ControlPlane
    device_host: DeviceHost
    envoys: list[Envoy] = field(default_factory=list)
    cleanups: list[web.AppRunner] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)

    def write_policy(self, text: str) -> None:
        temporary = self.policy / "edge.tmp"
        temporary.write_text(text)
        temporary.rename(self.policy / "edge.yaml")

    async def envoy(self, node_id: str, template: str, **metadata: object) -> Envoy:
        envoy = await start_envoy(
            self.workdir, self.plane.xds_port, node_id=node_id, template=template, metadata=dict(metadata)
        )
        self.envoys.append(envoy)
        return envoy


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    require(unavailable_reason())
    device_host = await asyncio.to_thread(make_device_host)
    address = device_host.address
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "edge.yaml").write_text(f"sites:\n  - {{id: gym, region: local, device_ranges: ['{address}/32']}}\n")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest(DEVICE_TOKEN)}, device: bike-1}}\n")
    leases = LeaseSettings(default_ttl=2, min_ttl=1, check_interval=0.2)
    state: Edge | None = None
    try:
        async with running_edge_plane(policy, tmp_path / "registry.db", tokens, leases, **QUICK) as plane:
            state = Edge(policy, tmp_path / "envoy", plane, device_host)
            try:
                yield state
            finally:
                for envoy in state.envoys:
                    await envoy.stop()
    finally:
        if state is not None:
            for runner in state.cleanups:
                await runner.cleanup()
            for backend in state.backends:
                await backend.close()
        await asyncio.to_thread(device_host.close)


async def device_backend(edge: Edge, name: str) -> int:
    """An HTTP server in the device namespace answering `<name> <path>`, standing in for a device."""
    return await asyncio.to_thread(edge.device_host.serve, name)


async def get(port: int, host: str, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers={"host": host, **(headers or {})}) as response,
    ):
        return response.status, await response.text()


async def test_gateway_routes_to_a_registered_device_by_id_until_its_lease_expires(edge: Edge) -> None:
    device_port = await device_backend(edge, "bike-1")
    gateway = await edge.envoy("gateway-gym", "edge-gateway.yaml", role="edge-gateway", site="gym")
    to_devices = gateway.outbound_port + 1

    async def reaches_bike() -> bool:
        answer = await get(to_devices, "cloud-client", "/workout", {DEVICE_HEADER: "bike-1"})
        return answer == (200, "bike-1 /workout\n")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.plane.edge.port}") as channel:  # type: ignore[union-attr]
        stub = registry_pb2_grpc.RegistryStub(channel)
        registered = await stub.Register(
            pb.RegisterRequest(
                device_id="bike-1",
                device_class="bike",
                site="gym",
                endpoints=[pb.Endpoint(address=edge.device_host.address, port=device_port)],
                ttl_seconds=2,
            ),
            metadata=METADATA,
        )
        assert registered.ttl_seconds == 2

        # The device keeps its lease while the gateway's Envoy starts (which may take longer than
        # one TTL on a busy machine), as a live device would.
        async def heartbeats() -> None:
            request = pb.HeartbeatRequest(device_id="bike-1", lease_id=registered.lease_id)
            while True:
                await stub.Heartbeat(request, metadata=METADATA)
                await asyncio.sleep(0.5)

        beating = asyncio.create_task(heartbeats())
        try:
            await gateway.eventually(reaches_bike, "the gateway routing to bike-1 by its id")
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
    status, _ = await get(to_devices, "cloud-client", "/", {DEVICE_HEADER: "bike-2"})
    assert status == 404, "an unregistered device is unreachable"

    # The heartbeats stop: the lease runs out, and the gateway stops routing to the device.
    async def unreachable() -> bool:
        status, _ = await get(to_devices, "cloud-client", "/workout", {DEVICE_HEADER: "bike-1"})
        return status == 404

    await gateway.eventually(unreachable, "bike-1 unreachable after its lease expired")
    assert edge.plane.edge is not None
    assert edge.plane.edge.registry.get("bike-1") is None


async def test_device_reaches_the_cloud_through_its_gateway_and_fails_over_to_direct(edge: Edge) -> None:
    cloud = await start_backend("cloud")
    edge.backends.append(cloud)
    gateway_port = free_port()
    edge.write_policy(
        f"""sites:
  - id: gym
    region: local
    gateways: ["127.0.0.1:{gateway_port}"]
    device_ranges: ["{edge.device_host.address}/32"]
services:
  - name: api
    port: 8080
    endpoints: [{{address: 127.0.0.1, port: {cloud.port}}}]
"""
    )
    gateway = await edge.envoy(
        "gateway-gym", "edge-gateway.yaml", role="edge-gateway", site="gym", outbound_port=gateway_port
    )
    device = await edge.envoy("bike-1", "device.yaml", role="device", site="gym")
    gateway_requests = f"http.edge_from_devices_{gateway_port}.downstream_rq_completed"

    async def through_gateway() -> bool:
        status, body = await get(device.outbound_port, "api", "/rides")
        return status == 200 and body == "cloud /rides\n" and int(await gateway.stat(gateway_requests) or 0) > 0

    await device.eventually(through_gateway, "the device reaching the cloud through its gateway")

    await gateway.stop()
    edge.envoys.remove(gateway)
    before = cloud.hits

    async def direct() -> bool:
        status, body = await get(device.outbound_port, "api", "/rides")
        return status == 200 and body == "cloud /rides\n"

    await device.eventually(direct, "the device failing over to the cloud directly")
    assert cloud.hits > before
