"""A registry store file that cannot be trusted is refused at start, and left byte-identical.

`meshplane serve --registry-db FILE` on random bytes, on a truncated real database, on a file it
may not read, or in a directory where it may not create SQLite's -wal and -shm files must exit
non-zero with one line naming FILE and the reason, never start with an empty fleet (which would
then overwrite what the file still holds). The permission cases run `serve` bound by file modes as an
unprivileged user would be (as root, as on CI, without the capabilities that let root ignore file modes).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from meshplane.discovery.registry.store import Put, Registration, SqliteStore, StoreError
from meshplane.model import Device, DeviceEndpoint
from tests.preconditions import require, requires

POLICY = """
sites:
  - id: gym
    region: eu-central
    device_ranges: ["10.20.0.0/16"]
"""


def serve(
    workdir: Path, db: Path, *, env: dict[str, str] | None = None, prefix: Sequence[str] = (), **options: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
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
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        **options,
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


# Root opens any file whatever its mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so as root (as on
# CI) the permission tests run `serve` as root without those capabilities: file modes then bind it
# like any owner. (Switching to another uid instead would need the interpreter reachable by that
# user; a pyenv under a mode-700 /root is not.) Not root, modes bind the test's own user already.
WITHOUT_FILE_OVERRIDES = (
    [shutil.which("setpriv") or "setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    if os.geteuid() == 0
    else []
)


def _file_modes_do_not_bind() -> str | None:
    """Why `serve` run with WITHOUT_FILE_OVERRIDES could still read a mode-000 file, or None."""
    what = "running meshplane bound by file modes (as root: setpriv without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)"
    with tempfile.TemporaryDirectory() as directory:
        closed = Path(directory) / "closed"
        closed.write_text("x")
        closed.chmod(0)
        probe = (
            "import pathlib, sys, meshplane.cli, sqlite3\n"
            "try:\n    pathlib.Path(sys.argv[1]).read_text()\nexcept PermissionError:\n    sys.exit(0)\nsys.exit(3)"
        )
        try:
            check = subprocess.run(
                [*WITHOUT_FILE_OVERRIDES, sys.executable, "-c", probe, str(closed)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except OSError as error:
            return f"{what}: {error}"
    if check.returncode == 3:
        return f"{what}: a mode-000 file was still readable"
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{what}: exited {check.returncode} ({last})"
    return None


MODES_DO_NOT_BIND = _file_modes_do_not_bind()


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory holding the policy files, given back writable for pytest to remove."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "sites.yaml").write_text(POLICY)
    try:
        yield tmp_path
    finally:
        tmp_path.chmod(0o755)


def deny_writes(directory: Path) -> None:
    """Makes `directory` unwritable to its owner (us), whom modes bind in `serve_bound_by_modes`."""
    directory.chmod(0o555)


def serve_bound_by_modes(workdir: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return serve(workdir, db, prefix=WITHOUT_FILE_OVERRIDES)


def refused_in_one_line(result: subprocess.CompletedProcess[str], db: Path, reason: str) -> None:
    assert result.returncode != 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "edge registry: gRPC on port" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"meshplane: registry store {db}: "), result.stderr[-2000:]
    assert reason in last_line, last_line


@requires(MODES_DO_NOT_BIND)
def test_serve_refuses_an_unreadable_store_and_leaves_it_untouched(shared_dir: Path) -> None:
    require(MODES_DO_NOT_BIND)
    db = shared_dir / "registry.db"
    real_database(db)
    before = digest(db)
    db.chmod(0)
    deny_writes(shared_dir)
    try:
        result = serve_bound_by_modes(shared_dir, db)
        mode = stat.S_IMODE(db.stat().st_mode)
    finally:
        db.chmod(0o600)
    refused_in_one_line(result, db, "cannot open for reading and writing: Permission denied; left untouched")
    assert mode == 0, "the store's mode was changed"
    assert digest(db) == before, "the store was changed"
    assert sorted(path.name for path in shared_dir.iterdir()) == ["policy", "registry.db"]


@requires(MODES_DO_NOT_BIND)
@pytest.mark.parametrize("exists", [True, False], ids=["existing-store", "new-store"])
def test_serve_refuses_a_store_whose_directory_it_cannot_write(shared_dir: Path, exists: bool) -> None:
    """SQLite's WAL journal needs -wal and -shm files beside the store, so its directory must be
    writable even when the file itself is (SQLite alone says "attempt to write a readonly database",
    or "unable to open database file" for a new store: neither names the directory)."""
    require(MODES_DO_NOT_BIND)
    db = shared_dir / "registry.db"
    if exists:
        real_database(db)
        before = digest(db)
    deny_writes(shared_dir)
    result = serve_bound_by_modes(shared_dir, db)
    reason = f"directory {shared_dir} is not writable (permission denied); left untouched"
    refused_in_one_line(result, db, reason)
    if exists:
        assert digest(db) == before, "the store was changed"
        assert sorted(path.name for path in shared_dir.iterdir()) == ["policy", "registry.db"]
    else:
        assert sorted(path.name for path in shared_dir.iterdir()) == ["policy"]


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
