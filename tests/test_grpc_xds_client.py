"""grpcio's own xDS client (`xds:///` targets, GRPC_XDS_BOOTSTRAP) resolving services through meshplane.

The client runs in its own process with envoy-configs/grpc-bootstrap.json, patched only to point
at this test's control plane, so it is exactly the shape a proxyless gRPC app would use.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshplane.demo.greeter import start_greeter
from tests.envoy_harness import ENVOY_CONFIGS, REPO
from tests.test_envoy_integration import start_plane

pytestmark = pytest.mark.xdist_group("envoy")


def greeter_policy(port: int) -> str:
    return (
        "services:\n  - name: greeter\n    port: 50051\n    protocol: grpc\n    endpoints:\n"
        f"      - {{address: 127.0.0.1, port: {port}}}\n"
    )


def write_grpc_bootstrap(path: Path, xds_port: int) -> Path:
    """Writes to `path` the example gRPC xDS bootstrap, pointed at a control plane on 127.0.0.1:`xds_port`."""
    bootstrap = json.loads((ENVOY_CONFIGS / "grpc-bootstrap.json").read_text())
    bootstrap["xds_servers"][0]["server_uri"] = f"127.0.0.1:{xds_port}"
    path.write_text(json.dumps(bootstrap))
    return path


async def run_client(bootstrap: Path, target: str, name: str) -> list[str]:
    args = [sys.executable, str(REPO / "tests" / "grpc_xds_client.py"), target, name]
    process = await asyncio.create_subprocess_exec(
        *args,
        env={"GRPC_XDS_BOOTSTRAP": str(bootstrap), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"client failed ({process.returncode}): {err.decode()[-2000:]}"
    return out.decode().splitlines()


@pytest.fixture
async def greeters() -> AsyncIterator[dict[str, tuple[grpc.aio.Server, int]]]:
    servers = {name: await start_greeter(name) for name in ("greeter-1", "greeter-2", "canary")}
    yield servers
    for server, _ in servers.values():
        await server.stop(None)


async def test_grpc_xds_client_resolves_through_meshplane_and_follows_changes(
    tmp_path: Path, greeters: dict[str, tuple[grpc.aio.Server, int]]
) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "greeter.yaml").write_text(greeter_policy(greeters["greeter-1"][1]))
    plane, stop, task = await start_plane(policy)
    try:
        bootstrap_path = write_grpc_bootstrap(tmp_path / "grpc-bootstrap.json", plane.xds_port)

        for target in ("xds:///greeter:50051", "xds:///greeter.default.svc.cluster.local:50051"):
            assert await run_client(bootstrap_path, target, "ada") == ["hello ada from greeter-1"]
        roles = {track.group.role.value for track in plane.registry.streams()}
        assert roles <= {"grpc"}

        # The endpoint moves: a running client follows it, on the same channel.
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "tests" / "grpc_xds_client.py"),
            "xds:///greeter:50051",
            "bob",
            "greeter-2",
            env={"GRPC_XDS_BOOTSTRAP": str(bootstrap_path), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
        )
        assert client.stdout is not None
        first = await asyncio.wait_for(client.stdout.readline(), 60)
        assert first.decode().strip() == "hello bob from greeter-1"
        (policy / "greeter.yaml").write_text(greeter_policy(greeters["greeter-2"][1]))
        rest, _ = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0
        assert rest.decode().splitlines()[-1] == "hello bob from greeter-2"
        assert not plane.registry.recent_nacks
    finally:
        stop.set()
        await task
