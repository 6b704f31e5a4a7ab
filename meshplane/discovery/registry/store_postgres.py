"""The registration store on PostgreSQL, shared by any number of control-plane replicas.

Owns the registry's tables and their migrations, durable writes with group commit, the change
notifications between replicas, and the sweep of lapsed leases. Must not decide anything about
registrations themselves (validation, authorisation, take-over: `registry.py`), and must not hold
the fleet's truth in memory: every replica's view is a cache of the database, kept in step by
`follow`.

Contracts:
- `write` returns only after COMMIT (acknowledged means durable, as `RegistrationStore` says).
  Concurrent callers' changes share one transaction (group commit), heartbeats included.
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
  hands rows over `_RESYNC_CHUNK` at a time with the event loop free between chunks, and parses
  only the rows that differ from what this store last handed over or wrote (`_held`) in more than
  their lease end: a row renewed elsewhere, which after 30 s of heartbeats is nearly every row, is
  handed over as its lease end alone (`StoreView.apply_lease_ends`). Parsing and replacing
  100,000 rows took 1.8-2.2 s of a replica's loop in every re-read, and the heartbeats this
  replica answered waited behind it. After a re-read the heap is frozen (`heap.settle`): the
  fleet just read leaves the garbage collector's full passes. Renewals notify nobody: no replica
  decides expiry from its own copy.
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
import random
import time
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
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]

_COLUMNS = "lease_id, principal, ttl, expires_at, registered_at, device"
# A row of `_COLUMNS` but its lease end, as stored: what `_held` remembers and compares unparsed.
_Content = tuple[str, str, float, float, str]
_PUT = f"""
INSERT INTO registrations (device_id, lease_id, principal, ttl, expires_at, registered_at, device)
VALUES (%s, %s, %s, %s, {_NOW} + %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET lease_id = excluded.lease_id, principal = excluded.principal,
    ttl = excluded.ttl, expires_at = excluded.expires_at, registered_at = excluded.registered_at,
    device = excluded.device
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
        self._pool = self._new_pool()
        self._opened = False
        self._pending: collections.deque[_Job] = collections.deque()
        self._committer: asyncio.Task[None] | None = None
        # Every device id the registry may hold from this store (read, or written and committed),
        # with the row's content but its lease end as last handed over or written, or None when
        # that is not known. The keys may be a superset (a full re-read tells the registry those
        # not stored are gone, and it skips ids it does not hold); a missing id would keep a
        # removed device live. A content here that the registry does not hold under that lease
        # is reported back by `apply_lease_ends` and handed over in full.
        self._held: dict[str, _Content | None] = {}
        self._jitter = random.Random()  # seeded from the system: replicas draw apart
        self.commits = 0  # transactions committed, for the benchmark
        self.swept = 0  # leases this replica deleted as lapsed

    def _new_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        return AsyncConnectionPool(
            self.settings.conninfo,
            kwargs=self._keywords,
            min_size=1,
            max_size=min(max(self.settings.pool_size, MIN_POOL), MAX_POOL),
            open=False,
            timeout=self.settings.connect_timeout,
            check=AsyncConnectionPool.check_connection,  # after a server restart, drop dead connections
            name="meshplane-registry",
        )

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
            if device_ids is None:
                cursor = await connection.execute(
                    f"SELECT {_COLUMNS} FROM registrations ORDER BY device_id", prepare=False
                )
            else:
                cursor = await connection.execute(
                    f"SELECT {_COLUMNS} FROM registrations WHERE device_id = ANY(%s) ORDER BY device_id",
                    (list(device_ids),),
                )
            rows = await cursor.fetchall()
        return self._parsed(rows)

    def _parsed(self, rows: Sequence[Any]) -> list[Registration]:
        """Rows of `_COLUMNS` parsed, and remembered as handed over (the caller hands them over)."""
        try:
            registrations = [_registration(row) for row in rows]
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(f"registry store {self.where}: unreadable registration: {error!r}") from None
        for registration, row in zip(registrations, rows, strict=True):
            self._held[registration.device.id] = (row[0], row[1], row[2], row[4], row[5])
        return registrations

    async def _resync(self, view: StoreView) -> None:
        """Hands `view` every stored row, `_RESYNC_CHUNK` rows at a time with the event loop free
        between, then tells it which devices it may hold are stored no more. A row equal to what
        was last handed over or written but for its lease end goes over as that lease end alone;
        the rest, and those the view says it does not hold so, are parsed and handed over whole.
        What commits meanwhile is notified and applied after this returns, so a row handed over
        stale (or a device called gone that was stored again) is made right by its notification."""
        known_before = set(self._held)
        seen: set[str] = set()
        held = self._held
        async with self._pool.connection() as connection:
            cursor = connection.cursor()
            # Client-side: the result arrives whole, and each fetchmany converts only its rows.
            await cursor.execute(f"SELECT device_id, {_COLUMNS} FROM registrations ORDER BY device_id", prepare=False)
            while rows := await cursor.fetchmany(_RESYNC_CHUNK):
                whole: list[Any] = []
                ends: list[tuple[str, str, float]] = []
                for row in rows:
                    seen.add(row[0])
                    if held.get(row[0]) == (row[1], row[2], row[3], row[5], row[6]):
                        ends.append((row[0], row[1], row[4]))
                    else:
                        whole.append(row)
                if ends and (missing := set(view.apply_lease_ends(ends))):
                    whole.extend(row for row in rows if row[0] in missing)
                if whole:
                    view.apply_stored(self._parsed([row[1:] for row in whole]))
                await asyncio.sleep(0)  # let calls waiting on this replica's loop run
        gone = sorted(known_before - seen)
        for device_id in gone:
            del held[device_id]
        view.apply_stored([], gone=gone)
        heap.settle()  # the re-read fleet is long-lived: keep it out of the collector's full passes

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
        put: list[tuple[str, str, str, float, float, float, str]] = []
        deleted: list[str] = []
        async with self._pool.connection() as connection, connection.transaction():
            for runs in _runs([(index, change) for index, job in enumerate(jobs) for change in job.changes]):
                kind = type(runs[0][1])
                if kind is Put:
                    rows = [_put_row(change.registration) for _, change in runs if isinstance(change, Put)]
                    async with connection.cursor() as cursor:
                        await cursor.executemany(_PUT, rows)
                    put += rows
                elif kind is Renew:
                    ids = [change.device_id for _, change in runs if isinstance(change, Renew)]
                    cursor = await connection.execute(_RENEW, (ids,))
                    found = {str(row[0]) for row in await cursor.fetchall()}
                    for index, change in runs:
                        if isinstance(change, Renew) and change.device_id not in found:
                            lost[index].add(change.device_id)
                else:
                    ids = [change.device_id for _, change in runs if isinstance(change, Delete)]
                    await connection.execute(_DELETE, (ids,))
                    deleted += ids
            await _notify(connection, "c", [*(row[0] for row in put), *deleted])
        self.commits += 1
        # Held once committed, not before: a re-read that began before this commit did not see
        # these rows, and must not call them gone. The registry applies what it wrote as soon as
        # its write returns. The rows' documents are the ones just stored, serialised once.
        held = self._held
        for device_id, lease_id, principal, ttl, _, registered_at, document in put:
            held[device_id] = (lease_id, principal, ttl, registered_at, document)
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
            await self._resync(view)
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
                    await self._resync(view)
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
