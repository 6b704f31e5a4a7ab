"""One process at a time may use a SQLite registry file; a second is refused at start, in one line.

Two control planes on one file would each keep their own live devices in memory and diverge
silently. So opening a `SqliteStore` takes an exclusive lock held until it closes: a second store
on the file (in this process or another) is refused while the first is open, a real second
`meshplane serve --registry-db SAME` exits non-zero naming the file and the first's pid while the
first keeps serving, and the lock dies with its process (SIGKILL included), so a restart after a
crash is never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.store import Put, Registration, SqliteStore, StoreError
from meshplane.model import Device, DeviceEndpoint
from tests.envoy_harness import REPO
from tests.meshplane_env import without_meshplane_variables
from tests.ports import free_port
from tests.serve_process import STARTED, ServeProcess

POLICY = """
sites:
  - id: gym
    region: eu-central
    device_ranges: ["10.20.0.0/16"]
"""
CLASS_TOKEN = "single-writer-bikes"
REGISTRY_STARTED = re.compile(r"edge registry: gRPC on port \d+, JSON on port (\d+)")
# Bounds a wait on a real process, so that a hung one fails the test instead of stalling the run.
PROCESS_DEADLINE = 60.0


def registration(device_id: str) -> Put:
    device = Device(device_id, "bike", "gym", (DeviceEndpoint("10.20.1.5", 8080),))
    return Put(Registration(device, f"lease-{device_id}", "class:bike", 30.0, 2e9, 1e9))


def refusal(db: Path, pid: int) -> str:
    return f"registry store {db}: another meshplane process (pid {pid}) is using it"


async def test_a_second_store_is_refused_while_the_first_is_open_and_allowed_after(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    first = SqliteStore(db)
    assert await first.load() == []
    await first.write([registration("bike-1")])

    second = SqliteStore(db)
    with pytest.raises(StoreError) as refused:
        await second.load()
    assert str(refused.value).startswith(refusal(db, os.getpid()))
    writer_only = SqliteStore(db)  # a store written to without a load opens on its first write
    with pytest.raises(StoreError, match=re.escape(refusal(db, os.getpid()))):
        await writer_only.write([registration("bike-2")])
    await writer_only.close()

    await first.close()
    assert [row.device.id for row in await second.load()] == ["bike-1"]
    await second.write([registration("bike-2")])
    assert (tmp_path / "registry.db.lock").read_text() == f"{os.getpid()}\n"
    await second.close()
    assert not (tmp_path / "registry.db.lock").exists()  # it exists only while held, like the -wal file


async def test_a_store_that_only_wrote_holds_the_lock_until_it_closes(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    writer = SqliteStore(db)
    await writer.write([registration("bike-1")])
    with pytest.raises(StoreError, match=re.escape(refusal(db, os.getpid()))):
        await SqliteStore(db).load()
    await writer.close()
    reader = SqliteStore(db)
    assert [row.device.id for row in await reader.load()] == ["bike-1"]
    await reader.close()


async def test_a_symbolic_link_to_the_file_is_the_same_store(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    alias = tmp_path / "alias.db"
    alias.symlink_to(db.name)
    first = SqliteStore(db)
    await first.load()
    with pytest.raises(StoreError, match=re.escape(refusal(alias, os.getpid()))):
        await SqliteStore(alias).load()
    await first.close()


async def test_a_store_that_fails_to_open_holds_no_lock(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    db.write_bytes(b"not a database" * 1000)
    for _ in range(2):  # never closed: the first refusal let the lock go, so the second is the same
        with pytest.raises(StoreError, match=r"cannot read: file is not a database"):
            await SqliteStore(db).load()
    db.unlink()
    again = SqliteStore(db)
    assert await again.load() == []
    await again.close()


async def test_a_store_that_locked_the_file_its_holder_deleted_takes_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the lock file's deletion opens, forced: a store opens the lock file, the holder
    deletes it and lets go, then the store locks the deleted file, which guards nothing (a third
    store would create and lock a new one). It must take the file now at the path instead."""
    db = tmp_path / "registry.db"
    first = SqliteStore(db)
    await first.load()
    flock = fcntl.flock

    def first_lets_go_then_flock(descriptor: int, operation: int) -> None:
        monkeypatch.setattr(fcntl, "flock", flock)
        asyncio.run(first.close())  # in the second store's loading thread, after it opened the file
        assert not (tmp_path / "registry.db.lock").exists()
        flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", first_lets_go_then_flock)
    second = SqliteStore(db)
    await second.load()
    with pytest.raises(StoreError, match=re.escape(refusal(db, os.getpid()))):
        await SqliteStore(db).load()
    await second.close()


# --- real `meshplane serve` processes ---


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "sites.yaml").write_text(POLICY)
    (tmp_path / "tokens.yaml").write_text(f"tokens:\n  - sha256: {token_digest(CLASS_TOKEN)}\n    class: bike\n")
    return tmp_path


def serve_command(workdir: Path, status_port: int) -> list[str]:
    """`meshplane serve` on `workdir`'s policy, tokens and registry.db, every port free."""
    return [
        *(sys.executable, "-m", "meshplane", "serve"),
        *("--config", str(workdir / "policy"), "--registry-db", str(workdir / "registry.db")),
        *("--registry-tokens", str(workdir / "tokens.yaml")),
        *("--xds-address", "127.0.0.1:0", "--status-address", f"127.0.0.1:{status_port}"),
        *("--registry-address", "127.0.0.1:0", "--registry-http-address", "127.0.0.1:0"),
    ]


@contextlib.asynccontextmanager
async def meshplane_serve(workdir: Path) -> AsyncIterator[ServeProcess]:
    """`serve_command` running, its log collected as it is written; killed on the way out if it
    still runs (each test first waits for what it expects)."""
    status_port = free_port()
    process = await asyncio.create_subprocess_exec(
        *serve_command(workdir, status_port),
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=without_meshplane_variables(),
    )
    served = ServeProcess(process, status_port)
    reader = asyncio.create_task(served.read_log())
    try:
        yield served
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def refused_serve(workdir: Path) -> tuple[int, list[str]]:
    """Runs `serve_command` to its end: its exit status and its log lines."""
    process = await asyncio.create_subprocess_exec(
        *serve_command(workdir, free_port()),
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=without_meshplane_variables(),
    )
    try:
        _, log = await asyncio.wait_for(process.communicate(), PROCESS_DEADLINE)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, log.decode().splitlines()


async def serving(served: ServeProcess) -> int:
    """Waits until `served` serves; the port of its registry's JSON mirror."""
    await asyncio.wait_for(served.wait_for_line(lambda line: STARTED in line), PROCESS_DEADLINE)
    index = await served.wait_for_line(lambda line: REGISTRY_STARTED.search(line) is not None)
    found = REGISTRY_STARTED.search(served.lines[index])
    assert found is not None
    return int(found.group(1))


async def register(http_port: int, device_id: str) -> None:
    body = {
        "device_id": device_id,
        "device_class": "bike",
        "site": "gym",
        "endpoints": [{"address": "10.20.1.5", "port": 8080}],
    }
    headers = {"Authorization": f"Bearer {CLASS_TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(f"http://127.0.0.1:{http_port}/v1/register", json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()


async def test_a_second_serve_on_the_file_exits_with_the_reason_and_the_first_keeps_serving(workdir: Path) -> None:
    db = workdir / "registry.db"
    async with meshplane_serve(workdir) as first:
        http_port = await serving(first)
        await register(http_port, "bike-1")

        status, lines = await refused_serve(workdir)
        assert status != 0, lines
        assert lines[-1].startswith(f"meshplane: {refusal(db, first.process.pid)}"), lines
        assert not any("Traceback" in line for line in lines), lines
        assert not any(STARTED in line or REGISTRY_STARTED.search(line) for line in lines), lines

        # The first still registers devices (into the file) and answers its status.
        await register(http_port, "bike-2")
        sources = {source["name"]: source for source in (await first.status())["sources"]}
        assert sources["edge-registry"]["errors"] == [], sources
        assert first.process.returncode is None


async def test_a_serve_killed_with_sigkill_leaves_no_lock_behind(workdir: Path) -> None:
    async with meshplane_serve(workdir) as first:
        await register(await serving(first), "bike-1")
        first.process.kill()
        await asyncio.wait_for(first.process.wait(), PROCESS_DEADLINE)
    # Left behind by the killed process, unlocked: the next one takes it over.
    assert (workdir / "registry.db.lock").read_text() == f"{first.process.pid}\n"

    async with meshplane_serve(workdir) as restarted:
        await serving(restarted)
        assert any("edge registry: loaded 1 registrations" in line for line in restarted.lines), restarted.lines
        assert (workdir / "registry.db.lock").read_text() == f"{restarted.process.pid}\n"
