"""BackendTLSPolicy on a real kube-apiserver with the v1.6.1 standard-channel CRDs.

- The source watches exactly the ConfigMaps the policies' `caCertificateRefs` name (one watch
  each, selected by name): their `ca.crt` is read, an unrelated ConfigMap is not, a deletion is
  seen, and a change of one is in the change set.
- The policy's `status.ancestors` is written with our controllerName for the Gateway reaching its
  Service, by a source running as meshplane's ServiceAccount with exactly the RBAC of
  deploy/kubernetes/gateway-api/ (its ConfigMap reads and its status writes): `Accepted=False
  NoValidCACertificate` / `ResolvedRefs=False InvalidCACertificateRef` while the CA ConfigMap is
  missing, `Accepted=True` once it exists.

Every wait polls a condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.gateway_api.objects import GatewayApiChanges
from meshplane.discovery.gateway_api.resolve import resolve, resolve_backend_tls
from meshplane.discovery.gateway_api.source import CONFIG_MAP, GatewayApiSource
from meshplane.model import Endpoint, Protocol, Service, ServicePort, ServiceRef
from tests.k8s.conftest import FAST_BACKOFF
from tests.k8s.gateway_api_crds import GROUP
from tests.k8s.gateway_api_fixtures import (
    OURS,
    V1,
    admin_fixture,
    cluster_fixtures,
    ensure_crds,
)
from tests.k8s.real_apiserver import (
    KUBE_MISSING,
    MESHPLANE_TOKEN,
    REPO,
    RealApiServer,
    call,
    call_ok,
)
from tests.k8s.test_gateway_api_apiserver import gateway_class, holds, namespace, until
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


cluster, server = cluster_fixtures("kube-backend-tls")
admin = admin_fixture(serving=False)


@pytest.fixture
async def running(admin: ApiClient) -> AsyncIterator[Callable[..., Awaitable[GatewayApiSource]]]:
    """Starts GatewayApiSources through `admin`; stopped at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def run(**options: Any) -> GatewayApiSource:
        if "kubeconfig" not in options:
            options["client"] = admin
        source = GatewayApiSource(backoff=FAST_BACKOFF, rng=random.Random(5), **options)
        tasks.append(asyncio.create_task(source.run()))
        return source

    yield run
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def config_map(name: str, ca: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"ca.crt": ca}}


def backend_tls_policy(name: str, service: str, ca: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": service}],
            "validation": {
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": ca}],
                "hostname": "web.example.com",
            },
        },
    }


async def test_the_source_watches_exactly_the_ca_config_maps_policies_name(
    admin: ApiClient, running: Callable[..., Awaitable[GatewayApiSource]]
) -> None:
    await ensure_crds(admin)
    ns = await namespace(admin, "btls-watch")
    source = await running()
    await until(lambda: holds(lambda: source.synced), "the source to sync")
    await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/configmaps", config_map("unrelated", PEM))
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/backendtlspolicies", backend_tls_policy("p", "web", "ca"))
    await until(lambda: holds(lambda: (ns, "p") in source.content().backend_tls_policies), "the policy read")
    await until(lambda: holds(lambda: list(source.config_maps) == [(ns, "ca")]), "one watch, for ca")
    source.take_changes()
    assert source.ca_certificates() == {}

    await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/configmaps", config_map("ca", PEM))
    await until(lambda: holds(lambda: source.ca_certificates() == {(ns, "ca"): PEM}), "the CA read")
    changes = await until(lambda: holds(lambda: source.take_changes() or None), "a change set")
    assert isinstance(changes, GatewayApiChanges)
    assert (CONFIG_MAP, (ns, "ca")) in changes.changed
    assert (ns, "unrelated") not in source.ca_certificates()

    await call_ok(admin, "DELETE", f"/api/v1/namespaces/{ns}/configmaps/ca")
    await until(lambda: holds(lambda: source.ca_certificates() == {}), "the deletion seen")
    await call_ok(admin, "DELETE", f"{V1}/namespaces/{ns}/backendtlspolicies/p")
    # The watches follow the content as its reader (the merge) reads it.
    await until(lambda: holds(lambda: source.content() and source.config_maps == {}), "the watch stopped")


def _by_type(ancestor: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in ancestor.get("conditions") or []}


async def apply_rbac(admin: ApiClient) -> None:
    """meshplane's Namespace, ServiceAccount and the Gateway API role of deploy/kubernetes/, as written."""
    deploy = REPO / "deploy" / "kubernetes"
    paths = {
        "Namespace": "/api/v1/namespaces",
        "ServiceAccount": "/api/v1/namespaces/meshplane/serviceaccounts",
        "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    }
    files = [deploy / "namespace.yaml", deploy / "serviceaccount.yaml", deploy / "gateway-api/gateway-api-rbac.yaml"]
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None and document["kind"] in paths:
                status, answer = await call(admin, "POST", paths[document["kind"]], document)
                assert status in (201, 409), answer


async def test_the_policy_status_names_the_gateway_and_follows_its_ca_config_map(
    admin: ApiClient, server: RealApiServer, running: Callable[..., Awaitable[GatewayApiSource]], tmp_path: Path
) -> None:
    await ensure_crds(admin)
    await apply_rbac(admin)
    ns = await namespace(admin, "btls-status")
    await call(admin, "POST", f"{V1}/gatewayclasses", gateway_class("btls"))
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/gateways", {
        "apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "edge"},
        "spec": {"gatewayClassName": "btls", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    })  # fmt: skip
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/httproutes", {
        "apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "web", "port": 443}]}]},
    })  # fmt: skip
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/backendtlspolicies", backend_tls_policy("p", "web", "ca"))
    web = Service(name="web", namespace=ns, ports=(ServicePort("https", 443, Protocol.HTTP1),),
                  endpoints=(Endpoint("10.0.0.1", 443, "https"),))  # fmt: skip
    services = {ServiceRef(ns, "web"): web}
    source = await running(controller_name=OURS, kubeconfig=server.kubeconfig(tmp_path / "kubeconfig", MESHPLANE_TOKEN))

    def publish() -> bool:
        """What the merge does on each change: resolve, apply the policies, hand the writer the status."""
        if not source.synced:
            return False
        content = source.content()
        resolution = resolve(content, OURS, services, frozenset())
        resolution = resolve_backend_tls(resolution, content, services, source.ca_certificates())
        source.gateway_writer.update(resolution.status)
        return (ns, "p") in resolution.status.backend_tls_policies

    async def ancestor() -> dict[str, tuple[str, str]] | None:
        publish()
        policy = await call_ok(admin, "GET", f"{V1}/namespaces/{ns}/backendtlspolicies/p")
        ours = [a for a in (policy.get("status") or {}).get("ancestors") or [] if a.get("controllerName") == OURS]
        if len(ours) != 1 or ours[0]["ancestorRef"] != {
            "group": GROUP, "kind": "Gateway", "namespace": ns, "name": "edge"
        }:  # fmt: skip
            return None
        return _by_type(ours[0])

    missing = {"Accepted": ("False", "NoValidCACertificate"), "ResolvedRefs": ("False", "InvalidCACertificateRef")}
    await until(lambda: _when(ancestor, missing), "the missing CA reported")
    await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/configmaps", config_map("ca", PEM))
    accepted = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    await until(lambda: _when(ancestor, accepted), "the policy accepted once its CA exists")
    assert not source.status.errors


async def _when(
    read: Callable[[], Awaitable[dict[str, tuple[str, str]] | None]], expected: dict[str, tuple[str, str]]
) -> dict[str, tuple[str, str]] | None:
    """What `read` found, when it is `expected`; None otherwise (so `until` keeps polling, showing None)."""
    found = await read()
    return found if found == expected else None
