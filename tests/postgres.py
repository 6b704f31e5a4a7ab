"""A private PostgreSQL server for tests: `initdb` in a temporary directory, `postgres` on a free port.

`PostgresServer` runs one cluster; the session fixture `postgres_server` shares one per xdist
worker, and `postgres_url` gives each test its own database, created from a template (`CREATE
DATABASE … TEMPLATE`, a copy of an empty database: milliseconds). Tests that stop the server (an
outage) start their own `PostgresServer`.

Runs as the current user; as root (PostgreSQL refuses to run as root) the cluster belongs to the
`postgres` system user (or `nobody` when there is none) and every command runs through `runuser`.
Readiness is proven by connecting, never by waiting a while.

Tuning: `fsync` and `synchronous_commit` stay on (the store's promise is that an acknowledged
registration survives a crash, and that is what the kill -9 tests check); `full_page_writes` is
off and the checkpoint distance long (they guard against torn pages on power loss, which no test
causes), and `shared_buffers` is small, so a cluster starts in well under a second.

The superuser is `meshplane` with a password (TCP connections need it: scram-sha-256), so the
store's password handling is exercised for real; local socket connections are trusted.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.ports import free_port

USER = "meshplane"
PASSWORD = "test-only-password"
_TEMPLATE = "meshplane_template"
_BINARIES = Path("/usr/lib/postgresql/15/bin")


def _binary(name: str) -> str:
    found = shutil.which(name) or (str(_BINARIES / name) if (_BINARIES / name).exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make postgresql` (apt-get install postgresql)")
    return found


def _owner() -> pwd.struct_passwd | None:
    """The user the cluster runs as when this process is root, None when it is not root."""
    if os.getuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1:`port`, its files and socket under a temporary directory."""

    def __init__(self) -> None:
        self.owner = _owner()
        self.directory = Path(tempfile.mkdtemp(prefix="meshplane-pg-"))
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.socket_dir.mkdir()
        self.log = self.directory / "postgres.log"
        if self.owner is not None:
            for path in (self.directory, self.socket_dir):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self.port = free_port()
        self._databases = itertools.count(1)
        self._process: subprocess.Popen[bytes] | None = None
        password_file = self.directory / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.owner is not None:
            os.chown(password_file, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            _binary("initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--pwfile",
            str(password_file),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-sync",  # the cluster is thrown away; its commits are still fsynced (see the docstring)
        )
        password_file.unlink()

    def _command(self, *argv: str) -> list[str]:
        if self.owner is None:
            return list(argv)
        return ["runuser", "-u", self.owner.pw_name, "--", *argv]

    def _run(self, *argv: str) -> None:
        result = subprocess.run(self._command(*argv), capture_output=True, text=True, check=False, cwd=self.directory)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    @property
    def admin_conninfo(self) -> str:
        """Over the unix socket, as the superuser (trusted: no password)."""
        return f"host={self.socket_dir} port={self.port} user={USER} dbname=postgres"

    def url(self, database: str) -> str:
        """The store's URL of `database` over TCP (its password goes separately: `PGPASSWORD`)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Starts the server and returns once it accepts a connection (or fails showing its log)."""
        with open(self.log, "ab") as log:
            if self.owner is not None:
                os.chown(self.log, self.owner.pw_uid, self.owner.pw_gid)
            self._process = subprocess.Popen(
                self._command(
                    _binary("postgres"),
                    "-D",
                    str(self.data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={self.port}",
                    "-c",
                    f"unix_socket_directories={self.socket_dir}",
                    "-c",
                    "fsync=on",
                    "-c",
                    "synchronous_commit=on",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_wal_size=1GB",
                    "-c",
                    "shared_buffers=16MB",
                    "-c",
                    "max_connections=200",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + 60
        last = ""
        while True:
            try:
                with psycopg.connect(self.admin_conninfo, connect_timeout=5):
                    return
            except psycopg.OperationalError as error:
                last = str(error)
            if self._process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"postgres did not become ready ({last}):\n{self.log.read_text()[-4000:]}")
            time.sleep(0.05)  # a poll interval of the readiness check, not a wait for readiness

    def stop(self) -> None:
        """Stops the server (a fast shutdown: clients are disconnected), waiting for it to exit."""
        if self._process is None:
            return
        # SIGINT is PostgreSQL's fast shutdown. The postmaster's own pid (from postmaster.pid): under
        # runuser, the process started is runuser, which does not pass signals on.
        try:
            for stop, patience in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                    os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), stop)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=patience)
                    return
            pytest.fail(f"postgres did not stop:\n{self.log.read_text()[-4000:]}")
        finally:
            self._process = None

    def create_database(self) -> str:
        """A new empty database's name (copied from a template made once)."""
        name = f"test_{next(self._databases)}"
        with psycopg.connect(self.admin_conninfo, autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_TEMPLATE,)).fetchone()
            if exists is None:
                connection.execute(f"CREATE DATABASE {_TEMPLATE} TEMPLATE template0")
            connection.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
        return name

    def execute(self, database: str, sql: str) -> list[tuple[object, ...]]:
        """Runs `sql` in `database` as the superuser; its rows (none for a statement without)."""
        with psycopg.connect(self.admin_conninfo.replace("dbname=postgres", f"dbname={database}")) as connection:
            cursor = connection.execute(sql.encode())
            return list(cursor.fetchall()) if cursor.description is not None else []

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database's store URL; `PGPASSWORD` holds its password for this test."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    return postgres_server.url(postgres_server.create_database())
