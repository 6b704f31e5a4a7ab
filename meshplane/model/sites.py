"""Edge sites: places outside the cloud (a gym, a store, a home region) whose devices reach the
cloud through the site's edge gateways.

Owns the shape of a site (id, locality, gateway addresses, the address ranges its devices may
register, the TLS its gateways speak with devices: `SiteTls`) and its validation, and the device
trust (`DeviceTrust`: the registry CA's certificate and trust domain, which decide what a device
certificate must be). Sites come from the policy files: only an operator declares where devices may
live and which addresses a proxy may be sent to. Must not do I/O or know Envoy.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum

from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.services import Locality

_SITE_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAX_GATEWAYS = 16
MAX_RANGES = 64


def is_site_id(value: str) -> bool:
    return bool(_SITE_ID.match(value))


@dataclass(frozen=True, slots=True, order=True)
class GatewayAddress:
    """Where devices of a site reach its edge gateway's device listener (an IP address and port)."""

    address: str
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


class ClientCertificates(StrEnum):
    """Whether a site's gateways ask devices for a certificate on the device listener."""

    REQUIRED = "required"  # no certificate of a live device of the site: no connection, no request
    OPTIONAL = "optional"  # a device without one is served (a fleet moving over); one with one must be live


class ToDevices(StrEnum):
    """How a site's gateways reach its devices for the cloud."""

    MTLS = "mtls"  # present the site certificate, require the exact device's certificate
    PLAINTEXT = "plaintext"  # plain HTTP, as before certificates


@dataclass(frozen=True, slots=True)
class SiteTls:
    """The TLS of a site's gateways. `certificate` names a TlsCertificate (a policy-file secret or a
    `namespace/name` Kubernetes Secret): the gateways' server certificate towards devices, and their
    client certificate towards devices with `to_devices: mtls`. Devices are verified against the
    mesh's `DeviceTrust`."""

    certificate: str
    client_certificates: ClientCertificates = ClientCertificates.REQUIRED
    to_devices: ToDevices = ToDevices.MTLS


def device_spiffe_id(trust_domain: str, site: str, device_id: str) -> str:
    """The one URI a device's certificate names, `spiffe://<trust-domain>/site/<site>/device/<id>`:
    what the registry's CA issues and what gateways require. Site ids (RFC 1123 labels) and device
    ids (`[A-Za-z0-9][A-Za-z0-9._-]*`) are valid SPIFFE path segments as they are. Never build such
    a URI anywhere else."""
    return f"spiffe://{trust_domain}/site/{site}/device/{device_id}"


@dataclass(frozen=True, slots=True)
class DeviceTrust:
    """What makes a device certificate: the registry CA's certificate(s) (PEM) and the SPIFFE trust
    domain of the identities it issues. Present only when the registry signs CSRs."""

    trust_domain: str
    ca_certificates: str = field(repr=False)

    def spiffe_id(self, site: str, device_id: str) -> str:
        return device_spiffe_id(self.trust_domain, site, device_id)


@dataclass(frozen=True, slots=True)
class Site:
    """One edge site. `device_ranges` are CIDRs; a device registering here must have every address
    inside one of them (and never in loopback, link-local or metadata ranges, whatever they say)."""

    id: str
    region: str
    zone: str = ""
    gateways: tuple[GatewayAddress, ...] = ()
    device_ranges: tuple[str, ...] = ()
    origin: str = ""
    tls: SiteTls | None = None

    @property
    def locality(self) -> Locality:
        return Locality(self.region, self.zone, self.id)

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The device ranges as networks (a validated site's all parse)."""
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.device_ranges)

    def problems(self) -> list[Problem]:
        about = Subject(f"site {self.id}", self.origin)
        found = []
        if not is_site_id(self.id):
            found.append(about.invalid("id must be a lowercase RFC 1123 label"))
        if not self.region:
            found.append(about.invalid("region is required"))
        if len(self.gateways) > MAX_GATEWAYS:
            found.append(about.invalid(f"at most {MAX_GATEWAYS} gateways"))
        for gateway in self.gateways:
            try:
                ipaddress.ip_address(gateway.address)
            except ValueError:
                found.append(
                    about.problem(
                        ProblemKind.NOT_AN_IP_ADDRESS, f"gateway address {gateway.address!r} is not an IP address"
                    )
                )
            if not 1 <= gateway.port <= 65535:
                found.append(about.invalid(f"gateway port {gateway.port} is out of range 1-65535"))
        if len(self.device_ranges) > MAX_RANGES:
            found.append(about.invalid(f"at most {MAX_RANGES} device ranges"))
        networks = []
        for cidr in self.device_ranges:
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                found.append(about.invalid(f"device range {cidr!r} is not a CIDR"))
                continue
            if network.prefixlen == 0:
                found.append(about.invalid(f"device range {cidr!r} allows every address; name the site's networks"))
                continue
            networks.append(network)
        found += [about.invalid(problem) for problem in union_problems(networks)]
        if self.tls is not None and not self.tls.certificate:
            found.append(about.invalid("tls.certificate must name a certificate secret"))
        return found


def union_problems(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[str]:
    """Why ranges that each pass are, together, too wide: when their union covers every IPv4 or
    every IPv6 address (`0.0.0.0/1` + `128.0.0.0/1`), which no single range may (a /0)."""
    found = []
    ipv4 = [network for network in networks if isinstance(network, ipaddress.IPv4Network)]
    ipv6 = [network for network in networks if isinstance(network, ipaddress.IPv6Network)]
    unions: list[tuple[str, list[ipaddress.IPv4Network] | list[ipaddress.IPv6Network], bool]] = [
        ("0.0.0.0/0", ipv4, any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(ipv4))),
        ("::/0", ipv6, any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(ipv6))),
    ]
    for everything, same, covered in unions:
        if covered:
            listed = ", ".join(str(network) for network in same)
            found.append(
                f"device ranges {listed} together allow every address ({everything}); name the site's networks"
            )
    return found
