"""Devices register at a site that an EdgeSite object alone defines: with meshplane's own API on,
the registry admits registrations by the merged mesh's sites (the policy files' and the EdgeSites,
files winning an id), so a cluster needs no policy file to run an edge site. A site the objects
do not define stays refused with its reason.

Every wait polls a condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.meshplane_api.kinds import EDGE_SITE
from meshplane.discovery.registry.auth import token_digest
from meshplane.registry_api.server import EdgeSettings
from tests.edge_plane import running_control_plane
from tests.k8s.gateway_api_fixtures import cluster_fixtures, until
from tests.k8s.meshplane_api_fixtures import admin, create, install_crds, plane_settings
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, RealApiServer
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]
__all__ = ["admin"]  # a fixture, found by pytest under this name

cluster, server = cluster_fixtures("kube-meshplane-api-edge-sites")

BIKES = "edge-sites-bikes"
METADATA = (("authorization", f"Bearer {BIKES}"),)


def registration(device: str, site: str) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        device_id=device,
        device_class="bike",
        site=site,
        endpoints=[pb.Endpoint(address="198.18.0.5", port=8080)],
    )


async def test_a_device_registers_at_a_site_an_edge_site_object_defines(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    await install_crds(admin)
    await create(admin, EDGE_SITE, "gym", "", {"region": "eu-central", "device_ranges": ["198.18.0.0/24"]})
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest(BIKES)}, class: bike}}\n")
    edge = EdgeSettings(db=str(tmp_path / "registry.db"), address="127.0.0.1:0", tokens=tokens)
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)
    async with running_control_plane(plane_settings(server, kubeconfig, edge=edge)) as plane:
        assert plane.edge is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.edge.port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)

            async def registered() -> pb.RegisterResponse | None:
                try:
                    return await stub.Register(registration("bike-1", "gym"), metadata=METADATA)
                except grpc.aio.AioRpcError as error:
                    # Until the first merge holds the EdgeSite the registry asks devices to retry.
                    if error.code() is grpc.StatusCode.UNAVAILABLE:
                        return None
                    raise

            answer = await until(registered, "bike-1 registered at the EdgeSite's site")
            assert answer.lease_id
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Register(registration("bike-2", "pool"), metadata=METADATA)
            assert "pool" in (refused.value.details() or "")
