"""A control plane killed with SIGKILL and started again: Envoy keeps serving throughout and
converges without any resource flapping, over SotW and Delta (with `initial_resource_versions`).

The control plane runs as a real `meshplane serve` process so it can be killed for real.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.envoy_harness import REPO, Envoy, free_port, start_backend, start_envoy

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

UPDATE_ATTEMPTS = ("cluster_manager.cds.update_attempt", "listener_manager.lds.update_attempt")
FLAP_STATS = (
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_removed",
    "cluster_manager.cluster_modified",
    "listener_manager.listener_added",
    "listener_manager.listener_removed",
    "listener_manager.listener_modified",
)


async def serve(policy: Path, xds_port: int, status_port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        "serve",
        "--config",
        str(policy),
        "--xds-address",
        f"127.0.0.1:{xds_port}",
        "--status-address",
        f"127.0.0.1:{status_port}",
        "--log-level",
        "warning",
        cwd=REPO,
        env={**os.environ},
    )


async def flap_counters(envoy: Envoy) -> dict[str, object]:
    return {name: await envoy.stat(name) for name in FLAP_STATS}


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_sigkill_and_restart_keeps_serving_without_flapping(
    tmp_path: Path, delta: bool, processes: list[asyncio.subprocess.Process]
) -> None:
    web, api = await start_backend("web"), await start_backend("api")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mesh.yaml").write_text(
        "services:\n"
        f"  - {{name: web, port: 8080, endpoints: [{{address: 127.0.0.1, port: {web.port}}}]}}\n"
        f"  - {{name: api, port: 8080, endpoints: [{{address: 127.0.0.1, port: {api.port}}}]}}\n"
        "routes:\n  - name: api\n    service: api\n    rules:\n"
        "      - {match: {path: {prefix: /web/}}, to: [web]}\n      - to: [api]\n"
    )
    xds_port, status_port = free_port(), free_port()
    processes.append(await serve(policy, xds_port, status_port))
    envoy = await start_envoy(tmp_path / "envoy", xds_port, node_id="survivor", delta=delta)
    try:

        async def serving() -> bool:
            checks = [await envoy.request("api", "/"), await envoy.request("api", "/web/x")]
            return [(status, body.split()[0]) for status, body, _ in checks] == [(200, "api"), (200, "web")]

        await envoy.eventually(serving, "the first configuration")
        before = await flap_counters(envoy)
        connections = await envoy.stat("cluster.meshplane.upstream_cx_total")
        attempts = {name: await envoy.stat(name) for name in UPDATE_ATTEMPTS}

        processes[0].send_signal(signal.SIGKILL)
        await processes[0].wait()

        async def disconnected() -> bool:
            return await envoy.stat("control_plane.connected_state") == 0

        await envoy.eventually(disconnected, "Envoy to notice the control plane died")
        assert await serving(), "Envoy stopped serving while the control plane was down"

        processes.append(await serve(policy, xds_port, status_port))

        async def reconnected_and_current() -> bool:
            cx = await envoy.stat("cluster.meshplane.upstream_cx_total")
            connected = await envoy.stat("control_plane.connected_state") == 1
            return connected and isinstance(cx, int) and isinstance(connections, int) and cx > connections

        await envoy.eventually(reconnected_and_current, "Envoy to reconnect to the new process")

        async def answered_again() -> bool:
            now = {name: await envoy.stat(name) for name in UPDATE_ATTEMPTS}
            return all(now[name] > attempts[name] for name in UPDATE_ATTEMPTS)  # type: ignore[operator]

        # Once the new process has answered CDS and LDS, nothing may have been removed, re-added or modified.
        await envoy.eventually(answered_again, "the new process to answer CDS and LDS")
        assert await serving()
        assert await flap_counters(envoy) == before
    finally:
        await envoy.stop()
        await web.close()
        await api.close()
