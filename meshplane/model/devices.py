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

from meshplane.model.sites import Site

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DEVICE_CLASS = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def is_device_id(value: str) -> bool:
    """Letters, digits, '.', '_', '-'; starts with a letter or digit; at most 128 characters."""
    return bool(_DEVICE_ID.match(value))


def is_device_class(value: str) -> bool:
    return bool(_DEVICE_CLASS.match(value))


def forbidden_address_reason(address: str) -> str | None:
    """Why no device may ever claim `address` (loopback, link-local, cloud metadata, …), or None.

    Checked whatever a site's ranges say: an operator's too-wide range must not let a device make
    a gateway call its own admin port or a cloud metadata service.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # `fd20::1%eth0`: the zone names an interface of the device's own host, which means nothing
        # (or the wrong thing) on a gateway; a device's address must stand alone.
        return "has an IPv6 zone index (%…)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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
    if ip.is_reserved:
        return "is a reserved address"
    return None


# Instance metadata endpoints of the big clouds: AWS/GCP/Azure/OpenStack (169.254.169.254, also
# link-local), AWS over IPv6, Alibaba, Oracle's legacy one. Some are not link-local, so named here.
METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192"})


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

    def problems(self, sites: dict[str, Site]) -> list[str]:
        where = f"device {self.id}"
        found = []
        if not is_device_id(self.id):
            found.append(f"{where}: malformed id")
        if not is_device_class(self.device_class):
            found.append(f"{where}: malformed class {self.device_class!r}")
        site = sites.get(self.site)
        if site is None:
            found.append(f"{where}: unknown site {self.site!r}")
        networks = site.networks() if site is not None else ()
        for endpoint in self.endpoints:
            reason = forbidden_address_reason(endpoint.address)
            if reason is not None:
                found.append(f"{where}: address {endpoint.address} {reason}")
            elif site is not None and not any(ipaddress.ip_address(endpoint.address) in net for net in networks):
                found.append(f"{where}: address {endpoint.address} is outside the ranges of site {site.id}")
            if not 1 <= endpoint.port <= 65535:
                found.append(f"{where}: port {endpoint.port} is out of range 1-65535")
        return found
