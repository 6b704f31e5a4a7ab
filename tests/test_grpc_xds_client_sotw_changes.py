"""grpcio's own xDS client (SotW ADS) after an EDS response that carries only the cluster that
changed: it keeps the other cluster's endpoints and goes on routing to both.

grpc's xDS client treats only Listener and Cluster responses as full state (the xDS protocol's
"Grouping resources into responses"), so endpoints left out of a response stay as they were.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshplane.demo.greeter import start_greeter
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO
from tests.test_envoy_integration import start_plane
from tests.test_grpc_xds_client import write_grpc_bootstrap

pytestmark = pytest.mark.xdist_group("envoy")


def grpc_service(name: str, port: int) -> str:
    return (
        f"  - name: {name}\n    port: 50051\n    protocol: grpc\n    endpoints:\n"
        f"      - {{address: 127.0.0.1, port: {port}}}\n"
    )


@pytest.fixture
async def greeters() -> AsyncIterator[dict[str, int]]:
    servers = {name: await start_greeter(name) for name in ("greeter-1", "greeter-2", "echo")}
    yield {name: port for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        await server.stop(None)


# grpc's xds_client trace line for each response it receives (GRPC_TRACE=xds_client).
EDS_RESPONSE = re.compile(
    r"received ADS response: type_url=envoy\.config\.endpoint\.v3\.ClusterLoadAssignment, .*num_resources=(\d+)"
)
SPLIT = """routes:
  - name: split
    service: greeter
    rules:
      - to: [{service: greeter, weight: 50}, {service: echo, weight: 50}]
"""


async def test_grpc_xds_client_keeps_the_unchanged_cluster_after_a_partial_eds_update(
    tmp_path: Path, greeters: dict[str, int]
) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    services = "services:\n" + grpc_service("echo", greeters["echo"])
    (policy / "services.yaml").write_text(services + grpc_service("greeter", greeters["greeter-1"]))
    (policy / "routes.yaml").write_text(SPLIT)  # one route, two clusters: both on the client's one stream
    plane, stop, task = await start_plane(policy)
    try:
        bootstrap_path = write_grpc_bootstrap(tmp_path / "grpc-bootstrap.json", plane.xds_port)

        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "tests" / "grpc_xds_pair_client.py"),
            "xds:///greeter:50051",
            "ada",
            "greeter-1",
            "greeter-2",
            "echo",
            env={
                "GRPC_XDS_BOOTSTRAP": str(bootstrap_path),
                "PATH": "/usr/bin:/bin",
                "GRPC_TRACE": "xds_client",
                "GRPC_VERBOSITY": "DEBUG",
            },
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert client.stdin is not None
        assert client.stdout is not None
        assert (await asyncio.wait_for(client.stdout.readline(), 60)).decode().strip() == "ready"
        (track,) = plane.registry.streams()
        endpoints = track.types[TypeUrl.ENDPOINT]
        before = {r.name: r.version for r in endpoints.sent_resources()}
        assert len(before) == 2, before  # both clusters' endpoints on the one stream
        pushes = plane.registry.push_counts[TypeUrl.ENDPOINT]

        # greeter moves; echo does not, so the EDS response carries greeter's endpoints only.
        (policy / "services.yaml").write_text(services + grpc_service("greeter", greeters["greeter-2"]))
        client.stdin.write(b"changed\n")
        await client.stdin.drain()
        rest, log = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0
        # After greeter-2 answered (the update applied), echo still answers: its endpoints were kept.
        assert rest.decode().splitlines() == ["hello ada from greeter-2", "hello ada from echo"]

        assert plane.registry.push_counts[TypeUrl.ENDPOINT] == pushes + 1
        # What the client itself saw (grpc's xds_client trace): that one EDS response carried one resource.
        received = EDS_RESPONSE.findall(log.decode(errors="replace"))
        assert received, "no EDS response in the client's trace"
        assert received[-1] == "1", received
        held = {r.name: r.version for r in endpoints.sent_resources()}
        assert held.keys() == before.keys()
        assert [name for name in held if held[name] != before[name]] == [n for n in held if n.startswith("greeter")]
        assert not plane.registry.recent_nacks
    finally:
        stop.set()
        await task
