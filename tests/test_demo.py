"""`make run`'s launcher, run to completion: traffic flows through Envoy, and nothing is left behind."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.envoy_harness import REPO

DEMO_PORTS = (18000, 9900, 9901, 15001, 9101, 9102, 9201, 9202, 9301)


def port_is_free(port: int) -> bool:
    """Nothing listens there. (A bind test would trip on the demo's own TIME_WAIT connections.)"""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.xdist_group("envoy")
def test_demo_serves_traffic_through_envoy_and_stops_cleanly() -> None:
    busy = [port for port in DEMO_PORTS if not port_is_free(port)]
    if busy:
        pytest.fail(f"the demo's ports are taken (is `make run` running?): {busy}")
    result = subprocess.run(
        [sys.executable, "-m", "meshplane.demo", "--check"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "web: answered by ['web-1', 'web-2']" in result.stdout
    assert "api with x-canary: always → hello from api-canary" in result.stdout
    assert "gRPC through Envoy: hello demo from greeter-1" in result.stdout
    assert [port for port in DEMO_PORTS if not port_is_free(port)] == []
