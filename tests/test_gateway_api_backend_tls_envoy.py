"""BackendTLSPolicy through a real gateway Envoy to real TLS backends.

The Gateway API objects (a Gateway, an HTTPRoute, BackendTLSPolicies) are parsed and resolved as
the source hands them in, with the `ca.crt` of the CA ConfigMap given; the mesh is served by an
in-process xDS server to an Envoy started from `meshplane bootstrap gateway`. The backends are
Python `ssl` servers presenting a certificate for `web.example.com` from a test CA made with
`cryptography`; each answers with the SNI it was sent.

- A policy whose hostname the certificate names: the request reaches the backend, with that SNI.
- A policy whose hostname the certificate does not name: Envoy refuses the backend (503, counted
  as a SAN verification failure of that cluster), though it chains to the trusted CA.
- A policy whose CA ConfigMap is missing: its Service is answered 500, never reached in plain text.

Every wait polls a condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import pytest

from meshplane.discovery.gateway_api.backend_tls_policies import parse_backend_tls_policy
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.resolve import resolve, resolve_backend_tls
from meshplane.model import Endpoint, Mesh, Protocol, ProxyGroup, Service, ServicePort
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server.service import XdsServices, create_server
from meshplane.xds.server.tracking import StreamRegistry
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import translate
from tests.k8s.gateway_api_fixtures import Issued as BackendCa
from tests.k8s.gateway_api_fixtures import issue_backend_certificate
from tests.k8s.test_gateway_api_serving import GatewayEnvoy, ports_and_offset, start_gateway_envoy
from tests.test_gateway_api_backend_tls import policy
from tests.test_gateway_api_resolve import gateway, gateway_class, http, keyed, route

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]
DEADLINE = 60.0
NS = "shop"
HOSTNAME = "web.example.com"


def make_ca(workdir: Path) -> BackendCa:
    """A CA and a server certificate it signs for the DNS name `HOSTNAME`."""
    return issue_backend_certificate(workdir, HOSTNAME)


@contextlib.asynccontextmanager
async def tls_backend(ca: BackendCa, name: str) -> AsyncIterator[int]:
    """An HTTP/1.1 server over TLS on 127.0.0.1 answering `{"name": …, "sni": …}`; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.certificate, ca.key)
    context.set_alpn_protocols(["http/1.1"])
    # The server side of Python's ssl learns the SNI only in this callback, by connection.
    sent: dict[int, str | None] = {}

    def record(connection: Any, server_name: str | None, _: ssl.SSLContext) -> None:
        sent[id(connection)] = server_name

    context.sni_callback = record

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                sni = sent.get(id(writer.get_extra_info("ssl_object")))
                body = json.dumps({"name": name, "sni": sni}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Plane:
    """What `start_gateway_envoy` reads of a control plane: its xDS port."""

    xds_port: int


@contextlib.asynccontextmanager
async def serving(mesh: Mesh) -> AsyncIterator[Plane]:
    """An in-process xDS server giving every group that asks the translation of `mesh`."""
    cache = SnapshotCache()
    server, port = create_server(XdsServices(cache, StreamRegistry()), "127.0.0.1:0")
    await server.start()

    def serve(group: ProxyGroup) -> None:
        cache.set_snapshot(group, Snapshot.of(translate(mesh, group).resources))

    cache.on_group_wanted = serve
    try:
        yield Plane(port)
    finally:
        await server.stop(None)


def tls_service(name: str, port: int) -> Service:
    return Service(
        name=name,
        namespace=NS,
        ports=(ServicePort("https", 443, Protocol.HTTP1),),
        endpoints=(Endpoint("127.0.0.1", port, "https"),),
    )


def mesh_of(ca: BackendCa, listener_port: int, web_port: int, api_port: int) -> Mesh:
    """The Gateway `shop/edge` routing `/web`, `/api` and `/lost` to the Services so named, all
    served over TLS: web's policy names the certificate's hostname, api's another, lost's CA
    ConfigMap does not exist."""
    services = {
        s.ref: s for s in (tls_service("web", web_port), tls_service("api", api_port), tls_service("lost", web_port))
    }
    rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
         "backendRefs": [{"name": name, "port": 443}]}
        for name in ("web", "api", "lost")
    ]  # fmt: skip
    api_target = [{"group": "", "kind": "Service", "name": "api"}]
    lost_target = [{"group": "", "kind": "Service", "name": "lost"}]
    lost_ca = [{"group": "", "kind": "ConfigMap", "name": "missing-ca"}]
    objects = GatewayApiObjects(
        gateway_classes=MappingProxyType({("", "mesh"): parse_gateway_class(gateway_class())}),
        gateways=keyed([parse_gateway(gateway([http(port=listener_port)]))]),
        http_routes=keyed([parse_http_route(route(rules=rules))]),
        backend_tls_policies=keyed(
            [
                parse_backend_tls_policy(policy("web-tls", hostname=HOSTNAME)),
                parse_backend_tls_policy(policy("api-tls", targets=api_target, hostname="other.example.com")),
                parse_backend_tls_policy(policy("lost-tls", targets=lost_target, refs=lost_ca)),
            ]
        ),
    )
    resolution = resolve(objects, DEFAULT_CONTROLLER_NAME, services, frozenset())
    resolution = resolve_backend_tls(resolution, objects, services, {(NS, "backend-ca"): ca.ca_pem})
    assert [len(g.backend_tls) for g in resolution.gateways] == [2], resolution
    return Mesh.of(list(services.values()), gateways=resolution.gateways)


async def until_answered(
    envoy: GatewayEnvoy, port: int, path: str, status: int
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Asks until Envoy answers `status` on `path`; fails with the last answer at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    last: object = None
    while loop.time() < deadline:
        try:
            answer = await envoy.get(port, "shop.example", path)
        except (TimeoutError, OSError) as error:
            last = error
        else:
            if answer[0] == status:
                return answer
            last = answer
        await asyncio.sleep(0.1)
    pytest.fail(f"{path} never answered {status}; last: {last!r}")


async def body_text(envoy: GatewayEnvoy, port: int, path: str) -> str:
    url = f"http://127.0.0.1:{port + envoy.offset}{path}"
    async with envoy.session.get(url, headers={"host": "shop.example"}) as response:
        return await response.text()


async def test_a_gateway_envoy_reaches_a_tls_backend_with_the_policy_sni_and_refuses_a_wrong_hostname(
    tmp_path: Path,
) -> None:
    ca = make_ca(tmp_path / "ca")
    (listener_port,), offset = ports_and_offset(1)
    async with contextlib.AsyncExitStack() as stack:
        web_port = await stack.enter_async_context(tls_backend(ca, "web"))
        api_port = await stack.enter_async_context(tls_backend(ca, "api"))
        plane = await stack.enter_async_context(serving(mesh_of(ca, listener_port, web_port, api_port)))
        envoy = await start_gateway_envoy(tmp_path / "envoy", cast(Any, plane), f"{NS}/edge", offset)
        stack.push_async_callback(envoy.close)
        _, body, _ = await until_answered(envoy, listener_port, "/web", 200)
        assert body == {"name": "web", "sni": HOSTNAME}
        await until_answered(envoy, listener_port, "/api", 503)
        text = await body_text(envoy, listener_port, "/api")
        assert "upstream connect error" in text, text

        async def san_refusals() -> int | None:
            found = await envoy.envoy.stat("cluster.api.shop_443.ssl.fail_verify_san")
            return found if isinstance(found, int) and found > 0 else None

        # Envoy's own count of handshakes it refused for a missing SAN (":" in stat names is "_").
        await envoy.envoy.eventually(san_refusals, "a refused SAN on cluster api.shop:443")
        assert await envoy.envoy.stat("cluster.web.shop_443.ssl.fail_verify_san") == 0
        await until_answered(envoy, listener_port, "/lost", 500)
