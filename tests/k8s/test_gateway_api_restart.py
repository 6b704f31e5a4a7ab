"""The Gateway API source across a restart of a real kube-apiserver (1.20, watch cache on): the
outage shows as errors, and once the server is back every watch has relisted (the server's new
watch cache starts past the watches' versions, since etcd moved on meanwhile, so each resumed watch
gets 410 Gone), the errors clear, and objects created after the restart are read and their
GatewayClass status written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from meshplane.discovery.gateway_api.objects import HTTP_ROUTE
from meshplane.discovery.gateway_api.source import GatewayApiSource
from tests.k8s.conftest import FAST_BACKOFF, wait_for
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING, GROUP, apply_standard_crds
from tests.k8s.gateway_api_fixtures import V1
from tests.k8s.real_apiserver import KUBE_MISSING, Cluster, call_ok, module_cluster, wait_ready
from tests.k8s.test_gateway_api_apiserver import CLASSES, _condition, _route, gateway_class, namespace, until
from tests.k8s.test_kubernetes_apiserver_restart import restart
from tests.preconditions import require, requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("kube-gateway-api-restart"))


async def test_a_restarted_api_server_is_relisted_and_status_written_again(cluster: Cluster) -> None:
    require(GATEWAY_API_MISSING)
    cached, uncached = cluster.cached, cluster.uncached
    assert cached is not None
    assert uncached is not None
    admin, bumper = cached.client(), uncached.client()
    source = GatewayApiSource(client=admin, backoff=FAST_BACKOFF, rng=random.Random(11))
    task = asyncio.create_task(source.run())
    try:
        await apply_standard_crds(admin)
        ns = await namespace(admin, "restart")
        await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/httproutes", _route(ns, "before"))
        await call_ok(admin, "POST", CLASSES, gateway_class("meshplane"))
        await wait_for(lambda: source.synced and (ns, "before") in source.content().http_routes, deadline=90)
        await wait_for(lambda: source.writer.writes == 1, deadline=60, what="the first status write")
        relists = sum(w.relists for w in [*source.watchers.values(), *source.crd_watchers.values()])

        # Killed (no graceful end of the watches), and etcd moves on while it is down (the other
        # API server shares it): the new watch cache will start past every watch's version.
        cached.process.kill()
        await asyncio.to_thread(cached.process.wait, 30)
        await wait_for(lambda: len(source.status.errors) >= 2, deadline=60, what="the outage in the source's status")
        for index in range(3):
            await call_ok(bumper, "POST", "/api/v1/namespaces", {"metadata": {"name": f"bump-{index}"}})
        restart(cluster, cached)
        await asyncio.to_thread(wait_ready, cached)

        await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/httproutes", _route(ns, "after"))
        await call_ok(admin, "POST", CLASSES, gateway_class("meshplane-after"))
        changes = source.take_changes()

        def after_seen() -> bool:
            nonlocal changes
            changes |= source.take_changes()
            return (HTTP_ROUTE, (ns, "after")) in changes.changed

        await wait_for(after_seen, deadline=90, what="the route created after the restart")
        accepted = await until(lambda: _condition(admin, "meshplane-after", "Accepted"), "the new class accepted")
        assert accepted["status"] == "True"
        await wait_for(lambda: not source.status.errors, deadline=60, what=f"errors to clear: {source.status.errors}")
        watchers = [*source.watchers.values(), *source.crd_watchers.values()]
        # Every watch was resumed from a version the new watch cache no longer had: each relisted.
        assert all(watcher.relists >= 1 for watcher in watchers), [(str(w), w.relists) for w in watchers]
        assert sum(w.relists for w in watchers) > relists
        assert sorted(name for _, name in source.content().http_routes) == ["after", "before"]
        assert f"gatewayclasses.{GROUP}" in (source.bundle_versions() or {})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await admin.close()
        await bumper.close()
