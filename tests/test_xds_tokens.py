"""Bearer tokens on the xDS port, bound to a role and site, for proxies without client certificates:
the token file's rules, and real Envoys sending their token as gRPC metadata."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshplane.app import ControlPlane, Settings
from meshplane.xds.server.identity import Grant, XdsTokens
from tests.envoy_harness import Backend, start_backend, start_envoy


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_file(path: Path) -> Path:
    path.write_text(
        "tokens:\n"
        f"  - {{sha256: {digest('sidecar-secret')}, role: sidecar}}\n"
        f"  - {{sha256: {digest('gym-gateway-secret')}, role: edge-gateway, site: gym-12}}\n"
    )
    return path


def test_tokens_grant_their_role_and_site(tmp_path: Path) -> None:
    tokens = XdsTokens.from_file(tokens_file(tmp_path / "tokens.yaml"))
    assert tokens.grants_for([("authorization", "Bearer sidecar-secret")]) == (Grant("sidecar"),)
    assert tokens.grants_for([("Authorization", b"bearer gym-gateway-secret")]) == (Grant("edge-gateway", "gym-12"),)
    assert tokens.grants_for([("authorization", "Bearer wrong")]) is None
    assert tokens.grants_for([("authorization", "Basic c2lkZWNhcg==")]) is None
    assert tokens.grants_for([]) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("tokens: nope\n", "`tokens` list", id="not-a-list"),
        pytest.param("tokens:\n  - {sha256: abc, role: sidecar}\n", "64 hex digits", id="short-digest"),
        pytest.param(f"tokens:\n  - {{sha256: {'a' * 64}}}\n", "role is required", id="no-role"),
        pytest.param(f"tokens:\n  - {{sha256: {'a' * 64}, role: x, zone: y}}\n", "optionally site", id="unknown-key"),
    ],
)
def test_malformed_token_files_are_refused_with_the_reason(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "tokens.yaml").write_text(text)
    with pytest.raises(ValueError, match=problem):
        XdsTokens.from_file(tmp_path / "tokens.yaml")


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Backend]]:
    backend = await start_backend("web")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "web.yaml").write_text(
        f"services:\n  - {{name: web, port: 8080, endpoints: [{{address: 127.0.0.1, port: {backend.port}}}]}}\n"
    )
    control = ControlPlane(
        Settings(
            config=policy,
            xds_address="127.0.0.1:0",
            status_address="127.0.0.1:0",
            xds_tokens=tokens_file(tmp_path / "tokens.yaml"),
            shutdown_grace=0.5,
        )
    )
    await control.start()
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    yield control, backend
    stop.set()
    await task
    await backend.close()


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_envoys_get_only_what_their_token_grants(tmp_path: Path, plane: tuple[ControlPlane, Backend]) -> None:
    control, _ = plane
    envoys = []
    try:
        good = await start_envoy(tmp_path / "envoy", control.xds_port, node_id="with-token", xds_token="sidecar-secret")
        envoys.append(good)

        async def serving() -> bool:
            status, body, _ = await good.request("web")
            return status == 200 and body.startswith("web")

        await good.eventually(serving, "config for a sidecar with its token")

        claims_more = await start_envoy(
            tmp_path / "envoy",
            control.xds_port,
            node_id="claims-gateway",
            metadata={"role": "edge-gateway", "site": "gym-12"},
            xds_token="sidecar-secret",
        )
        envoys.append(claims_more)

        async def refused_role() -> bool:
            return "does not grant role 'edge-gateway'" in claims_more.log()

        await claims_more.eventually(refused_role, "a sidecar token claiming the gateway role to be refused")

        anonymous = await start_envoy(tmp_path / "envoy", control.xds_port, node_id="no-token")
        envoys.append(anonymous)

        async def refused_anonymous() -> bool:
            return "requires a client certificate or a known bearer token" in anonymous.log()

        await anonymous.eventually(refused_anonymous, "a proxy without a token to be refused")
        connected = {track.node_id for track in control.registry.streams()}
        assert connected == {"with-token"}
    finally:
        for envoy in envoys:
            await envoy.stop()
