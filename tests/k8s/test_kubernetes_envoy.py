"""End to end: an EndpointSlice change on the (fake) API server reaches a real Envoy, and traffic follows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshplane.app import ControlPlane
from tests.envoy_harness import start_backend, start_envoy
from tests.k8s import objects as k
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.test_kubernetes_app import settings_for, write_kubeconfig

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_an_endpoint_slice_change_moves_envoy_traffic(
    tmp_path: Path, apiserver: FakeApiServer, delta: bool
) -> None:
    one, two = await start_backend("one"), await start_backend("two")
    apiserver.apply(k.service("web", "shop", ports=[k.port("http", 8080)]))

    def slice_to(*ports: int, ready: bool = True) -> dict[str, object]:
        # One slice per backend port (a slice has one port number for all its endpoints).
        return k.endpoint_slice(
            "web-a", "web", "shop", endpoints=[k.endpoint("127.0.0.1", ready=ready)], ports=[("http", ports[0])]
        )

    apiserver.apply(slice_to(one.port))
    plane = ControlPlane(settings_for(write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)))
    await plane.start()
    stop = asyncio.Event()
    task = asyncio.create_task(plane.run(stop))
    envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id="k8s-e2e", delta=delta)
    try:

        def answered(name: str | None) -> object:
            async def check() -> bool:
                status, body, _ = await envoy.request("web.shop", "/")
                return (body.split()[0] if status == 200 else None) == name

            return check

        await envoy.eventually(answered("one"), "traffic to the first endpoint")
        apiserver.apply(slice_to(two.port))  # the pod moved: a new address:port
        await envoy.eventually(answered("two"), "traffic following the EndpointSlice change")
        apiserver.apply(slice_to(two.port, ready=False))  # no ready endpoint left

        async def unavailable() -> bool:
            status, _, _ = await envoy.request("web.shop", "/")
            return status == 503

        await envoy.eventually(unavailable, "no traffic to a not-ready endpoint")
        hits_before = one.hits
        apiserver.apply(slice_to(one.port))
        await envoy.eventually(answered("one"), "traffic back on a ready endpoint")
        assert one.hits > hits_before
    finally:
        await envoy.stop()
        stop.set()
        await task
        await one.close()
        await two.close()
