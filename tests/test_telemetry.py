"""Access logs and tracing from policy files: the format, the model's checks, the translation, the change set.

- Bad input is refused with `file:line: reason` by `meshplane validate` (one case per rule).
- Envoy's command operators parse with arguments and lengths; unknown ones and stray `%` do not.
- meshplane refuses a format exactly when a real Envoy (`--mode validate`) does, over formats at
  the edge of each operator rule; `%ENVIRONMENT(...)%` and `%COALESCE(...)%` are refused on purpose.
- An edge gateway's routes to a collector are neither logged nor traced.
- Translation: nothing set without telemetry; each role gets what its `roles` say, pointed at the
  collector's cluster, which that role's CDS carries; gRPC and mobile never; an unreachable
  collector is left out with a warning; a rule's override lands on its route.
- A real Envoy (`--mode validate`) accepts every operator of the list, the route filter and the tracer.
- A telemetry change is a change of its own part, reaching the roles that take telemetry only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import ENVOY_COMMAND_OPERATORS, Mesh, ProxyGroup, ProxyRole, format_problems
from meshplane.model.changes import MeshChanges
from meshplane.xds.translate import ROLES, translate
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO, envoy_binary
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap
from tests.ports import free_port

HCM = http_connection_manager_pb2.HttpConnectionManager

SERVICES = """\
services:
  - name: web
    port: 8080
    endpoints: [{address: 127.0.0.1, port: 9000}]
  - name: db
    ports: [{name: tcp, port: 5432, protocol: tcp}]
    endpoints: [{address: 127.0.0.1, port: 9001}]
  - name: otel
    namespace: observability
    ports: [{name: otlp, port: 4317, protocol: grpc}, {name: http, port: 4318, protocol: http1}]
    endpoints: [{address: 127.0.0.1, ports: {otlp: 9002, http: 9003}}]
routes:
  - name: web
    service: web
    rules:
      - {name: health, match: {path: {exact: /healthz}}, to: [web]}
      - {name: rest, to: [web]}
"""

TELEMETRY = """\
telemetry:
  collectors:
    - {name: otel, service: observability/otel, port: otlp}
  access_logs:
    - to: stdout
    - to: collector
      collector: otel
      json: {method: "%REQ(:METHOD)%", status: "%RESPONSE_CODE%", route: "%ROUTE_NAME%"}
      roles: [sidecar, edge-gateway]
  tracing:
    - {collector: otel, sampling: 25, service_name: shop}
  routes:
    - {route: web, rule: health, access_log: false, sampling: 0}
"""

OTEL_CLUSTER = "otel.observability:4317"


def mesh_of(*texts: str) -> Mesh:
    """The mesh of policy files `texts` (each must parse without errors)."""
    parsed = [parse_policy(text, f"p{index}.yaml") for index, text in enumerate(texts)]
    for one in parsed:
        assert one.errors == ()
    return Mesh.of(
        [s for one in parsed for s in one.services],
        [r for one in parsed for r in one.routes],
        sites=[s for one in parsed for s in one.sites],
        telemetry=type(parsed[0].telemetry).joined([one.telemetry for one in parsed]),
    )


def hcms(resources: Any) -> list[Any]:
    found = []
    for listener in resources[TypeUrl.LISTENER]:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.Is(HCM.DESCRIPTOR):
                    hcm = HCM()
                    network_filter.typed_config.Unpack(hcm)
                    found.append(hcm)
    return found


def routes_named(resources: Any) -> dict[str, Any]:
    return {
        route.name: route
        for config in resources[TypeUrl.ROUTE]
        for vhost in config.virtual_hosts
        for route in vhost.routes
        if route.name
    }


# --- `meshplane validate` refuses each bad input with file:line and a reason ---

BAD = [
    pytest.param(
        "telemetry:\n  access_logs:\n    - {to: collector, collector: nope}\n",
        ":3: access log 1",
        "unknown collector 'nope'",
        id="unknown-collector",
    ),
    pytest.param(
        "telemetry:\n  collectors: [{name: otel, service: observability/otel, port: otlp}]\n"
        "  tracing:\n    - collector: otel\n      sampling: 150\n",
        ":5: telemetry.tracing.sampling",
        "'150' is not a percent from 0 to 100",
        id="sampling-out-of-range",
    ),
    pytest.param(
        'telemetry:\n  access_logs:\n    - to: stdout\n      format: "%REQ(:PATH)% %NOPE%"\n',
        ":4: telemetry.access_logs.format",
        "unknown operator %NOPE%",
        id="unknown-operator",
    ),
    pytest.param(
        'telemetry:\n  access_logs:\n    - to: stdout\n      json: {code: "%RESPONSE_CODE", ok: "%REQ(x-a)%"}\n',
        ":4: telemetry.access_logs.json.code",
        "starts no %OPERATOR%",
        id="stray-percent-in-json",
    ),
    pytest.param(
        "telemetry:\n  collectors:\n    - {name: otel, service: observability/otel, port: http}\n",
        ":3: collector otel",
        "port http of observability/otel is http1, not grpc",
        id="collector-port-not-grpc",
    ),
    pytest.param(
        "telemetry:\n  collectors:\n    - {name: otel, service: observability/otel, port: otlp}\n"
        "    - {name: otel, service: observability/otel, port: 4317}\n",
        ":4: collector otel is defined twice",
        "",
        id="duplicate-collector",
    ),
    pytest.param(
        "telemetry:\n  routes:\n    - {route: web, rule: nope, sampling: 5}\n",
        ":3: telemetry of route web rule nope",
        "route web has no rule named 'nope'",
        id="unknown-rule",
    ),
    pytest.param(
        "telemetry:\n  access_logs:\n    - {to: file, path: relative.log}\n",
        ":3: access log 1",
        "needs an absolute `path`",
        id="relative-file",
    ),
    pytest.param(
        "telemetry:\n  access_logs:\n    - {to: stdout, roles: [grpc]}\n",
        ":3: access log 1",
        "role grpc takes no access logs or tracing",
        id="grpc-role",
    ),
    pytest.param(
        "telemetry:\n  access_logs:\n    - {to: stdout, roles: []}\n",
        ":3: telemetry.access_logs.roles",
        "an empty list means no role: leave `roles` out for every role",
        id="empty-roles",
    ),
    pytest.param(
        "telemetry:\n  collectors: [{name: otel, service: observability/otel, port: otlp}]\n"
        "  tracing:\n    - {collector: otel, roles: []}\n",
        ":4: telemetry.tracing.roles",
        "an empty list means no role",
        id="empty-tracing-roles",
    ),
    pytest.param(
        'telemetry:\n  access_logs:\n    - to: stdout\n      format: "%REQ(:PATH)% %ENVIRONMENT(AWS_SECRET)%"\n',
        ":4: telemetry.access_logs.format",
        "%ENVIRONMENT(...)% is refused: it would make every proxy write its environment variables",
        id="environment-operator",
    ),
]


def meshplane_validate(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplane", "validate", "--config", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        cwd=REPO,
    )


@pytest.mark.parametrize(("text", "where", "reason"), BAD)
def test_validate_refuses_bad_telemetry_with_file_line_and_reason(
    tmp_path: Path, text: str, where: str, reason: str
) -> None:
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "telemetry.yaml").write_text(text)
    result = meshplane_validate(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if f"{tmp_path / 'telemetry.yaml'}{where}" in line]
    assert lines, result.stderr
    assert reason in lines[0], result.stderr


def test_validate_accepts_good_telemetry(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "telemetry.yaml").write_text(TELEMETRY)
    result = meshplane_validate(tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        pytest.param("%REQ(x-foo)% %RESP(x-bar):10% %START_TIME(%s.%3f)%", [], id="arguments-and-lengths"),
        pytest.param("100%% done %RESPONSE_CODE%\n", [], id="escaped-percent"),
        pytest.param("%UPSTREAM_CLUSTER% %ROUTE_NAME% %TRACE_ID%", [], id="plain"),
        pytest.param("%METADATA(ROUTE:meshplane)% %SPAN_ID% %PATH(WQ:ORIG):64%", [], id="newer-operators"),
        pytest.param('%CEL(request.headers["x"].size())%', [], id="cel-with-parentheses"),
        pytest.param('%CEL(size("a)"))%', [], id="cel-with-a-parenthesis-in-a-string"),
        pytest.param("%NOT_AN_OPERATOR%", ["unknown operator %NOT_AN_OPERATOR%"], id="unknown"),
        pytest.param("%req(x)%", ["a '%' at character 1 starts no %OPERATOR% (write %% for a literal %)"], id="case"),
        pytest.param("50% off", ["a '%' at character 3 starts no %OPERATOR% (write %% for a literal %)"], id="stray"),
        pytest.param("%REQ%", ["%REQ% needs an argument: %REQ(...)%"], id="argument-required"),
        pytest.param("%DURATION(abc)%", ["%DURATION% takes no argument (found '(abc)')"], id="argument-forbidden"),
        pytest.param("%DURATION:10%", ["%DURATION% takes no length (found ':10')"], id="length-forbidden"),
        pytest.param(
            "%REQ(x-foo %DURATION%",
            ["the '(' after %REQ at character 1 is never closed by ')%' on its line"],
            id="unclosed",
        ),
        pytest.param(
            "%ENVIRONMENT(HOME)%",
            [
                "%ENVIRONMENT(...)% is refused: it would make every proxy write its environment variables "
                "(secrets included) to wherever its access log goes"
            ],
            id="environment",
        ),
    ],
)
def test_format_operators(text: str, problems: list[str]) -> None:
    assert format_problems(text) == problems


# Formats where meshplane and Envoy must agree, both ways: refused by one exactly when refused by
# the other (`envoy --mode validate` on a file access log with the format). Each names a rule:
# which operators take arguments or lengths, what an argument may hold, how the arguments end.
AGREED_FORMATS = [
    "%REQ%",
    "%REQ()%",
    "%DURATION(abc)%",
    "%DURATION()%",
    "%DURATION:10%",
    "%PATH:10%",
    "%REQ(x):10%",
    "%REQ(x):00%",
    "%RESP(x):18446744073709551615%",
    "%RESP(x):99999999999999999999%",
    "%START_TIME(x):3%",
    "%START_TIME(%s.%3f)%",
    "%START_TIME(%Y-%m-%dT%H:%M:%S)%",
    "%START_TIME(%n)%",
    "%START_TIME(a)b)%",
    "%EMIT_TIME_LOCAL(%s)%",
    "%METADATA(ROUTE:meshplane)%",
    "%METADATA(ROUTE)%",
    "%METADATA(route:meshplane)%",
    "%METADATA(UPSTREAM_HOST:envoy.lb:canary)%",
    '%CEL(request.headers["x"].size())%',
    '%CEL(size("a)"))%',
    '%CEL(size("a)")%',
    "%CEL()%",
    "%CEL(request.path):5%",
    "%CEL((1))%",
    "%REQ(a)b)%",
    "%REQ(x))%",
    "%REQ(x)%%",
    "%REQ(x)%%%",
    "%REQ(x)abc%",
    "%REQ(x-foo",
    "%REQ(a\nb)%",
    "%REQ(a?b)%",
    "%REQ(a?b?c)%",
    "%REQ(a b)%",
    "%REQ(a/b)%",
    "%REQ(a~b)%",
    "%REQ(:method)%",
    "%REQ(:)%",
    "%REQ(a:b)%",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "%TRAILER(grpc-status):4%",
    "%FILTER_STATE(key:PLAIN)%",
    "%FILTER_STATE(key:BAD)%",
    "%FILTER_STATE(key:FIELD)%",
    "%FILTER_STATE(key:FIELD:f)%",
    "%FILTER_STATE(:PLAIN)%",
    "%UPSTREAM_FILTER_STATE(key):3%",
    "%DYNAMIC_METADATA(ns:key):10%",
    "%UPSTREAM_METADATA(ns:key):3%",
    "%CLUSTER_METADATA(ns:key)%",
    "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:ms)%",
    "%COMMON_DURATION(DS_RX_BEG:DS_TX_END)%",
    "%COMMON_DURATION(a:b:xs)%",
    "%COMMON_DURATION(a)%",
    "%GRPC_STATUS(NUMBER)%",
    "%GRPC_STATUS(x)%",
    "%GRPC_STATUS:3%",
    "%PATH(WQ:ORIG)%",
    "%PATH(ORIG)%",
    "%QUERY_PARAMS(DECODED)%",
    "%QUERY_PARAMS(x)%",
    "%QUERY_PARAM(a b):3%",
    "%REQUESTED_SERVER_NAME(SNI_FIRST)%",
    "%REQUESTED_SERVER_NAME(x)%",
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(16)%",
    "%DOWNSTREAM_REMOTE_ADDRESS(16)%",
    "%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%",
    "%STREAM_INFO_REQ(a b)%",
    "%CUSTOM_FLAGS% %SPAN_ID% %UPSTREAM_HOSTS_ATTEMPTED% %TLS_JA4_FINGERPRINT% %FILTER_CHAIN_NAME%",
    "%req(x)%",
    "% REQ %",
    "%",
    "50% off",
    "100%% done",
    "%RESPONSE_CODE%x%",
    "%NOPE%",
    "%_%",
]


def envoy_accepts_format(text: str, directory: Path) -> tuple[bool, str]:
    """Whether Envoy (`--mode validate`) takes `text` as the format of a file access log, and its output."""
    log = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(directory / "access.log"),
            "log_format": {"text_format_source": {"inline_string": text + "\n"}},
        },
    }
    hcm = {
        "@type": f"type.googleapis.com/{HCM.DESCRIPTOR.full_name}",
        "stat_prefix": "formats",
        "route_config": {"name": "formats"},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
        "access_log": [log],
    }
    listener = {
        "name": "formats",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    path = directory / "bootstrap.json"
    path.write_text(json.dumps({"static_resources": {"listeners": [listener]}}))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("text", AGREED_FORMATS)
def test_meshplane_refuses_a_format_exactly_when_envoy_does(text: str, tmp_path: Path) -> None:
    accepted, output = envoy_accepts_format(text, tmp_path)
    refused = format_problems(text)
    assert (refused == []) == accepted, f"meshplane: {refused}\nenvoy: {output}"


@pytest.mark.parametrize(
    "text",
    ["%ENVIRONMENT(HOME)%", '%COALESCE({"operators": ["RESPONSE_CODE"]})%'],
)
def test_operators_envoy_takes_but_meshplane_refuses_on_purpose(text: str, tmp_path: Path) -> None:
    accepted, output = envoy_accepts_format(text, tmp_path)
    assert accepted, output
    [reason] = format_problems(text)
    assert "is refused" in reason


# --- translation ---


def test_without_telemetry_no_listener_or_route_carries_any() -> None:
    mesh = mesh_of(SERVICES)
    for group in (ProxyGroup(), ProxyGroup(ProxyRole.GRPC)):
        resources = translate(mesh, group).resources
        for hcm in hcms(resources):
            assert not hcm.access_log
            assert not hcm.HasField("tracing")
        for route in routes_named(resources).values():
            assert not route.HasField("tracing")
            assert not route.HasField("metadata")


def test_a_sidecar_gets_every_log_and_tracing_pointed_at_the_collectors_cluster() -> None:
    translation = translate(mesh_of(SERVICES, TELEMETRY), ProxyGroup())
    resources = translation.resources
    assert translation.warnings == ()
    assert OTEL_CLUSTER in {cluster.name for cluster in resources[TypeUrl.CLUSTER]}
    [hcm] = hcms(resources)
    stdout, otel = hcm.access_log
    assert stdout.name == "envoy.access_loggers.stdout"
    stream = stream_pb2.StdoutAccessLog()
    stdout.typed_config.Unpack(stream)
    assert stream.log_format.text_format_source.inline_string.startswith('[%START_TIME%] "%REQ(:METHOD)%')
    assert stream.log_format.text_format_source.inline_string.endswith("%ROUTE_NAME% %UPSTREAM_CLUSTER%\n")
    config = logs_service_pb2.OpenTelemetryAccessLogConfig()
    otel.typed_config.Unpack(config)
    assert config.common_config.grpc_service.envoy_grpc.cluster_name == OTEL_CLUSTER
    assert [(kv.key, kv.value.string_value) for kv in config.attributes.values] == [
        ("method", "%REQ(:METHOD)%"),
        ("status", "%RESPONSE_CODE%"),
        ("route", "%ROUTE_NAME%"),
    ]
    # One rule turns its log off, so each HTTP log skips routes marked so.
    assert stdout.filter.extension_filter.name == "envoy.access_loggers.extension_filters.cel"
    assert hcm.tracing.random_sampling.value == 25
    assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
    # The TCP proxy logs too, with no route filter (it has no route).
    tcp = tcp_proxy_pb2.TcpProxy()
    [db] = [listener for listener in resources[TypeUrl.LISTENER] if listener.name == "outbound_tcp_5432"]
    db.filter_chains[0].filters[0].typed_config.Unpack(tcp)
    assert [log.name for log in tcp.access_log] == [
        "envoy.access_loggers.stdout",
        "envoy.access_loggers.open_telemetry",
    ]
    assert not tcp.access_log[0].HasField("filter")
    health = routes_named(resources)["health"]
    assert health.tracing.random_sampling.numerator == 0
    assert health.metadata.filter_metadata["meshplane"]["access_log"] is False
    rest = routes_named(resources)["rest"]
    assert not rest.HasField("tracing")
    assert not rest.HasField("metadata")


SITE = "sites:\n  - {id: gym, region: eu, gateways: ['127.0.0.1:15080'], device_ranges: ['10.20.0.0/16']}\n"


@pytest.mark.parametrize(
    ("group", "logs"),
    [
        pytest.param(ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym"), 2, id="edge-gateway"),
        pytest.param(ProxyGroup(ProxyRole.DEVICE, site="gym"), 1, id="device"),
    ],
)
def test_edge_roles_get_what_their_roles_say(group: ProxyGroup, logs: int) -> None:
    translation = translate(mesh_of(SERVICES, TELEMETRY, SITE), group)
    assert [w for w in translation.warnings if "collector" in w or "tracing" in w] == []
    assert OTEL_CLUSTER in {cluster.name for cluster in translation.resources[TypeUrl.CLUSTER]}
    found = hcms(translation.resources)
    assert found
    for hcm in found:  # the device is not in the collector log's roles: stdout only
        assert len(hcm.access_log) == logs
        assert hcm.tracing.random_sampling.value == 25
    assert routes_named(translation.resources)["health"].tracing.random_sampling.numerator == 0


def vhost_routes(resources: Any, vhost: str) -> list[Any]:
    return [
        route
        for config in resources[TypeUrl.ROUTE]
        for v in config.virtual_hosts
        if v.name == vhost
        for route in v.routes
    ]


def test_an_edge_gateway_neither_logs_nor_traces_what_devices_send_to_collectors() -> None:
    # Access logs on, no rule turning one off: only the collector's routes are quiet.
    telemetry = TELEMETRY.replace("  routes:\n    - {route: web, rule: health, access_log: false, sampling: 0}\n", "")
    mesh = mesh_of(SERVICES, telemetry, SITE)
    gateway = translate(mesh, ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym")).resources
    for hcm in hcms(gateway):
        assert [log.filter.extension_filter.name for log in hcm.access_log] == [
            "envoy.access_loggers.extension_filters.cel"
        ] * 2
    otel = vhost_routes(gateway, "otel.observability:4317") + vhost_routes(gateway, "otel.observability:4318")
    assert len(otel) == 2
    for route in otel:
        assert route.metadata.filter_metadata["meshplane"]["access_log"] is False
        for sampling in (route.tracing.client_sampling, route.tracing.random_sampling, route.tracing.overall_sampling):
            assert sampling.numerator == 0
    web = vhost_routes(gateway, "web.default:8080")
    assert web
    for route in web:
        assert not route.HasField("metadata")
        assert not route.HasField("tracing")
    # A sidecar's traffic to a collector is its application's: logged and traced as any other.
    sidecar = translate(mesh, ProxyGroup()).resources
    for route in vhost_routes(sidecar, "otel.observability:4317"):
        assert not route.HasField("metadata")
        assert not route.HasField("tracing")


@pytest.mark.parametrize("role", [ProxyRole.GRPC, ProxyRole.MOBILE])
def test_grpc_and_mobile_get_no_telemetry(role: ProxyRole) -> None:
    group = ProxyGroup(role, site="gym" if role is ProxyRole.MOBILE else "")
    with_telemetry = translate(mesh_of(SERVICES, TELEMETRY, SITE), group)
    without = translate(mesh_of(SERVICES, SITE), group)
    assert with_telemetry == without
    assert not ROLES[role].depends.telemetry


def test_a_collector_gone_from_the_mesh_is_left_out_with_a_warning() -> None:
    mesh = mesh_of(SERVICES, TELEMETRY)
    gone = dataclasses.replace(mesh, services=tuple(s for s in mesh.services if s.name != "otel"))
    translation = translate(gone, ProxyGroup())
    [hcm] = hcms(translation.resources)
    assert [log.name for log in hcm.access_log] == ["envoy.access_loggers.stdout"]
    assert not hcm.HasField("tracing")
    assert any("access log 2" in w and "no service observability/otel" in w for w in translation.warnings)
    assert any("tracing" in w and "no tracing" in w for w in translation.warnings)


def test_envoy_accepts_every_operator_the_route_filter_and_the_tracer(tmp_path: Path) -> None:
    arguments = {
        "REQ": "(:method)",
        "RESP": "(content-type)",
        "TRAILER": "(grpc-status)",
        "REQUEST_HEADER": "(:method)",
        "RESPONSE_HEADER": "(content-type)",
        "RESPONSE_TRAILER": "(grpc-status)",
        "STREAM_INFO_REQ": "(:path)",
        "QUERY_PARAM": "(page)",
        "DYNAMIC_METADATA": "(envoy.lb:key)",
        "CLUSTER_METADATA": "(envoy.lb:key)",
        "UPSTREAM_METADATA": "(envoy.lb:key)",
        "METADATA": "(ROUTE:meshplane)",
        "FILTER_STATE": "(some.key)",
        "UPSTREAM_FILTER_STATE": "(some.key)",
        "COMMON_DURATION": "(DS_RX_BEG:DS_TX_END:ms)",
        "CEL": "(request.path)",
        "START_TIME": "(%s.%3f)",
    }
    fields = "\n".join(
        f'        f{index}: "%{operator}{arguments.get(operator, "")}%"'
        for index, operator in enumerate(sorted(ENVOY_COMMAND_OPERATORS))
    )
    text = f"telemetry:\n  access_logs:\n    - to: file\n      path: {tmp_path / 'access.log'}\n      json:\n{fields}\n"
    mesh = mesh_of(SERVICES, TELEMETRY, text)
    bootstrap = validation_bootstrap(translate(mesh, ProxyGroup()))
    result = envoy_validate(bootstrap, tmp_path / "bootstrap.json")
    assert result.returncode == 0, result.stdout + result.stderr


# --- change sets ---


def test_a_telemetry_change_is_its_own_part() -> None:
    before = mesh_of(SERVICES)
    after = mesh_of(SERVICES, TELEMETRY)
    assert MeshChanges.between(before, after) == MeshChanges(telemetry=True)
    assert not MeshChanges(telemetry=True).endpoints_only
    assert MeshChanges.everything().covers(MeshChanges(telemetry=True))
    merged = Inventory()
    merged.merge(Contents(files=before))
    changes = merged.merge(Contents(files=after, changes=MeshChanges(telemetry=True))).changes
    assert changes.telemetry
    assert changes.covers(MeshChanges.between(before, after))


@pytest.mark.parametrize("role", list(ProxyRole))
def test_the_roles_declaring_telemetry_are_those_it_changes(role: ProxyRole) -> None:
    group = {
        ProxyRole.EDGE_GATEWAY: ProxyGroup(role, outbound_port=15080, site="gym"),
        ProxyRole.DEVICE: ProxyGroup(role, site="gym"),
        ProxyRole.MOBILE: ProxyGroup(role, site="gym"),
    }.get(role, ProxyGroup(role))
    changed = translate(mesh_of(SERVICES, TELEMETRY, SITE), group) != translate(mesh_of(SERVICES, SITE), group)
    assert changed == ROLES[role].depends.telemetry


async def test_the_policy_source_reports_a_telemetry_edit(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(SERVICES)
    source = PolicyFileSource(tmp_path)
    assert await source.load()
    before = source.mesh
    source.take_changes()
    (tmp_path / "telemetry.yaml").write_text(TELEMETRY)
    assert await source.load()
    changes = source.take_changes()
    assert source.mesh is not None
    assert before is not None
    assert changes.telemetry
    assert changes.covers(MeshChanges.between(before, source.mesh))
    assert source.mesh.telemetry.tracing_of(ProxyRole.SIDECAR) is not None


def test_an_open_world_collector_missing_from_the_merge_is_a_problem() -> None:
    files = mesh_of(SERVICES, TELEMETRY)
    without_collector = dataclasses.replace(files, services=tuple(s for s in files.services if s.name != "otel"))
    merged = Inventory().merge(Contents(files=without_collector))
    assert any(p.subject == "collector otel" and "no access log or tracing to it" in p.message for p in merged.problems)
    assert merged.mesh.telemetry == files.telemetry  # kept: it comes back when the service does
