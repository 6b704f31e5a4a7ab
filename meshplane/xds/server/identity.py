"""Proxy identity: which roles and sites a client certificate lets a proxy claim in its node.

With mTLS on the xDS port, the role and site a proxy asks for in `node.metadata` must be granted
by a URI SAN of its client certificate:

    meshplane://role/<role>                any site
    meshplane://role/<role>/site/<site>    that site only

A device's certificate that grants `role/device/site/gym-12` cannot fetch an edge gateway's
config by claiming `role: edge-gateway`, nor another site's. A certificate with no such SAN is
granted nothing. Without client certificates (plain or server-only TLS) there is no identity to
check; SECURITY.md says to run mTLS wherever proxies are not trusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

SCHEME = "meshplane"
# gRPC's auth context: the peer certificate (present only when the client sent one) and its URI SANs.
CERTIFICATE_KEY = "x509_pem_cert"
URI_SANS_KEY = "peer_uri"


@dataclass(frozen=True, slots=True)
class Grant:
    """One role a certificate allows, at one site or (site None) at any."""

    role: str
    site: str | None = None

    def allows(self, role: str, site: str) -> bool:
        return self.role == role and (self.site is None or self.site == site)


def parse_grant(san: str) -> Grant | None:
    """The grant in one SAN, or None when it is not a `meshplane://role/…` URI."""
    parts = urlsplit(san)
    if parts.scheme != SCHEME or parts.netloc != "role" or parts.query or parts.fragment:
        return None
    segments = parts.path.strip("/").split("/")
    if len(segments) == 1 and segments[0]:
        return Grant(segments[0])
    if len(segments) == 3 and segments[0] and segments[1] == "site" and segments[2]:
        return Grant(segments[0], segments[2])
    return None


def grants_of(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[Grant, ...] | None:
    """The grants of the peer's client certificate; None when the peer presented no certificate."""
    if CERTIFICATE_KEY not in auth_context:
        return None
    grants = (parse_grant(san.decode(errors="replace")) for san in auth_context.get(URI_SANS_KEY, ()))
    return tuple(grant for grant in grants if grant is not None)


CLIENT_CERTIFICATE = "client certificate"
BEARER_TOKEN = "bearer token"


def refusal(grants: tuple[Grant, ...] | None, role: str, site: str, credential: str = CLIENT_CERTIFICATE) -> str | None:
    """Why a proxy with `grants` may not claim `role` at `site`; None when it may (or there is no identity).
    `credential` names what the grants came from (`CLIENT_CERTIFICATE` or `BEARER_TOKEN`), so the
    refusal tells the operator which one to fix."""
    if grants is None:
        return None
    if any(grant.allows(role, site) for grant in grants):
        return None
    claimed = f"role {role!r}" + (f" at site {site!r}" if site else "")
    held = ", ".join(f"{g.role}@{g.site or '*'}" for g in grants) or "none"
    return f"the {credential} does not grant {claimed} (it grants: {held})"


class XdsTokens:
    """Bearer tokens for the xDS port, each bound to a role and optionally a site, for proxies that
    cannot hold client certificates (`--xds-tokens FILE`). The file holds SHA-256 digests, never
    tokens:

        tokens:
          - {sha256: <hex digest of the token>, role: sidecar}
          - {sha256: <hex>, role: edge-gateway, site: gym-12}

    A proxy sends `authorization: Bearer <token>` as gRPC metadata (Envoy: `initial_metadata` on the
    xDS cluster's grpc_service). A presented token is looked up by its digest, which says nothing of
    the other tokens; a stream without a known token is refused.
    """

    def __init__(self, grants: Mapping[str, Grant]) -> None:
        self._grants = dict(grants)

    @staticmethod
    def from_file(path: Path) -> XdsTokens:
        """Raises ValueError with the file and entry for anything malformed."""
        document = yaml.safe_load(path.read_text())
        entries = document.get("tokens") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a mapping with a `tokens` list")
        grants: dict[str, Grant] = {}
        for index, entry in enumerate(entries, 1):
            where = f"{path}: token {index}"
            if not isinstance(entry, dict) or set(entry) - {"sha256", "role", "site"}:
                raise ValueError(f"{where}: expected sha256, role and optionally site")
            digest, role, site = str(entry.get("sha256", "")).lower(), entry.get("role"), entry.get("site")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{where}: sha256 must be 64 hex digits (the digest, not the token)")
            if not isinstance(role, str) or not role:
                raise ValueError(f"{where}: role is required")
            if site is not None and (not isinstance(site, str) or not site):
                raise ValueError(f"{where}: site must be a non-empty string")
            grants[digest] = Grant(role, site)
        return XdsTokens(grants)

    def grants_for(self, metadata: Iterable[tuple[str, str | bytes]]) -> tuple[Grant, ...] | None:
        """The grant of the bearer token in `metadata`; None when there is no known token."""
        for key, value in metadata:
            if key.lower() != "authorization":
                continue
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                grant = self._grants.get(hashlib.sha256(token.strip().encode()).hexdigest())
                return (grant,) if grant is not None else None
        return None
