"""End to end: a BackendTLSPolicy on a real kube-apiserver (v1.6.1 standard-channel CRDs) through
the whole control plane (`--kubernetes --gateway-api`) to a real gateway Envoy started from
`meshplane bootstrap gateway`, and on to a real TLS backend.

The backend is a server on 127.0.0.1 with a certificate for `backend.example` from a test CA made
with `cryptography`; the CA's `ca.crt` is in a ConfigMap the policy names. The backend speaks TLS
or plain text on the same port (it looks at the first byte), answering JSON saying which it saw
and the SNI it was sent, so each step can show what actually reached it:

- with the policy: a request through the gateway reaches the backend over TLS, SNI
  `backend.example`; the policy's `status.ancestors` names the Gateway, Accepted and ResolvedRefs;
- the policy's hostname changed to one the certificate does not name: 503 (Envoy counts a
  refused SAN), nothing reaches the backend in plain text;
- the CA ConfigMap deleted: the policy says so (`NoValidCACertificate`,
  `InvalidCACertificateRef`) and the route answers 500, still nothing in plain text;
- the policy deleted: the Service is an ordinary one again, reached in plain text (what
  `resolve_backend_tls` documents: only a policy makes a backend TLS).

Every wait polls a condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient

from tests.k8s import objects as k
from tests.k8s.gateway_api_crds import GROUP
from tests.k8s.gateway_api_fixtures import (
    OURS,
    V1,
    Issued,
    admin_fixture,
    cluster_fixtures,
    issue_backend_certificate,
)
from tests.k8s.real_apiserver import (
    KUBE_MISSING,
    MERGE_PATCH,
    RealApiServer,
    call_ok,
)
from tests.k8s.test_gateway_api_serving import (
    SLICES,
    GatewayEnvoy,
    by_type,
    gateway,
    http_route,
    namespace,
    ports_and_offset,
    read,
    serving_plane,
    start_gateway_envoy,
    to,
    until_holds,
)
from tests.preconditions import requires

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.xdist_group("kube-apiserver"),
    pytest.mark.timeout(300),
    requires(KUBE_MISSING),
]
HOSTNAME = "backend.example"


cluster, server = cluster_fixtures("kube-backend-tls-serving")
admin = admin_fixture(serving=True)


# --- the CA and the backend ---


@dataclass
class Backend:
    """An HTTP/1.1 server on 127.0.0.1 speaking TLS (with the issued certificate) to a client
    whose first byte is a TLS handshake record and plain text to any other; it answers every
    request `{"tls": …, "sni": …}` and records each request as `(tls, sni)` in `seen`.

    Threads, not the event loop: the TLS choice needs a peek at the first byte, which asyncio
    streams do not offer, and the handshake is blocking."""

    issued: Issued
    seen: list[tuple[bool, str | None]] = field(default_factory=list)
    port: int = 0
    _server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> Backend:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.issued.certificate, self.issued.key)
        context.set_alpn_protocols(["http/1.1"])
        # The SNI is known only in this callback, run in the handshaking (the handler's) thread.
        local = threading.local()

        def record(_connection: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
            local.sni = server_name

        context.sni_callback = record
        seen = self.seen

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                connection: socket.socket = self.request
                with contextlib.suppress(OSError):  # ssl.SSLError included: a refused handshake
                    first = connection.recv(1, socket.MSG_PEEK)
                    tls = first == b"\x16"
                    local.sni = None
                    if tls:
                        connection = context.wrap_socket(connection, server_side=True)
                    stream = connection.makefile("rb")
                    while True:
                        head = b""
                        while not head.endswith(b"\r\n\r\n"):
                            line = stream.readline(8192)
                            if not line:
                                return
                            head += line
                        seen.append((tls, local.sni))
                        body = json.dumps({"tls": tls, "sni": local.sni}).encode()
                        connection.sendall(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                            + f"content-length: {len(body)}\r\n\r\n".encode()
                            + body
                        )

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        self.port = server.server_address[1]
        return self

    def plain(self) -> list[tuple[bool, str | None]]:
        return [request for request in self.seen if not request[0]]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# --- objects ---


async def backend_service(admin: ApiClient, ns: str, port: int) -> None:
    """Service `ns/backend` on port 8080 (named http), its one endpoint 127.0.0.1:`port`."""
    body = k.service("backend", ns, ports=[k.port("http", 8080)])
    del body["spec"]["clusterIP"]  # the API server allocates one
    await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/services", body)
    endpoints = k.endpoint_slice(
        "backend-1", "backend", ns, [k.endpoint("127.0.0.1")], [("http", port)], api_version="discovery.k8s.io/v1beta1"
    )
    await call_ok(admin, "POST", f"{SLICES}/namespaces/{ns}/endpointslices", endpoints)


def backend_tls_policy(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "BackendTLSPolicy",
        "metadata": {"namespace": ns, "name": "backend-tls"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "backend"}],
            "validation": {
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "backend-ca"}],
                "hostname": HOSTNAME,
            },
        },
    }


async def ancestors(admin: ApiClient, ns: str) -> list[dict[str, Any]]:
    """The policy's `status.ancestors` written by our controller."""
    obj = await read(admin, f"{V1}/namespaces/{ns}/backendtlspolicies/backend-tls")
    return [a for a in (obj.get("status") or {}).get("ancestors") or () if a.get("controllerName") == OURS]


def conditions_are(found: list[dict[str, Any]], expected: dict[str, tuple[str, str]]) -> bool:
    if len(found) != 1:
        return False
    return {kind: (c["status"], c["reason"]) for kind, c in by_type(found[0]["conditions"]).items()} == expected


async def answer(envoy: GatewayEnvoy, port: int) -> tuple[int, dict[str, Any]] | str:
    """A request for `web.example/` through the gateway: the status and the JSON body; what went
    wrong when the listener does not answer yet."""
    try:
        status, body, _ = await envoy.get(port, "web.example", "/")
    except (aiohttp.ClientError, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"
    return status, body


# --- the test ---


async def test_a_backend_tls_policy_is_served_end_to_end_and_follows_its_hostname_ca_and_deletion(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    ns = await namespace(admin, "gw-backend-tls")
    issued = issue_backend_certificate(tmp_path / "certs", HOSTNAME)
    backend = Backend(issued).start()
    try:
        await backend_service(admin, ns, backend.port)
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": ns, "name": "backend-ca"},
                      "data": {"ca.crt": issued.ca_pem}}  # fmt: skip
        await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/configmaps", config_map)
        (port,), offset = ports_and_offset(1)
        listeners = [{"name": "http", "port": port, "protocol": "HTTP"}]
        await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/gateways", gateway(ns, listeners))
        route = http_route(ns, "web", ["web.example"], [{"backendRefs": [to("backend")]}])
        await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/httproutes", route)
        policy_path = f"{V1}/namespaces/{ns}/backendtlspolicies"
        await call_ok(admin, "POST", policy_path, backend_tls_policy(ns))

        async with serving_plane(server, tmp_path) as plane:
            envoy = await start_gateway_envoy(tmp_path / "envoy", plane, f"{ns}/edge", offset)
            try:
                # 1. Over TLS, with the policy's hostname as SNI, verified against the CA.
                _, body = await until_holds(
                    lambda: answer(envoy, port),
                    lambda found: isinstance(found, tuple) and found[0] == 200,
                    "a request through the gateway reaching the TLS backend",
                )
                assert body == {"tls": True, "sni": HOSTNAME}
                assert backend.plain() == []

                # 2. The policy's status names the Gateway.
                accepted = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
                (ancestor,) = await until_holds(
                    lambda: ancestors(admin, ns),
                    lambda found: conditions_are(found, accepted),
                    "the policy Accepted and ResolvedRefs for the Gateway",
                )
                assert ancestor["ancestorRef"] == {"group": GROUP, "kind": "Gateway", "namespace": ns, "name": "edge"}

                # 3. A hostname the certificate does not name: Envoy refuses the backend.
                patch = {"spec": {"validation": {"hostname": "elsewhere.example"}}}
                await call_ok(admin, "PATCH", f"{policy_path}/backend-tls", patch, MERGE_PATCH)
                await until_holds(
                    lambda: answer(envoy, port),
                    lambda found: isinstance(found, tuple) and found[0] == 503,
                    "503 once the policy names a hostname the certificate does not",
                )
                # Envoy's own count of handshakes refused for a missing SAN (":" in stat names is "_").
                refused = await envoy.envoy.stat(f"cluster.backend.{ns}_8080.ssl.fail_verify_san")
                assert isinstance(refused, int), refused
                assert refused > 0
                assert backend.plain() == []

                # 4. The CA ConfigMap gone: the policy says so, the route answers 500.
                await call_ok(admin, "DELETE", f"/api/v1/namespaces/{ns}/configmaps/backend-ca")
                missing = {
                    "Accepted": ("False", "NoValidCACertificate"),
                    "ResolvedRefs": ("False", "InvalidCACertificateRef"),
                }
                await until_holds(
                    lambda: ancestors(admin, ns),
                    lambda found: conditions_are(found, missing),
                    "the policy reporting its missing CA ConfigMap",
                )
                await until_holds(
                    lambda: answer(envoy, port),
                    lambda found: isinstance(found, tuple) and found[0] == 500,
                    "500 once the CA ConfigMap is gone",
                )
                assert backend.plain() == []

                # 5. The policy gone: the Service is an ordinary one, reached in plain text.
                await call_ok(admin, "DELETE", f"{policy_path}/backend-tls")
                _, body = await until_holds(
                    lambda: answer(envoy, port),
                    lambda found: isinstance(found, tuple) and found[0] == 200,
                    "200 in plain text once the policy is deleted",
                )
                assert body == {"tls": False, "sni": None}
                assert backend.plain()
            finally:
                await envoy.close()
    finally:
        backend.close()
