"""Device policy end to end through a real edge-gateway Envoy: the registry issues device
certificates, the policy files say what each class may reach, and devices and a mobile app call the
cloud through the gateway's device listener.

- A class reaching a service (or path) it is not allowed is refused 403; allowed, it is served.
- A device flooding past its rate limit is answered 429 while other devices are served.
- A forged `x-device-class` (not the caller's registered class) is refused 403.
- A mobile app without a certificate needs a valid JWT for `billing`: a good token is served;
  a missing one, a bad signature, an expired token and a wrong issuer are answered 401.
- What is checked follows where a route sends traffic, not the Host named: a route table's own
  host, or the api's table sending a path to billing, needs billing's allowance and token.

The site takes optional client certificates so that the app (no device identity) can connect; the
devices present the certificates the registry issued for their CSRs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.xds.translate.edge_authorization import CALLER_HEADER
from meshplane.xds.translate.edge_gateway import IDENTITY_HEADER
from tests.certificates import Pair, csr_for
from tests.edge_plane import running_control_plane
from tests.envoy_harness import Envoy, start_envoy
from tests.ports import free_port
from tests.test_edge_zero_trust import Connection, client_context, edge_plane_settings, write_authorities

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

TOKENS = {"bike": "policy-bikes", "row": "policy-rows"}
DEVICE_RANGE = "198.18.77.0/24"
ISSUER = "https://accounts.test"
AUDIENCE = "fitness-app"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwks_of(key: ec.EllipticCurvePrivateKey) -> str:
    numbers = key.public_key().public_numbers()
    member = {"x": numbers.x, "y": numbers.y}
    return json.dumps(
        {
            "keys": [
                {"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256"}
                | {k: b64(v.to_bytes(32, "big")) for k, v in member.items()}
            ]
        }
    )


def make_jwt(key: ec.EllipticCurvePrivateKey, *, issuer: str = ISSUER, expires_in: float = 600) -> str:
    """An ES256 JWT (RFC 7515/7519), signed by hand: header.payload.signature, the signature r||s."""
    header = {"alg": "ES256", "typ": "JWT", "kid": "k1"}
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": "member-7", "iat": now, "exp": now + int(expires_in)}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


async def echo(request: web.Request) -> web.Response:
    headers = request.headers
    return web.Response(
        text=f"{request.path} class={headers.get('x-device-class', '')} identity={headers.get(IDENTITY_HEADER, '')} "
        f"caller={headers.get(CALLER_HEADER, '')}"
    )


@dataclass
class Plane:
    directory: Path
    gateway: Envoy
    site_ca_path: Path
    stub: Any  # registry_pb2_grpc.RegistryStub over grpc.aio
    signing_key: ec.EllipticCurvePrivateKey

    def context(self, pair: Pair | None) -> ssl.SSLContext:
        return client_context(self.site_ca_path, pair, self.directory)

    async def register(self, device: str, device_class: str, address: str) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        answer = await self.stub.Register(
            pb.RegisterRequest(
                device_id=device,
                device_class=device_class,
                site="gym",
                endpoints=[pb.Endpoint(address=address, port=8443)],
                ttl_seconds=600,
                csr=csr_for(key),
            ),
            metadata=(("authorization", f"Bearer {TOKENS[device_class]}"),),
        )
        return Pair(x509.load_pem_x509_certificate(answer.certificate.encode()), key)

    async def call(
        self, pair: Pair | None, path: str, host: str = "api", headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        connection = await Connection.open(self.gateway.outbound_port, self.context(pair))
        try:
            status, body, _ = await connection.get(path, host=host, headers=headers)
        finally:
            await connection.close()
        return status, body

    async def until(self, pair: Pair | None, path: str, status: int, host: str = "api", **headers: str) -> str:
        """Waits until a request answers `status` (the policy and the device reached the gateway)."""

        async def check() -> str | None:
            got, body = await self.call(pair, path, host, headers)
            return body if got == status else None

        found: str = await self.gateway.eventually(check, f"{host}{path} answering {status}")
        return found


# Route tables that send traffic to a service by other host names: their own (`pay.example`,
# `rides.example`), or the api's own, whose table sends `/rides/billing` to billing.
ROUTES = """routes:
  - name: pay
    hosts: [pay.example]
    rules:
      - to: [billing]
  - name: rides
    hosts: [rides.example]
    rules:
      - to: [api]
  - name: api
    service: api
    rules:
      - match: {path: {prefix: /rides/billing}}
        to: [billing]
      - to: [api]
"""

POLICY = """
device_policies:
  - name: bikes
    classes: [bike]
    allow:
      - service: api
        paths: [{{prefix: /rides}}]
  - name: rows
    classes: [row]
    rate_limit: {{requests: 1, interval: 1h, burst: 5}}
  - name: mobile
    jwt_providers:
      - name: accounts
        issuer: {issuer}
        audiences: [{audience}]
        jwks: '{jwks}'
    require_jwt:
      - service: billing
"""


@contextlib.asynccontextmanager
async def running_plane(directory: Path) -> AsyncIterator[Plane]:
    cloud = web.AppRunner(_echo_app(), access_log=None)
    await cloud.setup()
    cloud_port = free_port()
    await web.TCPSite(cloud, "127.0.0.1", cloud_port).start()
    try:
        site_ca_path = write_authorities(directory).site_ca_path
        policy = directory / "policy"
        signing_key = ec.generate_private_key(ec.SECP256R1())
        tls = "{certificate: gym-gateway, client_certificates: optional, to_devices: plaintext}"
        (policy / "edge.yaml").write_text(
            f"""secrets:
  - {{name: gym-gateway, certificate_file: gateway.pem, key_file: gateway.key}}
sites:
  - {{id: gym, region: local, device_ranges: ['{DEVICE_RANGE}'], tls: {tls}}}
services:
  - {{name: api, port: 8080, endpoints: [{{address: 127.0.0.1, port: {cloud_port}}}]}}
  - {{name: billing, port: 8080, endpoints: [{{address: 127.0.0.1, port: {cloud_port}}}]}}
"""
            + ROUTES
            + POLICY.format(issuer=ISSUER, audience=AUDIENCE, jwks=jwks_of(signing_key))
        )
        tokens = directory / "tokens.yaml"
        tokens.write_text(
            "tokens:\n" + "".join(f"  - {{sha256: {token_digest(t)}, class: {c}}}\n" for c, t in TOKENS.items())
        )
        settings = edge_plane_settings(directory, tokens, LeaseSettings(default_ttl=600, min_ttl=1, check_interval=0.5))
        async with (
            running_control_plane(settings) as plane,
            grpc.aio.insecure_channel(f"127.0.0.1:{plane.edge.port}") as channel,  # type: ignore[union-attr]
        ):
            gateway = await start_envoy(
                directory / "envoy",
                plane.xds_port,
                node_id="gateway-gym",
                template="edge-gateway.yaml",
                metadata={"role": "edge-gateway", "site": "gym", "listen_address": "127.0.0.1"},
            )
            try:
                yield Plane(directory, gateway, site_ca_path, registry_pb2_grpc.RegistryStub(channel), signing_key)
            finally:
                await gateway.stop()
    finally:
        await cloud.cleanup()


def _echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    async with running_plane(tmp_path) as running:
        yield running


async def test_a_class_reaches_only_what_it_is_allowed_and_cannot_forge_its_class(plane: Plane) -> None:
    bike = await plane.register("bike-1", "bike", "198.18.77.2")
    row = await plane.register("row-1", "row", "198.18.77.3")
    body = await plane.until(bike, "/rides/7", 200)
    assert body.startswith("/rides/7 class= identity=spiffe://meshplane.local/site/gym/device/bike-1 caller=")
    # The caller key the gateway wrote is removed before the request leaves it.
    assert body.endswith("caller=")
    assert await plane.call(bike, "/workouts") == (403, "RBAC: access denied")
    assert await plane.call(bike, "/ridesx") == (403, "RBAC: access denied")
    assert (await plane.call(bike, "/", host="billing"))[0] == 403
    # A class no policy restricts reaches every path.
    assert (await plane.until(row, "/workouts", 200)).startswith("/workouts ")
    # The canary header: the registered class passes and reaches the cloud; another is refused.
    status, body = await plane.call(bike, "/rides", headers={"x-device-class": "bike"})
    assert (status, body.split()[1]) == (200, "class=bike")
    assert await plane.call(bike, "/rides", headers={"x-device-class": "row"}) == (403, "RBAC: access denied")
    assert await plane.call(row, "/workouts", headers={"x-device-class": "bike"}) == (403, "RBAC: access denied")
    # An app without a certificate may not claim a class either.
    assert (await plane.call(None, "/workouts", headers={"x-device-class": "bike"}))[0] == 403
    assert (await plane.call(None, "/workouts"))[0] == 200


async def test_a_flooding_device_is_limited_while_the_others_are_served(plane: Plane) -> None:
    flooder = await plane.register("row-1", "row", "198.18.77.3")
    neighbour = await plane.register("row-2", "row", "198.18.77.4")
    bike = await plane.register("bike-1", "bike", "198.18.77.2")
    await plane.until(neighbour, "/", 200)  # one of its 5 tokens
    await plane.until(bike, "/rides", 200)
    statuses = []
    for _ in range(20):
        # A caller header written by the device changes nothing: the gateway writes its own.
        status, _ = await plane.call(flooder, "/", headers={CALLER_HEADER: "someone-else"})
        statuses.append(status)
        if status == 429:
            break
    assert statuses[-1] == 429, statuses
    assert len(statuses) <= 6, statuses  # a burst of 5, at most one spent while the config arrived
    assert (await plane.call(flooder, "/"))[0] == 429
    assert (await plane.call(neighbour, "/"))[0] == 200
    assert (await plane.call(bike, "/rides"))[0] == 200


async def test_a_mobile_app_needs_a_valid_token_for_billing(plane: Plane) -> None:
    good = make_jwt(plane.signing_key)
    body = await plane.until(None, "/invoices", 200, host="billing", authorization=f"Bearer {good}")
    assert body.startswith("/invoices ")
    refused = {
        "missing": {},
        "bad signature": {"authorization": f"Bearer {make_jwt(ec.generate_private_key(ec.SECP256R1()))}"},
        "expired": {"authorization": f"Bearer {make_jwt(plane.signing_key, expires_in=-600)}"},
        "wrong issuer": {"authorization": f"Bearer {make_jwt(plane.signing_key, issuer='https://evil.test')}"},
    }
    for what, headers in refused.items():
        status, body = await plane.call(None, "/invoices", host="billing", headers=headers)
        assert status == 401, f"{what}: {status} {body}"
    # Other services need no token.
    assert (await plane.call(None, "/", host="api"))[0] == 200


async def test_a_route_table_reaching_a_service_carries_its_restrictions(plane: Plane) -> None:
    bike = await plane.register("bike-1", "bike", "198.18.77.2")
    await plane.until(bike, "/rides/7", 200)
    # Bikes may reach the api's /rides: by the api's names, and by a table's host sending there.
    assert (await plane.until(bike, "/rides/3", 200, host="rides.example")).startswith("/rides/3 ")
    assert (await plane.call(bike, "/workouts", host="rides.example"))[0] == 403
    # Bikes may not reach billing: neither by a table's host whose backend it is, nor through the
    # api's table, whose /rides/billing goes to billing (a path bikes may use on the api).
    assert await plane.call(bike, "/rides/1", host="pay.example") == (403, "RBAC: access denied")
    assert await plane.call(bike, "/rides/billing/1") == (403, "RBAC: access denied")
    # Billing needs a token, whichever host reaches it.
    for host, path in (("pay.example", "/invoices"), ("api", "/rides/billing/1")):
        status, body = await plane.call(None, path, host=host)
        assert status == 401, f"{host}{path}: {status} {body}"
    good = {"authorization": f"Bearer {make_jwt(plane.signing_key)}"}
    assert (await plane.call(None, "/invoices", host="pay.example", headers=good))[0] == 200
    assert (await plane.call(None, "/rides/billing/1", headers=good))[0] == 200
