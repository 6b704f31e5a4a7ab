"""End to end: Kubernetes Secrets → SDS (over ADS) → a real Envoy → mTLS to a TLS backend on 127.0.0.1.

A Service annotated for upstream TLS trusts the CA of an Opaque Secret and presents the client
certificate of a kubernetes.io/tls Secret. Rotating the Secret rotates what Envoy presents
without a cluster or listener update; deleting it is a problem on /status while Envoy keeps
its last good configuration; a malformed rotation is refused by name. The grpc role gets no
secrets, and the PEM shows in no log line, no /status and no config dump.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from meshplane.app import ControlPlane
from meshplane.model import ProxyGroup, ProxyRole
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import Envoy, start_envoy
from tests.k8s import objects as k
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.test_kubernetes_app import settings_for, write_kubeconfig
from tests.tls_certs import Pair, issue, make_ca

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

ADMIN_TOKEN = "admin-token-for-tests"
TLS_ANNOTATIONS = {
    "meshplane.io/tls-trust": "shop/mesh-ca#ca",
    "meshplane.io/tls-client-certificate": "shop/web-client",
    "meshplane.io/tls-sni": "web.shop",
}


@dataclasses.dataclass
class Certs:
    ca: Pair
    server: Pair
    client_one: Pair
    client_two: Pair

    def pem_fragments(self) -> list[str]:
        """A base64 line of every key and certificate: none may appear anywhere it must not."""
        pairs = (self.ca, self.server, self.client_one, self.client_two)
        texts = [pair.key.read_text() for pair in pairs] + [pair.certificate.read_text() for pair in pairs]
        # As PEM, and as the API sends it (the Secret's base64 of the PEM): a logged object would show that.
        return [text.splitlines()[1] for text in texts] + [
            base64.b64encode(text.encode()).decode()[40:100] for text in texts
        ]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    directory = tmp_path / "certs"
    ca = make_ca(directory, "mesh-ca")
    return Certs(
        ca,
        issue(ca, directory, "web", "DNS:web.shop,IP:127.0.0.1"),
        issue(ca, directory, "client-one", "DNS:client-one"),
        issue(ca, directory, "client-two", "DNS:client-two"),
    )


@pytest.fixture
async def tls_backend(certs: Certs) -> AsyncIterator[int]:
    """An HTTPS server on 127.0.0.1 that requires a client certificate signed by the mesh CA and
    answers with the common name of the one it got."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca.certificate))
    context.load_cert_chain(certs.server.certificate, certs.server.key)
    context.verify_mode = ssl.CERT_REQUIRED

    async def answer(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item for rdn in (peer or {}).get("subject", ()) for item in rdn)
        # A new connection (and so a new handshake) per request: pooled connections would keep
        # showing the certificate they were made with, after a rotation as before it.
        response = web.Response(text=f"tls-backend {subject.get('commonName', '-')}\n")
        response.force_close()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def client_secret(certs: Certs, pair: Pair) -> dict[str, object]:
    return k.tls_secret("web-client", "shop", pair.certificate.read_text(), pair.key.read_text())


async def get_text(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return await response.text()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_kubernetes_secrets_reach_envoy_over_sds_and_rotate(
    tmp_path: Path,
    apiserver: FakeApiServer,
    certs: Certs,
    tls_backend: int,
    delta: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    apiserver.apply(k.service("web", "shop", ports=[k.port("http", 8443)], annotations=TLS_ANNOTATIONS))
    apiserver.apply(
        k.endpoint_slice("web-a", "web", "shop", endpoints=[k.endpoint("127.0.0.1")], ports=[("http", tls_backend)])
    )
    apiserver.apply(k.ca_secret("mesh-ca", "shop", certs.ca.certificate.read_text()))
    apiserver.apply(client_secret(certs, certs.client_one))
    settings = dataclasses.replace(
        settings_for(write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)),
        kubernetes_secrets=True,
        admin_token=ADMIN_TOKEN,
        # The Envoy has no xDS credential: serving it the client key is the explicit opt-in.
        insecure_serve_keys_without_client_auth=True,
    )
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    task = asyncio.create_task(plane.run(stop))
    envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id="k8s-sds", delta=delta)
    status_url = f"http://127.0.0.1:{plane.status_port}"
    try:
        await envoy.eventually(answered(envoy, "client-one"), "mTLS traffic with the first client certificate")
        secrets = await envoy.config_dump("dynamic_active_secrets")
        assert sorted(s["name"] for s in secrets["configs"]) == ["shop/mesh-ca#ca", "shop/web-client"]

        # Rotation: only the Secret resource changes; Envoy neither modifies a cluster nor a listener.
        cds, lds = await versions(envoy)
        modified = await envoy.stat("cluster_manager.cluster_modified")
        apiserver.apply(client_secret(certs, certs.client_two))
        await envoy.eventually(answered(envoy, "client-two"), "traffic with the rotated client certificate")
        assert await versions(envoy) == (cds, lds)
        assert await envoy.stat("cluster_manager.cluster_modified") == modified

        # The grpc role is given no secrets; a sidecar is given exactly the two it uses.
        grpc = plane.publisher.snapshot_for(ProxyGroup(role=ProxyRole.GRPC))
        assert grpc is not None
        assert len(grpc.of_type(TypeUrl.SECRET).by_name) == 0
        sidecar = plane.publisher.snapshot_for(ProxyGroup(outbound_port=envoy.outbound_port))
        assert sidecar is not None
        assert sorted(sidecar.of_type(TypeUrl.SECRET).by_name) == ["shop/mesh-ca#ca", "shop/web-client"]

        # A malformed rotation is refused by name: Envoy keeps the last good certificate.
        apiserver.apply(k.tls_secret("web-client", "shop", "not a certificate", certs.client_two.key.read_text()))
        refused = "secret shop/web-client: tls.crt holds no PEM certificate; serving its last good version"
        await wait_status(status_url, refused)
        assert await answered(envoy, "client-two")()

        # Deleted while still referenced: a clear problem naming the service and the secret, and the
        # version last served stays, so Envoy's TLS keeps working and nothing else is held back.
        apiserver.delete("Secret", "shop", "web-client")
        await wait_status(status_url, "tls.client_certificate names certificate 'shop/web-client', which no source")
        assert await answered(envoy, "client-two")()
        assert await versions(envoy) == (cds, lds)
        apiserver.apply(client_secret(certs, certs.client_one))  # back
        await envoy.eventually(answered(envoy, "client-one"), "traffic after the Secret came back")
        assert "which no source" not in await get_text(f"{status_url}/status")

        # The PEM is nowhere: not in /status, not in dumps (without the token, or redacted with it), no log.
        texts = [
            await get_text(f"{status_url}/status"),
            await get_text(f"{status_url}/config?outbound_port={envoy.outbound_port}"),
            await get_text(f"{status_url}/config?node=k8s-sds"),
            await get_text(f"{status_url}/config?node=k8s-sds", ADMIN_TOKEN),
            await get_text(f"{status_url}/config?outbound_port={envoy.outbound_port}", ADMIN_TOKEN),
            "\n".join(record.getMessage() for record in caplog.records),
            "\n".join(repr(record.args) for record in caplog.records),
        ]
        assert "shop/web-client" in texts[3]  # with the token, the Secret is listed (its body redacted)
        for fragment in certs.pem_fragments():
            for text in texts:
                assert fragment not in text
    finally:
        await envoy.stop()
        stop.set()
        await task


def answered(envoy: Envoy, client: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        status, body, _ = await envoy.request("web.shop", "/")
        return status == 200 and body.split() == ["tls-backend", client]

    return check


async def versions(envoy: Envoy) -> tuple[object, object]:
    return (
        await envoy.stat("cluster_manager.cds.version_text"),
        await envoy.stat("listener_manager.lds.version_text"),
    )


async def wait_status(url: str, text: str, deadline: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    body = ""
    while loop.time() < end:
        body = await get_text(f"{url}/status")
        if text in json.dumps(json.loads(body)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/status never said {text!r}:\n{body[-3000:]}")
