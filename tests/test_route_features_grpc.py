"""grpcio's own xDS client on a route table using every Gateway API route feature.

Rules a gRPC client could never take (a redirect, query parameter and non-POST method matches) are
left out of its routes, and rewrites, header modifiers, mirrors, rate limits and CORS it does not apply
are dropped; it takes faults. The client takes the configuration (no NACK) and its calls reach the
rule meant for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshplane.demo.greeter import start_greeter
from tests.test_envoy_integration import start_plane
from tests.test_grpc_xds_client import run_client, write_grpc_bootstrap

pytestmark = pytest.mark.xdist_group("envoy")


@pytest.fixture
async def greeters() -> AsyncIterator[dict[str, int]]:
    servers = {name: await start_greeter(name) for name in ("greeter-1", "greeter-2")}
    yield {name: port for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        await server.stop(None)


def policy(ports: dict[str, int]) -> str:
    return f"""\
services:
  - name: greeter
    port: 50051
    protocol: grpc
    endpoints: [{{address: 127.0.0.1, port: {ports["greeter-1"]}}}]
  - name: greeter-two
    port: 50051
    protocol: grpc
    endpoints: [{{address: 127.0.0.1, port: {ports["greeter-2"]}}}]
routes:
  - name: greeter-features
    service: greeter
    rules:
      - name: moved                  # would fail every call if gRPC were given it
        redirect: {{path: /elsewhere}}
      - name: by-query
        match: {{query: [{{name: a, exact: b}}]}}
        to: [greeter]
      - name: gets
        match: {{method: GET}}
        to: [greeter]
      - name: calls
        match: {{method: POST}}
        to: [greeter-two]
        rewrite: {{hostname: greeter.internal}}
        request_headers: {{set: {{x-tenant: shop}}}}
        response_headers: {{remove: [x-internal]}}
        mirror: [greeter]
        fault: {{delay: {{duration: 1ms, percent: 0}}}}   # taken, and never delays
        rate_limit: {{requests: 1, interval: 24h}}       # not for gRPC: it would refuse the filter
        cors: {{allow_origins: ["*"]}}                  # nor this
"""


async def test_grpc_client_takes_routes_with_features_it_lacks(tmp_path: Path, greeters: dict[str, int]) -> None:
    directory = tmp_path / "policy"
    directory.mkdir()
    (directory / "mesh.yaml").write_text(policy(greeters))
    plane, stop, task = await start_plane(directory)
    try:
        bootstrap = write_grpc_bootstrap(tmp_path / "grpc-bootstrap.json", plane.xds_port)
        assert await run_client(bootstrap, "xds:///greeter:50051", "ada") == ["hello ada from greeter-2"]
        assert not plane.registry.recent_nacks
    finally:
        stop.set()
        await task
