"""Custom resources on the real kube-apiserver (1.20) and etcd: a CustomResourceDefinition with a
status subresource, its objects created, watched and their status written; and the Gateway API
standard-channel CRDs (tests/k8s/gateway_api_crds.py) with a GatewayClass, a Gateway and an
HTTPRoute.

The API server of scripts/kube-apiserver.sh's first recipe died (`fatal error: fault` in reflect2,
under json-iterator, with Go >= 1.18) on the first custom-resource create: these tests are what
notices if it ever does again. The server here keeps its watch cache, as a cluster's does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.kubernetes_watching import Resource, list_objects, watch_events
from tests.k8s.conftest import wait_for
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING, GROUP, apply_standard_crds, standard_crds
from tests.k8s.real_apiserver import (
    CRDS,
    KUBE_MISSING,
    MERGE_PATCH,
    Cluster,
    call,
    call_ok,
    crd_condition,
    module_cluster,
    wait_established,
)
from tests.preconditions import require, requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(180), requires(KUBE_MISSING)]

WIDGET_GROUP = "test.meshplane.io"
WIDGETS = Resource("Widget", f"/apis/{WIDGET_GROUP}/v1", "widgets")
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{WIDGET_GROUP}"},
    "spec": {
        "group": WIDGET_GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer"}, "color": {"type": "string"}},
                            },
                            "status": {
                                "type": "object",
                                "properties": {"ready": {"type": "boolean"}, "observedSize": {"type": "integer"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}
GATEWAY_API_CRD_NAMES = sorted(
    f"{plural}.{GROUP}"
    for plural in (
        "backendtlspolicies",
        "gatewayclasses",
        "gateways",
        "grpcroutes",
        "httproutes",
        "listenersets",
        "referencegrants",
        "tcproutes",
        "tlsroutes",
        "udproutes",
    )
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("kube-crd"), uncached=False)


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[ApiClient]:
    assert cluster.cached is not None
    client = cluster.cached.client()
    yield client
    await client.close()


async def namespace(client: ApiClient, name: str) -> str:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await call_ok(client, "POST", "/api/v1/namespaces", body)
    return name


async def test_a_custom_resource_is_created_watched_and_its_status_written_through_the_subresource(
    admin: ApiClient,
) -> None:
    await call_ok(admin, "POST", CRDS, WIDGET_CRD)
    crd = (await wait_established(admin, [f"widgets.{WIDGET_GROUP}"]))[f"widgets.{WIDGET_GROUP}"]
    assert crd_condition(crd, "NamesAccepted")["status"] == "True"
    ns = await namespace(admin, "widgets")
    listed, version = await list_objects(admin, WIDGETS, ns)
    assert listed == []

    events: list[dict[str, Any]] = []
    opened = asyncio.Event()

    async def watch() -> None:
        async for event in watch_events(admin, WIDGETS, version, ns, opened=opened.set):
            if event["type"] != "BOOKMARK":
                events.append(event)

    watching = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(opened.wait(), 30)
        path = f"{WIDGETS.path(ns)}/blue"
        body = {"apiVersion": f"{WIDGET_GROUP}/v1", "kind": "Widget", "metadata": {"name": "blue"}}
        created = await call_ok(admin, "POST", WIDGETS.path(ns), {**body, "spec": {"size": 1, "color": "blue"}})
        assert created["spec"] == {"size": 1, "color": "blue"}
        assert created["metadata"]["generation"] == 1

        # A write of the object itself changes its spec and never its status.
        spec_write = {"spec": {"size": 2}, "status": {"ready": True}}
        written = await call_ok(admin, "PATCH", path, spec_write, MERGE_PATCH)
        assert written["spec"] == {"size": 2, "color": "blue"}
        assert "status" not in written
        assert written["metadata"]["generation"] == 2

        await wait_for(lambda: len(events) >= 2, what="ADDED and MODIFIED")
        assert [event["type"] for event in events] == ["ADDED", "MODIFIED"]
        assert [event["object"]["spec"]["size"] for event in events] == [1, 2]

        # A write through /status changes the status and never the spec (nor the generation).
        status_write = {"spec": {"size": 99}, "status": {"ready": True, "observedSize": 2}}
        written = await call_ok(admin, "PATCH", f"{path}/status", status_write, MERGE_PATCH)
        assert written["status"] == {"ready": True, "observedSize": 2}
        assert written["spec"] == {"size": 2, "color": "blue"}
        assert written["metadata"]["generation"] == 2

        # A whole-object PUT with another status: the spec part is taken, the status part is not.
        current = await call_ok(admin, "GET", path)
        current["spec"]["color"] = "red"
        current["status"] = {"ready": False, "observedSize": 0}
        written = await call_ok(admin, "PUT", path, current)
        assert written["spec"] == {"size": 2, "color": "red"}
        assert written["status"] == {"ready": True, "observedSize": 2}

        # An empty string is a string (a 1.20 built with a newer Go refused it as null).
        empty = await call_ok(
            admin, "POST", WIDGETS.path(ns), {**body, "metadata": {"name": "plain"}, "spec": {"color": ""}}
        )
        assert empty["spec"] == {"color": ""}

        await wait_for(lambda: len(events) >= 5, what="the status write, the PUT and the second create, watched")
        assert [event["type"] for event in events] == ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "ADDED"]
        assert events[3]["object"]["spec"] == {"size": 2, "color": "red"}
        assert events[3]["object"]["status"] == {"ready": True, "observedSize": 2}
        assert await call_ok(admin, "GET", path) == events[3]["object"]
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


def test_the_standard_channel_is_the_ten_crds_without_the_admission_policy() -> None:
    require(GATEWAY_API_MISSING)
    assert sorted(crd["metadata"]["name"] for crd in standard_crds()) == GATEWAY_API_CRD_NAMES


async def test_the_gateway_api_standard_crds_are_established_and_their_objects_served(admin: ApiClient) -> None:
    require(GATEWAY_API_MISSING)
    established = await apply_standard_crds(admin)
    assert sorted(established) == GATEWAY_API_CRD_NAMES
    for name, crd in established.items():
        assert crd_condition(crd, "NamesAccepted")["status"] == "True", name

    v1 = f"/apis/{GROUP}/v1"
    ns = await namespace(admin, "gateways")
    gateway_class = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "meshplane"},
        "spec": {"controllerName": "meshplane.io/gateway-controller"},
    }
    gateway = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": ns},
        "spec": {"gatewayClassName": "meshplane", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
    }
    route = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "hostnames": ["web.example.com"],
            "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}],
        },
    }
    await call_ok(admin, "POST", f"{v1}/gatewayclasses", gateway_class)
    await call_ok(admin, "POST", f"{v1}/namespaces/{ns}/gateways", gateway)
    await call_ok(admin, "POST", f"{v1}/namespaces/{ns}/httproutes", route)

    read_class = await call_ok(admin, "GET", f"{v1}/gatewayclasses/meshplane")
    assert read_class["spec"]["controllerName"] == "meshplane.io/gateway-controller"
    read_route = await call_ok(admin, "GET", f"{v1}/namespaces/{ns}/httproutes/web")
    # The schema's defaults are applied, the empty `group` (the core group) of a backend among them.
    assert read_route["spec"]["parentRefs"] == [{"group": GROUP, "kind": "Gateway", "name": "edge"}]
    (rule,) = read_route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["backendRefs"] == [{"group": "", "kind": "Service", "name": "web", "port": 8080, "weight": 1}]

    gateway_path = f"{v1}/namespaces/{ns}/gateways/edge"
    read_gateway = await call_ok(admin, "GET", gateway_path)
    assert read_gateway["spec"]["listeners"] == [
        {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "Same"}}}
    ]
    accepted = {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "",
        "observedGeneration": read_gateway["metadata"]["generation"],
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    read_gateway["status"] = {"conditions": [accepted]}
    written = await call_ok(admin, "PUT", f"{gateway_path}/status", read_gateway)
    assert written["status"]["conditions"] == [accepted]
    assert (await call_ok(admin, "GET", gateway_path))["status"]["conditions"] == [accepted]
    # Not every write is taken: a Gateway without listeners breaks the schema's minItems.
    status, answer = await call(admin, "PUT", gateway_path, {**written, "spec": {"gatewayClassName": "meshplane"}})
    assert status == 422, answer
