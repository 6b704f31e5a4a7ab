"""Private keys are served over SDS to authenticated streams only.

Without --client-ca or --xds-tokens any client reaching the xDS port may claim to be a sidecar.
Such a stream gets its whole config except the secrets holding private keys: withheld (not sent,
never announced as removed), named on /status, logged once, counted. Proven with raw gRPC
streams (SotW and Delta), real Envoys (which never get the key, warm the cluster naming it and serve
everything else), a token-authenticated Envoy (which gets the key and speaks mTLS), and the opt-in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from meshplane.app import ControlPlane, Settings
from tests.edge_plane import running_control_plane
from tests.envoy_harness import Envoy, start_backend, start_envoy
from tests.tls_certs import Pair, issue, make_ca, start_mtls_server
from tests.xds_fixtures import SDS, AdsStream, delta_request, node, request

CA, CLIENT = "mesh-ca", "mesh-client"
TOKEN = "sidecar-token-for-tests"


@contextlib.asynccontextmanager
async def tls_backend(ca: Pair, server: Pair) -> AsyncIterator[int]:
    """An HTTPS server on 127.0.0.1 that requires a client certificate from `ca` and answers
    `secure <common name of the client certificate>`."""

    async def answer(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item for rdn in (peer or {}).get("subject", ()) for item in rdn)
        return web.Response(text=f"secure {subject.get('commonName', '-')}\n")

    runner = await start_mtls_server(answer, ca.certificate, server)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def write_policy(directory: Path, ca: Pair, client: Pair, web_port: int, secure_port: int) -> Path:
    """A plain service `web` and a service `secure` reached with upstream mTLS: a CA bundle (public)
    and a client certificate with its private key, both from files, over SDS."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mesh.yaml").write_text(
        f"""secrets:
  - {{name: {CA}, ca_file: {ca.certificate}}}
  - {{name: {CLIENT}, certificate_file: {client.certificate}, key_file: {client.key}}}
services:
  - {{name: web, port: 8080, endpoints: [{{address: 127.0.0.1, port: {web_port}}}]}}
  - name: secure
    port: 8443
    endpoints: [{{address: 127.0.0.1, port: {secure_port}}}]
    tls: {{trust: {CA}, sni: localhost, client_certificate: {CLIENT}}}
"""
    )
    return directory


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Pair, Pair, Pair]:
    """The mesh CA, the client certificate the policy serves over SDS, and a server certificate."""
    ca = make_ca(tmp_path / "certs", CA)
    client = issue(ca, tmp_path / "certs", CLIENT, "DNS:mesh-client")
    server = issue(ca, tmp_path / "certs", "server", "DNS:localhost,IP:127.0.0.1")
    return ca, client, server


def settings(policy: Path, **extra: Any) -> Settings:
    """Settings for an in-process control plane on `policy`, on ports of its own, quick to rebuild."""
    values: dict[str, Any] = {
        "xds_address": "127.0.0.1:0",
        "status_address": "127.0.0.1:0",
        "debounce_quiet": 0.02,
        "debounce_max": 0.2,
        "shutdown_grace": 0.5,
    }
    return Settings(config=policy, **{**values, **extra})


@pytest.fixture
async def mesh(tmp_path: Path, certs: tuple[Pair, Pair, Pair]) -> AsyncIterator[Path]:
    """The policy directory (the secure service's port is never reached by these tests)."""
    backend = await start_backend("web")
    ca, client, _ = certs
    try:
        yield write_policy(tmp_path / "policy", ca, client, backend.port, 9)
    finally:
        await backend.close()


async def get(plane: ControlPlane, path: str) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"http://127.0.0.1:{plane.status_port}{path}") as response,
    ):
        assert response.status == 200, path
        return await response.text()


async def sds_of(plane: ControlPlane, node_id: str) -> dict[str, Any] | None:
    document = json.loads(await get(plane, "/status"))
    for proxy in document["proxies"]:
        if proxy["node"] == node_id:
            sds: dict[str, Any] = proxy["types"]["SDS"]
            return sds
    return None


def secret_names(response: Any) -> list[str]:
    names = []
    for item in response.resources:
        packed = getattr(item, "resource", item)
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        names.append(secret.name)
    return sorted(names)


async def ask_for_both_secrets(plane: ControlPlane, node_id: str, delta: bool) -> list[str]:
    """One raw ADS stream (no credential) asking for both secrets by name: the names it is sent."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        if delta:
            stream = AdsStream(stub.DeltaAggregatedResources())
            await stream.send(delta_request(SDS, [CA, CLIENT], with_node=node(node_id)))
        else:
            stream = AdsStream(stub.StreamAggregatedResources())
            await stream.send(request(SDS, [CA, CLIENT], with_node=node(node_id)))
        response = await stream.recv()
        names = secret_names(response)
        if delta:
            assert list(response.removed_resources) == [], "a withheld secret is never announced as removed"
        await stream.close()
        return names


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_an_unauthenticated_stream_is_not_sent_private_keys(
    mesh: Path, delta: bool, caplog: pytest.LogCaptureFixture
) -> None:
    policy = mesh
    caplog.set_level(logging.WARNING)
    async with running_control_plane(settings(policy)) as plane:
        (warning,) = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "keys_unauthenticated"]
        assert "1 certificates hold private keys" in warning
        assert "withheld from every proxy" in warning

        assert await ask_for_both_secrets(plane, "anonymous", delta) == [CA]

        # Said once per stream, counted, and named on the stream's SDS status (read while it is
        # open: a second stream of the node keeps it listed).
        assert await ask_for_both_secrets(plane, "anonymous-2", delta) == [CA]
        withheld = [r for r in caplog.records if getattr(r, "event", "") == "keys_withheld"]
        assert [r.node_id for r in withheld] == ["anonymous", "anonymous-2"]  # type: ignore[attr-defined]
        assert "the stream is not authenticated" in withheld[0].getMessage()
        metrics = await get(plane, "/metrics")
        assert "meshplane_xds_secrets_withheld_total 2.0" in metrics


async def test_the_opt_in_serves_keys_to_unauthenticated_streams(mesh: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = mesh
    caplog.set_level(logging.WARNING)
    async with running_control_plane(settings(policy, insecure_serve_keys_without_client_auth=True)) as plane:
        (warning,) = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "keys_unauthenticated"]
        assert "anyone who can reach 127.0.0.1:0 can fetch the certificates and private keys" in warning
        assert await ask_for_both_secrets(plane, "trusted-network", delta=False) == [CA, CLIENT]
        assert not [r for r in caplog.records if getattr(r, "event", "") == "keys_withheld"]


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_real_envoys_without_credentials_never_get_the_key(tmp_path: Path, mesh: Path) -> None:
    """SotW and Delta Envoys without a credential: the CA bundle arrives, the client certificate
    never does (its secret stays warming; the cluster naming it warms until Envoy's initial fetch
    timeout, 15 s, and is then activated without it), every other service is served, and /status
    names what is withheld."""
    async with running_control_plane(settings(mesh)) as plane:
        envoys = {
            node_id: await start_envoy(tmp_path / "envoy", plane.xds_port, node_id=node_id, delta=delta)
            for node_id, delta in (("no-credential-sotw", False), ("no-credential-delta", True))
        }
        try:
            for node_id, envoy in envoys.items():

                async def warming_on_the_key(envoy: Envoy = envoy) -> bool:
                    dump = await envoy.config_dump()
                    secrets = {
                        kind: sorted(entry["name"] for entry in config.get(kind, ()))
                        for config in dump["configs"]
                        if config["@type"].endswith("SecretsConfigDump")
                        for kind in ("dynamic_active_secrets", "dynamic_warming_secrets")
                    }
                    return secrets == {"dynamic_active_secrets": [CA], "dynamic_warming_secrets": [CLIENT]}

                await envoy.eventually(warming_on_the_key, "the CA bundle active, the client certificate warming")
                # Warming, or (past the initial fetch timeout, as on a loaded machine) active
                # without its certificate: either way Envoy holds it, and the key never came.
                held = {
                    entry["cluster"]["name"]
                    for kind in ("dynamic_warming_clusters", "dynamic_active_clusters")
                    for entry in (await envoy.config_dump(kind)).get("configs", ())
                }
                assert "secure.default:8443" in held, held

                async def serves_web(envoy: Envoy = envoy) -> bool:
                    status, body, _ = await envoy.request("web")
                    return status == 200 and body.startswith("web")

                # Meanwhile the rest of the config is served: listeners, routes, the other clusters.
                await envoy.eventually(serves_web, "the plain service through the sidecar", deadline=60)
                sds = await sds_of(plane, node_id)
                assert sds is not None
                assert sds["keys_withheld"] == [CLIENT]
        finally:
            for envoy in envoys.values():
                await envoy.stop()


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_an_envoy_with_a_token_gets_its_key_and_speaks_mtls(
    tmp_path: Path, certs: tuple[Pair, Pair, Pair]
) -> None:
    ca, client, server = certs
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}, role: sidecar}}\n")
    backend = await start_backend("web")
    try:
        async with tls_backend(ca, server) as secure_port:
            policy = write_policy(tmp_path / "policy", ca, client, backend.port, secure_port)
            async with running_control_plane(settings(policy, xds_tokens=tokens)) as plane:
                envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id="with-token", xds_token=TOKEN)
                try:

                    async def through_mtls() -> bool:
                        status, body, _ = await envoy.request("secure")
                        return status == 200 and body == f"secure {CLIENT}\n"

                    await envoy.eventually(through_mtls, "the secure service over mTLS with the served key")
                    sds = await sds_of(plane, "with-token")
                    assert sds is not None
                    assert sds["keys_withheld"] == []
                finally:
                    await envoy.stop()
    finally:
        await backend.close()
