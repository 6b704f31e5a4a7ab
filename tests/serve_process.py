"""`meshplane serve` as a subprocess, with its log read line by line as it is written.

Tests wait on what the log says (`wait_for_line`), never on time: a line is the barrier proving
what came before it happened. The status port's answers are read over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.envoy_harness import REPO
from tests.meshplane_env import without_meshplane_variables
from tests.ports import free_port

STARTED = " meshplane.app: xDS on port "


class ServeProcess:
    """One running `meshplane serve`; `lines` holds every log line written so far."""

    def __init__(self, process: asyncio.subprocess.Process, status_port: int) -> None:
        self.process = process
        self.status_url = f"http://127.0.0.1:{status_port}"
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._ended = False

    async def read_log(self) -> None:
        """Collects stderr until the process closes it."""
        assert self.process.stderr is not None
        while raw := await self.process.stderr.readline():
            self.lines.append(raw.decode().rstrip("\n"))
            self._new_line.set()
        self._ended = True
        self._new_line.set()

    async def wait_for_line(self, wanted: Callable[[str], bool], after: int = 0) -> int:
        """The index of the first line from `after` on that `wanted` accepts, once it is written."""
        while True:
            for index in range(after, len(self.lines)):
                if wanted(self.lines[index]):
                    return index
            after = len(self.lines)
            assert not self._ended, "serve ended before writing the line waited for:\n" + "\n".join(self.lines)
            self._new_line.clear()
            await self._new_line.wait()

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(self.status_url + path) as response,
        ):
            return response.status, await response.text()

    async def status(self) -> dict[str, Any]:
        code, body = await self.get("/status")
        assert code == 200, body
        document: dict[str, Any] = json.loads(body)
        return document


@contextlib.asynccontextmanager
async def serve(
    *args: str,
    env: dict[str, str] | None = None,
    xds_address: str | None = None,
    started: str = STARTED,
    line_limit: int = 64 << 10,
) -> AsyncIterator[ServeProcess]:
    """`meshplane serve ARGS` on `xds_address` (a free port when None) and a free status port, with
    only the MESHPLANE_* variables in `env`; yields once a log line holds `started`, then stops it
    with SIGTERM and expects exit 0. The log is read in lines of up to `line_limit` bytes."""
    status_port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        "serve",
        "--xds-address",
        xds_address or f"127.0.0.1:{free_port()}",
        "--status-address",
        f"127.0.0.1:{status_port}",
        *args,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**without_meshplane_variables(), **(env or {})},
        limit=line_limit,
    )
    served = ServeProcess(process, status_port)
    reader = asyncio.create_task(served.read_log())
    try:
        await asyncio.wait_for(served.wait_for_line(lambda line: started in line), 60)
        yield served
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0, "\n".join(served.lines)
        await reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def copy_examples(target: Path) -> Path:
    """The repository's example policy files, copied into `target` (to be edited by a test)."""
    target.mkdir(parents=True, exist_ok=True)
    for example in sorted((REPO / "examples").glob("*.yaml")):
        (target / example.name).write_text(example.read_text())
    return target
