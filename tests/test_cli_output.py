"""What the command line prints: tables whose columns line up, and a quiet end when the reader of
its output goes away (`meshplane devices list | head`), for every command that prints.

Every command runs as a subprocess; a "closed pipe" is a real pipe whose read end is closed before
the command starts, so its first write fails, whatever the size of its output.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.model import Site
from meshplane.registry_api.console import DEVICE_COLUMNS
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings
from tests.envoy_harness import REPO
from tests.meshplane_env import without_meshplane_variables
from tests.serve_process import serve

SITE = Site("gym-berlin", "eu-central", "a", (), ("10.20.0.0/16",))
OPERATOR, BIKES = "token-ops", "token-bikes"
LONG_ID = "bike-with-a-device-id-longer-than-its-column-0042"
SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[EdgeRegistryServer]:
    """A registry (in this process, on 127.0.0.1:0) holding two bikes, one with a long id."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{sha256: {token_digest(BIKES)}, class: bike}}\n"
        f"  - {{sha256: {token_digest(OPERATOR)}, operator: ops}}\n"
    )
    settings = EdgeSettings(
        db=str(tmp_path / "registry.db"),
        address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        tokens=tokens,
        leases=LeaseSettings(default_ttl=30, min_ttl=1, check_interval=0.1),
    )
    edge = EdgeRegistryServer(settings, lambda: {SITE.id: SITE}, on_change=lambda: None)
    await edge.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            for device_id, address in (("bike-1", "10.20.1.5"), (LONG_ID, "10.20.1.6")):
                request = pb.RegisterRequest(
                    device_id=device_id,
                    device_class="bike",
                    site=SITE.id,
                    endpoints=[pb.Endpoint(address=address, port=8080)],
                    version="3.2.1",
                )
                await stub.Register(request, metadata=(("authorization", f"Bearer {BIKES}"),))
        yield edge
    finally:
        await edge.shutdown(0.1)


async def meshplane(*args: str, stdout: int, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """Runs `meshplane ARGS` with no MESHPLANE_* variables; its status, stdout (when piped) and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=without_meshplane_variables(),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out or b"", err


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


async def test_the_devices_table_lines_up_every_column(registry: EdgeRegistryServer) -> None:
    code, out, err = await meshplane(
        "devices",
        "--registry",
        f"http://127.0.0.1:{registry.http_port}",
        "--token",
        OPERATOR,
        "list",
        stdout=asyncio.subprocess.PIPE,
    )
    assert code == 0, err
    header, *rows = out.decode().splitlines()
    starts = [header.index(column) for column in DEVICE_COLUMNS]
    assert starts == sorted(starts)
    by_id = {}
    for row in rows:
        cells = [row[start:end] for start, end in zip(starts, [*starts[1:], len(row)], strict=True)]
        # Each cell ends in padding: nothing runs into the next column.
        assert all(cell.endswith("  ") for cell in cells[:-1]), row
        by_id[cells[0].strip()] = [cell.strip() for cell in cells]
    assert sorted(by_id) == sorted(["bike-1", LONG_ID])
    _, device_class, site, version, expires, endpoints = by_id[LONG_ID]
    assert (device_class, site, version, endpoints) == ("bike", "gym-berlin", "3.2.1", "10.20.1.6:8080")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expires), expires  # UTC, to the second


async def test_devices_list_into_a_closed_pipe_ends_quietly(registry: EdgeRegistryServer, closed_pipe: int) -> None:
    registry_url = f"http://127.0.0.1:{registry.http_port}"
    code, _, err = await meshplane(
        "devices", "--registry", registry_url, "--token", OPERATOR, "list", stdout=closed_pipe
    )
    assert (code, err.decode()) == (SIGPIPE_STATUS, "")


@pytest.mark.parametrize(
    "args",
    [
        ("bootstrap", "sidecar"),
        ("bootstrap", "grpc"),
        ("validate", "--config", "examples"),
        ("devices", "hash-token"),
    ],
    ids=lambda args: " ".join(args),
)
async def test_a_command_printing_into_a_closed_pipe_ends_quietly(args: tuple[str, ...], closed_pipe: int) -> None:
    code, _, err = await meshplane(*args, stdout=closed_pipe, stdin=b"a-token\n")
    assert (code, err.decode()) == (SIGPIPE_STATUS, "")


@pytest.mark.parametrize("args", [("--help",), ("devices", "--help"), ("--version",)], ids=lambda args: " ".join(args))
async def test_help_into_a_closed_pipe_ends_quietly(args: tuple[str, ...], closed_pipe: int) -> None:
    """argparse ignores a failed write itself when stdout is unbuffered (PYTHONUNBUFFERED: exit 0);
    buffered, the output fails at the flush (141). Quiet either way."""
    code, _, err = await meshplane(*args, stdout=closed_pipe)
    assert err.decode() == ""
    assert code in (0, SIGPIPE_STATUS)


@pytest.mark.xdist_group("envoy")
async def test_status_and_config_into_a_closed_pipe_end_quietly() -> None:
    async with serve("--config", str(REPO / "examples")) as served:
        for args in (
            ("status",),
            ("status", "sources"),
            ("status", "-o", "json"),
            ("config", "--role", "sidecar"),
        ):
            read_end, write_end = os.pipe()
            os.close(read_end)
            try:
                code, _, err = await meshplane(*args, "--server", served.status_url, stdout=write_end)
            finally:
                os.close(write_end)
            assert (code, err.decode()) == (SIGPIPE_STATUS, ""), args
