"""The registration store contract on SQLite and PostgreSQL alike, then what only the shared
PostgreSQL store promises: migrations safe under concurrent starts, the database's clock deciding
lease ends, replicas' registries kept in step by notifications, one sweeper at a time, and the
password never on the command line. Every PostgreSQL test runs on a real server (tests/postgres.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from meshplane.discovery.registry import store_postgres
from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import EdgeRegistry, ErrorCode, LeaseSettings, RegisterInput, RegistryError
from meshplane.discovery.registry.store import (
    CertificateRecord,
    Change,
    Delete,
    LeaseLost,
    MemoryStore,
    Put,
    Registration,
    RegistrationStore,
    Renew,
    SqliteStore,
    StoreError,
)
from meshplane.discovery.registry.store_postgres import PostgresSettings, PostgresStore
from meshplane.model import Device, DeviceEndpoint, GatewayAddress, Site
from meshplane.registry_api import options
from tests.postgres import PASSWORD, PostgresServer, postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures

DEADLINE = 30.0
SITES = {"gym": Site("gym", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16",))}
LEASES = LeaseSettings(default_ttl=30, min_ttl=1, max_ttl=60, check_interval=0.2)


def registration(device_id: str, *, ttl: float = 30.0, expires_at: float = 0.0, version: str = "1") -> Registration:
    device = Device(device_id, "bike", "gym", (DeviceEndpoint("10.20.1.5", 8080),), version, (("row", "a"),))
    return Registration(device, "lease-" + device_id, f"device:{device_id}", ttl, expires_at, 1_000.0)


def bike(device_id: str, ttl: float = 30) -> RegisterInput:
    return RegisterInput(device_id, "bike", "gym", (("10.20.1.5", 8080),), "1", {}, ttl)


async def wait_until(condition: Callable[[], Awaitable[bool]], what: Callable[[], object]) -> None:
    """Polls `condition` until true; past DEADLINE fails showing `what()` as last seen."""
    end = time.monotonic() + DEADLINE
    while not await condition():
        assert time.monotonic() < end, f"still not so after {DEADLINE}s; last seen: {what()}"
        await asyncio.sleep(0.02)


StoreFactory = Callable[[], RegistrationStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes stores on one database: each call is another store (a restart, or another replica)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "registry.db")
    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(PostgresSettings(url, pool_size=4))


# --- the contract, on both stores ---


async def test_what_is_written_is_loaded_by_the_next_store(new_store: StoreFactory) -> None:
    store = new_store()
    await store.load()
    certificate = CertificateRecord("0af3", 2_000_000.0, "spiffe://meshplane.local/site/gym/device/bike-2")
    await store.write([Put(registration("bike-1")), Put(registration("bike-2")), Put(registration("bike-3"))])
    await store.write([Put(dataclasses_replace_certificate(registration("bike-2", version="2"), certificate))])
    await store.write([Renew("bike-1", 5_000.0), Delete("bike-3")])
    await store.close()

    restarted = new_store()
    rows = {row.device.id: row for row in await restarted.load()}
    await restarted.close()
    assert sorted(rows) == ["bike-1", "bike-2"]
    assert rows["bike-2"].device.version == "2"
    assert rows["bike-2"].certificate == certificate
    assert rows["bike-1"].device == registration("bike-1").device
    assert rows["bike-1"].lease_id == "lease-bike-1"
    assert rows["bike-1"].principal == "device:bike-1"


def dataclasses_replace_certificate(row: Registration, certificate: CertificateRecord) -> Registration:
    import dataclasses

    return dataclasses.replace(row, certificate=certificate)


async def test_concurrent_writers_share_transactions(new_store: StoreFactory) -> None:
    store = new_store()
    await store.load()
    await asyncio.gather(*(store.write([Put(registration(f"bike-{i}"))]) for i in range(200)))
    commits = store.commits  # type: ignore[attr-defined]
    await store.close()
    assert 1 <= commits < 200
    restarted = new_store()
    assert len(await restarted.load()) == 200
    await restarted.close()


async def test_a_registry_on_either_store_survives_a_restart(new_store: StoreFactory) -> None:
    registry = EdgeRegistry(new_store(), lambda: SITES, leases=LEASES)
    await registry.load()
    first = await registry.register(Principal(PrincipalKind.DEVICE, "bike-1"), bike("bike-1"))
    await registry.close()
    restarted = EdgeRegistry(new_store(), lambda: SITES, leases=LEASES)
    await restarted.load()
    assert [d.id for d in restarted.devices()] == ["bike-1"]
    renewed = await restarted.heartbeat(Principal(PrincipalKind.DEVICE, "bike-1"), "bike-1", first.lease_id)
    assert renewed.lease_id == first.lease_id
    await restarted.close()


# --- PostgreSQL only ---


def store_on(url: str, **settings: object) -> PostgresStore:
    return PostgresStore(PostgresSettings(url, **settings))  # type: ignore[arg-type]


async def test_two_stores_migrating_one_empty_database_at_once_both_succeed(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    stores = [store_on(postgres_url) for _ in range(3)]
    loaded = await asyncio.gather(*(store.load() for store in stores))
    assert loaded == [[], [], []]
    database = postgres_url.rsplit("/", 1)[1]
    assert postgres_server.execute(database, "SELECT version FROM schema_migrations ORDER BY version") == [
        (version,) for version in range(1, store_postgres.SCHEMA_VERSION + 1)
    ]
    assert await stores[0].migrate() == []  # idempotent
    for store in stores:
        await store.close()


async def test_a_database_migrated_by_a_newer_meshplane_is_refused_with_the_reason(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    store = store_on(postgres_url)
    await store.load()
    await store.close()
    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.execute(database, "INSERT INTO schema_migrations (version) VALUES (999)")
    newer = store_on(postgres_url)
    with pytest.raises(StoreError, match="schema is version 999, newer than this meshplane's"):
        await newer.load()
    await newer.close()


async def test_lease_ends_come_from_the_database_clock(postgres_url: str, postgres_server: PostgresServer) -> None:
    store = store_on(postgres_url)
    await store.load()
    # A replica whose clock says 1970: the database ignores its expires_at and uses its own clock.
    await store.write([Put(registration("bike-1", ttl=20.0, expires_at=1.0))])
    database = postgres_url.rsplit("/", 1)[1]
    [(left,)] = postgres_server.execute(
        database, "SELECT expires_at - extract(epoch from clock_timestamp()) FROM registrations"
    )
    assert 0 < float(left) <= 20.0  # type: ignore[arg-type]
    await store.close()


async def test_renewing_a_lease_the_database_no_longer_holds_raises_lease_lost(postgres_url: str) -> None:
    store = store_on(postgres_url)
    await store.load()
    await store.write([Put(registration("bike-1"))])
    renewals = [store.write([Renew("bike-1", 0)]), store.write([Renew("bike-gone", 0)])]
    results = await asyncio.gather(*renewals, return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], LeaseLost)
    assert results[1].device_ids == ("bike-gone",)
    await store.close()


def test_notification_payloads_stay_under_postgresqls_limit() -> None:
    ids = [f"{i:0128d}" for i in range(500)]
    payloads = store_postgres._payloads("c", ids)
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert sorted(i for p in payloads for i in p.split("\n")[1:]) == sorted(ids)
    assert {p.split("\n")[0] for p in payloads} == {"c"}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://meshplane:secret@db:5432/registry", "holds a password"),
        ("postgresql://meshplane@db:5432/registry?password=secret", "holds a password"),
        ("mysql://db/registry", "expected postgresql://"),
        ("postgresql://db:5432", "expected postgresql://"),
    ],
    ids=["password-in-userinfo", "password-in-query", "not-postgresql", "no-database"],
)
def test_store_urls_with_a_password_or_no_database_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=reason):
        options.store_url(url)


def test_a_password_given_in_a_conninfo_is_refused_by_the_store_too() -> None:
    with pytest.raises(StoreError, match="holds a password"):
        store_on("host=db dbname=registry password=secret")


def test_pool_bounds_are_the_stores() -> None:
    assert (options.MIN_STORE_POOL, options.MAX_STORE_POOL) == (store_postgres.MIN_POOL, store_postgres.MAX_POOL)
    with pytest.raises(argparse.ArgumentTypeError, match="from 2 to 64"):
        options.store_pool("65")


async def test_the_password_comes_from_the_settings_and_a_wrong_one_is_refused_with_the_reason(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    good = store_on(postgres_url, password=PASSWORD)
    assert await good.load() == []
    await good.close()
    wrong = store_on(postgres_url, password="not-it", connect_timeout=5.0)
    with pytest.raises(StoreError, match=r"cannot connect: .*password authentication failed"):
        await wrong.load()


# --- replicas ---


@contextlib.asynccontextmanager
async def replica(url: str, name: str) -> AsyncIterator[tuple[EdgeRegistry, asyncio.Task[None]]]:
    """A registry on `url`, loaded and following the database (its `run`), closed afterwards."""
    registry = EdgeRegistry(store_on(url, sweep_interval=LEASES.check_interval), lambda: SITES, leases=LEASES)
    await registry.load()
    task = asyncio.create_task(registry.run(), name=name)
    try:
        yield registry, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await registry.close()


async def test_a_replica_is_ready_only_once_its_follower_has_caught_up_after_the_load(postgres_url: str) -> None:
    """Between its load and its follower's first full re-read (after it began listening), a
    replica may miss what committed meanwhile: it is not ready, so no traffic is sent its way."""
    registry = EdgeRegistry(store_on(postgres_url, sweep_interval=LEASES.check_interval), lambda: SITES, leases=LEASES)
    await registry.load()
    try:
        assert not registry.status.synced
        assert registry.status.errors == ()  # not a fault: it is catching up
        task = asyncio.create_task(registry.run())
        await wait_until(lambda: _true(registry.status.synced), lambda: registry.status)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await registry.close()


async def test_a_registration_at_one_replica_is_seen_by_the_other(postgres_url: str) -> None:
    async with replica(postgres_url, "a") as (a, _), replica(postgres_url, "b") as (b, _):
        await a.register(Principal(PrincipalKind.DEVICE, "bike-1"), bike("bike-1"))
        await wait_until(lambda: _true(b.device("bike-1") is not None), lambda: b.devices())
        assert b.devices() == a.devices()
        assert b.take_changes().everything or "bike-1" in b.take_changes().ids
        # A heartbeat at the other replica renews the lease held at the first.
        lease = a.get("bike-1")
        assert lease is not None
        await b.heartbeat(Principal(PrincipalKind.DEVICE, "bike-1"), "bike-1", lease.lease_id)
        await b.deregister(Principal(PrincipalKind.DEVICE, "bike-1"), "bike-1", lease.lease_id)
        await wait_until(lambda: _true(a.device("bike-1") is None), lambda: a.devices())


async def test_a_lapsed_lease_is_swept_once_and_the_sweeper_role_moves_when_its_holder_stops(
    postgres_url: str,
) -> None:
    async with replica(postgres_url, "a") as (a, a_task), replica(postgres_url, "b") as (b, b_task):
        principal = Principal(PrincipalKind.DEVICE, "bike-1")
        await a.register(principal, bike("bike-1", ttl=1))
        await wait_until(lambda: _true(b.device("bike-1") is not None), lambda: b.devices())
        await wait_until(
            lambda: _true(a.device("bike-1") is None and b.device("bike-1") is None),
            lambda: (a.devices(), b.devices()),
        )
        swept = [a.events["leases_swept"], b.events["leases_swept"]]
        assert sorted(swept) == [0, 1], swept  # deleted once, by one replica
        assert a.events["lease_expiries"] == b.events["lease_expiries"] == 1  # and seen by both
        # A heartbeat on the lapsed lease is refused, never acknowledged.
        with pytest.raises(RegistryError) as refused:
            await b.heartbeat(principal, "bike-1", "lease-of-before")
        assert refused.value.code is ErrorCode.NOT_FOUND

        # The sweeper stops following (as a dead replica's connection drops): the other takes over.
        (stopped, survivor) = (a_task, b) if swept[0] else (b_task, a)
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        await survivor.register(Principal(PrincipalKind.DEVICE, "bike-2"), bike("bike-2", ttl=1))
        await wait_until(lambda: _true(survivor.device("bike-2") is None), lambda: survivor.devices())
        assert survivor.events["leases_swept"] == 1


async def _true(value: bool) -> bool:
    return value


async def test_an_unreachable_database_makes_the_registry_unready_and_refuses_registrations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.postgres import running_postgres

    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    with running_postgres() as server:
        url = server.url(server.create_database())
        async with replica(url, "a") as (registry, _):
            principal = Principal(PrincipalKind.DEVICE, "bike-1")
            await registry.register(principal, bike("bike-1"))
            # Ready once its follower has caught up with the database after the load.
            await wait_until(lambda: _true(registry.status.synced), lambda: registry.status)
            await asyncio.to_thread(server.stop)
            await wait_until(lambda: _true(not registry.status.synced), lambda: registry.status)
            assert "unreachable" in registry.status.errors[0]
            with pytest.raises(RegistryError) as refused:
                await registry.register(Principal(PrincipalKind.DEVICE, "bike-2"), bike("bike-2"))
            assert refused.value.code is ErrorCode.UNAVAILABLE
            assert "unavailable" in refused.value.reason
            await asyncio.to_thread(server.start)
            await wait_until(lambda: _true(registry.status.synced), lambda: registry.status)
            await registry.register(Principal(PrincipalKind.DEVICE, "bike-2"), bike("bike-2"))
            assert [d.id for d in registry.devices()] == ["bike-1", "bike-2"]


class NotifiedWhileWriting(MemoryStore):
    """A store that, as a shared store's notification can, hands the registry the row as stored
    (its lease end by the database's clock, here half a second later) before `write` returns."""

    def __init__(self) -> None:
        super().__init__()
        self.view: EdgeRegistry | None = None

    async def write(self, changes: Sequence[Change]) -> None:
        await super().write(changes)
        assert self.view is not None
        stored = [change.registration for change in changes if isinstance(change, Put)]
        self.view.apply_stored([row.renewed(row.expires_at + 0.5) for row in stored])


async def test_a_registration_keeps_the_stored_row_its_notification_brought_during_the_write() -> None:
    """Every replica shows a device's lease end by the database's clock: the registering one too,
    whichever of its write's return and its own notification comes first."""
    store = NotifiedWhileWriting()
    registry = EdgeRegistry(store, lambda: SITES, leases=LEASES)
    store.view = registry
    await registry.load()
    registered = await registry.register(Principal(PrincipalKind.DEVICE, "bike-1"), bike("bike-1"))
    held = registry.get("bike-1")
    assert held is not None
    assert held.expires_at == store.rows["bike-1"].expires_at + 0.5
    assert registered == held
    # The same again, content unchanged: the row the store handed over is kept, not the estimate.
    again = await registry.register(Principal(PrincipalKind.DEVICE, "bike-1"), bike("bike-1"))
    assert registry.get("bike-1") == again
    assert again.expires_at == store.rows["bike-1"].expires_at + 0.5
    await registry.close()
