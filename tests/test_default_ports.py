"""One default listener port per role: what `meshplane bootstrap ROLE` writes, what a preview
(`meshplane config --role ROLE`) shows, and what the server assumes for a node that names none."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from meshplane.xds.server.nodes import proxy_group
from tests.envoy_harness import REPO
from tests.meshplane_env import without_meshplane_variables
from tests.serve_process import serve

ROLES = [("sidecar", None), ("device", "gym-local"), ("edge-gateway", "gym-local")]


async def meshplane(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=without_meshplane_variables(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def bootstrap_port(role: str) -> int:
    """node.metadata.outbound_port of `meshplane bootstrap ROLE`'s default output."""
    port = yaml.safe_load(await meshplane("bootstrap", role))["node"]["metadata"]["outbound_port"]
    return int(port)


def listener_ports(dump: dict[str, object]) -> set[int]:
    listeners = dump["types"]["LDS"]["resources"]  # type: ignore[index]
    return {int(entry["resource"]["address"]["socket_address"]["port_value"]) for entry in listeners}


@pytest.mark.xdist_group("envoy")
async def test_a_preview_has_the_listener_ports_of_the_default_bootstrap() -> None:
    async with serve("--config", str(REPO / "examples")) as served:
        for role, site in ROLES:
            port = await bootstrap_port(role)
            preview = ["config", "--server", served.status_url, "-o", "json", "--role", role]
            dump = json.loads(await meshplane(*preview, *(["--site", site] if site else [])))
            expected = {port, port + 1} if role == "edge-gateway" else {port}
            assert listener_ports(dump) == expected, (role, dump["group"])
    assert await bootstrap_port("edge-gateway") == 15080  # devices → cloud; cloud → device on 15081


@pytest.mark.parametrize(("role", "site"), ROLES, ids=[role for role, _ in ROLES])
async def test_a_node_without_an_outbound_port_gets_the_bootstrap_default(role: str, site: str | None) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"role": role, **({"site": site} if site else {})})
    group = proxy_group(base_pb2.Node(id="n1", metadata=metadata))
    assert group.outbound_port == await bootstrap_port(role)
