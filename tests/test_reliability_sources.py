"""Faults around the control plane's inputs and its peers, with real Envoy where a proxy is involved.

- Two replicas on the same sources give a proxy identical versions, so moving between them changes nothing.
- A policy file replaced by a broken one, by a half-written one, or deleted: the last good config
  keeps serving (traffic through Envoy) and the status says why.
- A flood of 1,000 streams connecting at once: every one converges, and the status endpoint answers meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from meshplane.app import ControlPlane
from tests.envoy_harness import start_backend, start_envoy
from tests.test_envoy_integration import start_plane
from tests.xds_fixtures import CDS, EDS, LDS, AdsStream, node, request

pytestmark = pytest.mark.xdist_group("envoy")

WEB = "services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {{address: 127.0.0.1, port: {port}}}\n"


async def versions_seen(plane: ControlPlane, node_id: str) -> dict[str, str]:
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel:
        stream = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
        await stream.send(request(CDS, with_node=node(node_id, zone="z1")))
        cds = await stream.recv()
        await stream.send(request(CDS, version=cds.version_info, nonce=cds.nonce))
        await stream.send(request(LDS))
        lds = await stream.recv()
        await stream.send(request(EDS, ["web.default:8080"]))
        eds = await stream.recv()
        await stream.close()
        return {"cds": cds.version_info, "lds": lds.version_info, "eds": eds.version_info}


async def test_two_replicas_give_a_proxy_identical_versions(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(WEB.format(port=9000))
    one, stop_one, task_one = await start_plane(tmp_path)
    two, stop_two, task_two = await start_plane(tmp_path)
    try:
        assert await versions_seen(one, "proxy-on-one") == await versions_seen(two, "proxy-on-two")
    finally:
        stop_one.set()
        stop_two.set()
        await task_one
        await task_two


async def test_broken_half_written_and_deleted_policy_keep_the_last_good_config(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    web = await start_backend("web")
    (policy / "web.yaml").write_text(WEB.format(port=web.port))
    plane, stop, task = await start_plane(policy)
    envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id="faults")
    status_url = f"http://127.0.0.1:{plane.status_port}/status"
    try:

        async def serving() -> bool:
            status, body, _ = await envoy.request("web")
            return status == 200 and body.startswith("web")

        await envoy.eventually(serving, "the first config")
        async with aiohttp.ClientSession() as session:

            async def refused_with(fragment: str) -> bool:
                async with session.get(status_url) as response:
                    errors = json.loads(await response.text())["sources"][0]["errors"]
                return any(fragment in error for error in errors)

            faults = {
                "broken": ("services:\n  - name: web\n    port: [8080\n", "web.yaml:"),
                "half-written": (WEB.format(port=web.port)[:40], "web.yaml:"),
            }
            for name, (text, fragment) in faults.items():
                (policy / "web.yaml").write_text(text)
                await envoy.eventually(lambda fragment=fragment: refused_with(fragment), f"the {name} file refused")
                assert await serving(), f"Envoy lost its config after a {name} policy file"
            # Deleting the whole policy directory: refused as missing, the last good config still serves.
            (policy / "web.yaml").unlink()
            policy.rmdir()
            await envoy.eventually(lambda: refused_with("does not exist"), "the deleted policy reported")
            assert await serving()
            assert plane.publisher.state.problems == ()
    finally:
        await envoy.stop()
        stop.set()
        await task
        await web.close()


async def test_a_flood_of_streams_converges_and_status_stays_responsive(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(WEB.format(port=9000))
    plane, stop, task = await start_plane(tmp_path)
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc

    streams = 1000
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel,
            aiohttp.ClientSession() as session,
        ):
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

            async def one(index: int) -> str:
                stream = AdsStream(stub.StreamAggregatedResources())
                await stream.send(request(CDS, with_node=node(f"flood-{index}", zone=f"z{index % 10}")))
                response = await stream.recv()
                return str(response.version_info)

            flood = [asyncio.create_task(one(i)) for i in range(streams)]
            # While the flood is in progress the status endpoint still answers.
            async with session.get(f"http://127.0.0.1:{plane.status_port}/healthz") as response:
                assert response.status == 200
            versions = await asyncio.gather(*flood)
            assert len(set(versions)) == 1  # clusters do not depend on the zone: one version for all
            async with session.get(f"http://127.0.0.1:{plane.status_port}/status") as response:
                assert len(json.loads(await response.text())["proxies"]) == streams
    finally:
        stop.set()
        await task
