"""The command line, run as a user runs it: `meshplane validate` and `meshplane serve` as processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.envoy_harness import REPO
from tests.tls_certs import issue, make_ca

GOOD = "services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {address: 127.0.0.1, port: 9000}\n"
BROKEN = "services:\n  - name: web\n    port: eighty\n"


def meshplane(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplane", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_validate_accepts_the_examples() -> None:
    result = meshplane("validate", "--config", "examples")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_refuses_a_broken_file_with_file_line_and_reason(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BROKEN)
    result = meshplane("validate", "--config", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}:3:" in result.stderr
    assert "eighty" in result.stderr


def test_config_can_come_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    result = meshplane("validate", env={"MESHPLANE_CONFIG": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_missing_config_is_a_usage_error() -> None:
    result = meshplane("serve", env={"MESHPLANE_CONFIG": ""})
    assert result.returncode == 2
    assert "--config" in result.stderr


async def http_get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


# `meshplane serve` logs this once both ports listen (meshplane/app.py, after the status site started).
LISTENING = re.compile(rb"xDS on port (\d+), status on port (\d+)")


async def listening_ports(process: asyncio.subprocess.Process, output: list[bytes]) -> tuple[int, int]:
    """The xDS and status ports a `serve` given port 0 bound, from the line it logs once both
    listen (lines read go to `output`); fails with its output if it exits before."""
    assert process.stderr is not None
    while line := await asyncio.wait_for(process.stderr.readline(), 30):
        output.append(line)
        if match := LISTENING.search(line):
            return int(match[1]), int(match[2])
    code = await process.wait()
    raise AssertionError(f"meshplane serve exited ({code}) before listening:\n{b''.join(output).decode()}")


async def drain(process: asyncio.subprocess.Process, output: list[bytes]) -> None:
    """Reads the rest of the process's log into `output`, so a full pipe never blocks it."""
    assert process.stderr is not None
    while line := await process.stderr.readline():
        output.append(line)


@pytest.mark.xdist_group("envoy")
async def test_serve_is_not_ready_until_its_policy_is_valid_and_stops_on_sigterm(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "web.yaml").write_text(BROKEN)
    # Port 0: the process binds ports no other process holds, and says which. A port picked here
    # and bound later (tests/ports.py) is only free of this run's other tests: another pytest run
    # on the machine walks the same ports and may bind it meanwhile, and /healthz then reaches
    # that run's server (a 404, or another serve's answers).
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshplane",
        "serve",
        "--config",
        str(policy),
        "--xds-address",
        "127.0.0.1:0",
        env={**os.environ, "MESHPLANE_STATUS_ADDRESS": "127.0.0.1:0", "MESHPLANE_POLL_INTERVAL": "60"},
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    output: list[bytes] = []
    draining: asyncio.Task[None] | None = None
    try:
        _, status_port = await listening_ports(process, output)
        draining = asyncio.create_task(drain(process, output))
        base = f"http://127.0.0.1:{status_port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            status, _ = await http_get(session, f"{base}/healthz")
            assert status == 200
            status, body = await http_get(session, f"{base}/readyz")
            assert status == 503
            assert "policy-files has not synced" in body
            _, document = await http_get(session, f"{base}/status")
            source = json.loads(document)["sources"][0]
            assert source["synced"] is False
            assert any(f"{policy / 'web.yaml'}:3:" in error for error in source["errors"])

            (policy / "web.yaml").write_text(GOOD)
            for _ in range(600):
                status, body = await http_get(session, f"{base}/readyz")
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, body
            document = json.loads((await http_get(session, f"{base}/status"))[1])
            assert document["ready"] is True
            assert document["sources"][0]["errors"] == []
            assert document["sources"][0]["counts"]["services"] == 1
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
        assert code == 0, b"".join(output).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if draining is not None:
            await draining  # ends at the pipe's EOF, the process being gone


@pytest.mark.parametrize("port", ["xds", "registry"])
def test_bad_tls_files_are_refused_in_one_line(tmp_path: Path, port: str) -> None:
    """A key that is not the certificate's, or a missing file: one line naming the port, no traceback."""
    ca = make_ca(tmp_path / "ca")
    server = issue(ca, tmp_path, "server", "IP:127.0.0.1")
    (tmp_path / "policy.yaml").write_text(GOOD)
    prefix = "--registry-" if port == "registry" else "--"
    common = ["serve", "--config", str(tmp_path / "policy.yaml"), "--xds-address", "127.0.0.1:0",
              "--status-address", "127.0.0.1:0", "--registry-db", ":memory:", "--registry-address", "127.0.0.1:0",
              "--registry-http-address", "127.0.0.1:0"]  # fmt: skip
    name = "the registry port" if port == "registry" else "the xDS port"

    mismatched = meshplane(*common, f"{prefix}tls-cert", str(server.certificate), f"{prefix}tls-key", str(ca.key))
    assert mismatched.returncode == 1, mismatched.stderr
    assert "Traceback" not in mismatched.stderr
    assert (
        mismatched.stderr.strip().splitlines()[-1].startswith(f"meshplane: TLS for {name}: certificate and key do not")
    )
    assert "PRIVATE KEY" not in mismatched.stderr

    missing = meshplane(*common, f"{prefix}tls-cert", str(tmp_path / "nope.pem"), f"{prefix}tls-key", str(server.key))
    assert missing.returncode == 1, missing.stderr
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == (
        f"meshplane: TLS for {name}: {tmp_path / 'nope.pem'}: No such file or directory"
    )
