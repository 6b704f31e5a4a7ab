"""The fixtures and helpers that the Gateway API tests on a real kube-apiserver share: the
module's cluster (each test module its own, in a folder named for it), its cached API server, an
admin client (bare, or with the standard-channel CRDs installed and meshplane's GatewayClass
created), and the CRD install itself; the polling wait `until`, and `launch_envoy`, which starts
an Envoy on a rendered bootstrap; `issue_backend_certificate`, a TLS backend's test CA and
certificate.

A test module makes its own `cluster`, `server` and `admin` with `cluster_fixtures` and
`admin_fixture` (pytest finds them by the names they are given)."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_asyncio.client import ApiClient

from tests.envoy_harness import Envoy, envoy_binary
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING, GROUP, apply_standard_crds
from tests.k8s.real_apiserver import CRDS, Cluster, RealApiServer, call, module_cluster
from tests.preconditions import require

V1 = f"/apis/{GROUP}/v1"
OURS = "meshplane.io/gateway-controller"


def cluster_fixtures(folder: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A module's `cluster` fixture (a real API server, its watch cache on, under a temporary
    folder named `folder`) and its `server` fixture (that cached API server)."""

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        yield from module_cluster(tmp_path_factory.mktemp(folder), uncached=False)

    @pytest.fixture
    def server(cluster: Cluster) -> RealApiServer:
        assert cluster.cached is not None
        return cluster.cached

    return cluster, server


async def ensure_crds(admin: ApiClient) -> None:
    """The standard-channel CRDs, installed once per cluster (the first test installs them itself)."""
    require(GATEWAY_API_MISSING)
    status, _ = await call(admin, "GET", f"{CRDS}/gatewayclasses.{GROUP}")
    if status == 404:
        await apply_standard_crds(admin)


async def ensure_meshplane_class(admin: ApiClient) -> None:
    """The GatewayClass `meshplane`, of meshplane's controller (left as it is when it is there)."""
    status, answer = await call(
        admin,
        "POST",
        f"{V1}/gatewayclasses",
        {"apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "meshplane"},
         "spec": {"controllerName": OURS}},
    )  # fmt: skip
    assert status in (201, 409), answer


def admin_fixture(*, serving: bool) -> Callable[..., Any]:
    """An `admin` fixture: a client of the cached API server with the admin's token, closed at the
    end; with `serving`, the CRDs are installed and the GatewayClass `meshplane` is there first."""

    @pytest.fixture
    async def admin(server: RealApiServer) -> AsyncIterator[ApiClient]:
        if serving:
            require(GATEWAY_API_MISSING)
        client = server.client()
        if serving:
            await ensure_crds(client)
            await ensure_meshplane_class(client)
        yield client
        await client.close()

    return admin


async def until(
    condition: Callable[[], Awaitable[Any]], what: str, deadline: float = 60.0, interval: float = 0.05
) -> Any:
    """Polls the async `condition` every `interval` seconds until it returns something true, and
    returns that; fails after `deadline` seconds showing what it last returned."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        seen = await condition()
        if seen:
            return seen
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}; last seen: {seen!r}")
        await asyncio.sleep(interval)


async def launch_envoy(bootstrap: Path, admin_path: Path, log_path: Path) -> Envoy:
    """An Envoy on the bootstrap file `bootstrap`, logging to `log_path`, once it has written its
    admin address to `admin_path` (stopped again when it never does)."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "info"),
                *("--admin-address-path", str(admin_path), "--drain-time-s", "1", "--parent-shutdown-time-s", "2"),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    envoy = Envoy(process, 0, 0, log_path, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))

    async def admin_port() -> int | None:
        text = admin_path.read_text().strip() if admin_path.exists() else ""
        return int(text.rsplit(":", 1)[1]) if text else None

    try:
        envoy.admin_port = await envoy.eventually(admin_port, "the admin address file")
    except BaseException:
        await envoy.stop()
        raise
    return envoy


@dataclass(frozen=True)
class Issued:
    """A backend's certificate and key files, and the PEM of the CA that signed it."""

    ca_pem: str
    certificate: Path
    key: Path


def issue_backend_certificate(workdir: Path, hostname: str) -> Issued:
    """A test CA and a server certificate it signs for the DNS name `hostname`, written to
    `workdir` as backend.crt and backend.key."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend test CA")])

    def builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]), key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    workdir.mkdir(parents=True, exist_ok=True)
    certificate, key_path = workdir / "backend.crt", workdir / "backend.key"
    certificate.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Issued(ca.public_bytes(serialization.Encoding.PEM).decode(), certificate, key_path)
