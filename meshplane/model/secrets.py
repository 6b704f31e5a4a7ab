"""TLS material proxies receive over SDS, and how a service asks for TLS to its endpoints.

Owns `TlsCertificate` (a certificate chain and key a proxy presents), `TrustBundle` (CA
certificates a proxy trusts) and `UpstreamTls` (a service's TLS settings). PEM text is held in
memory (read from files, or from Kubernetes Secrets), translators never read anything. PEM must
never appear in logs or status output: `__repr__` shows names and origins only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshplane.model.problems import Problem, Subject

_PEM_CERT = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    name: str
    certificate_chain: str = field(repr=False)
    private_key: str = field(repr=False)
    origin: str = ""

    def problems(self) -> list[Problem]:
        about = Subject(f"secret {self.name}", self.origin)
        found = []
        if _PEM_CERT not in self.certificate_chain:
            found.append(about.invalid("certificate is not PEM"))
        if "PRIVATE KEY-----" not in self.private_key:
            found.append(about.invalid("private key is not PEM"))
        return found


@dataclass(frozen=True, slots=True)
class TrustBundle:
    name: str
    ca_certificates: str = field(repr=False)
    origin: str = ""

    def problems(self) -> list[Problem]:
        about = Subject(f"secret {self.name}", self.origin)
        return [] if _PEM_CERT in self.ca_certificates else [about.invalid("CA bundle is not PEM")]


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS from proxy to a service's endpoints: verify with `trust` (a TrustBundle name), send `sni`,
    and present `client_certificate` (a TlsCertificate name) when the service wants mTLS."""

    trust: str
    sni: str = ""
    client_certificate: str = ""
