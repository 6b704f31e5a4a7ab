"""`meshplane registry migrate --from sqlite:PATH --to postgresql://…` on a real PostgreSQL: copies
every registration, a re-run changes nothing, and a target holding other registrations is refused
unless `--merge`. Run as the real command (`python -m meshplane`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from meshplane.discovery.registry.store import CertificateRecord, Put, Registration, SqliteStore
from meshplane.discovery.registry.store_postgres import PostgresSettings, PostgresStore
from meshplane.model import Device, DeviceEndpoint
from tests.envoy_harness import REPO
from tests.meshplane_env import without_meshplane_variables
from tests.postgres import PASSWORD, PostgresServer, postgres_server

__all__ = ["postgres_server"]  # a fixture


def registration(index: int) -> Registration:
    device = Device(f"bike-{index:04d}", "bike", "gym", (DeviceEndpoint(f"10.20.0.{index % 250 + 1}", 8080),), "1", ())
    certificate = CertificateRecord(f"{index:x}", 2_000_000.0, f"spiffe://x/site/gym/device/{device.id}")
    return Registration(device, f"lease-{index}", "class:bike", 30.0, 0.0, 1_000.0 + index, certificate)


def sqlite_registry(path: Path, count: int) -> None:
    async def write() -> None:
        store = SqliteStore(path)
        await store.write([Put(registration(i)) for i in range(count)])
        await store.close()

    asyncio.run(write())


def migrate(*args: str, password_file: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "meshplane", "registry", "migrate", *args, "--password-file", str(password_file)]
    environment = {key: value for key, value in without_meshplane_variables().items() if key != "PGPASSWORD"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment, timeout=120, check=False)


def stored(url: str) -> dict[str, Registration]:
    async def read() -> dict[str, Registration]:
        store = PostgresStore(PostgresSettings(url, password=PASSWORD))
        rows = await store.load()
        await store.close()
        return {row.device.id: row for row in rows}

    return asyncio.run(read())


def test_migrate_copies_every_registration_and_a_rerun_changes_nothing(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    sqlite_registry(tmp_path / "registry.db", 2500)
    url = postgres_server.url(postgres_server.create_database())

    first = migrate("--from", f"sqlite:{tmp_path / 'registry.db'}", "--to", url, password_file=tmp_path / "password")
    assert first.returncode == 0, first.stderr
    assert "copied 2500 registrations" in first.stdout
    rows = stored(url)
    assert len(rows) == 2500
    for index in (0, 1234, 2499):
        copied, original = rows[f"bike-{index:04d}"], registration(index)
        assert (copied.device, copied.lease_id, copied.principal, copied.ttl, copied.registered_at) == (
            original.device,
            original.lease_id,
            original.principal,
            original.ttl,
            original.registered_at,
        )
        assert copied.certificate == original.certificate

    again = migrate("--from", f"sqlite:{tmp_path / 'registry.db'}", "--to", url, password_file=tmp_path / "password")
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert len(stored(url)) == 2500


def test_a_target_holding_other_registrations_is_refused_unless_merge(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    sqlite_registry(tmp_path / "one.db", 10)
    url = postgres_server.url(postgres_server.create_database())
    assert (
        migrate("--from", f"sqlite:{tmp_path / 'one.db'}", "--to", url, password_file=tmp_path / "password").returncode
        == 0
    )

    async def more() -> None:
        store = SqliteStore(tmp_path / "two.db")
        await store.write([Put(registration(i)) for i in range(5, 20)])
        await store.close()

    asyncio.run(more())
    refused = migrate("--from", f"sqlite:{tmp_path / 'two.db'}", "--to", url, password_file=tmp_path / "password")
    assert refused.returncode == 1
    assert "already holds 10 registrations: give --merge" in refused.stderr
    assert len(stored(url)) == 10

    merged = migrate(
        "--from", f"sqlite:{tmp_path / 'two.db'}", "--to", url, "--merge", password_file=tmp_path / "password"
    )
    assert merged.returncode == 0, merged.stderr
    assert sorted(stored(url)) == [f"bike-{i:04d}" for i in range(20)]


def test_bad_sources_and_urls_are_refused_with_the_reason(postgres_server: PostgresServer, tmp_path: Path) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    url = postgres_server.url(postgres_server.create_database())
    missing = migrate("--from", f"sqlite:{tmp_path / 'none.db'}", "--to", url, password_file=tmp_path / "password")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    not_sqlite = migrate("--from", str(tmp_path / "none.db"), "--to", url, password_file=tmp_path / "password")
    assert "expected sqlite:PATH" in not_sqlite.stderr
    with_password = migrate(
        "--from",
        f"sqlite:{tmp_path / 'none.db'}",
        "--to",
        url.replace("meshplane@", "meshplane:secret@"),
        password_file=tmp_path / "password",
    )
    assert with_password.returncode == 2
    assert "the URL holds a password" in with_password.stderr
