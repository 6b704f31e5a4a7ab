"""Where registrations survive restarts: the store interface and its embedded SQLite default.

Contract of `RegistrationStore.write`: when it returns, every change given is durable (a crash,
kill -9 or power loss afterwards keeps it); when it raises, none is. The registry acknowledges a
registration to a device only after `write` returns, so an acknowledged registration is never
lost. A shared store (several control-plane replicas serving one fleet: `store_postgres.py`)
implements the same three methods, and `SharedStore.follow` to keep each replica's view in step.

`SqliteStore`: one file, WAL journal, `synchronous=FULL` (fsync on every commit). One writer
thread commits the changes of every waiting caller in one transaction (group commit), so the
fsync cost is shared by a burst of registrations instead of paid by each. One process at a time
may use a file: each process keeps its live devices in memory, so two sharing one file would
diverge silently (see `SqliteStore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from meshplane.model import Device, DeviceEndpoint


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """What is kept of the certificate last issued to a device (`identity.py`): its serial
    (lowercase hex), its not-after (seconds since the epoch) and its one SAN. The certificate itself
    goes only to the device. `not_before`: its not-before, None for a record stored before it was
    kept (status then shows no lifetime)."""

    serial: str
    not_after: float
    uri_san: str
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    """A device with its lease. `principal` is who registered it (`device:<id>`, `class:<class>`);
    times are seconds since the epoch (leases outlive the process, so no monotonic clock).
    `certificate`: the last certificate issued to the device, None when none was."""

    device: Device
    lease_id: str
    principal: str
    ttl: float
    expires_at: float
    registered_at: float
    certificate: CertificateRecord | None = None

    def renewed(self, expires_at: float) -> Registration:
        """This registration with its lease ending at `expires_at`. Built directly, not with
        `dataclasses.replace`, which is generic and six times slower: a full re-read of a shared
        store renews 100,000 registrations at once."""
        return Registration(
            self.device, self.lease_id, self.principal, self.ttl, expires_at, self.registered_at, self.certificate
        )


@dataclass(frozen=True, slots=True)
class Put:
    registration: Registration


@dataclass(frozen=True, slots=True)
class Renew:
    device_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Delete:
    device_id: str


Change = Put | Renew | Delete


class StoreError(Exception):
    """The store cannot be used as it is (unreadable, not a database, corrupt). The message names the
    file; the file is left exactly as it was, so an operator can inspect or restore it."""


class LeaseLost(StoreError):
    """A `Renew` found no stored registration (a shared store's sweep or another replica removed
    it): nothing was renewed. `device_ids`: those renewals."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        super().__init__(f"no stored lease for {', '.join(device_ids[:8])}")
        self.device_ids = tuple(device_ids)


class RegistrationStore(Protocol):
    async def load(self) -> list[Registration]:
        """Every stored registration, expired or not (the registry decides)."""
        ...

    async def write(self, changes: Sequence[Change]) -> None:
        """Applies `changes` atomically and durably before returning."""
        ...

    async def close(self) -> None: ...


class StoreView(Protocol):
    """What a shared store keeps in step with the database: one replica's registry."""

    def apply_stored(
        self, rows: Sequence[Registration], gone: Sequence[str] = (), *, expired: bool = False, everything: bool = False
    ) -> None:
        """`rows` are stored now; `gone` are not (lapsed when `expired`); with `everything`, `rows`
        are all there are, and every other live device is gone."""
        ...

    def apply_lease_ends(self, ends: Sequence[tuple[str, str, float]]) -> list[str]:
        """`ends`: (device id, lease id, lease end) of stored rows equal but for their lease end to
        what the store last handed over or wrote. Sets those lease ends, changing nothing else (no
        rebuild, no event); returns the ids not held under that lease id, which the store then
        hands over whole with `apply_stored`."""
        ...

    def store_unreachable(self, reason: str) -> bool:
        """The store cannot be reached, for `reason`; True when it could until now."""
        ...

    def store_reachable(self) -> bool:
        """The store answers again; True when it could not until now. The first call after the
        load also says the view has caught up (the store's first full read after it began
        following): the view is not in sync before it."""
        ...

    def count(self, event: str, n: int) -> None:
        """Counts `n` events of the store's (shown with the registry's)."""
        ...


@runtime_checkable
class SharedStore(Protocol):
    """A store several control-plane replicas share (`store_postgres.PostgresStore`). It decides
    lease expiry itself, by one clock for every replica; the registry then expires nothing on its
    own and runs `follow` instead."""

    async def follow(self, view: StoreView) -> None:
        """Keeps `view` in step with the store until cancelled."""
        ...


class MemoryStore:
    """A store that forgets on restart: for tests and for `--registry-db :memory:`."""

    def __init__(self) -> None:
        self.rows: dict[str, Registration] = {}

    async def load(self) -> list[Registration]:
        return list(self.rows.values())

    async def write(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if isinstance(change, Put):
                self.rows[change.registration.device.id] = change.registration
            elif isinstance(change, Renew):
                if (row := self.rows.get(change.device_id)) is not None:
                    self.rows[change.device_id] = row.renewed(change.expires_at)
            else:
                self.rows.pop(change.device_id, None)

    async def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (
    device_id TEXT PRIMARY KEY,
    lease_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    ttl REAL NOT NULL,
    expires_at REAL NOT NULL,
    registered_at REAL NOT NULL,
    device TEXT NOT NULL
)
"""
# The most changes one transaction takes; more wait for the next commit.
_BATCH = 2048


@dataclass(slots=True)
class _Job:
    changes: Sequence[Change]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class SqliteStore:
    """The default store (see the module docstring). Use from one event loop.

    Single writer: opening the store (its first `load`, or its first `write` without one) takes an
    exclusive advisory lock, held until `close`; while another store holds it, in this process or
    another, opening raises `StoreError` saying so, and a store that fails to open holds nothing.
    The lock is `flock` on a file beside the database, `<database>.lock` (see `_WriterLock`). The
    kernel drops it when the process ends however it ends (kill -9 included), so a restart after a
    crash is never refused. SQLite's own locks cannot do this: a connection holds none between
    transactions. (`--registry-db :memory:` is a `MemoryStore`, with nothing to share and no lock.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0  # transactions committed, for the benchmark and the status endpoint
        # The single-writer lock while held; taken by `load`'s thread or by the writer thread.
        self._lock: _WriterLock | None = None
        self._lock_guard = threading.Lock()

    def _take_lock(self) -> bool:
        """Holds the single-writer lock from now until `close`; True when this call took it, False
        when it was held already. Raises `StoreError` when another store holds it."""
        with self._lock_guard:
            if self._lock is not None:
                return False
            self._lock = _WriterLock.take(self.path)
            return True

    def _release_lock(self) -> None:
        with self._lock_guard:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced, WAL included; NORMAL could lose the last commits on power loss.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(_SCHEMA)
        return connection

    async def load(self) -> list[Registration]:
        """Every stored registration. Raises `StoreError` when the file is unreadable, not a database
        or corrupt: starting on it would serve an empty fleet and overwrite what it still holds; and
        when another store holds it (see the class docstring)."""

        def read() -> list[Registration]:
            if (problem := _access_problem(self.path)) is not None:
                raise StoreError(f"registry store {self.path}: {problem}; left untouched")
            took = self._take_lock()  # before SQLite opens the file: a second process stops here
            try:
                return read_rows()
            except BaseException:
                if took:  # a store that failed to open holds nothing
                    self._release_lock()
                raise

        def read_rows() -> list[Registration]:
            try:
                connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as error:
                raise StoreError(f"registry store {self.path}: cannot open: {error}") from error
            try:
                # Checked before anything writes (even `journal_mode=WAL` rewrites the header).
                problems = [str(row[0]) for row in connection.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise StoreError(f"registry store {self.path}: corrupt ({'; '.join(problems[:3])}); left untouched")
                connection.close()
                connection = self._connect()
                rows = connection.execute(
                    "SELECT lease_id, principal, ttl, expires_at, registered_at, device FROM registrations"
                ).fetchall()
                return [_registration(row) for row in rows]
            except sqlite3.Error as error:
                raise StoreError(f"registry store {self.path}: cannot read: {error}; left untouched") from error
            except (ValueError, KeyError, TypeError) as error:  # a row whose device JSON is not ours
                raise StoreError(f"registry store {self.path}: unreadable registration: {error!r}") from error
            finally:
                connection.close()

        return await asyncio.to_thread(read)

    async def write(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        if self._thread is None:
            # Started without awaiting anything in between, so concurrent first writers start one thread.
            self._thread = threading.Thread(target=self._run, name="registry-store", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._jobs.put(_Job(changes, future, loop))
        await future

    async def close(self) -> None:
        """Stops the writer thread once it has answered every write given, then releases the lock."""
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._release_lock()

    def _run(self) -> None:
        """The writer thread: take every waiting job, commit them in one transaction, answer each."""
        try:
            self._take_lock()
            connection = self._connect()
        except (StoreError, sqlite3.Error) as unopened:
            self._fail_all(unopened)
            return
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                jobs = [first]
                size = len(first.changes)
                stop = False
                while size < _BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    jobs.append(job)
                    size += len(job.changes)
                failed: BaseException | None = None
                try:
                    connection.execute("BEGIN IMMEDIATE")
                    for job in jobs:
                        _apply(connection, job.changes)
                    connection.execute("COMMIT")
                    self.commits += 1
                except sqlite3.Error as failure:
                    failed = failure
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                for job in jobs:
                    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                        job.loop.call_soon_threadsafe(_settle, job.future, failed)
                if stop:
                    return
        finally:
            connection.close()

    def _fail_all(self, error: BaseException) -> None:
        """The store cannot be opened: every waiting and later write fails with `error`."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_settle, job.future, error)


def _access_problem(path: Path) -> str | None:
    """Why this process cannot use `path` as its store, or None. SQLite says only "unable to open
    database file" or "attempt to write a readonly database", whatever the cause, and only once it
    has the file open. So the file is opened read-write here first (never created, never written),
    and its directory must let the process create the file, or its WAL's -wal and -shm files."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        exists = False
    except IsADirectoryError:
        return "cannot open: it is a directory"
    except OSError as error:  # EACCES (mode, owner), EROFS (a read-only mount), ELOOP, …
        return f"cannot open for reading and writing: {error.strerror or error}"
    else:
        os.close(descriptor)
        exists = True
    directory = path.parent
    if not directory.is_dir():
        return f"cannot create it: directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        needs = f"its {path.name}-wal and {path.name}-shm files" if exists else "it and its -wal and -shm files"
        return f"cannot create {needs}: directory {directory} is not writable (permission denied)"
    return None


# Attempts at locking a lock file that holders keep deleting as they let go (see `_WriterLock`).
_LOCK_ATTEMPTS = 100


@dataclass(frozen=True, slots=True)
class _WriterLock:
    """An exclusive `flock` on `path`, a database's lock file, held through `descriptor`.

    The file records its holder's pid (for the message refusing another process) and exists only
    while held, as SQLite's -wal and -shm files exist only while the database is open: the holder
    deletes it before letting go, and a kill -9 leaves it behind unlocked, to be taken over. A
    process may thus lock a file just deleted by its holder; holding a lock on a file that is no
    longer at `path` guards nothing, so `take` then tries again with the file at `path` now."""

    descriptor: int
    path: Path

    @classmethod
    def take(cls, database: Path) -> _WriterLock:
        """Locks `database`'s lock file and records this process's pid in it. Raises `StoreError`
        naming `database` when another descriptor holds the lock (with the pid the file records),
        or when the lock file cannot be opened or locked."""
        # Resolved as SQLite resolves the database's name for its -wal file: every name of one
        # database (a symbolic link to it included) locks the same file.
        path = Path(os.path.realpath(database) + ".lock")
        for _ in range(_LOCK_ATTEMPTS):
            try:
                # O_NOFOLLOW: the pid is written into the lock file, never into a file a link points at.
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise StoreError(
                    f"registry store {database}: cannot open its lock file {path}: {error.strerror or error}"
                ) from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _recorded_pid(descriptor)
                os.close(descriptor)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    who = "another meshplane process" + (f" (pid {holder})" if holder is not None else "")
                    raise StoreError(
                        f"registry store {database}: {who} is using it (it holds {path}); one process at a"
                        " time may use a store file: stop the other first"
                    ) from None
                raise StoreError(f"registry store {database}: cannot lock {path}: {error.strerror or error}") from None
            lock = cls(descriptor, path)
            if lock._at_path():
                with contextlib.suppress(OSError):  # the pid only helps a refused process's message
                    os.ftruncate(descriptor, 0)
                    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
                return lock
            os.close(descriptor)  # deleted by the holder we waited on, or replaced since: take the new one
        raise StoreError(f"registry store {database}: cannot lock {path}: it keeps being deleted and created")

    def release(self) -> None:
        """Deletes the lock file (unless it is no longer this one), then lets the lock go."""
        if self._at_path():
            with contextlib.suppress(OSError):  # left behind unlocked, it is taken over by the next holder
                os.unlink(self.path)
        os.close(self.descriptor)  # the only descriptor of its open file: closing it drops the flock

    def _at_path(self) -> bool:
        """Whether the file at `path` is the locked file."""
        try:
            current = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(self.descriptor)
        return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


def _recorded_pid(descriptor: int) -> int | None:
    """The pid a lock file records, or None when it holds none (its holder may be writing it)."""
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _apply(connection: sqlite3.Connection, changes: Sequence[Change]) -> None:
    for change in changes:
        if isinstance(change, Put):
            row = change.registration
            connection.execute(
                "INSERT OR REPLACE INTO registrations VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.device.id, row.lease_id, row.principal, row.ttl, row.expires_at, row.registered_at, _json(row)),
            )
        elif isinstance(change, Renew):
            connection.execute(
                "UPDATE registrations SET expires_at = ? WHERE device_id = ?", (change.expires_at, change.device_id)
            )
        else:
            connection.execute("DELETE FROM registrations WHERE device_id = ?", (change.device_id,))


def _json(row: Registration) -> str:
    """The `device` column: the device, and the certificate last issued to it when there is one.

    The certificate rides in this JSON rather than in a column of its own: a new column would need
    a migration, and a meshplane of before it would then fail on every insert (it names seven
    values); an older reader simply ignores the key."""
    device = row.device
    value: dict[str, object] = {
        "id": device.id,
        "class": device.device_class,
        "site": device.site,
        "endpoints": [[e.address, e.port] for e in device.endpoints],
        "version": device.version,
        "labels": [list(pair) for pair in device.labels],
    }
    if row.certificate is not None:
        certificate = row.certificate
        value["certificate"] = [certificate.serial, certificate.not_after, certificate.uri_san]
        if certificate.not_before is not None:  # a key of its own: older readers unpack three values
            value["certificate_not_before"] = certificate.not_before
    return json.dumps(value, separators=(",", ":"))


def _registration(row: tuple[str, str, float, float, float, str]) -> Registration:
    """A row of `SELECT lease_id, principal, ttl, expires_at, registered_at, device`."""
    data = json.loads(row[5])
    return Registration(_device(data), row[0], row[1], row[2], row[3], row[4], _certificate(data))


def _device(data: dict[str, Any]) -> Device:
    return Device(
        id=data["id"],
        device_class=data["class"],
        site=data["site"],
        endpoints=tuple(DeviceEndpoint(address, port) for address, port in data["endpoints"]),
        version=data["version"],
        labels=tuple((key, value) for key, value in data["labels"]),
    )


def _certificate(data: dict[str, Any]) -> CertificateRecord | None:
    stored = data.get("certificate")
    if stored is None:
        return None
    serial, not_after, uri_san = stored
    not_before = data.get("certificate_not_before")
    return CertificateRecord(
        str(serial), float(not_after), str(uri_san), float(not_before) if not_before is not None else None
    )
