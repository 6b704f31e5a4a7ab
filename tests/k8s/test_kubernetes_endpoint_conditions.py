"""EndpointSlice conditions and nodes, from a real kube-apiserver through meshplane to a real Envoy.

Run against two kinds of API server (the `target` fixture): Kubernetes 1.20 with the EndpointSlice
feature gates of `FEATURE_GATES` on, which stores `serving`, `terminating` and `nodeName` as 1.22
and later do by default, and 1.20 with its defaults, which drops them. What reaches Envoy is read
from Envoy's admin API (`/clusters`): each host's health status as EDS carried it, its priority
and its locality.

The rules (meshplane/discovery/kubernetes_mapping.py, docs/kubernetes.md): ready → HEALTHY;
serving but not ready → DEGRADED; terminating and serving → DRAINING at the lowest priority;
neither ready nor serving, or terminating and not serving → left out; `nodeName` (or the v1beta1
`kubernetes.io/hostname` topology key) → the locality's sub-zone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.app import ControlPlane
from meshplane.model import ServicePort, ServiceRef
from meshplane.xds import names
from tests.envoy_harness import Envoy, start_envoy
from tests.k8s.real_apiserver import (
    ADMIN_TOKEN,
    KUBE_MISSING,
    Cluster,
    RealApiServer,
    module_cluster,
)
from tests.k8s.test_kubernetes_apiserver import call_ok, namespace
from tests.k8s.test_kubernetes_app import settings_for
from tests.preconditions import requires

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.xdist_group("kube-apiserver"),
    pytest.mark.timeout(180),
    requires(KUBE_MISSING),
]

BETA = "/apis/discovery.k8s.io/v1beta1"
ZONE_KEY = "topology.kubernetes.io/zone"
HOSTNAME_KEY = "kubernetes.io/hostname"


@dataclass(frozen=True)
class ServerKind:
    """A kind of API server: its name in test ids, and whether it keeps the gated endpoint fields."""

    name: str
    gated: bool


GATED = ServerKind("1.20-with-gates", gated=True)
DEFAULTS = ServerKind("1.20-defaults", gated=False)


@dataclass(frozen=True)
class Target:
    kind: ServerKind
    server: RealApiServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("kube"), cached=False)


@pytest.fixture(scope="module", params=[GATED, DEFAULTS], ids=lambda kind: kind.name)
def target(request: pytest.FixtureRequest, cluster: Cluster) -> Target:
    kind: ServerKind = request.param
    if kind.gated:
        assert cluster.uncached is not None
        return Target(kind, cluster.uncached)
    return Target(kind, cluster.start_apiserver("defaults", feature_gates=None))


@pytest.fixture
async def admin(target: Target) -> AsyncIterator[ApiClient]:
    client = target.server.client(ADMIN_TOKEN)
    yield client
    await client.close()


async def namespace_with_web_service(client: ApiClient, name: str) -> str:
    await namespace(client, name)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": name},
        "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
    }
    await call_ok(client, "POST", f"/api/v1/namespaces/{name}/services", service)
    return name


def endpoint(
    address: str,
    *,
    ready: bool | None = None,
    serving: bool | None = None,
    terminating: bool | None = None,
    node: str = "",
    topology: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A v1beta1 endpoint (1.20 serves no v1): conditions left unset when None."""
    conditions = {
        key: value
        for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating))
        if value is not None
    }
    found: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if node:
        found["nodeName"] = node
    if topology:
        found["topology"] = topology
    return found


def web_slice(namespace: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-a", "namespace": namespace, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


# Every combination of conditions the API allows (None: not set), and the nodes and zones.
ENDPOINTS = [
    endpoint("10.1.0.1", ready=True, node="node-a", topology={ZONE_KEY: "zone-1"}),
    endpoint("10.1.0.2"),  # no conditions at all: ready, as the API documents
    endpoint("10.1.0.3", ready=False, serving=True, terminating=False, node="node-b"),
    endpoint("10.1.0.4", ready=False, serving=True, terminating=True, node="node-b"),
    endpoint("10.1.0.5", ready=False, serving=False, terminating=True, node="node-b"),
    endpoint("10.1.0.6", ready=False, serving=False, terminating=False),
    endpoint("10.1.0.7", ready=False),
    endpoint("10.1.0.8", ready=True, serving=True, terminating=True),  # allowed, though Kubernetes never writes it
    endpoint("10.1.0.9", ready=True, topology={HOSTNAME_KEY: "node-c"}),  # 1.20's controller sets this key too
]

# address → (health status, priority, (region, zone, sub-zone)) in Envoy's EDS; left out: absent.
Seen = dict[str, tuple[str, int, tuple[str, str, str]]]
NOWHERE = ("", "", "")
EXPECTED: dict[ServerKind, Seen] = {
    GATED: {
        "10.1.0.1": ("HEALTHY", 0, ("", "zone-1", "node-a")),
        "10.1.0.2": ("HEALTHY", 0, NOWHERE),
        "10.1.0.3": ("DEGRADED", 0, ("", "", "node-b")),
        "10.1.0.4": ("DRAINING", 1, ("", "", "node-b")),
        "10.1.0.8": ("DRAINING", 1, NOWHERE),
        "10.1.0.9": ("HEALTHY", 0, ("", "", "node-c")),
    },
    # 1.20's defaults store no serving, terminating or nodeName: a serving-but-not-ready or draining
    # endpoint is merely not ready (left out), a ready terminating one is ready, the node is unknown
    # unless the hostname topology key names it.
    DEFAULTS: {
        "10.1.0.1": ("HEALTHY", 0, ("", "zone-1", "")),
        "10.1.0.2": ("HEALTHY", 0, NOWHERE),
        "10.1.0.8": ("HEALTHY", 0, NOWHERE),
        "10.1.0.9": ("HEALTHY", 0, ("", "", "node-c")),
    },
}

# The pod on node-a starts draining while the one at 10.1.0.3 becomes ready.
MOVED = [
    endpoint("10.1.0.1", ready=False, serving=True, terminating=True, node="node-a", topology={ZONE_KEY: "zone-1"}),
    endpoint("10.1.0.3", ready=True, serving=True, terminating=False, node="node-b"),
]
EXPECTED_MOVED: dict[ServerKind, Seen] = {
    GATED: {
        "10.1.0.1": ("DRAINING", 1, ("", "zone-1", "node-a")),
        "10.1.0.3": ("HEALTHY", 0, ("", "", "node-b")),
    },
    DEFAULTS: {"10.1.0.3": ("HEALTHY", 0, NOWHERE)},
}


async def test_the_api_server_stores_the_gated_fields_only_with_the_gates(target: Target, admin: ApiClient) -> None:
    """The premise of the other test: with `FEATURE_GATES` a posted slice keeps `serving`,
    `terminating` and `nodeName`; with 1.20's defaults they are gone when it is read back."""
    ns = await namespace_with_web_service(admin, "stored")
    sent = web_slice(ns, [endpoint("10.1.0.4", ready=False, serving=True, terminating=True, node="node-b")])
    await call_ok(admin, "POST", f"{BETA}/namespaces/{ns}/endpointslices", sent)
    (stored,) = (await call_ok(admin, "GET", f"{BETA}/namespaces/{ns}/endpointslices/web-a"))["endpoints"]
    if target.kind.gated:
        assert stored["conditions"] == {"ready": False, "serving": True, "terminating": True}
        assert stored["nodeName"] == "node-b"
    else:
        assert stored["conditions"] == {"ready": False}
        assert "nodeName" not in stored


def _seen(clusters: dict[str, Any], cluster_name: str) -> Seen | None:
    """Envoy's hosts of `cluster_name`, from its admin `/clusters?format=json`; None until it has
    the cluster. `eds_health_status` is the status as EDS carried it (the config dump shows Envoy's
    coarse health instead, where DRAINING reads UNHEALTHY)."""
    for cluster in clusters.get("cluster_statuses", []):
        if cluster["name"] != cluster_name:
            continue
        seen: Seen = {}
        for host in cluster.get("host_statuses", []):
            locality = host.get("locality", {})
            where = (locality.get("region", ""), locality.get("zone", ""), locality.get("sub_zone", ""))
            health = host.get("health_status", {}).get("eds_health_status", "UNKNOWN")
            seen[host["address"]["socket_address"]["address"]] = (health, host.get("priority", 0), where)
        return seen
    return None


async def _wait_for_eds(envoy: Envoy, cluster_name: str, expected: Seen, what: str) -> None:
    last: list[Seen | None] = [None]

    async def check() -> bool:
        last[0] = _seen(json.loads(await envoy.admin("/clusters?format=json")), cluster_name)
        return last[0] == expected

    try:
        await envoy.eventually(check, what)
    except AssertionError:
        assert last[0] == expected, what  # shows the difference
        raise


async def test_endpoint_conditions_and_nodes_reach_envoy(target: Target, admin: ApiClient, tmp_path: Path) -> None:
    ns = await namespace_with_web_service(admin, "conditions")
    await call_ok(admin, "POST", f"{BETA}/namespaces/{ns}/endpointslices", web_slice(ns, ENDPOINTS))
    kubeconfig = target.server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)
    plane = ControlPlane(dataclasses.replace(settings_for(kubeconfig), namespaces=(ns,)))
    await plane.start()
    stop = asyncio.Event()
    task = asyncio.create_task(plane.run(stop))
    envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id=f"conditions-{target.kind.name}")
    cluster_name = names.endpoints_name(ServiceRef(ns, "web"), ServicePort("http", 8080))
    try:
        await _wait_for_eds(envoy, cluster_name, EXPECTED[target.kind], "every condition as the mapping says")
        # A change of conditions travels through the watch (a MODIFIED event) as well.
        current = await call_ok(admin, "GET", f"{BETA}/namespaces/{ns}/endpointslices/web-a")
        current["endpoints"] = MOVED
        await call_ok(admin, "PUT", f"{BETA}/namespaces/{ns}/endpointslices/web-a", current)
        await _wait_for_eds(envoy, cluster_name, EXPECTED_MOVED[target.kind], "a pod draining, another ready")
    finally:
        await envoy.stop()
        stop.set()
        await task
