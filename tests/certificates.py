"""Certificates for tests, built one way: CAs, leaves they sign, CSRs, and a fixed self-signed pair.

It owns how a test makes a key pair and its PEM. It must keep no state and write no file unless a
caller asks (`Pair.write`), so the tests that share it stay independent of each other's set-up.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write(self, certificate: Path, key: Path) -> None:
        """Writes both files as a renewal would: each to a temporary name, then renamed over (the
        key first, so a reader never pairs a new certificate with the old key for long)."""
        for path, data in ((key, self.key_pem), (certificate, self.certificate_pem)):
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_bytes(data)
            temporary.rename(path)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(
    name: str,
    *,
    lifetime: datetime.timedelta = datetime.timedelta(days=2),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Pair:
    """A self-signed CA named `name` (it may sign leaves, not CAs), valid from an hour ago for
    `lifetime` from now; on a new P-256 key unless `key` is given (a renewal of one key)."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(hours=1))
        .not_valid_after(now() + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Pair(certificate, key)


def issue(ca: Pair, sans: list[x509.GeneralName], *, hours: float = 24, ended: bool = False) -> Pair:
    """A leaf for `sans` signed by `ca`, for client and server use; `ended`: valid until an hour ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = now() - datetime.timedelta(hours=2), now() + datetime.timedelta(hours=hours)
    if ended:
        end = now() - datetime.timedelta(hours=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Pair(certificate, key)


def csr_for(key: ec.EllipticCurvePrivateKey) -> str:
    """A PEM CSR of `key` with an empty subject (the registry names the device itself)."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def fixed_self_signed_pem(name: str) -> tuple[str, str]:
    """A self-signed certificate for the DNS name `name` and its key, PEM, valid from 2026-01-01
    for ten years: for translations, which copy it and never check its dates."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key).decode()
