"""A control plane restarted while Kubernetes is unreachable pushes nothing: no empty and no partial
config reaches the proxies, which keep serving what they have, and `/readyz` says why. Once the API
server answers again, the proxies converge with nothing removed, re-added or modified."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from meshplane.app import ControlPlane
from tests.envoy_harness import Envoy, start_backend, start_envoy
from tests.k8s import objects as k
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.test_kubernetes_app import readyz, settings_for, write_kubeconfig
from tests.test_reliability_restart import FLAP_STATS, flap_counters

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

UNREACHABLE = 10**9  # failed requests: every list and watch gets a 503 until cleared


async def serving(envoy: Envoy) -> bool:
    status, body, _ = await envoy.request("web.shop", "/")
    return status == 200 and body.startswith("web")


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_restart_while_kubernetes_is_unreachable_pushes_nothing(
    tmp_path: Path, apiserver: FakeApiServer, delta: bool
) -> None:
    web = await start_backend("web")
    apiserver.apply(k.service("web", "shop", ports=[k.port("http", 8080)]))
    apiserver.apply(
        k.endpoint_slice("web-a", "web", "shop", endpoints=[k.endpoint("127.0.0.1")], ports=[("http", web.port)])
    )
    settings = settings_for(write_kubeconfig(tmp_path / "kubeconfig", apiserver.url))
    first = ControlPlane(settings)
    await first.start()
    envoy = await start_envoy(tmp_path / "envoy", first.xds_port, node_id="k8s-restart", delta=delta)
    second: ControlPlane | None = None
    stop = asyncio.Event()
    try:
        stop_first = asyncio.Event()
        running_first = asyncio.create_task(first.run(stop_first))
        await envoy.eventually(lambda: serving(envoy), "the first configuration")
        before = await flap_counters(envoy)
        stop_first.set()
        await running_first

        apiserver.fail_next_requests(UNREACHABLE, 503)
        second = ControlPlane(dataclasses.replace(settings, xds_address=f"127.0.0.1:{first.xds_port}"))
        await second.start()
        running = asyncio.create_task(second.run(stop))

        async def reconnected() -> bool:
            return any(track.node_id == "k8s-restart" for track in second.registry.streams())

        await envoy.eventually(reconnected, "Envoy to reconnect to the restarted control plane")
        status, body = await readyz(second.status_port)
        assert status == 503
        assert "kubernetes" in body
        # Nothing was pushed to the reconnected proxy, and it still serves its last configuration.
        assert sum(second.registry.push_counts.values()) == 0
        assert await serving(envoy)
        assert await flap_counters(envoy) == before

        apiserver.clear_failures()

        async def ready() -> bool:
            return (await readyz(second.status_port))[0] == 200

        await envoy.eventually(ready, "the restarted control plane to sync")

        async def pushed() -> bool:
            return sum(second.registry.push_counts.values()) > 0

        await envoy.eventually(pushed, "pushes after the sync")
        assert await serving(envoy)
        assert await flap_counters(envoy) == before, f"resources flapped: {FLAP_STATS}"
        stop.set()
        await running
    finally:
        stop.set()
        await envoy.stop()
        if second is not None:
            await second.shutdown()
        await first.shutdown()
        await web.close()
