"""The registration store on PostgreSQL, shared by any number of control-plane replicas.

Owns the registry's tables and their migrations, durable writes with group commit, the change
notifications between replicas, and the sweep of lapsed leases. Must not decide anything about
registrations themselves (validation, authorisation, take-over: `registry.py`), and must not hold
the fleet's truth in memory: every replica's view is a cache of the database, kept in step by
`follow`.

Contracts:
- `write` returns only after COMMIT (acknowledged means durable, as `RegistrationStore` says).
  Concurrent callers' changes share one transaction (group commit), heartbeats included; while
  commits follow each other (load), the next waits `_COMMIT_WINDOW` for more to share it. A batch
  of renewals alone is one statement in autocommit: one round trip, no BEGIN and COMMIT.
- Lease ends are decided by the database's clock: a `Put` or `Renew` sets `expires_at` to
  `clock_timestamp() + ttl` in SQL (the replica's `expires_at` is ignored), and one replica at a
  time (the holder of a session-level advisory lock, `_SWEEPER_LOCK`) deletes lapsed rows. When
  it dies its connection drops, PostgreSQL releases the lock and another replica takes it at its
  next sweep interval.
- Every committed `Put` and `Delete` NOTIFYs `_CHANNEL` with the device ids (never documents: a
  payload is limited to 8000 bytes, so ids are sent in chunks under `_PAYLOAD_LIMIT`). `follow`
  LISTENs, reads the rows named and hands them to the registry (`StoreView`), and re-reads
  everything every `resync_interval` at most (less a random quarter, so replicas started together
  draw apart), so a notification missed while disconnected costs at most that long. A re-read
  reads each row's id, revision, lease id and lease end only, `_RESYNC_CHUNK` rows at a time with
  the event loop free between chunks. Every row carries a revision that PostgreSQL changes
  whenever anything but the lease end changes (migration 2's trigger); a row whose revision is
  the one this store last handed over or wrote (`_held`), which after 30 s of heartbeats elsewhere
  is nearly every row, goes to the registry as its lease end alone (`StoreView.apply_lease_ends`);
  only the others are read whole and parsed. Parsing and replacing 100,000 rows took 1.8-2.2 s of
  a replica's loop in every re-read, and the heartbeats this replica answered waited behind it;
  transferring every row's document to compare it took the database and the replica 40 MB a
  re-read. A re-read is paced to a third of the loop at most (`_RESYNC_PACE`), and applies the
  notifications waiting between its chunks, so registrations elsewhere are not held up by it.
  A replica is ready only once its first re-read after the load is done (`StoreView.store_reachable`).
  After a re-read the heap is frozen (`heap.settle`): the fleet just read leaves the
  garbage collector's full passes. Renewals notify nobody: no replica decides expiry from its
  own copy.
- A renewal of a lease whose row is gone (swept, or removed at another replica) raises
  `LeaseLost` for that caller only.
- Migrations are versioned here (`_MIGRATIONS`, recorded in `schema_migrations`) and applied at
  start in one transaction holding `pg_advisory_xact_lock`, so replicas starting together apply
  each exactly once; a database migrated by a newer meshplane is refused with the reason.

The driver is psycopg 3 (with psycopg-pool) rather than asyncpg: it is libpq underneath, so the
URL takes every libpq option an operator knows (`sslmode`, `sslrootcert`, `PGPASSWORD`, service
files) with libpq's meaning, it has first-class LISTEN/NOTIFY (`AsyncConnection.notifies`) and
a maintained asyncio pool that checks connections after a server restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from meshplane.discovery.registry import heap
from meshplane.discovery.registry.store import (
    Change,
    Delete,
    LeaseLost,
    Put,
    Registration,
    Renew,
    StoreError,
    StoreView,
    _json,
    _registration,
)

log = logging.getLogger(__name__)

# The NOTIFY channel: a contract between every replica of one database.
_CHANNEL = "meshplane_registry"
# Advisory lock keys (any 64-bit numbers, fixed forever: replicas of every version must agree).
_MIGRATION_LOCK = 0x6D657368_00000001
_SWEEPER_LOCK = 0x6D657368_00000002
# Under PostgreSQL's 8000-byte NOTIFY payload limit, with room for the kind line.
_PAYLOAD_LIMIT = 7000
# The most changes one transaction takes (more wait for the next), and the most leases one sweep deletes.
_BATCH = 2048
# Rows compared (and the changed ones parsed) between two yields to the event loop in a full
# re-read: a few milliseconds of work on a loaded 2-core machine, so a heartbeat waiting on this
# loop waits that long, not a whole chunk of parsing (2,000 rows held it for 60-170 ms).
_RESYNC_CHUNK = 500
# After each chunk of a re-read, the loop is left to other work this many times as long as the chunk
# took (at most `_RESYNC_MAX_PAUSE` s): a re-read takes at most a third of the loop. Yielding only
# once between chunks left a replica whose loop was 70 % busy with renewals too little of it: they
# queued for the re-read's second or so, and 500-1,100 waited over 50 ms each time.
_RESYNC_PACE = 2.0
_RESYNC_MAX_PAUSE = 0.05
# After a commit, changes arriving within this many seconds wait to share the next one (group
# commit under load); an idle store commits a change at once.
_COMMIT_WINDOW = 0.003
# A pooled connection handed back this recently is handed out again unchecked (`_checked`): it
# answered a moment ago (the bypass window of pools such as HikariCP).
_CHECK_AFTER_IDLE = 1.0
# Pause between attempts to reach the database again after it was lost.
_RETRY_DELAY = 1.0
# Bounds of `--registry-store-pool`.
MIN_POOL = 2
MAX_POOL = 64

_NOW = "extract(epoch from clock_timestamp())::float8"

# (version, statements); append only, never edit one that has shipped.
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE registrations (
            device_id text PRIMARY KEY,
            lease_id text NOT NULL,
            principal text NOT NULL,
            ttl double precision NOT NULL,
            expires_at double precision NOT NULL,
            registered_at double precision NOT NULL,
            device text NOT NULL
        );
        CREATE INDEX registrations_expires_at ON registrations (expires_at);
        """,
    ),
    (
        # A row's revision changes whenever anything but its lease end does, so a full re-read
        # compares one integer a row (and transfers no documents) to find what changed. A trigger
        # rather than the upsert sets it: a replica of before this migration, still running through
        # a rolling upgrade, writes rows the others must still see change.
        2,
        """
        CREATE SEQUENCE registrations_revision;
        ALTER TABLE registrations ADD COLUMN revision bigint NOT NULL DEFAULT nextval('registrations_revision');
        CREATE FUNCTION registrations_next_revision() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.revision := nextval('registrations_revision');
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER registrations_revision BEFORE UPDATE ON registrations FOR EACH ROW
            WHEN ((OLD.lease_id, OLD.principal, OLD.ttl, OLD.registered_at, OLD.device)
                IS DISTINCT FROM (NEW.lease_id, NEW.principal, NEW.ttl, NEW.registered_at, NEW.device))
            EXECUTE FUNCTION registrations_next_revision();
        """,
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]

# `_registration` reads the first six; the revision is what `_held` remembers.
_COLUMNS = "lease_id, principal, ttl, expires_at, registered_at, device, revision"
_PUT = f"""
INSERT INTO registrations (device_id, lease_id, principal, ttl, expires_at, registered_at, device)
VALUES (%s, %s, %s, %s, {_NOW} + %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET lease_id = excluded.lease_id, principal = excluded.principal,
    ttl = excluded.ttl, expires_at = excluded.expires_at, registered_at = excluded.registered_at,
    device = excluded.device
RETURNING device_id, revision
"""
_RENEW = f"UPDATE registrations SET expires_at = {_NOW} + ttl WHERE device_id = ANY(%s) RETURNING device_id"
_DELETE = "DELETE FROM registrations WHERE device_id = ANY(%s)"
_SWEEP = f"""
WITH lapsed AS (
    SELECT device_id FROM registrations WHERE expires_at <= {_NOW}
    ORDER BY device_id LIMIT {_BATCH} FOR UPDATE SKIP LOCKED
)
DELETE FROM registrations r USING lapsed WHERE r.device_id = lapsed.device_id RETURNING r.device_id
"""


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """`conninfo`: a libpq URL or key=value string without a password; `password`: from
    `--registry-store-password-file` (None: libpq's own, `PGPASSWORD` or a password file).
    `pool_size`: the most connections writes and reads hold (the LISTEN connection is one more)."""

    conninfo: str
    password: str | None = None
    pool_size: int = 4
    resync_interval: float = 30.0
    sweep_interval: float = 1.0
    connect_timeout: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)


def redacted(conninfo: str) -> str:
    """`conninfo` as a log or error may show it: host, port and database only."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(an unparsable connection string)"
    return f"postgresql://{parts.get('host', '')}:{parts.get('port', '')}/{parts.get('dbname', '')}"


def check_conninfo(conninfo: str) -> str | None:
    """Why `conninfo` cannot be used, or None: unparsable, or carrying a password (which would sit
    in the process list, shell history and manifests: it goes in a file or `PGPASSWORD`)."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as error:
        return f"not a PostgreSQL connection URL: {error}"
    if parts.get("password"):
        return (
            "holds a password: give it in --registry-store-password-file or the PGPASSWORD environment"
            " variable instead (a command line is visible to every process on the machine)"
        )
    return None


@dataclass(slots=True)
class _Job:
    changes: Sequence[Change]
    future: asyncio.Future[None]


class PostgresStore:
    """A `RegistrationStore` and `SharedStore` on one PostgreSQL database (see the module docstring).
    Use from one event loop."""

    def __init__(self, settings: PostgresSettings) -> None:
        problem = check_conninfo(settings.conninfo)
        if problem is not None:
            raise StoreError(f"registry store {redacted(settings.conninfo)}: {problem}")
        self.settings = settings
        self.where = redacted(settings.conninfo)
        keywords: dict[str, Any] = {"connect_timeout": max(1, round(settings.connect_timeout)), **settings.extra}
        if settings.password is not None:
            keywords["password"] = settings.password
        # Dead peers are noticed within seconds, not at the kernel's default two hours.
        keywords.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        self._keywords = keywords
        # When each pooled connection was last handed back (`_checked`).
        self._returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()
        self._pool = self._new_pool()
        self._opened = False
        self._pending: collections.deque[_Job] = collections.deque()
        self._committer: asyncio.Task[None] | None = None
        self._committed_at = -math.inf  # when the last commit ended (`_commit_pending`)
        # Every device id the registry may hold from this store (read, or written and committed),
        # with the row's revision as last handed over or written, or None when that is not known.
        # The keys may be a superset (a full re-read tells the registry those not stored are
        # gone, and it skips ids it does not hold); a missing id would keep a removed device live.
        # A row the registry does not hold under the lease of that revision is reported back by
        # `apply_lease_ends` and handed over in full.
        self._held: dict[str, int | None] = {}
        # While a full re-read runs: the ids its notifications applied meanwhile (`_resync`).
        self._touched: set[str] | None = None
        self._jitter = random.Random()  # seeded from the system: replicas draw apart
        self.commits = 0  # transactions committed, for the benchmark
        self.swept = 0  # leases this replica deleted as lapsed

    def _new_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        # Autocommit: a statement outside `connection.transaction()` is a transaction of its own,
        # so a batch of renewals alone costs one round trip (`_commit`).
        return AsyncConnectionPool(
            self.settings.conninfo,
            kwargs={**self._keywords, "autocommit": True},
            min_size=1,
            max_size=min(max(self.settings.pool_size, MIN_POOL), MAX_POOL),
            open=False,
            timeout=self.settings.connect_timeout,
            check=self._checked,
            reset=self._returned,
            name="meshplane-registry",
        )

    async def _checked(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Before a pooled connection is handed out: checks it answers (after a server restart,
        dead connections are dropped here, not by a failed write), unless it was handed back less
        than `_CHECK_AFTER_IDLE` ago. Checking every time cost a round trip per group commit."""
        returned = self._returned_at.get(connection)
        if returned is None or time.monotonic() - returned >= _CHECK_AFTER_IDLE:
            await AsyncConnectionPool.check_connection(connection)

    async def _returned(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._returned_at[connection] = time.monotonic()

    async def _renew_pool(self) -> None:
        """Replaces the pool by a new one, connected now. A pool that lost its server retries with
        exponential backoff (seconds, then minutes): once the follower reaches the database again,
        writes must not wait for that. Writes holding a connection of the old pool finish with it."""
        old, self._pool = self._pool, self._new_pool()
        await self._pool.open()
        await old.close(timeout=0)

    async def _open(self) -> None:
        if self._opened:
            return
        try:
            # One connection first, for libpq's own reason when it fails (a pool says only "timeout").
            probe = await psycopg.AsyncConnection.connect(self.settings.conninfo, **self._keywords)
            await probe.close()
        except psycopg.Error as error:
            raise StoreError(f"registry store {self.where}: cannot connect: {_reason(error)}") from None
        await self._pool.open()
        self._opened = True
        try:
            await self.migrate()
        except psycopg.Error as error:
            raise StoreError(f"registry store {self.where}: cannot migrate its schema: {_reason(error)}") from None

    async def migrate(self) -> list[int]:
        """Applies the migrations the database lacks (see the module docstring); the versions applied.
        Raises StoreError when the database was migrated by a newer meshplane."""
        async with self._pool.connection() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cursor = await connection.execute("SELECT version FROM schema_migrations")
            done = {int(row[0]) for row in await cursor.fetchall()}
            if done and max(done) > SCHEMA_VERSION:
                raise StoreError(
                    f"registry store {self.where}: its schema is version {max(done)}, newer than this"
                    f" meshplane's {SCHEMA_VERSION}: run a meshplane at least as new"
                )
            applied = []
            for version, statements in _MIGRATIONS:
                if version in done:
                    continue
                await connection.execute(statements.encode())
                await connection.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied.append(version)
        if applied:
            log.info("registry store %s: applied schema migrations %s", self.where, applied)
        return applied

    async def load(self) -> list[Registration]:
        """Every stored registration; raises StoreError when the database cannot be reached or read."""
        await self._open()
        try:
            return await self._read(None)
        except psycopg.Error as error:
            raise StoreError(f"registry store {self.where}: cannot read: {_reason(error)}") from None

    async def _read(self, device_ids: Sequence[str] | None) -> list[Registration]:
        """The rows of `device_ids` (every row when None), sorted by device id."""
        async with self._pool.connection() as connection:
            return await self._read_on(connection, device_ids)

    async def _read_on(
        self, connection: psycopg.AsyncConnection[Any], device_ids: Sequence[str] | None
    ) -> list[Registration]:
        if device_ids is None:
            cursor = await connection.execute(f"SELECT {_COLUMNS} FROM registrations ORDER BY device_id", prepare=False)
        else:
            cursor = await connection.execute(
                f"SELECT {_COLUMNS} FROM registrations WHERE device_id = ANY(%s) ORDER BY device_id",
                (list(device_ids),),
            )
        return self._parsed(await cursor.fetchall())

    def _parsed(self, rows: Sequence[Any]) -> list[Registration]:
        """Rows of `_COLUMNS` parsed, and remembered as handed over (the caller hands them over)."""
        try:
            registrations = [_registration(row) for row in rows]
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(f"registry store {self.where}: unreadable registration: {error!r}") from None
        for registration, row in zip(registrations, rows, strict=True):
            self._held[registration.device.id] = row[6]
        return registrations

    async def _resync(self, view: StoreView, listener: psycopg.AsyncConnection[Any] | None = None) -> None:
        """Hands `view` every stored row, `_RESYNC_CHUNK` rows at a time, then tells it which
        devices it may hold are stored no more. Reads each row's id, revision, lease id and lease
        end only: a row of the revision last handed over or written goes over as its lease end
        alone; the rest, and those the view says it does not hold under that lease, are read again
        whole (as they are now), parsed and handed over.

        Paced: after each chunk the loop is left to other work for `_RESYNC_PACE` times as long as
        the chunk took, so a re-read takes at most a third of the replica's loop, and the
        heartbeats it answers meanwhile do not queue behind it. Between chunks, the notifications
        already on `listener` are applied, so a registration elsewhere is not held up by a re-read;
        a device they touched is never called gone by this re-read (its snapshot may predate it).
        What commits after the snapshot and is not yet applied is notified and applied after this
        returns, so a row handed over stale is made right by its notification."""
        known_before = set(self._held)
        seen: set[str] = set()
        held = self._held
        touched = self._touched = set()
        try:
            await self._resync_rows(view, listener, seen)
        finally:
            self._touched = None
        gone = sorted(known_before - seen - touched)
        for device_id in gone:
            del held[device_id]
        view.apply_stored([], gone=gone)
        heap.settle()  # the re-read fleet is long-lived: keep it out of the collector's full passes

    async def _resync_rows(
        self, view: StoreView, listener: psycopg.AsyncConnection[Any] | None, seen: set[str]
    ) -> None:
        held = self._held
        async with self._pool.connection() as connection:
            cursor = connection.cursor()
            # Client-side: the result arrives whole, and each fetchmany converts only its rows.
            await cursor.execute(
                "SELECT device_id, revision, lease_id, expires_at FROM registrations ORDER BY device_id", prepare=False
            )
            while True:
                started = time.perf_counter()
                rows = await cursor.fetchmany(_RESYNC_CHUNK)
                if not rows:
                    break
                whole: list[str] = []
                ends: list[tuple[str, str, float]] = []
                for device_id, revision, lease_id, expires_at in rows:
                    seen.add(device_id)
                    if held.get(device_id) == revision:
                        ends.append((device_id, lease_id, expires_at))
                    else:
                        whole.append(device_id)
                if ends:
                    whole += view.apply_lease_ends(ends)
                if whole:
                    # On the re-read's own connection: its result is already here, the connection idle.
                    view.apply_stored(await self._read_on(connection, whole))
                if listener is not None:
                    async for notice in listener.notifies(timeout=0):
                        await self._apply_notice(view, notice.payload)
                spent = time.perf_counter() - started
                await asyncio.sleep(min(spent * _RESYNC_PACE, _RESYNC_MAX_PAUSE))

    async def write(self, changes: Sequence[Change]) -> None:
        """Applies `changes` in one transaction shared with every concurrent caller's; returns after
        COMMIT. Raises LeaseLost when a `Renew` found no row, psycopg or pool errors when the
        database could not be reached or refused (nothing of `changes` is then acknowledged)."""
        if not changes:
            return
        await self._open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(changes, future))
        if self._committer is None or self._committer.done():
            # One committer at a time, held here and awaited by `close`: it ends once nothing waits.
            self._committer = asyncio.create_task(self._commit_pending(), name="registry-store-commit")
        await future

    async def _commit_pending(self) -> None:
        while self._pending:
            if time.monotonic() - self._committed_at < _COMMIT_WINDOW:
                # Busy (a commit ended just now): let more changes gather for this one. Each commit
                # costs the replica and the database a round trip and a WAL flush whatever its
                # size; at 1,000 renewals a second a replica committed every 3 ms, 3 at a time.
                await asyncio.sleep(_COMMIT_WINDOW)
            jobs: list[_Job] = []
            size = 0
            while self._pending and size < _BATCH:
                job = self._pending.popleft()
                jobs.append(job)
                size += len(job.changes)
            try:
                lost = await self._commit(jobs)
            except Exception as error:  # every job of the batch fails alike: nothing was committed
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            finally:
                self._committed_at = time.monotonic()
            for job, missing in zip(jobs, lost, strict=True):
                if job.future.done():
                    continue
                if missing:
                    job.future.set_exception(LeaseLost(sorted(missing)))
                else:
                    job.future.set_result(None)

    async def _commit(self, jobs: Sequence[_Job]) -> list[set[str]]:
        """Applies the jobs in order in one transaction; per job, the renewed ids that had no row."""
        lost: list[set[str]] = [set() for _ in jobs]
        put: dict[str, int] = {}  # device id: the revision its last Put stored
        deleted: list[str] = []
        runs = _runs([(index, change) for index, job in enumerate(jobs) for change in job.changes])
        async with self._pool.connection() as connection:
            if len(runs) == 1 and isinstance(runs[0][0][1], Renew):
                # Renewals alone (nearly every batch: heartbeats) are one statement, atomic and
                # durable by itself in autocommit, with nothing to notify: one round trip, not
                # BEGIN, UPDATE and COMMIT.
                await _apply(connection, runs[0], lost, put, deleted)
            else:
                async with connection.transaction():
                    for run in runs:
                        await _apply(connection, run, lost, put, deleted)
                    await _notify(connection, "c", [*put, *deleted])
        self.commits += 1
        # Held once committed, not before: a re-read that began before this commit did not see
        # these rows, and must not call them gone. The registry applies what it wrote as soon as
        # its write returns.
        held = self._held
        held.update(put)
        for device_id in deleted:
            if device_id in held:
                held[device_id] = None
        return lost

    async def close(self) -> None:
        """Waits for the writes given, then closes every connection."""
        if self._committer is not None:
            with contextlib.suppress(Exception):
                await self._committer
            self._committer = None
        await self._pool.close()
        self._opened = False

    # --- sharing between replicas ---

    async def follow(self, view: StoreView) -> None:
        """Keeps `view` in step with the database until cancelled (see the module docstring), sweeping
        lapsed leases while this replica holds the sweeper lock. While the database cannot be
        reached, `view` is told why (`store_unreachable`), and told again when it is back."""
        lost = False
        while True:
            try:
                await self._follow_connected(view, lost)
            except (psycopg.Error, PoolTimeout, OSError, StoreError) as error:
                lost = True
                reason = f"the registry database {self.where} is unreachable: {_reason(error)}"
                if view.store_unreachable(reason):
                    log.warning("edge registry: %s", reason)
            await asyncio.sleep(_RETRY_DELAY)  # the pace of reconnecting, not a wait for anything

    async def _follow_connected(self, view: StoreView, lost: bool) -> None:
        """One connection's worth of `follow`; `lost`: the database was unreachable before it."""
        listener = await psycopg.AsyncConnection.connect(self.settings.conninfo, autocommit=True, **self._keywords)
        async with listener:
            if lost:
                await self._renew_pool()
            await listener.execute(f"LISTEN {_CHANNEL}")
            # After LISTEN: whatever commits from now on is notified, whatever committed before is read here.
            await self._resync(view, listener)
            if view.store_reachable():
                log.info("edge registry: the registry database %s is reachable", self.where)
            sweeper = False
            resync_at = time.monotonic() + self._resync_delay()
            while True:
                if not sweeper:
                    cursor = await listener.execute("SELECT pg_try_advisory_lock(%s)", (_SWEEPER_LOCK,))
                    row = await cursor.fetchone()
                    sweeper = bool(row and row[0])
                    if sweeper:
                        log.info("edge registry: this replica sweeps lapsed leases (it holds the sweeper lock)")
                if sweeper:
                    await self._sweep(view)
                view.store_reachable()  # it answered just now: the registry's sync age stays within one interval
                if time.monotonic() >= resync_at:
                    await self._resync(view, listener)
                    resync_at = time.monotonic() + self._resync_delay()
                async for notice in listener.notifies(timeout=self.settings.sweep_interval):
                    await self._apply_notice(view, notice.payload)

    def _resync_delay(self) -> float:
        """Seconds until the next full re-read: `resync_interval` less a random quarter at most.
        Replicas started together would otherwise re-read together for ever, and three full
        re-reads at once (and PostgreSQL serving them) saturated a 2-core machine for 2-3 s, every
        renewal answered in that spell waiting up to 1 s."""
        return self.settings.resync_interval * self._jitter.uniform(0.75, 1.0)

    async def _apply_notice(self, view: StoreView, payload: str) -> None:
        kind, _, text = payload.partition("\n")
        ids = [device_id for device_id in text.split("\n") if device_id]
        if kind not in ("c", "e") or not ids:
            log.warning("edge registry: ignored a malformed notification on %s", _CHANNEL)
            return
        if self._touched is not None:
            self._touched.update(ids)
        rows = await self._read(ids)
        found = {row.device.id for row in rows}
        gone = [i for i in ids if i not in found]
        for device_id in gone:
            if device_id in self._held:
                self._held[device_id] = None
        view.apply_stored(rows, gone=gone, expired=kind == "e")

    async def _sweep(self, view: StoreView) -> None:
        """Deletes lapsed leases by the database's clock, in batches, notifying every replica."""
        while True:
            async with self._pool.connection() as connection, connection.transaction():
                cursor = await connection.execute(_SWEEP)
                lapsed = sorted(str(row[0]) for row in await cursor.fetchall())
                await _notify(connection, "e", lapsed)
            if not lapsed:
                return
            self.swept += len(lapsed)
            view.count("leases_swept", len(lapsed))
            log.info("edge registry: %d leases lapsed (by the database's clock)", len(lapsed))
            if len(lapsed) < _BATCH:
                return


async def _apply(
    connection: psycopg.AsyncConnection[Any],
    run: Sequence[tuple[int, Change]],
    lost: list[set[str]],
    put: dict[str, int],
    deleted: list[str],
) -> None:
    """Runs one run of changes of one kind (`_runs`) as one statement, noting per job index the
    renewals that found no row (`lost`), the revision each Put stored (`put`) and the ids deleted."""
    kind = type(run[0][1])
    if kind is Put:
        rows = [_put_row(change.registration) for _, change in run if isinstance(change, Put)]
        async with connection.cursor() as cursor:
            await cursor.executemany(_PUT, rows, returning=True)
            while True:  # one result a row, in order
                for device_id, revision in await cursor.fetchall():
                    put[device_id] = revision
                if not cursor.nextset():
                    break
    elif kind is Renew:
        ids = [change.device_id for _, change in run if isinstance(change, Renew)]
        cursor = await connection.execute(_RENEW, (ids,))
        found = {str(row[0]) for row in await cursor.fetchall()}
        for index, change in run:
            if isinstance(change, Renew) and change.device_id not in found:
                lost[index].add(change.device_id)
    else:
        ids = [change.device_id for _, change in run if isinstance(change, Delete)]
        await connection.execute(_DELETE, (ids,))
        deleted += ids


def _runs(changes: Sequence[tuple[int, Change]]) -> list[list[tuple[int, Change]]]:
    """`changes` cut into runs of one kind, in order (each run is one statement)."""
    runs: list[list[tuple[int, Change]]] = []
    for item in changes:
        if runs and type(runs[-1][0][1]) is type(item[1]):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _put_row(row: Registration) -> tuple[str, str, str, float, float, float, str]:
    return (row.device.id, row.lease_id, row.principal, row.ttl, row.ttl, row.registered_at, _json(row))


async def _notify(connection: psycopg.AsyncConnection[Any], kind: str, device_ids: Iterable[str]) -> None:
    """NOTIFYs `device_ids` (deduplicated) in payloads under `_PAYLOAD_LIMIT`, delivered at COMMIT."""
    for payload in _payloads(kind, device_ids):
        await connection.execute("SELECT pg_notify(%s, %s)", (_CHANNEL, payload))


def _payloads(kind: str, device_ids: Iterable[str]) -> list[str]:
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    for device_id in sorted(set(device_ids)):
        if chunk and size + len(device_id.encode()) + 1 > _PAYLOAD_LIMIT:
            payloads.append(kind + "\n" + "\n".join(chunk))
            chunk, size = [], 0
        chunk.append(device_id)
        size += len(device_id.encode()) + 1
    if chunk:
        payloads.append(kind + "\n" + "\n".join(chunk))
    return payloads


def _reason(error: BaseException) -> str:
    """An error's first line, bounded (a driver's message may run on with context)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]
