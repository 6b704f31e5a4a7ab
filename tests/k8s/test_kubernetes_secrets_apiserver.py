"""Secrets against a real kube-apiserver (1.20): the `type=` field selector and the label selector
as the real server applies them, a rotation and a deletion, with meshplane's ServiceAccount bound
by deploy/kubernetes/rbac.yaml plus the optional deploy/kubernetes/secrets/secrets-rbac.yaml."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.kubernetes import KubernetesSource
from tests.k8s import objects as k
from tests.k8s.conftest import FAST_BACKOFF, wait_for
from tests.k8s.real_apiserver import (
    KUBE_MISSING,
    MESHPLANE_TOKEN,
    REPO,
    Cluster,
    RealApiServer,
    module_cluster,
)
from tests.k8s.test_kubernetes_apiserver import call, create, namespace
from tests.preconditions import requires
from tests.tls_certs import issue, make_ca

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(180), requires(KUBE_MISSING)]
RBAC = {
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("kube"))


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[ApiClient]:
    assert cluster.uncached is not None
    client = cluster.uncached.client()
    yield client
    await client.close()


async def test_labelled_secrets_of_served_types_with_the_optional_rbac(
    cluster: Cluster, admin: ApiClient, tmp_path: Path
) -> None:
    uncached: RealApiServer | None = cluster.uncached
    assert uncached is not None
    for manifest in ("rbac.yaml", "secrets/secrets-rbac.yaml"):
        for document in yaml.safe_load_all((REPO / "deploy" / "kubernetes" / manifest).read_text()):
            await create(admin, RBAC[document["kind"]], document)
    ca = make_ca(tmp_path / "certs")
    one, two = issue(ca, tmp_path / "certs", "one", "DNS:one"), issue(ca, tmp_path / "certs", "two", "DNS:two")
    ns = await namespace(admin, "sds")
    secrets = f"/api/v1/namespaces/{ns}/secrets"
    pem = ca.certificate.read_text()

    def tls(pair: Any, **kwargs: Any) -> dict[str, Any]:
        return k.tls_secret("web-tls", ns, pair.certificate.read_text(), pair.key.read_text(), ca=pem, **kwargs)

    await create(admin, secrets, tls(one))
    await create(admin, secrets, k.ca_secret("mesh-ca", ns, pem))
    await create(admin, secrets, k.secret("no-ca", ns, {"other": "x"}, type_="Opaque"))
    await create(admin, secrets, k.ca_secret("unlabelled", ns, pem, labels=None))
    await create(admin, secrets, k.secret("custom", ns, {"ca.crt": pem}, type_="example.com/custom"))

    kubeconfig = uncached.kubeconfig(tmp_path / "kubeconfig", MESHPLANE_TOKEN)
    source = KubernetesSource(kubeconfig=kubeconfig, namespaces=[ns], secrets=True, backoff=FAST_BACKOFF)
    task = asyncio.create_task(source.run())
    limited = uncached.client(MESHPLANE_TOKEN)

    def names() -> tuple[list[str], list[str]]:
        content = source.content()
        return [c.name for c in content.certificates], [b.name for b in content.trust_bundles]

    try:
        await wait_for(lambda: source.synced, what="the first list")
        assert names() == (["sds/web-tls"], ["sds/mesh-ca#ca", "sds/web-tls#ca"])
        # The custom type and the unlabelled Secret never reached meshplane: the server filtered them.
        assert source.status.counts["kubernetes_secrets"] == 3
        assert source.status.notes == ("secret sds/no-ca: an Opaque secret must hold ca.crt; not served",)

        status, current = await call(admin, "GET", f"{secrets}/web-tls")
        assert status == 200
        current["data"]["tls.crt"] = base64.b64encode(two.certificate.read_bytes()).decode()
        current["data"]["tls.key"] = base64.b64encode(two.key.read_bytes()).decode()
        assert (await call(admin, "PUT", f"{secrets}/web-tls", current))[0] == 200
        rotated = two.certificate.read_text()
        await wait_for(lambda: source.content().certificates[0].certificate_chain == rotated, what="the rotation")
        assert (await call(admin, "DELETE", f"{secrets}/web-tls"))[0] == 200
        await wait_for(lambda: names() == ([], ["sds/mesh-ca#ca"]), what="the deletion")

        # What the grant allows: list (whatever the labels: RBAC cannot restrict by label); no writes.
        assert (await call(limited, "GET", secrets))[0] == 200
        assert (await call(limited, "POST", secrets, k.ca_secret("x", ns, pem)))[0] == 403
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await limited.close()
