"""The device simulator's library (meshplane.simulate.fleet) against a real registry, in-process.

Registration-only tests register 198.19.5.x addresses (the benchmarking range, RFC 2544): inside
the test site's range, not loopback, and never contacted (the registry does not reach devices).
The end-to-end test puts a real edge-gateway Envoy between the simulator's stand-in backends and
a cloud backend, on a network the test makes (tests/netns.py).
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import Filter, LeaseSettings
from meshplane.model import Site
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings
from meshplane.simulate.fleet import Fleet, FleetOptions, FleetStats, registry_target
from meshplane.xds.translate.edge_gateway import DEVICE_HEADER
from tests.edge_plane import QUICK, running_edge_plane
from tests.envoy_harness import start_backend, start_envoy
from tests.netns import make_device_host, unavailable_reason
from tests.preconditions import require, requires
from tests.tls_certs import issue, make_ca

OPENSSL_MISSING = None if shutil.which("openssl") else "the openssl command (to make test certificates) is missing"
SITES = {"gym": Site("gym", "eu-central", "a", (), ("198.19.5.0/24",))}
CLASS_TOKEN = "sim-bikes"
OPERATOR_TOKEN = "sim-ops"
OPERATOR = (("authorization", f"Bearer {OPERATOR_TOKEN}"),)
DEADLINE = 30.0


def tokens_file(path: Path) -> Path:
    path.write_text(
        f"tokens:\n  - {{sha256: {token_digest(CLASS_TOKEN)}, class: bike}}\n"
        f"  - {{sha256: {token_digest(OPERATOR_TOKEN)}, operator: ops}}\n"
    )
    return path


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Polls `check` until true; fails naming `what` after DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[EdgeRegistryServer]:
    server = EdgeRegistryServer(
        EdgeSettings(
            db=str(tmp_path / "registry.db"),
            address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            tokens=tokens_file(tmp_path / "tokens.yaml"),
            leases=LeaseSettings(default_ttl=30, min_ttl=1, check_interval=0.1),
        ),
        lambda: SITES,
        on_change=lambda: None,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(0.1)


@pytest.fixture
async def stub(registry: EdgeRegistryServer) -> AsyncIterator[registry_pb2_grpc.RegistryAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def options(registry: EdgeRegistryServer, **changes: object) -> FleetOptions:
    base = FleetOptions(
        registry=f"127.0.0.1:{registry.port}", site="gym", count=12, address="198.19.5.7", token=CLASS_TOKEN
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Running:
    """A fleet running in a task; `stop()` ends it and returns the final stats."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(fleet.run(self.stop_event))

    async def registered(self) -> None:
        waiter = asyncio.create_task(self.fleet.registered.wait())
        done, _ = await asyncio.wait({waiter, self.task}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.task in done:
            self.task.result()  # raises what ended the run
            raise AssertionError("the fleet stopped before registering")
        assert done, "timed out waiting for the fleet to register"

    async def stop(self) -> FleetStats:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, DEADLINE)


async def listed(stub: registry_pb2_grpc.RegistryAsyncStub) -> dict[str, pb.Device]:
    answer = await stub.List(pb.ListRequest(site="gym"), metadata=OPERATOR)
    return {device.device_id: device for device in answer.devices}


async def test_registers_every_device_visibly_and_deregisters_them_all_on_stop(
    registry: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryAsyncStub
) -> None:
    progress: list[FleetStats] = []
    fleet = Fleet(options(registry, labels={"fleet": "test"}), on_progress=progress.append, progress_interval=0.01)
    running = Running(fleet)
    await running.registered()

    devices = await listed(stub)
    assert sorted(devices) == fleet.device_ids == [f"sim-gym-{i:05d}" for i in range(12)]
    device = devices["sim-gym-00003"]
    assert [(e.address, e.port) for e in device.endpoints] == [("198.19.5.7", 20003)]
    assert (device.device_class, device.version, dict(device.labels)) == ("bike", "1.0.0", {"fleet": "test"})

    stats = await running.stop()
    assert (stats.registered, stats.refused_total, stats.deregistered) == (12, 0, 12)
    assert not stats.deregister_failed
    assert await listed(stub) == {}
    assert progress, "on_progress was called"
    assert progress[-1].deregistered == 12, "the last report is the final stats"


async def test_heartbeats_keep_leases_alive_beyond_the_ttl(
    registry: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryAsyncStub
) -> None:
    # The default interval: a third of the TTL granted (1 s of 3 s).
    running = Running(Fleet(options(registry, ttl_seconds=3, heartbeat_streams=3)))
    await running.registered()
    first = {device_id: d.expires_at.ToNanoseconds() for device_id, d in (await listed(stub)).items()}
    assert len(first) == 12

    async def renewed_after_the_first_expiry() -> bool:
        # A lease now ending more than a TTL after the first one was renewed after the first had
        # run out: without renewals every device would have left the registry by then.
        now = await listed(stub)
        assert set(now) == set(first), "a device left the registry"
        return all(now[i].expires_at.ToNanoseconds() > first[i] + 3_000_000_000 for i in first)

    await eventually(renewed_after_the_first_expiry, "every lease renewed past its first expiry")
    stats = await running.stop()
    assert stats.reregistered == 0, stats.heartbeats_failed
    assert not stats.heartbeats_failed
    assert stats.heartbeats_ok >= 12 * 3


async def test_a_lapsed_lease_registers_again(
    registry: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryAsyncStub
) -> None:
    # Heartbeats slower than the TTL: every lease lapses, the renewal answers NOT_FOUND, and the
    # device registers again.
    running = Running(Fleet(options(registry, count=4, ttl_seconds=1, heartbeat_interval=2.5)))
    await running.registered()
    await eventually(lambda: running.fleet.stats.reregistered >= 4, "four re-registrations")
    stats = await running.stop()
    assert all(reason.startswith("NOT_FOUND: ") for reason in stats.heartbeats_failed), stats.heartbeats_failed
    assert stats.refused_total == 0
    assert await listed(stub) == {}


async def test_a_device_removed_by_an_operator_registers_again_and_the_rest_keep_renewing(
    registry: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryAsyncStub
) -> None:
    running = Running(Fleet(options(registry, count=6, heartbeat_streams=1, heartbeat_interval=0.1)))
    await running.registered()
    await stub.Deregister(pb.DeregisterRequest(device_id="sim-gym-00002"), metadata=OPERATOR)
    await eventually(lambda: running.fleet.stats.reregistered == 1, "sim-gym-00002 registering again")
    before = running.fleet.stats.heartbeats_ok
    await eventually(lambda: running.fleet.stats.heartbeats_ok >= before + 12, "renewals going on")
    assert sorted(await listed(stub)) == running.fleet.device_ids
    stats = await running.stop()
    assert stats.heartbeats_failed_total == 1
    (reason,) = stats.heartbeats_failed
    assert reason.startswith("NOT_FOUND: device sim-gym-00002 has no live lease")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"site": "nowhere"}, "INVALID_ARGUMENT: site 'nowhere' is not a known site", id="unknown-site"),
        pytest.param(
            {"address": "198.19.6.1"},
            "PERMISSION_DENIED: endpoint address 198.19.6.1 is outside the ranges of site gym (198.19.5.0/24)",
            id="outside-range",
        ),
        pytest.param(
            {"token": "nope"},
            "UNAUTHENTICATED: missing or unknown credentials (authorization: Bearer …)",
            id="bad-token",
        ),
        pytest.param(
            {"device_class": "tread"},
            "PERMISSION_DENIED: credentials of class bike cannot act on a device of class tread",
            id="other-class",
        ),
    ],
)
async def test_refusals_are_counted_by_reason_and_given_up(
    registry: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryAsyncStub, changes: dict[str, object], reason: str
) -> None:
    running = Running(Fleet(options(registry, count=5, **changes)))
    await running.registered()
    stats = await running.stop()
    assert stats.refused == {reason: 5}
    assert (stats.registered, stats.deregistered, stats.heartbeats_ok) == (0, 0, 0)
    assert await listed(stub) == {}


async def test_a_backend_that_cannot_listen_refuses_its_device(
    registry: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryAsyncStub
) -> None:
    # 198.19.5.7 is no address of this host: the stand-in backends cannot bind, and a device whose
    # backend is not serving is not registered (the gateway would route to nothing).
    running = Running(Fleet(options(registry, count=3, backends=True)))
    await running.registered()
    stats = await running.stop()
    (reason,) = stats.refused
    assert reason.startswith("stand-in backend on 198.19.5.7 did not start: ")
    assert (stats.refused[reason], stats.registered, stats.backends) == (3, 0, 0)
    assert await listed(stub) == {}


async def test_rate_limited_registrations_are_retried_until_all_register(tmp_path: Path) -> None:
    server = EdgeRegistryServer(
        EdgeSettings(
            db=":memory:",
            address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            tokens=tokens_file(tmp_path / "tokens.yaml"),
            register_rate=40,
            register_burst=5,
        ),
        lambda: SITES,
        on_change=lambda: None,
    )
    await server.start()
    try:
        running = Running(Fleet(options(server, count=20, concurrency=8)))
        await running.registered()
        stats = await running.stop()
    finally:
        await server.shutdown(0.1)
    assert (stats.registered, stats.refused_total, stats.deregistered) == (20, 0, 20)
    assert stats.retried, "some registrations met the rate limit"
    assert all(reason.startswith("RESOURCE_EXHAUSTED: too many Register calls") for reason in stats.retried)


async def test_registers_once_the_registry_comes_up(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fleet = Fleet(
        FleetOptions(registry=f"127.0.0.1:{port}", site="gym", count=3, address="198.19.5.9", token=CLASS_TOKEN)
    )
    running = Running(fleet)
    await eventually(lambda: bool(fleet.stats.retried), "a retried UNAVAILABLE while the registry is down")
    assert all(reason.startswith("UNAVAILABLE") for reason in fleet.stats.retried)
    server = EdgeRegistryServer(
        EdgeSettings(
            db=":memory:", address=f"127.0.0.1:{port}", http_address="127.0.0.1:0", tokens=tokens_file(tmp_path / "t")
        ),
        lambda: SITES,
        on_change=lambda: None,
    )
    await server.start()
    try:
        await running.registered()
        stats = await running.stop()
    finally:
        await server.shutdown(0.1)
    assert (stats.registered, stats.deregistered) == (3, 3)


async def test_cancelling_the_run_still_deregisters(
    registry: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryAsyncStub
) -> None:
    running = Running(Fleet(options(registry, count=5)))
    await running.registered()
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running.task
    assert await listed(stub) == {}


@requires(OPENSSL_MISSING)
async def test_registers_over_mutual_tls(tmp_path: Path) -> None:
    require(OPENSSL_MISSING)
    ca = await asyncio.to_thread(make_ca, tmp_path)
    served = await asyncio.to_thread(issue, ca, tmp_path, "registry", "IP:127.0.0.1")
    client = await asyncio.to_thread(issue, ca, tmp_path, "simulator", "URI:spiffe://meshplane.test/simulator")
    server = EdgeRegistryServer(
        EdgeSettings(
            db=":memory:",
            address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            tokens=tokens_file(tmp_path / "tokens.yaml"),
            tls_certificate=served.certificate,
            tls_key=served.key,
            client_ca=ca.certificate,
        ),
        lambda: SITES,
        on_change=lambda: None,
    )
    await server.start()
    try:
        # The certificate gets the client through the handshake; the class token names the
        # principal for the whole fleet (a certificate names one device).
        tls = {"tls_ca": ca.certificate, "tls_cert": client.certificate, "tls_key": client.key}
        running = Running(Fleet(options(server, count=3, **tls)))
        await running.registered()
        assert {row.device.id for row in server.registry.matching(Filter())} == set(running.fleet.device_ids)
        stats = await running.stop()
    finally:
        await server.shutdown(0.1)
    assert (stats.registered, stats.deregistered, stats.refused_total) == (3, 3, 0)


def test_options_list_every_problem() -> None:
    bad = FleetOptions(
        registry="x",
        site="gym",
        count=0,
        address="127.0.0.1",
        port_base=70000,
        device_class="Bike",
        traffic_url="http://127.0.0.1:1/",
        tls_cert=Path("c.pem"),
    )
    problems = bad.problems()
    assert any("count must be at least 1" in p for p in problems)
    assert any("ports" in p for p in problems)
    assert any("class 'Bike'" in p for p in problems)
    assert any("127.0.0.1 is a loopback address" in p for p in problems)
    assert any("traffic_url and traffic_host go together" in p for p in problems)
    assert any("tls_cert and tls_key go together" in p for p in problems)
    with pytest.raises(ValueError, match="loopback"):
        Fleet(bad)


@pytest.mark.parametrize(
    ("registry", "target"),
    [("meshplane:18001", ("meshplane", 18001)), ("meshplane", ("meshplane", 18001)), ("[fd00::1]:9", ("fd00::1", 9))],
)
def test_registry_target(registry: str, target: tuple[str, int]) -> None:
    assert registry_target(registry) == target


# --- through a real edge-gateway Envoy ---------------------------------------------------------


def free_ports(host: str, count: int) -> int:
    """The first of `count` consecutive ports free on `host`."""
    for _ in range(100):
        sockets = []
        try:
            first = socket.socket()
            sockets.append(first)
            first.bind((host, 0))
            base = first.getsockname()[1]
            if base + count > 65535:
                continue
            for offset in range(1, count):
                extra = socket.socket()
                sockets.append(extra)
                extra.bind((host, base + offset))
            return int(base)
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@requires(unavailable_reason())
async def test_gateway_reaches_stand_in_backends_and_devices_reach_the_cloud(tmp_path: Path) -> None:
    """cloud → gateway (x-meshplane-device) → the simulator's backends; devices → gateway → cloud."""
    require(unavailable_reason())
    device_host = await asyncio.to_thread(make_device_host)
    # The veth pair's end on this side: a local address that is not loopback, on a network the
    # test made, so the simulator's backends can listen on it and the gateway reach them.
    address = device_host.address.rsplit(".", 1)[0] + ".1"
    cloud = await start_backend("cloud")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "edge.yaml").write_text(
        f"""sites:
  - {{id: gym, region: local, device_ranges: ['{address}/32']}}
services:
  - name: api
    port: 8080
    endpoints: [{{address: 127.0.0.1, port: {cloud.port}}}]
"""
    )
    leases = LeaseSettings(default_ttl=30, min_ttl=1, check_interval=0.2)
    tokens = tokens_file(tmp_path / "tokens.yaml")
    async with running_edge_plane(policy, tmp_path / "registry.db", tokens, leases, **QUICK) as plane:
        gateway = None
        running = None
        try:
            assert plane.edge is not None
            gateway = await start_envoy(
                tmp_path / "envoy", plane.xds_port, node_id="gateway-gym", template="edge-gateway.yaml",
                metadata={"role": "edge-gateway", "site": "gym"},
            )  # fmt: skip
            fleet = Fleet(
                FleetOptions(
                    registry=f"127.0.0.1:{plane.edge.port}",
                    site="gym",
                    count=3,
                    address=address,
                    port_base=await asyncio.to_thread(free_ports, address, 3),
                    token=CLASS_TOKEN,
                    backends=True,
                    traffic_url=f"http://127.0.0.1:{gateway.outbound_port}/rides",
                    traffic_host="api",
                    traffic_rate=20,
                )
            )
            running = Running(fleet)
            await running.registered()
            assert fleet.stats.backends == 3

            to_devices = gateway.outbound_port + 1
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

                async def reaches(device_id: str) -> bool:
                    url = f"http://127.0.0.1:{to_devices}/workout"
                    async with session.get(url, headers={"host": "cloud-client", DEVICE_HEADER: device_id}) as response:
                        return response.status == 200 and await response.text() == (
                            f"hello from device {device_id} (GET /workout)\n"
                        )

                for device_id in fleet.device_ids:
                    await gateway.eventually(functools.partial(reaches, device_id), f"the gateway reaching {device_id}")

            await gateway.eventually(
                lambda: asyncio.sleep(0, fleet.stats.requests_ok >= 5), "five device requests through the gateway"
            )
            assert cloud.hits >= 5
            stats = await running.stop()
            running = None
            assert (stats.registered, stats.deregistered, stats.backends) == (3, 3, 0)
            assert plane.edge.registry.get("sim-gym-00000") is None
        finally:
            if running is not None:
                await running.stop()
            if gateway is not None:
                await gateway.stop()
            await cloud.close()
            await asyncio.to_thread(device_host.close)


class StuckRegistry(registry_pb2_grpc.RegistryServicer):
    """Registers and renews like the real one, but never answers a Deregister: a registry that
    stopped answering half-way through a fleet's shutdown."""

    def __init__(self) -> None:
        self.deregistering = 0

    async def Register(self, request: pb.RegisterRequest, context: object) -> pb.RegisterResponse:
        return pb.RegisterResponse(lease_id=f"lease-{request.device_id}", ttl_seconds=30)

    async def HeartbeatStream(
        self, requests: AsyncIterator[pb.HeartbeatRequest], context: object
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        async for _ in requests:
            yield pb.HeartbeatResponse(ttl_seconds=30)

    async def Deregister(self, request: pb.DeregisterRequest, context: object) -> pb.DeregisterResponse:
        self.deregistering += 1
        await asyncio.Event().wait()  # never
        raise AssertionError("unreachable")


async def test_abandon_stops_waiting_for_deregistrations_and_counts_the_leases_left() -> None:
    """`meshplane simulate`'s second Ctrl-C: the run ends at once, its backends stopped, the leases
    left to expire, and the summary says how many."""
    stuck = StuckRegistry()
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServicer_to_server(stuck, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        fleet = Fleet(FleetOptions(registry=f"127.0.0.1:{port}", site="gym", count=5, address="198.19.5.7"))
        running = Running(fleet)
        await running.registered()
        running.stop_event.set()
        await eventually(lambda: stuck.deregistering == 5, "every deregistration to be sent")
        assert not running.task.done()
        fleet.abandon()
        stats = await asyncio.wait_for(running.task, DEADLINE)
    finally:
        await server.stop(None)
    assert (stats.registered, stats.deregistered, stats.abandoned) == (5, 0, 5)
    assert stats.as_dict()["abandoned"] == 5
