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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

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


def refusal(grants: tuple[Grant, ...] | None, role: str, site: str) -> str | None:
    """Why a proxy with `grants` may not claim `role` at `site`; None when it may (or there is no identity)."""
    if grants is None:
        return None
    if any(grant.allows(role, site) for grant in grants):
        return None
    claimed = f"role {role!r}" + (f" at site {site!r}" if site else "")
    held = ", ".join(f"{g.role}@{g.site or '*'}" for g in grants) or "none"
    return f"the client certificate does not grant {claimed} (it grants: {held})"
