"""`meshplane status`, `meshplane status sources` and `meshplane config`, run as processes against a
status endpoint over hand-made state (the real-Envoy run is in tests/test_status_envoy.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2

from meshplane.model import ProxyGroup, SourceStatus
from meshplane.status import console
from meshplane.status.document import StatusInputs, status_document
from meshplane.status.http import status_app
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import PublishState
from meshplane.xds.server.tracking import StreamKind, StreamRegistry
from meshplane.xds.snapshot import Resource
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO, free_port

TOKEN = "t0ken"


def registry_with_two_proxies() -> StreamRegistry:
    registry = StreamRegistry()
    good = registry.open(StreamKind.DELTA_ADS, "sidecar-good", "web", ProxyGroup(), "envoy", "peer-1")
    bad = registry.open(StreamKind.SOTW_ADS, "sidecar-bad", "web", ProxyGroup(), "envoy", "peer-2")
    cluster = Resource.of(TypeUrl.CLUSTER, "web.default:8080", cluster_pb2.Cluster(name="web.default:8080"))
    for track in (good, bad):
        registry.sent(track, TypeUrl.CLUSTER, "c1", "1", (cluster,))
        registry.acked(track, TypeUrl.CLUSTER, "c1")
        registry.sent(track, TypeUrl.ROUTE, "r1", "2", ())
        registry.acked(track, TypeUrl.ROUTE, "r1")
    registry.sent(bad, TypeUrl.ROUTE, "r2", "3", ())
    registry.nacked(bad, TypeUrl.ROUTE, "r2", "regex '/x\\Z' is not valid RE2\nsecond line")
    registry.sent(good, TypeUrl.LISTENER, "l1", "4", ())  # not answered yet
    return registry


SOURCES = [
    SourceStatus(
        name="policy-files",
        synced=True,
        last_success=1.0,
        last_attempt=2.0,
        errors=("policy/routes.yaml:4: route web-routes: unknown service 'nope'",),
        counts={"services": 2, "routes": 1},
    )
]


def inputs(registry: StreamRegistry) -> StatusInputs:
    return StatusInputs(
        sources=lambda: SOURCES,
        publish_state=lambda: PublishState(published_at=1.0),
        cache=SnapshotCache(),
        registry=registry,
        admin_token=TOKEN,
    )


@pytest.fixture
async def server() -> AsyncIterator[str]:
    runner = web.AppRunner(status_app(inputs(registry_with_two_proxies())), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def meshplane(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a process; awaited, so the in-process endpoint keeps answering meanwhile."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "MESHPLANE_ADMIN_TOKEN": "", "MESHPLANE_SERVER": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out.decode(), err.decode())


def test_the_table_has_a_row_per_proxy_and_a_column_per_type() -> None:
    document = status_document(inputs(registry_with_two_proxies()))
    headers, rows = console.proxy_rows(document)
    assert headers[:3] == ["NAME", "ROLE", "SITE"]
    assert headers[3:8] == ["CDS", "EDS", "LDS", "RDS", "SDS"]
    by_name = {row[0]: dict(zip(headers, row, strict=True)) for row in rows}
    assert by_name["sidecar-bad"]["RDS"] == "NACKED"
    assert by_name["sidecar-bad"]["EDS"] == "NOT SENT"
    assert by_name["sidecar-good"]["LDS"] == "STALE"
    assert by_name["sidecar-good"]["CDS"] == "SYNCED"
    assert by_name["sidecar-good"]["KIND"] == "delta-ads"
    # One line per NACK, Envoy's message on one line.
    assert console.nack_lines(document) == [
        "sidecar-bad RDS NACKED version r2: regex '/x\\Z' is not valid RE2 second line"
    ]


def test_plain_text_off_a_terminal_and_rich_on_one() -> None:
    document = status_document(inputs(registry_with_two_proxies()))
    headers, rows = console.proxy_rows(document)
    plain = io.StringIO()
    console.print_table(headers, rows, plain, rich=plain.isatty())
    assert "\x1b[" not in plain.getvalue()
    assert plain.getvalue().splitlines()[0].split() == ["NAME", "ROLE", "SITE", *headers[3:-2], "KIND", "CONNECTED"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    console.print_table(headers, rows, terminal, rich=terminal.isatty())
    assert "\x1b[" in terminal.getvalue()  # colours: NACKED in red, SYNCED in green
    assert "NACKED" in terminal.getvalue()


async def test_status_as_a_process_prints_the_table_and_the_nacks(server: str) -> None:
    result = await meshplane("status", "--server", server)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ROLE", "SITE", "CDS"]
    bad = next(line for line in lines if line.startswith("sidecar-bad"))
    assert bad.split()[:4] == ["sidecar-bad", "sidecar", "-", "SYNCED"]
    assert "NACKED" in bad
    assert "NACKs:" in result.stdout
    assert "sidecar-bad RDS NACKED version r2" in result.stdout

    stale = await meshplane("status", "--server", server, "--stale")
    assert [line.split()[0] for line in stale.stdout.splitlines()[1:] if line.startswith("sidecar")] == [
        "sidecar-bad",
        "sidecar-good",
    ]
    none = await meshplane("status", "--server", server, "--role", "grpc")
    assert none.stdout.startswith("no proxy matches")
    as_json = await meshplane("status", "--server", server, "-o", "json")
    assert [proxy["node"] for proxy in json.loads(as_json.stdout)["proxies"]] == ["sidecar-bad", "sidecar-good"]


async def test_status_sources_and_config_as_processes(server: str) -> None:
    sources = await meshplane("status", "sources", "--server", server)
    assert sources.returncode == 0, sources.stderr
    assert sources.stdout.splitlines()[0].split() == ["SOURCE", "SYNCED", "LAST", "SYNC", "OBJECTS", "ERRORS", "NOTES"]
    assert "policy-files: policy/routes.yaml:4: route web-routes: unknown service 'nope'" in sources.stdout
    as_json = await meshplane("status", "sources", "--server", server, "--output", "json")
    assert json.loads(as_json.stdout)[0]["name"] == "policy-files"

    config = await meshplane("config", "sidecar-good", "--server", server)
    assert config.returncode == 0, config.stderr
    assert "web.default:8080" in config.stdout
    assert "withheld without the admin token: SDS" in config.stdout
    dump = json.loads((await meshplane("config", "sidecar-good", "--server", server, "-o", "json")).stdout)
    assert dump["types"]["CDS"]["resources"][0]["name"] == "web.default:8080"
    wrong = await meshplane("config", "sidecar-good", "--server", server, "--admin-token", "nope")
    assert wrong.returncode == 1
    assert "401" in wrong.stderr
    right = await meshplane("config", "sidecar-good", "--server", server, "--admin-token", TOKEN, "-o", "json")
    assert json.loads(right.stdout)["withheld"] == []
    missing = await meshplane("config", "nobody", "--server", server)
    assert missing.returncode == 1
    assert "no proxy with node id 'nobody'" in missing.stderr
    both = await meshplane("config", "sidecar-good", "--role", "sidecar", "--server", server)
    assert both.returncode == 2


async def test_an_unreachable_server_is_an_error_not_a_traceback() -> None:
    result = await meshplane("status", "--server", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach the status endpoint" in result.stderr
    assert "Traceback" not in result.stderr
