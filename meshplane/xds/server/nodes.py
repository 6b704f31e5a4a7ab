"""The contract between a proxy's bootstrap and meshplane: which node fields decide its config.

- `node.id`: required, names the proxy on the status endpoint.
- `node.metadata.role`: `sidecar` (default when absent), `grpc`, `edge-gateway`, `device`, `mobile`
  or `gateway`.
- `node.metadata.site`: the edge site of an `edge-gateway`, `device` or `mobile` (required for those).
- `node.locality` (region, zone, sub_zone): endpoint priorities prefer the proxy's zone, then region.
- `node.metadata.outbound_port`: a sidecar's or device's outbound listener port, an edge gateway's
  device listener port (defaults: `ProxyRole.default_outbound_port`, 15001; 15080 for a gateway).
- `node.metadata.gateway`: the Gateway (`namespace/name`) a `gateway` proxy serves (required for
  that role; ignored for the others). `node.metadata.port_offset`: added to each of its Gateway
  listeners' ports (default 0, at most 64511), so an unprivileged Envoy serves port 80 on 8080. A bad
  value of either ends the stream with INVALID_ARGUMENT.
- `node.metadata.listen_address`: the IP an `edge-gateway`'s two listeners (or a `gateway`'s) bind (default 0.0.0.0,
  every IPv4 address; `127.0.0.1` keeps a laptop's gateway off the network). A bad value ends the
  stream with INVALID_ARGUMENT. Ignored for the other roles (as `site` is for non-edge roles):
  their listeners are loopback, and it must not split their group.
- `node.metadata.xds_api_type` and `node.metadata.xds_cluster`: a proxy on the per-type services
  rather than ADS says which API type it uses (`grpc`: SotW, `delta_grpc`: Delta) and which
  cluster of its bootstrap reaches meshplane; every config source it is sent (EDS, RDS, SDS, RTDS)
  then names them instead of `ads: {}`. Both or neither (`ads`, the default); never for `grpc`
  (proxyless gRPC speaks ADS only). A bad value ends the stream with INVALID_ARGUMENT.
- `node.metadata.namespace`: the Kubernetes namespace of a `sidecar`'s or `grpc` client's workload,
  so that consumer routes (a Gateway API mesh route in the client's namespace) reach it; absent,
  none do. A bad value (not a lowercase DNS label, not a string) ends the stream with
  INVALID_ARGUMENT. Ignored for the other roles.
- `node.metadata.cloud_listen_address`: the IP an `edge-gateway`'s cloud-facing listener binds
  (default: its `listen_address`), so that listener can stay off the site network. A bad value
  ends the stream with INVALID_ARGUMENT. Ignored for the other roles.
- `node.metadata.certificate_dir`: a `device`'s directory holding its certificate and the file-based
  SDS file naming it and the gateways' CA (`meshplane bootstrap device --certificate-dir`); at a
  site with `tls` its gateway clusters use them. A bad value ends the stream with
  INVALID_ARGUMENT. Ignored for the other roles.
- `node.cluster`: the service the proxy fronts; shown on the status endpoint.
Any other field is ignored, so proxies differing only there share one group and one snapshot.
"""

from __future__ import annotations

from typing import Any

import grpc

from meshplane.model import Locality, ProxyGroup, ProxyRole, is_site_id
from meshplane.model.proxy import (
    MAX_PORT_OFFSET,
    MAX_XDS_CLUSTER_LENGTH,
    XdsApiType,
    certificate_dir_problem,
    gateway_key_problem,
    is_xds_cluster_name,
    listen_address_of,
    namespace_problem,
)

MAX_NAME_LENGTH = 1024


class ProtocolError(Exception):
    """A request the server refuses; the stream ends with `code` and this message, others are unaffected."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def proxy_group(node: Any) -> ProxyGroup:
    """The group of an `envoy.config.core.v3.Node`; raises ProtocolError for a node we cannot serve."""
    if not node.id:
        raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "the first request of a stream must carry node.id")
    fields = node.metadata.fields
    role_value = fields["role"].string_value if "role" in fields else ProxyRole.SIDECAR.value
    try:
        role = ProxyRole(role_value)
    except ValueError:
        roles = ", ".join(r.value for r in ProxyRole)
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT, f"node {node.id}: unknown metadata.role {role_value!r} (one of: {roles})"
        ) from None
    outbound_port = role.default_outbound_port
    if "outbound_port" in fields:
        given = _whole_number(fields["outbound_port"])
        if given is None or not is_port(given):
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node {node.id}: metadata.outbound_port {_shown(fields['outbound_port'])} is not a port",
            )
        outbound_port = given
    site = ""
    if role.is_edge:
        site = fields["site"].string_value if "site" in fields else ""
        if not is_site_id(site):
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT, f"node {node.id}: {needs_site(role, 'metadata.site', site)}"
            )
    listen_address = ""
    if role.has_listen_address and "listen_address" in fields:
        value = fields["listen_address"]
        raw_address = value.string_value if value.WhichOneof("kind") == "string_value" else None
        parsed = listen_address_of(raw_address) if raw_address is not None else None
        if parsed is None:
            shown = repr(raw_address) if raw_address is not None else f"of kind {value.WhichOneof('kind')}"
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node {node.id}: metadata.listen_address {shown[:80]} is not an IP address to listen on "
                "(e.g. 127.0.0.1; no multicast, no IPv6 zone)",
            )
        listen_address = parsed
    gateway, port_offset = _gateway_of(node) if role is ProxyRole.GATEWAY else ("", 0)
    api_type, xds_cluster = _xds_source(node, role)
    namespace = _namespace_of(node) if role in (ProxyRole.SIDECAR, ProxyRole.GRPC) else ""
    certificate_dir = _certificate_dir_of(node) if role is ProxyRole.DEVICE else ""
    cloud_listen_address = _cloud_listen_address_of(node) if role is ProxyRole.EDGE_GATEWAY else ""
    locality = Locality(node.locality.region, node.locality.zone, node.locality.sub_zone)
    return ProxyGroup(
        role=role,
        locality=locality,
        outbound_port=outbound_port,
        site=site,
        listen_address=listen_address,
        xds_api_type=api_type,
        xds_cluster=xds_cluster,
        gateway=gateway,
        port_offset=port_offset,
        namespace=namespace,
        certificate_dir=certificate_dir,
        cloud_listen_address=cloud_listen_address,
    )


def _cloud_listen_address_of(node: Any) -> str:
    """`metadata.cloud_listen_address` of an edge gateway ("" when absent; see the module docstring)."""
    value = node.metadata.fields.get("cloud_listen_address")
    if value is None:
        return ""
    raw = value.string_value if value.WhichOneof("kind") == "string_value" else None
    parsed = listen_address_of(raw) if raw is not None else None
    if parsed is None:
        shown = repr(raw) if raw is not None else f"of kind {value.WhichOneof('kind')}"
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node {node.id}: metadata.cloud_listen_address {shown[:80]} is not an IP address to listen on",
        )
    return parsed


def _certificate_dir_of(node: Any) -> str:
    """`metadata.certificate_dir` of a device ("" when absent; see the module docstring)."""
    value = node.metadata.fields.get("certificate_dir")
    if value is None:
        return ""
    text = value.string_value if value.WhichOneof("kind") == "string_value" else None
    problem = (
        certificate_dir_problem(text) if text is not None else f"certificate_dir of kind {value.WhichOneof('kind')}"
    )
    if problem is not None:
        raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"node {node.id}: metadata.{problem}")
    return str(text)


def _namespace_of(node: Any) -> str:
    """`metadata.namespace` of a sidecar or grpc client ("" when absent; see the module docstring)."""
    value = node.metadata.fields.get("namespace")
    if value is None:
        return ""
    text = value.string_value if value.WhichOneof("kind") == "string_value" else None
    problem = namespace_problem(text) if text is not None else f"namespace of kind {value.WhichOneof('kind')}"
    if problem is not None:
        raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"node {node.id}: metadata.{problem}")
    return str(text)


def _gateway_of(node: Any) -> tuple[str, int]:
    """`metadata.gateway` and `metadata.port_offset` of a gateway proxy (see the module docstring)."""
    fields = node.metadata.fields
    value = fields.get("gateway")
    key = value.string_value if value is not None and value.WhichOneof("kind") == "string_value" else ""
    if (problem := gateway_key_problem(key)) is not None:
        raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"node {node.id}: a gateway needs metadata.{problem}")
    offset = 0
    if "port_offset" in fields:
        found = _whole_number(fields["port_offset"])
        if found is None or not 0 <= found <= MAX_PORT_OFFSET:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node {node.id}: metadata.port_offset {_shown(fields['port_offset'])} is not a number in "
                f"0-{MAX_PORT_OFFSET}",
            )
        offset = found
    return key, offset


def _raw(value: Any) -> str | float:
    raw: str | float = value.string_value if value.WhichOneof("kind") == "string_value" else value.number_value
    return raw


def _whole_number(value: Any) -> int | None:
    """A metadata value (a number, or a string of digits) as a whole number; None when it is not
    one (a fraction, text, infinity, NaN)."""
    raw = _raw(value)
    try:
        number = int(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if str(raw).strip() in (str(number), f"{number}.0") else None


def _shown(value: Any) -> str:
    """A metadata value as an error message quotes it: cut to 20 characters (it is the client's)."""
    return repr(str(_raw(value))[:20])


def _xds_source(node: Any, role: ProxyRole) -> tuple[XdsApiType, str]:
    """`metadata.xds_api_type` and `metadata.xds_cluster`, checked together (see the module docstring)."""
    fields = node.metadata.fields

    def text_of(key: str) -> str | None:
        if key not in fields:
            return None
        value = fields[key]
        if value.WhichOneof("kind") != "string_value":
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node {node.id}: metadata.{key} must be a string, not of kind {value.WhichOneof('kind')}",
            )
        text: str = value.string_value
        return text

    raw_type, cluster = text_of("xds_api_type"), text_of("xds_cluster")
    if raw_type is None and cluster is None:
        return XdsApiType.ADS, ""
    try:
        api_type = XdsApiType(raw_type if raw_type is not None else "")
    except ValueError:
        types = ", ".join(t.value for t in XdsApiType)
        shown = repr(raw_type[:80]) if raw_type is not None else "absent"
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node {node.id}: metadata.xds_api_type {shown} is not an xDS API type (one of: {types});"
            " it goes with metadata.xds_cluster",
        ) from None
    if api_type is XdsApiType.ADS:
        if cluster is not None:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node {node.id}: metadata.xds_cluster is for a proxy on the per-type services"
                " (xds_api_type grpc or delta_grpc), not ads",
            )
        return api_type, ""
    if role is ProxyRole.GRPC:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node {node.id}: metadata.xds_api_type {api_type.value!r}: proxyless gRPC speaks ADS only",
        )
    if cluster is None or not is_xds_cluster_name(cluster):
        shown = repr(cluster[:80]) if cluster is not None else "absent"
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node {node.id}: metadata.xds_cluster {shown} is not the name of the bootstrap's xDS cluster"
            f" (1-{MAX_XDS_CLUSTER_LENGTH} letters, digits, '_', '.', ':' or '-'), which xds_api_type"
            f" {api_type.value!r} needs",
        )
    return api_type, cluster


def peer_address(peer: str) -> str:
    """The IP address of a gRPC peer (`ipv4:10.0.0.7:51234`, `ipv6:[::1]:51234`), "" for any other
    kind of peer (a Unix socket)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    host = rest.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_port(number: int) -> bool:
    """Whether `number` is a TCP port a listener can bind (1-65535)."""
    return 1 <= number <= 65535


def needs_site(role: ProxyRole, field: str, site: str) -> str:
    """Why `site`, given as `field`, cannot be the site of an edge `role`'s proxy."""
    return f"{with_article(role)} needs {field}, a site id (lowercase RFC 1123 label); got {site!r}"


def group_problem(group: ProxyGroup) -> str | None:
    """Why no node's metadata could make `group`, by the rules of `proxy_group` (a port in 1-65535;
    a site id for an edge role and none for the others; `ProxyGroup` itself checks the listen
    address and the xDS source), or None. For groups built from elsewhere (the status endpoint's
    previews), which would otherwise show config nothing is ever sent."""
    if not is_port(group.outbound_port):
        return f"outbound_port {group.outbound_port} is not a port"
    if group.role.is_edge and not is_site_id(group.site):
        return needs_site(group.role, "site", group.site[:80])
    if not group.role.is_edge and group.site:
        return f"site is for the edge roles; a {group.role} proxy has none"
    if group.role is ProxyRole.GATEWAY and (problem := gateway_key_problem(group.gateway)) is not None:
        return problem
    return None


def with_article(word: str) -> str:
    """`word` after "a" or "an" as it is spoken: "an edge-gateway", "a device", "a sidecar"."""
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"


def check_resource_names(names: Any) -> None:
    """Refuses names no resource of ours can have: empty, over 1 KiB, or with control characters."""
    for name in names:
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            shown = repr(name[:64]) + ("…" if len(name) > 64 else "")
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed resource name {shown}")
