"""meshplane's own objects on a real kube-apiserver (1.20) served by a running control plane, and
the status it writes on them through the status subresource: `Accepted`, `ResolvedRefs` and
`Programmed` with `observedGeneration`; `lastTransitionTime` kept while a condition's status
stays; a refused generation (a duration the CRD's pattern allows and the model refuses, a route to
a service that does not exist) `Accepted=False`/`ResolvedRefs=False` with the reason on the object
and in `/status`, while the last good version stays served; an object outside
`--watch-namespaces` ignored, listed in `/status`, and never written.

Every wait polls a condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.app import ControlPlane
from meshplane.discovery.meshplane_api.kinds import EXTERNAL_SERVICE, MESH_ROUTE, TRAFFIC_POLICY
from meshplane.model import ServiceRef
from tests.edge_plane import running_control_plane
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
    source_entry,
)
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, RealApiServer
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]
__all__ = ["admin"]  # a fixture, found by pytest under this name

cluster, server = cluster_fixtures("kube-meshplane-api-status")
until = functools.partial(poll_until, interval=0.05)

SERVICE = {"port": 8080, "endpoints": [{"address": "127.0.0.1", "port": 9000}]}
POLICY = {"target_refs": [{"group": "meshplane.io", "kind": "ExternalService", "name": "pay"}], "connect_timeout": "2s"}
ROUTE = {"service": "pay", "rules": [{"backends": [{"service": "pay"}]}]}


def conditions_at(
    admin: ApiClient, kind: str, name: str, ns: str, generation: int, wanted: dict[str, str] | None = None
) -> Any:
    """A check for `until`: the object's conditions once every one observed `generation` (and
    those of `wanted` have that status), else None."""

    async def check() -> dict[str, dict[str, Any]] | None:
        found = conditions_of(await read(admin, kind, name, ns))
        if not found or any(c.get("observedGeneration") != generation for c in found.values()):
            return None
        if wanted and any(found.get(type_, {}).get("status") != status for type_, status in wanted.items()):
            return None
        return found

    return check


def served_policy_timeout(plane: ControlPlane, ns: str) -> float | None:
    service = next((s for s in plane.inventory.mesh.services if s.ref == ServiceRef(ns, "pay")), None)
    return service.policy.connect_timeout if service is not None else None


async def test_status_is_written_and_a_refused_generation_leaves_the_last_good_one_served(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    await install_crds(admin)
    ns, outside = await namespace(admin, "shop"), await namespace(admin, "outside")
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)
    async with running_control_plane(plane_settings(server, kubeconfig, watch_namespaces=(ns,))) as plane:
        await create(admin, EXTERNAL_SERVICE, "pay", ns, SERVICE)
        await create(admin, TRAFFIC_POLICY, "pay", ns, POLICY)
        await create(admin, MESH_ROUTE, "pay", ns, ROUTE)
        await create(admin, EXTERNAL_SERVICE, "stray", outside, SERVICE)

        everything_true = {"Accepted": "True", "ResolvedRefs": "True", "Programmed": "True"}
        for kind in (EXTERNAL_SERVICE, TRAFFIC_POLICY, MESH_ROUTE):
            found = await until(
                conditions_at(admin, kind, "pay", ns, 1, {"Accepted": "True", "Programmed": "True"}), f"{kind} accepted"
            )
            assert {t: c["status"] for t, c in found.items() if t in everything_true}.items() <= everything_true.items()
            assert found["Programmed"]["reason"] == "NoProxies"  # no proxy is connected in this test
            for condition in found.values():
                assert condition["lastTransitionTime"].endswith("Z")
                assert condition["reason"]
        await until(lambda: _holds(served_policy_timeout(plane, ns) == 2.0), "the policy served")
        first = conditions_of(await read(admin, EXTERNAL_SERVICE, "pay", ns))

        # A new generation that stays accepted: observedGeneration moves, lastTransitionTime stays.
        await set_spec(admin, EXTERNAL_SERVICE, "pay", ns, {**SERVICE, "port": 8081})
        second = await until(conditions_at(admin, EXTERNAL_SERVICE, "pay", ns, 2), "generation 2 observed")
        assert second["Accepted"]["lastTransitionTime"] == first["Accepted"]["lastTransitionTime"]

        # Refused by the model (the CRD's pattern takes "500s"; connect_timeout is at most 300s).
        await set_spec(admin, TRAFFIC_POLICY, "pay", ns, {**POLICY, "connect_timeout": "500s"})
        refused = await until(
            conditions_at(admin, TRAFFIC_POLICY, "pay", ns, 2, {"Accepted": "False"}), "the bad policy refused"
        )
        assert "connect_timeout" in refused["Accepted"]["message"]
        assert refused["Accepted"]["reason"] == "Invalid"
        assert refused["Programmed"]["status"] == "False"
        assert refused["Programmed"]["reason"] == "Invalid"
        assert "generation 1, the last accepted, is still served" in refused["Programmed"]["message"]
        assert served_policy_timeout(plane, ns) == 2.0  # the last good version still serves

        # A route to a service that does not exist.
        await set_spec(admin, MESH_ROUTE, "pay", ns, {"service": "pay", "rules": [{"backends": [{"service": "nope"}]}]})
        unresolved = await until(conditions_at(admin, MESH_ROUTE, "pay", ns, 2), "the route's generation 2 observed")
        not_true = {t: c for t, c in unresolved.items() if c["status"] == "False"}
        assert {"Accepted", "ResolvedRefs"} & set(not_true), unresolved
        assert any("nope" in c["message"] for c in not_true.values()), unresolved
        assert unresolved["Programmed"]["status"] == "False"
        assert unresolved["Programmed"]["reason"] == "Invalid"

        # /status: the source synced, the ignored object listed; the ignored object never written.
        # Synced once no write or watch is being retried: on a loaded machine a status write can
        # time out and be retried, and the source says so until it lands.
        seen: list[dict[str, Any] | None] = [None]

        async def synced() -> bool:
            seen[0] = await source_entry(plane.status_port)
            return seen[0] is not None and seen[0]["state"] == "synced"

        try:
            await poll_until(synced, "the source synced on /status")
        except AssertionError as error:
            raise AssertionError(f"{error}; the source's last entry: {seen[0]}") from None
        entry = seen[0]
        assert entry is not None
        assert entry["counts"]["ignored_objects"] == 1
        assert any(f"ExternalService {outside}/stray" in note for note in entry["notes"])
        assert entry["events"]["status_writes"] >= 3
        stray = await read(admin, EXTERNAL_SERVICE, "stray", outside)
        assert "status" not in stray or not conditions_of(stray)

        # A fixed policy is served again.
        await set_spec(admin, TRAFFIC_POLICY, "pay", ns, {**POLICY, "connect_timeout": "750ms"})
        await until(conditions_at(admin, TRAFFIC_POLICY, "pay", ns, 3, {"Accepted": "True"}), "the fixed policy")
        await until(lambda: _holds(served_policy_timeout(plane, ns) == 0.75), "the fixed policy served")


async def _holds(value: Any) -> Any:
    return value
