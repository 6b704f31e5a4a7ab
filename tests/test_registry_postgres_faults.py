"""Real `meshplane serve` replicas on one real PostgreSQL, under the faults an HA registry must survive.

- A network partition between ONE replica and the database (a TCP relay in this test carries only
  that replica's connections; cutting it closes them and refuses new ones): that replica turns
  not-ready with the reason and refuses registrations UNAVAILABLE, the others keep accepting them,
  and once the relay is back it recovers without a restart and serves what was registered meanwhile.
- Two replicas started at the same moment on an empty database: both come up ready, the schema is
  migrated once, both serve; `meshplane devices list` / `get` against either shows the same devices.

The database stopping altogether (every replica unready, proxies still routed) is in
test_registry_postgres_replicas.py. Every wait is on a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshplane.discovery.registry.store_postgres import SCHEMA_VERSION
from tests.envoy_harness import REPO
from tests.meshplane_env import without_meshplane_variables
from tests.ports import free_port
from tests.postgres import USER, PostgresServer, postgres_server
from tests.test_registry_postgres_replicas import (
    OPERATOR_TOKEN,
    Replica,
    cluster_on,
    eventually,
    register,
    registration,
    replicas,
    write_workdir,
)

__all__ = ["postgres_server"]  # a fixture


class Relay:
    """A TCP relay from 127.0.0.1:`port` to the database, for one replica's connections only.
    `cut` is the partition: every connection through it is closed at once and, with nothing
    listening on `port`, every new one is refused until `mend`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.connections = 0  # accepted so far, to show the replica really went through here
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def mend(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()  # one side gone: the other goes too, as a broken path would do

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        self._writers.difference_update((client_writer, server_writer))


async def readiness(replica: Replica) -> tuple[int, str]:
    return await replica.served.get("/readyz")


async def test_a_replica_cut_off_from_the_database_is_unready_while_the_others_accept_registrations(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    write_workdir(tmp_path, "10.20.0.0/16")
    cluster = cluster_on(postgres_server, tmp_path)
    relay = Relay(postgres_server.port)
    await relay.mend()
    try:
        async with replicas(cluster, 2) as (a, b):
            c = await cluster.replica("c", url=f"postgresql://{USER}@127.0.0.1:{relay.port}/{cluster.database}")
            try:
                assert relay.connections > 0, "replica c did not reach the database through the relay"
                await register(c, registration(1))
                last: list[tuple[int, str]] = [(0, "")]

                async def is_ready(replica: Replica, expected: int) -> bool:
                    last[0] = await readiness(replica)
                    return last[0][0] == expected

                await eventually(lambda: is_ready(c, 200), "replica c ready", lambda: last)

                await relay.cut()
                await eventually(lambda: is_ready(c, 503), "replica c unready once cut off", lambda: last)
                body = last[0][1]
                assert "edge-registry" in body, body
                assert "unreachable" in body, body
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await register(c, registration(2))
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "registration store is unavailable" in (refused.value.details() or "")

                # The others still reach the database: they stay ready and accept registrations.
                await register(a, registration(3))
                await register(b, registration(4))
                assert {code for code, _ in [await readiness(a), await readiness(b)]} == {200}

                async def a_and_b_serve_them() -> bool:
                    wanted = {"bike-00001", "bike-00003", "bike-00004"}
                    return await a.list() == wanted and await b.list() == wanted

                await eventually(a_and_b_serve_them, "a and b serving each other's devices", lambda: cluster.stored())
                assert cluster.stored() == {"bike-00001", "bike-00003", "bike-00004"}
                assert (await readiness(c))[0] == 503, "replica c turned ready while still cut off"

                await relay.mend()
                await eventually(lambda: is_ready(c, 200), "replica c ready again, without a restart", lambda: last)
                seen: set[str] = set()

                async def c_serves_the_meanwhile() -> bool:
                    seen.clear()
                    seen.update(await c.list())
                    return seen == {"bike-00001", "bike-00003", "bike-00004"}

                await eventually(
                    c_serves_the_meanwhile, "replica c serving what was registered meanwhile", lambda: seen
                )
                await register(c, registration(2))

                async def a_sees_it() -> bool:
                    return "bike-00002" in await a.list()

                await eventually(a_sees_it, "replica a serving bike-00002 (registered at c)", lambda: cluster.stored())
                assert c.process.returncode is None
            finally:
                await c.stop()
    finally:
        with contextlib.suppress(AssertionError):
            await relay.cut()


async def devices_cli(replica: Replica, *action: str) -> Any:
    """`meshplane devices -o json ACTION` against `replica`'s JSON mirror: its parsed output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        "devices",
        "--registry",
        f"http://127.0.0.1:{replica.http_port}",
        "--token",
        OPERATOR_TOKEN,
        "-o",
        "json",
        *action,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=without_meshplane_variables(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_two_replicas_started_together_on_an_empty_database_migrate_once_and_both_serve(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    write_workdir(tmp_path, "10.20.0.0/16")
    cluster = cluster_on(postgres_server, tmp_path)
    assert postgres_server.execute(cluster.database, "SELECT to_regclass('schema_migrations')") == [(None,)]
    async with replicas(cluster, 2, together=True) as (a, b):
        answers: list[tuple[int, str]] = []

        async def both_ready() -> bool:
            answers[:] = [await readiness(a), await readiness(b)]
            return all(code == 200 for code, _ in answers)

        await eventually(both_ready, "both replicas ready", lambda: answers)
        versions = postgres_server.execute(cluster.database, "SELECT version FROM schema_migrations ORDER BY version")
        assert [int(str(row[0])) for row in versions] == list(range(1, SCHEMA_VERSION + 1))
        applied = [replica.name for replica in (a, b) if replica.logged("applied schema migrations")]
        assert len(applied) == 1, f"replicas that applied migrations: {applied}"

        await register(a, registration(1))
        await register(b, registration(2))
        both = {"bike-00001", "bike-00002"}

        async def both_serve_both() -> bool:
            return await a.list() == both and await b.list() == both

        await eventually(both_serve_both, "both replicas serving both devices", lambda: cluster.stored())

        listed: list[Any] = []

        async def both_list_the_same() -> bool:
            listed[:] = [await devices_cli(replica, "list") for replica in (a, b)]
            return bool(listed[0] == listed[1])

        # Lease ends included: each replica shows them as stored (by the database's clock) once it
        # has applied both registrations' notifications, its own among them.
        await eventually(both_list_the_same, "both replicas listing the same", lambda: listed)
        assert {device["device_id"] for device in listed[0]["devices"]} == both, listed[0]
        for device_id in sorted(both):
            got = [await devices_cli(replica, "get", device_id) for replica in (a, b)]
            assert got[0] == got[1], got
            assert json.dumps(got[0]).count(device_id) >= 1, got[0]
