"""A registration acknowledged to a device survives kill -9 of the control plane.

A real `meshplane serve` process takes a burst of concurrent registrations; once a few hundred are
acknowledged it is killed with SIGKILL mid-burst, a new process is started on the same
`--registry-db`, and every acknowledged device must be listed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest

DEADLINE = 30.0
POLICY = """
sites:
  - id: gym
    region: eu-central
    device_ranges: ["10.20.0.0/16"]
"""
CLASS_TOKEN = "durability-bikes"
OPERATOR_TOKEN = "durability-ops"


@dataclass
class Plane:
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0


async def start_plane(workdir: Path, name: str) -> Plane:
    log = workdir / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
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
                str(workdir / "registry.db"),
                "--registry-address",
                "127.0.0.1:0",
                "--registry-http-address",
                "127.0.0.1:0",
                "--registry-tokens",
                str(workdir / "tokens.yaml"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    plane = Plane(process, log)
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        found = re.search(r"edge registry: gRPC on port (\d+)", log.read_text(errors="replace"))
        if found:
            plane.port = int(found.group(1))
            return plane
        if process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError(f"the control plane did not start its registry:\n{log.read_text(errors='replace')}")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "sites.yaml").write_text(POLICY)
    (tmp_path / "tokens.yaml").write_text(
        f"tokens:\n  - {{sha256: {token_digest(CLASS_TOKEN)}, class: bike}}\n"
        f"  - {{sha256: {token_digest(OPERATOR_TOKEN)}, operator: ops}}\n"
    )
    return tmp_path


def registration(index: int) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        device_id=f"bike-{index:05d}",
        device_class="bike",
        site="gym",
        endpoints=[pb.Endpoint(address=f"10.20.{index // 250}.{index % 250 + 1}", port=8080)],
        version="1.0.0",
    )


async def test_kill_9_during_a_burst_loses_no_acknowledged_registration(workdir: Path) -> None:
    plane = await start_plane(workdir, "first")
    acknowledged: set[str] = set()
    enough = asyncio.Event()
    counter = iter(range(1_000_000))
    metadata = (("authorization", f"Bearer {CLASS_TOKEN}"),)

    async def register_until_refused(stub: registry_pb2_grpc.RegistryStub) -> None:
        for index in counter:
            request = registration(index)
            try:
                await stub.Register(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError:
                return  # the process is gone
            acknowledged.add(request.device_id)
            if len(acknowledged) >= 300:
                enough.set()

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            workers = [asyncio.create_task(register_until_refused(stub)) for _ in range(32)]
            await asyncio.wait_for(enough.wait(), DEADLINE)
            plane.process.send_signal(signal.SIGKILL)  # mid-burst: 32 registrations are in flight
            await asyncio.to_thread(plane.process.wait, DEADLINE)
            await asyncio.wait_for(asyncio.gather(*workers), DEADLINE)
    finally:
        if plane.process.poll() is None:
            plane.process.kill()
    assert len(acknowledged) >= 300

    restarted = await start_plane(workdir, "second")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            listed = await stub.List(pb.ListRequest(), metadata=(("authorization", f"Bearer {OPERATOR_TOKEN}"),))
        stored = {device.device_id for device in listed.devices}
        assert acknowledged - stored == set(), "acknowledged registrations were lost"
    finally:
        restarted.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(restarted.process.wait, DEADLINE)
        if restarted.process.poll() is None:
            restarted.process.kill()
