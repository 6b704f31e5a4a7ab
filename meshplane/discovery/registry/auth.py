"""Who is calling the registry: credentials in, a `Principal` out. No grpc here (sources may not
import it); the API layer hands over the `authorization` metadata value or the client certificate's
names.

Tokens are stored hashed: the tokens file holds the SHA-256 of each bearer token, never the token.
Tokens are random secrets of at least 128 bits (not passwords), so a fast hash is enough: nobody
can invert SHA-256 of a random 128-bit value, and a slow KDF would make every heartbeat expensive.
A presented token is hashed and looked up by its digest; the lookup's timing depends only on the
digest of what the caller sent, which tells an attacker nothing about any stored token (the
constant-time comparison a plain-text check would need is what hashing first replaces).

Tokens file (YAML), referenced by `--registry-tokens`:

    tokens:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        device: bike-0001          # this device only
      - sha256: …
        class: bike                # any device of class bike (with its lease id for renewals)
      - sha256: …
        operator: dashboards       # may read (Get, List, Watch) and remove any device; never register
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml
from cryptography import x509

from meshplane.model import is_device_class, is_device_id

_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_TOKEN_LENGTH = 4096


class PrincipalKind(StrEnum):
    DEVICE = "device"
    CLASS = "class"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls. `certificate_serial` (lowercase hex) is set for a device known by its client
    certificate rather than a token, and `certificate` is that certificate (None when it could not
    be read). A certificate the registry's own CA issued only renews its device's live registration
    while it is the one last issued to it (`EdgeRegistry`), so it never outlives its lease by being
    exchanged for the next one; one of another PKI (`--registry-client-ca`) counts as a token."""

    kind: PrincipalKind
    name: str
    # Not part of equality: the principal is the device, whichever credential it shows (rate
    # limits and "a device reads itself" compare principals).
    certificate_serial: str = field(default="", compare=False)
    certificate: x509.Certificate | None = field(default=None, compare=False, repr=False)

    @property
    def by_certificate(self) -> bool:
        return bool(self.certificate_serial)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFileError(ValueError):
    pass


class TokenAuthenticator:
    """Bearer tokens by their SHA-256. `principal_for(header)` takes an `authorization` value."""

    def __init__(self, entries: dict[str, Principal] | None = None) -> None:
        self._by_digest = dict(entries or {})

    @staticmethod
    def from_file(path: Path) -> TokenAuthenticator:
        return TokenAuthenticator.from_text(path.read_text(), str(path))

    @staticmethod
    def from_text(text: str, source: str) -> TokenAuthenticator:
        """Parses a tokens file; raises TokenFileError with every problem."""
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise TokenFileError(f"{source}: invalid YAML: {error}") from None
        problems: list[str] = []
        entries: dict[str, Principal] = {}
        tokens = data.get("tokens", []) if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise TokenFileError(f"{source}: expected a mapping with a `tokens` list")
        for index, entry in enumerate(tokens):
            where = f"{source}: tokens[{index}]"
            if not isinstance(entry, dict):
                problems.append(f"{where}: must be a mapping")
                continue
            digest = str(entry.get("sha256", "")).lower()
            if not _HEX_SHA256.match(digest):
                problems.append(f"{where}: sha256 must be 64 hex digits (the token's SHA-256, never the token)")
                continue
            kinds = [kind for kind in PrincipalKind if kind.value in entry]
            if len(kinds) != 1:
                problems.append(f"{where}: name exactly one of device, class, operator")
                continue
            kind = kinds[0]
            name = str(entry[kind.value])
            valid = {
                PrincipalKind.DEVICE: is_device_id,
                PrincipalKind.CLASS: is_device_class,
                PrincipalKind.OPERATOR: is_device_class,
            }[kind]
            if not valid(name):
                problems.append(f"{where}: malformed {kind} {name!r}")
                continue
            if digest in entries:
                problems.append(f"{where}: the same token is listed twice")
                continue
            entries[digest] = Principal(kind, name)
        if problems:
            raise TokenFileError("\n".join(problems))
        return TokenAuthenticator(entries)

    def __len__(self) -> int:
        return len(self._by_digest)

    def principal_for(self, authorization: str | None) -> Principal | None:
        """The principal of an `authorization: Bearer <token>` value, or None for no or unknown token."""
        if not authorization or len(authorization) > MAX_TOKEN_LENGTH:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        # Looked up by digest: timing reveals at most something about the digest of what was sent
        # (see the module docstring), never about a stored token.
        return self._by_digest.get(token_digest(token.strip()))


# A certificate principal whose certificate could not be read: a serial no issued one has (issued
# serials are lowercase hex), so it renews nothing.
UNREADABLE_SERIAL = "unreadable"


def principal_for_certificate(
    common_names: list[str], uris: list[str], certificate_pem: bytes | None = None
) -> Principal | None:
    """A device principal from a verified client certificate: a URI SAN ending in `/device/<id>`
    (SPIFFE-style), else the subject's common name when it is a device id. Its
    `certificate_serial` is the certificate's (`certificate_pem`, as the TLS layer verified it)."""
    certificate = _certificate(certificate_pem)
    # Serials as the registry records issued ones (lowercase hex).
    serial = f"{certificate.serial_number:x}" if certificate is not None else UNREADABLE_SERIAL
    for uri in uris:
        _, marker, device_id = uri.rpartition("/device/")
        if marker and is_device_id(device_id):
            return Principal(PrincipalKind.DEVICE, device_id, serial, certificate)
    for name in common_names:
        if is_device_id(name):
            return Principal(PrincipalKind.DEVICE, name, serial, certificate)
    return None


def _certificate(certificate_pem: bytes | None) -> x509.Certificate | None:
    if not certificate_pem:
        return None
    try:
        return x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        return None
