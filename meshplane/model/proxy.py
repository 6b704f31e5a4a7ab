"""Who is asking: the kinds of proxy meshplane serves and what sets one apart from another.

Owns `ProxyRole` and `ProxyGroup`: every proxy of one group gets byte-identical config, so the
server builds and serialises it once per group. Fields that do not change a proxy's config must
stay out of the group, or every proxy becomes its own group.
"""

from __future__ import annotations

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
    port; `site` the edge site of an edge role (empty for the others).
    """

    role: ProxyRole = ProxyRole.SIDECAR
    locality: Locality = field(default_factory=Locality)
    outbound_port: int = DEFAULT_OUTBOUND_PORT
    site: str = ""

    def __str__(self) -> str:
        where = "/".join(part for part in (self.locality.region, self.locality.zone) if part) or "-"
        text = f"{self.role}@{where}"
        if self.role is ProxyRole.SIDECAR and self.outbound_port != DEFAULT_OUTBOUND_PORT:
            text += f":{self.outbound_port}"
        if self.site:
            text += f"#{self.site}"
        return text
