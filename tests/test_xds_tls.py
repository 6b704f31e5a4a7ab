"""The xDS port over TLS and mTLS with real Envoy: identity from client certificates, and
certificates renewed without a restart. Certificates are made for each test with openssl."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from meshplane.app import ControlPlane, Settings
from tests.envoy_harness import start_backend, start_envoy
from tests.tls_certs import Pair, issue, make_ca

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]


async def start_tls_plane(
    policy: Path, server: Pair, client_ca: Path
) -> tuple[ControlPlane, asyncio.Event, asyncio.Task[None]]:
    plane = ControlPlane(
        Settings(
            config=policy,
            xds_address="127.0.0.1:0",
            status_address="127.0.0.1:0",
            tls_cert=server.certificate,
            tls_key=server.key,
            client_ca=client_ca,
            debounce_quiet=0.02,
            debounce_max=0.2,
            shutdown_grace=0.5,
        )
    )
    await plane.start()
    stop = asyncio.Event()
    return plane, stop, asyncio.create_task(plane.run(stop))


async def test_mtls_identity_and_certificate_renewal(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    issued = tmp_path / "issued"
    issued.mkdir()
    first_server = issue(ca, issued, "server-1", "IP:127.0.0.1")
    sidecar = issue(ca, issued, "sidecar", "URI:meshplane://role/sidecar")
    # The live server files, renewed in place later (as cert-manager or a Secret mount would).
    live = Pair(tmp_path / "tls.crt", tmp_path / "tls.key")
    shutil.copy(first_server.certificate, live.certificate)
    shutil.copy(first_server.key, live.key)

    backend = await start_backend("web")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "web.yaml").write_text(
        f"services:\n  - {{name: web, port: 8080, endpoints: [{{address: 127.0.0.1, port: {backend.port}}}]}}\n"
    )
    plane, stop, task = await start_tls_plane(policy, live, ca.certificate)
    envoys = []
    try:
        # A sidecar whose certificate grants `sidecar` gets its config over mTLS.
        good = await start_envoy(
            tmp_path / "envoy",
            plane.xds_port,
            node_id="mtls-sidecar",
            tls=(ca.certificate, sidecar.certificate, sidecar.key),
        )
        envoys.append(good)

        async def serving() -> bool:
            status, body, _ = await good.request("web")
            return status == 200 and body.startswith("web")

        await good.eventually(serving, "config over mTLS")

        # The same certificate claiming another role is refused; Envoy itself reports why.
        impostor = await start_envoy(
            tmp_path / "envoy",
            plane.xds_port,
            node_id="impostor",
            metadata={"role": "grpc"},
            tls=(ca.certificate, sidecar.certificate, sidecar.key),
        )
        envoys.append(impostor)

        async def refused() -> bool:
            return "does not grant role 'grpc'" in impostor.log()

        await impostor.eventually(refused, "the impostor to be refused")
        assert all(track.node_id != "impostor" for track in plane.registry.streams())

        # Renewal: a certificate from a new CA replaces the files; new connections get it, no restart.
        new_ca = make_ca(tmp_path / "new-ca", "new-ca")
        renewed = issue(new_ca, issued, "server-2", "IP:127.0.0.1")
        shutil.copy(renewed.key, live.key)
        shutil.copy(renewed.certificate, live.certificate)
        trusting_new_ca = await start_envoy(
            tmp_path / "envoy",
            plane.xds_port,
            node_id="after-renewal",
            tls=(new_ca.certificate, sidecar.certificate, sidecar.key),
        )
        envoys.append(trusting_new_ca)

        async def renewed_serving() -> bool:
            status, body, _ = await trusting_new_ca.request("web")
            return status == 200 and body.startswith("web")

        await trusting_new_ca.eventually(renewed_serving, "config over the renewed certificate")
    finally:
        for envoy in envoys:
            await envoy.stop()
        stop.set()
        await task
        await backend.close()
