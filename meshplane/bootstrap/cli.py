"""`meshplane bootstrap ROLE`: prints (or writes, with -o) the bootstrap of a proxy of that role.

    meshplane bootstrap sidecar --xds-server meshplane:18000 -o /etc/envoy/envoy.yaml
    MESHPLANE_XDS_SERVER=meshplane.meshplane.svc.cluster.local:18000 meshplane bootstrap device --site gym-12

Every flag can also be set as MESHPLANE_BOOTSTRAP_<FLAG> (meshplane/flags.py); `--xds-server` /
`MESHPLANE_XDS_SERVER` is the one value naming the control plane for local runs, compose and
Kubernetes, and `--xds-token` is `MESHPLANE_XDS_TOKEN`. Bad options exit 2 with one line per
problem. Owns the command's flags and the file write; the text comes from render.py. Imports
nothing heavy: no grpc, protobuf or control plane.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from meshplane.bootstrap.render import (
    DEFAULT_GATEWAY,
    DEFAULT_INBOUND_APP,
    DEFAULT_REGION,
    DEFAULT_XDS_SERVER,
    DEFAULT_ZONE,
    KUBERNETES_STATS_ADDRESS,
    ROLE_DEFAULTS,
    TRANSPORTS,
    BootstrapError,
    BootstrapOptions,
    device_sds_file,
    gateway_ca_sds_file,
    render,
    render_device_sds,
    render_gateway_ca_sds,
)
from meshplane.flags import env_flag, env_switch
from meshplane.model.proxy import DEVICE_SDS_FILE, GATEWAY_CA_SDS_FILE


def _port(text: str) -> int:
    """argparse type for a port: an int, or a clear error (argparse exits 2 with it)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None


# The variables of this command's own flags are MESHPLANE_BOOTSTRAP_<FLAG> (meshplane/flags.py says
# why); the two that name the same thing everywhere are not scoped: MESHPLANE_XDS_SERVER, the one
# value naming the control plane, and MESHPLANE_XDS_TOKEN, a proxy's token.
SCOPE = "bootstrap"


def add_bootstrap_command(commands: Any) -> None:
    """Adds `bootstrap` to the `meshplane` command's subparsers."""
    bootstrap = commands.add_parser(
        "bootstrap",
        help="print the bootstrap of an Envoy (sidecar, edge-gateway, device, mobile, gateway) or a gRPC client",
        description="Render the bootstrap of a proxy of ROLE: YAML for Envoy, JSON for a proxyless gRPC "
        "client (GRPC_XDS_BOOTSTRAP). docs/bootstraps.md.",
    )
    bootstrap.add_argument("role", metavar="ROLE", choices=list(ROLE_DEFAULTS), help="{%(choices)s}")
    env_flag(
        bootstrap,
        "--xds-server",
        default=DEFAULT_XDS_SERVER,
        help="the control plane, HOST:PORT (an IP address: STATIC cluster; a DNS name: DNS cluster)",
    )
    env_flag(bootstrap, "--node-id", scope=SCOPE, help="node.id (default: the role's demo id)")
    env_flag(
        bootstrap, "--cluster", scope=SCOPE, dest="node_cluster", help="node.cluster, the service this proxy fronts"
    )
    env_flag(
        bootstrap,
        "--site",
        scope=SCOPE,
        help="node.metadata.site, for edge-gateway, device and mobile (default gym-local)",
    )
    env_flag(bootstrap, "--region", scope=SCOPE, default=DEFAULT_REGION, help="node.locality.region ('' for none)")
    env_flag(bootstrap, "--zone", scope=SCOPE, default=DEFAULT_ZONE, help="node.locality.zone ('' for none)")
    env_flag(bootstrap, "--sub-zone", scope=SCOPE, default="", help="node.locality.sub_zone")
    env_flag(
        bootstrap,
        "--outbound-port",
        scope=SCOPE,
        type=_port,
        help="node.metadata.outbound_port, where meshplane puts the proxy's listener (sidecar/device 15001, "
        "edge-gateway 15080)",
    )
    env_flag(
        bootstrap,
        "--listen-address",
        scope=SCOPE,
        help="node.metadata.listen_address, edge-gateway and gateway: the IP its listeners bind (default 0.0.0.0, "
        "every IPv4 address; 127.0.0.1 keeps a laptop's gateway off the network)",
    )
    env_flag(
        bootstrap,
        "--cloud-listen-address",
        scope=SCOPE,
        help="node.metadata.cloud_listen_address, edge-gateway only: the IP its cloud-facing listener "
        "(edge_to_devices) binds, an address of the cloud side only (default: --listen-address's)",
    )
    env_flag(
        bootstrap,
        "--gateway",
        scope=SCOPE,
        help=f"node.metadata.gateway, gateway only: the Kubernetes Gateway it serves, NAMESPACE/NAME "
        f"(default {DEFAULT_GATEWAY})",
    )
    env_flag(
        bootstrap,
        "--port-offset",
        scope=SCOPE,
        type=_port,
        help="node.metadata.port_offset, gateway only: added to each Gateway listener's port (default 0; "
        "8000 serves port 80 on 8080 without privileges)",
    )
    env_flag(
        bootstrap,
        "--namespace",
        scope=SCOPE,
        help="node.metadata.namespace, sidecar and grpc: the Kubernetes namespace of the proxy's workload, "
        "which Gateway API consumer routes of that namespace need (default: not said)",
    )
    env_flag(
        bootstrap,
        "--admin-address",
        scope=SCOPE,
        help="Envoy's admin interface, IP:PORT (127.0.0.1 and 9901 sidecar, 9902 edge-gateway, 9903 device, "
        "9904 mobile)",
    )
    env_flag(
        bootstrap,
        "--stats-address",
        scope=SCOPE,
        help="a listener, IP:PORT, serving only GET /stats/prometheus and /ready of the admin interface, for "
        f"Prometheus (off by default; {KUBERNETES_STATS_ADDRESS} for a Kubernetes sidecar)",
    )
    env_switch(bootstrap, "--sotw", scope=SCOPE, help="state-of-the-world xDS instead of Delta")
    env_flag(
        bootstrap,
        "--transport",
        scope=SCOPE,
        default="ads",
        choices=TRANSPORTS,
        help="ads: one ADS stream for every xDS type; per-type: CDS, LDS (RTDS for mobile) and what they "
        "refer to each on its own service (node.metadata.xds_api_type, xds_cluster); Delta or SotW either way",
    )
    tls = bootstrap.add_argument_group("the xDS connection's credentials")
    env_flag(
        tls, "--tls-ca", scope=SCOPE, help="TLS to the control plane: its certificate must come from this CA (PEM)"
    )
    env_flag(tls, "--tls-cert", scope=SCOPE, help="mTLS: this proxy's certificate (PEM), with --tls-key")
    env_flag(tls, "--tls-key", scope=SCOPE, help="its private key (PEM)")
    env_flag(
        tls,
        "--tls-server-name",
        scope=SCOPE,
        help="the name the control plane's certificate carries (default: the HOST)",
    )
    env_flag(
        tls,
        "--xds-token",
        secret=True,
        help="bearer token for `serve --xds-tokens` (prefer the variable: flags show in ps)",
    )
    inbound = bootstrap.add_argument_group(
        "device only: the inbound listener the site's gateway reaches this device on (mTLS; docs/edge.md)"
    )
    env_flag(
        inbound,
        "--inbound-address",
        scope=SCOPE,
        help="IP:PORT to listen on: the address and port the device registers",
    )
    env_flag(
        inbound,
        "--inbound-app",
        scope=SCOPE,
        help=f"IP:PORT of the app on this device the gateway's requests go to (default {DEFAULT_INBOUND_APP})",
    )
    identity = bootstrap.add_argument_group(
        "device only: its certificate, for its gateways at a site with tls and for --inbound-address (docs/edge.md)"
    )
    env_flag(
        identity,
        "--certificate-dir",
        scope=SCOPE,
        help="absolute directory holding the device's cert.pem and key.pem (its registry-issued certificate); "
        "renamed into it, renewed ones are used without a restart. Rendered as node.metadata.certificate_dir; "
        f"the SDS files naming them and the CA ({DEVICE_SDS_FILE}, {GATEWAY_CA_SDS_FILE}) are written there, "
        "even when the bootstrap goes to stdout",
    )
    env_flag(
        identity,
        "--gateway-ca",
        scope=SCOPE,
        help="absolute path of the CA (PEM) whose certificates the site's gateways present (with --certificate-dir)",
    )
    bootstrap.add_argument("-o", "--output", type=Path, help="write to this file (atomically) instead of stdout")


def options_of(args: argparse.Namespace) -> BootstrapOptions:
    return BootstrapOptions(
        role=args.role,
        xds_server=args.xds_server,
        node_id=args.node_id,
        node_cluster=args.node_cluster,
        site=args.site,
        region=args.region,
        zone=args.zone,
        sub_zone=args.sub_zone,
        outbound_port=args.outbound_port,
        admin_address=args.admin_address,
        sotw=args.sotw,
        transport=args.transport,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        xds_token=args.xds_token,
        listen_address=args.listen_address,
        cloud_listen_address=args.cloud_listen_address,
        stats_address=args.stats_address,
        gateway=args.gateway,
        port_offset=args.port_offset,
        namespace=args.namespace,
        inbound_address=args.inbound_address,
        inbound_app=args.inbound_app,
        certificate_dir=args.certificate_dir,
        gateway_ca=args.gateway_ca,
    )


def bootstrap_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Renders the bootstrap to `out` (stdout) or `args.output`; 2 with the problems on bad options.
    With `--certificate-dir`, also writes the device's two SDS files there (whatever `-o` says:
    Envoy reads them from that directory), and says so on stderr."""
    options = options_of(args)
    try:
        text = render(options)
    except BootstrapError as error:
        for problem in error.problems:
            print(f"meshplane bootstrap: {problem}", file=sys.stderr)
        return 2
    if options.certificate_dir is not None:
        for path, content in (
            (device_sds_file(options), render_device_sds(options)),
            (gateway_ca_sds_file(options), render_gateway_ca_sds(options)),
        ):
            try:
                write_atomically(Path(path), content)
            except OSError as error:
                print(f"meshplane bootstrap: cannot write {path}: {error}", file=sys.stderr)
                return 1
            print(f"meshplane bootstrap: wrote {path} (read by Envoy over file-based SDS)", file=sys.stderr)
    if args.output is None:
        (out or sys.stdout).write(text)
        return 0
    try:
        write_atomically(args.output, text, private=args.xds_token is not None)
    except OSError as error:
        print(f"meshplane bootstrap: cannot write {args.output}: {error}", file=sys.stderr)
        return 1
    return 0


def write_atomically(path: Path, text: str, *, private: bool = False) -> None:
    """Writes `text` to `path` so that a reader (an Envoy starting) sees the old file or the new one,
    never a part: a temporary file beside it, flushed, then renamed over it. Mode 0644 (Envoy and
    operators read it), or 0600 when `private` (it holds a bearer token)."""
    path = path.absolute()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600 if private else 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
