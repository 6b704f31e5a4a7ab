"""A registry store file that cannot be trusted is refused at start, and left byte-identical.

`meshplane serve --registry-db FILE` on random bytes, on a truncated real database, or on a file it
may not read must exit non-zero naming FILE, never start with an empty fleet (which would then
overwrite what the file still holds).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from meshplane.discovery.edge.store import Put, Registration, SqliteStore, StoreError
from meshplane.model import Device, DeviceEndpoint

POLICY = """
sites:
  - id: gym
    region: eu-central
    device_ranges: ["10.20.0.0/16"]
"""


def serve(workdir: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "meshplane.cli",
            "serve",
            "--config",
            str(workdir / "policy"),
            "--xds-address",
            "127.0.0.1:0",
            "--status-address",
            "127.0.0.1:0",
            "--registry-db",
            str(db),
            "--registry-address",
            "127.0.0.1:0",
            "--registry-http-address",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def real_database(path: Path, devices: int = 400) -> None:
    async def fill() -> None:
        store = SqliteStore(path)
        await store.load()
        changes = [
            Put(
                Registration(
                    Device(f"bike-{i:04d}", "bike", "gym", (DeviceEndpoint(f"10.20.{i // 250}.{i % 250 + 1}", 80),)),
                    f"lease-{i}",
                    "class:bike",
                    30.0,
                    2e9,
                    1e9,
                )
            )
            for i in range(devices)
        ]
        await store.write(changes)
        await store.close()

    asyncio.run(fill())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "sites.yaml").write_text(POLICY)
    return tmp_path


def random_bytes(db: Path) -> None:
    db.write_bytes(random.Random(8).randbytes(16384))


def truncated(db: Path) -> None:
    real_database(db)
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    data = db.read_bytes()
    assert len(data) > 8192
    db.write_bytes(data[: len(data) // 2])


def header_kept_pages_garbled(db: Path) -> None:
    """A valid header, the rest overwritten: what a disk or a stray `dd` leaves behind."""
    real_database(db)
    data = bytearray(db.read_bytes())
    noise = random.Random(9).randbytes(len(data) - 100)
    data[100:] = noise
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [random_bytes, truncated, header_kept_pages_garbled], ids=lambda f: f.__name__)
def test_serve_refuses_a_corrupt_store_and_leaves_it_untouched(workdir: Path, corrupt: object) -> None:
    db = workdir / "registry.db"
    corrupt(db)  # type: ignore[operator]
    before = digest(db)
    result = serve(workdir, db)
    assert result.returncode != 0, result.stderr[-2000:]
    assert "edge registry: gRPC on port" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert str(db) in last_line, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, "a damaged store is refused in one line, not with a traceback"
    assert digest(db) == before, "the corrupt store was changed"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_serve_refuses_an_unreadable_store_and_leaves_it_untouched(workdir: Path) -> None:
    db = workdir / "registry.db"
    real_database(db)
    before = digest(db)
    db.chmod(0)
    try:
        result = serve(workdir, db)
    finally:
        db.chmod(0o600)
    assert result.returncode != 0
    assert str(db) in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
    assert digest(db) == before


async def test_load_raises_store_error_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    random_bytes(db)
    with pytest.raises(StoreError, match=str(db)):
        await SqliteStore(db).load()


async def test_a_good_store_still_loads(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    await asyncio.to_thread(real_database, db, 20)
    rows = await SqliteStore(db).load()
    assert len(rows) == 20
    missing = tmp_path / "new.db"
    assert await SqliteStore(missing).load() == []  # a first start creates the file
