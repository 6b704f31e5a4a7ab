"""The PostgreSQL store's full re-read (`follow`, every `resync_interval`): what no notification
told a replica reaches it anyway, in chunks of rows (`_RESYNC_CHUNK`), and it drops exactly the
devices stored no more, never one its registry registered meanwhile. A real server
(tests/postgres.py); notifications are switched off to stand for the ones a replica missed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from meshplane.discovery.registry import store_postgres
from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings, RegisterInput
from meshplane.discovery.registry.store import Delete, Put, Registration
from meshplane.discovery.registry.store_postgres import PostgresSettings, PostgresStore
from meshplane.model import Device, DeviceEndpoint, GatewayAddress, Site
from tests.postgres import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures

DEADLINE = 60.0
SITES = {"gym": Site("gym", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16",))}
LEASES = LeaseSettings(default_ttl=600, min_ttl=1, max_ttl=3600, check_interval=0.2)
UNNOTIFIED = store_postgres._RESYNC_CHUNK + 500  # more than one chunk


def registration(index: int) -> Registration:
    device_id = f"bike-{index:05d}"
    endpoint = DeviceEndpoint(f"10.20.{index // 250}.{index % 250 + 1}", 8080)
    device = Device(device_id, "bike", "gym", (endpoint,), "1", (("row", "a"),))
    return Registration(device, "lease-" + device_id, f"device:{device_id}", 600.0, 0.0, 1_000.0)


async def eventually(condition: Callable[[], bool], what: Callable[[], object]) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"still not so after {DEADLINE}s; last seen: {what()}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def following(url: str) -> AsyncIterator[EdgeRegistry]:
    """A registry on its own store, re-reading the database every 0.2 s."""
    store = PostgresStore(PostgresSettings(url, pool_size=4, resync_interval=0.2, sweep_interval=0.05))
    registry = EdgeRegistry(store, lambda: SITES, leases=LEASES)
    await registry.load()
    task = asyncio.create_task(registry.run())
    try:
        yield registry
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await registry.close()


async def silent(connection: psycopg.AsyncConnection[Any], kind: str, device_ids: Any) -> None:
    """`_notify` that notifies nobody: the notifications a disconnected replica missed."""


async def test_a_resync_brings_what_no_notification_told_and_drops_only_what_is_gone(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = PostgresStore(PostgresSettings(postgres_url, pool_size=4))
    await writer.load()
    try:
        async with following(postgres_url) as registry:
            monkeypatch.setattr(store_postgres, "_notify", silent)
            await writer.write([Put(registration(index)) for index in range(UNNOTIFIED)])
            await eventually(lambda: len(registry) == UNNOTIFIED, lambda: len(registry))

            # Registered at this replica (not notified either): stored, so no re-read may drop it.
            own = RegisterInput("bike-own", "bike", "gym", (("10.20.200.1", 8080),), "1", {}, 600)
            await registry.register(Principal(PrincipalKind.DEVICE, "bike-own"), own)
            removed = [registration(index).device.id for index in range(0, UNNOTIFIED, 7)]
            await writer.write([Delete(device_id) for device_id in removed])
            expected = {registration(index).device.id for index in range(UNNOTIFIED)} - set(removed) | {"bike-own"}

            def held() -> set[str]:
                return {device.id for device in registry.devices()}

            await eventually(lambda: held() == expected, lambda: sorted(held() ^ expected)[:10])
            # Several re-reads later it still holds exactly what is stored.
            commits = writer.commits
            await writer.write([Put(registration(UNNOTIFIED))])
            assert writer.commits == commits + 1
            expected.add(registration(UNNOTIFIED).device.id)
            await eventually(lambda: held() == expected, lambda: sorted(held() ^ expected)[:10])
    finally:
        await writer.close()
