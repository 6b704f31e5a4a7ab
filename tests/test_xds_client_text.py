"""What a client writes (node ids, NACK messages) reaches /status and the log bounded and escaped.

Through the interface an attacker has: raw gRPC xDS streams, SotW and Delta, against a real
`meshplane serve` process; /status read over HTTP, the log read from the process's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from meshplane.xds.server.service import MAX_REFUSAL_BYTES
from meshplane.xds.server.tracking import MAX_NACK_MESSAGE_BYTES
from tests.edge_plane import running_control_plane
from tests.ports import free_port
from tests.serve_process import STARTED, ServeProcess, serve
from tests.test_xds_keys import settings
from tests.xds_fixtures import CDS, SDS, AdsStream, delta_request, node, request

NACKS = 40
# ~3 MB, with a two-byte character every 1,000 bytes so that a cut may fall inside one.
BIG_MESSAGE = ("é" + "x" * 998) * 3003
BIG_BYTES = len(BIG_MESSAGE.encode())
NACKING_DEADLINE = 120.0  # seconds for all 40 NACKs; they take about one
CUT_MARK = f"… [cut: {BIG_BYTES} bytes in all]"
TIMESTAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
GRPC_CORE_LINE = re.compile(r"[IWEF]\d{4} ")  # gRPC's C core writes its own lines to stderr
# A node id that would forge a log line, clear the screen, and break a line-splitting JSON reader.
EVIL_ID = "evil\n2026-01-01T00:00:00.000Z ERROR meshplane.app: forged line\x1b[2J\r\u2028\u202e"
EVIL_NACK = "bad route\n2026-01-01T00:00:00.000Z ERROR meshplane.app: forged nack\x1b[31m\x00"


def write_policy(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "web.yaml").write_text(
        "services:\n  - {name: web, port: 8080, endpoints: [{address: 127.0.0.1, port: 9}]}\n"
    )
    return directory


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, log_format: str) -> AsyncIterator[tuple[ServeProcess, str]]:
    """`meshplane serve` on a one-service policy in `log_format`, and its xDS address. Its log is
    read with lines of up to 64 MiB: a server that logged a client's megabytes in one line must
    fail the test's assertions, not stall the reader (and then the server, on a full pipe)."""
    xds = f"127.0.0.1:{free_port()}"
    policy = str(write_policy(tmp_path / "policy"))
    started = STARTED if log_format == "text" else '"message": "xDS on port '
    async with serve(
        *("--config", policy, "--log-format", log_format), xds_address=xds, started=started, line_limit=64 << 20
    ) as served:
        yield served, xds


@pytest.fixture
async def text_server(tmp_path: Path) -> AsyncIterator[tuple[ServeProcess, str]]:
    async with serving(tmp_path, "text") as served:
        yield served


@contextlib.asynccontextmanager
async def nack_many_times(target: str, delta: bool) -> AsyncIterator[None]:
    """NACKs `NACKS` times with `BIG_MESSAGE`, then holds the stream open while inside. SotW: the
    same response again and again (its nonce stays the latest, so each counts). Delta: a new
    response each time, asked for by subscribing to another name."""
    async with (
        grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel,
        asyncio.timeout(NACKING_DEADLINE),  # a server that stops reading must fail the test, not hang it
    ):
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        if delta:
            stream = AdsStream(stub.DeltaAggregatedResources())
            for index in range(NACKS):
                first = node("big-nacker") if index == 0 else None
                await stream.send(delta_request(SDS, [f"probe-{index}"], with_node=first))
                response = await stream.recv()
                await stream.send(delta_request(SDS, nonce=response.nonce, error=BIG_MESSAGE))
        else:
            stream = AdsStream(stub.StreamAggregatedResources())
            await stream.send(request(CDS, with_node=node("big-nacker")))
            response = await stream.recv()
            for _ in range(NACKS):
                await stream.send(request(CDS, nonce=response.nonce, error=BIG_MESSAGE))
        # A probe of another type answered after the NACKs proves the server has read them all.
        await stream.send(request(SDS, ["barrier"]) if not delta else delta_request(CDS, ["barrier"]))
        await stream.recv()
        try:
            yield
        finally:
            await stream.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_megabyte_nack_messages_are_cut_on_status_and_in_the_log(
    text_server: tuple[ServeProcess, str], delta: bool
) -> None:
    served, target = text_server
    async with nack_many_times(target, delta):
        code, body = await served.get("/status")
    nack_lines = [line for line in served.lines if "NACK from node big-nacker" in line]
    assert len(nack_lines) == NACKS
    for line in nack_lines:
        assert line.endswith(CUT_MARK)
        assert len(line.encode()) < MAX_NACK_MESSAGE_BYTES + 300

    assert code == 200
    # 40 NACKs of 3 MB each: 120 MB of client text; /status keeps a few hundred KiB at most.
    assert len(body) < 1024 * 1024, len(body)
    document = json.loads(body)
    kept = [nack["message"] for nack in document["recent_nacks"]]
    assert kept, "the NACKs are on /status"
    for message in kept:
        assert message.endswith(CUT_MARK)
        assert message.startswith("éxxx")
        assert len(message.encode()) <= MAX_NACK_MESSAGE_BYTES + len(CUT_MARK.encode())
    (proxy,) = [proxy for proxy in document["proxies"] if proxy["node"] == "big-nacker"]
    nacked = proxy["types"]["SDS" if delta else "CDS"]
    assert nacked["state"] == "NACKED"
    assert nacked["last_nack"]["message"].endswith(CUT_MARK)


async def inject(target: str) -> None:
    """One stream whose node id and NACK carry control characters, and one refused for its role."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        evil = node(EVIL_ID)
        evil.cluster = "cluster\r\nwith lines"
        evil.user_agent_name = "agent\x1b[31m"
        stream = AdsStream(stub.StreamAggregatedResources())
        await stream.send(request(CDS, with_node=evil))
        response = await stream.recv()
        await stream.send(request(CDS, nonce=response.nonce, error=EVIL_NACK))
        await stream.send(request(SDS, ["barrier"]))
        await stream.recv()
        await stream.close()
        refused = AdsStream(stub.StreamAggregatedResources())
        await refused.send(request(CDS, with_node=node(EVIL_ID, role="nope\n\x1b[0m")))
        code, _ = await refused.status()
        assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_control_characters_from_clients_cannot_forge_log_lines(tmp_path: Path, log_format: str) -> None:
    async with serving(tmp_path, log_format) as (served, target):
        await inject(target)
        waited = await served.wait_for_line(lambda line: "refused stream" in line)
        written = served.lines[: waited + 1]
    for line in written:
        # No raw control, line or paragraph separator, or bidi override anywhere in the log.
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e]", line), repr(line)
    mentioning = [line for line in written if "evil" in line or "forged" in line]
    if log_format == "text":
        # Every line naming the client's text is a whole record of ours, its text escaped in it.
        escaped_id = r"evil\n2026-01-01T00:00:00.000Z ERROR meshplane.app: forged line\x1b[2J\r\u2028\u202e"
        for line in mentioning:
            assert TIMESTAMPED.match(line), line
            assert escaped_id in line, line
        (nack,) = [line for line in mentioning if "NACK from node" in line]
        assert nack.endswith(r"bad route\n2026-01-01T00:00:00.000Z ERROR meshplane.app: forged nack\x1b[31m\x00")
        assert any(": stream 1 opened: node " in line for line in mentioning)
        assert any(
            "refused stream" in line and "unknown metadata.role 'nope\\n\\x1b[0m'" in line for line in mentioning
        )
    else:
        records: list[dict[str, Any]] = []
        for line in written:
            if GRPC_CORE_LINE.match(line):
                assert "evil" not in line
                continue
            records.append(json.loads(line))
        (nack_record,) = [record for record in records if record.get("event") == "nack"]
        assert nack_record["node_id"] == EVIL_ID
        assert nack_record["message"].endswith(EVIL_NACK)
        assert [record for record in records if EVIL_ID in record["message"]], "the id is kept exactly, as JSON"
        assert len(mentioning) == len([record for record in records if "evil" in json.dumps(record)])


async def test_oversized_node_fields_and_refusals_are_refused_and_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node id over 1 KiB ends its stream without being echoed; a refusal quoting 100 KB of a
    client's text says so in at most 2 KiB, in the gRPC status and the log alike."""
    caplog.set_level(logging.WARNING, logger="meshplane.xds.server.service")
    async with (
        running_control_plane(settings(write_policy(tmp_path / "policy"))) as plane,
        grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel,
    ):
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        long_id = AdsStream(stub.StreamAggregatedResources())
        await long_id.send(request(CDS, with_node=node("n" * 5000)))
        assert await long_id.status() == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "node.id has 5000 characters; at most 1024",
        )
        long_role = AdsStream(stub.StreamAggregatedResources())
        await long_role.send(request(CDS, with_node=node("proxy", role="r" * 100_000)))
        code, details = await long_role.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("node proxy: unknown metadata.role 'rrr")
    assert re.search(r"… \[cut: 1000\d\d bytes in all\]$", details), details[-80:]
    assert len(details.encode()) < MAX_REFUSAL_BYTES + 64
    refusals = [r.getMessage() for r in caplog.records if "refused stream" in r.getMessage()]
    assert len(refusals) == 2
    assert all(len(message) < MAX_REFUSAL_BYTES + 200 for message in refusals)
