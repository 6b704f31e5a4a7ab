"""The mesh (GAMMA) from a real kube-apiserver (v1.6.1 standard-channel CRDs): an HTTPRoute and a
GRPCRoute whose parentRef is a Service configure a real sidecar Envoy and grpcio's own xDS client.

- HTTPRoute with parent Service `web`: a header match sends to `canary`, the rest is split 1:1;
  the route's status for the Service parent says Accepted and ResolvedRefs True.
- A consumer route (in another namespace, sending to its parent Service) is accepted with its
  references resolved, without a ReferenceGrant; the sidecar here says no namespace, so the
  producer route is what it serves.
- GRPCRoute with parent Service `greeter`: the SayHello call reaches `greeter-two`.

Every wait polls a condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.demo.greeter import start_greeter
from tests.envoy_harness import start_envoy
from tests.k8s import objects as k
from tests.k8s.gateway_api_crds import GROUP
from tests.k8s.gateway_api_fixtures import OURS, V1
from tests.k8s.real_apiserver import KUBE_MISSING, RealApiServer, call_ok
from tests.k8s.test_gateway_api_serving import (  # noqa: F401  (fixtures)
    SLICES,
    Echo,
    admin,
    backend_service,
    by_type,
    cluster,
    namespace,
    read,
    server,
    serving_plane,
    until_holds,
)
from tests.preconditions import requires
from tests.test_grpc_xds_client import run_client, write_grpc_bootstrap

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.xdist_group("kube-apiserver"),
    pytest.mark.timeout(300),
    requires(KUBE_MISSING),
]


def service_parent(name: str, namespace: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": name}
    if namespace is not None:
        ref["namespace"] = namespace
    return ref


def route(kind: str, ns: str, name: str, parents: list[dict[str, Any]], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": kind,
        "metadata": {"namespace": ns, "name": name},
        "spec": {"parentRefs": parents, "rules": rules},
    }


async def service_parent_conditions(client: ApiClient, path: str) -> dict[str, dict[str, Any]]:
    obj = await read(client, path)
    parents = [
        p
        for p in (obj.get("status") or {}).get("parents") or ()
        if p.get("controllerName") == OURS and p.get("parentRef", {}).get("kind") == "Service"
    ]
    return by_type(parents[0]["conditions"]) if parents else {}


async def grpc_service(client: ApiClient, ns: str, name: str, port: int) -> None:
    """Service `ns/name` on port 50051, appProtocol grpc, its one endpoint 127.0.0.1:`port`."""
    body = k.service(name, ns, ports=[k.port("grpc", 50051)])
    del body["spec"]["clusterIP"]
    body["spec"]["ports"][0]["appProtocol"] = "grpc"
    await call_ok(client, "POST", f"/api/v1/namespaces/{ns}/services", body)
    endpoints = k.endpoint_slice(
        f"{name}-1", name, ns, [k.endpoint("127.0.0.1")], [("grpc", port)], api_version="discovery.k8s.io/v1beta1"
    )
    await call_ok(client, "POST", f"{SLICES}/namespaces/{ns}/endpointslices", endpoints)


async def test_routes_with_a_service_parent_configure_sidecars_and_grpc_clients(
    admin: ApiClient,  # noqa: F811
    server: RealApiServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    ns = await namespace(admin, "gamma")
    consumer_ns = await namespace(admin, "gamma-consumer")
    web, canary = await Echo("web").start(), await Echo("canary").start()
    await backend_service(admin, ns, "web", web)
    await backend_service(admin, ns, "canary", canary)
    greeters = {name: await start_greeter(name) for name in ("greeter-1", "greeter-2")}
    await grpc_service(admin, ns, "greeter", greeters["greeter-1"][1])
    await grpc_service(admin, ns, "greeter-two", greeters["greeter-2"][1])
    rules: list[dict[str, Any]] = [
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
         "backendRefs": [{"name": "canary", "port": 8080}]},
        {"backendRefs": [{"name": "web", "port": 8080, "weight": 1}, {"name": "canary", "port": 8080, "weight": 1}]},
    ]  # fmt: skip
    await call_ok(
        admin, "POST", f"{V1}/namespaces/{ns}/httproutes", route("HTTPRoute", ns, "web", [service_parent("web")], rules)
    )
    to_parent = [{"backendRefs": [{"name": "web", "namespace": ns, "port": 8080}]}]
    consumer = route("HTTPRoute", consumer_ns, "web", [service_parent("web", ns)], to_parent)
    await call_ok(admin, "POST", f"{V1}/namespaces/{consumer_ns}/httproutes", consumer)
    grpc_rules = [
        {"matches": [{"method": {"service": "meshplane.demo.Greeter", "method": "SayHello"}}],
         "backendRefs": [{"name": "greeter-two", "port": 50051}]},
    ]  # fmt: skip
    grpc_route = route("GRPCRoute", ns, "greeter", [service_parent("greeter")], grpc_rules)
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/grpcroutes", grpc_route)

    try:
        async with serving_plane(server, tmp_path) as plane:
            found = await until_holds(
                lambda: service_parent_conditions(admin, f"{V1}/namespaces/{ns}/httproutes/web"),
                lambda c: c.get("Accepted", {}).get("status") == "True",
                "the producer route Accepted for its Service parent",
            )
            assert found["ResolvedRefs"]["status"] == "True"
            consumer_status = await until_holds(
                lambda: service_parent_conditions(admin, f"{V1}/namespaces/{consumer_ns}/httproutes/web"),
                lambda c: c.get("Accepted", {}).get("status") == "True",
                "the consumer route Accepted for its Service parent",
            )
            assert consumer_status["ResolvedRefs"]["status"] == "True", consumer_status

            envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id="sidecar-gamma", delta=True)
            try:
                host = f"web.{ns}.svc.cluster.local:8080"

                async def answered(headers: dict[str, str] | None = None) -> str | None:
                    status, body, _ = await envoy.request(host, "/", headers)
                    return body if status == 200 else None

                await envoy.eventually(
                    lambda: _has(answered({"x-canary": "yes"}), '"canary"'), "x-canary: yes to reach canary"
                )
                seen: set[str] = set()

                async def both() -> bool:
                    body = await answered()
                    if body is not None:
                        seen.add("canary" if '"canary"' in body else "web")
                    return seen == {"web", "canary"}

                await envoy.eventually(both, "the 1:1 split to reach both web and canary")
            finally:
                await envoy.stop()

            bootstrap = write_grpc_bootstrap(tmp_path / "grpc-bootstrap.json", plane.xds_port)
            replies = await run_client(bootstrap, f"xds:///greeter.{ns}.svc.cluster.local:50051", "ada")
            assert replies == ["hello ada from greeter-2"]
            grpc_found = await until_holds(
                lambda: service_parent_conditions(admin, f"{V1}/namespaces/{ns}/grpcroutes/greeter"),
                lambda c: c.get("Accepted", {}).get("status") == "True",
                "the GRPCRoute Accepted for its Service parent",
            )
            assert grpc_found["ResolvedRefs"]["status"] == "True"
    finally:
        await web.close()
        await canary.close()
        for grpc_server, _ in greeters.values():
            await grpc_server.stop(None)


async def _has(found: Any, text: str) -> bool:
    body = await found
    return body is not None and text in body
