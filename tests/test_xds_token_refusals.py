"""A stream refused for what it claims says which credential does not grant it, in the gRPC status
the proxy sees and in the log: a bearer token (`--xds-tokens`) here, not a client certificate."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import struct_pb2

from meshplane.app import ControlPlane
from tests.edge_plane import running_control_plane
from tests.test_xds_keys import get, settings
from tests.xds_fixtures import CDS, AdsStream, node, request

SIDECAR_TOKEN, GATEWAY_TOKEN = "sidecar-token-for-tests", "gym-12-gateway-token-for-tests"


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mesh.yaml").write_text(
        "services:\n  - {name: web, port: 8080, endpoints: [{address: 127.0.0.1, port: 9}]}\n"
        "sites:\n  - {id: gym-12, region: eu}\n  - {id: gym-99, region: eu}\n"
    )
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{sha256: {hashlib.sha256(SIDECAR_TOKEN.encode()).hexdigest()}, role: sidecar}}\n"
        f"  - {{sha256: {hashlib.sha256(GATEWAY_TOKEN.encode()).hexdigest()}, role: edge-gateway, site: gym-12}}\n"
    )
    async with running_control_plane(settings(policy, xds_tokens=tokens)) as control:
        yield control


async def refusal(plane: ControlPlane, token: str, node_id: str, **metadata: str) -> tuple[grpc.StatusCode, str]:
    """Opens an ADS stream with `token`, claims `metadata`, and returns how the stream ended."""
    claim = node(node_id)
    claim.metadata.CopyFrom(struct_pb2.Struct())
    claim.metadata.update(metadata)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            metadata=(("authorization", f"Bearer {token}"),)
        )
        stream = AdsStream(call)
        await stream.send(request(CDS, with_node=claim))
        return await stream.status()


@pytest.mark.parametrize(
    ("token", "claim", "said"),
    [
        pytest.param(
            SIDECAR_TOKEN,
            {"role": "edge-gateway", "site": "gym-12"},
            "node claimer: the bearer token does not grant role 'edge-gateway' at site 'gym-12' (it grants: sidecar@*)",
            id="sidecar-token-claims-a-gateway",
        ),
        pytest.param(
            GATEWAY_TOKEN,
            {"role": "edge-gateway", "site": "gym-99"},
            "node claimer: the bearer token does not grant role 'edge-gateway' at site 'gym-99'"
            " (it grants: edge-gateway@gym-12)",
            id="gateway-token-claims-another-site",
        ),
    ],
)
async def test_a_token_refused_for_its_claim_names_the_bearer_token(
    plane: ControlPlane, token: str, claim: dict[str, str], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="meshplane.xds.server.service")
    code, details = await refusal(plane, token, "claimer", **claim)
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, said)
    assert "client certificate" not in details
    (logged,) = [r.getMessage() for r in caplog.records if "refused stream" in r.getMessage()]
    assert logged.endswith(said)
    status = json.loads(await get(plane, "/status"))
    assert status["refused_streams"]["PERMISSION_DENIED"] == 1


async def test_a_gateway_claim_without_a_site_is_refused_in_plain_english(plane: ControlPlane) -> None:
    code, details = await refusal(plane, GATEWAY_TOKEN, "no-site", role="edge-gateway")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("node no-site: an edge-gateway needs metadata.site"), details
