"""A real kube-apiserver (1.20, on a real etcd) restarted under a running control plane, seen
through HTTP `/status`: the outage shows as errors and a sync age that grows while `last_attempt`
moves; once the server is back the source is in sync again promptly (its watches resume or, their
version compacted away, relist at once), the errors clear, and new Services come with their
EndpointSlices.

The control plane runs with the production backoff (0.5 s doubling to 30 s), so the outage grows
it as in a cluster. Recovery times and the time a new Service was served without its slice are
printed (`pytest -s`); the assertions are about what is served, never about how fast.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.app import ControlPlane, Settings
from meshplane.discovery.kubernetes import KubernetesSource
from tests.edge_plane import running_control_plane
from tests.k8s import objects as k
from tests.k8s.conftest import wait_for
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, Cluster, RealApiServer, module_cluster
from tests.k8s.test_kubernetes_apiserver import create, kube_service, namespace
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]
BETA = "/apis/discovery.k8s.io/v1beta1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("kube-restart"))


async def status_sources(port: int) -> dict[str, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/status") as response,
    ):
        document = await response.json()
    return {source["name"]: source for source in document["sources"]}


async def until(condition: Any, what: str, deadline: float = 90.0, every: float = 0.01) -> float:
    """Awaits the async `condition` until it holds; returns the loop time it first held."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)
    return loop.time()


async def answers(client: ApiClient) -> bool:
    """Whether the API server says it is ready (`/readyz` answers text, not JSON)."""
    try:
        response = await client.call_api("/readyz", "GET", auth_settings=["BearerToken"], _preload_content=False)
        response.release()
        return bool(response.status == 200)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


def restart(cluster: Cluster, server: RealApiServer) -> None:
    """Starts `server` again as it was (same flags, port, certificates and etcd prefix)."""
    with server.log.open("ab") as log:
        process = subprocess.Popen(server.process.args, stdout=log, stderr=subprocess.STDOUT)
    cluster.processes[cluster.processes.index(server.process)] = process
    server.process = process


@pytest.fixture
async def plane(cluster: Cluster, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    assert cluster.uncached is not None
    settings = Settings(
        kubernetes=True,
        kubeconfig=cluster.uncached.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN),
        namespaces=("restart",),
        xds_address="127.0.0.1:0",
        status_address="127.0.0.1:0",
        debounce_quiet=0.01,
        debounce_max=0.1,
        shutdown_grace=0.2,
    )
    async with running_control_plane(settings) as running:
        yield running


def endpoints_of(source: KubernetesSource, name: str) -> list[str] | None:
    """The served endpoints of Service restart/`name`; None while it is not served at all."""
    for service in source.content().services:
        if service.name == name:
            return [endpoint.address for endpoint in service.endpoints]
    return None


async def test_recovery_after_an_api_server_restart(cluster: Cluster, plane: ControlPlane) -> None:
    uncached, cached = cluster.uncached, cluster.cached
    assert uncached is not None
    assert cached is not None
    admin, bumper = uncached.client(), cached.client()
    source = plane.kubernetes
    assert source is not None
    try:
        ns = await namespace(admin, "restart")
        await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service("web", ns))
        web_slice = k.endpoint_slice(
            "web-1", "web", ns, [k.endpoint("10.7.0.1")], api_version="discovery.k8s.io/v1beta1"
        )
        await create(admin, f"{BETA}/namespaces/{ns}/endpointslices", web_slice)
        await wait_for(lambda: source.synced and endpoints_of(source, "web") == ["10.7.0.1"], deadline=60)
        healthy = (await status_sources(plane.status_port))["kubernetes"]
        assert healthy["state"] == "synced"
        assert healthy["errors"] == []

        # Killed (as by the OOM killer or a node failure): a SIGTERM would wait for the watches to end.
        uncached.process.kill()
        await asyncio.to_thread(uncached.process.wait, 30)
        # The outage, long enough for each watcher's backoff to grow (several failed attempts):
        # errors shown, attempts going on, the sync not confirmed since.
        attempts: set[float] = set()

        async def failing_a_while() -> bool:
            kubernetes = (await status_sources(plane.status_port))["kubernetes"]
            attempts.add(kubernetes["last_attempt"])
            return len(kubernetes["errors"]) == 2 and len(attempts) >= 8

        await until(failing_a_while, "the outage to show, with attempts going on", every=0.1)
        down = (await status_sources(plane.status_port))["kubernetes"]
        assert down["state"] == "serving_last_good"
        assert down["last_attempt"] > down["last_success"]
        # Writes elsewhere in etcd meanwhile: once back, the server compacts past the watches' version.
        for index in range(3):
            await create(bumper, "/api/v1/namespaces", {"metadata": {"name": f"bump-{index}"}})

        loop = asyncio.get_running_loop()
        relisted_at: dict[str, float] = {}
        before = {watcher.resource.kind: watcher.relists for watcher in source.watchers}

        async def watch_relists() -> None:
            while len(relisted_at) < len(before):
                for watcher in source.watchers:
                    if watcher.relists > before[watcher.resource.kind]:
                        relisted_at.setdefault(watcher.resource.kind, loop.time())
                await asyncio.sleep(0.005)

        restarted_at = loop.time()
        restart(cluster, uncached)
        relists = asyncio.create_task(watch_relists())
        ready_at = await until(lambda: answers(admin), "the API server to answer again", every=0.05)
        await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service("api", ns))
        api_slice = k.endpoint_slice(
            "api-1", "api", ns, [k.endpoint("10.7.0.9")], api_version="discovery.k8s.io/v1beta1"
        )
        await create(admin, f"{BETA}/namespaces/{ns}/endpointslices", api_slice)

        async def api_served() -> bool:
            return endpoints_of(source, "api") is not None

        async def api_with_endpoints() -> bool:
            return endpoints_of(source, "api") == ["10.7.0.9"]

        async def errors_cleared() -> bool:
            return not (await status_sources(plane.status_port))["kubernetes"]["errors"]

        service_at = await until(api_served, "the new Service")
        slice_at = await until(api_with_endpoints, "the new Service's endpoints")
        cleared_at = await until(errors_cleared, "the errors to clear")
        back = (await status_sources(plane.status_port))["kubernetes"]
        assert back["state"] == "synced"
        assert back["last_success"] > down["last_success"]
        assert endpoints_of(source, "web") == ["10.7.0.1"]
        if back["counts"]["relists"] == len(before):  # both relisted (their version was compacted)
            await relists
            kinds = {kind: at - restarted_at for kind, at in relisted_at.items()}
            print(
                f"\nrestart: API server ready {ready_at - restarted_at:.2f} s after its start; relisted "
                + ", ".join(f"{kind} {seconds:.3f} s" for kind, seconds in sorted(kinds.items()))
                + f"; between the two relists {abs(kinds['Service'] - kinds['EndpointSlice']):.3f} s"
            )
        relists.cancel()
        print(
            f"\nrestart: relists {back['counts']['relists']}; after the server answered: new Service served "
            f"{service_at - ready_at:.2f} s, with its slice {slice_at - ready_at:.2f} s "
            f"(served without it for {max(0.0, slice_at - service_at):.3f} s), errors cleared "
            f"{max(0.0, cleared_at - ready_at):.2f} s; now {loop.time() - ready_at:.2f} s"
        )
    finally:
        await admin.close()
        await bumper.close()
