"""End to end: ExternalService, TrafficPolicy and MeshRoute objects on a real kube-apiserver (1.20,
with deploy/kubernetes/crds/) served by a running control plane to a real sidecar Envoy.

- The Envoy routes to the ExternalServices' endpoints (HTTP servers on 127.0.0.1): the MeshRoute
  sends `/v2` to the second service with a response header, the rest to the first.
- The TrafficPolicy's settings are in the Envoy's config_dump (connect timeout, load balancing).
- `Programmed` turns True (reason `Programmed`, "all 1 connected proxies") once the Envoy has
  ACKed the configuration generation that carries each object's generation.
- A refused TrafficPolicy generation (`Accepted=False`) leaves the last good one in the Envoy.

Every wait polls a condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.meshplane_api.kinds import EXTERNAL_SERVICE, MESH_ROUTE, TRAFFIC_POLICY
from tests.edge_plane import running_control_plane
from tests.envoy_harness import Envoy, start_backend, start_envoy
from tests.k8s.gateway_api_fixtures import cluster_fixtures
from tests.k8s.gateway_api_fixtures import until as poll_until
from tests.k8s.meshplane_api_fixtures import (
    admin,
    conditions_of,
    create,
    install_crds,
    namespace,
    plane_settings,
    read,
    set_spec,
)
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, RealApiServer
from tests.preconditions import requires

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.xdist_group("kube-apiserver"),
    pytest.mark.timeout(300),
    requires(KUBE_MISSING),
]
__all__ = ["admin"]  # a fixture, found by pytest under this name

cluster, server = cluster_fixtures("kube-meshplane-api-envoy")
until = functools.partial(poll_until, interval=0.05)


def policy(timeout: str) -> dict[str, Any]:
    return {
        "target_refs": [{"group": "meshplane.io", "kind": "ExternalService", "name": "pay"}],
        "connect_timeout": timeout,
        "load_balancing": "least_request",
    }


async def pay_cluster(envoy: Envoy) -> dict[str, Any] | None:
    """The Envoy's cluster of ExternalService shop/pay (its config_dump entry), once it has one."""
    dump = await envoy.config_dump("dynamic_active_clusters")
    for entry in dump.get("configs", []):
        cluster = entry.get("cluster") or {}
        name = str(cluster.get("name", ""))
        if "pay" in name and "shop" in name and "v2" not in name:
            return dict(cluster)
    return None


def programmed(admin: ApiClient, kind: str, name: str, generation: int) -> Any:
    """A check for `until`: the object's Programmed condition once it is True for `generation`."""

    async def check() -> dict[str, Any] | None:
        found = conditions_of(await read(admin, kind, name, "shop")).get("Programmed")
        if found is None or found["observedGeneration"] != generation or found["status"] != "True":
            return None
        return found

    return check


async def test_external_services_policies_and_routes_reach_a_real_envoy_and_turn_programmed(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    await install_crds(admin)
    ns = await namespace(admin, "shop")
    one, two = await start_backend("one"), await start_backend("two")
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)
    async with running_control_plane(plane_settings(server, kubeconfig)) as plane:
        envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id="meshplane-api-e2e")
        try:

            async def connected() -> bool:
                # Connected and sent configuration: only then does the Envoy count among the proxies
                # a new generation waits for (a stream that was sent nothing yet is not waited on).
                streams = plane.registry.streams()
                return any(entry.sent_seq for track in streams for entry in track.types.values())

            await until(connected, "the Envoy connected and sent its first configuration")
            await create(
                admin,
                EXTERNAL_SERVICE,
                "pay",
                ns,
                {"port": 8080, "endpoints": [{"address": "127.0.0.1", "port": one.port}]},
            )
            await create(
                admin,
                EXTERNAL_SERVICE,
                "pay-v2",
                ns,
                {"port": 8080, "endpoints": [{"address": "127.0.0.1", "port": two.port}]},
            )
            await create(admin, TRAFFIC_POLICY, "pay", ns, policy("700ms"))
            route = {
                "service": "pay",
                "rules": [
                    {
                        "match": {"path": {"prefix": "/v2"}},
                        "backends": [{"service": "pay-v2"}],
                        "response_headers": {"set": {"x-mesh-route": "v2"}},
                    },
                    {"backends": [{"service": "pay"}]},
                ],
            }
            await create(admin, MESH_ROUTE, "pay", ns, route)

            def answered(path: str, backend: str, header: str | None = None) -> Any:
                async def check() -> bool:
                    status, body, headers = await envoy.request("pay.shop", path)
                    return status == 200 and body.startswith(f"{backend} ") and headers.get("x-mesh-route") == header

                return check

            await envoy.eventually(answered("/", "one"), "traffic to the ExternalService's endpoint")
            await envoy.eventually(answered("/v2/orders", "two", "v2"), "the MeshRoute's /v2 rule")

            async def policy_in_dump() -> dict[str, Any] | None:
                found = await pay_cluster(envoy)
                return found if found is not None and found.get("connect_timeout") == "0.700s" else None

            cluster = await envoy.eventually(policy_in_dump, "the TrafficPolicy in the Envoy's config_dump")
            assert cluster["lb_policy"] == "LEAST_REQUEST"

            for kind, name in ((EXTERNAL_SERVICE, "pay"), (TRAFFIC_POLICY, "pay"), (MESH_ROUTE, "pay")):
                found = await until(programmed(admin, kind, name, 1), f"{kind} {name} programmed")
                assert found["reason"] in ("Programmed", "NoProxies"), found
            # The policy was created after the Envoy connected: its generation waited for the ACK.
            found = await until(programmed(admin, TRAFFIC_POLICY, "pay", 1), "the policy programmed")
            assert found["reason"] == "Programmed"
            assert found["message"].startswith("all 1 connected proxies acknowledged")

            # A new generation: Programmed again once the Envoy holds it.
            await set_spec(admin, TRAFFIC_POLICY, "pay", ns, policy("900ms"))
            found = await until(programmed(admin, TRAFFIC_POLICY, "pay", 2), "generation 2 programmed")
            assert found["reason"] == "Programmed"
            cluster = await pay_cluster(envoy)
            assert cluster is not None
            assert cluster["connect_timeout"] == "0.900s"  # ACKed: the Envoy holds it

            # Refused: the last good generation stays in the Envoy.
            await set_spec(admin, TRAFFIC_POLICY, "pay", ns, policy("500s"))

            async def refused() -> dict[str, Any] | None:
                found = conditions_of(await read(admin, TRAFFIC_POLICY, "pay", ns))
                accepted = found.get("Accepted") or {}
                return found if accepted.get("observedGeneration") == 3 and accepted["status"] == "False" else None

            found_all = await until(refused, "the bad generation refused")
            assert found_all["Programmed"]["reason"] == "Invalid"
            assert "generation 2, the last accepted, is still served" in found_all["Programmed"]["message"]
            cluster = await pay_cluster(envoy)
            assert cluster is not None
            assert cluster["connect_timeout"] == "0.900s"
            assert await answered("/", "one")()
        finally:
            await envoy.stop()
            await one.close()
            await two.close()
