"""The RBAC of deploy/kubernetes/meshplane-api/ on a real kube-apiserver (1.20, RBAC on): the role
grants exactly list/watch on meshplane's five kinds and their CRDs (by name) and patch on their
status; meshplane, run as its ServiceAccount with that role and rbac.yaml's (Services and
EndpointSlices), syncs and writes status; and every other write or read of the kinds is refused
by the server.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.meshplane_api.kinds import EXTERNAL_SERVICE, GROUP, KINDS
from meshplane.discovery.meshplane_api.source import crd_name
from tests.edge_plane import running_control_plane
from tests.k8s.gateway_api_fixtures import cluster_fixtures
from tests.k8s.gateway_api_fixtures import until as poll_until
from tests.k8s.meshplane_api_fixtures import (
    DEPLOY,
    admin,
    conditions_of,
    create,
    install_crds,
    manifest,
    manifests,
    namespace,
    path_of,
    plane_settings,
    read,
    source_entry,
)
from tests.k8s.real_apiserver import CRDS, KUBE_MISSING, MERGE_PATCH, MESHPLANE_TOKEN, RealApiServer, call
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]
__all__ = ["admin"]  # a fixture, found by pytest under this name

cluster, server = cluster_fixtures("kube-meshplane-api-rbac")
until = functools.partial(poll_until, interval=0.05)
PATHS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/meshplane/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
}


async def test_meshplane_runs_with_exactly_the_manifests_rbac_and_nothing_more(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    await install_crds(admin)
    folder = DEPLOY / "meshplane-api"
    kustomization = manifests(folder / "kustomization.yaml")[0]
    ours = [d for name in kustomization["resources"] for d in manifests(folder / name)]
    documents = [*manifests(DEPLOY / "namespace.yaml"), *manifests(DEPLOY / "serviceaccount.yaml")]
    documents += [*manifests(DEPLOY / "rbac.yaml"), *ours]
    for document in documents:
        status, answer = await call(admin, "POST", PATHS[document["kind"]], document)
        assert status in (201, 409), answer
    (role,) = [d for d in ours if d["kind"] == "ClusterRole"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == {
        **{(GROUP, kind.plural): {"list", "watch"} for kind in KINDS},
        **{(GROUP, f"{kind.plural}/status"): {"patch"} for kind in KINDS},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    (crd_rule,) = [rule for rule in role["rules"] if "customresourcedefinitions" in rule["resources"]]
    assert sorted(crd_rule["resourceNames"]) == sorted(crd_name(kind) for kind in KINDS)

    # meshplane, as its ServiceAccount: it syncs and writes status with exactly these roles.
    ns = await namespace(admin, "rbac-shop")
    await create(admin, EXTERNAL_SERVICE, "pay", ns, {"port": 8080, "endpoints": [{"address": "127.0.0.1"}]})
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", MESHPLANE_TOKEN)
    async with running_control_plane(plane_settings(server, kubeconfig)) as plane:

        async def accepted() -> dict[str, Any] | None:
            found = conditions_of(await read(admin, EXTERNAL_SERVICE, "pay", ns)).get("Accepted")
            return found if found is not None and found["status"] == "True" else None

        await until(accepted, "the status written as the ServiceAccount")
        entry = await source_entry(plane.status_port)
        assert entry is not None
        assert entry["state"] == "synced"
        assert entry["errors"] == []

    # …and nothing more.
    limited = server.client(MESHPLANE_TOKEN)
    try:
        path = path_of(EXTERNAL_SERVICE, ns, "pay")
        current = await read(admin, EXTERNAL_SERVICE, "pay", ns)
        assert (await call(limited, "GET", path))[0] == 403
        assert (await call(limited, "PATCH", path, {"spec": {"port": 9090}}, MERGE_PATCH))[0] == 403
        assert (await call(limited, "PUT", f"{path}/status", current))[0] == 403  # patch only
        assert (await call(limited, "DELETE", path))[0] == 403
        other = manifest(EXTERNAL_SERVICE, "new", ns, {"port": 8080})
        assert (await call(limited, "POST", path_of(EXTERNAL_SERVICE, ns), other))[0] == 403
        # The status may be patched (this object does not exist), the object itself never.
        assert (
            await call(limited, "PATCH", f"{path_of(EXTERNAL_SERVICE, ns, 'none')}/status", {"status": {}}, MERGE_PATCH)
        )[0] == 404
        assert (await call(limited, "GET", CRDS))[0] == 403  # not every CRD: only ours, by name
        assert (await call(limited, "GET", "/api/v1/secrets"))[0] == 403
    finally:
        await limited.close()
