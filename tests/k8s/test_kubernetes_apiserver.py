"""The watch machinery against a real kube-apiserver (1.20) on a real etcd.

What the real server proves and the fake cannot: Service list/watch and resourceVersions as
Kubernetes makes them, BOOKMARK events, a real 410 Gone after etcd compaction, RBAC with the
ClusterRole of deploy/kubernetes/, and the fallback to `discovery.k8s.io/v1beta1` EndpointSlices
(1.20 serves no v1). Built by `make kube-apiserver` (scripts/kube-apiserver.sh); `make test`
builds it first; without it these tests fail (see tests/preconditions.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.kubernetes import KubernetesSource
from meshplane.discovery.kubernetes_watching import (
    ENDPOINT_SLICES_V1BETA1,
    SERVICES,
    Change,
    Gone,
    Watcher,
    list_objects,
)
from tests.k8s import objects as k
from tests.k8s.conftest import FAST_BACKOFF, wait_for
from tests.k8s.real_apiserver import (
    ADMIN_TOKEN,
    KUBE_MISSING,
    MESHPLANE_TOKEN,
    REPO,
    Cluster,
    RealApiServer,
    call,
    call_ok,
    module_cluster,
)
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(180), requires(KUBE_MISSING)]
DEPLOY = REPO / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("kube"))


@pytest.fixture
def uncached(cluster: Cluster) -> RealApiServer:
    assert cluster.uncached is not None
    return cluster.uncached


@pytest.fixture
async def admin(uncached: RealApiServer) -> AsyncIterator[ApiClient]:
    client = uncached.client()
    yield client
    await client.close()


async def create(client: ApiClient, path: str, body: Any) -> Any:
    return await call_ok(client, "POST", path, body)


async def namespace(client: ApiClient, name: str) -> str:
    await create(client, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def kube_service(name: str, ns: str, **labels: str) -> dict[str, Any]:
    body = k.service(name, ns, labels=labels or None)
    del body["spec"]["clusterIP"]  # the API server allocates one
    return body


async def test_services_list_and_watch(admin: ApiClient) -> None:
    ns = await namespace(admin, "watch")
    await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service("a", ns))
    seen: list[Change] = []
    watcher = Watcher(admin, SERVICES, namespace=ns, on_change=seen.extend, backoff=FAST_BACKOFF)
    task = asyncio.create_task(watcher.run())
    try:
        await wait_for(lambda: watcher.synced and list(watcher.objects) == [(ns, "a")])
        listed_at = int(watcher.resource_version)
        await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service("b", ns))
        status, current = await call(admin, "GET", f"/api/v1/namespaces/{ns}/services/a")
        assert status == 200
        current["metadata"]["labels"] = {"tier": "web"}
        assert (await call(admin, "PUT", f"/api/v1/namespaces/{ns}/services/a", current))[0] == 200
        assert (await call(admin, "DELETE", f"/api/v1/namespaces/{ns}/services/b"))[0] == 200
        await wait_for(lambda: sorted(name for _, name in watcher.objects) == ["a"] and len(seen) == 4)
        assert watcher.objects[(ns, "a")]["metadata"]["labels"] == {"tier": "web"}
        # Created, modified: fresh versions in order. (A DELETED event carries the object's last
        # version here, not the deletion's; the watcher never moves its own version back for it.)
        versions = [int(new["metadata"]["resourceVersion"]) for _, new in seen[1:3] if new is not None]
        assert listed_at < versions[0] < versions[1]
        assert int(watcher.resource_version) >= versions[1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_bookmarks_from_the_watch_cache(cluster: Cluster) -> None:
    assert cluster.cached is not None
    client = cluster.cached.client()
    try:
        ns = await namespace(client, "bookmarks")
        elsewhere = await namespace(client, "bookmarks-elsewhere")
        # 1.20's watch cache sends a bookmark 2 s before a watch's deadline (timeoutSeconds), and
        # only when it is past the watch's version (cacher.go): here, a change this watch does not see.
        watcher = Watcher(client, SERVICES, namespace=ns, timeout_seconds=5)
        task = asyncio.create_task(watcher.run_once())
        await wait_for(lambda: watcher.synced)
        unseen = await create(client, f"/api/v1/namespaces/{elsewhere}/services", kube_service("unseen", elsewhere))
        await task
        assert watcher.bookmarks >= 1
        assert watcher.objects == {}
        # The bookmark moved the version to resume from past the unseen change.
        assert int(watcher.resource_version) >= int(unseen["metadata"]["resourceVersion"])
    finally:
        await client.close()


async def test_a_real_410_gone_after_compaction_relists(admin: ApiClient) -> None:
    ns = await namespace(admin, "gone")
    _, stale = await list_objects(admin, SERVICES, ns)
    for name in ("one", "two", "three"):
        await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service(name, ns))
    # etcd is compacted every second (--etcd-compaction-interval=1s); watch from the stale version
    # until the server says 410.
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while True:
        probe = Watcher(admin, SERVICES, namespace=ns, timeout_seconds=1)
        probe.resource_version = stale
        try:
            await probe.run_once()
        except Gone:
            break
        assert loop.time() < end, "no 410 Gone within 60 s"
        await asyncio.sleep(0.5)
    # A watcher that held the stale version (it was disconnected meanwhile) relists and catches up.
    watcher = Watcher(admin, SERVICES, namespace=ns, backoff=FAST_BACKOFF, rng=random.Random(9))
    watcher.resource_version, watcher.synced = stale, True
    task = asyncio.create_task(watcher.run())
    try:
        await wait_for(lambda: watcher.relists == 1)
        assert sorted(name for _, name in watcher.objects) == ["one", "three", "two"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_v1beta1_endpoint_slices_when_v1_is_not_served(admin: ApiClient) -> None:
    ns = await namespace(admin, "beta")
    await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service("web", ns))
    beta = "/apis/discovery.k8s.io/v1beta1"
    slice_ = k.endpoint_slice("web-1", "web", ns, [k.endpoint("10.1.0.1")], api_version="discovery.k8s.io/v1beta1")
    await create(admin, f"{beta}/namespaces/{ns}/endpointslices", slice_)
    source = KubernetesSource(client=admin, namespaces=[ns], backoff=FAST_BACKOFF)
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: source.synced)
        assert source.slice_resource == ENDPOINT_SLICES_V1BETA1
        (web,) = source.content().services
        assert [e.address for e in web.endpoints] == ["10.1.0.1"]
        status, current = await call(admin, "GET", f"{beta}/namespaces/{ns}/endpointslices/web-1")
        assert status == 200
        current["endpoints"].append({"addresses": ["10.1.0.2"], "conditions": {"ready": True}})
        assert (await call(admin, "PUT", f"{beta}/namespaces/{ns}/endpointslices/web-1", current))[0] == 200
        await wait_for(lambda: [e.address for e in source.content().services[0].endpoints] == ["10.1.0.1", "10.1.0.2"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_rbac_with_the_manifests_cluster_role(admin: ApiClient, uncached: RealApiServer, tmp_path: Path) -> None:
    paths = {
        "Namespace": "/api/v1/namespaces",
        "ServiceAccount": "/api/v1/namespaces/meshplane/serviceaccounts",
        "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "Deployment": "/apis/apps/v1/namespaces/meshplane/deployments",
        "Service": "/api/v1/namespaces/meshplane/services",
    }
    # The manifests' identity and RBAC, and the Deployment using them, as written (every manifest is
    # posted to a real API server by tests/test_deploy_kubernetes.py).
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((DEPLOY / name).read_text()):
            if document["kind"] in paths:
                await create(admin, paths[document["kind"]], document)
    (role,) = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d["kind"] == "ClusterRole"]
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"list", "watch"}
    status, deployment = await call(admin, "GET", "/apis/apps/v1/namespaces/meshplane/deployments/meshplane")
    assert status == 200
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "meshplane"
    ns = await namespace(admin, "rbac")
    await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service("web", ns))

    # meshplane, as its ServiceAccount, through a kubeconfig: discovery works with just list/watch.
    kubeconfig = uncached.kubeconfig(tmp_path / "kubeconfig", MESHPLANE_TOKEN)
    source = KubernetesSource(kubeconfig=kubeconfig, backoff=FAST_BACKOFF)
    task = asyncio.create_task(source.run())
    limited = uncached.client(MESHPLANE_TOKEN)
    try:
        await wait_for(lambda: source.synced and any(s.ref.namespace == ns for s in source.content().services))
        # …and nothing more: no get, no writes.
        assert (await call(limited, "GET", f"/api/v1/namespaces/{ns}/services/web"))[0] == 403
        assert (await call(limited, "POST", f"/api/v1/namespaces/{ns}/services", kube_service("x", ns)))[0] == 403
        assert (await call(limited, "GET", "/api/v1/nodes"))[0] == 403
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await limited.close()


async def test_in_cluster_configuration_from_a_service_account(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No kubeconfig anywhere: the source uses the pod's service account (token and CA files, and
    KUBERNETES_SERVICE_HOST/PORT), verifying the API server's certificate against that CA."""
    uncached = cluster.uncached
    assert uncached is not None
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(ADMIN_TOKEN)
    # The API server made a self-signed certificate at start-up; its file holds the CA as well.
    (account / "ca.crt").write_bytes((cluster.workdir / "uncached-certs" / "apiserver.crt").read_bytes())
    host, port = uncached.url.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    admin = uncached.client()
    ns = await namespace(admin, "incluster")
    await create(admin, f"/api/v1/namespaces/{ns}/services", kube_service("web", ns))
    await admin.close()
    source = KubernetesSource(service_account=account, namespaces=[ns], backoff=FAST_BACKOFF)
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: source.synced and [s.name for s in source.content().services] == ["web"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
