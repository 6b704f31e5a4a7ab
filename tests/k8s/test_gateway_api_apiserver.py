"""The Gateway API source on a real kube-apiserver (1.20, its watch cache on) with the v1.6.1
standard-channel CRDs: the CRDs missing and then installed, GatewayClass ownership with status
written through the status subresource (ours Accepted and SupportedVersion with observedGeneration,
another controller's never written, no write when nothing changed), objects created, updated and
deleted seen in the content and change sets, the RBAC of deploy/kubernetes/gateway-api/ exactly,
and the source in a running control plane's `/status`.

Every wait polls a condition with a generous deadline; a negative ("never written") is proven with
a barrier: the status writer looks at classes in name order, so once a class named after the other
one is written, the other one has been looked at.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from meshplane.app import Settings
from meshplane.discovery.gateway_api.objects import GATEWAY, GRPC_ROUTE, HTTP_ROUTE, GatewayApiChanges
from meshplane.discovery.gateway_api.source import GatewayApiSource
from tests.edge_plane import running_control_plane
from tests.k8s.conftest import FAST_BACKOFF
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING, GROUP, apply_standard_crds, standard_crds
from tests.k8s.gateway_api_fixtures import (
    OURS,
    V1,
    admin_fixture,
    cluster_fixtures,
    ensure_crds,
)
from tests.k8s.gateway_api_fixtures import until as poll_until
from tests.k8s.real_apiserver import (
    ADMIN_TOKEN,
    CRDS,
    KUBE_MISSING,
    MERGE_PATCH,
    MESHPLANE_TOKEN,
    REPO,
    RealApiServer,
    call,
    call_ok,
)
from tests.preconditions import require, requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]
CLASSES = f"{V1}/gatewayclasses"
DEPLOY = REPO / "deploy" / "kubernetes"


cluster, server = cluster_fixtures("kube-gateway-api")
admin = admin_fixture(serving=False)


# Polls more often than the serving tests: these wait on the API server alone.
until = functools.partial(poll_until, interval=0.02)


async def holds(check: Callable[[], Any]) -> Any:
    return check()


async def start(source: GatewayApiSource, tasks: list[asyncio.Task[None]]) -> GatewayApiSource:
    tasks.append(asyncio.create_task(source.run()))
    return source


@pytest.fixture
async def running(admin: ApiClient) -> AsyncIterator[Callable[..., Awaitable[GatewayApiSource]]]:
    """Starts GatewayApiSources (through `admin` unless given a client or kubeconfig); stopped at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def run(**options: Any) -> GatewayApiSource:
        if "kubeconfig" not in options:
            options.setdefault("client", admin)
        options.setdefault("backoff", FAST_BACKOFF)
        options.setdefault("rng", random.Random(5))
        return await start(GatewayApiSource(**options), tasks)

    yield run
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def gateway_class(name: str, controller: str = OURS, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller, **spec},
    }


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


async def read_class(admin: ApiClient, name: str) -> dict[str, Any]:
    return dict(await call_ok(admin, "GET", f"{CLASSES}/{name}"))


async def namespace(client: ApiClient, name: str) -> str:
    await call_ok(
        client, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    return name


async def test_without_the_crds_the_source_says_so_and_recovers_once_they_are_installed(
    admin: ApiClient, running: Callable[..., Awaitable[GatewayApiSource]]
) -> None:
    require(GATEWAY_API_MISSING)
    assert (await call(admin, "GET", f"{CRDS}/gatewayclasses.{GROUP}"))[0] == 404, "this test runs before the CRDs"
    source = await running()
    missing = await until(
        lambda: holds(lambda: [e for e in source.status.errors if "the Gateway API CRDs are not installed" in e]),
        "the missing CRDs to be reported",
    )
    status = source.status
    assert not status.synced
    # One error says it all: the watches failing with 404 for want of their CRD are not listed too.
    assert list(status.errors) == missing
    for plural in ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies"):
        assert f"{plural}.{GROUP}" in missing[0]

    await apply_standard_crds(admin)
    await until(lambda: holds(lambda: source.synced and not source.status.errors), "the source to sync")
    await call_ok(admin, "POST", CLASSES, gateway_class("recovered"))
    accepted = await until(
        lambda: _condition(admin, "recovered", "Accepted"), "the class created after the CRDs to be accepted"
    )
    assert accepted["status"] == "True"


async def _condition(admin: ApiClient, name: str, kind: str, generation: int = 1) -> dict[str, Any] | None:
    found = conditions_of(await read_class(admin, name)).get(kind)
    if found is None or found.get("observedGeneration") != generation or found.get("reason") == "Pending":
        return None
    return found


async def test_owned_classes_get_conditions_and_other_controllers_classes_nothing(
    admin: ApiClient, running: Callable[..., Awaitable[GatewayApiSource]]
) -> None:
    await ensure_crds(admin)
    # Created first and named to sort first: by the time ours is written, it has been looked at.
    other = await call_ok(admin, "POST", CLASSES, gateway_class("a-other", "example.com/other-controller"))
    await call_ok(admin, "POST", CLASSES, gateway_class("meshplane", description="first"))
    source = await running(now=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))

    accepted = await until(lambda: _condition(admin, "meshplane", "Accepted"), "ours to be accepted")
    written = conditions_of(await read_class(admin, "meshplane"))
    assert accepted == {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "meshplane accepts this class",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-01-02T03:04:05Z",
    }
    version = written["SupportedVersion"]
    assert (version["status"], version["reason"], version["observedGeneration"]) == ("True", "SupportedVersion", 1)
    assert "v1.6.1" in version["message"]
    # The other controller's class: never written (still the API server's default), not even looked at twice.
    untouched = await read_class(admin, "a-other")
    assert untouched["metadata"]["resourceVersion"] == other["metadata"]["resourceVersion"]
    assert [c["reason"] for c in conditions_of(untouched).values()] == ["Pending"]
    assert source.status.counts["owned_gateway_classes"] >= 1

    # A spec change: a new generation, observed; the transition times stay (no status changed).
    source_writes = source.writer.writes
    await call_ok(admin, "PATCH", f"{CLASSES}/meshplane", {"spec": {"description": "second"}}, MERGE_PATCH)
    bumped = await until(lambda: _condition(admin, "meshplane", "Accepted", generation=2), "observedGeneration 2")
    assert bumped["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert conditions_of(await read_class(admin, "meshplane"))["SupportedVersion"]["observedGeneration"] == 2
    assert source.writer.writes == source_writes + 1

    # Nothing changed that the status depends on (a label): looked at, nothing written.
    skipped, writes = source.writer.skipped, source.writer.writes
    labelled = await call_ok(
        admin, "PATCH", f"{CLASSES}/meshplane", {"metadata": {"labels": {"team": "edge"}}}, MERGE_PATCH
    )
    await until(lambda: holds(lambda: source.writer.skipped > skipped), "the labelled class to be looked at")
    assert source.writer.writes == writes
    assert (await read_class(admin, "meshplane"))["metadata"]["resourceVersion"] == labelled["metadata"][
        "resourceVersion"
    ]

    # Parameters: refused, the time of Accepted's transition moves, SupportedVersion's does not.
    await call_ok(
        admin,
        "PATCH",
        f"{CLASSES}/meshplane",
        {"spec": {"parametersRef": {"group": "example.com", "kind": "Config", "name": "x"}}},
        MERGE_PATCH,
    )
    refused = await until(lambda: _condition(admin, "meshplane", "Accepted", generation=3), "InvalidParameters")
    assert (refused["status"], refused["reason"]) == ("False", "InvalidParameters")
    # The other class is still as created.
    assert (await read_class(admin, "a-other"))["metadata"]["resourceVersion"] == other["metadata"]["resourceVersion"]


def _route(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}], **spec}
    return {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns}, "spec": body}


async def test_objects_created_updated_and_deleted_show_in_content_and_change_sets(
    admin: ApiClient, running: Callable[..., Awaitable[GatewayApiSource]]
) -> None:
    await ensure_crds(admin)
    source = await running()
    await until(lambda: holds(lambda: source.synced), "the first lists")
    source.take_changes()  # the first: everything
    ns = await namespace(admin, "objects")
    gateway = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": ns},
        "spec": {
            "gatewayClassName": "meshplane",
            "listeners": [
                {"name": "http", "protocol": "HTTP", "port": 80},
                # Forbidden by a CEL rule that 1.20 does not run: meshplane refuses it itself.
                {"name": "raw", "protocol": "TCP", "port": 9000, "hostname": "raw.example.com"},
            ],
        },
    }
    grpc_route = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "health", "namespace": ns},
        "spec": {"rules": [{"matches": [{"method": {"service": "grpc.health.v1.Health"}}]}]},
    }
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/gateways", gateway)
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/httproutes", _route(ns, "web"))
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/grpcroutes", grpc_route)
    changes = GatewayApiChanges()

    async def collected(expected: set[tuple[str, tuple[str, str]]]) -> bool:
        nonlocal changes
        changes |= source.take_changes()
        return expected <= changes.changed

    created = {(GATEWAY, (ns, "edge")), (HTTP_ROUTE, (ns, "web")), (GRPC_ROUTE, (ns, "health"))}
    await until(lambda: collected(created), "the created objects in the change sets")
    assert changes.changed == created
    content = source.content()
    edge = content.gateways[(ns, "edge")]
    assert [listener.name for listener in edge.value.listeners] == ["http", "raw"]
    assert [str(p) for p in edge.problems] == [
        f"Gateway {ns}/edge: spec.listeners[1]: hostname must not be specified for protocol TCP"
    ]
    assert any("hostname must not be specified" in note for note in source.status.notes)
    assert source.status.feeds_mesh
    (rule,) = content.http_routes[(ns, "web")].value.rules
    assert rule.backends[0].ref.port == 8080
    assert rule.matches[0].path.value == "/"  # the API server's default, and meshplane's

    # An update names that object only; the other kinds' mappings are the very ones served before.
    await call_ok(
        admin, "PATCH", f"{V1}/namespaces/{ns}/httproutes/web", {"spec": {"hostnames": ["web.example"]}}, MERGE_PATCH
    )
    changes = GatewayApiChanges()
    await until(lambda: collected({(HTTP_ROUTE, (ns, "web"))}), "the update in the change set")
    assert changes.changed == {(HTTP_ROUTE, (ns, "web"))}
    updated = source.content()
    assert updated.http_routes[(ns, "web")].value.hostnames == ("web.example",)
    assert updated.gateways is content.gateways
    assert updated.grpc_routes is content.grpc_routes

    await call_ok(admin, "DELETE", f"{V1}/namespaces/{ns}/gateways/edge")
    changes = GatewayApiChanges()
    await until(lambda: collected({(GATEWAY, (ns, "edge"))}), "the deletion in the change set")
    assert (ns, "edge") not in source.content().gateways
    assert not any("hostname must not be specified" in note for note in source.status.notes)


async def test_a_status_write_coming_back_on_the_watch_is_no_change(
    admin: ApiClient, running: Callable[..., Awaitable[GatewayApiSource]]
) -> None:
    await ensure_crds(admin)
    calls: list[None] = []
    source = await running(on_change=lambda: calls.append(None))
    await until(lambda: holds(lambda: source.synced), "the first lists")
    ns = await namespace(admin, "status-echo")
    routes = f"{V1}/namespaces/{ns}/httproutes"
    await call_ok(admin, "POST", routes, _route(ns, "web"))
    await call_ok(admin, "POST", routes, _route(ns, "barrier"))
    changes = GatewayApiChanges()

    async def collected(expected: set[tuple[str, tuple[str, str]]]) -> bool:
        nonlocal changes
        changes |= source.take_changes()
        return expected <= changes.changed

    await until(lambda: collected({(HTTP_ROUTE, (ns, "web")), (HTTP_ROUTE, (ns, "barrier"))}), "the routes")
    held = source.content().http_routes[(ns, "web")]
    called = len(calls)

    condition = {
        "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
        "lastTransitionTime": "2026-12-07T05:00:00Z", "observedGeneration": 1,
    }  # fmt: skip
    parents = [{"parentRef": {"name": "edge"}, "controllerName": "example.com/other", "conditions": [condition]}]
    await call_ok(admin, "PATCH", f"{routes}/web/status", {"status": {"parents": parents}}, MERGE_PATCH)
    # The barrier: one watch brings one kind's events in order, so once this spec change is in,
    # the status write before it has come back too.
    await call_ok(admin, "PATCH", f"{routes}/barrier", {"spec": {"hostnames": ["b.example"]}}, MERGE_PATCH)
    changes = GatewayApiChanges()
    await until(lambda: collected({(HTTP_ROUTE, (ns, "barrier"))}), "the barrier's change")
    watched = source.watchers[HTTP_ROUTE].objects[(ns, "web")]
    # The status write did come back (the API server defaulting the parentRef's group and kind)…
    assert [parent["controllerName"] for parent in watched["status"]["parents"]] == ["example.com/other"]
    assert changes.changed == {(HTTP_ROUTE, (ns, "barrier"))}  # …and is no change
    assert source.content().http_routes[(ns, "web")] is held  # not even read again
    assert len(calls) == called + 1  # the barrier's call only

    # A change of the spec after it is one, as before.
    await call_ok(admin, "PATCH", f"{routes}/web", {"spec": {"hostnames": ["web.example"]}}, MERGE_PATCH)
    changes = GatewayApiChanges()
    await until(lambda: collected({(HTTP_ROUTE, (ns, "web"))}), "the spec change")
    assert source.content().http_routes[(ns, "web")].value.hostnames == ("web.example",)


def _manifests(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


async def test_the_source_runs_with_exactly_the_manifests_rbac(
    admin: ApiClient, server: RealApiServer, running: Callable[..., Awaitable[GatewayApiSource]], tmp_path: Path
) -> None:
    await ensure_crds(admin)
    paths = {
        "Namespace": "/api/v1/namespaces",
        "ServiceAccount": "/api/v1/namespaces/meshplane/serviceaccounts",
        "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "GatewayClass": CLASSES,
    }
    folder = DEPLOY / "gateway-api"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    documents = [*_manifests(DEPLOY / "namespace.yaml"), *_manifests(DEPLOY / "serviceaccount.yaml")]
    documents += [d for name in kustomization["resources"] for d in _manifests(folder / name)]
    for document in documents:
        status, answer = await call(admin, "POST", paths[document["kind"]], document)
        assert status == 201 or (status == 409 and document["kind"] == "GatewayClass"), answer
    (role,) = [d for d in documents if d["kind"] == "ClusterRole"]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    kinds = ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies"]
    assert granted == {
        **{(GROUP, kind): {"list", "watch"} for kind in kinds},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("", "namespaces"): {"list", "watch"},
        ("", "configmaps"): {"list", "watch"},  # BackendTLSPolicies' CA certificates, each watched by name
        **{
            (GROUP, f"{kind}/status"): {"patch"}
            for kind in ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "backendtlspolicies")
        },
    }

    # meshplane, as its ServiceAccount: everything the source does works with exactly this role.
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", MESHPLANE_TOKEN)
    source = await running(kubeconfig=kubeconfig)
    await until(lambda: holds(lambda: source.synced), "the source to sync as the ServiceAccount")
    # The manifest's class (the deployment's, whatever another test wrote there) carries our conditions.
    await until(lambda: holds(lambda: source.writer.writes + source.writer.skipped > 0), "the class looked at")
    written = conditions_of(await read_class(admin, "meshplane"))
    assert written["Accepted"]["reason"] in ("Accepted", "InvalidParameters")
    assert not source.status.errors

    # …and nothing more.
    limited = server.client(MESHPLANE_TOKEN)
    try:
        assert (await call(limited, "GET", f"{CLASSES}/meshplane"))[0] == 403
        spec_write = {"spec": {"description": "x"}}
        assert (await call(limited, "PATCH", f"{CLASSES}/meshplane", spec_write, MERGE_PATCH))[0] == 403
        assert (await call(limited, "PUT", f"{CLASSES}/meshplane/status", await read_class(admin, "meshplane")))[
            0
        ] == 403
        ns = "rbac-gateways"
        await namespace(admin, ns)
        gateway_status: dict[str, Any] = {"status": {"conditions": []}}
        path = f"{V1}/namespaces/{ns}/gateways/none"
        # A Gateway's status may be patched (this one does not exist), the Gateway itself never.
        assert (await call(limited, "PATCH", f"{path}/status", gateway_status, MERGE_PATCH))[0] == 404
        assert (await call(limited, "PATCH", path, {"spec": {"listeners": []}}, MERGE_PATCH))[0] == 403
        assert (await call(limited, "GET", CRDS))[0] == 403  # not every CRD: only these, by name
        assert (await call(limited, "GET", "/api/v1/secrets"))[0] == 403
    finally:
        await limited.close()


async def status_sources(port: int) -> dict[str, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/status") as response,
    ):
        document = await response.json()
    return {source["name"]: source for source in document["sources"]}


async def test_a_control_plane_with_gateway_api_shows_the_source_in_status(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    await ensure_crds(admin)
    assert Settings(gateway_api=True).problems() == ["--gateway-api needs --kubernetes (MESHPLANE_KUBERNETES=true)"]
    bad = Settings(kubernetes=True, gateway_api=True, gateway_controller_name="nope").problems()
    assert len(bad) == 1
    assert bad[0].startswith("--gateway-controller-name: the gateway controller name 'nope'")
    settings = Settings(
        kubernetes=True,
        gateway_api=True,
        gateway_controller_name="example.com/plane-test",
        kubeconfig=server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN),
        xds_address="127.0.0.1:0",
        status_address="127.0.0.1:0",
        debounce_quiet=0.01,
        debounce_max=0.1,
        shutdown_grace=0.2,
    )
    await call_ok(admin, "POST", CLASSES, gateway_class("plane-test", "example.com/plane-test"))
    async with running_control_plane(settings) as plane:
        assert plane.gateway_api is not None

        async def synced() -> dict[str, Any] | None:
            found = (await status_sources(plane.status_port)).get("gateway-api")
            return found if found is not None and found["state"] == "synced" else None

        shown = await until(synced, "the gateway-api source in /status, synced")
        assert not any("not built" in note for note in shown["notes"])
        assert shown["counts"]["owned_gateway_classes"] == 1
        accepted = await until(lambda: _condition(admin, "plane-test", "Accepted"), "the plane's class accepted")
        assert accepted["status"] == "True"
        sources = await status_sources(plane.status_port)
        assert {"kubernetes", "gateway-api"} <= set(sources)


def test_the_crds_watched_are_the_standard_channels() -> None:
    require(GATEWAY_API_MISSING)
    from meshplane.discovery.gateway_api.source import KINDS

    installed = {crd["metadata"]["name"]: crd for crd in standard_crds()}
    for kind in KINDS:
        crd = installed[kind.crd]
        served = {version["name"] for version in crd["spec"]["versions"] if version["served"]}
        assert "v1" in served, kind.crd
        assert crd["spec"]["names"]["kind"] == kind.name
