"""Structured logs: one line per NACK and per source error, with their fields; never a private key."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshplane.logs import JsonFormatter, TextFormatter, configure_logging, redact_secrets
from meshplane.model import ProxyGroup, SourceStatus
from meshplane.status.source_watch import SourceWatch
from meshplane.xds.server.tracking import StreamKind, StreamRegistry
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO, free_port

KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Every log record formatted both ways, as `--log-format json` and `text` would write them."""
    as_json, as_text = io.StringIO(), io.StringIO()
    handlers = []
    for stream, formatter in ((as_json, JsonFormatter()), (as_text, TextFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handlers.append(handler)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield as_json, as_text
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_nack_is_one_json_line_with_node_and_type(captured: tuple[io.StringIO, io.StringIO]) -> None:
    as_json, as_text = captured
    registry = StreamRegistry()
    track = registry.open(StreamKind.SOTW_ADS, "sidecar-7", "web", ProxyGroup(), "envoy", "peer")
    registry.sent(track, TypeUrl.ROUTE, "v2", "1", ())
    registry.nacked(track, TypeUrl.ROUTE, "v2", f"bad secret\n{KEY}\nend")
    [line] = [entry for entry in json_lines(as_json) if entry.get("event") == "nack"]
    assert line["node_id"] == "sidecar-7"
    assert line["type"] == "RDS"
    assert line["version"] == "v2"
    assert line["level"] == "warning"
    assert "MIIEowIBAAKCAQEA7" not in as_json.getvalue()
    assert "MIIEowIBAAKCAQEA7" not in as_text.getvalue()
    assert "[redacted]" in str(line["message"])
    assert "NACK from node sidecar-7 for RDS version v2" in as_text.getvalue()
    # The NACK kept for /status is redacted too.
    assert "MIIEowIBAAKCAQEA7" not in registry.recent_nacks[-1].message


def test_each_new_source_error_is_one_line_and_counted(captured: tuple[io.StringIO, io.StringIO]) -> None:
    as_json, _ = captured
    status = [SourceStatus("policy-files", False, None, None, ("a.yaml:1: bad",), {})]
    watch = SourceWatch(lambda: status)
    watch.check()
    watch.check()  # the same error again: no new line
    status[0] = dataclasses.replace(status[0], errors=("a.yaml:1: bad", f"b.yaml:2: key {KEY}"))
    watch.check()
    errors = [entry for entry in json_lines(as_json) if entry.get("event") == "source_error"]
    assert [(entry["source"], entry["error"]) for entry in errors] == [
        ("policy-files", "a.yaml:1: bad"),
        ("policy-files", "b.yaml:2: key [redacted]"),
    ]
    assert watch.error_counts["policy-files"] == 2
    status[0] = dataclasses.replace(status[0], synced=True, errors=())
    watch.check()
    status[0] = dataclasses.replace(status[0], synced=False)
    watch.check()
    events = [entry.get("event") for entry in json_lines(as_json)]
    assert events[-3:] == ["source_recovered", "source_synced", "source_unsynced"]


def test_redaction_keeps_certificates_and_removes_keys() -> None:
    text = f"chain {CERT} key {KEY} tail"
    redacted = redact_secrets(text)
    assert CERT in redacted
    assert "MIIEowIBAAKCAQEA7" not in redacted
    assert redacted.endswith("key [redacted] tail")
    assert redact_secrets("cut off -----BEGIN PRIVATE KEY-----\nMIIE") == "cut off [redacted]"


def test_configure_logging_writes_json_lines() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        configure_logging("info", "json", stream)
        logging.getLogger("meshplane.test").info("hello %s", "there", extra={"node_id": "n1", "type": "CDS"})
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    [line] = json_lines(stream)
    assert line["message"] == "hello there"
    assert line["node_id"] == "n1"
    assert line["logger"] == "meshplane.test"
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", stream)


@pytest.mark.xdist_group("envoy")
async def test_serve_with_json_logs_writes_one_json_line_per_source_error(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text("services:\n  - name: web\n    port: eighty\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        "serve",
        "--config",
        str(tmp_path),
        "--xds-address",
        f"127.0.0.1:{free_port()}",
        "--status-address",
        f"127.0.0.1:{free_port()}",
        "--log-format",
        "json",
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "MESHPLANE_POLL_INTERVAL": "60"},
    )
    assert process.stderr is not None
    lines: list[dict[str, object]] = []
    try:

        async def read_until_source_error() -> None:
            assert process.stderr is not None
            while not any(line.get("event") == "source_error" for line in lines):
                raw = await process.stderr.readline()
                assert raw, "serve exited before logging the source error"
                lines.append(json.loads(raw))  # every line is JSON

        await asyncio.wait_for(read_until_source_error(), 30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 30)
    lines += [json.loads(raw) for raw in rest.splitlines()]  # to the last line, JSON only
    error = next(line for line in lines if line.get("event") == "source_error")
    assert error["source"] == "policy-files"
    assert "eighty" in str(error["error"])
    assert process.returncode == 0
