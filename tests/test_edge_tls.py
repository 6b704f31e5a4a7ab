"""Site TLS at the edge, without Envoy running: the policy format, the gateway's translation (what a
registration changes and what it must not), failing closed, the device bootstrap's inbound
listener (validated by `envoy --mode validate`), and fuzzed CSRs refused with a reason."""

from __future__ import annotations

import base64
import dataclasses
import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.bootstrap.render import (
    BootstrapError,
    BootstrapOptions,
    render,
    render_device_sds,
    render_gateway_ca_sds,
)
from meshplane.cli import main
from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.policy_schema import parse_policy
from meshplane.discovery.registry import identity
from meshplane.model import (
    Device,
    DeviceEndpoint,
    Endpoint,
    GatewayAddress,
    Mesh,
    Protocol,
    ProxyGroup,
    ProxyRole,
    Service,
    ServicePort,
    Site,
    TlsCertificate,
)
from meshplane.model.changes import MeshChanges
from meshplane.model.problems import ProblemKind
from meshplane.model.sites import ClientCertificates, DeviceTrust, SiteTls, ToDevices
from meshplane.xds import names
from meshplane.xds.server.nodes import ProtocolError, proxy_group
from meshplane.xds.translate import translate
from meshplane.xds.translate.edge_gateway import DEVICE_IDENTITY_FILTER, IDENTITY_HEADER
from meshplane.xds.types import TypeUrl
from tests.certificates import make_ca
from tests.envoy_harness import validate_bootstrap

PEM = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
GATEWAY = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym")
TRUST = DeviceTrust("meshplane.local", PEM)
STRICT = SiteTls("gym-cert")


def bike(n: int) -> Device:
    return Device(f"bike-{n}", "bike", "gym", (DeviceEndpoint(f"198.18.0.{n}", 8443),))


def mesh(
    *devices: Device,
    tls: SiteTls | None = STRICT,
    trust: DeviceTrust | None = TRUST,
    certificate: bool = True,
) -> Mesh:
    return Mesh.of(
        [],
        certificates=[TlsCertificate("gym-cert", PEM, KEY)] if certificate else [],
        sites=[Site("gym", "local", device_ranges=("198.18.0.0/24",), tls=tls)],
        devices=list(devices),
        device_trust=trust,
    )


def resources(built: Mesh) -> dict[TypeUrl, dict[str, Any]]:
    translation = translate(built, GATEWAY)
    named: dict[TypeUrl, dict[str, Any]] = {}
    for kind, messages in translation.resources.items():
        named[kind] = {getattr(message, "name"): message for message in messages}  # noqa: B009 (Message has no name)
    return named


def listener_tls(listener: Any) -> Any:
    context = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(context)
    return context


def hcm(listener: Any) -> Any:
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def route_policies(route: Any) -> dict[str, Any]:
    per_route = rbac_pb2.RBACPerRoute()
    route.typed_per_filter_config[DEVICE_IDENTITY_FILTER].Unpack(per_route)
    assert per_route.rbac.rules.action == rbac_config_pb2.RBAC.ALLOW
    return dict(per_route.rbac.rules.policies)


FROM, TO = "edge_from_devices_15080", "edge_to_devices_15081"


# --- the policy format ---


def test_site_tls_is_read_with_strict_defaults_and_refused_with_file_and_line() -> None:
    parsed = parse_policy(
        "sites:\n  - id: gym\n    region: r\n    tls: {certificate: gym-cert}\n"
        "  - id: home\n    region: r\n    tls: {certificate: ns/home, client_certificates: optional, "
        "to_devices: plaintext}\n",
        "sites.yaml",
    )
    assert parsed.errors == ()
    assert [site.tls for site in parsed.sites] == [
        SiteTls("gym-cert", ClientCertificates.REQUIRED, ToDevices.MTLS),
        SiteTls("ns/home", ClientCertificates.OPTIONAL, ToDevices.PLAINTEXT),
    ]
    wrong = parse_policy(
        "sites:\n  - id: gym\n    region: r\n    tls: {client_certificates: always}\n"
        "  - id: two\n    region: r\n    tls: {certificate: c, to_devices: tls}\n",
        "bad.yaml",
    )
    assert wrong.errors[0] == "bad.yaml:4: site.tls needs `certificate`"
    assert wrong.errors[1].startswith("bad.yaml:7: site.tls.to_devices: 'tls' is not one of mtls, plaintext")


def test_a_site_naming_an_unknown_certificate_is_a_problem_of_the_mesh() -> None:
    found = mesh(certificate=False).problems()
    assert [(p.kind, p.message) for p in found] == [
        (ProblemKind.UNKNOWN_SECRET, "site gym: tls.certificate names unknown certificate 'gym-cert'")
    ]


# --- the gateway's translation ---


def test_the_device_listener_takes_tls_from_sds_and_checks_every_request() -> None:
    built = resources(mesh(bike(1), bike(2)))
    listener = built[TypeUrl.LISTENER][FROM]
    context = listener_tls(listener)
    assert context.require_client_certificate.value is True
    assert [c.name for c in context.common_tls_context.tls_certificate_sds_secret_configs] == ["gym-cert"]
    validation = context.common_tls_context.validation_context_sds_secret_config.name
    assert validation == names.edge_device_validation_secret_name("gym")
    manager = hcm(listener)
    assert [f.name for f in manager.http_filters] == [DEVICE_IDENTITY_FILTER, "envoy.filters.http.router"]
    assert manager.forward_client_cert_details == http_connection_manager_pb2.HttpConnectionManager.SANITIZE_SET
    # The validation context lists exactly the live devices' SPIFFE ids, over the device CA.
    secret = built[TypeUrl.SECRET][validation].validation_context
    assert secret.trusted_ca.inline_string == PEM
    assert [m.matcher.exact for m in secret.match_typed_subject_alt_names] == [
        "spiffe://meshplane.local/site/gym/device/bike-1",
        "spiffe://meshplane.local/site/gym/device/bike-2",
    ]
    route = built[TypeUrl.ROUTE][FROM]
    assert list(route_policies(route)) == ["live-devices"]
    assert list(route.request_headers_to_remove) == [IDENTITY_HEADER]
    assert route.request_headers_to_add[0].header.value == "%DOWNSTREAM_PEER_URI_SAN%"
    assert "gym-cert" in built[TypeUrl.SECRET]


def test_a_registration_or_an_expiry_changes_sds_rds_and_cds_only_never_a_listener() -> None:
    before = resources(mesh(bike(1)))
    after = resources(mesh(bike(1), bike(2)))
    assert {name: one.SerializeToString() for name, one in before[TypeUrl.LISTENER].items()} == {
        name: one.SerializeToString() for name, one in after[TypeUrl.LISTENER].items()
    }
    validation = names.edge_device_validation_secret_name("gym")
    assert before[TypeUrl.SECRET][validation] != after[TypeUrl.SECRET][validation]
    assert before[TypeUrl.ROUTE][FROM] != after[TypeUrl.ROUTE][FROM]


def test_a_site_without_live_devices_accepts_no_certificate() -> None:
    built = resources(mesh())
    secret = built[TypeUrl.SECRET][names.edge_device_validation_secret_name("gym")].validation_context
    # An empty SAN list would accept any certificate of the CA: a URI no certificate carries instead.
    assert [m.matcher.exact for m in secret.match_typed_subject_alt_names] == [
        "spiffe://meshplane.local/site/gym/no-live-device"
    ]
    assert route_policies(built[TypeUrl.ROUTE][FROM]) == {}  # ALLOW with no policy: everything refused


def test_optional_client_certificates_serve_devices_without_one_but_never_a_claimed_identity() -> None:
    built = resources(mesh(bike(1), tls=SiteTls("gym-cert", ClientCertificates.OPTIONAL)))
    assert listener_tls(built[TypeUrl.LISTENER][FROM]).require_client_certificate.value is False
    # Envoy requires a client certificate whenever SANs are listed: the live devices are checked
    # per request instead.
    secret = built[TypeUrl.SECRET][names.edge_device_validation_secret_name("gym")].validation_context
    assert secret.trusted_ca.inline_string == PEM
    assert list(secret.match_typed_subject_alt_names) == []
    policies = route_policies(built[TypeUrl.ROUTE][FROM])
    assert sorted(policies) == ["live-devices", "no-certificate"]
    [anonymous] = policies["no-certificate"].principals
    not_authenticated, no_header = anonymous.and_ids.ids
    assert not_authenticated.not_id.custom.name == "envoy.rbac.principals.mtls_authenticated"
    assert no_header.not_id.header.name == "x-meshplane-device"


def test_the_gateway_reaches_each_device_requiring_exactly_its_certificate() -> None:
    built = resources(mesh(bike(1)))
    cluster = built[TypeUrl.CLUSTER]["device/bike-1"]
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["gym-cert"]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == names.EDGE_DEVICE_CA_SECRET
    assert [m.matcher.exact for m in combined.default_validation_context.match_typed_subject_alt_names] == [
        "spiffe://meshplane.local/site/gym/device/bike-1"
    ]
    assert built[TypeUrl.SECRET][names.EDGE_DEVICE_CA_SECRET].validation_context.trusted_ca.inline_string == PEM
    plaintext = resources(mesh(bike(1), tls=SiteTls("gym-cert", to_devices=ToDevices.PLAINTEXT)))
    assert not plaintext[TypeUrl.CLUSTER]["device/bike-1"].HasField("transport_socket")
    assert names.EDGE_DEVICE_CA_SECRET not in plaintext[TypeUrl.SECRET]


@pytest.mark.parametrize(
    ("broken", "warning"),
    [
        (dataclasses.replace(mesh(bike(1)), device_trust=None), "needs the registry's CA"),
        (dataclasses.replace(mesh(bike(1)), certificates=()), "tls.certificate 'gym-cert' is not served"),
    ],
    ids=["no-device-trust", "certificate-missing"],
)
def test_a_site_whose_tls_cannot_be_served_fails_closed(broken: Mesh, warning: str) -> None:
    translation = translate(broken, GATEWAY)
    built = {kind: [getattr(m, "name") for m in messages] for kind, messages in translation.resources.items()}  # noqa: B009
    assert built[TypeUrl.LISTENER] == [TO]  # no device listener at all, rather than one in clear
    assert built[TypeUrl.CLUSTER] == []  # and no device reached without verifying it
    assert any(warning in text for text in translation.warnings), translation.warnings


def test_a_site_without_tls_is_served_as_before() -> None:
    built = resources(mesh(bike(1), tls=None))
    assert not built[TypeUrl.LISTENER][FROM].filter_chains[0].HasField("transport_socket")
    assert [f.name for f in hcm(built[TypeUrl.LISTENER][FROM]).http_filters] == ["envoy.filters.http.router"]
    assert DEVICE_IDENTITY_FILTER not in built[TypeUrl.ROUTE][FROM].typed_per_filter_config
    assert list(built[TypeUrl.SECRET]) == []


# --- the device bootstrap ---


def _certificate(directory: Path) -> Path:
    make_ca("ca", lifetime=datetime.timedelta(days=1)).write(directory / "cert.pem", directory / "key.pem")
    return directory / "cert.pem"


def test_the_device_bootstrap_with_an_inbound_listener_is_valid_for_envoy(tmp_path: Path) -> None:
    ca = _certificate(tmp_path)
    options = BootstrapOptions(
        "device",
        inbound_address="198.18.0.2:8443",
        certificate_dir=str(tmp_path),
        gateway_ca=str(ca),
        stats_address="127.0.0.1:9100",
    )
    (tmp_path / "certificate.sds.yaml").write_text(render_device_sds(options))
    (tmp_path / "gateway-ca.sds.yaml").write_text(render_gateway_ca_sds(options))
    (tmp_path / "device.yaml").write_text(render(options))
    validate_bootstrap(tmp_path / "device.yaml")


def test_the_bootstrap_command_writes_the_certificates_sds_file_beside_them(tmp_path: Path) -> None:
    ca = _certificate(tmp_path)
    output = tmp_path / "envoy.yaml"
    argv = ["bootstrap", "device", "--site", "gym", "--inbound-address", "198.18.0.2:8443"]
    argv += ["--certificate-dir", str(tmp_path), "--gateway-ca", str(ca), "-o", str(output)]
    assert main(argv) == 0
    [secret] = yaml.safe_load((tmp_path / "certificate.sds.yaml").read_text())["resources"]
    [gateways] = yaml.safe_load((tmp_path / "gateway-ca.sds.yaml").read_text())["resources"]
    assert secret["name"] == "device_certificate"
    assert secret["tls_certificate"]["certificate_chain"] == {"filename": f"{tmp_path}/cert.pem"}
    assert secret["tls_certificate"]["watched_directory"] == {"path": str(tmp_path)}
    assert gateways == {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "gateway_ca",
        "validation_context": {"trusted_ca": {"filename": str(ca)}},
    }
    # The directory is the node's too: at a site with tls meshplane's clusters name that SDS file.
    assert yaml.safe_load(output.read_text())["node"]["metadata"]["certificate_dir"] == str(tmp_path)
    validate_bootstrap(output)


def test_the_bootstrap_command_says_it_wrote_the_sds_file_even_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = _certificate(tmp_path)
    assert main(["bootstrap", "device", "--certificate-dir", str(tmp_path), "--gateway-ca", str(ca)]) == 0
    captured = capsys.readouterr()
    assert "certificate_dir:" in captured.out
    assert f"wrote {tmp_path}/certificate.sds.yaml" in captured.err
    assert f"wrote {tmp_path}/gateway-ca.sds.yaml" in captured.err
    assert (tmp_path / "certificate.sds.yaml").exists()
    assert (tmp_path / "gateway-ca.sds.yaml").exists()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (BootstrapOptions("device", inbound_address="198.18.0.2:8443"), "--inbound-address needs --certificate-dir"),
        (BootstrapOptions("device", certificate_dir="/c"), "--certificate-dir and --gateway-ca go together"),
        (BootstrapOptions("sidecar", certificate_dir="/c", gateway_ca="/ca"), "--certificate-dir is for the device"),
        (
            BootstrapOptions("sidecar", inbound_address="1.2.3.4:5"),
            "--inbound-address is for the device role, not sidecar",
        ),
        (
            BootstrapOptions("device", inbound_address="bike.local:8443", certificate_dir="/c", gateway_ca="/ca"),
            "--inbound-address 'bike.local:8443' is not IP:PORT",
        ),
        (
            BootstrapOptions("device", inbound_address="198.18.0.2:8443", certificate_dir="c", gateway_ca="/ca"),
            "--certificate-dir 'c' is not an absolute path",
        ),
    ],
    ids=["alone", "half", "not-a-device-directory", "not-a-device", "a-name", "relative"],
)
def test_inbound_options_are_refused_with_the_reason(options: BootstrapOptions, problem: str) -> None:
    with pytest.raises(BootstrapError) as refused:
        render(options)
    assert any(text.startswith(problem) for text in refused.value.problems), refused.value.problems


# --- fuzzed CSRs ---


def _valid_csr_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


_VALID_DER = _valid_csr_der()
URI = "spiffe://meshplane.local/site/gym/device/bike-1"


def _pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


def _mutated(data: st.DataObject) -> bytes:
    der = bytearray(_VALID_DER)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(der) - 1))
        der[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    return bytes(der[:cut])


def _checked(text: str) -> None:
    """`check_csr` either refuses with a reason or accepts (a mutation that kept a valid request);
    nothing else escapes."""
    reason = ""
    try:
        identity.check_csr(text, device_id="bike-1", uri=URI)
    except identity.CsrRefused as refused:
        reason = refused.reason
        if not reason:
            raise
    assert reason == "" or (reason.startswith("csr") and len(reason) < 400), reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_csr_der_in_pem_is_refused_with_a_reason(data: st.DataObject) -> None:
    _checked(_pem(_mutated(data)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_as_pem_or_text_are_refused_with_a_reason(raw: bytes) -> None:
    _checked(_pem(raw))
    _checked(raw.decode("latin-1"))
    _checked(_pem(raw, "CERTIFICATE"))  # a certificate presented where a request belongs


_NOW = datetime.datetime.now(datetime.UTC).timestamp()


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> identity.CertificateAuthority:
    directory = tmp_path_factory.mktemp("fuzz-ca")
    make_ca("devices-ca", lifetime=datetime.timedelta(days=1)).write(directory / "ca.pem", directory / "ca.key")
    return identity.CertificateAuthority(directory / "ca.pem", directory / "ca.key")


@settings(max_examples=50, deadline=None)
@given(raw=st.binary(min_size=1, max_size=2048))
def test_a_certificate_authority_given_garbage_refuses_and_keeps_signing(
    authority: identity.CertificateAuthority, raw: bytes
) -> None:
    with pytest.raises(identity.CsrRefused):
        authority.issue(_pem(raw), site="gym", device_id="bike-1", lease_ttl=30, now=_NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    issued = authority.issue(
        csr.public_bytes(serialization.Encoding.PEM).decode(), site="gym", device_id="bike-1", lease_ttl=30, now=_NOW
    )
    assert issued.record.uri_san == URI


# --- the merge ---


def test_the_device_trust_joins_the_merged_mesh_and_its_change_marks_the_sites() -> None:
    inventory = Inventory()
    files = Mesh.of([], sites=[Site("gym", "local", tls=STRICT)], certificates=[TlsCertificate("gym-cert", PEM, KEY)])
    first = inventory.merge(Contents(files=files, device_trust=TRUST))
    assert first.mesh.device_trust == TRUST
    renewed = DeviceTrust("meshplane.local", PEM + PEM)
    second = inventory.merge(Contents(files=files, changes=MeshChanges(sites=True), device_trust=renewed))
    assert second.mesh.device_trust == renewed
    assert second.changes.sites
    assert MeshChanges.between(first.mesh, second.mesh).sites


# --- the cloud-facing listener and device Envoys at a TLS site ---


def test_the_cloud_facing_listener_refuses_the_sites_device_ranges_and_may_bind_the_cloud_side() -> None:
    built = resources(mesh(bike(1)))
    to_devices = built[TypeUrl.LISTENER][TO]
    guard, manager = to_devices.filter_chains[0].filters
    assert guard.name == "envoy.filters.network.rbac"
    config = network_rbac_pb2.RBAC()
    guard.typed_config.Unpack(config)
    assert config.rules.action == rbac_config_pb2.RBAC.DENY
    [principal] = config.rules.policies["site-devices"].principals
    assert (principal.direct_remote_ip.address_prefix, principal.direct_remote_ip.prefix_len.value) == (
        "198.18.0.0",
        24,
    )
    assert manager.name == "envoy.filters.network.http_connection_manager"
    # A site without tls: devices are plain anyway (they reach one another directly): no filter.
    plain = resources(mesh(bike(1), tls=None))[TypeUrl.LISTENER][TO]
    assert [f.name for f in plain.filter_chains[0].filters] == ["envoy.filters.network.http_connection_manager"]
    # The guard depends on the site alone: a registration leaves the listener byte for byte.
    assert resources(mesh(bike(1), bike(2)))[TypeUrl.LISTENER][TO] == to_devices
    # --cloud-listen-address: the cloud-facing listener only moves.
    apart = dataclasses.replace(GATEWAY, listen_address="198.18.0.254", cloud_listen_address="10.0.0.5")
    listeners = {listener.name: listener for listener in translate(mesh(bike(1)), apart).resources[TypeUrl.LISTENER]}
    assert listeners[TO].address.socket_address.address == "10.0.0.5"
    assert listeners[FROM].address.socket_address.address == "198.18.0.254"


def _node(**metadata: object) -> Any:
    node = base_pb2.Node(id="n")
    node.metadata.update(metadata)
    return node


def test_the_node_says_the_cloud_listen_address_and_the_device_certificate_dir() -> None:
    gateway = proxy_group(_node(role="edge-gateway", site="gym", cloud_listen_address="10.0.0.5"))
    assert gateway.cloud_listen_address == "10.0.0.5"
    device = proxy_group(_node(role="device", site="gym", certificate_dir="/var/lib/device/identity"))
    assert device.certificate_dir == "/var/lib/device/identity"
    assert "certificates /var/lib/device/identity" in str(device)  # a group of its own, named so
    # Other roles ignore them (no split groups); bad values end the stream with the reason.
    assert proxy_group(_node(role="sidecar", certificate_dir="/x", cloud_listen_address="1.2.3.4")) == ProxyGroup()
    for metadata, reason in (
        ({"role": "edge-gateway", "site": "gym", "cloud_listen_address": "gateway.local"}, "cloud_listen_address"),
        ({"role": "device", "site": "gym", "certificate_dir": "relative/dir"}, "certificate_dir"),
        ({"role": "device", "site": "gym", "certificate_dir": 7}, "certificate_dir of kind number_value"),
    ):
        with pytest.raises(ProtocolError) as refused:
            proxy_group(_node(**metadata))
        assert reason in refused.value.message


def _device_clusters(built: Mesh, group: ProxyGroup) -> tuple[dict[str, Any], list[str]]:
    translation = translate(built, group)
    return {cluster.name: cluster for cluster in translation.resources[TypeUrl.CLUSTER]}, list(translation.warnings)


def _zero_trust_fleet() -> Mesh:
    api = Service(
        "api", "default", (ServicePort("http", 8080, Protocol.HTTP1),), endpoints=(Endpoint("10.0.0.9", 8080, "http"),)
    )
    sites = [
        Site(
            "gym",
            "local",
            gateways=(GatewayAddress("198.18.0.254", 15080),),
            device_ranges=("198.18.0.0/24",),
            tls=STRICT,
        ),
        Site("other", "local", gateways=(GatewayAddress("198.19.0.254", 15080),), device_ranges=("198.19.0.0/24",)),
    ]
    return Mesh.of([api], sites=sites, certificates=[TlsCertificate("gym-cert", PEM, KEY)], device_trust=TRUST)


def test_a_device_at_a_tls_site_reaches_only_its_own_gateways_over_tls_with_its_files() -> None:
    group = ProxyGroup(ProxyRole.DEVICE, site="gym", certificate_dir="/var/lib/device/identity")
    clusters, _ = _device_clusters(_zero_trust_fleet(), group)
    cluster = clusters["api.default:8080"]
    # Its own site's gateway only: no other site's tier, no cloud directly.
    endpoints = [
        (lb.endpoint.address.socket_address.address, locality.priority)
        for locality in cluster.load_assignment.endpoints
        for lb in locality.lb_endpoints
    ]
    assert endpoints == [("198.18.0.254", 0)]
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    [certificate] = context.common_tls_context.tls_certificate_sds_secret_configs
    validation = context.common_tls_context.validation_context_sds_secret_config
    assert (certificate.name, certificate.sds_config.path_config_source.path) == (
        "device_certificate",
        "/var/lib/device/identity/certificate.sds.yaml",
    )
    assert (validation.name, validation.sds_config.path_config_source.path) == (
        "gateway_ca",
        "/var/lib/device/identity/gateway-ca.sds.yaml",
    )
    assert certificate.sds_config.path_config_source.watched_directory.path == "/var/lib/device/identity"
    # Without its files, a device there reaches nothing (never plaintext, never the cloud directly);
    # an app (Envoy Mobile takes no SDS) neither. Both say why.
    for role, why in ((ProxyRole.DEVICE, "names no certificate directory"), (ProxyRole.MOBILE, "Envoy Mobile")):
        clusters, warnings = _device_clusters(_zero_trust_fleet(), ProxyGroup(role, site="gym"))
        assert not clusters["api.default:8080"].load_assignment.endpoints, role
        assert not clusters["api.default:8080"].HasField("transport_socket"), role
        assert any(why in warning and "unreachable" in warning for warning in warnings), warnings
    # A device of a site without tls is as before: its gateways, the region's, then the cloud.
    clusters, _ = _device_clusters(_zero_trust_fleet(), ProxyGroup(ProxyRole.DEVICE, site="other"))
    assert [locality.priority for locality in clusters["api.default:8080"].load_assignment.endpoints] == [0, 1, 2]


def test_the_gateway_bootstrap_renders_the_cloud_listen_address() -> None:
    text = render(BootstrapOptions("edge-gateway", listen_address="198.18.0.254", cloud_listen_address="10.0.0.5"))
    assert yaml.safe_load(text)["node"]["metadata"]["cloud_listen_address"] == "10.0.0.5"
    for options, problem in (
        (BootstrapOptions("device", cloud_listen_address="10.0.0.5"), "--cloud-listen-address is for edge-gateway"),
        (BootstrapOptions("edge-gateway", cloud_listen_address="cloud.local"), "--cloud-listen-address 'cloud.local'"),
    ):
        with pytest.raises(BootstrapError) as refused:
            render(options)
        assert any(text.startswith(problem) for text in refused.value.problems), refused.value.problems
