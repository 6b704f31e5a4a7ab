"""Services with DNS endpoints through real proxies: policy files → control plane → a real Envoy (its
c-ares resolver) or grpcio's xDS client (its own resolver) → backends on 127.0.0.x.

Names resolve without touching the machine's /etc/hosts: `localhost` (which /etc/hosts already maps
to 127.0.0.1, and both resolvers read), and names under `meshplane.test` answered by a DNS server
the test runs (tests/dns_server.py), which the service names as its resolver (`dns.resolvers`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from meshplane.demo.greeter import start_greeter
from tests.dns_server import DnsServer, start_dns_server
from tests.envoy_harness import Envoy
from tests.ports import free_port
from tests.test_envoy_integration import Mesh, answered_by, answers, running_mesh
from tests.test_grpc_xds_client import run_client, write_grpc_bootstrap

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

NAME = "payments.meshplane.test"


@dataclass
class Backend:
    """An HTTP server on one 127.0.0.x address answering every request with its name."""

    name: str
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_backend_at(name: str, host: str, port: int) -> Backend:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} {request.path}\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return Backend(name, runner)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as state:
        yield state


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    server.close()


def dns_policy(name: str, port: int, dns: str) -> str:
    return (
        f"services:\n  - name: {name}\n    port: 8080\n    dns: {dns}\n"
        f"    endpoints:\n      - {{address: {NAME if name == 'payments' else 'localhost'}, port: {port}}}\n"
    )


async def seen(envoy: Envoy, host: str, tries: int = 20) -> set[str | None]:
    return {await answered_by(envoy, host) for _ in range(tries)}


async def cds_updates(envoy: Envoy) -> int | str | None:
    return await envoy.stat("cluster_manager.cds.update_success")


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_envoy_reaches_a_service_named_localhost(mesh: Mesh, delta: bool) -> None:
    backend = await mesh.backend("local")
    mesh.write("web.yaml", dns_policy("web", backend.port, "{lookup_family: v4}"))
    envoy = await mesh.envoy("dns-localhost", delta)
    await envoy.eventually(answers(envoy, "web", "local"), "traffic to web through its DNS name")
    dumped = await envoy.config_dump("dynamic_active_clusters")
    assert "envoy.clusters.dns" in str(dumped)


async def test_strict_dns_balances_every_address_and_follows_a_changed_answer_without_xds(
    mesh: Mesh, dns: DnsServer
) -> None:
    port = free_port()
    first = await start_backend_at("first", "127.0.0.2", port)
    second = await start_backend_at("second", "127.0.0.3", port)
    try:
        dns.set(NAME, "127.0.0.2")
        mesh.write(
            "payments.yaml",
            dns_policy("payments", port, f"{{resolvers: ['{dns.host}:{dns.port}'], lookup_family: v4}}"),
        )
        envoy = await mesh.envoy("dns-strict", True)
        await envoy.eventually(answers(envoy, "payments", "first"), "traffic to the name's first address")
        updates = await cds_updates(envoy)
        assert isinstance(updates, int)
        assert updates >= 1

        # Two addresses: strict resolution makes each a host of its own, both take traffic.
        dns.set(NAME, "127.0.0.2", "127.0.0.3")

        async def both() -> bool:
            return await seen(envoy, "payments") == {"first", "second"}

        await envoy.eventually(both, "both addresses taking traffic once the answer has two")

        # The name moves: traffic follows at the answer's TTL, and no cluster was sent again.
        dns.set(NAME, "127.0.0.3")

        async def moved() -> bool:
            return await seen(envoy, "payments") == {"second"}

        await envoy.eventually(moved, "traffic moving to the name's new address")
        assert await cds_updates(envoy) == updates
        assert dns.queries[NAME] >= 3
    finally:
        await first.close()
        await second.close()


async def test_logical_dns_connects_to_one_address_and_a_refresh_moves_it(mesh: Mesh, dns: DnsServer) -> None:
    port = free_port()
    first = await start_backend_at("first", "127.0.0.2", port)
    second = await start_backend_at("second", "127.0.0.3", port)
    try:
        dns.set(NAME, "127.0.0.2", "127.0.0.3")
        dns.ttl = 3600  # the fixed refresh below, not the TTL, decides when the name is asked again
        settings = f"{{resolution: logical, refresh: 200ms, resolvers: ['{dns.host}:{dns.port}'], lookup_family: v4}}"
        mesh.write("payments.yaml", dns_policy("payments", port, settings))
        envoy = await mesh.envoy("dns-logical", True)
        await envoy.eventually(answers(envoy, "payments", "first"), "traffic to the answer's first address")
        # Logical: one host, the first address of the answer; the second never takes traffic.
        assert await seen(envoy, "payments") == {"first"}
        asked = dns.queries[NAME]
        dns.set(NAME, "127.0.0.3")

        async def moved() -> bool:
            return dns.queries[NAME] > asked and await seen(envoy, "payments", 5) == {"second"}

        await envoy.eventually(moved, "new connections going to the refreshed address")
    finally:
        await first.close()
        await second.close()


@pytest.fixture
async def greeter() -> AsyncIterator[int]:
    server, port = await start_greeter("greeter-dns")
    yield port
    await server.stop(None)


async def test_grpc_xds_client_reaches_a_dns_service_through_logical_dns(
    mesh: Mesh, greeter: int, tmp_path: Path
) -> None:
    """grpcio resolves the name with its own resolver: `localhost`. The service asks for strict
    resolution; gRPC gets LOGICAL_DNS all the same (the only DNS cluster it supports)."""
    mesh.write(
        "greeter.yaml",
        "services:\n  - name: greeter\n    port: 50051\n    protocol: grpc\n    dns: {resolution: strict}\n"
        f"    endpoints:\n      - {{address: localhost, port: {greeter}}}\n",
    )
    bootstrap = write_grpc_bootstrap(tmp_path / "grpc-bootstrap.json", mesh.plane.xds_port)
    replies = await run_client(bootstrap, "xds:///greeter:50051", "ada")
    assert replies == ["hello ada from greeter-dns"]
    assert {track.group.role.value for track in mesh.plane.registry.streams()} <= {"grpc"}
