"""`PolicyFileSource.run()`: changes arrive by file-system notification, and by polling where there is none.

Each test waits for `on_change` with a deadline that only a broken watcher reaches; nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshplane.discovery import policy_files
from meshplane.discovery.policy_files import PolicyFileSource

DEADLINE = 20.0


def web(port: int) -> str:
    return f"services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {{address: 127.0.0.1, port: {port}}}\n"


@contextlib.asynccontextmanager
async def running(source: PolicyFileSource) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def changed_endpoint_port(source: PolicyFileSource, changes: asyncio.Queue[None]) -> int:
    await asyncio.wait_for(changes.get(), DEADLINE)
    assert source.mesh is not None
    return source.mesh.services[0].endpoints[0].port


@pytest.mark.parametrize("layout", ["directory", "single-file"])
async def test_change_arrives_by_notification_without_polling(tmp_path: Path, layout: str) -> None:
    (tmp_path / "web.yaml").write_text(web(1001))
    changes: asyncio.Queue[None] = asyncio.Queue()
    path = tmp_path if layout == "directory" else tmp_path / "web.yaml"
    source = PolicyFileSource(path, poll_interval=3600, on_change=lambda: changes.put_nowait(None))
    async with running(source):
        assert await changed_endpoint_port(source, changes) == 1001  # the first load
        # Replace by rename, as editors and GitOps syncs do.
        (tmp_path / "web.tmp").write_text(web(1002))
        (tmp_path / "web.tmp").rename(tmp_path / "web.yaml")
        assert await changed_endpoint_port(source, changes) == 1002
        # Rewrite in place.
        (tmp_path / "web.yaml").write_text(web(1003))
        assert await changed_endpoint_port(source, changes) == 1003


async def test_polling_takes_over_when_notifications_are_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_notifications(*args: Any, **kwargs: Any) -> Any:
        raise OSError("inotify unavailable")

    monkeypatch.setattr(policy_files.watchfiles, "watch", no_notifications)
    (tmp_path / "web.yaml").write_text(web(2001))
    changes: asyncio.Queue[None] = asyncio.Queue()
    source = PolicyFileSource(tmp_path, poll_interval=0.05, on_change=lambda: changes.put_nowait(None))
    async with running(source):
        assert await changed_endpoint_port(source, changes) == 2001
        (tmp_path / "web.yaml").write_text(web(2002))
        assert await changed_endpoint_port(source, changes) == 2002
