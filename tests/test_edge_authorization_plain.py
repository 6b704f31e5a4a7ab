"""Device policy at a site without TLS, through a real edge-gateway Envoy: the caller is told by the
connection's own peer address (RBAC `direct_remote_ip`), so each stand-in device lives in a
network namespace of its own (tests/netns.py) and calls the gateway from there.

- A bike reaches only the paths its class is allowed (403 otherwise) and cannot claim another
  class; a caller that is no device (this host) is served where the default allows, without a class.
- A rower flooding past its per-device limit is answered 429 while the bike is served; an
  `x-forwarded-for` naming another address changes nothing (the peer address is the key).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from tests.edge_plane import QUICK, running_edge_plane
from tests.envoy_harness import Envoy, start_envoy
from tests.netns import DeviceHost, make_device_host, unavailable_reason
from tests.ports import free_port
from tests.preconditions import require, requires

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy"), requires(unavailable_reason())]

TOKENS = {"bike": "plain-bikes", "row": "plain-rows"}

# Sends GET requests from inside a namespace; prints one JSON list of [status, body] per request.
_CLIENT = """
import http.client, json, sys
host, port, requests = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
answers = []
for path, headers in requests:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    answers.append([response.status, response.read().decode()])
    connection.close()
print(json.dumps(answers))
"""


async def echo(request: web.Request) -> web.Response:
    return web.Response(text=f"{request.path} class={request.headers.get('x-device-class', '')}")


@dataclass
class Site:
    gateway: Envoy
    bike_host: DeviceHost
    row_host: DeviceHost

    async def from_host(self, device: DeviceHost, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
        """The answers to `requests` sent one after another from inside `device`'s namespace."""
        command = ["ip", "netns", "exec", device.namespace, sys.executable, "-c", _CLIENT]
        command += [device.host_address, str(self.gateway.outbound_port), json.dumps(requests)]
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return [(status, body) for status, body in json.loads(done.stdout)]

    async def from_this_host(self, path: str, headers: dict[str, str] | None = None) -> int:
        url = f"http://127.0.0.1:{self.gateway.outbound_port}{path}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url, headers={"host": "api", **(headers or {})}) as response,
        ):
            return response.status


def api(path: str, **headers: str) -> tuple[str, dict[str, str]]:
    return path, {"host": "api", **headers}


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    require(unavailable_reason())
    bike_host = await asyncio.to_thread(make_device_host)
    row_host = await asyncio.to_thread(make_device_host)
    cloud = web.AppRunner(_echo_app(), access_log=None)
    await cloud.setup()
    cloud_port = free_port()
    await web.TCPSite(cloud, "127.0.0.1", cloud_port).start()
    policy = tmp_path / "policy"
    policy.mkdir()
    ranges = f"['{bike_host.address}/32', '{row_host.address}/32']"
    (policy / "edge.yaml").write_text(
        f"""sites:
  - {{id: gym, region: local, device_ranges: {ranges}}}
services:
  - {{name: api, port: 8080, endpoints: [{{address: 127.0.0.1, port: {cloud_port}}}]}}
device_policies:
  - name: bikes
    classes: [bike]
    allow: [{{service: api, paths: [{{prefix: /rides}}]}}]
  - name: rows
    classes: [row]
    rate_limit: {{requests: 1, interval: 1h, burst: 3}}
"""
    )
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n" + "".join(f"  - {{sha256: {token_digest(t)}, class: {c}}}\n" for c, t in TOKENS.items())
    )
    leases = LeaseSettings(default_ttl=600, min_ttl=1, check_interval=0.5)
    gateway: Envoy | None = None
    try:
        async with (
            running_edge_plane(policy, tmp_path / "registry.db", tokens, leases, **QUICK) as plane,
            grpc.aio.insecure_channel(f"127.0.0.1:{plane.edge.port}") as channel,  # type: ignore[union-attr]
        ):
            stub = registry_pb2_grpc.RegistryStub(channel)
            for device, device_class, host in (("bike-1", "bike", bike_host), ("row-1", "row", row_host)):
                await stub.Register(
                    pb.RegisterRequest(
                        device_id=device,
                        device_class=device_class,
                        site="gym",
                        endpoints=[pb.Endpoint(address=host.address, port=8080)],
                        ttl_seconds=600,
                    ),
                    metadata=(("authorization", f"Bearer {TOKENS[device_class]}"),),
                )
            # Listening on every address: the namespaces reach it at their host side of the pair.
            gateway = await start_envoy(
                tmp_path / "envoy",
                plane.xds_port,
                node_id="gateway-gym",
                template="edge-gateway.yaml",
                metadata={"role": "edge-gateway", "site": "gym"},
            )
            yield Site(gateway, bike_host, row_host)
    finally:
        if gateway is not None:
            await gateway.stop()
        await cloud.cleanup()
        for host in (bike_host, row_host):
            await asyncio.to_thread(host.close)


def _echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", echo)
    return app


async def test_a_device_known_by_its_address_reaches_only_what_its_class_may(site: Site) -> None:
    async def bike_served() -> bool:
        [(status, _)] = await site.from_host(site.bike_host, [api("/rides/1")])
        return status == 200

    await site.gateway.eventually(bike_served, "the bike served by its address")
    answers = await site.from_host(
        site.bike_host,
        [
            api("/rides/2", **{"x-device-class": "bike"}),
            api("/workouts"),
            api("/rides", **{"x-device-class": "row"}),
            # Claiming another address in x-forwarded-for does not make the bike someone else.
            api("/workouts", **{"x-forwarded-for": site.row_host.address}),
        ],
    )
    assert answers == [
        (200, "/rides/2 class=bike"),
        (403, "RBAC: access denied"),
        (403, "RBAC: access denied"),
        (403, "RBAC: access denied"),
    ]
    # This host is no device: served where the default allows, but it may not claim a class.
    assert await site.from_this_host("/workouts") == 200
    assert await site.from_this_host("/workouts", {"x-device-class": "row"}) == 403


async def test_a_flooding_device_is_limited_by_its_address_while_the_others_are_served(site: Site) -> None:
    async def bike_served() -> bool:
        [(status, _)] = await site.from_host(site.bike_host, [api("/rides")])
        return status == 200

    await site.gateway.eventually(bike_served, "the bike served by its address")
    flood = await site.from_host(site.row_host, [api("/", **{"x-forwarded-for": "198.18.250.9"})] * 8)
    statuses = [status for status, _ in flood]
    assert statuses[:3] == [200, 200, 200], statuses  # its burst
    assert set(statuses[3:]) == {429}, statuses
    [(status, _)] = await site.from_host(site.bike_host, [api("/rides")])
    assert status == 200
    assert await site.from_this_host("/") == 200
