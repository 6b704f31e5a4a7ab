"""The control plane with Kubernetes enabled (through a kubeconfig pointing at the fake API server):
nothing published and not ready before the first full list; policy files and Kubernetes merged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from meshplane.app import ControlPlane, Settings
from meshplane.model import ServiceRef
from tests.k8s import objects as k
from tests.k8s.conftest import wait_for
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.merging import errors


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
                "current-context": "fake",
            }
        )
    )
    return path


async def start_plane(settings: Settings) -> tuple[ControlPlane, asyncio.Event, asyncio.Task[None]]:
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    return plane, stop, asyncio.create_task(plane.run(stop))


@pytest.fixture
async def plane_factory() -> AsyncIterator[list[tuple[asyncio.Event, asyncio.Task[None]]]]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    yield running
    for stop, task in running:
        stop.set()
        await task


def settings_for(kubeconfig: Path, config: Path | None = None) -> Settings:
    return Settings(
        config=config,
        kubernetes=True,
        kubeconfig=kubeconfig,
        xds_address="127.0.0.1:0",
        status_address="127.0.0.1:0",
        debounce_quiet=0.01,
        debounce_max=0.1,
        shutdown_grace=0.2,
    )


async def readyz(port: int) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, await response.text()


async def test_nothing_is_published_or_ready_before_the_first_full_list(
    tmp_path: Path, apiserver: FakeApiServer, plane_factory: list[tuple[asyncio.Event, asyncio.Task[None]]]
) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(k.endpoint_slice("web-1", "web", endpoints=[k.endpoint("10.0.0.1")]))
    apiserver.fail_next_requests(10**6, 503, path_contains="endpointslices")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)
    plane, stop, task = await start_plane(settings_for(kubeconfig))
    plane_factory.append((stop, task))
    assert plane.kubernetes is not None
    await wait_for(lambda: any(w.synced for w in plane.kubernetes.watchers), what="services listed")  # type: ignore[union-attr]
    plane.debouncer.poke()
    await asyncio.sleep(0)  # let a (refused) rebuild run if it would
    status, text = await readyz(plane.status_port)
    assert status == 503
    assert "kubernetes" in text  # the reason names the source that has not synced
    assert plane.publisher.state.published_at is None
    apiserver.clear_failures()
    await wait_for(lambda: plane.publisher.state.published_at is not None, what="the first publication")
    assert (await readyz(plane.status_port))[0] == 200


async def test_policy_files_and_kubernetes_meet_in_one_mesh(
    tmp_path: Path, apiserver: FakeApiServer, plane_factory: list[tuple[asyncio.Event, asyncio.Task[None]]]
) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(k.endpoint_slice("web-1", "web", endpoints=[k.endpoint("10.0.0.1")]))
    apiserver.apply(k.service("api"))  # also defined by the policy files: theirs wins
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mesh.yaml").write_text(
        """services:
  - name: api
    port: 8080
    endpoints: [{address: 10.9.9.9, port: 8080}]
routes:
  - name: web-canary
    service: api
    rules:
      - match: {path: {prefix: /web/}}
        to: [{service: web}]
      - to: [{service: api}]
"""
    )
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)
    plane, stop, task = await start_plane(settings_for(kubeconfig, policy))
    plane_factory.append((stop, task))
    await wait_for(lambda: plane.publisher.state.published_at is not None)
    merged = plane.inventory.mesh
    assert merged is not None
    refs = {str(s.ref): s for s in merged.services}
    assert sorted(refs) == ["default/api", "default/web"]
    assert refs["default/api"].origin.endswith("mesh.yaml:2")
    assert [r.name for r in merged.routes] == ["web-canary"]  # a policy-file route to a Kubernetes service
    (clash,) = errors(plane.inventory)
    assert "default/api is defined by policy files" in clash
    sources = {source.name: source for source in plane._sources()}
    assert sources["inventory"].errors == (clash,)
    # The Kubernetes service goes away: the route to it is left out, with a reason; the rest serves.
    apiserver.delete("Service", "default", "web")
    await wait_for(lambda: any("unknown service default/web" in e for e in errors(plane.inventory)))
    merged = plane.inventory.mesh
    assert merged is not None
    assert merged.routes == ()
    assert merged.service(ServiceRef("default", "api")) is not None


async def test_an_endpoint_change_is_published_on_the_fast_path(
    tmp_path: Path, apiserver: FakeApiServer, plane_factory: list[tuple[asyncio.Event, asyncio.Task[None]]]
) -> None:
    for name in ("web", "api", "db"):
        apiserver.apply(k.service(name))
        apiserver.apply(k.endpoint_slice(f"{name}-1", name, endpoints=[k.endpoint("10.0.0.1")]))
    plane, stop, task = await start_plane(settings_for(write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)))
    plane_factory.append((stop, task))
    await wait_for(lambda: plane.publisher.state.published_at is not None)
    before, generation = plane.inventory.mesh, plane.publisher.state.mesh_generation
    assert before is not None
    apiserver.apply(k.endpoint_slice("api-1", "api", endpoints=[k.endpoint("10.0.0.2")]))
    await wait_for(lambda: plane.publisher.state.mesh_generation > generation)
    after = plane.inventory.mesh
    assert after is not None
    assert plane.publisher.state.endpoints_only
    # Only the changed service is a new object; the others are the very objects published before.
    assert [a.name for a, b in zip(after.services, before.services, strict=True) if a is not b] == ["api"]
