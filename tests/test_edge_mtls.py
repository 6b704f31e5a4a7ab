"""mTLS as the alternative to tokens: with TLS and a client CA, a device presenting a certificate
that names it (a URI SAN `…/device/<id>`) registers without a token, and only itself; a client
without a certificate does not get through the handshake.

The certificates are made per test by the `openssl` command line. Renewed certificates are served
without a restart, as on the xDS port (meshplane/tls.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.model import Site
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings
from tests.preconditions import require, requires

SITES = {"gym": Site("gym", "eu-central", device_ranges=("10.20.0.0/16",))}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, and a client certificate for device bike-1."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=CA", *ca, cwd=directory
    )
    for name, subject, san, usage in (
        ("server", "/CN=registry", "IP:127.0.0.1,DNS:localhost", "serverAuth"),
        ("client", "/CN=bike-1", "URI:spiffe://meshplane.test/device/bike-1", "clientAuth"),
    ):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory)
        (directory / f"{name}.cnf").write_text(
            f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\nsubjectAltName={san}\n"
        )
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-out", f"{name}.pem",
                "-days", "2", "-extfile", f"{name}.cnf", cwd=directory)  # fmt: skip


OPENSSL_MISSING = None if shutil.which("openssl") else "the openssl command (to make test certificates) is missing"
pytestmark = requires(OPENSSL_MISSING)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EdgeRegistryServer]:
    require(OPENSSL_MISSING)
    make_certificates(tmp_path)
    settings = EdgeSettings(
        db=":memory:",
        address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        tls_certificate=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        client_ca=tmp_path / "ca.pem",
    )
    edge = EdgeRegistryServer(settings, lambda: SITES, on_change=lambda: None)
    await edge.start()
    edge.settings = settings
    try:
        yield edge
    finally:
        await edge.shutdown(0.1)


def channel(server: EdgeRegistryServer, directory: Path, *, client_certificate: bool) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(directory / "ca.pem").read_bytes(),
        private_key=(directory / "client.key").read_bytes() if client_certificate else None,
        certificate_chain=(directory / "client.pem").read_bytes() if client_certificate else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials)


def bike(device_id: str) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        device_id=device_id, device_class="bike", site="gym", endpoints=[pb.Endpoint(address="10.20.1.5", port=8080)]
    )


async def test_a_client_certificate_authenticates_its_device_only(server: EdgeRegistryServer, tmp_path: Path) -> None:
    async with channel(server, tmp_path, client_certificate=True) as secure:
        stub = registry_pb2_grpc.RegistryStub(secure)
        registered = await stub.Register(bike("bike-1"))
        assert registered.lease_id
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await stub.Register(bike("bike-2"))
        assert other.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "credentials of device bike-1 cannot act on device bike-2" in (other.value.details() or "")


async def test_no_client_certificate_no_connection(server: EdgeRegistryServer, tmp_path: Path) -> None:
    async with channel(server, tmp_path, client_certificate=False) as secure:
        stub = registry_pb2_grpc.RegistryStub(secure)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Register(bike("bike-1"), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def replace_file(target: Path, source: Path) -> None:
    """Swaps `target` for a copy of `source` in one rename, as a certificate manager does."""
    staged = target.with_suffix(".staged")
    shutil.copyfile(source, staged)
    staged.replace(target)


async def registers(server: EdgeRegistryServer, directory: Path) -> bool:
    """Whether a device with `directory`'s client certificate, trusting its CA, gets registered
    (False: the TLS handshake failed, which gRPC reports as UNAVAILABLE)."""
    async with channel(server, directory, client_certificate=True) as secure:
        try:
            await registry_pb2_grpc.RegistryStub(secure).Register(bike("bike-1"), timeout=10)
        except grpc.aio.AioRpcError as error:
            failure = error
        else:
            return True
    assert failure.code() is grpc.StatusCode.UNAVAILABLE, failure
    return False


async def test_renewed_certificates_are_served_without_a_restart(server: EdgeRegistryServer, tmp_path: Path) -> None:
    """A whole new CA, server and client certificate: new connections use it at once; a renewal
    caught half-written (a key that is not the certificate's) is refused and the last good kept."""
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    make_certificates(renewed)
    assert server.tls is not None
    assert await registers(server, tmp_path)

    replace_file(tmp_path / "server.pem", renewed / "server.pem")  # the key is still the old one
    assert not await registers(server, renewed)
    assert await registers(server, tmp_path)
    assert server.tls.reloads == 0
    assert server.tls.failed_reloads >= 1

    replace_file(tmp_path / "server.key", renewed / "server.key")
    replace_file(tmp_path / "ca.pem", renewed / "ca.pem")
    assert await registers(server, renewed)
    assert not await registers(server, tmp_path)  # the old CA's client certificate is no longer trusted
    assert server.tls.reloads == 1
