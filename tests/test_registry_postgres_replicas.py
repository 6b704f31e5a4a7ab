"""Real `meshplane serve` replicas sharing one real PostgreSQL registry (`--registry-store`).

- A device registered at replica A is routed by an edge-gateway Envoy connected to replica C, and
  the gateways on B and C are served identical versions.
- kill -9 of one replica mid-burst loses no acknowledged registration; retries land on the others.
- A lapsed lease is swept once, by the one replica holding the sweeper lock; killing it moves the role.
- The database stopping makes replicas unready and refuse registrations (UNAVAILABLE, with the
  reason, on /readyz and /status) while a gateway Envoy connected to one keeps routing real
  requests to a device registered before; when it is back they are ready and accept them again.

Every wait is on a condition (a log line, an answer) with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest
from meshplane.xds.translate.edge_gateway import DEVICE_HEADER
from tests.envoy_harness import REPO, Envoy, start_envoy
from tests.meshplane_env import without_meshplane_variables
from tests.netns import make_device_host, unavailable_reason
from tests.ports import free_port
from tests.postgres import PASSWORD, PostgresServer, postgres_server, running_postgres
from tests.preconditions import requires
from tests.serve_process import ServeProcess

__all__ = ["postgres_server"]  # a fixture

DEADLINE = 60.0
CLASS_TOKEN = "replicas-bikes"
OPERATOR_TOKEN = "replicas-ops"
DEVICE_TOKEN = "replicas-bike-1"
CLASS = (("authorization", f"Bearer {CLASS_TOKEN}"),)
OPERATOR = (("authorization", f"Bearer {OPERATOR_TOKEN}"),)
DEVICE = (("authorization", f"Bearer {DEVICE_TOKEN}"),)
SWEEPER = "this replica sweeps lapsed leases"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, last: Callable[[], object]) -> None:
    end = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < end, f"{what}: not so after {DEADLINE}s; last seen: {last()}"
        await asyncio.sleep(0.05)


@dataclass
class Replica:
    name: str
    served: ServeProcess
    reader: asyncio.Task[None]
    xds_port: int
    registry_port: int = 0
    http_port: int = 0  # the registry's JSON mirror (what `meshplane devices --registry` reads)

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.served.process

    def logged(self, text: str) -> int:
        return sum(text in line for line in self.served.lines)

    def log(self) -> str:
        return "\n".join(self.served.lines[-40:])

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(self.process.wait(), 30)
            assert code == 0, self.log()
        await self.reader

    async def list(self) -> set[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.registry_port}") as channel:
            answer = await registry_pb2_grpc.RegistryStub(channel).List(pb.ListRequest(), metadata=OPERATOR, timeout=10)
        return {device.device_id for device in answer.devices}


@dataclass
class Cluster:
    """The workdir (policy, tokens, password file) and database the replicas share."""

    workdir: Path
    url: str
    server: PostgresServer
    database: str

    async def replica(self, name: str, url: str | None = None) -> Replica:
        """A started `meshplane serve` replica; `url`: its own way to the database (default: direct)."""
        xds_port = free_port()
        status_port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshplane",
            "serve",
            "--config",
            str(self.workdir / "policy"),
            "--xds-address",
            f"127.0.0.1:{xds_port}",
            "--status-address",
            f"127.0.0.1:{status_port}",
            "--debounce-quiet",
            "0.02",
            "--debounce-max",
            "0.2",
            "--registry-store",
            url or self.url,
            "--registry-store-password-file",
            str(self.workdir / "password"),
            "--registry-address",
            "127.0.0.1:0",
            "--registry-http-address",
            "127.0.0.1:0",
            "--registry-tokens",
            str(self.workdir / "tokens.yaml"),
            "--registry-rate",
            "0",
            "--lease-min-ttl",
            "1",
            "--lease-check-interval",
            "0.2",
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env={key: value for key, value in without_meshplane_variables().items() if key != "PGPASSWORD"},
            limit=64 << 10,
        )
        served = ServeProcess(process, status_port)
        replica = Replica(name, served, asyncio.create_task(served.read_log()), xds_port)
        index = await asyncio.wait_for(served.wait_for_line(lambda line: "edge registry: gRPC on port" in line), 60)
        found = re.search(r"gRPC on port (\d+), JSON on port (\d+)", served.lines[index])
        assert found is not None, served.lines[index]
        replica.registry_port, replica.http_port = int(found.group(1)), int(found.group(2))
        await asyncio.wait_for(served.wait_for_line(lambda line: " meshplane.app: xDS on port " in line), 60)
        return replica

    def stored(self) -> set[str]:
        return {str(row[0]) for row in self.server.execute(self.database, "SELECT device_id FROM registrations")}


def write_workdir(workdir: Path, device_range: str, device_tokens: tuple[tuple[str, str], ...] = ()) -> None:
    (workdir / "policy").mkdir(parents=True, exist_ok=True)
    (workdir / "policy" / "sites.yaml").write_text(
        f"sites:\n  - {{id: gym, region: eu-central, device_ranges: ['{device_range}']}}\n"
    )
    lines = [
        f"  - {{sha256: {token_digest(CLASS_TOKEN)}, class: bike}}",
        f"  - {{sha256: {token_digest(OPERATOR_TOKEN)}, operator: ops}}",
        *(f"  - {{sha256: {token_digest(token)}, device: {device}}}" for device, token in device_tokens),
    ]
    (workdir / "tokens.yaml").write_text("tokens:\n" + "\n".join(lines) + "\n")
    (workdir / "password").write_text(PASSWORD + "\n")


@contextlib.asynccontextmanager
async def replicas(cluster: Cluster, count: int, together: bool = False) -> AsyncIterator[list[Replica]]:
    """`count` replicas, started one after another or (`together`) all at the same moment."""
    started: list[Replica] = []
    try:
        if together:
            outcomes = await asyncio.gather(*(cluster.replica("abc"[i]) for i in range(count)), return_exceptions=True)
            started.extend(outcome for outcome in outcomes if isinstance(outcome, Replica))
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        else:
            for index in range(count):
                started.append(await cluster.replica("abc"[index]))
        yield started
        for replica in started:
            await replica.stop()
    finally:
        for replica in started:
            if replica.process.returncode is None:
                replica.process.kill()
                await replica.process.wait()
            replica.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.reader


def cluster_on(server: PostgresServer, workdir: Path) -> Cluster:
    database = server.create_database()
    return Cluster(workdir, server.url(database), server, database)


def registration(index: int, ttl: int = 300) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        device_id=f"bike-{index:05d}",
        device_class="bike",
        site="gym",
        endpoints=[pb.Endpoint(address=f"10.20.{index // 250}.{index % 250 + 1}", port=8080)],
        version="1.0.0",
        ttl_seconds=ttl,
    )


def bike_1(address: str, port: int) -> pb.RegisterRequest:
    """bike-1, the device the routing tests serve from this host (registered with DEVICE)."""
    return pb.RegisterRequest(
        device_id="bike-1",
        device_class="bike",
        site="gym",
        endpoints=[pb.Endpoint(address=address, port=port)],
        ttl_seconds=300,
    )


async def register(
    replica: Replica, request: pb.RegisterRequest, metadata: tuple[tuple[str, str], ...] = CLASS
) -> pb.RegisterResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.registry_port}") as channel:
        answer: pb.RegisterResponse = await registry_pb2_grpc.RegistryStub(channel).Register(
            request, metadata=metadata, timeout=10
        )
        return answer


# --- routing across replicas, through real Envoy ---


def versions(dump: Any) -> list[str]:
    """Every version_info in an Envoy config dump, sorted (timestamps left out)."""
    found: list[str] = []
    if isinstance(dump, dict):
        for key, value in dump.items():
            if key == "version_info" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(versions(value))
    elif isinstance(dump, list):
        for item in dump:
            found.extend(versions(item))
    return sorted(found)


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@requires(unavailable_reason())
async def test_a_device_registered_at_one_replica_is_routed_by_a_gateway_on_another(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    host = await asyncio.to_thread(make_device_host)
    envoys: list[Envoy] = []
    try:
        write_workdir(tmp_path, f"{host.address}/32", (("bike-1", DEVICE_TOKEN),))
        device_port = await asyncio.to_thread(host.serve, "bike-1")
        cluster = cluster_on(postgres_server, tmp_path)
        async with replicas(cluster, 3) as (a, b, c):
            await register(a, bike_1(host.address, device_port), metadata=DEVICE)
            # One gateway (one outbound port: one proxy group) on b, then the same on c: each must
            # route to bike-1, and c must serve exactly the versions b served.
            outbound_port = free_port()
            served: list[list[str]] = []
            for replica in (b, c):
                gateway = await start_envoy(
                    tmp_path / "envoy" / replica.name,
                    replica.xds_port,
                    node_id=f"gateway-{replica.name}",
                    template="edge-gateway.yaml",
                    metadata={"role": "edge-gateway", "site": "gym", "outbound_port": outbound_port},
                )
                envoys.append(gateway)

                async def reaches_bike() -> bool:
                    url = f"http://127.0.0.1:{outbound_port + 1}/workout"
                    headers = {"host": "cloud-client", DEVICE_HEADER: "bike-1"}
                    async with gateway.session.get(url, headers=headers) as response:  # noqa: B023 (awaited here)
                        return (response.status, await response.text()) == (200, "bike-1 /workout\n")

                await gateway.eventually(
                    reaches_bike, f"the gateway on {replica.name} routing to bike-1 (registered at a)"
                )
                served.append(versions(await gateway.config_dump()))
                await gateway.stop()
            assert served[0], "the gateway was served no versions"
            assert served[0] == served[1], "replicas b and c served different versions of the same content"
    finally:
        for envoy in envoys:
            await envoy.stop()
        await asyncio.to_thread(host.close)


# --- kill -9 mid-burst ---


async def test_kill_9_of_a_replica_mid_burst_loses_no_acknowledged_registration(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    write_workdir(tmp_path, "10.20.0.0/16")
    cluster = cluster_on(postgres_server, tmp_path)
    async with replicas(cluster, 3) as group:
        victim = group[0]
        acknowledged: dict[str, str] = {}  # device id → the replica that acknowledged it
        retried: list[str] = []
        halfway = asyncio.Event()
        done = asyncio.Event()
        counter = iter(range(100_000))
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{r.registry_port}") for r in group]
        stubs = [registry_pb2_grpc.RegistryStub(channel) for channel in channels]

        async def client(home: int) -> None:
            for index in counter:
                if done.is_set():
                    return
                request = registration(index)
                for attempt in range(len(group)):
                    target = (home + attempt) % len(group)
                    try:
                        await stubs[target].Register(request, metadata=CLASS, timeout=10)
                    except grpc.aio.AioRpcError as error:
                        if error.code() is grpc.StatusCode.PERMISSION_DENIED:
                            break  # committed by the dead replica but never acknowledged: its holder has it
                        home = (home + 1) % len(group)  # that replica is gone: use another from now on
                        retried.append(request.device_id)
                        continue
                    acknowledged[request.device_id] = group[target].name
                    break
                if len(acknowledged) >= 300:
                    halfway.set()
                if len(acknowledged) >= 900:
                    done.set()

        try:
            workers = [asyncio.create_task(client(index % 3)) for index in range(24)]
            await asyncio.wait_for(halfway.wait(), DEADLINE)
            await victim.kill()  # mid-burst: a third of the 24 clients have a call in flight at it
            await asyncio.wait_for(asyncio.gather(*workers), DEADLINE)
        finally:
            for channel in channels:
                await channel.close(None)
        assert len(acknowledged) >= 900
        assert retried, "no registration was retried: the kill did not land mid-burst"
        assert any(acknowledged.get(device) not in (None, "a") for device in retried)
        missing = set(acknowledged) - cluster.stored()
        assert not missing, f"acknowledged but not in the database: {sorted(missing)[:10]}"
        for survivor in group[1:]:
            seen: set[str] = set()

            async def serves_all(survivor: Replica = survivor, seen: set[str] = seen) -> bool:
                seen.clear()
                seen.update(await survivor.list())
                return set(acknowledged) <= seen

            what = f"replica {survivor.name} serving every acknowledged device"
            await eventually(serves_all, what, lambda seen=seen: len(seen))  # type: ignore[misc]


# --- the sweeper ---


async def test_a_lapsed_lease_is_swept_once_and_the_sweeper_role_moves_when_its_replica_is_killed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    write_workdir(tmp_path, "10.20.0.0/16")
    cluster = cluster_on(postgres_server, tmp_path)
    async with replicas(cluster, 3) as group:

        async def one_sweeper() -> bool:
            return sum(replica.logged(SWEEPER) for replica in group) >= 1

        await eventually(one_sweeper, "a replica taking the sweeper role", lambda: [r.log() for r in group])
        sweepers = [replica for replica in group if replica.logged(SWEEPER)]
        assert len(sweepers) == 1, [r.name for r in sweepers]
        sweeper = sweepers[0]
        others = [replica for replica in group if replica is not sweeper]

        await register(others[0], registration(1, ttl=1))
        assert "bike-00001" in cluster.stored()

        async def gone_everywhere() -> bool:
            listed = [await replica.list() for replica in group]
            return all("bike-00001" not in devices for devices in listed)

        await eventually(gone_everywhere, "bike-00001 expired at every replica", lambda: cluster.stored())
        assert "bike-00001" not in cluster.stored()
        assert sweeper.logged("1 leases lapsed (by the database's clock)") == 1
        assert all(not replica.logged("leases lapsed") for replica in others)

        await sweeper.kill()

        async def taken_over() -> bool:
            return any(replica.logged(SWEEPER) for replica in others)

        await eventually(taken_over, "another replica taking the sweeper role", lambda: [r.log() for r in others])
        await register(others[0], registration(2, ttl=1))

        async def swept_by_survivors() -> bool:
            listed = [await replica.list() for replica in others]
            return "bike-00002" not in cluster.stored() and all("bike-00002" not in devices for devices in listed)

        await eventually(swept_by_survivors, "bike-00002 swept after the takeover", lambda: cluster.stored())
        assert sum(replica.logged("leases lapsed") for replica in others) == 1


# --- the database going away ---


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@requires(unavailable_reason())
async def test_replicas_are_unready_and_refuse_registrations_but_keep_routing_while_the_database_is_down(
    tmp_path: Path,
) -> None:
    host = await asyncio.to_thread(make_device_host)
    gateway: Envoy | None = None
    try:
        write_workdir(tmp_path, f"{host.address}/32", (("bike-1", DEVICE_TOKEN),))
        device_port = await asyncio.to_thread(host.serve, "bike-1")
        with running_postgres() as server:
            cluster = cluster_on(server, tmp_path)
            async with replicas(cluster, 2) as group:
                await register(group[0], bike_1(host.address, device_port), metadata=DEVICE)
                outbound_port = free_port()
                gateway = await start_envoy(
                    tmp_path / "envoy",
                    group[1].xds_port,
                    node_id="gateway-b",
                    template="edge-gateway.yaml",
                    metadata={"role": "edge-gateway", "site": "gym", "outbound_port": outbound_port},
                )
                routed = gateway

                async def reaches_bike() -> bool:
                    url = f"http://127.0.0.1:{outbound_port + 1}/workout"
                    headers = {"host": "cloud-client", DEVICE_HEADER: "bike-1"}
                    async with routed.session.get(url, headers=headers) as response:
                        return (response.status, await response.text()) == (200, "bike-1 /workout\n")

                await gateway.eventually(reaches_bike, "the gateway on b routing to bike-1 (registered at a)")
                second = registration(2)  # inside the site's one range: the stand-in device's address
                del second.endpoints[:]
                second.endpoints.add(address=host.address, port=device_port)
                last: list[tuple[int, str]] = []

                async def readiness(expected: int) -> bool:
                    answers = [await replica.served.get("/readyz") for replica in group]
                    last[:] = answers
                    return all(code == expected for code, _ in answers)

                await eventually(lambda: readiness(200), "both replicas ready", lambda: last)
                await asyncio.to_thread(server.stop)
                await eventually(lambda: readiness(503), "both replicas unready", lambda: last)
                assert all("edge-registry" in body for _, body in last), last
                for replica in group:
                    status = json.dumps(await replica.served.status())
                    assert "is unreachable" in status, status[:3000]
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await register(group[1], second)
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "registration store is unavailable" in (refused.value.details() or "")
                # The proxies keep the last known devices: real requests still reach bike-1, each one.
                for _ in range(20):
                    assert await reaches_bike(), "the gateway stopped routing to bike-1 during the outage"

                await asyncio.to_thread(server.start)
                await eventually(lambda: readiness(200), "both replicas ready again", lambda: last)
                await register(group[1], second)
                assert cluster.stored() == {"bike-1", "bike-00002"}

                async def both_serve_both() -> bool:
                    listed = [await replica.list() for replica in group]
                    return all(devices == {"bike-1", "bike-00002"} for devices in listed)

                await eventually(both_serve_both, "both replicas serving both devices", lambda: cluster.stored())
                assert await reaches_bike(), "the gateway stopped routing to bike-1 after the outage"
    finally:
        if gateway is not None:
            await gateway.stop()
        await asyncio.to_thread(host.close)
