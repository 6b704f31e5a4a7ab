"""A simulated device's own identity: its key pair, the CSR it registers with, the certificate the
registry issued for it, the TLS context presenting that certificate, and when to renew it.

Owns the device side of docs/edge.md "Device identity": a device makes its own key (EC P-256) and
sends only a CSR that names nothing (the registry sets the identity); it renews by registering
again with a new key's CSR at `RENEW_AT` of the validity it was given, before half its lifetime,
as the registry expects of devices. Must not import the control plane: what it knows of the
registry is the wire contract.

Python's `ssl` loads a certificate and key only from files, so each device's pair is written,
owner-only, into a directory the fleet owns and removes when it stops.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# Of the validity left when a certificate arrives: renew before half of it has passed, so one
# failed renewal still leaves time for another.
RENEW_AT = 0.4


def new_key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A new P-256 key and a PEM CSR signed by it, with an empty subject and no SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class DeviceIdentity:
    """The certificate a device holds now. `renew_at` is on the monotonic clock."""

    serial: str  # lowercase hex, as the registry's status shows it
    not_after: float  # seconds since the epoch
    renew_at: float
    context: ssl.SSLContext  # presents this certificate; verifies the gateway by the fleet's trust


def _write_private(path: Path, data: bytes) -> None:
    """Writes `data` readable by the owner only, to a temporary name renamed over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    temporary.replace(path)


def take_certificate(
    key: ec.EllipticCurvePrivateKey,
    certificate_pem: str,
    chain_pem: str,
    *,
    directory: Path,
    name: str,
    trust: Path | None,
) -> DeviceIdentity:
    """The identity of `key` with the certificate the registry answered (and its CA chain), its
    files written as `directory/name.{pem,key}`. `trust`: the CA of the gateway's certificate (None:
    the system's roots). Raises ValueError for an answer that is no certificate for `key`."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    if certificate.public_key() != key.public_key():
        raise ValueError("the certificate answered is not for the key the CSR was signed with")
    certificate_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_pem)
    _write_private(certificate_path, (certificate_pem.rstrip("\n") + "\n" + chain_pem).encode())
    context = ssl.create_default_context(cafile=str(trust) if trust is not None else None)
    context.load_cert_chain(certificate_path, key_path)
    not_after = certificate.not_valid_after_utc.timestamp()
    left = max(0.0, not_after - time.time())
    return DeviceIdentity(f"{certificate.serial_number:x}", not_after, time.monotonic() + RENEW_AT * left, context)
