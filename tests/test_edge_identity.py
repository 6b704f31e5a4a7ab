"""Device identity: the registry's CA signs the CSR a device sends with Register, over the real gRPC
API and its JSON mirror (in-process on 127.0.0.1:0), and refuses every CSR it must not sign, with
the reason. The CA and the devices' keys are made here with `cryptography`."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import ipaddress
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry import identity
from meshplane.discovery.registry.auth import Principal, PrincipalKind, token_digest
from meshplane.discovery.registry.registry import EdgeRegistry, ErrorCode, LeaseSettings, RegisterInput, RegistryError
from meshplane.discovery.registry.store import MemoryStore
from meshplane.model import GatewayAddress, Site
from meshplane.registry_api import options
from meshplane.registry_api.console import devices_command
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings
from meshplane.tls import TlsFilesError
from tests import certificates

SITE = Site("gym-berlin", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16",))
TOKENS = {"bike-1": "token-bike-1", "bikes": "token-bikes", "ops": "token-ops"}
SPIFFE_ID = "spiffe://meshplane.local/site/gym-berlin/device/bike-1"
TTL = 30

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Ca:
    certificate: x509.Certificate
    certificate_path: Path
    key_path: Path


def make_ca(directory: Path) -> Ca:
    pair = certificates.make_ca("devices-ca")
    certificate_path, key_path = directory / "ca.pem", directory / "ca.key"
    certificate_path.write_bytes(pair.certificate_pem)
    key_path.write_bytes(pair.key_pem)
    return Ca(pair.certificate, certificate_path, key_path)


def make_csr(
    key: PrivateKey | None = None,
    *,
    subject: list[x509.NameAttribute[str]] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[PrivateKey, str]:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject or []))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def tampered(csr_pem: str) -> str:
    """`csr_pem` with one bit of its signature flipped (the signature is the DER's last bytes)."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def tokens_file(path: Path) -> Path:
    path.write_text(
        "tokens:\n"
        f"  - {{sha256: {token_digest(TOKENS['bike-1'])}, device: bike-1}}\n"
        f"  - {{sha256: {token_digest(TOKENS['bikes'])}, class: bike}}\n"
        f"  - {{sha256: {token_digest(TOKENS['ops'])}, operator: ops}}\n"
    )
    return path


def auth(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


def bike(csr: str = "", lease_id: str = "") -> pb.RegisterRequest:
    return pb.RegisterRequest(
        device_id="bike-1",
        device_class="bike",
        site=SITE.id,
        endpoints=[pb.Endpoint(address="10.20.1.5", port=8080)],
        version="3.2.1",
        ttl_seconds=TTL,
        csr=csr,
        lease_id=lease_id,
    )


def settings(tmp_path: Path, ca: Ca | None, **more: object) -> EdgeSettings:
    return EdgeSettings(
        db=str(tmp_path / "registry.db"),
        address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        tokens=tokens_file(tmp_path / "tokens.yaml"),
        ca_certificate=ca.certificate_path if ca else None,
        ca_key=ca.key_path if ca else None,
        leases=LeaseSettings(default_ttl=30, min_ttl=1, check_interval=0.1),
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path)


async def running(edge_settings: EdgeSettings) -> EdgeRegistryServer:
    edge = EdgeRegistryServer(edge_settings, lambda: {SITE.id: SITE}, on_change=lambda: None)
    await edge.start()
    return edge


@pytest.fixture
async def server(tmp_path: Path, ca: Ca) -> AsyncIterator[EdgeRegistryServer]:
    edge = await running(settings(tmp_path, ca))
    try:
        yield edge
    finally:
        await edge.shutdown(0.1)


@pytest.fixture
async def stub(server: EdgeRegistryServer) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def uri_sans(certificate: x509.Certificate) -> list[x509.GeneralName]:
    return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def public_der(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_a_device_registering_with_a_csr_gets_a_certificate_for_its_spiffe_id(
    stub: registry_pb2_grpc.RegistryStub, server: EdgeRegistryServer, ca: Ca
) -> None:
    key, csr = make_csr()
    answer = await stub.Register(bike(csr), metadata=auth("bike-1"))

    certificate = x509.load_pem_x509_certificate(answer.certificate.encode())
    certificate.verify_directly_issued_by(ca.certificate)
    assert x509.load_pem_x509_certificate(answer.certificate_chain.encode()) == ca.certificate
    assert public_der(certificate.public_key()) == public_der(key.public_key())
    assert uri_sans(certificate) == [x509.UniformResourceIdentifier(SPIFFE_ID)]
    assert certificate.subject == x509.Name([])
    extensions = certificate.extensions
    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_encipherment, usage.key_cert_sign) == (True, False, False)
    assert list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    ]
    assert 0 < certificate.serial_number < 2**128

    # Lifetime: from a little before now to LIFETIME_LEASES lease TTLs after the registration.
    registered_at = answer.expires_at.ToSeconds() - answer.ttl_seconds
    not_after = certificate.not_valid_after_utc.timestamp()
    assert abs(not_after - (registered_at + identity.LIFETIME_LEASES * TTL)) <= 1
    not_before = certificate.not_valid_before_utc.timestamp()
    assert registered_at - identity.NOT_BEFORE_SKEW - 1 <= not_before <= registered_at

    # Get and List show what was issued (never the certificate itself).
    for device in [
        await stub.Get(pb.GetRequest(device_id="bike-1"), metadata=auth("bike-1")),
        (await stub.List(pb.ListRequest(), metadata=auth("ops"))).devices[0],
    ]:
        assert device.certificate.serial == f"{certificate.serial_number:x}"
        assert device.certificate.not_after.ToSeconds() == int(not_after)
        assert device.certificate.uri_san == SPIFFE_ID
    events = server.status.events
    assert (events["certificates_issued"], events.get("csr_refused", 0)) == (1, 0)


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-2048"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p-384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
    ],
)
async def test_rsa_p384_and_ed25519_keys_are_accepted(stub: registry_pb2_grpc.RegistryStub, make_key: object) -> None:
    assert callable(make_key)
    key, csr = make_csr(make_key())
    answer = await stub.Register(bike(csr), metadata=auth("bike-1"))
    certificate = x509.load_pem_x509_certificate(answer.certificate.encode())
    assert public_der(certificate.public_key()) == public_der(key.public_key())
    # keyEncipherment only for an RSA key.
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment is isinstance(key, rsa.RSAPrivateKey)


async def test_a_csr_with_exactly_the_spiffe_id_or_the_device_id_as_subject_is_accepted(
    stub: registry_pb2_grpc.RegistryStub,
) -> None:
    _, csr = make_csr(
        subject=[x509.NameAttribute(NameOID.COMMON_NAME, "bike-1")], sans=[x509.UniformResourceIdentifier(SPIFFE_ID)]
    )
    answer = await stub.Register(bike(csr), metadata=auth("bike-1"))
    assert uri_sans(x509.load_pem_x509_certificate(answer.certificate.encode())) == [
        x509.UniformResourceIdentifier(SPIFFE_ID)
    ]


def _valid_csr() -> str:
    return make_csr()[1]


REFUSED_CSRS = [
    pytest.param(lambda: "not a csr", "is not one PEM certificate request", id="not-pem"),
    pytest.param(
        lambda: _valid_csr().replace("CERTIFICATE REQUEST", "CERTIFICATE"),
        "is not one PEM certificate request",
        id="a-certificate-block",
    ),
    pytest.param(
        lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "is not a well-formed PEM certificate request",
        id="pem-of-garbage",
    ),
    pytest.param(lambda: _valid_csr() + "\n" * 9000, "at most 8192", id="over-8-KiB"),
    pytest.param(lambda: tampered(_valid_csr()), "signature does not verify", id="bad-signature"),
    pytest.param(
        lambda: make_csr(sans=[x509.DNSName("bike-1.example.com")])[1],
        "SANs must be none or exactly URI:" + SPIFFE_ID + ", not 'DNS:bike-1.example.com'",
        id="dns-san",
    ),
    pytest.param(
        lambda: make_csr(sans=[x509.IPAddress(ipaddress.ip_address("10.20.1.5"))])[1], "not 'IP:10.20.1.5'", id="ip-san"
    ),
    pytest.param(
        lambda: make_csr(
            sans=[x509.UniformResourceIdentifier("spiffe://meshplane.local/site/gym-berlin/device/bike-2")]
        )[1],
        "not 'URI:spiffe://meshplane.local/site/gym-berlin/device/bike-2'",
        id="another-device's-uri",
    ),
    pytest.param(
        lambda: make_csr(
            sans=[x509.UniformResourceIdentifier(SPIFFE_ID), x509.UniformResourceIdentifier("https://evil.example")]
        )[1],
        "SANs must be none or exactly",
        id="the-uri-and-another",
    ),
    pytest.param(
        lambda: make_csr(subject=[x509.NameAttribute(NameOID.COMMON_NAME, "bike-2")])[1],
        "subject must be empty or only CN=bike-1 (it names 'CN=bike-2')",
        id="another-subject",
    ),
    pytest.param(
        lambda: make_csr(
            subject=[
                x509.NameAttribute(NameOID.COMMON_NAME, "bike-1"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ops"),
            ]
        )[1],
        "subject must be empty or only CN=bike-1",
        id="subject-with-more",
    ),
    pytest.param(
        lambda: make_csr(rsa.generate_private_key(65537, 1024))[1],
        "an RSA key of 1024 bits; 2048 to 8192 are accepted",
        id="rsa-1024",
    ),
    pytest.param(
        lambda: make_csr(ec.generate_private_key(ec.SECP256K1()))[1],
        "an EC key on curve secp256k1; P-256 and P-384 are accepted",
        id="secp256k1",
    ),
    pytest.param(
        lambda: make_csr(ec.generate_private_key(ec.SECP521R1()))[1],
        "an EC key on curve secp521r1",
        id="p-521",
    ),
]


@pytest.mark.parametrize(("make", "reason"), REFUSED_CSRS)
async def test_a_csr_the_ca_must_not_sign_is_refused_with_its_reason(
    stub: registry_pb2_grpc.RegistryStub, server: EdgeRegistryServer, make: object, reason: str
) -> None:
    assert callable(make)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Register(bike(make()), metadata=auth("bike-1"))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (refused.value.details() or "")
    # The registration is refused whole: nothing registered, the refusal counted.
    assert server.registry.get("bike-1") is None
    events = server.status.events
    assert (events["csr_refused"], events["rejected_registrations"], events.get("certificates_issued", 0)) == (1, 1, 0)


async def test_a_refused_csr_leaves_a_live_registration_and_its_certificate_as_they_were(
    stub: registry_pb2_grpc.RegistryStub, server: EdgeRegistryServer
) -> None:
    first = await stub.Register(bike(_valid_csr()), metadata=auth("bike-1"))
    before = server.registry.get("bike-1")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Register(bike(tampered(_valid_csr()), lease_id=first.lease_id), metadata=auth("bike-1"))
    assert server.registry.get("bike-1") == before


async def test_a_csr_sent_to_a_registry_without_a_ca_is_refused(tmp_path: Path) -> None:
    edge = await running(settings(tmp_path, None))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Register(bike(_valid_csr()), metadata=auth("bike-1"))
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "this registry issues no certificates" in (refused.value.details() or "")
            # Without a csr the same registry registers as ever.
            answer = await stub.Register(bike(), metadata=auth("bike-1"))
            assert (answer.lease_id != "", answer.certificate, answer.certificate_chain) == (True, "", "")
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"http://127.0.0.1:{edge.http_port}/v1/register",
                json={**_json_bike(), "csr": _valid_csr()},
                headers={"Authorization": f"Bearer {TOKENS['bike-1']}"},
            )
            assert response.status == 400
            body = await response.json()
        assert body["code"] == "FAILED_PRECONDITION"
        assert "this registry issues no certificates" in body["message"]
        assert edge.status.events["csr_refused"] == 2
    finally:
        await edge.shutdown(0.1)


async def test_a_registration_without_a_csr_is_unchanged(
    stub: registry_pb2_grpc.RegistryStub, server: EdgeRegistryServer
) -> None:
    answer = await stub.Register(bike(), metadata=auth("bike-1"))
    assert (answer.certificate, answer.certificate_chain) == ("", "")
    device = await stub.Get(pb.GetRequest(device_id="bike-1"), metadata=auth("bike-1"))
    assert not device.HasField("certificate")
    assert "certificates_issued" not in server.status.events


async def test_re_registering_with_a_new_csr_renews_and_heartbeats_do_not_issue(
    stub: registry_pb2_grpc.RegistryStub, server: EdgeRegistryServer
) -> None:
    first_key, first_csr = make_csr()
    first = await stub.Register(bike(first_csr), metadata=auth("bike-1"))
    renewed = await stub.Heartbeat(
        pb.HeartbeatRequest(device_id="bike-1", lease_id=first.lease_id), metadata=auth("bike-1")
    )
    assert renewed.ttl_seconds == TTL
    first_certificate = x509.load_pem_x509_certificate(first.certificate.encode())
    device = await stub.Get(pb.GetRequest(device_id="bike-1"), metadata=auth("bike-1"))
    assert device.certificate.serial == f"{first_certificate.serial_number:x}"
    assert server.status.events["certificates_issued"] == 1

    second_key, second_csr = make_csr()
    second = await stub.Register(bike(second_csr, lease_id=first.lease_id), metadata=auth("bike-1"))
    assert second.lease_id == first.lease_id
    second_certificate = x509.load_pem_x509_certificate(second.certificate.encode())
    assert second_certificate.serial_number != first_certificate.serial_number
    assert public_der(second_certificate.public_key()) == public_der(second_key.public_key())
    assert public_der(first_certificate.public_key()) == public_der(first_key.public_key())
    device = await stub.Get(pb.GetRequest(device_id="bike-1"), metadata=auth("bike-1"))
    assert device.certificate.serial == f"{second_certificate.serial_number:x}"

    # Re-registering without a csr keeps the record of the certificate the device still holds.
    third = await stub.Register(bike(lease_id=first.lease_id), metadata=auth("bike-1"))
    assert third.certificate == ""
    device = await stub.Get(pb.GetRequest(device_id="bike-1"), metadata=auth("bike-1"))
    assert device.certificate.serial == f"{second_certificate.serial_number:x}"
    # The first certificate of a registration is an issuance, the next ones renewals.
    assert (server.status.events["certificates_issued"], server.status.events["certificates_renewed"]) == (1, 1)


def _json_bike() -> dict[str, object]:
    return {
        "device_id": "bike-1",
        "device_class": "bike",
        "site": SITE.id,
        "endpoints": [{"address": "10.20.1.5", "port": 8080}],
        "ttl_seconds": TTL,
    }


async def test_the_json_api_issues_and_refuses_alike(server: EdgeRegistryServer, ca: Ca) -> None:
    url = f"http://127.0.0.1:{server.http_port}/v1/register"
    headers = {"Authorization": f"Bearer {TOKENS['bike-1']}"}
    async with aiohttp.ClientSession() as session:
        refused = await session.post(
            url, json={**_json_bike(), "csr": make_csr(sans=[x509.DNSName("evil.example")])[1]}, headers=headers
        )
        assert refused.status == 400
        body = await refused.json()
        assert body["code"] == "INVALID_ARGUMENT"
        assert "not 'DNS:evil.example'" in body["message"]

        answer = await session.post(url, json={**_json_bike(), "csr": _valid_csr()}, headers=headers)
        assert answer.status == 200, await answer.text()
        registered = await answer.json()
        device = await (
            await session.get(f"http://127.0.0.1:{server.http_port}/v1/devices/bike-1", headers=headers)
        ).json()
    certificate = x509.load_pem_x509_certificate(registered["certificate"].encode())
    certificate.verify_directly_issued_by(ca.certificate)
    assert uri_sans(certificate) == [x509.UniformResourceIdentifier(SPIFFE_ID)]
    assert registered["certificate_chain"] == ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
    assert device["certificate"]["serial"] == f"{certificate.serial_number:x}"
    assert device["certificate"]["uri_san"] == SPIFFE_ID

    # `meshplane devices get` shows it (urllib blocks: off the server's loop).
    args = argparse.Namespace(
        action="get",
        device_id="bike-1",
        registry=f"http://127.0.0.1:{server.http_port}",
        token=TOKENS["bike-1"],
        output="table",
    )
    out = io.StringIO()
    assert await asyncio.to_thread(devices_command, args, out) == 0
    line = out.getvalue().splitlines()[-1]
    assert line.startswith(f"CERTIFICATE  serial {certificate.serial_number:x}  not after 20")
    assert line.endswith(f"SAN {SPIFFE_ID}")


async def test_the_issued_certificate_survives_a_restart(tmp_path: Path, ca: Ca) -> None:
    edge = await running(settings(tmp_path, ca))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            answer = await registry_pb2_grpc.RegistryStub(channel).Register(bike(_valid_csr()), metadata=auth("bike-1"))
    finally:
        await edge.shutdown(0.1)
    serial = x509.load_pem_x509_certificate(answer.certificate.encode()).serial_number
    edge = await running(settings(tmp_path, ca))
    try:
        row = edge.registry.get("bike-1")
        assert row is not None
        assert row.certificate is not None
        assert (row.certificate.serial, row.certificate.uri_san) == (f"{serial:x}", SPIFFE_ID)
    finally:
        await edge.shutdown(0.1)


async def test_the_trust_domain_names_the_certificate(tmp_path: Path, ca: Ca) -> None:
    edge = await running(settings(tmp_path, ca, trust_domain="fitness.example"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            answer = await registry_pb2_grpc.RegistryStub(channel).Register(bike(_valid_csr()), metadata=auth("bike-1"))
    finally:
        await edge.shutdown(0.1)
    certificate = x509.load_pem_x509_certificate(answer.certificate.encode())
    assert uri_sans(certificate) == [
        x509.UniformResourceIdentifier("spiffe://fitness.example/site/gym-berlin/device/bike-1")
    ]


def test_the_certificate_lifetime_is_capped_by_the_maximum_and_the_ca(ca: Ca) -> None:
    authority = identity.CertificateAuthority(ca.certificate_path, ca.key_path)
    now = datetime.datetime.now(datetime.UTC).timestamp()
    long_lease = authority.issue(_valid_csr(), site=SITE.id, device_id="bike-1", lease_ttl=7 * 86400, now=now)
    assert long_lease.record.not_after == pytest.approx(now + identity.MAX_LIFETIME, abs=1)
    ca_end = ca.certificate.not_valid_after_utc.timestamp()
    near_the_end = authority.issue(_valid_csr(), site=SITE.id, device_id="bike-1", lease_ttl=3600, now=ca_end - 60)
    assert near_the_end.record.not_after == pytest.approx(ca_end, abs=1)


def test_a_renewed_ca_is_picked_up_and_a_half_written_one_is_not(tmp_path: Path, ca: Ca) -> None:
    authority = identity.CertificateAuthority(ca.certificate_path, ca.key_path)
    now = datetime.datetime.now(datetime.UTC).timestamp()
    (tmp_path / "renewed").mkdir()
    renewed = make_ca(tmp_path / "renewed")
    ca.certificate_path.write_bytes(renewed.certificate_path.read_bytes())  # the key is not yet written
    issued = authority.issue(_valid_csr(), site=SITE.id, device_id="bike-1", lease_ttl=30, now=now)
    x509.load_pem_x509_certificate(issued.certificate_pem.encode()).verify_directly_issued_by(ca.certificate)
    assert authority.failed_reloads == 1
    ca.key_path.write_bytes(renewed.key_path.read_bytes())
    issued = authority.issue(_valid_csr(), site=SITE.id, device_id="bike-1", lease_ttl=30, now=now)
    x509.load_pem_x509_certificate(issued.certificate_pem.encode()).verify_directly_issued_by(renewed.certificate)
    assert (authority.reloads, issued.chain_pem) == (1, renewed.certificate_path.read_text())


def test_ca_files_that_cannot_serve_stop_the_start(tmp_path: Path, ca: Ca) -> None:
    not_a_ca = tmp_path / "leaf.pem"
    leaf = identity.CertificateAuthority(ca.certificate_path, ca.key_path).issue(
        _valid_csr(),
        site=SITE.id,
        device_id="bike-1",
        lease_ttl=30,
        now=datetime.datetime.now(datetime.UTC).timestamp(),
    )
    not_a_ca.write_text(leaf.certificate_pem)
    other_key = tmp_path / "other.key"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cases = [
        (EdgeSettings(db=":memory:", ca_certificate=tmp_path / "missing.pem", ca_key=ca.key_path), "missing.pem"),
        (EdgeSettings(db=":memory:", ca_certificate=ca.certificate_path, ca_key=other_key), "not the key of"),
        (
            EdgeSettings(db=":memory:", ca_certificate=ca.certificate_path, ca_key=ca.certificate_path),
            "not an unencrypted PEM private key",
        ),
        (EdgeSettings(db=":memory:", ca_certificate=ca.certificate_path), "give both or neither"),
    ]
    for edge_settings, reason in cases:
        with pytest.raises(TlsFilesError, match=reason.replace("(", r"\(")):
            EdgeRegistryServer(edge_settings, lambda: {SITE.id: SITE}, on_change=lambda: None)


def test_the_flags_go_together_and_the_trust_domain_is_checked(tmp_path: Path, ca: Ca) -> None:
    parser = argparse.ArgumentParser()
    options.add_edge_arguments(parser)
    both = options.edge_settings(
        parser.parse_args(
            [
                "--registry-db",
                ":memory:",
                "--registry-ca-cert",
                str(ca.certificate_path),
                "--registry-ca-key",
                str(ca.key_path),
            ]
        )
    )
    assert both is not None
    assert (both.ca_certificate, both.ca_key, both.trust_domain) == (
        ca.certificate_path,
        ca.key_path,
        "meshplane.local",
    )
    with pytest.raises(SystemExit) as stopped:
        options.edge_settings(parser.parse_args(["--registry-db", ":memory:", "--registry-ca-cert", "ca.pem"]))
    assert stopped.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--registry-trust-domain", "Not A Domain"])
    assert options.DEFAULT_TRUST_DOMAIN == identity.DEFAULT_TRUST_DOMAIN


def server_certificate(ca: Ca, directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by `ca`, for the registry's TLS port."""
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certificate_path, key_path = directory / "server.pem", directory / "server.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path


async def test_an_issued_certificate_authenticates_the_device_on_the_registrys_mtls_port(
    tmp_path: Path, ca: Ca
) -> None:
    """The one place these certificates are credentials today: the registry's own gRPC port, when
    its client CA is the issuing CA. The first certificate comes over the JSON port (a token)."""
    tls_certificate, tls_key = server_certificate(ca, tmp_path)
    edge = await running(
        settings(tmp_path, ca, tls_certificate=tls_certificate, tls_key=tls_key, client_ca=ca.certificate_path)
    )
    try:
        key, csr = make_csr()
        issued = (await _registered_over_json(edge, csr))["certificate"]
        async with _mtls_stub(edge, ca, key, issued) as channel:
            device = await registry_pb2_grpc.RegistryStub(channel).Get(pb.GetRequest(device_id="bike-1"))
        assert device.certificate.uri_san == SPIFFE_ID
    finally:
        await edge.shutdown(0.1)


def test_an_expired_ca_refuses_every_csr_as_a_precondition(ca: Ca) -> None:
    authority = identity.CertificateAuthority(ca.certificate_path, ca.key_path)
    after_the_ca = ca.certificate.not_valid_after_utc.timestamp() + 1
    with pytest.raises(identity.CaExpired, match="CA certificate has expired"):
        authority.issue(_valid_csr(), site=SITE.id, device_id="bike-1", lease_ttl=30, now=after_the_ca)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


async def _registered_over_json(edge: EdgeRegistryServer, csr: str) -> Any:
    """bike-1 registered with `csr` on the JSON port, by its class token: the answer (200 asserted)."""
    async with aiohttp.ClientSession() as session:
        answer = await session.post(
            f"http://127.0.0.1:{edge.http_port}/v1/register",
            json={**_json_bike(), "csr": csr},
            headers={"Authorization": f"Bearer {TOKENS['bike-1']}"},
        )
        assert answer.status == 200, await answer.text()
        return await answer.json()


def _mtls_stub(edge: EdgeRegistryServer, ca: Ca, key: PrivateKey, certificate_pem: str) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.certificate_path.read_bytes(),
        private_key=_key_pem(key),
        certificate_chain=certificate_pem.encode(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{edge.port}", credentials)


async def _code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    code: grpc.StatusCode = refused.value.code()
    return code


async def test_a_device_certificate_renews_only_the_live_registration_it_was_last_issued_for(
    tmp_path: Path, ca: Ca
) -> None:
    """A stolen certificate cannot chain itself forever: once its registration is gone (removed or
    lapsed) or a newer certificate was issued, presenting it registers nothing; a token must."""
    tls_certificate, tls_key = server_certificate(ca, tmp_path)
    edge = await running(
        settings(tmp_path, ca, tls_certificate=tls_certificate, tls_key=tls_key, client_ca=ca.certificate_path)
    )
    try:
        first_key, csr = make_csr()
        first = await _registered_over_json(edge, csr)
        lease_id = first["lease_id"]
        async with _mtls_stub(edge, ca, first_key, first["certificate"]) as channel:
            by_first = registry_pb2_grpc.RegistryStub(channel)
            second_key, second_csr = make_csr()
            renewed = await by_first.Register(bike(second_csr, lease_id=lease_id))
            assert renewed.lease_id == lease_id
            # Superseded: the first certificate is no longer the device's, so it renews nothing.
            _, third_csr = make_csr()
            assert await _code_of(by_first.Register(bike(third_csr, lease_id=lease_id))) is (
                grpc.StatusCode.PERMISSION_DENIED
            )
            assert await _code_of(by_first.Register(bike(lease_id=lease_id))) is grpc.StatusCode.PERMISSION_DENIED
        async with _mtls_stub(edge, ca, second_key, renewed.certificate) as channel:
            by_second = registry_pb2_grpc.RegistryStub(channel)
            await by_second.Deregister(pb.DeregisterRequest(device_id="bike-1", lease_id=lease_id))
            # Deregistered: its still valid certificate gets no new one, with or without the old lease id.
            _, csr = make_csr()
            assert await _code_of(by_second.Register(bike(csr))) is grpc.StatusCode.PERMISSION_DENIED
            assert await _code_of(by_second.Register(bike(csr, lease_id=lease_id))) is (
                grpc.StatusCode.PERMISSION_DENIED
            )
        events = edge.status.events
        assert (events["certificates_issued"], events["certificates_renewed"], events["identity_revocations"]) == (
            1,
            1,
            1,
        )
        assert "bike-1" not in {device.id for device in edge.registry.devices()}
        # The device token still registers it, and may get a certificate.
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{edge.port}",
            grpc.ssl_channel_credentials(
                root_certificates=ca.certificate_path.read_bytes(),
                private_key=_key_pem(second_key),
                certificate_chain=renewed.certificate.encode(),
            ),
        ) as channel:
            again = await registry_pb2_grpc.RegistryStub(channel).Register(bike(make_csr()[1]), metadata=auth("bike-1"))
        assert again.certificate
    finally:
        await edge.shutdown(0.1)


async def test_a_lapsed_registrations_certificate_renews_nothing(tmp_path: Path, ca: Ca) -> None:
    clock = [datetime.datetime.now(datetime.UTC).timestamp()]
    registry = EdgeRegistry(
        MemoryStore(),
        lambda: {SITE.id: SITE},
        leases=LeaseSettings(default_ttl=30, min_ttl=1),
        clock=lambda: clock[0],
        authority=identity.CertificateAuthority(ca.certificate_path, ca.key_path),
    )
    token = Principal(PrincipalKind.DEVICE, "bike-1")
    first = await registry.register_issuing(token, _input(make_csr()[1]))
    assert first.issued is not None
    by_certificate = Principal(PrincipalKind.DEVICE, "bike-1", first.issued.record.serial)
    renewed = await registry.register_issuing(by_certificate, _input(make_csr()[1], first.registration.lease_id))
    assert renewed.issued is not None
    clock[0] += 31  # the lease lapses; the certificate (2 leases) is still valid
    assert await registry.expire() == ["bike-1"]
    assert registry.events["identity_revocations"] == 1
    current = Principal(PrincipalKind.DEVICE, "bike-1", renewed.issued.record.serial)
    with pytest.raises(RegistryError) as refused:
        await registry.register_issuing(current, _input(make_csr()[1], first.registration.lease_id))
    assert refused.value.code is ErrorCode.PERMISSION_DENIED
    assert "register with a token" in refused.value.reason


def _input(csr: str = "", lease_id: str = "", version: str = "3.2.1") -> RegisterInput:
    return RegisterInput(
        "bike-1", "bike", SITE.id, (("10.20.1.5", 8080),), version=version, ttl_seconds=TTL, csr=csr, lease_id=lease_id
    )


async def test_with_device_credentials_only_a_class_token_gets_no_certificate(tmp_path: Path, ca: Ca) -> None:
    parser = argparse.ArgumentParser()
    options.add_edge_arguments(parser)
    parsed = options.edge_settings(
        parser.parse_args(["--registry-db", ":memory:", "--registry-csr-device-credentials-only"])
    )
    assert parsed is not None
    assert parsed.csr_from_class_tokens is False
    edge = await running(settings(tmp_path, ca, csr_from_class_tokens=False))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            _, csr = make_csr()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Register(bike(csr), metadata=auth("bikes"))
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "not a class token" in (refused.value.details() or "")
            assert "bike-1" not in {device.id for device in edge.registry.devices()}  # nothing registered
            # Without a CSR the class token registers as before; the device's own token gets a certificate.
            registered = await stub.Register(bike(), metadata=auth("bikes"))
            issued = await stub.Register(bike(csr, lease_id=registered.lease_id), metadata=auth("bike-1"))
            assert issued.certificate
        assert edge.status.events["csr_refused"] == 1
    finally:
        await edge.shutdown(0.1)


async def test_the_csr_is_signed_off_the_event_loop_and_a_devices_registrations_keep_their_order(
    ca: Ca,
) -> None:
    authority = identity.CertificateAuthority(ca.certificate_path, ca.key_path)
    registry = EdgeRegistry(MemoryStore(), lambda: {SITE.id: SITE}, authority=authority)
    loop_thread = threading.get_ident()
    signing = threading.Event()
    release = threading.Event()
    signed_on: list[int] = []
    issue = authority.issue

    def slow_issue(*args: object, **kwargs: object) -> identity.IssuedCertificate:
        signed_on.append(threading.get_ident())
        signing.set()
        release.wait(30)  # a hang guard: the test releases it
        return issue(*args, **kwargs)  # type: ignore[arg-type]

    authority.issue = slow_issue  # type: ignore[method-assign]
    token = Principal(PrincipalKind.DEVICE, "bike-1")
    first = asyncio.create_task(registry.register_issuing(token, _input(make_csr()[1], version="1")))
    await asyncio.to_thread(signing.wait, 30)
    # The loop is free while the CA signs: a second registration of the device is taken, and waits
    # for the first, so the later one's fields are what stays.
    second = asyncio.create_task(registry.register_issuing(token, _input(version="2")))
    await asyncio.sleep(0)
    assert not second.done()
    release.set()
    await first
    await second
    assert signed_on
    assert signed_on[0] != loop_thread
    registration = registry.get("bike-1")
    assert registration is not None
    assert registration.device.version == "2"
    assert registration.certificate is not None  # the first's certificate, kept by the second


def test_a_replaced_ca_stays_in_the_trust_bundle_as_long_as_its_certificates_may_live(tmp_path: Path, ca: Ca) -> None:
    clock = [datetime.datetime.now(datetime.UTC).timestamp()]
    authority = identity.CertificateAuthority(ca.certificate_path, ca.key_path, clock=lambda: clock[0])
    old = x509.load_pem_x509_certificate(
        authority.issue(
            _valid_csr(), site=SITE.id, device_id="bike-1", lease_ttl=30, now=clock[0]
        ).certificate_pem.encode()
    )
    assert not authority.refresh()  # nothing changed: a few stats
    (tmp_path / "renewed").mkdir()
    renewed = make_ca(tmp_path / "renewed")
    ca.key_path.write_bytes(renewed.key_path.read_bytes())
    ca.certificate_path.write_bytes(renewed.certificate_path.read_bytes())
    assert authority.refresh()
    old_pem = ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
    keep = 60.0
    assert authority.trust_bundle(keep) == renewed.certificate_path.read_text() + old_pem
    assert authority.issued(old)
    clock[0] += keep + 1  # every certificate the old CA issued has ended by now
    assert authority.trust_bundle(keep) == renewed.certificate_path.read_text()
    assert not authority.issued(old)
