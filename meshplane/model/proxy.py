"""Who is asking: the kinds of proxy meshplane serves and what sets one apart from another.

Owns `ProxyRole` and `ProxyGroup`: every proxy of one group gets byte-identical config, so the
server builds and serialises it once per group. Fields that do not change a proxy's config must
stay out of the group, or every proxy becomes its own group.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

from meshplane.model.services import Locality

DEFAULT_OUTBOUND_PORT = 15001


class ProxyRole(StrEnum):
    """`sidecar`: an Envoy beside an app in the cluster, sending its outbound traffic.
    `grpc`: a proxyless gRPC client (grpcio's xds:/// resolver), one api_listener per service.
    `edge-gateway`: an Envoy at an edge site carrying its devices' traffic into the cloud and
    cloud traffic to one registered device of its site by id.
    `device`: a full Envoy on a piece of equipment, reaching cloud APIs through its site's gateways.
    `mobile`: Envoy Mobile in an app; it speaks ADS with CDS and RTDS only.
    """

    SIDECAR = "sidecar"
    GRPC = "grpc"
    EDGE_GATEWAY = "edge-gateway"
    DEVICE = "device"
    MOBILE = "mobile"

    @property
    def is_edge(self) -> bool:
        """Roles whose config depends on the proxy's edge site."""
        return self in (ProxyRole.EDGE_GATEWAY, ProxyRole.DEVICE, ProxyRole.MOBILE)


@dataclass(frozen=True, slots=True, order=True)
class ProxyGroup:
    """The part of a proxy's identity that decides its config.

    `locality` decides endpoint priorities; `outbound_port` the sidecar's (and device's) listener
    port; `site` the edge site of an edge role (empty for the others); `listen_address` the IP an
    edge-gateway's listeners bind, in `listen_address_of`'s canonical form (empty: 0.0.0.0, every
    IPv4 address of the host; always empty for the other roles, whose listeners are loopback).
    """

    role: ProxyRole = ProxyRole.SIDECAR
    locality: Locality = field(default_factory=Locality)
    outbound_port: int = DEFAULT_OUTBOUND_PORT
    site: str = ""
    listen_address: str = ""

    def __post_init__(self) -> None:
        # One spelling per address, and none for roles it does not apply to: otherwise equal
        # configs would make distinct groups (and the status endpoint's queries could name a
        # group no proxy can be in).
        if self.listen_address and (
            self.role is not ProxyRole.EDGE_GATEWAY or listen_address_of(self.listen_address) != self.listen_address
        ):
            raise ValueError(
                f"listen_address {self.listen_address!r}: only an edge-gateway has one, an IP address in "
                "canonical form (127.0.0.1, ::1)"
            )

    def __str__(self) -> str:
        parts = [self.locality.region, self.locality.zone, self.locality.sub_zone]
        while parts and not parts[-1]:
            parts.pop()  # positions kept otherwise: region//sub_zone is not region/zone
        where = "/".join(parts) or "-"
        text = f"{self.role}@{where}"
        # Every field that tells groups apart shows, so no two groups share a name (it is a metric
        # label): the port whenever it is not the default, whatever the role.
        if self.outbound_port != DEFAULT_OUTBOUND_PORT:
            text += f":{self.outbound_port}"
        if self.site:
            text += f"#{self.site}"
        if self.listen_address:
            text += f" on {self.listen_address}"
        return text


def listen_address_of(text: str) -> str | None:
    """`text` as an edge-gateway's listen address in canonical form (`127.0.0.1`, `::1`; the
    unspecified `0.0.0.0` as "", the default, so both spellings make one group), or None when it
    is not one: not an IP address, a multicast one, an IPv6 address with a zone (`%eth0`), which a
    listener's socket address cannot carry, or an IPv4-mapped IPv6 one (write the IPv4 address)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_multicast:
        return None
    if isinstance(address, ipaddress.IPv6Address) and (address.scope_id is not None or address.ipv4_mapped):
        return None
    canonical = str(address)
    return "" if canonical == "0.0.0.0" else canonical
