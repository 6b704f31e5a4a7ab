"""The PostgreSQL store's full re-read (`follow`, every `resync_interval`): what no notification
told a replica reaches it anyway, in chunks of rows (`_RESYNC_CHUNK`), and it drops exactly the
devices stored no more, never one its registry registered meanwhile. A row renewed elsewhere
(its lease end alone changed, its revision not) is handed over as that lease end: nothing
parsed, nothing rebuilt, counted; a row whose revision changed, even by a replica of before
revisions, is handed over whole. A real server (tests/postgres.py); notifications are switched off to stand for the ones
a replica missed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
import pytest

from meshplane.discovery.registry import store as registry_store
from meshplane.discovery.registry import store_postgres
from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings, RegisterInput
from meshplane.discovery.registry.store import Delete, Put, Registration, Renew, StoreView
from meshplane.discovery.registry.store_postgres import PostgresSettings, PostgresStore
from meshplane.model import Device, DeviceEndpoint, GatewayAddress, Site
from meshplane.model.changes import DeviceChanges
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
async def following(url: str, on_change: Callable[[], None] = lambda: None) -> AsyncIterator[EdgeRegistry]:
    """A registry on its own store, re-reading the database every 0.2 s."""
    store = PostgresStore(PostgresSettings(url, pool_size=4, resync_interval=0.2, sweep_interval=0.05))
    registry = EdgeRegistry(store, lambda: SITES, leases=LEASES, on_change=on_change)
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


async def stored_lease_ends(url: str) -> dict[str, float]:
    async with await psycopg.AsyncConnection.connect(url) as connection:
        cursor = await connection.execute("SELECT device_id, expires_at FROM registrations")
        return {str(device_id): float(expires_at) for device_id, expires_at in await cursor.fetchall()}


async def test_a_resync_hands_over_renewals_made_elsewhere_as_lease_ends_alone(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = PostgresStore(PostgresSettings(postgres_url, pool_size=4))
    await writer.load()
    changes = 0

    def changed() -> None:
        nonlocal changes
        changes += 1

    parsed = 0
    parse = registry_store._registration

    def counted(row: Any) -> Registration:
        nonlocal parsed
        parsed += 1
        return parse(row)

    try:
        ids = [registration(index).device.id for index in range(UNNOTIFIED)]
        await writer.write([Put(registration(index)) for index in range(UNNOTIFIED)])
        async with following(postgres_url, on_change=changed) as registry:
            assert len(registry) == UNNOTIFIED
            registry.take_changes()
            changes = 0
            monkeypatch.setattr(store_postgres, "_registration", counted)

            # Every lease renewed at another replica: renewals notify nobody, the re-read brings them.
            await writer.write([Renew(device_id, 0.0) for device_id in ids])
            ends = await stored_lease_ends(postgres_url)

            def stale() -> list[str]:
                held = {device_id: registry.get(device_id) for device_id in ids}
                return [i for i, row in held.items() if row is None or row.expires_at != ends[i]]

            await eventually(lambda: not stale(), lambda: stale()[:10])
            assert parsed == 0, "a renewed row was parsed whole"
            assert changes == 0, "a renewal elsewhere called for a rebuild"
            assert registry.take_changes() == DeviceChanges(ids=frozenset())
    finally:
        await writer.close()


class RecordingView:
    """A `StoreView` that records what it is handed; `holds`: whether it holds what it was handed."""

    def __init__(self, holds: bool) -> None:
        self.holds = holds
        self.whole: list[Registration] = []
        self.ends: list[tuple[str, str, float]] = []

    def apply_stored(
        self, rows: Sequence[Registration], gone: Sequence[str] = (), *, expired: bool = False, everything: bool = False
    ) -> None:
        self.whole.extend(rows)

    def apply_lease_ends(self, ends: Sequence[tuple[str, str, float]]) -> list[str]:
        self.ends.extend(ends)
        return [] if self.holds else [device_id for device_id, _, _ in ends]

    def store_unreachable(self, reason: str) -> bool:
        return False

    def store_reachable(self) -> bool:
        return False

    def count(self, event: str, n: int) -> None:
        pass


@pytest.mark.parametrize("holds", [True, False], ids=["view-holds-what-was-handed", "view-lost-it"])
async def test_a_resync_hands_over_whole_a_changed_row_and_one_the_view_does_not_hold(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, holds: bool
) -> None:
    reader = PostgresStore(PostgresSettings(postgres_url, pool_size=4))
    writer = PostgresStore(PostgresSettings(postgres_url, pool_size=4))
    await reader.load()
    await writer.load()
    try:
        monkeypatch.setattr(store_postgres, "_notify", silent)
        count = store_postgres._RESYNC_CHUNK + 10
        await writer.write([Put(registration(index)) for index in range(count)])
        await reader._resync(RecordingView(holds=True))  # the reader has handed over every row

        # One device changed elsewhere (same lease), every lease renewed.
        moved = registration(3)
        moved_device = Device(moved.device.id, "bike", "gym", moved.device.endpoints, "2", moved.device.labels)
        await writer.write([Put(Registration(moved_device, moved.lease_id, moved.principal, 600.0, 0.0, 1_000.0))])
        await writer.write([Renew(registration(index).device.id, 0.0) for index in range(count)])
        ends = await stored_lease_ends(postgres_url)

        view = RecordingView(holds=holds)
        seen: StoreView = view  # it is one (mypy checks the protocol)
        await reader._resync(seen)
        whole = {row.device.id: row for row in view.whole}
        if holds:
            assert sorted(whole) == [moved.device.id]
            assert whole[moved.device.id].device.version == "2"
            assert len(view.ends) == count - 1
        else:  # every lease end it was given comes back whole
            assert len(whole) == count
        assert {device_id: end for device_id, _, end in view.ends} == {i: ends[i] for i, _, _ in view.ends}
        assert {row.device.id: row.expires_at for row in view.whole} == {i: ends[i] for i in whole}
    finally:
        await reader.close()
        await writer.close()


def test_replicas_draw_their_re_reads_apart_within_the_interval() -> None:
    """Replicas started together must not re-read together for ever, and no re-read may come later
    than `resync_interval` (a missed notification's bound)."""
    stores = [
        PostgresStore(PostgresSettings("postgresql://nobody@127.0.0.1:1/none", resync_interval=20.0)) for _ in range(3)
    ]
    delays = [store._resync_delay() for store in stores for _ in range(50)]
    assert all(15.0 <= delay <= 20.0 for delay in delays), [d for d in delays if not 15.0 <= d <= 20.0]
    firsts = {round(store._resync_delay(), 6) for store in stores}
    assert len(firsts) == 3, "three replicas drew the same delay"


# The upsert of a meshplane of schema 1, which names no revision: one may still be writing through
# a rolling upgrade after another replica migrated the database.
SCHEMA_1_PUT = """
INSERT INTO registrations (device_id, lease_id, principal, ttl, expires_at, registered_at, device)
VALUES (%s, %s, %s, %s, extract(epoch from clock_timestamp())::float8 + %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET lease_id = excluded.lease_id, principal = excluded.principal,
    ttl = excluded.ttl, expires_at = excluded.expires_at, registered_at = excluded.registered_at,
    device = excluded.device
"""


async def test_rows_of_schema_1_get_revisions_and_a_change_by_an_older_writer_is_still_handed_over_whole(
    postgres_url: str,
) -> None:
    """Migration 2 gives the rows already stored a revision each; afterwards PostgreSQL changes a
    row's revision when anything but its lease end changes, whoever writes it, so a re-read hands
    over whole a row an older replica changed, and as a lease end alone one it renewed."""
    old = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    async with old:
        await old.execute(
            "CREATE TABLE schema_migrations"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        [(first, statements)] = [migration for migration in store_postgres._MIGRATIONS if migration[0] == 1]
        await old.execute(statements.encode())
        await old.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (first,))
        for index in range(3):
            await old.execute(SCHEMA_1_PUT, store_postgres._put_row(registration(index)))

        reader = PostgresStore(PostgresSettings(postgres_url, pool_size=4))
        try:
            loaded = await reader.load()  # migrates to the newest schema
            assert [row.device.id for row in loaded] == ["bike-00000", "bike-00001", "bike-00002"]
            cursor = await old.execute("SELECT device_id, revision FROM registrations ORDER BY device_id")
            revisions = dict(await cursor.fetchall())
            assert len(set(revisions.values())) == 3, revisions

            changed = registration(1)
            moved = Device(changed.device.id, "bike", "gym", changed.device.endpoints, "2", changed.device.labels)
            await old.execute(
                SCHEMA_1_PUT,
                store_postgres._put_row(Registration(moved, changed.lease_id, changed.principal, 600.0, 0.0, 1_000.0)),
            )
            await old.execute("UPDATE registrations SET expires_at = expires_at + 60 WHERE device_id = 'bike-00002'")
            cursor = await old.execute("SELECT device_id, revision FROM registrations ORDER BY device_id")
            after = dict(await cursor.fetchall())
            assert after["bike-00000"] == revisions["bike-00000"]
            assert after["bike-00001"] != revisions["bike-00001"], "a content change kept its revision"
            assert after["bike-00002"] == revisions["bike-00002"], "a renewal changed the revision"

            view = RecordingView(holds=True)
            await reader._resync(view)
            assert [(row.device.id, row.device.version) for row in view.whole] == [("bike-00001", "2")]
            assert sorted(device_id for device_id, _, _ in view.ends) == ["bike-00000", "bike-00002"]
            ends = await stored_lease_ends(postgres_url)
            assert {device_id: end for device_id, _, end in view.ends} == {
                i: ends[i] for i in ("bike-00000", "bike-00002")
            }
        finally:
            await reader.close()


class OrderedView(RecordingView):
    """A `RecordingView` that also keeps the order of what it was handed: ("ends", count) per
    chunk of lease ends, ("whole", ids) per rows handed over whole."""

    def __init__(self) -> None:
        super().__init__(holds=True)
        self.order: list[tuple[str, object]] = []

    def apply_stored(
        self, rows: Sequence[Registration], gone: Sequence[str] = (), *, expired: bool = False, everything: bool = False
    ) -> None:
        super().apply_stored(rows, gone)
        if rows:
            self.order.append(("whole", [row.device.id for row in rows]))

    def apply_lease_ends(self, ends: Sequence[tuple[str, str, float]]) -> list[str]:
        self.order.append(("ends", len(ends)))
        return super().apply_lease_ends(ends)


async def test_a_re_read_applies_the_notifications_waiting_between_its_chunks(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration at another replica while this one re-reads reaches it during the re-read
    (the notifications waiting are applied between chunks), not only after the whole fleet."""
    reader = PostgresStore(PostgresSettings(postgres_url, pool_size=4))
    writer = PostgresStore(PostgresSettings(postgres_url, pool_size=4))
    await reader.load()
    await writer.load()
    listener = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    try:
        monkeypatch.setattr(store_postgres, "_notify", silent)  # this test sends the one it needs
        await writer.write([Put(registration(index)) for index in range(2 * store_postgres._RESYNC_CHUNK + 10)])
        await reader._resync(RecordingView(holds=True))
        late = registration(99_999)  # sorts after every other row: the re-read's last chunk
        await writer.write([Put(late)])
        await listener.execute(f"LISTEN {store_postgres._CHANNEL}")
        # Sent on the listener's own session, its notification is in hand when this returns.
        [payload] = store_postgres._payloads("c", [late.device.id])
        await listener.execute("SELECT pg_notify(%s, %s)", (store_postgres._CHANNEL, payload))

        view = OrderedView()
        await reader._resync(view, listener)
        first_whole = next(index for index, (kind, _) in enumerate(view.order) if kind == "whole")
        assert view.order[first_whole] == ("whole", [late.device.id])
        assert [kind for kind, _ in view.order[:first_whole]] == ["ends"], view.order
    finally:
        await listener.close()
        await reader.close()
        await writer.close()
