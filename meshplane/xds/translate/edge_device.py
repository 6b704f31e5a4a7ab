"""The `device` and `mobile` roles: cloud APIs reached through the site's edge gateways first.

Owns the shape of a device's clusters: one STATIC cluster per HTTP port of every cloud service,
named like a sidecar's (`names.cluster_name`), whose endpoints come in locality priorities:
0. the gateways of the device's own site,
1. the gateways of the other sites of its region (nearest first: sorted by site id),
2. the service's own (ready) endpoints, i.e. the cloud directly.
Empty tiers are skipped, so priorities stay contiguous. A service with upstream TLS has no
direct tier and no TLS on the device's cluster: its certificates come over SDS, which Envoy Mobile
cannot take and devices are not given (the gateway adds the TLS); at a site whose region has no
gateway such a service is unreachable (with a warning). A service with DNS endpoints has no direct
tier either: its names are resolved by the gateways' DNS clusters, in the cloud's view of DNS.
The clusters are STATIC with the assignment inline because Envoy Mobile speaks CDS and RTDS only
(no EDS).

Consumer networks drop, stall and come back: clusters get generous connect timeouts, TCP
keepalives and passive outlier detection (a gateway that refuses connections is ejected and
traffic spills to the next priority; no active health checks, which a fleet would multiply into
a flood on the cloud); routes retry on connect failures and resets with back-off, every retry on
a priority not tried yet (`previous_priorities`), so one request survives a dead gateway.

At a site with `tls` (zero trust) a device reaches the cloud only through its own site's gateways,
over mTLS: other sites' gateways would not accept its certificate (it names its site) and the cloud
directly would skip the gateway's identity checks, so neither tier is served. Its certificate and
the gateways' CA are files on the device (`ProxyGroup.certificate_dir`, from its bootstrap's
`--certificate-dir`), named through the file-based SDS files there, so a renewal (new files renamed
in) reaches new connections without a restart. A device at such a site whose bootstrap names no
directory, and a mobile app (Envoy Mobile takes no SDS), get clusters without endpoints, with a
warning: fail closed, never plaintext to a TLS listener and then the cloud directly.

The device's routes are a sidecar's outbound routes (same virtual hosts and route tables), so
canary rules of the policy files apply: a rule matching the `x-device-class` or
`x-firmware-version` request header (which the device's app sends) sends that class or firmware
to the canary backend. Must stay pure.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import struct_pb2

from meshplane.model import (
    EndpointHealth,
    Locality,
    Mesh,
    ProxyGroup,
    ProxyRole,
    Service,
    ServicePort,
    Site,
)
from meshplane.model.proxy import (
    DEVICE_CERTIFICATE_SECRET,
    GATEWAY_CA_SECRET,
    device_sds_path,
    gateway_ca_sds_path,
)
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.clusters import build_clusters
from meshplane.xds.translate.listeners import build_listeners
from meshplane.xds.translate.routes import build_routes
from meshplane.xds.translate.telemetry import proxy_telemetry

# A device's own request headers a canary rule may match on (documented in docs/edge.md).
DEVICE_CLASS_HEADER = "x-device-class"
FIRMWARE_HEADER = "x-firmware-version"

# Consumer networks: a slow handshake is normal, a dead one is not worth a minute.
CONNECT_TIMEOUT = 5.0
ROUTE_TIMEOUT = 30.0
PER_TRY_TIMEOUT = 10.0
RETRY_ON = "connect-failure,refused-stream,reset,gateway-error"
RETRIES = 3
RETRY_BASE_INTERVAL = 0.25
RETRY_MAX_INTERVAL = 5.0
KEEPALIVE_TIME = 60  # seconds: NAT boxes at homes and gyms forget idle flows after a few minutes
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 3

PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"

_Cluster = cluster_pb2.Cluster


def build_device(mesh: Mesh, group: ProxyGroup) -> tuple[dict[str, list[Any]], list[str]]:
    """Clusters, listener and routes of a `device` proxy (by resource kind: cds, lds, rds)."""
    warnings: list[str] = []
    site = mesh.site(group.site)
    if site is None:
        warnings.append(f"{group.role} at site {group.site!r}: no such site; cloud services are reached directly")
    clusters = _clusters(mesh, site, warnings, group)
    sidecar = dataclasses.replace(group, role=ProxyRole.SIDECAR, site="", certificate_dir="")
    # The outbound HTTP listener only, logging and tracing as the policy says for devices (a
    # collector's cluster is one of the STATIC clusters above: through the gateways first).
    listeners, listener_warnings = build_listeners(Mesh(), sidecar, proxy_telemetry(mesh, ProxyRole.DEVICE))
    routes, route_warnings = build_routes(_http_only(mesh), sidecar)
    for config in routes:
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                _consumer_network_route(route)
    return {"cds": clusters, "lds": listeners, "rds": routes}, [*warnings, *listener_warnings, *route_warnings]


def build_mobile(mesh: Mesh, group: ProxyGroup) -> tuple[dict[str, list[Any]], list[str]]:
    """Clusters and the runtime layer of an Envoy Mobile app (by resource kind: cds, rtds)."""
    warnings: list[str] = []
    site = mesh.site(group.site)
    if site is None:
        warnings.append(f"{group.role} at site {group.site!r}: no such site; cloud services are reached directly")
    clusters = _clusters(mesh, site, warnings, group)
    return {"cds": clusters, "rtds": [_runtime(mesh, site, group, clusters)]}, warnings


def _http_only(mesh: Mesh) -> Mesh:
    """The mesh without TCP ports: a device reaches the cloud through HTTP gateways only."""
    services = []
    for service in mesh.services:
        ports = tuple(port for port in service.ports if port.protocol.is_http)
        if ports:
            services.append(dataclasses.replace(service, ports=ports))
    return dataclasses.replace(mesh, services=tuple(services))


def _clusters(mesh: Mesh, site: Site | None, warnings: list[str], group: ProxyGroup) -> list[Any]:
    tiers = _gateway_tiers(mesh, site)
    gateway_tls = None
    zero_trust = site is not None and site.tls is not None
    if site is not None and site.tls is not None:
        # Own site's gateways only, over mTLS; no other site's, no cloud directly (module docstring).
        tiers = tiers[:1] if site.gateways else []
        if group.role is ProxyRole.DEVICE and group.certificate_dir:
            gateway_tls = _gateway_tls(group.certificate_dir)
        else:
            why = (
                "Envoy Mobile cannot present a device certificate"
                if group.role is ProxyRole.MOBILE
                else "its bootstrap names no certificate directory (meshplane bootstrap device --certificate-dir)"
            )
            warnings.append(
                f"{group.role} at site {site.id}: the site's gateways speak TLS with devices and {why}; "
                "cloud services are unreachable"
            )
            tiers = []
        if not tiers and gateway_tls is not None:
            warnings.append(
                f"{group.role} at site {site.id}: the site has tls but no gateways; cloud services are unreachable"
            )
    # Start from the sidecar's clusters, so protocol options (HTTP/2 for gRPC; the gateway's listener
    # speaks it too) and circuit breakers carry over, then make each one STATIC with the tiers inline.
    sidecar_clusters, _ = build_clusters(_http_only(mesh), ProxyGroup())
    by_name = {cluster.name: cluster for cluster in sidecar_clusters}
    clusters = []
    for service in _http_only(mesh).services:
        for port in service.ports:
            name = names.cluster_name(service.ref, port)
            cluster = _Cluster()
            cluster.CopyFrom(by_name[name])
            cluster.ClearField("eds_cluster_config")
            cluster.ClearField("health_checks")  # no active checks from a fleet (see the module docstring)
            direct = not zero_trust
            if gateway_tls is not None:
                cluster.transport_socket.CopyFrom(gateway_tls)
            elif service.tls is not None:
                # The service's TLS takes certificates over SDS, which Envoy Mobile lacks (CDS and
                # RTDS only) and devices are not given (the mesh's client key on every device in
                # the field): devices reach it only through their gateways (plain HTTP on the site
                # network; the gateway's cluster adds the TLS), never directly. So no cluster of
                # these roles names an SDS secret served by meshplane, and they get no secrets.
                cluster.ClearField("transport_socket")
                direct = False
                reach = (
                    "through gateways only" if tiers else "through gateways only, and its region has none: unreachable"
                )
                warnings.append(f"cluster {name}: upstream TLS service; edge devices reach it {reach}")
            elif service.dns is not None:
                # Its names are the cloud's to resolve (the service's own resolvers, split-horizon
                # DNS) and a STATIC cluster holds no names: devices reach it through their gateways,
                # whose cluster for it resolves them.
                direct = False
                reach = (
                    "through gateways only" if tiers else "through gateways only, and its region has none: unreachable"
                )
                warnings.append(f"cluster {name}: DNS endpoints; edge devices reach it {reach}")
            cluster.type = _Cluster.STATIC
            cluster.connect_timeout.CopyFrom(core.duration(max(CONNECT_TIMEOUT, service.policy.connect_timeout)))
            cluster.load_assignment.CopyFrom(_assignment(name, service, port, tiers, direct=direct))
            cluster.upstream_connection_options.tcp_keepalive.keepalive_time.value = KEEPALIVE_TIME
            cluster.upstream_connection_options.tcp_keepalive.keepalive_interval.value = KEEPALIVE_INTERVAL
            cluster.upstream_connection_options.tcp_keepalive.keepalive_probes.value = KEEPALIVE_PROBES
            if not cluster.HasField("outlier_detection"):
                cluster.outlier_detection.CopyFrom(
                    outlier_detection_pb2.OutlierDetection(
                        # Connection failures count as 5xx (split_external_local_origin_errors off).
                        consecutive_5xx=core.uint32(2),
                        interval=core.duration(5),
                        base_ejection_time=core.duration(30),
                        max_ejection_percent=core.uint32(100),
                    )
                )
            clusters.append(cluster)
    return clusters


def _gateway_tls(certificate_dir: str) -> Any:
    """The device's TLS to its gateways: its own certificate presented and the gateway verified
    against the gateways' CA, from the two file-based SDS files in `certificate_dir` (the
    certificate's is the same subscription as the bootstrap's inbound listener: one certificate,
    renewed once)."""
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(
                    name=DEVICE_CERTIFICATE_SECRET,
                    sds_config=_file_source(device_sds_path(certificate_dir), certificate_dir),
                )
            ],
            validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(
                name=GATEWAY_CA_SECRET, sds_config=_file_source(gateway_ca_sds_path(certificate_dir), certificate_dir)
            ),
        )
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=core.pack(context))


def _file_source(path: str, directory: str) -> Any:
    """A file-based SDS source watched through its directory, as the device's bootstrap names it
    (the same source: one subscription per file in Envoy)."""
    return config_source_pb2.ConfigSource(
        resource_api_version=config_source_pb2.V3,
        path_config_source=config_source_pb2.PathConfigSource(
            path=path,
            # Renewals rename files into the directory: watch it, not the file (a moved-in file is new).
            watched_directory=base_pb2.WatchedDirectory(path=directory.rstrip("/") or "/"),
        ),
    )


def _gateway_tiers(mesh: Mesh, site: Site | None) -> list[list[tuple[Locality, list[tuple[str, int]]]]]:
    """The gateway tiers: [own site's], [other sites of the region's, one locality per site]."""
    if site is None:
        return []
    own = [(site.locality, [(g.address, g.port) for g in site.gateways])] if site.gateways else []
    others = [
        (other.locality, [(g.address, g.port) for g in other.gateways])
        for other in mesh.sites
        if other.id != site.id and other.region == site.region and other.gateways
    ]
    return [tier for tier in (own, others) if tier]


def _assignment(
    name: str,
    service: Service,
    port: ServicePort,
    tiers: list[list[tuple[Locality, list[tuple[str, int]]]]],
    *,
    direct: bool,
) -> Any:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    priority = 0
    for tier in tiers:
        for locality, addresses in tier:
            assignment.endpoints.append(_locality_endpoints(locality, sorted(addresses), priority))
        priority += 1
    cloud: dict[Locality, list[tuple[str, int]]] = {}
    for endpoint in service.endpoints if direct else ():
        if endpoint.port_name == port.name and endpoint.health is EndpointHealth.READY:
            cloud.setdefault(endpoint.locality, []).append((endpoint.address, endpoint.port))
    for locality in sorted(cloud):
        assignment.endpoints.append(_locality_endpoints(locality, sorted(set(cloud[locality])), priority))
    return assignment


def _locality_endpoints(locality: Locality, addresses: list[tuple[str, int]], priority: int) -> Any:
    return endpoint_components_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(region=locality.region, zone=locality.zone, sub_zone=locality.sub_zone),
        priority=priority,
        load_balancing_weight=core.uint32(len(addresses)),
        lb_endpoints=[
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
                    )
                ),
                health_status=health_check_pb2.HEALTHY,
            )
            for address, port in addresses
        ],
    )


def _consumer_network_route(route: Any) -> None:
    """Timeouts and retries for consumer networks, unless the policy's rule set its own; every
    retry goes to a host and a priority not tried yet, so a dead gateway costs one attempt."""
    if not route.HasField("route"):
        return
    action = route.route
    # A zero timeout is a gRPC route's (streams live as long as the caller's deadline): no per-try
    # timeout either, or every stream would be cut after it.
    streaming = action.HasField("timeout") and action.timeout.ToNanoseconds() == 0
    if not action.HasField("timeout"):
        action.timeout.CopyFrom(core.duration(ROUTE_TIMEOUT))
    policy = action.retry_policy
    if not action.HasField("retry_policy"):
        policy.retry_on = RETRY_ON
        policy.num_retries.CopyFrom(core.uint32(RETRIES))
        if not streaming:
            policy.per_try_timeout.CopyFrom(core.duration(PER_TRY_TIMEOUT))
    policy.retry_back_off.base_interval.CopyFrom(core.duration(RETRY_BASE_INTERVAL))
    policy.retry_back_off.max_interval.CopyFrom(core.duration(RETRY_MAX_INTERVAL))
    policy.retry_priority.CopyFrom(
        route_components_pb2.RetryPolicy.RetryPriority(
            name=PREVIOUS_PRIORITIES,
            typed_config=core.pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1)),
        )
    )
    del policy.retry_host_predicate[:]
    policy.retry_host_predicate.append(
        route_components_pb2.RetryPolicy.RetryHostPredicate(
            name=PREVIOUS_HOSTS, typed_config=core.pack(previous_hosts_pb2.PreviousHostsPredicate())
        )
    )
    policy.host_selection_retry_max_attempts = 3


def _runtime(mesh: Mesh, site: Site | None, group: ProxyGroup, clusters: list[Any]) -> Any:
    """The app's runtime layer: where it is and which clusters serve which service, so the app's
    bootstrap can route by name; plus the retry settings the device role uses."""
    layer: dict[str, Any] = {
        "meshplane.site": group.site,
        "meshplane.region": site.region if site is not None else "",
        "meshplane.gateways": float(len(site.gateways)) if site is not None else 0.0,
        "meshplane.retry.attempts": float(RETRIES),
        "meshplane.retry.per_try_timeout_ms": PER_TRY_TIMEOUT * 1000,
        "meshplane.timeout_ms": ROUTE_TIMEOUT * 1000,
    }
    for service in _http_only(mesh).services:
        for port in service.ports:
            layer[f"meshplane.clusters.{service.namespace}.{service.name}.{port.name}"] = names.cluster_name(
                service.ref, port
            )
    return rtds_pb2.Runtime(name=names.MOBILE_RUNTIME_NAME, layer=_struct(layer))


def _struct(values: dict[str, Any]) -> Any:
    layer = struct_pb2.Struct()
    layer.update(dict(sorted(values.items())))
    return layer
