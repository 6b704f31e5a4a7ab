"""The `edge-gateway` role: an Envoy at an edge site, between the site's devices and the cloud.

Owns the gateway's two listeners, both on the group's `listen_address` (node.metadata.listen_address;
when absent 0.0.0.0, every IPv4 address of the gateway host: devices reach it over the site network;
a laptop demo says 127.0.0.1), the cloud-facing one on `cloud_listen_address` instead when given
(node.metadata.cloud_listen_address: an address of the cloud side only):
- `edge_from_devices_<port>` on `outbound_port`: the site's devices' traffic into the cloud. Its
  routes are a sidecar's outbound routes (every cloud service by its names, route tables
  included) over the same EDS clusters, so the gateway reaches the cloud as a sidecar does.
- `edge_to_devices_<port>` on `outbound_port + 1`: cloud services reach one registered device of
  this site by id, named in the `x-meshplane-device` request header. Each live device of this
  site gets a STATIC cluster `device/<id>` with its registered addresses; devices of other sites,
  and expired ones (which the registry has already dropped from the mesh), have no route, so
  Envoy answers 404. Addresses were checked against the site's ranges by the registry and again
  by `Mesh.problems()`.
Both listeners log and trace as the policy says for the role, except the traffic to collectors
(`telemetry.quiet_collector_routes`).
The cloud clusters are a sidecar's, upstream TLS included: a TLS service's cluster names its
secrets over SDS, and the gateway gets those secrets (`secrets.build_secrets`), so devices reach
TLS services through the gateway, which adds the TLS.

Zero trust with devices, for a site with `tls` (`SiteTls`) and a registry CA (`Mesh.device_trust`):
- `edge_from_devices_*` terminates TLS with the site's certificate (SDS). The client certificate
  is checked at the handshake against the SDS validation context
  `names.edge_device_validation_secret_name(site)`: the device CA plus (certificates required) the
  SPIFFE ids of the site's live devices, exactly. Each request is checked again by the `DEVICE_IDENTITY_FILTER` RBAC
  filter, whose allow-list is the RouteConfiguration's `typed_per_filter_config` (RDS): the same
  live ids, and a request whose `x-meshplane-device` names another device than its certificate is
  refused (403). A registration or an expiry therefore changes SDS and RDS only, which apply to
  new handshakes and new requests without draining a connection; the listener (LDS), whose
  change would drain every connection, depends on the site's TLS settings alone. The gateway sets
  `IDENTITY_HEADER` (the certificate's URI SAN) and `x-forwarded-client-cert` (SANITIZE_SET) for the
  cloud, removing whatever the device sent in them.
- With `to_devices: mtls`, each device cluster presents the site's certificate and requires the
  device CA and the exact SPIFFE id of the device the route names: a process at the device's
  address without that certificate gets a handshake and no request.
- `edge_to_devices_*` acts with the gateway's authority (its site certificate), so at a site with
  `tls` it refuses connections from the site's `device_ranges` (a network RBAC filter,
  `TO_DEVICES_GUARD`, on the peer's own address): a device on the gym network cannot reach another
  device through it. It depends on the site's ranges alone, so registrations drain nothing.
- Fail closed: a site with `tls` whose certificate secret is missing, or with no device trust,
  gets no device listener (and, for `to_devices: mtls`, no device routes), with a warning.
The HTTP filters of the device listener are one ordered list (`device_http_filters`): device policy
(`edge_authorization`: authorisation by device class, per-device rate limits, JWT checks) adds its
filters after the identity check, each with its own filter name, so their per-route or
per-virtual-host configs never replace the identity check's.
Must stay pure; names come from `meshplane.xds.names`.

A registration rebuilds the gateways of the device's site, each with a cluster and a route per
device of the site. Those two are built once per device value (a bounded memo of a pure function)
and handed back as the same message objects while the device is unchanged, so the publisher does
not serialise them again (`Snapshot.of` keeps the `Resource` of a message it already holds): a
registration costs about one device's translation, not the whole site's (plus, at a site with
`tls`, the device listener's route configuration and validation context, which list every live
device: rebuilt and sent whole). The messages are shared: nothing may change them after they are built.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as _hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.rbac.principals.mtls_authenticated.v3 import mtls_authenticated_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshplane.model import Device, Mesh, ProxyGroup, ProxyRole, Site
from meshplane.model.sites import ClientCertificates, DeviceTrust, SiteTls, ToDevices
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.clusters import build_clusters
from meshplane.xds.translate.edge_authorization import enforce_device_policy
from meshplane.xds.translate.listeners import HTTP_CONNECTION_MANAGER, http_connection_manager
from meshplane.xds.translate.routes import build_routes
from meshplane.xds.translate.secrets import build_secrets, certificate_secret, trust_secret
from meshplane.xds.translate.telemetry import ProxyTelemetry, proxy_telemetry, quiet_collector_routes

DEVICE_HEADER = "x-meshplane-device"
# Set by the gateway from the device's certificate (its URI SAN, the SPIFFE id) on every request of
# the device listener; whatever a device sends in it is removed first. A cloud service may trust it
# (and `x-forwarded-client-cert`) when the request came through the gateway.
IDENTITY_HEADER = "x-meshplane-device-identity"
# The device listener's identity check: an RBAC filter under its own name, so other RBAC filters
# (authorisation by device class) keep their own per-route configs beside it.
DEVICE_IDENTITY_FILTER = "meshplane.edge.device_identity"
# The cloud-facing listener's refusal of the site's own device ranges (its stats prefixed `to_devices_guard.`).
TO_DEVICES_GUARD = "envoy.filters.network.rbac"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
MTLS_AUTHENTICATED = "envoy.rbac.principals.mtls_authenticated"
ANY_ADDRESS = "0.0.0.0"
DEVICE_CONNECT_TIMEOUT = 2.0
DEVICE_ROUTE_TIMEOUT = 30.0

_Cluster = cluster_pb2.Cluster
# Devices whose cluster and route stay built (per kind). Above a large site's device count, so a
# registration never rebuilds the others; entries of devices gone age out as new ones come.
_DEVICE_MEMO = 1 << 17


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceTls:
    """A site's TLS with devices, when it can be served: its settings, the device trust, and the
    SDS config source of the group (every secret reference a proxy gets names it)."""

    site: str
    tls: SiteTls
    trust: DeviceTrust
    group: ProxyGroup

    def sds(self, name: str) -> Any:
        return secret_pb2.SdsSecretConfig(name=name, sds_config=core.config_source(self.group))


def _device_tls(mesh: Mesh, site: Site | None, group: ProxyGroup, warnings: list[str]) -> DeviceTls | None:
    """The site's device TLS, or None when it has none; a site whose TLS cannot be served (its
    certificate missing, or no device trust) is reported, and the caller fails closed."""
    if site is None or site.tls is None:
        return None
    tls = site.tls
    if mesh.device_trust is None:
        warnings.append(
            f"edge-gateway at site {site.id}: tls needs the registry's CA (--registry-ca-cert) to verify devices; "
            "no device listener"
        )
    elif all(certificate.name != tls.certificate for certificate in mesh.certificates):
        warnings.append(
            f"edge-gateway at site {site.id}: tls.certificate {tls.certificate!r} is not served; no device listener"
        )
    else:
        return DeviceTls(site.id, tls, mesh.device_trust, group)
    return None


def build_gateway(mesh: Mesh, group: ProxyGroup) -> tuple[dict[str, list[Any]], list[str]]:
    """Clusters, listeners, routes and secrets of an edge gateway (by resource kind: cds, lds, rds,
    sds). The secrets are the cloud clusters' (`secrets.build_secrets`) and the device TLS ones,
    which the device clusters and listener name: every name the resources ask for, once."""
    warnings: list[str] = []
    site = mesh.site(group.site)
    if site is None:
        warnings.append(f"edge-gateway at site {group.site!r}: no such site; no device is reachable")
    device_tls = _device_tls(mesh, site, group, warnings)
    closed = site is not None and site.tls is not None and device_tls is None
    sidecar = dataclasses.replace(group, role=ProxyRole.SIDECAR, site="", listen_address="", cloud_listen_address="")
    clusters, cluster_warnings = build_clusters(mesh, sidecar)
    # The cloud clusters' secrets (upstream TLS to services), read from those clusters alone.
    secrets: dict[str, Any] = {secret.name: secret for secret in build_secrets(mesh, clusters)}
    routes, route_warnings = build_routes(mesh, sidecar)
    from_devices_port = group.outbound_port
    address = group.listen_address or ANY_ADDRESS
    # Both listeners log and trace as the policy says for the role (its collectors' clusters are
    # among the cloud clusters above).
    telemetry = proxy_telemetry(mesh, ProxyRole.EDGE_GATEWAY)
    warnings += telemetry.warnings
    [outbound] = routes  # a sidecar has exactly one outbound RouteConfiguration
    outbound.name = names.gateway_from_devices_route_name(from_devices_port)
    # Devices export their own logs and spans through this listener: the gateway neither logs
    # nor traces those exports.
    quiet_collector_routes(mesh, outbound)
    devices = [device for device in mesh.devices_at(group.site) if device.endpoints]
    # Device policy (edge_authorization): filters after the identity check, per-device data in RDS.
    trust_domain = device_tls.trust.trust_domain if device_tls is not None else None
    policy = enforce_device_policy(mesh, group.site, devices, outbound, trust_domain=trust_domain)
    warnings += policy.warnings
    listeners = []
    if not closed:
        listeners.append(
            _listener(
                names.gateway_from_devices_listener_name(from_devices_port),
                address,
                from_devices_port,
                names.gateway_from_devices_route_name(from_devices_port),
                group,
                telemetry,
                device_tls,
                policy.filters,
            )
        )
    if device_tls is not None:
        _identify_devices(outbound, device_tls, devices)
        secrets |= {secret.name: secret for secret in _device_tls_secrets(mesh, device_tls, devices)}
    upstream = device_tls if device_tls is not None and device_tls.tls.to_devices is ToDevices.MTLS else None
    if closed and site is not None and site.tls is not None and site.tls.to_devices is ToDevices.MTLS:
        devices = []  # no route to a device the gateway cannot verify
    clusters += [_device_cluster(device, _upstream_key(upstream, device)) for device in devices]
    routes = [outbound]
    to_devices_port = from_devices_port + 1
    if to_devices_port > 65535:
        warnings.append(f"edge-gateway: outbound_port {from_devices_port} leaves no port for the device listener")
    else:
        route_name = names.gateway_to_devices_route_name(to_devices_port)
        listeners.append(
            _listener(
                names.gateway_to_devices_listener_name(to_devices_port),
                group.cloud_listen_address or address,
                to_devices_port,
                route_name,
                group,
                telemetry,
                None,
                guard=_refuse_site_devices(site) if site is not None and site.tls is not None else None,
            )
        )
        routes.append(_to_devices_routes(route_name, devices))
    built = {"cds": clusters, "lds": listeners, "rds": routes, "sds": list(secrets.values())}
    return built, [*warnings, *cluster_warnings, *route_warnings]


def device_http_filters(device_tls: DeviceTls | None, policy: Sequence[Any] = ()) -> list[Any]:
    """The HTTP filters of the device listener before the router, in order: the identity check,
    then `policy` (device policy's, `edge_authorization.enforce_device_policy`). With device TLS: the
    identity check (`DEVICE_IDENTITY_FILTER`). Its listener-level config allows only requests over
    a verified certificate when certificates are required (the handshake already demands one) and
    checks nothing when they are optional; the RouteConfiguration's per-filter config, which
    overrides it, holds the live devices (`_identify_devices`)."""
    if device_tls is None:
        return [*policy]
    if device_tls.tls.client_certificates is ClientCertificates.REQUIRED:
        default = rbac_pb2.RBAC(
            rules=rbac_config_pb2.RBAC(
                action=rbac_config_pb2.RBAC.ALLOW,
                policies={
                    "verified-certificate": rbac_config_pb2.Policy(
                        permissions=[rbac_config_pb2.Permission(any=True)],
                        principals=[_validated_certificate()],
                    )
                },
            )
        )
    else:
        default = rbac_pb2.RBAC()  # no rules: the route configuration's decide
    return [_hcm.HttpFilter(name=DEVICE_IDENTITY_FILTER, typed_config=core.pack(default)), *policy]


def _listener(
    name: str,
    address: str,
    port: int,
    route_name: str,
    group: ProxyGroup,
    telemetry: ProxyTelemetry,
    device_tls: DeviceTls | None,
    policy: Sequence[Any] = (),
    *,
    guard: Any = None,
) -> Any:
    """One of the gateway's listeners; `guard`, a network filter run before HTTP (the cloud-facing
    listener's `_refuse_site_devices`)."""
    hcm = http_connection_manager(
        route_name, stat_prefix=name, group=group, filters=device_http_filters(device_tls, policy), telemetry=telemetry
    )
    chain = listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name=HTTP_CONNECTION_MANAGER, typed_config=core.pack(hcm))],
    )
    if guard is not None:
        chain.filters.insert(0, guard)
    if device_tls is not None:
        # The cloud learns who called from the gateway only: any XFCC a device sent is replaced.
        hcm.forward_client_cert_details = _hcm.HttpConnectionManager.SANITIZE_SET
        hcm.set_current_client_cert_details.uri = True
        chain.filters[0].typed_config.CopyFrom(core.pack(hcm))
        chain.transport_socket.CopyFrom(_downstream_tls(device_tls))
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port)),
        traffic_direction=base_pb2.INBOUND,
        filter_chains=[chain],
    )


def _refuse_site_devices(site: Site) -> Any:
    """A network RBAC filter closing every connection whose peer address (the socket's own, never a
    header or PROXY protocol) is in the site's device ranges (a site without ranges has no devices
    to refuse: none could register)."""
    principals = [
        rbac_config_pb2.Principal(
            direct_remote_ip=address_pb2.CidrRange(
                address_prefix=str(network.network_address), prefix_len=core.uint32(network.prefixlen)
            )
        )
        for network in site.networks()
    ]
    rules = rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.DENY)
    if principals:
        rules.policies["site-devices"].CopyFrom(
            rbac_config_pb2.Policy(permissions=[rbac_config_pb2.Permission(any=True)], principals=principals)
        )
    config = network_rbac_pb2.RBAC(stat_prefix="to_devices_guard.", rules=rules)
    return listener_components_pb2.Filter(name=TO_DEVICES_GUARD, typed_config=core.pack(config))


def _downstream_tls(device_tls: DeviceTls) -> Any:
    """The device listener's TLS: the site's certificate, and the devices' validation context, both
    over SDS (renewed certificates and new devices reach new handshakes without an LDS change).
    Session resumption is off, so every connection's certificate is checked against the live
    devices of its handshake (the per-request check would refuse a resumed revoked one anyway)."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2", "http/1.1"],
            tls_certificate_sds_secret_configs=[device_tls.sds(device_tls.tls.certificate)],
            validation_context_sds_secret_config=device_tls.sds(
                names.edge_device_validation_secret_name(device_tls.site)
            ),
        ),
        disable_stateless_session_resumption=True,
        disable_stateful_session_resumption=True,
    )
    context.require_client_certificate.value = device_tls.tls.client_certificates is ClientCertificates.REQUIRED
    return _socket(context)


def _socket(context: Any) -> Any:
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=core.pack(context))


def _no_live_device(device_tls: DeviceTls) -> str:
    """A URI no certificate of the CA can carry (every issued one ends `/device/<id>`): the SAN
    list of a site without live devices, which an empty list would not be (it matches any SAN)."""
    return f"spiffe://{device_tls.trust.trust_domain}/site/{device_tls.site}/no-live-device"


def _device_tls_secrets(mesh: Mesh, device_tls: DeviceTls, devices: list[Device]) -> list[Any]:
    """The site's certificate, the devices' validation context and (for mTLS to devices) the
    device CA alone, as Secrets. With optional client certificates the validation context names
    no SAN: Envoy requires a client certificate whenever one is listed, so the live devices are
    then checked per request only (`_identify_devices`)."""
    validation = common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_string=device_tls.trust.ca_certificates)
    )
    if device_tls.tls.client_certificates is ClientCertificates.REQUIRED:
        uris = [device_tls.trust.spiffe_id(device_tls.site, device.id) for device in devices]
        validation.match_typed_subject_alt_names.extend(
            _uri_matcher(uri) for uri in uris or [_no_live_device(device_tls)]
        )
    found = [
        secret_pb2.Secret(name=names.edge_device_validation_secret_name(device_tls.site), validation_context=validation)
    ]
    found += [certificate_secret(c) for c in mesh.certificates if c.name == device_tls.tls.certificate]
    if device_tls.tls.to_devices is ToDevices.MTLS:
        found.append(trust_secret(names.EDGE_DEVICE_CA_SECRET, device_tls.trust.ca_certificates))
    return found


def _uri_matcher(uri: str) -> Any:
    return common_pb2.SubjectAltNameMatcher(
        san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(exact=uri)
    )


def _identify_devices(outbound: Any, device_tls: DeviceTls, devices: list[Device]) -> None:
    """Makes the device listener's RouteConfiguration check each request's certificate against the
    live devices (`DEVICE_IDENTITY_FILTER`'s per-filter config, for every virtual host), and set
    `IDENTITY_HEADER` from it (the device's own value removed first)."""
    principals = [
        _device_principal(device_tls.trust.spiffe_id(device_tls.site, device.id), device.id) for device in devices
    ]
    policies = {}
    if principals:
        policies["live-devices"] = rbac_config_pb2.Policy(
            permissions=[rbac_config_pb2.Permission(any=True)], principals=principals
        )
    if device_tls.tls.client_certificates is ClientCertificates.OPTIONAL:
        # Without a certificate a request has no identity, so it may not claim one by header.
        policies["no-certificate"] = rbac_config_pb2.Policy(
            permissions=[rbac_config_pb2.Permission(any=True)],
            principals=[
                rbac_config_pb2.Principal(
                    and_ids=rbac_config_pb2.Principal.Set(
                        ids=[
                            rbac_config_pb2.Principal(not_id=_validated_certificate()),
                            _no_device_header(),
                        ]
                    )
                )
            ],
        )
    per_route = rbac_pb2.RBACPerRoute(
        rbac=rbac_pb2.RBAC(rules=rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.ALLOW, policies=policies))
    )
    outbound.typed_per_filter_config[DEVICE_IDENTITY_FILTER].CopyFrom(core.pack(per_route))
    outbound.request_headers_to_remove.append(IDENTITY_HEADER)
    outbound.request_headers_to_add.append(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=IDENTITY_HEADER, value="%DOWNSTREAM_PEER_URI_SAN%"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    )


def _validated_certificate() -> Any:
    """A connection whose client presented a certificate that passed validation. (RBAC's own
    `authenticated` without a name matches any TLS connection, a client without a certificate
    included.)"""
    return rbac_config_pb2.Principal(
        custom=extension_pb2.TypedExtensionConfig(
            name=MTLS_AUTHENTICATED,
            typed_config=core.pack(mtls_authenticated_pb2.Config(any_validated_client_certificate=True)),
        )
    )


def _no_device_header() -> Any:
    return rbac_config_pb2.Principal(
        not_id=rbac_config_pb2.Principal(
            header=route_components_pb2.HeaderMatcher(name=DEVICE_HEADER, present_match=True)
        )
    )


@functools.lru_cache(maxsize=_DEVICE_MEMO)
def _device_principal(uri: str, device_id: str) -> Any:
    """A request of this device: its certificate names `uri`, and its `x-meshplane-device`, when
    sent, names the device itself."""
    return rbac_config_pb2.Principal(
        and_ids=rbac_config_pb2.Principal.Set(
            ids=[
                rbac_config_pb2.Principal(
                    authenticated=rbac_config_pb2.Principal.Authenticated(
                        principal_name=string_pb2.StringMatcher(exact=uri)
                    )
                ),
                rbac_config_pb2.Principal(
                    or_ids=rbac_config_pb2.Principal.Set(
                        ids=[
                            _no_device_header(),
                            rbac_config_pb2.Principal(
                                header=route_components_pb2.HeaderMatcher(
                                    name=DEVICE_HEADER, string_match=string_pb2.StringMatcher(exact=device_id)
                                )
                            ),
                        ]
                    )
                ),
            ]
        )
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _UpstreamKey:
    """What a device cluster's TLS depends on (a memo key): the certificate it presents, the SAN it
    requires, and the group (its SDS config source)."""

    certificate: str
    uri: str
    group: ProxyGroup


def _upstream_key(upstream: DeviceTls | None, device: Device) -> _UpstreamKey | None:
    if upstream is None:
        return None
    return _UpstreamKey(upstream.tls.certificate, upstream.trust.spiffe_id(upstream.site, device.id), upstream.group)


def _upstream_tls(key: _UpstreamKey) -> Any:
    """The gateway's TLS to one device: the site's certificate presented, the device CA trusted and
    exactly the device's SPIFFE id required."""
    source = core.config_source(key.group)
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name=key.certificate, sds_config=source)],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=[_uri_matcher(key.uri)]
                ),
                validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(
                    name=names.EDGE_DEVICE_CA_SECRET, sds_config=source
                ),
            ),
        )
    )
    return _socket(context)


@functools.lru_cache(maxsize=_DEVICE_MEMO)
def _device_cluster(device: Device, upstream: _UpstreamKey | None = None) -> Any:
    name = names.edge_device_cluster_name(device.id)
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=endpoint.address, port_value=endpoint.port
                                )
                            )
                        )
                    )
                    for endpoint in sorted(set(device.endpoints))
                ]
            )
        ],
    )
    cluster = _Cluster(
        name=name,
        type=_Cluster.STATIC,
        connect_timeout=core.duration(DEVICE_CONNECT_TIMEOUT),
        load_assignment=assignment,
    )
    if upstream is not None:
        cluster.transport_socket.CopyFrom(_upstream_tls(upstream))
    return cluster


def _to_devices_routes(route_name: str, devices: list[Device]) -> Any:
    """One route per device, matched on the exact id in the device header; no match is a 404."""
    return route_pb2.RouteConfiguration(
        name=route_name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="devices", domains=["*"], routes=[_device_route(device.id) for device in devices]
            )
        ],
    )


@functools.lru_cache(maxsize=_DEVICE_MEMO)
def _device_route(device_id: str) -> Any:
    return route_components_pb2.Route(
        name=names.device_virtual_host_name(device_id),
        match=route_components_pb2.RouteMatch(
            prefix="/",
            headers=[
                route_components_pb2.HeaderMatcher(
                    name=DEVICE_HEADER, string_match=string_pb2.StringMatcher(exact=device_id)
                )
            ],
        ),
        route=route_components_pb2.RouteAction(
            cluster=names.edge_device_cluster_name(device_id), timeout=core.duration(DEVICE_ROUTE_TIMEOUT)
        ),
    )
