"""Who is asking: the kinds of proxy meshplane serves and what sets one apart from another.

Owns `ProxyRole` and `ProxyGroup`: every proxy of one group gets byte-identical config, so the
server builds and serialises it once per group. Fields that do not change a proxy's config must
stay out of the group, or every proxy becomes its own group.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum

from meshplane.model.services import Locality

DEFAULT_OUTBOUND_PORT = 15001
# An edge gateway's device listener when its node names none; its cloud-to-device listener is the
# next port (15081). `ProxyRole.default_outbound_port` is the one place either default is chosen.
DEFAULT_EDGE_GATEWAY_PORT = 15080
# The xDS cluster a per-type proxy names (node.metadata.xds_cluster) is copied into every config
# source meshplane sends it: bounded, and plain enough to read back the same in YAML, logs and stats.
MAX_XDS_CLUSTER_LENGTH = 128
_XDS_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
# A gateway proxy's listeners are the Gateway's ports plus its offset, which keeps them ports.
MAX_PORT_OFFSET = 64511
# `namespace/name` of a Gateway: a DNS label, then a DNS subdomain (Kubernetes' own limits).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_GATEWAY_KEY = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class ProxyRole(StrEnum):
    """`sidecar`: an Envoy beside an app in the cluster, sending its outbound traffic.
    `grpc`: a proxyless gRPC client (grpcio's xds:/// resolver), one api_listener per service.
    `edge-gateway`: an Envoy at an edge site carrying its devices' traffic into the cloud and
    cloud traffic to one registered device of its site by id.
    `device`: a full Envoy on a piece of equipment, reaching cloud APIs through its site's gateways.
    `mobile`: Envoy Mobile in an app; it speaks ADS with CDS and RTDS only.
    `gateway`: an Envoy serving one Kubernetes Gateway (Gateway API): its listeners and routes.
    """

    SIDECAR = "sidecar"
    GRPC = "grpc"
    EDGE_GATEWAY = "edge-gateway"
    DEVICE = "device"
    MOBILE = "mobile"
    GATEWAY = "gateway"

    @property
    def is_edge(self) -> bool:
        """Roles whose config depends on the proxy's edge site."""
        return self in (ProxyRole.EDGE_GATEWAY, ProxyRole.DEVICE, ProxyRole.MOBILE)

    @property
    def has_listen_address(self) -> bool:
        """Roles whose listeners bind an address of the host (the others' are loopback)."""
        return self in (ProxyRole.EDGE_GATEWAY, ProxyRole.GATEWAY)

    @property
    def default_outbound_port(self) -> int:
        """`node.metadata.outbound_port` when a proxy of this role leaves it out: what `meshplane
        bootstrap` writes, the server assumes and a status preview (`--role`) shows."""
        return DEFAULT_EDGE_GATEWAY_PORT if self is ProxyRole.EDGE_GATEWAY else DEFAULT_OUTBOUND_PORT


class XdsApiType(StrEnum):
    """How a proxy fetches what its resources refer to (a cluster's endpoints, a listener's
    routes, a TLS context's secrets, Envoy Mobile's runtime layer), so every config source
    meshplane sends it says the same.

    `ads`: over the proxy's one ADS stream (`ads: {}`), SotW or Delta alike: the default.
    `grpc` / `delta_grpc`: over the per-type services (SotW / Delta), as `api_config_source`
    with Envoy's api_type `GRPC` / `DELTA_GRPC`, naming the proxy's xDS cluster.
    """

    ADS = "ads"
    GRPC = "grpc"
    DELTA_GRPC = "delta_grpc"


def is_xds_cluster_name(value: str) -> bool:
    """A name a proxy may give its xDS cluster: 1-128 letters, digits, `_ . : -`, not starting
    with punctuation (`meshplane`, `xds_cluster`)."""
    return len(value) <= MAX_XDS_CLUSTER_LENGTH and bool(_XDS_CLUSTER.fullmatch(value))


@dataclass(frozen=True, slots=True, order=True)
class ProxyGroup:
    """The part of a proxy's identity that decides its config.

    `locality` decides endpoint priorities; `outbound_port` the sidecar's (and device's) listener
    port; `site` the edge site of an edge role (empty for the others); `listen_address` the IP an
    edge-gateway's listeners bind, in `listen_address_of`'s canonical form (empty: 0.0.0.0, every
    IPv4 address of the host; always empty for the other roles, whose listeners are loopback).
    `xds_api_type` and `xds_cluster` say where the config sources sent to the proxy point: its ADS
    stream (`ads`, with no cluster), or the per-type services (`grpc`, `delta_grpc`) reached
    through the xDS cluster its bootstrap names. Two proxies differing only there get different
    bytes, so they are two groups; proxyless gRPC speaks ADS only. A `gateway` proxy serves the
    Gateway `gateway` (`namespace/name`) on `listen_address` too, each listener on its port plus
    `port_offset` (0-64511; a test or a laptop moves port 80 to 8080 so); both are empty (0) for
    the other roles. `namespace`: the Kubernetes namespace of the workload a `sidecar` or `grpc`
    client stands for, when its node says it (empty otherwise, and for the other roles): the mesh
    routes of that namespace's consumers apply to it (a Gateway API route in the client's namespace
    for a Service of another). Each namespace said is a group of its own. `certificate_dir`
    (device only; empty: none): the absolute directory where the device's Envoy keeps its
    registry-issued certificate and the gateways' CA, named by the file-based SDS file its
    bootstrap writes there; at a site with `tls` the device reaches its gateways over mTLS with
    them. Each directory said is a group of its own (a fleet shares one layout).
    `cloud_listen_address` (edge-gateway only; empty: `listen_address`): the IP its cloud-facing
    listener (`edge_to_devices_*`) binds, so that listener can stay off the site network.
    """

    role: ProxyRole = ProxyRole.SIDECAR
    locality: Locality = field(default_factory=Locality)
    outbound_port: int = DEFAULT_OUTBOUND_PORT
    site: str = ""
    listen_address: str = ""
    xds_api_type: XdsApiType = XdsApiType.ADS
    xds_cluster: str = ""
    gateway: str = ""
    port_offset: int = 0
    namespace: str = ""
    certificate_dir: str = ""
    cloud_listen_address: str = ""

    def __post_init__(self) -> None:
        # One spelling per address, and none for roles it does not apply to: otherwise equal
        # configs would make distinct groups (and the status endpoint's queries could name a
        # group no proxy can be in).
        if self.listen_address and (
            not self.role.has_listen_address or listen_address_of(self.listen_address) != self.listen_address
        ):
            raise ValueError(
                f"listen_address {self.listen_address!r}: only an edge-gateway or a gateway has one, an IP address"
                " in canonical form (127.0.0.1, ::1)"
            )
        if self.role is ProxyRole.GATEWAY:
            # Empty: a group naming no Gateway, served no listeners (the node parser requires one).
            if self.gateway and (problem := gateway_key_problem(self.gateway)) is not None:
                raise ValueError(problem)
            if not 0 <= self.port_offset <= MAX_PORT_OFFSET:
                raise ValueError(f"port_offset {self.port_offset} is out of range 0-{MAX_PORT_OFFSET}")
        elif self.gateway or self.port_offset:
            raise ValueError("gateway and port_offset are for a gateway proxy only")
        if self.cloud_listen_address and (
            self.role is not ProxyRole.EDGE_GATEWAY
            or listen_address_of(self.cloud_listen_address) != self.cloud_listen_address
        ):
            raise ValueError(
                f"cloud_listen_address {self.cloud_listen_address!r}: only an edge-gateway has one, an IP address"
                " in canonical form"
            )
        if self.certificate_dir:
            if self.role is not ProxyRole.DEVICE:
                raise ValueError(f"certificate_dir: only a device has one, not a {self.role}")
            if (problem := certificate_dir_problem(self.certificate_dir)) is not None:
                raise ValueError(problem)
        if self.namespace:
            if self.role not in (ProxyRole.SIDECAR, ProxyRole.GRPC):
                raise ValueError(f"namespace: only a sidecar or a grpc client has one, not a {self.role}")
            if (problem := namespace_problem(self.namespace)) is not None:
                raise ValueError(problem)
        if self.xds_api_type is XdsApiType.ADS:
            if self.xds_cluster:
                raise ValueError(f"xds_cluster {self.xds_cluster!r}: only a per-type proxy names its xDS cluster")
        elif self.role is ProxyRole.GRPC:
            raise ValueError(f"xds_api_type {self.xds_api_type}: proxyless gRPC speaks ADS only")
        elif not is_xds_cluster_name(self.xds_cluster):
            raise ValueError(
                f"xds_cluster {self.xds_cluster[:MAX_XDS_CLUSTER_LENGTH]!r}: a per-type proxy names its xDS "
                f"cluster, 1-{MAX_XDS_CLUSTER_LENGTH} letters, digits, '_', '.', ':' or '-'"
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
        if self.gateway:
            text += f" for {self.gateway}"
        if self.port_offset:
            text += f" +{self.port_offset}"
        if self.xds_api_type is not XdsApiType.ADS:
            text += f" per-type {self.xds_api_type} via {self.xds_cluster}"
        if self.namespace:
            text += f" in {self.namespace}"
        if self.certificate_dir:
            text += f" certificates {self.certificate_dir}"
        if self.cloud_listen_address:
            text += f" cloud on {self.cloud_listen_address}"
        return text


MAX_CERTIFICATE_DIR_LENGTH = 512
# The contract between a device's bootstrap (which writes the files) and its translation (whose
# clusters name them): in `certificate_dir`, one file-based SDS file per secret (Envoy takes one
# resource a file): the device's certificate (`DEVICE_CERTIFICATE_SECRET`, its cert.pem and
# key.pem) and the gateways' CA (`GATEWAY_CA_SECRET`).
DEVICE_SDS_FILE = "certificate.sds.yaml"
GATEWAY_CA_SDS_FILE = "gateway-ca.sds.yaml"
DEVICE_CERTIFICATE_SECRET = "device_certificate"
GATEWAY_CA_SECRET = "gateway_ca"


def device_sds_path(certificate_dir: str) -> str:
    """The file-based SDS file of the device's certificate in its certificate directory."""
    return certificate_dir.rstrip("/") + "/" + DEVICE_SDS_FILE


def gateway_ca_sds_path(certificate_dir: str) -> str:
    """The file-based SDS file of the gateways' CA in a device's certificate directory."""
    return certificate_dir.rstrip("/") + "/" + GATEWAY_CA_SDS_FILE


def certificate_dir_problem(directory: str) -> str | None:
    """Why `directory` cannot be a device's certificate directory (an absolute path of printable
    characters without spaces, at most `MAX_CERTIFICATE_DIR_LENGTH`), or None."""
    if (
        0 < len(directory) <= MAX_CERTIFICATE_DIR_LENGTH
        and directory.startswith("/")
        and directory.isprintable()
        and not any(c.isspace() for c in directory)
    ):
        return None
    limit = MAX_CERTIFICATE_DIR_LENGTH
    return f"certificate_dir {directory[:80]!r} is not an absolute path without spaces (at most {limit})"


def namespace_problem(namespace: str) -> str | None:
    """Why `namespace` cannot be a proxy's Kubernetes namespace (a lowercase DNS label), or None."""
    if _NAMESPACE.fullmatch(namespace):
        return None
    return f"namespace {namespace[:80]!r} is not a Kubernetes namespace (a lowercase DNS label)"


def gateway_key_problem(key: str) -> str | None:
    """Why `key` cannot name the Gateway a gateway proxy serves (`namespace/name`), or None."""
    if _GATEWAY_KEY.fullmatch(key):
        return None
    return f"gateway {key[:80]!r} is not namespace/name of a Gateway (lowercase DNS names)"


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
