"""Bootstraps for the proxies meshplane serves: `BootstrapOptions` in, the bootstrap's text out.

Owns what an Envoy (sidecar, edge-gateway, device, mobile, gateway) or a proxyless gRPC client (grpc) needs
before its first xDS request: where the control plane is, who the proxy is (node id, role, site,
locality, outbound port), ADS or the per-type services, Delta or SotW, the credentials of the
xDS connection, and (`stats_address`) a listener that lets Prometheus scrape Envoy's own stats
without reaching its admin interface. The files in envoy-configs/ are `render(BootstrapOptions(role))` for each role,
byte for byte (`make bootstraps`; tests/test_bootstrap.py fails while they are stale).

Pure: no I/O, no clock, no environment; the same options give the same text. Envoy bootstraps are
rendered from text templates rather than dumped from a dict, because these files are what users
read: the comments say why each part is there. Every value that comes from an option goes through
`_yaml_scalar`, so no option can add YAML structure. The gRPC bootstrap is JSON, which has no
comments: docs/bootstraps.md explains it.

Must not import anything of meshplane.xds, discovery, status or app (an import-linter contract):
the CLI renders a bootstrap without loading the control plane, grpc or protobuf.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from meshplane.model import ProxyRole
from meshplane.model.proxy import (
    DEVICE_CERTIFICATE_SECRET,
    GATEWAY_CA_SECRET,
    MAX_PORT_OFFSET,
    XdsApiType,
    certificate_dir_problem,
    device_sds_path,
    gateway_ca_sds_path,
    gateway_key_problem,
    listen_address_of,
    namespace_problem,
)
from meshplane.model.sites import is_site_id

DEFAULT_XDS_SERVER = "127.0.0.1:18000"
DEFAULT_REGION = "local"
DEFAULT_ZONE = "local-a"
DEFAULT_SITE = "gym-local"
# The Gateway a `gateway` bootstrap names when --gateway is not given (the demo's).
DEFAULT_GATEWAY = "default/meshplane"
# The static cluster every Envoy bootstrap reaches the control plane through; a per-type proxy
# names it in node.metadata.xds_cluster so the config sources meshplane sends name it too.
XDS_CLUSTER = "meshplane"
# `--transport`: one ADS stream for every type (the default), or one stream per type.
TRANSPORTS = ("ads", "per-type")
# `--stats-address` for a Kubernetes sidecar (Istio's merged-metrics port): documented, not a default.
KUBERNETES_STATS_ADDRESS = "0.0.0.0:15090"
# The static listener and cluster of `--stats-address`. A contract with meshplane's names
# (xds/names.py): its dynamic listeners and clusters always hold a `_` + port, `.` + `:`, or `/`
# in other places, so CDS and LDS can never send these names and replace them.
STATS_LISTENER = "envoy_stats"
STATS_ADMIN_CLUSTER = "envoy_admin"
# What the stats listener forwards to the admin interface (GET only); any other path or method is 404.
STATS_PATHS = ("/stats/prometheus", "/ready")
# The device's inbound listener (`--inbound-address`), its app's cluster, its certificate's SDS
# secret and files. Static names without a port or `/`: never one meshplane sends.
INBOUND_LISTENER = "device_inbound"
INBOUND_APP_CLUSTER = "device_app"
INBOUND_SECRET = DEVICE_CERTIFICATE_SECRET
INBOUND_CERTIFICATE_FILE = "cert.pem"
INBOUND_KEY_FILE = "key.pem"
DEFAULT_INBOUND_APP = "127.0.0.1:8080"

# The file in envoy-configs/ holding each role's default bootstrap (`make bootstraps`).
COMMITTED_FILES: dict[ProxyRole, str] = {
    ProxyRole.SIDECAR: "sidecar.yaml",
    ProxyRole.EDGE_GATEWAY: "edge-gateway.yaml",
    ProxyRole.DEVICE: "device.yaml",
    ProxyRole.MOBILE: "mobile.yaml",
    ProxyRole.GRPC: "grpc-bootstrap.json",
    ProxyRole.GATEWAY: "gateway.yaml",
}


@dataclass(frozen=True, slots=True)
class RoleDefaults:
    """What a role's bootstrap says when an option is not given (the values of the demo and tests)."""

    node_id: str
    node_cluster: str
    admin_address: str | None  # None: the role has no admin interface (a gRPC client)
    outbound_port: int | None  # None: meshplane sends the role no listener to put it on
    site: str | None  # None: not an edge role, no site


ROLE_DEFAULTS: dict[ProxyRole, RoleDefaults] = {
    ProxyRole.SIDECAR: RoleDefaults(
        "sidecar-demo", "demo-client", "127.0.0.1:9901", ProxyRole.SIDECAR.default_outbound_port, None
    ),
    ProxyRole.EDGE_GATEWAY: RoleDefaults(
        "edge-gateway-demo",
        "edge-gateway",
        "127.0.0.1:9902",
        ProxyRole.EDGE_GATEWAY.default_outbound_port,
        DEFAULT_SITE,
    ),
    ProxyRole.DEVICE: RoleDefaults(
        "device-demo", "bike", "127.0.0.1:9903", ProxyRole.DEVICE.default_outbound_port, DEFAULT_SITE
    ),
    ProxyRole.MOBILE: RoleDefaults("mobile-demo", "mobile-ios", "127.0.0.1:9904", None, DEFAULT_SITE),
    ProxyRole.GRPC: RoleDefaults("grpc-client-demo", "demo-client", None, None, None),
    ProxyRole.GATEWAY: RoleDefaults("gateway-demo", "gateway", "127.0.0.1:9905", None, None),
}


class BootstrapError(ValueError):
    """Options that make no bootstrap; `problems` lists every one, each a sentence."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class BootstrapOptions:
    """Everything a bootstrap can vary by. None means the role's default (`ROLE_DEFAULTS`).

    `xds_server` is the one value naming the control plane, `host:port` (`[v6]:port` for IPv6):
    an IP address gives a STATIC cluster, a DNS name a DNS cluster (STRICT_DNS behaviour). With `tls_ca` the xDS
    connection is TLS, verifying the server's certificate against that CA and its name
    (`tls_server_name`, else the host of `xds_server`); with `tls_cert` and `tls_key` too, mTLS:
    the certificate's URI SAN `meshplane://role/<role>[/site/<site>]` grants what the proxy may
    claim. `xds_token` is a bearer token sent on every xDS stream (`serve --xds-tokens`).
    `listen_address` (edge-gateway and gateway) is the IP the gateway's listeners bind, rendered as
    node.metadata.listen_address; None leaves it out, and meshplane binds them to 0.0.0.0.
    `cloud_listen_address` (edge-gateway only) is the IP its cloud-facing listener binds instead,
    node.metadata.cloud_listen_address (None: the same as the other).
    `gateway` (gateway only; None: `DEFAULT_GATEWAY`) is the Kubernetes Gateway, `namespace/name`,
    the proxy serves; `port_offset` (gateway only) is added to each of its listeners' ports.
    `namespace` (sidecar and grpc; None leaves it out) is the Kubernetes namespace of the proxy's
    workload, rendered as node.metadata.namespace: Gateway API consumer routes of that namespace
    reach only a proxy that says it.
    `transport` is `ads` (one ADS stream for every type) or `per-type` (CDS, LDS, and RTDS for
    mobile, each on its own service; node.metadata.xds_api_type and xds_cluster then tell
    meshplane to point the EDS, RDS and SDS sources it sends there too); `sotw` chooses SotW or
    Delta for either. `stats_address` (IP:PORT, off when None) adds a listener there that forwards
    `GET /stats/prometheus` and `GET /ready` to the admin interface and answers everything else
    404: Envoy's stats for a Prometheus that cannot reach the loopback admin (which serves
    /quitquitquit and config dumps to anyone who can). It needs the admin interface on a fixed
    port, so an Envoy role with a nonzero admin port.
    `certificate_dir` and `gateway_ca` (device only, absolute, both or neither) are where the
    device keeps its registry-issued certificate (`cert.pem`, `key.pem`) and the CA of its site's
    gateways: rendered as node.metadata.certificate_dir, so at a site with `tls` meshplane's
    clusters reach the gateways over mTLS with them, through the file-based SDS file
    `device_sds_file` (whose text is `render_device_sds`; the bootstrap command writes it).
    `inbound_address` (device only, IP:PORT: the address and port the device registers; needs the
    two above) adds the device's inbound listener for its gateway: mTLS with the same certificate,
    requiring a client certificate from the gateways' CA, forwarding to the app at `inbound_app`
    (IP:PORT, default `DEFAULT_INBOUND_APP`).
    """

    role: str
    xds_server: str = DEFAULT_XDS_SERVER
    node_id: str | None = None
    node_cluster: str | None = None
    site: str | None = None
    region: str = DEFAULT_REGION
    zone: str = DEFAULT_ZONE
    sub_zone: str = ""
    outbound_port: int | None = None
    admin_address: str | None = None
    sotw: bool = False
    transport: str = "ads"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    xds_token: str | None = None
    listen_address: str | None = None
    cloud_listen_address: str | None = None
    stats_address: str | None = None
    gateway: str | None = None
    port_offset: int | None = None
    inbound_address: str | None = None
    inbound_app: str | None = None
    certificate_dir: str | None = None
    gateway_ca: str | None = None
    namespace: str | None = None

    def problems(self) -> list[str]:
        """Every reason these options make no bootstrap (empty when they do)."""
        if self.role not in ROLE_DEFAULTS:
            return [f"unknown role {self.role!r} (one of: {', '.join(ROLE_DEFAULTS)})"]
        role = ProxyRole(self.role)
        defaults = ROLE_DEFAULTS[role]
        found: list[str] = []
        server = split_host_port(self.xds_server)
        if server is None:
            found.append(f"--xds-server {self.xds_server!r} is not HOST:PORT (an IP address or DNS name, port 1-65535)")
        for flag, value in (("--node-id", self.node_id), ("--cluster", self.node_cluster)):
            if value is not None and not _is_name(value):
                found.append(f"{flag} {value!r} must be non-empty printable text without spaces")
        for flag, value in (("--region", self.region), ("--zone", self.zone), ("--sub-zone", self.sub_zone)):
            if value and not _is_name(value):
                found.append(f"{flag} {value!r} must be printable text without spaces")
        if role.is_edge:
            site = self.site if self.site is not None else defaults.site
            if not site or not is_site_id(site):
                found.append(f"role {role} needs --site, a site id (lowercase RFC 1123 label); got {site or ''!r}")
        elif self.site is not None:
            found.append(f"--site is for the edge roles (edge-gateway, device, mobile), not {role}")
        if self.outbound_port is not None:
            if defaults.outbound_port is None:
                found.append(f"--outbound-port does not apply to {role}: meshplane sends it no listener")
            elif not 1 <= self.outbound_port <= 65535:
                found.append(f"--outbound-port {self.outbound_port} is not a port (1-65535)")
        if role is ProxyRole.GATEWAY:
            if self.gateway is not None and (problem := gateway_key_problem(self.gateway)) is not None:
                found.append(f"--{problem}")
            if self.port_offset is not None and not 0 <= self.port_offset <= MAX_PORT_OFFSET:
                found.append(f"--port-offset {self.port_offset} is not in 0-{MAX_PORT_OFFSET}")
        else:
            for flag, given in (
                ("--gateway", self.gateway is not None),
                ("--port-offset", self.port_offset is not None),
            ):
                if given:
                    found.append(f"{flag} is for the gateway role, not {role}")
        if self.namespace is not None:
            if role not in (ProxyRole.SIDECAR, ProxyRole.GRPC):
                found.append(f"--namespace is for sidecar and grpc, not {role}")
            elif (problem := namespace_problem(self.namespace)) is not None:
                found.append(f"--{problem}")
        if self.listen_address is not None:
            if not role.has_listen_address:
                found.append(
                    f"--listen-address is for edge-gateway and gateway, not {role}: meshplane binds its listeners"
                )
            elif listen_address_of(self.listen_address) is None:
                found.append(
                    f"--listen-address {self.listen_address!r} is not an IP address to listen on "
                    "(e.g. 127.0.0.1; no multicast, no IPv6 zone)"
                )
        if self.cloud_listen_address is not None:
            if role is not ProxyRole.EDGE_GATEWAY:
                found.append(f"--cloud-listen-address is for edge-gateway, not {role}")
            elif listen_address_of(self.cloud_listen_address) is None:
                found.append(
                    f"--cloud-listen-address {self.cloud_listen_address!r} is not an IP address to listen on "
                    "(e.g. 10.0.0.5; no multicast, no IPv6 zone)"
                )
        if self.admin_address is not None:
            admin = split_host_port(self.admin_address, allow_zero=True)
            if defaults.admin_address is None:
                found.append(f"--admin-address does not apply to {role}: a gRPC client has no admin interface")
            elif admin is None or not _is_ip(admin[0]):
                found.append(f"--admin-address {self.admin_address!r} is not IP:PORT (port 0-65535; 0: Envoy picks)")
        found += self._stats_problems(role)
        found += self._inbound_problems(role)
        if (self.tls_cert is None) != (self.tls_key is None):
            found.append("--tls-cert and --tls-key go together (the client certificate and its key, for mTLS)")
        for flag, value in (("--tls-cert", self.tls_cert), ("--tls-server-name", self.tls_server_name)):
            if value is not None and self.tls_ca is None:
                found.append(f"{flag} needs --tls-ca, the CA that signed the control plane's certificate")
        for flag, path in (("--tls-ca", self.tls_ca), ("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not _is_name(path):
                found.append(f"{flag} {path!r} must be a file path without spaces or control characters")
        if self.tls_server_name is not None and not _is_dns_name(self.tls_server_name):
            found.append(f"--tls-server-name {self.tls_server_name!r} is not a DNS name")
        if self.xds_token is not None and not re.fullmatch(r"[\x21-\x7e]+", self.xds_token):
            found.append("--xds-token must be non-empty printable ASCII without spaces")
        if self.transport not in TRANSPORTS:
            found.append(f"--transport {self.transport!r} is not one of: {', '.join(TRANSPORTS)}")
        elif self.transport == "per-type":
            if role is ProxyRole.GRPC:
                found.append("--transport per-type does not apply to grpc: proxyless gRPC speaks ADS only")
            elif self.xds_token is not None:
                # The token rides on each grpc_service's initial_metadata; the EDS, RDS and SDS
                # sources meshplane sends cannot carry it (it never knows the token), so those
                # streams would be refused. A client certificate covers every stream.
                found.append(
                    "--xds-token does not apply to --transport per-type: the config sources meshplane sends "
                    "cannot carry it; prove the role with a client certificate (--tls-cert)"
                )
        if role is ProxyRole.GRPC:
            # grpcio's bootstrap `tls` credentials (gRFC A65) check the certificate against the
            # host of server_uri, and the bootstrap cannot carry our bearer token (its `call_creds`,
            # where a gRPC release has them, read JWT files only: gRFC A97).
            if self.tls_server_name is not None:
                found.append(
                    "--tls-server-name does not apply to grpc: the server's certificate must name the --xds-server host"
                )
            if self.xds_token is not None:
                found.append(
                    "--xds-token does not apply to grpc: a gRPC client proves its role with a certificate (--tls-cert)"
                )
        return found

    def _inbound_problems(self, role: ProxyRole) -> list[str]:
        given = {
            "--inbound-address": self.inbound_address,
            "--inbound-app": self.inbound_app,
            "--certificate-dir": self.certificate_dir,
            "--gateway-ca": self.gateway_ca,
        }
        if all(value is None for value in given.values()):
            return []
        if role is not ProxyRole.DEVICE:
            return [f"{flag} is for the device role, not {role}" for flag, value in given.items() if value is not None]
        found = []
        if (self.certificate_dir is None) != (self.gateway_ca is None):
            found.append("--certificate-dir and --gateway-ca go together (the device's certificate, its gateways' CA)")
        if self.inbound_address is not None and self.certificate_dir is None:
            found.append("--inbound-address needs --certificate-dir and --gateway-ca (the listener is mTLS)")
        if self.inbound_app is not None and self.inbound_address is None:
            found.append("--inbound-app needs --inbound-address")
        if self.inbound_address is not None:
            listen = split_host_port(self.inbound_address)
            if listen is None or not _is_ip(listen[0]):
                found.append(
                    f"--inbound-address {self.inbound_address!r} is not IP:PORT (the device's registered address)"
                )
        if self.inbound_app is not None:
            app = split_host_port(self.inbound_app)
            if app is None or not _is_ip(app[0]):
                found.append(f"--inbound-app {self.inbound_app!r} is not IP:PORT (the app on this device)")
        if self.certificate_dir is not None and (problem := certificate_dir_problem(self.certificate_dir)):
            found.append(f"--{problem.replace('_', '-', 1)}")
        if self.gateway_ca is not None and not (_is_name(self.gateway_ca) and self.gateway_ca.startswith("/")):
            found.append(
                f"--gateway-ca {self.gateway_ca!r} must be an absolute path without spaces or control characters"
            )
        return found

    def _stats_problems(self, role: ProxyRole) -> list[str]:
        if self.stats_address is None:
            return []
        defaults = ROLE_DEFAULTS[role]
        if defaults.admin_address is None:
            return [f"--stats-address does not apply to {role}: it has no admin interface to serve stats from"]
        stats = split_host_port(self.stats_address)
        if stats is None or not _is_ip(stats[0]):
            return [f"--stats-address {self.stats_address!r} is not IP:PORT (port 1-65535; 0.0.0.0 for every address)"]
        admin = split_host_port(self.admin_address or defaults.admin_address, allow_zero=True)
        if admin is None:
            return []  # --admin-address's own problem says why
        if admin[1] == 0:
            return [
                f"--stats-address needs the admin interface on a fixed port: --admin-address {self.admin_address} "
                "lets Envoy pick one, which the stats listener cannot forward to"
            ]
        taken = {admin[1]: "the admin interface's"}
        outbound = _outbound_port(self, role)
        if outbound is not None:
            taken[outbound] = "the outbound listener's"
            if role is ProxyRole.EDGE_GATEWAY:
                taken[outbound + 1] = "the device listener's"
        if stats[1] in taken:
            return [f"--stats-address {self.stats_address} uses {taken[stats[1]]} port {stats[1]}"]
        return []


def split_host_port(value: str, *, allow_zero: bool = False) -> tuple[str, int] | None:
    """`host:port` → (host, port), `[::1]:18000` → ('::1', 18000); None when it is not one."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if match is None:
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not (0 if allow_zero else 1) <= port <= 65535:
        return None
    if match.group(1) is not None:
        return (host, port) if _is_ip(host) and ":" in host else None
    return (host, port) if _is_ip(host) or _is_dns_name(host) else None


def render(options: BootstrapOptions) -> str:
    """The bootstrap's text: YAML for an Envoy role, JSON for `grpc`. Raises BootstrapError."""
    problems = options.problems()
    if problems:
        raise BootstrapError(problems)
    role = ProxyRole(options.role)
    if role is ProxyRole.GRPC:
        return _grpc_bootstrap(options)
    return "".join(
        (
            _HEADERS[role].format(outbound_port=_outbound_port(options, role), listen_address=_listen_host(options)),
            _COMMON_HEADER.format(xds_server=options.xds_server),
            _node(options, role),
            _mobile_runtime(options) if role is ProxyRole.MOBILE else "",
            _dynamic_resources(options, role),
            _static_resources(options),
            _extra_static(options, role),
            _admin(options, role),
        )
    )


# --- Envoy: per-role headers, then sections every role shares -----------------------------------

_HEADERS: dict[ProxyRole, str] = {
    ProxyRole.SIDECAR: """\
# Envoy bootstrap for a sidecar: the proxy beside an app, sending the app's outbound traffic.
#
# The app sends HTTP to 127.0.0.1:{outbound_port} (node.metadata.outbound_port) with a Host header
# naming the service: `web`, `web.default`, `web.default.svc.cluster.local` (any of them, with or
# without `:port`). node.metadata.role selects what meshplane sends (sidecar); node.locality makes
# endpoints in the same zone preferred, then the same region. node.cluster names the service this
# sidecar fronts. Everything else comes over ADS.
""",
    ProxyRole.EDGE_GATEWAY: """\
# Envoy bootstrap for an edge gateway: the Envoy at an edge site (a gym, a store) between the
# site's devices and the cloud. See docs/edge.md.
#
# node.metadata.site names the site (a `sites:` entry of the policy files); meshplane sends:
# - a listener on {listen_address}:<outbound_port> ({outbound_port}) taking the site's devices' HTTP
#   traffic into the cloud services, by Host header as a sidecar does;
# - a listener on {listen_address}:<outbound_port + 1> letting cloud services reach one registered
#   device of this site: the request names it in the `x-meshplane-device` header.
# Both bind node.metadata.listen_address (--listen-address), 0.0.0.0 when it is absent: every
# IPv4 address of this host, as devices on the site network need; 127.0.0.1 for a laptop demo.
# The site's `gateways:` in the policy files list this host's address and <outbound_port>.
""",
    ProxyRole.DEVICE: """\
# Envoy bootstrap for a device: a full Envoy on a piece of equipment (a bike, a treadmill).
# See docs/edge.md.
#
# In the field the control plane is the cloud's public meshplane address, reached through the
# site's NAT or gateway. The app on the device sends HTTP to 127.0.0.1:<outbound_port> ({outbound_port})
# with a Host header naming a cloud service, plus `x-device-class` and `x-firmware-version` for
# canary rules. meshplane sends clusters whose endpoints are, in priority order, the gateways of
# node.metadata.site, the gateways of the other sites of its region, then the cloud service
# itself; consumer-network timeouts and retries move a request on to the next priority when a
# gateway is gone. At a site with tls, only the site's gateways, over mTLS with the device's own
# certificate (--certificate-dir, --gateway-ca). With --inbound-address too, the bootstrap adds the
# listener the site's gateway reaches the device on, mTLS both ways.
""",
    ProxyRole.MOBILE: """\
# The xDS part of an Envoy Mobile app's configuration, as an Envoy bootstrap. Envoy Mobile builds
# the same structure in code: EngineBuilder.setNodeId / setNodeLocality / setNodeMetadata with the
# node below, and setXds(XdsBuilder(<host>, <port>) of the `meshplane` cluster below, with
# addClusterDiscoveryService() and addRuntimeDiscoveryService("meshplane")). See docs/edge.md and
# docs/bootstraps.md.
#
# Envoy Mobile speaks ADS with CDS and RTDS only: meshplane sends STATIC clusters for the cloud
# services (the site's gateways first, then the region's other sites, then the cloud directly)
# and one runtime layer named `meshplane` (site, region, retry settings, and the cluster name of
# every service as `meshplane.clusters.<namespace>.<service>.<port>`), which the app's own
# routes read. The app's listener and routes are its own, not meshplane's.
""",
    ProxyRole.GATEWAY: """\
# Envoy bootstrap for a gateway: the Envoy serving one Kubernetes Gateway (the Gateway API).
# See docs/gateway-api.md.
#
# node.metadata.gateway names the Gateway (namespace/name); meshplane sends a listener on
# {listen_address}:<port + node.metadata.port_offset> for each port of the Gateway's HTTP and HTTPS
# listeners, their routes (HTTPRoutes and GRPCRoutes attached to them) and the certificates of
# HTTPS listeners.
# The listeners bind node.metadata.listen_address (--listen-address), 0.0.0.0 when it is absent.
# The Gateway's `Programmed` condition turns True once a gateway Envoy has taken its listeners.
""",
}

_COMMON_HEADER = """\
#
# Rendered by `meshplane bootstrap` (docs/bootstraps.md): render it again with other options
# rather than editing it. The control plane's address is one value, --xds-server or
# MESHPLANE_XDS_SERVER ({xds_server} here): the `meshplane` cluster below.
"""


def _mobile_runtime(options: BootstrapOptions) -> str:
    return f"""
# meshplane's runtime layer (RTDS) over the app's static one: later layers win.
layered_runtime:
  layers:
    - name: static
      static_layer: {{}}
    - name: meshplane
      rtds_layer:
        name: meshplane
        rtds_config:
{_config_source(options, 10)}"""


def _config_source(options: BootstrapOptions, indent: int) -> str:
    """The body of a ConfigSource (cds_config, lds_config, rtds_config), indented by `indent`:
    the ADS stream, or the per-type service of its type over the `meshplane` cluster."""
    if options.transport != "per-type":
        body = "ads: {}\nresource_api_version: V3\n"
    else:
        body = "resource_api_version: V3\napi_config_source:\n" + _indented(_api_config_source(options), 2)
    return _indented(body, indent)


def _api_config_source(options: BootstrapOptions, retry_note: str = "") -> str:
    """The fields of an ApiConfigSource, unindented: `options`' API type (GRPC or DELTA_GRPC) on a
    gRPC service through the `meshplane` cluster that reconnects within ~100 ms, with the proxy's
    bearer token when it has one. `retry_note`'s lines are written as a comment on the retry policy."""
    note = "".join(f"      # {line}\n" for line in retry_note.splitlines())
    metadata = ""
    if options.xds_token is not None:
        metadata = (
            "    # The proxy's bearer token (`serve --xds-tokens`), sent on every xDS stream; it grants\n"
            "    # a role and site. Send it over TLS only: anyone who reads it can claim that role.\n"
            "    initial_metadata:\n"
            "      - key: authorization\n"
            f"        value: {_yaml_scalar('Bearer ' + options.xds_token)}\n"
        )
    return f"""\
api_type: {_api_type(options).name}
transport_api_version: V3
set_node_on_first_message_only: true
grpc_services:
  - envoy_grpc:
      cluster_name: {XDS_CLUSTER}
{note}      retry_policy:
        retry_back_off:
          base_interval: 0.05s
          max_interval: 0.2s
{metadata}"""


def _indented(text: str, indent: int) -> str:
    """`text`'s lines, each indented by `indent` spaces and ended by a newline."""
    return "".join(" " * indent + line + "\n" for line in text.splitlines())


def _outbound_port(options: BootstrapOptions, role: ProxyRole) -> int | None:
    return options.outbound_port if options.outbound_port is not None else ROLE_DEFAULTS[role].outbound_port


def _listen_address(options: BootstrapOptions) -> str:
    """The edge gateway's listen address as meshplane will bind it (0.0.0.0 when not given)."""
    given = listen_address_of(options.listen_address) if options.listen_address is not None else None
    return given or "0.0.0.0"


def _listen_host(options: BootstrapOptions) -> str:
    """`_listen_address` as the host of a `host:port` (IPv6 in brackets)."""
    address = _listen_address(options)
    return f"[{address}]" if ":" in address else address


def _node(options: BootstrapOptions, role: ProxyRole) -> str:
    defaults = ROLE_DEFAULTS[role]
    lines = [
        "",
        "# Who this proxy is: meshplane serves one config per role (and site, outbound port, locality).",
        "node:",
        f"  id: {_yaml_scalar(options.node_id or defaults.node_id)}",
        f"  cluster: {_yaml_scalar(options.node_cluster or defaults.node_cluster)}",
    ]
    locality = [(key, value) for key, value in _locality(options) if value]
    if locality:
        lines.append("  locality:")
        lines.extend(f"    {key}: {_yaml_scalar(value)}" for key, value in locality)
    lines += ["  metadata:", f"    role: {role.value}"]
    site = options.site if options.site is not None else defaults.site
    if site:
        lines.append(f"    site: {_yaml_scalar(site)}")
    outbound_port = _outbound_port(options, role)
    if outbound_port is not None:
        lines.append(f"    outbound_port: {outbound_port}")
    if options.listen_address is not None:
        lines.append(f"    listen_address: {_yaml_scalar(_listen_address(options))}")
    if options.cloud_listen_address is not None:
        # The cloud-facing listener binds here instead: an address of the cloud side only.
        cloud = listen_address_of(options.cloud_listen_address) or options.cloud_listen_address
        lines.append(f"    cloud_listen_address: {_yaml_scalar(cloud)}")
    if options.namespace is not None:
        lines.append(f"    namespace: {_yaml_scalar(options.namespace)}")
    if options.certificate_dir is not None and role is ProxyRole.DEVICE:
        # At a site with tls, meshplane's clusters reach the gateways with the certificate here.
        lines.append(f"    certificate_dir: {_yaml_scalar(options.certificate_dir)}")
    if role is ProxyRole.GATEWAY:
        lines.append(f"    gateway: {_yaml_scalar(options.gateway or DEFAULT_GATEWAY)}")
        if options.port_offset:
            lines.append(f"    port_offset: {options.port_offset}")
    if options.transport == "per-type":
        # Where the EDS, RDS, SDS (and RTDS) sources meshplane sends must point: without these
        # it sends `ads: {}`, which an Envoy without ADS rejects.
        lines.append(f"    xds_api_type: {_api_type(options).value}")
        lines.append(f"    xds_cluster: {XDS_CLUSTER}")
    return "\n".join(lines) + "\n"


def _api_type(options: BootstrapOptions) -> XdsApiType:
    return XdsApiType.GRPC if options.sotw else XdsApiType.DELTA_GRPC


def _locality(options: BootstrapOptions) -> list[tuple[str, str]]:
    return [("region", options.region), ("zone", options.zone), ("sub_zone", options.sub_zone)]


def _dynamic_resources(options: BootstrapOptions, role: ProxyRole) -> str:
    if options.sotw:
        flavour = "# State-of-the-world xDS (GRPC), from --sotw; without it, Delta xDS (DELTA_GRPC).\n"
    else:
        flavour = "# Delta xDS (DELTA_GRPC), the default; `--sotw` renders state-of-the-world (GRPC).\n"
    types = "  cds_config:\n" + _config_source(options, 4)
    if role is not ProxyRole.MOBILE:  # Envoy Mobile takes clusters and runtime only; no listeners
        types += "  lds_config:\n" + _config_source(options, 4)
    if options.transport == "per-type":
        # No ads_config: no source of this proxy is `ads`, so it would only be dead configuration.
        return f"""
{flavour}# Per-type services (--transport per-type): every xDS type on its own service through the
# `meshplane` cluster; node.metadata.xds_api_type and xds_cluster make the sources meshplane sends
# (EDS in clusters, RDS in listeners, SDS in TLS contexts) name the same. Envoy opens a stream per
# type here, and one per cluster, route configuration and secret for those. Each reconnects within
# ~100 ms when the control plane restarts; Envoy keeps serving its last configuration meanwhile.
dynamic_resources:
{types}"""
    retry_note = (
        "Reconnect within ~100 ms when the control plane restarts; Envoy keeps serving its\n"
        "last configuration meanwhile."
    )
    return f"""
{flavour}dynamic_resources:
  ads_config:
{_indented(_api_config_source(options, retry_note), 4)}{types}"""


def _static_resources(options: BootstrapOptions) -> str:
    server = split_host_port(options.xds_server)
    assert server is not None  # checked by problems()
    host, port = server
    if _is_ip(host):
        discovery = "      type: STATIC  # an IP address: no DNS\n"
    else:
        discovery = """\
      # A DNS name, re-resolved every dns_refresh_rate. Envoy's DNS cluster (`envoy.cluster.dns`,
      # which replaces the deprecated `type: STRICT_DNS` and its fields) behaving as STRICT_DNS
      # rather than LOGICAL_DNS: every address the name resolves to is a host, and those gone
      # from DNS are dropped. A control plane recreated on a new address (compose, a rescheduled
      # pod behind a headless Service) is found at the next refresh, and several replicas share
      # the proxies; LOGICAL_DNS would only ever connect to the first address. V4_PREFERRED:
      # IPv4 when the name has it (Docker's and most clusters' networks), else IPv6.
      cluster_type:
        name: envoy.cluster.dns
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster
          all_addresses_in_single_endpoint: false
          dns_lookup_family: V4_PREFERRED
          dns_refresh_rate: 5s
          # While the name does not resolve (the control plane's container is being recreated),
          # ask again soon rather than after dns_refresh_rate.
          dns_failure_refresh_rate:
            base_interval: 0.5s
            max_interval: 5s
"""
    return f"""
# How to reach the control plane: --xds-server {options.xds_server}.
static_resources:
  clusters:
    - name: meshplane
{discovery}      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options:
              # Notice a dead control plane (a lost NAT mapping, a vanished peer) within ~35 s.
              connection_keepalive:
                interval: 30s
                timeout: 5s
{_transport_socket(options, host)}      load_assignment:
        cluster_name: meshplane
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {_yaml_scalar(host)}
                      port_value: {port}
"""


def _transport_socket(options: BootstrapOptions, host: str) -> str:
    if options.tls_ca is None:
        return ""
    name = options.tls_server_name or host
    # Envoy checks only the chain unless told which name to expect: without this match any
    # certificate from the CA would pass for the control plane.
    san_type = "IP_ADDRESS" if options.tls_server_name is None and _is_ip(host) else "DNS"
    sni = "" if san_type == "IP_ADDRESS" else f"          sni: {_yaml_scalar(name)}\n"
    client = ""
    if options.tls_cert is not None and options.tls_key is not None:
        client = (
            "            # mTLS: the certificate's URI SAN meshplane://role/<role>[/site/<site>] grants\n"
            "            # what this proxy may claim in node.metadata. Read at start: restart on renewal.\n"
            "            tls_certificates:\n"
            f"              - certificate_chain: {{filename: {_yaml_scalar(options.tls_cert)}}}\n"
            f"                private_key: {{filename: {_yaml_scalar(options.tls_key)}}}\n"
        )
    return f"""\
      # TLS to the control plane (--tls-ca): its certificate must come from this CA and name
      # {name}.
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{sni}          common_tls_context:
            alpn_protocols: [h2]
            validation_context:
              trusted_ca: {{filename: {_yaml_scalar(options.tls_ca)}}}
              match_typed_subject_alt_names:
                - san_type: {san_type}
                  matcher: {{exact: {_yaml_scalar(name)}}}
{client}"""


def _admin_host_port(options: BootstrapOptions, role: ProxyRole) -> tuple[str, int]:
    address = options.admin_address or ROLE_DEFAULTS[role].admin_address
    assert address is not None  # every Envoy role has one
    parsed = split_host_port(address, allow_zero=True)
    assert parsed is not None  # checked by problems()
    return parsed


_HTTP_CONNECTION_MANAGER = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def _stats(options: BootstrapOptions, role: ProxyRole) -> tuple[str, str] | None:
    """`--stats-address`: a cluster reaching the admin interface and a listener forwarding the
    scrape to it."""
    if options.stats_address is None:
        return None
    stats = split_host_port(options.stats_address)
    assert stats is not None  # checked by problems()
    host, port = _admin_host_port(options, role)
    # An admin bound to every address is reached on loopback.
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    routes = "".join(
        f"""                        - match:
                            path: {path}
                            headers: [{{name: ":method", string_match: {{exact: GET}}}}]
                          route: {{cluster: {STATS_ADMIN_CLUSTER}}}
"""
        for path in STATS_PATHS
    )
    cluster = f"""    # --stats-address: the admin interface, for the stats listener below only.
    - name: {STATS_ADMIN_CLUSTER}
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: {STATS_ADMIN_CLUSTER}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {_yaml_scalar(host)}
                      port_value: {port}
"""
    listener = f"""    # --stats-address {options.stats_address}: Envoy's stats for Prometheus, as Istio's port 15090.
    # Only GET /stats/prometheus (its query, e.g. ?usedonly, passes) and GET /ready (for probes)
    # reach the admin interface; every other path or method is 404 here, so /quitquitquit,
    # /config_dump and the rest stay on loopback. Paths are normalised first: no `..` or `//`
    # way around the exact match.
    - name: {STATS_LISTENER}
      address:
        socket_address:
          address: {_yaml_scalar(stats[0])}
          port_value: {stats[1]}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": {_HTTP_CONNECTION_MANAGER}
                stat_prefix: {STATS_LISTENER}
                normalize_path: true
                merge_slashes: true
                route_config:
                  name: {STATS_LISTENER}
                  virtual_hosts:
                    - name: {STATS_LISTENER}
                      domains: ["*"]
                      routes:
{routes}                        - match: {{prefix: /}}
                          direct_response: {{status: 404}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    return cluster, listener


def _extra_static(options: BootstrapOptions, role: ProxyRole) -> str:
    """The static clusters and listeners beyond the control plane's: `--stats-address`'s and the
    device's inbound listener (`--inbound-address`); appended to `static_resources` (its
    `clusters` list comes last before them)."""
    parts = [part for part in (_stats(options, role), _inbound(options)) if part is not None]
    if not parts:
        return ""
    return "".join(cluster for cluster, _ in parts) + "  listeners:\n" + "".join(listener for _, listener in parts)


def _inbound(options: BootstrapOptions) -> tuple[str, str] | None:
    """`--inbound-address`: the device's own listener for its gateway, terminating mTLS with the
    device's certificate over file-based SDS (`device_sds_file`) and forwarding to the app."""
    if options.inbound_address is None:
        return None
    listen = split_host_port(options.inbound_address)
    app = split_host_port(options.inbound_app or DEFAULT_INBOUND_APP)
    # All checked by problems().
    assert listen is not None
    assert app is not None
    assert options.certificate_dir is not None
    assert options.gateway_ca is not None
    directory = options.certificate_dir.rstrip("/") or "/"
    cluster = f"""    # --inbound-app: the app on this device that the gateway's requests are for.
    - name: {INBOUND_APP_CLUSTER}
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: {INBOUND_APP_CLUSTER}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {_yaml_scalar(app[0])}
                      port_value: {app[1]}
"""
    listener = f"""    # --inbound-address {options.inbound_address}: where the site's gateway reaches this device
    # for the cloud (the address and port the device registers). mTLS only: the device presents its own
    # certificate (the registry issued it for its CSR) and requires a client certificate from the
    # gateways' CA (--gateway-ca), so nothing else on the site network can call the app.
    - name: {INBOUND_LISTENER}
      address:
        socket_address:
          address: {_yaml_scalar(listen[0])}
          port_value: {listen[1]}
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: true
              common_tls_context:
                # The device's certificate and key, from {directory}/{INBOUND_CERTIFICATE_FILE} and
                # {INBOUND_KEY_FILE} over file-based SDS: renewing it (registering again with a new CSR) is
                # writing both files elsewhere and renaming them into the directory, key first; the next
                # handshake uses the new pair, no restart, no connection dropped.
                tls_certificate_sds_secret_configs:
                  - name: {INBOUND_SECRET}
                    sds_config:
                      resource_api_version: V3
                      path_config_source:
                        path: {_yaml_scalar(device_sds_file(options))}
                        watched_directory: {{path: {_yaml_scalar(directory)}}}
                # The gateways' CA, read at start: restart Envoy when it changes.
                validation_context:
                  trusted_ca: {{filename: {_yaml_scalar(options.gateway_ca)}}}
          filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": {_HTTP_CONNECTION_MANAGER}
                stat_prefix: {INBOUND_LISTENER}
                codec_type: AUTO
                route_config:
                  name: {INBOUND_LISTENER}
                  virtual_hosts:
                    - name: {INBOUND_LISTENER}
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          route: {{cluster: {INBOUND_APP_CLUSTER}, timeout: 30s}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    return cluster, listener


def device_sds_file(options: BootstrapOptions) -> str:
    """The file-based SDS file of `certificate_dir` (`model.proxy.device_sds_path`), which the
    inbound listener and meshplane's clusters at a site with tls read the device's certificate and
    the gateways' CA from."""
    assert options.certificate_dir is not None
    return device_sds_path(options.certificate_dir)


def gateway_ca_sds_file(options: BootstrapOptions) -> str:
    """The file-based SDS file of the gateways' CA in `certificate_dir` (Envoy takes one secret a
    file), which meshplane's clusters at a site with tls verify the gateways by."""
    assert options.certificate_dir is not None
    return gateway_ca_sds_path(options.certificate_dir)


def render_device_sds(options: BootstrapOptions) -> str:
    """The SDS file (`device_sds_file`) of a device's certificate (`DEVICE_CERTIFICATE_SECRET`):
    the certificate and key files, re-read together when a file is moved into the directory (Envoy
    checks they match and keeps the old pair otherwise). It never changes with the certificate."""
    directory = (options.certificate_dir or "").rstrip("/") or "/"
    return f"""\
# The device's certificate, over file-based SDS (meshplane bootstrap device --certificate-dir): the
# inbound listener presents it, and at a site with tls meshplane's clusters present it to the
# gateways. Written once; the certificate and key files it names are replaced by renaming new ones
# into {directory}.
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: {INBOUND_SECRET}
    tls_certificate:
      certificate_chain: {{filename: {_yaml_scalar(directory + "/" + INBOUND_CERTIFICATE_FILE)}}}
      private_key: {{filename: {_yaml_scalar(directory + "/" + INBOUND_KEY_FILE)}}}
      watched_directory: {{path: {_yaml_scalar(directory)}}}
"""


def render_gateway_ca_sds(options: BootstrapOptions) -> str:
    """The SDS file (`gateway_ca_sds_file`) of the gateways' CA (`GATEWAY_CA_SECRET`, the file
    `gateway_ca`), which meshplane's clusters at a site with tls verify the gateways by."""
    return f"""\
# The CA of this device's site gateways, over file-based SDS (meshplane bootstrap device --gateway-ca):
# at a site with tls, meshplane's clusters verify the gateways by it. Written once.
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: {GATEWAY_CA_SECRET}
    validation_context:
      trusted_ca: {{filename: {_yaml_scalar(options.gateway_ca or "")}}}
"""


def _admin(options: BootstrapOptions, role: ProxyRole) -> str:
    host, port = _admin_host_port(options, role)
    return f"""
# Envoy's admin interface: config dumps, stats, and /quitquitquit. Loopback only unless
# --admin-address says otherwise: it is unauthenticated.
admin:
  address:
    socket_address:
      address: {_yaml_scalar(host)}
      port_value: {port}
"""


# --- gRPC: the xDS bootstrap of grpcio (gRFC A27), JSON -------------------------------------------


def _grpc_bootstrap(options: BootstrapOptions) -> str:
    defaults = ROLE_DEFAULTS[ProxyRole.GRPC]
    creds: dict[str, object] = {"type": "insecure"}
    if options.tls_ca is not None:
        # gRFC A65 `tls` credentials: the file-watcher provider's fields, re-read on change.
        config = {"ca_certificate_file": options.tls_ca}
        if options.tls_cert is not None and options.tls_key is not None:
            config |= {"certificate_file": options.tls_cert, "private_key_file": options.tls_key}
        creds = {"type": "tls", "config": config}
    node: dict[str, object] = {
        "id": options.node_id or defaults.node_id,
        "cluster": options.node_cluster or defaults.node_cluster,
    }
    locality = {key: value for key, value in _locality(options) if value}
    if locality:
        node["locality"] = locality
    metadata = {"role": ProxyRole.GRPC.value}
    if options.namespace is not None:
        metadata["namespace"] = options.namespace
    node["metadata"] = metadata
    bootstrap = {
        # grpcio's xDS client speaks state-of-the-world ADS only, so --sotw changes nothing here.
        "xds_servers": [{"server_uri": options.xds_server, "channel_creds": [creds], "server_features": ["xds_v3"]}],
        "node": node,
    }
    return json.dumps(bootstrap, indent=2) + "\n"


# --- values -----------------------------------------------------------------------------------------

# Plain YAML scalars that read back as the same string; anything else is double-quoted (JSON's
# string syntax is YAML's), so an option can never add structure to the document.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9._/-]*|(\d{1,3}\.){3}\d{1,3}")
_NOT_PLAIN = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _yaml_scalar(value: str) -> str:
    if _PLAIN.fullmatch(value) and value.lower() not in _NOT_PLAIN:
        return value
    return json.dumps(value)


def _is_name(value: str) -> bool:
    return bool(value) and value.isprintable() and not any(c.isspace() for c in value)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_dns_name(value: str) -> bool:
    """An RFC 1123 host name (`meshplane`, `meshplane.meshplane.svc.cluster.local`), not all digits."""
    labels = value.removesuffix(".").split(".")
    return (
        len(value) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not all(label.isdigit() for label in labels)
    )
