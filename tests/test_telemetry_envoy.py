"""Access logs and tracing through real Envoys: policy files → control plane → Envoy → an OTLP receiver.

The receiver (tests/otlp_receiver.py) is what a collector is: a gRPC server of OTLP logs and
traces, reached by Envoy through the collector service's cluster. Each test proves what Envoy
sent there (or wrote to stdout or a file). What Envoy must *not* send is proved with a barrier:
once a later request's record or span has arrived, one an earlier request would have produced
would be there too. That holds because each Envoy here runs one worker thread
(`--concurrency 1`, checked by `one_worker`): every request, on whatever connection, is handled
by that worker, one after another (each is answered before the next is sent), and its access
loggers and tracer each send in order.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from tests.envoy_harness import Backend, Envoy
from tests.otlp_receiver import LogEntry, OtlpReceiver, SpanEntry, scoped
from tests.test_envoy_integration import Mesh, mesh  # noqa: F401  (fixture)

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

WEB_CLUSTER = "web.default:8080"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    await otlp.start()
    try:
        yield otlp
    finally:
        await otlp.stop()


def quick_flush(config: dict[str, Any]) -> None:
    """Envoy's tracer sends spans every 5 s, or per 5 spans: every span at once here (a test waits
    for what it sent, not for a timer)."""
    layer = {"tracing.opentelemetry.min_flush_spans": 1, "tracing.opentelemetry.flush_interval_ms": 100}
    runtime = config.setdefault("layered_runtime", {"layers": []})
    runtime["layers"].insert(0, {"name": "telemetry-test", "static_layer": layer})


def services(backend: Backend, receiver: OtlpReceiver, extra: str = "") -> str:
    return (
        "services:\n"
        f"  - name: web\n    port: 8080\n    endpoints: [{{address: 127.0.0.1, port: {backend.port}}}]\n"
        "  - name: otel\n    namespace: observability\n    ports: [{name: otlp, port: 4317, protocol: grpc}]\n"
        f"    endpoints: [{{address: 127.0.0.1, port: {receiver.port}}}]\n" + extra
    )


ROUTES = """\
routes:
  - name: web
    service: web
    rules:
      - {name: hello, match: {path: {prefix: /hello}}, to: [web]}
      - {name: quiet, match: {path: {prefix: /quiet}}, to: [web]}
      - {name: traced, match: {path: {prefix: /traced}}, to: [web]}
      - {name: rest, to: [web]}
"""


async def get(envoy: Envoy, path: str, host: str = "web", headers: dict[str, str] | None = None) -> int:
    status, _, _ = await envoy.request(host, path, headers)
    return status


async def started(mesh: Mesh, node_id: str, **kwargs: Any) -> Envoy:  # noqa: F811
    """An Envoy of `mesh` with one worker: what makes this module's barriers hold."""
    envoy = await mesh.envoy(node_id, True, concurrency=1, **kwargs)
    await one_worker(envoy)
    return envoy


async def one_worker(envoy: Envoy) -> None:
    info = json.loads(await envoy.admin("/server_info"))
    assert info["command_line_options"]["concurrency"] == 1, info["command_line_options"]


async def routed(envoy: Envoy, path: str = "/hello/ready") -> bool:
    return await get(envoy, path) == 200


def logs_with_path(receiver: OtlpReceiver, path: str) -> list[LogEntry]:
    return [entry for entry in receiver.logs if entry.attributes.get("path") == path]


async def test_access_logs_reach_the_collector_stdout_and_a_file(
    mesh: Mesh,  # noqa: F811
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    backend = await mesh.backend("web")
    access_log = tmp_path / "access.log"
    mesh.write("services.yaml", services(backend, receiver) + ROUTES)
    mesh.write(
        "telemetry.yaml",
        f"""\
telemetry:
  collectors: [{{name: otel, service: observability/otel}}]
  access_logs:
    - to: collector
      collector: otel
      json:
        route: "%ROUTE_NAME%"
        upstream: "%UPSTREAM_CLUSTER%"
        code: "%RESPONSE_CODE%"
        method: "%REQ(:METHOD)%"
        path: "%REQ(:PATH)%"
    - {{to: file, path: {access_log}}}
    - {{to: stdout, format: "meshplane-stdout %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %ROUTE_NAME%"}}
  routes:
    - {{route: web, rule: quiet, access_log: false}}
""",
    )
    envoy = await started(mesh, "sidecar-access-logs")
    await envoy.eventually(lambda: routed(envoy), "the routes of the policy")

    assert await get(envoy, "/quiet/1") == 200  # its rule turns the log off
    assert await get(envoy, "/nowhere", host="nobody.example") == 404  # no route: logged all the same
    assert await get(envoy, "/hello/1") == 200

    async def collected() -> list[LogEntry]:
        return logs_with_path(receiver, "/hello/1")

    [entry] = await envoy.eventually(collected, "the access log record of /hello/1 at the receiver")
    fields = {key: str(value) for key, value in entry.attributes.items()}
    assert fields == {"route": "hello", "upstream": WEB_CLUSTER, "code": "200", "method": "GET", "path": "/hello/1"}
    assert entry.resource.get("log_name") == "meshplane"
    # Barrier: /hello/1 was sent after these, to the same (only) Envoy worker, whose logger sends
    # in order.
    assert logs_with_path(receiver, "/quiet/1") == []
    [unrouted] = logs_with_path(receiver, "/nowhere")
    assert (str(unrouted.attributes["code"]), unrouted.attributes["route"]) == ("404", "-")

    async def written() -> list[str]:
        text = access_log.read_text() if access_log.exists() else ""
        return [line for line in text.splitlines() if "/hello/1" in line]

    [line] = await envoy.eventually(written, "the access log line of /hello/1 in the file")
    default = re.compile(
        r'\[\d{4}-\d\d-\d\dT[\d:.]+Z\] "GET /hello/1 HTTP/1\.1" 200 - 0 \d+ \d+ \d+ "-" "[^"]*" '
        rf'"[0-9a-f-]{{36}}" "web" "127\.0\.0\.1:{backend.port}" hello {re.escape(WEB_CLUSTER)}'
    )
    assert default.fullmatch(line), line
    assert "/quiet/1" not in access_log.read_text()

    async def printed() -> bool:
        return "meshplane-stdout GET /hello/1 200 hello" in envoy.log()

    await envoy.eventually(printed, "the stdout access log line of /hello/1")
    assert "meshplane-stdout GET /quiet/1" not in envoy.log()


def tracing(sampling: int, routes: str = "") -> str:
    return (
        "telemetry:\n"
        "  collectors: [{name: otel, service: observability/otel}]\n"
        f"  tracing: [{{collector: otel, sampling: {sampling}, service_name: shop}}]\n" + routes
    )


# The sidecar traces every request it starts; the edge gateway behind it starts none (sampling 0),
# except on the rule `traced`, which traces every request it takes.
GATEWAY_TRACING = """\
sites: [{id: gym, region: local}]
telemetry:
  collectors: [{name: otel, service: observability/otel}]
  tracing:
    - {collector: otel, sampling: 100, service_name: shop-sidecars, roles: [sidecar]}
    - {collector: otel, sampling: 0, service_name: shop-gateways, roles: [edge-gateway]}
  routes:
    - {route: web, rule: traced, sampling: 100}
"""
SAMPLED_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED_PARENT = "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-00"


def spans_ending(receiver: OtlpReceiver, suffix: str) -> list[SpanEntry]:
    return [span for span in receiver.spans if str(span.attributes.get("http.url", "")).endswith(suffix)]


async def edge_gateway(mesh: Mesh, node_id: str) -> Envoy:  # noqa: F811
    return await started(
        mesh,
        node_id,
        template="edge-gateway.yaml",
        metadata={"site": "gym", "listen_address": "127.0.0.1"},
        patch=quick_flush,
    )


async def test_a_trace_a_proxy_started_crosses_a_proxy_at_sampling_zero_and_a_bare_traceparent_does_not(
    mesh: Mesh,  # noqa: F811
    receiver: OtlpReceiver,
) -> None:
    # `front` through the sidecar's outbound listener → the edge gateway's listener, as `web` →
    # the backend. Each role traces under its own service name.
    backend = await mesh.backend("web")
    gateway = await edge_gateway(mesh, "gateway-b")
    front = f"  - name: front\n    port: 8080\n    endpoints: [{{address: 127.0.0.1, port: {gateway.outbound_port}}}]\n"
    hop = "  - name: front\n    service: front\n    rules: [{name: hop, to: [front], rewrite: {hostname: web}}]\n"
    mesh.write("services.yaml", services(backend, receiver, front) + ROUTES + hop)
    mesh.write("telemetry.yaml", GATEWAY_TRACING)
    sidecar = await started(mesh, "sidecar-a", patch=quick_flush)
    await sidecar.eventually(lambda: routed(gateway), "the edge gateway's routes")
    await sidecar.eventually(lambda: routed(sidecar), "the sidecar's routes")

    # The sidecar decides to trace; the gateway, at sampling 0, follows that decision, which
    # came with the request (in the x-request-id the sidecar forwards).
    assert await get(sidecar, "/hello/across", host="front") == 200

    async def linked() -> tuple[SpanEntry, SpanEntry] | None:
        spans = spans_ending(receiver, "/across")
        for parent in spans:
            for child in spans:
                if child.trace_id == parent.trace_id and child.parent_span_id == parent.span_id:
                    return parent, child
        return None

    parent, child = await sidecar.eventually(linked, "two spans of one trace, one the other's parent")
    assert (parent.attributes.get("node_id"), parent.resource.get("service.name")) == ("sidecar-a", "shop-sidecars")
    assert (child.attributes.get("node_id"), child.resource.get("service.name")) == ("gateway-b", "shop-gateways")
    assert child.attributes.get("upstream_cluster") == WEB_CLUSTER

    # A `traceparent` alone is no decision for Envoy: a sampled one does not make the gateway
    # trace, and under an unsampled one it makes no span even on a rule traced at 100 %.
    assert await get(gateway, "/hello/app-parent", headers={"traceparent": SAMPLED_PARENT}) == 200
    assert await get(gateway, "/traced/unsampled", headers={"traceparent": UNSAMPLED_PARENT}) == 200
    assert await get(gateway, "/traced/marker") == 200

    async def marker() -> list[SpanEntry]:
        return spans_ending(receiver, "/traced/marker")

    [span] = await gateway.eventually(marker, "the span of the rule traced at 100 %")
    assert span.attributes.get("node_id") == "gateway-b"
    # Barrier: the marker went last to the gateway's one worker.
    assert spans_ending(receiver, "/app-parent") == []
    assert spans_ending(receiver, "/unsampled") == []


async def test_an_edge_gateway_neither_logs_nor_traces_the_telemetry_devices_export(
    mesh: Mesh,  # noqa: F811
    receiver: OtlpReceiver,
) -> None:
    backend = await mesh.backend("web")
    mesh.write("services.yaml", services(backend, receiver) + ROUTES + "sites: [{id: gym, region: local}]\n")
    logs = '  access_logs: [{to: collector, collector: otel, json: {path: "%REQ(:PATH)%"}}]\n'
    mesh.write("telemetry.yaml", tracing(100, logs))
    gateway = await edge_gateway(mesh, "gateway-quiet")
    await gateway.eventually(lambda: routed(gateway), "the edge gateway's routes")

    # What a device's Envoy sends: an OTLP export to the collector, through the gateway.
    export = logs_service_pb2.ExportLogsServiceRequest()
    scope = scoped(export.resource_logs.add(), "scope_logs").add()
    scoped(scope, "log_records").add().body.string_value = "from-a-device"
    options = [("grpc.default_authority", "otel.observability:4317")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.outbound_port}", options=options) as channel:
        # Even one a device's Envoy decided to trace: its x-request-id says so (Envoy writes the
        # decision into the UUID's version digit, '9' for sampled).
        traced = (("x-request-id", "0af76519-16cd-943d-8448-eb211c80319c"),)
        await logs_service_pb2_grpc.LogsServiceStub(channel).Export(export, timeout=10, metadata=traced)
    assert [entry.body for entry in receiver.logs if entry.body == "from-a-device"] == ["from-a-device"]
    assert await get(gateway, "/hello/marker") == 200

    async def marker() -> bool:
        return bool(logs_with_path(receiver, "/hello/marker")) and bool(spans_ending(receiver, "/hello/marker"))

    await gateway.eventually(marker, "the access log record and the span of /hello/marker")
    # Barrier: the marker went last to the gateway's one worker.
    export_path = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
    assert logs_with_path(receiver, export_path) == []
    assert spans_ending(receiver, export_path) == []


async def test_sampling_zero_sends_no_spans_and_a_rule_can_trace_anyway(
    mesh: Mesh,  # noqa: F811
    receiver: OtlpReceiver,
) -> None:
    backend = await mesh.backend("web")
    mesh.write("services.yaml", services(backend, receiver) + ROUTES)
    mesh.write("telemetry.yaml", tracing(0, "  routes: [{route: web, rule: traced, sampling: 100}]\n"))
    envoy = await started(mesh, "sidecar-sampling", patch=quick_flush)
    await envoy.eventually(lambda: routed(envoy), "the routes of the policy")

    for index in range(10):
        assert await get(envoy, f"/hello/{index}") == 200
    assert await get(envoy, "/traced/marker") == 200

    async def marker() -> list[SpanEntry]:
        return spans_ending(receiver, "/marker")

    await envoy.eventually(marker, "the span of the rule traced at 100 %")
    # Barrier: the marker was sent last, so spans of the requests before it would have come first.
    assert [span.attributes.get("http.url") for span in receiver.spans] == ["http://web/traced/marker"]


async def test_a_collector_that_is_down_never_affects_traffic(
    mesh: Mesh,  # noqa: F811
    receiver: OtlpReceiver,
) -> None:
    backend = await mesh.backend("web")
    mesh.write("services.yaml", services(backend, receiver) + ROUTES)
    logs = '  access_logs: [{to: collector, collector: otel, json: {path: "%REQ(:PATH)%"}}]\n'
    mesh.write("telemetry.yaml", tracing(100, logs))
    envoy = await started(mesh, "sidecar-collector-down", patch=quick_flush)
    await envoy.eventually(lambda: routed(envoy), "the routes of the policy")

    async def exported() -> bool:
        return bool(receiver.spans) and bool(receiver.logs)

    await envoy.eventually(exported, "spans and access logs at the receiver while it is up")
    await receiver.stop()

    requests = 200
    answered = [await get(envoy, f"/hello/down-{index}") for index in range(requests)]
    assert answered.count(200) == requests, answered
    assert backend.hits >= requests
