"""`meshplane bootstrap ROLE` and the files of envoy-configs/, which are its default output.

- The committed bootstraps are the renderer's defaults (`make bootstraps` when they are not).
- Every Envoy role, and its variants (SotW, a DNS name for the control plane, TLS, mTLS, a bearer
  token, the per-type services over Delta and SotW), passes `envoy --mode validate`; the gRPC
  bootstrap has the shape grpcio reads.
- The command: flags, their MESHPLANE_* variables, one line per problem and exit 2, -o atomic.
- Real clients started from rendered bootstraps, byte for byte: Envoys reaching the control plane
  by a DNS name (Delta and SotW), over mTLS and with a token; a mobile Envoy getting CDS + RTDS and
  a device Envoy routing to the cloud; grpcio's xDS client over mTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from meshplane.app import ControlPlane, Settings
from meshplane.bootstrap.render import (
    COMMITTED_FILES,
    KUBERNETES_STATS_ADDRESS,
    ROLE_DEFAULTS,
    STATS_ADMIN_CLUSTER,
    STATS_LISTENER,
    BootstrapError,
    BootstrapOptions,
    render,
    split_host_port,
)
from meshplane.cli import main
from meshplane.demo.greeter import start_greeter
from meshplane.model import ProxyRole
from tests.envoy_harness import (
    ENVOY_CONFIGS,
    REPO,
    Backend,
    Envoy,
    envoy_binary,
    free_port,
    start_backend,
    validate_bootstrap,
)
from tests.tls_certs import Pair, mesh_certificates, start_mtls_server

ENVOY_ROLES = [role.value for role in ROLE_DEFAULTS if role is not ProxyRole.GRPC]


def load(options: BootstrapOptions) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(render(options))
    return loaded


def meshplane_cluster(config: dict[str, Any]) -> dict[str, Any]:
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == "meshplane"]
    return cluster  # type: ignore[no-any-return]


def socket_address(cluster: dict[str, Any]) -> dict[str, Any]:
    address: dict[str, Any] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    return address["socket_address"]  # type: ignore[no-any-return]


# --- the committed files -------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "name"), [(role.value, name) for role, name in COMMITTED_FILES.items()])
def test_committed_bootstraps_are_the_renderers_defaults(role: str, name: str) -> None:
    committed = (ENVOY_CONFIGS / name).read_text()
    assert committed == render(BootstrapOptions(role)), f"envoy-configs/{name} is stale; run `make bootstraps`"


@pytest.mark.parametrize(
    ("role", "node_id", "node_cluster", "admin_port", "outbound_port", "site"),
    [
        pytest.param("sidecar", "sidecar-demo", "demo-client", 9901, 15001, None, id="sidecar"),
        pytest.param("edge-gateway", "edge-gateway-demo", "edge-gateway", 9902, 15080, "gym-local", id="edge-gateway"),
        pytest.param("device", "device-demo", "bike", 9903, 15001, "gym-local", id="device"),
        pytest.param("mobile", "mobile-demo", "mobile-ios", 9904, None, "gym-local", id="mobile"),
    ],
)
def test_envoy_defaults_are_the_demos_values(
    role: str, node_id: str, node_cluster: str, admin_port: int, outbound_port: int | None, site: str | None
) -> None:
    config = load(BootstrapOptions(role))
    node = config["node"]
    assert (node["id"], node["cluster"], node["locality"]) == (
        node_id,
        node_cluster,
        {"region": "local", "zone": "local-a"},
    )
    assert node["metadata"].get("role") == role
    assert node["metadata"].get("site") == site
    assert node["metadata"].get("outbound_port") == outbound_port
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": admin_port}
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC"
    assert ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]["base_interval"] == "0.05s"
    cluster = meshplane_cluster(config)
    assert cluster["type"] == "STATIC"
    assert socket_address(cluster) == {"address": "127.0.0.1", "port_value": 18000}
    assert "transport_socket" not in cluster
    # Envoy Mobile takes clusters and its runtime layer only.
    assert ("lds_config" in config["dynamic_resources"]) == (role != "mobile")
    assert ("layered_runtime" in config) == (role == "mobile")


def test_grpc_default_is_an_insecure_xds_bootstrap() -> None:
    bootstrap = json.loads(render(BootstrapOptions("grpc")))
    assert bootstrap == {
        "xds_servers": [
            {"server_uri": "127.0.0.1:18000", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
        ],
        "node": {
            "id": "grpc-client-demo",
            "cluster": "demo-client",
            "locality": {"region": "local", "zone": "local-a"},
            "metadata": {"role": "grpc"},
        },
    }


# --- variants through `envoy --mode validate` -------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    return mesh_certificates(tmp_path_factory.mktemp("certificates"), sidecar="sidecar", grpc="grpc")


def variant(name: str, role: str, certificates: dict[str, Pair]) -> BootstrapOptions:
    ca, client = certificates["ca"], certificates["sidecar"]
    return {
        "sotw": BootstrapOptions(role, sotw=True),
        "dns": BootstrapOptions(role, xds_server="meshplane:18000"),
        "kubernetes": BootstrapOptions(role, xds_server="meshplane.meshplane.svc.cluster.local:18000", sotw=True),
        "ipv6": BootstrapOptions(role, xds_server="[::1]:18000"),
        "tls": BootstrapOptions(role, xds_server="meshplane:18000", tls_ca=str(ca.certificate)),
        "tls-ip": BootstrapOptions(role, tls_ca=str(ca.certificate), tls_server_name="meshplane"),
        "mtls": BootstrapOptions(
            role,
            xds_server="meshplane:18000",
            tls_ca=str(ca.certificate),
            tls_cert=str(client.certificate),
            tls_key=str(client.key),
        ),
        "token": BootstrapOptions(role, xds_server="meshplane:18000", tls_ca=str(ca.certificate), xds_token="s3cret"),
        "locality": BootstrapOptions(role, node_id="123", node_cluster="yes", region="eu", zone="", sub_zone="rack-1"),
        "per-type": BootstrapOptions(role, transport="per-type"),
        "per-type-sotw": BootstrapOptions(role, transport="per-type", sotw=True),
        "per-type-mtls": BootstrapOptions(
            role,
            xds_server="meshplane:18000",
            transport="per-type",
            tls_ca=str(ca.certificate),
            tls_cert=str(client.certificate),
            tls_key=str(client.key),
        ),
        "stats": BootstrapOptions(role, stats_address=KUBERNETES_STATS_ADDRESS),
        "stats-admin-everywhere": BootstrapOptions(
            role, admin_address="0.0.0.0:19901", stats_address="[::]:15090", transport="per-type"
        ),
    }[name]


VARIANTS = [
    *("committed", "sotw", "dns", "kubernetes", "ipv6", "tls", "tls-ip", "mtls", "token", "locality"),
    *("per-type", "per-type-sotw", "per-type-mtls", "stats", "stats-admin-everywhere"),
]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("role", ENVOY_ROLES)
def test_bootstraps_are_valid_envoy_config(role: str, name: str, certificates: dict[str, Pair], tmp_path: Path) -> None:
    if name == "committed":
        path = ENVOY_CONFIGS / COMMITTED_FILES[ProxyRole(role)]
    else:
        path = tmp_path / f"{role}-{name}.yaml"
        path.write_text(render(variant(name, role, certificates)))
    output = validate_bootstrap(path)
    # Nothing deprecated: a bootstrap that warns today stops loading in a later Envoy.
    assert "Deprecated field" not in output


def test_variants_say_what_they_were_asked(certificates: dict[str, Pair]) -> None:
    assert load(variant("sotw", "sidecar", certificates))["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"

    dns = meshplane_cluster(load(variant("dns", "device", certificates)))
    assert "type" not in dns
    assert dns["cluster_type"]["name"] == "envoy.cluster.dns"
    assert dns["cluster_type"]["typed_config"]["all_addresses_in_single_endpoint"] is False
    assert dns["cluster_type"]["typed_config"]["dns_lookup_family"] == "V4_PREFERRED"
    assert socket_address(dns) == {"address": "meshplane", "port_value": 18000}
    assert socket_address(meshplane_cluster(load(variant("ipv6", "sidecar", certificates)))) == {
        "address": "::1",
        "port_value": 18000,
    }

    tls = meshplane_cluster(load(variant("tls", "sidecar", certificates)))["transport_socket"]["typed_config"]
    assert tls["sni"] == "meshplane"
    context = tls["common_tls_context"]
    assert context["validation_context"]["trusted_ca"] == {"filename": str(certificates["ca"].certificate)}
    assert context["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "meshplane"}}
    ]
    assert "tls_certificates" not in context
    by_ip = meshplane_cluster(load(BootstrapOptions("sidecar", tls_ca="/ca.pem")))["transport_socket"]["typed_config"]
    assert "sni" not in by_ip  # SNI cannot be an IP address; the certificate must carry it as an IP SAN
    assert by_ip["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
    ]
    mtls = meshplane_cluster(load(variant("mtls", "sidecar", certificates)))["transport_socket"]["typed_config"]
    assert mtls["common_tls_context"]["tls_certificates"] == [
        {
            "certificate_chain": {"filename": str(certificates["sidecar"].certificate)},
            "private_key": {"filename": str(certificates["sidecar"].key)},
        }
    ]

    service = load(variant("token", "sidecar", certificates))["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert service["initial_metadata"] == [{"key": "authorization", "value": "Bearer s3cret"}]

    node = load(variant("locality", "sidecar", certificates))["node"]
    assert (node["id"], node["cluster"]) == ("123", "yes")  # quoted: they stay strings
    assert node["locality"] == {"region": "eu", "sub_zone": "rack-1"}


PER_TYPE_SOURCES = {
    "sidecar": ["cds", "lds"],
    "edge-gateway": ["cds", "lds"],
    "device": ["cds", "lds"],
    "gateway": ["cds", "lds"],
}


@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
@pytest.mark.parametrize("role", ENVOY_ROLES)
def test_a_per_type_bootstrap_names_its_services_and_tells_meshplane(role: str, sotw: bool) -> None:
    """--transport per-type: no ADS at all; CDS, LDS (and mobile's RTDS) each on its own service of
    the chosen API type through the `meshplane` cluster, and the node says both, so the EDS, RDS
    and SDS sources meshplane sends name them too. Without the flag nothing of this is there."""
    config = load(BootstrapOptions(role, transport="per-type", sotw=sotw))
    api_type = "GRPC" if sotw else "DELTA_GRPC"
    dynamic = config["dynamic_resources"]
    assert "ads_config" not in dynamic
    sources = {f"{kind}_config": dynamic[f"{kind}_config"] for kind in PER_TYPE_SOURCES.get(role, ["cds"])}
    if role == "mobile":
        [layer] = [layer for layer in config["layered_runtime"]["layers"] if "rtds_layer" in layer]
        sources["rtds_config"] = layer["rtds_layer"]["rtds_config"]
    assert set(dynamic) == {key for key in sources if key != "rtds_config"}
    for source in sources.values():
        assert "ads" not in source
        assert source["resource_api_version"] == "V3"
        api = source["api_config_source"]
        assert (api["api_type"], api["transport_api_version"]) == (api_type, "V3")
        [service] = api["grpc_services"]
        assert service["envoy_grpc"]["cluster_name"] == meshplane_cluster(config)["name"]
    assert config["node"]["metadata"]["xds_api_type"] == api_type.lower()
    assert config["node"]["metadata"]["xds_cluster"] == "meshplane"
    default = load(BootstrapOptions(role, sotw=sotw))
    assert "xds_api_type" not in default["node"]["metadata"]
    assert default["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}


@pytest.mark.parametrize(
    ("options", "creds"),
    [
        pytest.param(BootstrapOptions("grpc", xds_server="meshplane:18000"), {"type": "insecure"}, id="insecure"),
        pytest.param(
            BootstrapOptions("grpc", xds_server="meshplane:18000", tls_ca="/ca.pem"),
            {"type": "tls", "config": {"ca_certificate_file": "/ca.pem"}},
            id="tls",
        ),
        pytest.param(
            BootstrapOptions(
                "grpc", xds_server="meshplane:18000", tls_ca="/ca.pem", tls_cert="/c.pem", tls_key="/k.pem"
            ),
            {
                "type": "tls",
                "config": {
                    "ca_certificate_file": "/ca.pem",
                    "certificate_file": "/c.pem",
                    "private_key_file": "/k.pem",
                },
            },
            id="mtls",
        ),
    ],
)
def test_grpc_bootstrap_shape(options: BootstrapOptions, creds: dict[str, Any]) -> None:
    bootstrap = json.loads(render(options))
    assert set(bootstrap) == {"xds_servers", "node"}
    [server] = bootstrap["xds_servers"]
    assert server == {"server_uri": "meshplane:18000", "channel_creds": [creds], "server_features": ["xds_v3"]}
    assert bootstrap["node"]["metadata"] == {"role": "grpc"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("127.0.0.1:18000", ("127.0.0.1", 18000), id="ipv4"),
        pytest.param("meshplane:18000", ("meshplane", 18000), id="name"),
        pytest.param(
            "meshplane.meshplane.svc.cluster.local:443", ("meshplane.meshplane.svc.cluster.local", 443), id="fqdn"
        ),
        pytest.param("[::1]:18000", ("::1", 18000), id="ipv6"),
        pytest.param("meshplane", None, id="no-port"),
        pytest.param("meshplane:0", None, id="port-0"),
        pytest.param("meshplane:65536", None, id="port-too-big"),
        pytest.param("::1:18000", None, id="ipv6-without-brackets"),
        pytest.param("[meshplane]:18000", None, id="name-in-brackets"),
        pytest.param("bad_name:18000", None, id="underscore"),
        pytest.param("-bad:18000", None, id="leading-dash"),
        pytest.param("1.2.3:18000", None, id="digits-only-name"),
        pytest.param("mesh plane:18000", None, id="space"),
        pytest.param("http://meshplane:18000", None, id="url"),
    ],
)
def test_split_host_port(value: str, expected: tuple[str, int] | None) -> None:
    assert split_host_port(value) == expected


def test_every_problem_is_listed_at_once() -> None:
    options = BootstrapOptions("device", xds_server="nope", site="Gym 12", outbound_port=0, tls_cert="/c.pem")
    with pytest.raises(BootstrapError) as raised:
        render(options)
    assert len(raised.value.problems) == 5, raised.value.problems


@pytest.mark.parametrize(
    ("value", "rendered", "host"),
    [("127.0.0.1", "127.0.0.1", "127.0.0.1"), ("0:0::1", "::1", "[::1]"), ("0.0.0.0", "0.0.0.0", "0.0.0.0")],
    ids=["loopback", "ipv6", "any"],
)
def test_a_gateways_listen_address_goes_into_its_node(value: str, rendered: str, host: str, tmp_path: Path) -> None:
    text = render(BootstrapOptions("edge-gateway", listen_address=value))
    assert yaml.safe_load(text)["node"]["metadata"]["listen_address"] == rendered
    assert f"# - a listener on {host}:<outbound_port> (15080)" in text  # the header says where it listens
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    assert "Deprecated field" not in validate_bootstrap(path)
    # Without it there is no such field, and meshplane binds 0.0.0.0 (the committed default).
    default = yaml.safe_load(render(BootstrapOptions("edge-gateway")))
    assert "listen_address" not in default["node"]["metadata"]
    assert "listen_address" not in yaml.safe_load((ENVOY_CONFIGS / "edge-gateway.yaml").read_text())["node"]["metadata"]


def test_a_gateway_bootstrap_names_its_gateway_address_and_offset(tmp_path: Path) -> None:
    text = render(BootstrapOptions("gateway", gateway="shop/edge", listen_address="127.0.0.1", port_offset=8000))
    metadata = yaml.safe_load(text)["node"]["metadata"]
    assert metadata == {"role": "gateway", "listen_address": "127.0.0.1", "gateway": "shop/edge", "port_offset": 8000}
    assert "# 127.0.0.1:<port + node.metadata.port_offset>" in text
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    assert "Deprecated field" not in validate_bootstrap(path)
    default = yaml.safe_load(render(BootstrapOptions("gateway")))["node"]["metadata"]
    assert default == {"role": "gateway", "gateway": "default/meshplane"}  # no offset, every address


# --- the command ---------------------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["bootstrap", *argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_meshplane_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell may set MESHPLANE_*; these tests say what they set."""
    for name in list(os.environ):
        if name.startswith("MESHPLANE_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_meshplane_variables")
@pytest.mark.parametrize("role", [role.value for role in ROLE_DEFAULTS])
def test_command_prints_the_default_bootstrap(role: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([role], capsys) == (0, render(BootstrapOptions(role)), "")


@pytest.mark.usefixtures("no_meshplane_variables")
def test_flags_reach_the_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "edge-gateway",
        "--xds-server=meshplane.meshplane.svc.cluster.local:18000",
        "--node-id=gw-1",
        "--cluster=gateways",
        "--site=gym-12",
        "--region=eu",
        "--zone=eu-1a",
        "--sub-zone=rack-3",
        "--outbound-port=16000",
        "--admin-address=127.0.0.1:0",
        "--sotw",
        "--tls-ca=/etc/meshplane/ca.pem",
        "--tls-cert=/etc/meshplane/tls.crt",
        "--tls-key=/etc/meshplane/tls.key",
        "--tls-server-name=xds.example.com",
        "--xds-token=t0ken",
        "--listen-address=127.0.0.1",
    ]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out == render(
        BootstrapOptions(
            "edge-gateway",
            xds_server="meshplane.meshplane.svc.cluster.local:18000",
            node_id="gw-1",
            node_cluster="gateways",
            site="gym-12",
            region="eu",
            zone="eu-1a",
            sub_zone="rack-3",
            outbound_port=16000,
            admin_address="127.0.0.1:0",
            sotw=True,
            tls_ca="/etc/meshplane/ca.pem",
            tls_cert="/etc/meshplane/tls.crt",
            tls_key="/etc/meshplane/tls.key",
            tls_server_name="xds.example.com",
            xds_token="t0ken",
            listen_address="127.0.0.1",
        )
    )


@pytest.mark.usefixtures("no_meshplane_variables")
def test_variables_set_flags_and_the_command_line_wins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHPLANE_XDS_SERVER", "meshplane:18000")
    monkeypatch.setenv("MESHPLANE_BOOTSTRAP_SITE", "gym-7")
    monkeypatch.setenv("MESHPLANE_BOOTSTRAP_SOTW", "true")
    monkeypatch.setenv("MESHPLANE_BOOTSTRAP_OUTBOUND_PORT", "16001")
    monkeypatch.setenv("MESHPLANE_XDS_TOKEN", "from-the-environment")
    code, out, _ = run(["device"], capsys)
    assert code == 0
    assert out == render(
        BootstrapOptions(
            "device",
            xds_server="meshplane:18000",
            site="gym-7",
            sotw=True,
            outbound_port=16001,
            xds_token="from-the-environment",
        )
    )
    code, out, _ = run(["device", "--xds-server", "10.0.0.5:18000", "--site", "gym-8"], capsys)
    assert code == 0
    config = yaml.safe_load(out)
    assert socket_address(meshplane_cluster(config))["address"] == "10.0.0.5"
    assert config["node"]["metadata"]["site"] == "gym-8"
    monkeypatch.setenv("MESHPLANE_BOOTSTRAP_LISTEN_ADDRESS", "127.0.0.1")
    code, out, _ = run(["edge-gateway"], capsys)
    assert code == 0
    assert yaml.safe_load(out)["node"]["metadata"]["listen_address"] == "127.0.0.1"


@pytest.mark.usefixtures("no_meshplane_variables")
def test_the_transport_flag_and_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["device", "--transport", "per-type", "--sotw"], capsys) == (
        0,
        render(BootstrapOptions("device", transport="per-type", sotw=True)),
        "",
    )
    monkeypatch.setenv("MESHPLANE_BOOTSTRAP_TRANSPORT", "per-type")
    assert run(["mobile"], capsys) == (0, render(BootstrapOptions("mobile", transport="per-type")), "")
    assert run(["mobile", "--transport", "ads"], capsys) == (0, render(BootstrapOptions("mobile")), "")
    # argparse checks the command line's choices only: a variable is checked with the other options.
    monkeypatch.setenv("MESHPLANE_BOOTSTRAP_TRANSPORT", "per_type")
    code, out, err = run(["sidecar"], capsys)
    assert (code, out) == (2, "")
    assert "--transport 'per_type' is not one of: ads, per-type" in err


@pytest.mark.usefixtures("no_meshplane_variables")
def test_the_token_is_never_shown_in_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MESHPLANE_XDS_TOKEN", "do-not-print-me")
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "MESHPLANE_XDS_TOKEN" in out
    assert "do-not-print-me" not in out


@pytest.mark.usefixtures("no_meshplane_variables")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["proxy"], "invalid choice: 'proxy'", id="unknown-role"),
        pytest.param(
            ["sidecar", "--xds-server", "meshplane"], "--xds-server 'meshplane' is not HOST:PORT", id="no-port"
        ),
        pytest.param(["sidecar", "--xds-server", "meshplane:99999"], "is not HOST:PORT", id="bad-port"),
        pytest.param(["sidecar", "--outbound-port", "x"], "'x' is not a port number", id="port-not-a-number"),
        pytest.param(["sidecar", "--outbound-port", "70000"], "--outbound-port 70000 is not a port", id="port-range"),
        pytest.param(["mobile", "--outbound-port", "15001"], "does not apply to mobile", id="mobile-outbound"),
        pytest.param(["device", "--site", ""], "role device needs --site", id="device-without-site"),
        pytest.param(["edge-gateway", "--site", "Gym 12"], "role edge-gateway needs --site", id="bad-site"),
        pytest.param(["mobile", "--site", ""], "role mobile needs --site", id="mobile-without-site"),
        pytest.param(["sidecar", "--site", "gym-1"], "--site is for the edge roles", id="site-on-sidecar"),
        pytest.param(["sidecar", "--tls-ca", "/ca.pem", "--tls-cert", "/c.pem"], "go together", id="cert-no-key"),
        pytest.param(["sidecar", "--tls-key", "/k.pem"], "go together", id="key-no-cert"),
        pytest.param(["sidecar", "--tls-cert", "/c", "--tls-key", "/k"], "--tls-cert needs --tls-ca", id="cert-no-ca"),
        pytest.param(
            ["sidecar", "--tls-server-name", "x.example"], "--tls-server-name needs --tls-ca", id="name-no-ca"
        ),
        pytest.param(["sidecar", "--admin-address", "localhost:9901"], "is not IP:PORT", id="admin-by-name"),
        pytest.param(["grpc", "--admin-address", "127.0.0.1:9901"], "no admin interface", id="grpc-admin"),
        pytest.param(["grpc", "--xds-token", "t"], "--xds-token does not apply to grpc", id="grpc-token"),
        pytest.param(
            ["grpc", "--tls-ca", "/ca", "--tls-server-name", "x"], "must name the --xds-server", id="grpc-sni"
        ),
        pytest.param(["sidecar", "--node-id", "a b"], "--node-id 'a b' must be", id="node-id-space"),
        pytest.param(["sidecar", "--xds-token", "two words"], "--xds-token must be", id="token-space"),
        pytest.param(
            ["edge-gateway", "--listen-address", "localhost"],
            "--listen-address 'localhost' is not an IP",
            id="listen-name",
        ),
        pytest.param(
            ["edge-gateway", "--listen-address", "127.0.0.1:15080"], "is not an IP address", id="listen-with-port"
        ),
        pytest.param(["edge-gateway", "--listen-address", "224.0.0.1"], "no multicast", id="listen-multicast"),
        pytest.param(
            ["sidecar", "--listen-address", "127.0.0.1"],
            "is for edge-gateway and gateway, not sidecar",
            id="listen-sidecar",
        ),
        pytest.param(
            ["device", "--listen-address", "127.0.0.1"],
            "is for edge-gateway and gateway, not device",
            id="listen-device",
        ),
        pytest.param(["gateway", "--gateway", "edge"], "'edge' is not namespace/name", id="gateway-no-namespace"),
        pytest.param(["sidecar", "--gateway", "shop/edge"], "--gateway is for the gateway role", id="gateway-sidecar"),
        pytest.param(["gateway", "--port-offset", "70000"], "--port-offset 70000 is not in 0-64511", id="offset-big"),
        pytest.param(["device", "--port-offset", "1"], "--port-offset is for the gateway role", id="offset-device"),
        pytest.param(["sidecar", "--transport", "rest"], "invalid choice: 'rest'", id="unknown-transport"),
        pytest.param(["grpc", "--transport", "per-type"], "proxyless gRPC speaks ADS only", id="grpc-per-type"),
        pytest.param(
            ["sidecar", "--transport", "per-type", "--xds-token", "t"],
            "--xds-token does not apply to --transport per-type",
            id="per-type-token",
        ),
        pytest.param(["grpc", "--stats-address", "0.0.0.0:15090"], "no admin interface", id="grpc-stats"),
        pytest.param(
            ["sidecar", "--stats-address", "15090"], "--stats-address '15090' is not IP:PORT", id="stats-port"
        ),
        pytest.param(["sidecar", "--stats-address", "localhost:15090"], "is not IP:PORT", id="stats-by-name"),
        pytest.param(
            ["sidecar", "--admin-address", "127.0.0.1:0", "--stats-address", "0.0.0.0:15090"],
            "needs the admin interface on a fixed port",
            id="stats-admin-port-0",
        ),
        pytest.param(
            ["sidecar", "--stats-address", "0.0.0.0:9901"], "uses the admin interface's port 9901", id="stats-on-admin"
        ),
        pytest.param(
            ["sidecar", "--stats-address", "0.0.0.0:15001"], "uses the outbound listener's port", id="stats-outbound"
        ),
        pytest.param(
            ["edge-gateway", "--stats-address", "0.0.0.0:15081"], "uses the device listener's port", id="stats-device"
        ),
    ],
)
def test_bad_options_exit_2_with_the_reason(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("no_meshplane_variables")
def test_output_file_is_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "envoy.yaml"
    assert run(["sidecar", "-o", str(target)], capsys) == (0, "", "")
    assert target.read_text() == render(BootstrapOptions("sidecar"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644

    # A failure before the rename leaves the old file whole and no temporary file behind.
    def failing_replace(source: object, destination: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    code, _, err = run(["sidecar", "--xds-server", "meshplane:18000", "-o", str(target)], capsys)
    assert code == 1
    assert "cannot write" in err
    assert "disk full" in err
    assert target.read_text() == render(BootstrapOptions("sidecar"))
    assert [p.name for p in tmp_path.iterdir()] == ["envoy.yaml"]
    monkeypatch.undo()

    # A bootstrap holding a token is readable by its owner only.
    monkeypatch.setenv("MESHPLANE_XDS_TOKEN", "s3cret")
    assert run(["sidecar", "-o", str(target)], capsys)[0] == 0
    assert "Bearer s3cret" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    # Bad options write nothing.
    fresh = tmp_path / "never.yaml"
    assert run(["device", "--site", "", "-o", str(fresh)], capsys)[0] == 2
    assert not fresh.exists()


def test_make_bootstraps_writes_the_defaults_whatever_the_environment(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshplane.bootstrap", str(tmp_path)],
        env={**os.environ, "MESHPLANE_XDS_SERVER": "elsewhere:1", "MESHPLANE_BOOTSTRAP_SOTW": "true"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(COMMITTED_FILES.values())
    for role, name in COMMITTED_FILES.items():
        assert (tmp_path / name).read_text() == render(BootstrapOptions(role.value))


def test_the_command_imports_nothing_heavy() -> None:
    script = (
        "import sys; import meshplane.cli; "
        "heavy = sorted(m for m in ('grpc', 'google.protobuf', 'envoy', 'yaml', 'meshplane.xds', 'meshplane.app') "
        "if m in sys.modules); print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


# --- real clients from rendered bootstraps ------------------------------------------------------------


async def start_rendered_envoy(workdir: Path, options: BootstrapOptions) -> Envoy:
    """An Envoy started from `render(options)` exactly as rendered: the options must put the admin
    interface on 127.0.0.1 (port 0: Envoy picks one; either way Envoy writes it to a file)."""
    assert options.admin_address is not None
    assert options.admin_address.startswith("127.0.0.1:")
    node_id = options.node_id or "envoy"
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap = workdir / f"{node_id}.yaml"
    bootstrap.write_text(render(options))
    admin_path, log_path = workdir / f"{node_id}.admin", workdir / f"{node_id}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "info"),
                *("--admin-address-path", str(admin_path), "--drain-time-s", "1", "--parent-shutdown-time-s", "2"),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    envoy = Envoy(process, 0, options.outbound_port or 0, log_path, session)

    async def admin_port() -> int | None:
        text = admin_path.read_text().strip() if admin_path.exists() else ""
        return int(text.rsplit(":", 1)[1]) if text else None

    try:
        envoy.admin_port = await envoy.eventually(admin_port, "the admin address file")
    except BaseException:
        await envoy.stop()
        raise
    return envoy


def web_policy(directory: Path, backend: Backend, *, sites: bool = False, extra: str = "") -> Path:
    directory.mkdir()
    (directory / "web.yaml").write_text(
        f"services:\n  - {{name: web, port: 8080, endpoints: [{{address: 127.0.0.1, port: {backend.port}}}]}}\n"
    )
    if sites:
        (directory / "sites.yaml").write_text("sites:\n  - {id: gym, region: local, zone: local-a}\n")
    if extra:
        (directory / "extra.yaml").write_text(extra)
    return directory


class Plane:
    """A control plane serving `web` (one local backend) from policy files, and the Envoys of a test."""

    def __init__(self, control: ControlPlane, backend: Backend, workdir: Path) -> None:
        self.control, self.backend, self.workdir = control, backend, workdir
        self.envoys: list[Envoy] = []

    def options(self, role: str, node_id: str, **options: Any) -> BootstrapOptions:
        """A bootstrap reaching this plane by the DNS name `localhost`, admin on a port Envoy picks
        unless `options` say otherwise."""
        outbound = {"outbound_port": free_port()} if ROLE_DEFAULTS[ProxyRole(role)].outbound_port else {}
        return BootstrapOptions(
            role,
            xds_server=f"localhost:{self.control.xds_port}",
            node_id=node_id,
            **{"admin_address": "127.0.0.1:0", **outbound, **options},
        )

    async def envoy(self, options: BootstrapOptions) -> Envoy:
        envoy = await start_rendered_envoy(self.workdir, options)
        self.envoys.append(envoy)
        return envoy

    def kinds(self, node_id: str) -> set[str]:
        return {track.kind.value for track in self.control.registry.streams() if track.node_id == node_id}


@contextlib.asynccontextmanager
async def running_plane(
    tmp_path: Path, *, sites: bool = False, extra_policy: str = "", **settings: Any
) -> AsyncIterator[Plane]:
    backend = await start_backend("web")
    control = ControlPlane(
        Settings(
            config=web_policy(tmp_path / "policy", backend, sites=sites, extra=extra_policy),
            xds_address="127.0.0.1:0",
            status_address="127.0.0.1:0",
            debounce_quiet=0.02,
            debounce_max=0.2,
            shutdown_grace=0.5,
            **settings,
        )
    )
    await control.start()
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    plane = Plane(control, backend, tmp_path / "envoy")
    try:
        yield plane
    finally:
        for envoy in plane.envoys:
            await envoy.stop()
        stop.set()
        await task
        await backend.close()


async def holds_runtime_layer(mobile: Envoy, site: str, over: str) -> None:
    """Waits until `mobile` holds the `meshplane` runtime layer (sent `over` a channel, for the
    failure message), asserts it names `site` and clusters of service web, then waits until `mobile`
    holds those clusters."""

    async def runtime() -> dict[str, Any] | None:
        entries: dict[str, Any] = json.loads(await mobile.admin("/runtime"))["entries"]
        return entries if "meshplane.site" in entries else None

    entries = await mobile.eventually(runtime, f"the meshplane runtime layer over {over}")
    assert entries["meshplane.site"]["final_value"] == site
    web_clusters = {v["final_value"] for k, v in entries.items() if k.startswith("meshplane.clusters.default.web.")}
    assert web_clusters

    async def clusters() -> bool:
        return web_clusters <= await mobile.cluster_names()

    await mobile.eventually(clusters, f"the clusters the runtime layer names: {web_clusters}")


def serves_web(envoy: Envoy) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        status, body, _ = await envoy.request("web")
        return status == 200 and body.startswith("web")

    return check


async def meshplane_hosts(envoy: Envoy) -> set[str]:
    """The addresses Envoy's `meshplane` cluster holds (what `localhost` resolved to)."""
    data = json.loads(await envoy.admin("/clusters?format=json"))
    [cluster] = [c for c in data["cluster_statuses"] if c["name"] == "meshplane"]
    addresses = (host["address"]["socket_address"] for host in cluster.get("host_statuses", []))
    return {f"{a['address']}:{a['port_value']}" for a in addresses}


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
async def test_envoy_finds_the_control_plane_by_dns_name(tmp_path: Path, sotw: bool) -> None:
    async with running_plane(tmp_path) as plane:
        envoy = await plane.envoy(plane.options("sidecar", "by-name", sotw=sotw))
        await envoy.eventually(serves_web(envoy), "web through an Envoy that reached meshplane as `localhost`")
        assert await meshplane_hosts(envoy) == {f"127.0.0.1:{plane.control.xds_port}"}
        assert plane.kinds("by-name") == {"sotw-ads" if sotw else "delta-ads"}


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_envoy_over_mtls_checks_the_control_planes_name(tmp_path: Path, certificates: dict[str, Pair]) -> None:
    ca, server, sidecar = certificates["ca"], certificates["server"], certificates["sidecar"]
    tls = {"tls_ca": str(ca.certificate), "tls_cert": str(sidecar.certificate), "tls_key": str(sidecar.key)}
    async with running_plane(
        tmp_path, tls_cert=server.certificate, tls_key=server.key, client_ca=ca.certificate
    ) as plane:
        good = await plane.envoy(plane.options("sidecar", "mtls", **tls))
        await good.eventually(serves_web(good), "config over mTLS to `localhost`")

        # A certificate from the right CA naming another host is refused by the bootstrap's SAN match.
        wrong = await plane.envoy(plane.options("sidecar", "wrong-name", tls_server_name="elsewhere.example", **tls))

        async def refused() -> bool:
            return int(await wrong.stat("cluster.meshplane.ssl.fail_verify_san") or 0) > 0

        await wrong.eventually(refused, "the control plane's certificate refused for not naming elsewhere.example")
        assert plane.kinds("wrong-name") == set()


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_envoy_with_a_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {hashlib.sha256(b'sidecar-secret').hexdigest()}, role: sidecar}}\n")
    async with running_plane(tmp_path, xds_tokens=tokens) as plane:
        envoy = await plane.envoy(plane.options("sidecar", "with-token", xds_token="sidecar-secret"))
        await envoy.eventually(serves_web(envoy), "config for a sidecar with its token")


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_mobile_and_device_envoys_from_rendered_bootstraps(tmp_path: Path) -> None:
    async with running_plane(tmp_path, sites=True) as plane:
        # Mobile: clusters and the `meshplane` runtime layer, nothing else.
        mobile = await plane.envoy(plane.options("mobile", "app-1", site="gym"))

        await holds_runtime_layer(mobile, "gym", "RTDS")
        listeners = json.loads(await mobile.admin("/listeners?format=json"))
        assert listeners.get("listener_statuses", []) == []
        assert plane.kinds("app-1") == {"delta-ads"}

        # Device: no gateway at its site, so a request goes to the cloud service directly.
        device = await plane.envoy(plane.options("device", "bike-1", site="gym"))
        await device.eventually(serves_web(device), "web through a device Envoy")


async def start_tls_backend(name: str, certificates: dict[str, Pair]) -> web.AppRunner:
    """An HTTPS server on 127.0.0.1 answering `<name> <path>`, with the `server` certificate, that
    requires a client certificate from the test CA (so a request through it proves both secrets)."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} {request.path}\n")

    return await start_mtls_server(answer, certificates["ca"].certificate, certificates["server"])


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_a_gateway_on_loopback_reaches_a_tls_service(tmp_path: Path, certificates: dict[str, Pair]) -> None:
    """A gateway Envoy from a rendered bootstrap with --listen-address 127.0.0.1 binds both listeners
    there, and carries a device's plain HTTP to a service with upstream mTLS: its snapshot holds the
    service's CA bundle and client certificate (before, it held no secret and was never published)."""
    secure = await start_tls_backend("secure", certificates)
    port = secure.addresses[0][1]
    client = certificates["sidecar"]
    policy = f"""secrets:
  - {{name: edge-ca, ca_file: {certificates["ca"].certificate}}}
  - {{name: edge-client, certificate_file: {client.certificate}, key_file: {client.key}}}
services:
  - name: secure
    port: 8443
    endpoints: [{{address: 127.0.0.1, port: {port}}}]
    tls: {{trust: edge-ca, sni: localhost, client_certificate: edge-client}}
"""
    try:
        # The gateway has no xDS credential: serving it the client key is the explicit opt-in.
        async with running_plane(
            tmp_path, sites=True, extra_policy=policy, insecure_serve_keys_without_client_auth=True
        ) as plane:
            gateway = await plane.envoy(plane.options("edge-gateway", "gw-1", site="gym", listen_address="127.0.0.1"))

            async def through_tls() -> bool:
                status, body, _ = await gateway.request("secure", "/rides")  # the device listener, 127.0.0.1
                return status == 200 and body == "secure /rides\n"

            await gateway.eventually(through_tls, "a device's request through the gateway to the mTLS service")
            dump = await gateway.config_dump("dynamic_listeners")
            bound = {
                entry["name"]: entry["active_state"]["listener"]["address"]["socket_address"]
                for entry in dump["configs"]
            }
            outbound = gateway.outbound_port
            assert bound == {
                f"edge_from_devices_{outbound}": {"address": "127.0.0.1", "port_value": outbound},
                f"edge_to_devices_{outbound + 1}": {"address": "127.0.0.1", "port_value": outbound + 1},
            }
            secrets = await gateway.config_dump("dynamic_active_secrets")
            assert sorted(entry["name"] for entry in secrets["configs"]) == ["edge-ca", "edge-client"]
    finally:
        await secure.cleanup()


@pytest.mark.xdist_group("envoy")
async def test_grpc_client_over_mtls_from_a_rendered_bootstrap(tmp_path: Path, certificates: dict[str, Pair]) -> None:
    ca, server, client = certificates["ca"], certificates["server"], certificates["grpc"]
    greeter, greeter_port = await start_greeter("greeter-1")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "greeter.yaml").write_text(
        "services:\n  - {name: greeter, port: 50051, protocol: grpc, "
        f"endpoints: [{{address: 127.0.0.1, port: {greeter_port}}}]}}\n"
    )
    control = ControlPlane(
        Settings(
            config=policy,
            xds_address="127.0.0.1:0",
            status_address="127.0.0.1:0",
            tls_cert=server.certificate,
            tls_key=server.key,
            client_ca=ca.certificate,
            shutdown_grace=0.5,
        )
    )
    await control.start()
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    try:
        bootstrap = tmp_path / "grpc-bootstrap.json"
        bootstrap.write_text(
            render(
                BootstrapOptions(
                    "grpc",
                    xds_server=f"localhost:{control.xds_port}",
                    node_id="proxyless-1",
                    tls_ca=str(ca.certificate),
                    tls_cert=str(client.certificate),
                    tls_key=str(client.key),
                )
            )
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "tests" / "grpc_xds_client.py"),
            "xds:///greeter:50051",
            "ada",
            env={"GRPC_XDS_BOOTSTRAP": str(bootstrap), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, f"client failed ({process.returncode}): {err.decode()[-2000:]}"
        assert out.decode().splitlines() == ["hello ada from greeter-1"]
    finally:
        stop.set()
        await task
        await greeter.stop(None)


def test_the_stats_listener_forwards_only_the_scrape_and_ready_to_the_admin_interface() -> None:
    bootstrap = load(BootstrapOptions("edge-gateway", admin_address="0.0.0.0:9902", stats_address="10.0.0.7:15090"))
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["name"] == STATS_LISTENER
    assert listener["address"]["socket_address"] == {"address": "10.0.0.7", "port_value": 15090}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert (manager["normalize_path"], manager["merge_slashes"]) == (True, True)
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    forwarded = [(r["match"]["path"], r["match"]["headers"]) for r in routes if "route" in r]
    get = [{"name": ":method", "string_match": {"exact": "GET"}}]
    assert forwarded == [("/stats/prometheus", get), ("/ready", get)]
    assert routes[-1] == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    (admin,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == STATS_ADMIN_CLUSTER]
    endpoint = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint == {"address": "127.0.0.1", "port_value": 9902}  # an admin on every address, reached on loopback
    assert "listeners" not in load(BootstrapOptions("edge-gateway"))["static_resources"]  # off unless asked


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_a_real_envoys_stats_listener_serves_prometheus_text_and_nothing_else(tmp_path: Path) -> None:
    async with running_plane(tmp_path) as plane:
        stats_port = free_port()
        options = plane.options(
            "sidecar", "scraped", admin_address=f"127.0.0.1:{free_port()}", stats_address=f"127.0.0.1:{stats_port}"
        )
        envoy = await plane.envoy(options)
        await envoy.eventually(serves_web(envoy), "web through the Envoy with a stats listener")
        stats = f"http://127.0.0.1:{stats_port}"

        async def scrape() -> str | None:
            async with envoy.session.get(f"{stats}/stats/prometheus") as response:
                return await response.text() if response.status == 200 else None

        text = await envoy.eventually(scrape, "a scrape of the stats listener")
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert all(name.startswith("envoy_") for name in families), sorted(families)[:5]
        assert families["envoy_server_live"].samples[0].value == 1
        assert "envoy_cluster_upstream_rq_completed" in families  # web's requests, as the admin counts them
        async with envoy.session.get(f"{stats}/ready") as response:
            assert (response.status, (await response.text()).strip()) == (200, "LIVE")
        refused = [
            ("GET", "/config_dump"),
            ("GET", "/quitquitquit"),
            ("POST", "/quitquitquit"),
            ("POST", "/stats/prometheus"),
            ("GET", "/stats"),
            ("GET", "/stats/prometheus/../../config_dump"),
            ("GET", "//config_dump"),
            ("GET", "/stats%2Fprometheus"),
        ]
        for method, path in refused:
            # Sent as written: aiohttp would otherwise resolve the `..` itself.
            async with envoy.session.request(method, URL(stats + path, encoded=True)) as response:
                assert response.status == 404, f"{method} {path}: {response.status} {await response.text()}"
        assert envoy.process.poll() is None
        assert (await envoy.admin("/ready")).strip() == "LIVE"  # /quitquitquit did not reach it
