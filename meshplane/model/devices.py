"""Registered edge devices: equipment, mobile apps and gateways with a live lease.

Owns the shape of a device as translators see it. Only live registrations become `Device`s (the
registry leaves expired ones out), and the registry has already checked every address against
the device's site; `Mesh.problems()` checks again that each device names a known site and stays
inside its ranges, so no source can make a proxy route to an arbitrary address. Must not know
leases, tokens or stores (the registry's), nor Envoy.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.sites import Site

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DEVICE_CLASS = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def is_device_id(value: str) -> bool:
    """Letters, digits, '.', '_', '-'; starts with a letter or digit; at most 128 characters."""
    return bool(_DEVICE_ID.match(value))


def is_device_class(value: str) -> bool:
    return bool(_DEVICE_CLASS.match(value))


@dataclass(frozen=True, slots=True)
class AddressRefusal:
    """Why no device may claim an address: `kind` is NOT_AN_IP_ADDRESS when it does not parse,
    FORBIDDEN_ADDRESS when it names somewhere no device may be; `reason` is the words that follow
    the address in a message ("is a loopback address"), and `str()` of a refusal."""

    kind: ProblemKind
    reason: str

    def __str__(self) -> str:
        return self.reason


def forbidden_address_reason(address: str) -> AddressRefusal | None:
    """Why no device may ever claim `address` (loopback, link-local, cloud metadata, …), or None;
    its kind tells an address that does not parse from one no device may have.

    Checked whatever a site's ranges say: an operator's too-wide range must not let a device make
    a gateway call its own admin port or a cloud metadata service. An IPv6 address that carries an
    IPv4 address a router, relay or translator would deliver to (IPv4-mapped, 6to4, Teredo server
    or client, ISATAP, NAT64, IPv4-translated, IPv4-compatible) is refused when that IPv4 address is, with
    a reason naming it. Of those, only the IPv4-mapped form of an allowed address passes (it is how
    dual-stack sockets spell IPv4); the translator-only forms are refused whatever they carry, as
    are the deprecated site-local `fec0::/10` and the local-use NAT64 prefix (where the IPv4
    address's position depends on the translator).
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return AddressRefusal(ProblemKind.NOT_AN_IP_ADDRESS, "is not an IP address")
    reason = _forbidden_ip_reason(ip)
    return None if reason is None else AddressRefusal(ProblemKind.FORBIDDEN_ADDRESS, reason)


def _forbidden_ip_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """`forbidden_address_reason` of an address that parses: the words, or None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _own_reason(ip)
    if ip.scope_id is not None:
        # `fd20::1%eth0`: the zone names an interface of the device's own host, which means nothing
        # (or the wrong thing) on a gateway; a device's address must stand alone.
        return "has an IPv6 zone index (%…)"
    embedded = _embedded_ipv4(ip)
    for what, ipv4 in embedded:
        reason = _own_reason(ipv4)
        if reason is not None:
            return f"is {what} {ipv4}, which {reason}"
    if ip.ipv4_mapped is not None:
        return None  # a dual-stack socket's spelling of an allowed IPv4 address: the site's ranges decide
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or _ipv4_compatible(ip):
        what, ipv4 = embedded[-1]
        return f"is {what} {ipv4}, a form only translators use: register the IPv4 address itself"
    if ip in _NAT64_LOCAL:
        return f"is in the local-use NAT64 prefix {_NAT64_LOCAL} (RFC 8215), which hides the IPv4 address it reaches"
    if ip in _SITE_LOCAL:
        return f"is a site-local address ({_SITE_LOCAL}, deprecated by RFC 3879)"
    return _own_reason(ip)


def _ipv4_compatible(ip: ipaddress.IPv6Address) -> bool:
    """`::a.b.c.d` (deprecated by RFC 4291); `::` and `::1` are the unspecified and loopback addresses."""
    return ip in _IPV4_COMPATIBLE and int(ip) > 1


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses `ip` stands for, each with how it carries it (for the reason)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(("an IPv4-mapped address of", ip.ipv4_mapped))
    if ip.sixtofour is not None:
        found.append(("a 6to4 address (2002::/16) of", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [("a Teredo address (2001::/32) with server", server), ("a Teredo address (2001::/32) of", client)]
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if (int(ip) >> 32) & 0xFDFFFFFF == _ISATAP_MARK:
        # ISATAP (RFC 5214): an interface id of 0000:5efe or 0200:5efe then the IPv4 address its
        # router tunnels to, under any prefix.
        found.append(("an ISATAP address (interface id ::5efe:a.b.c.d) of", low32))
    if ip in _NAT64:
        found.append(("a NAT64 address (64:ff9b::/96) of", low32))
    if ip in _IPV4_TRANSLATED:
        found.append(("an IPv4-translated address (::ffff:0:0:0/96) of", low32))
    if _ipv4_compatible(ip):
        found.append(("an IPv4-compatible address (::/96, deprecated by RFC 4291) of", low32))
    return found


def _own_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` itself (not what it may embed) is never a device's address, or None."""
    if str(ip) in METADATA_ADDRESSES:
        return "is a cloud metadata service address"
    if ip.is_loopback:
        return "is a loopback address"
    if ip.is_link_local:
        return "is a link-local address"
    if ip.is_unspecified:
        return "is the unspecified address"
    if ip.is_multicast:
        return "is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK:
        return f"is in {_THIS_NETWORK} ('this network', RFC 1122: never a destination)"
    if ip.is_reserved:
        return "is a reserved address"
    return None


# Instance metadata endpoints of the big clouds: AWS/GCP/Azure/OpenStack (169.254.169.254, also
# link-local), AWS over IPv6, Alibaba, Oracle's legacy one. Some are not link-local, so named here.
METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192"})
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_ISATAP_MARK = 0x00005EFE  # bits 32-63 of an ISATAP address, its universal/local bit cleared


@dataclass(frozen=True, slots=True, order=True)
class DeviceEndpoint:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Device:
    """A device with a live lease at `site`. `labels` are sorted (key, value) pairs."""

    id: str
    device_class: str
    site: str
    endpoints: tuple[DeviceEndpoint, ...]
    version: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def problems(self, sites: dict[str, Site]) -> list[Problem]:
        """Why this device cannot be served at `sites` (by id), each naming it; empty when it can."""
        about = Subject(f"device {self.id}")
        found = []
        if not is_device_id(self.id):
            found.append(about.invalid("malformed id"))
        if not is_device_class(self.device_class):
            found.append(about.invalid(f"malformed class {self.device_class!r}"))
        site = sites.get(self.site)
        if site is None:
            found.append(about.problem(ProblemKind.UNKNOWN_SITE, f"unknown site {self.site!r}"))
        networks = site.networks() if site is not None else ()
        for endpoint in self.endpoints:
            refusal = forbidden_address_reason(endpoint.address)
            if refusal is not None:
                found.append(about.problem(refusal.kind, f"address {endpoint.address} {refusal.reason}"))
            elif site is not None and not any(ipaddress.ip_address(endpoint.address) in net for net in networks):
                found.append(
                    about.problem(
                        ProblemKind.FORBIDDEN_ADDRESS,
                        f"address {endpoint.address} is outside the ranges of site {site.id}",
                    )
                )
            if not 1 <= endpoint.port <= 65535:
                found.append(about.invalid(f"port {endpoint.port} is out of range 1-65535"))
        return found
