"""`meshplane simulate devices`: end to end in a subprocess against a running `meshplane serve`,
its argument checks, and the progress display (formatter, TTY or not)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.cli import _parser as parser
from meshplane.cli import main
from meshplane.discovery.registry.auth import token_digest
from meshplane.simulate.cli import (
    ProgressReporter,
    fleet_options,
    local_address_towards,
    progress_line,
    summary_table,
)
from meshplane.simulate.fleet import FleetOptions, FleetStats
from tests.envoy_harness import REPO
from tests.ports import free_port

CLASS_TOKEN = "cli-sim-bikes"
OPERATOR_TOKEN = "cli-sim-ops"
DEADLINE = 60.0


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    registry_port: int

    def devices(self) -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{self.registry_port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            answer = stub.List(
                pb.ListRequest(site="gym"), metadata=(("authorization", f"Bearer {OPERATOR_TOKEN}"),), timeout=10
            )
            return sorted(device.device_id for device in answer.devices)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    work = tmp_path_factory.mktemp("simulate-cli")
    (work / "policy").mkdir()
    (work / "policy" / "sites.yaml").write_text(
        "sites:\n  - {id: gym, region: local, device_ranges: ['198.19.5.0/24']}\n"
    )
    (work / "tokens.yaml").write_text(
        f"tokens:\n  - {{sha256: {token_digest(CLASS_TOKEN)}, class: bike}}\n"
        f"  - {{sha256: {token_digest(OPERATOR_TOKEN)}, operator: ops}}\n"
    )
    registry_port = free_port()
    log = work / "serve.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "meshplane", "serve", "--config", str(work / "policy")),
                *("--xds-address", f"127.0.0.1:{free_port()}", "--status-address", f"127.0.0.1:{free_port()}"),
                *("--registry-db", str(work / "registry.db"), "--registry-tokens", str(work / "tokens.yaml")),
                *("--registry-address", f"127.0.0.1:{registry_port}"),
                *("--registry-http-address", f"127.0.0.1:{free_port()}"),
                *("--lease-min-ttl", "1", "--lease-check-interval", "0.2"),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    end = time.monotonic() + DEADLINE
    while True:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", registry_port)) == 0:
                break
        assert time.monotonic() < end, "meshplane serve never listened"
        time.sleep(0.05)
    try:
        yield Serving(process, registry_port)
    finally:
        process.terminate()
        process.wait(30)


def simulate(serving: Serving, *arguments: str) -> subprocess.Popen[str]:
    """`meshplane simulate devices` against `serving`, with the class token in the environment."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "meshplane", "simulate", "devices", "--site", "gym"),
            *("--registry", f"127.0.0.1:{serving.registry_port}", "--address", "198.19.5.7"),
            *arguments,
        ],
        cwd=REPO,
        env={**os.environ, "MESHPLANE_REGISTRY_TOKEN": CLASS_TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_runs_for_a_duration_then_deregisters_and_prints_json(serving: Serving) -> None:
    process = simulate(
        serving, "--count", "8", "--ttl", "2", "--heartbeat-interval", "0.2", "--duration", "3", "-o", "json"
    )
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["count"] == 8
    assert (summary["registered"], summary["deregistered"], summary["refused"]) == (8, 8, {})
    assert summary["heartbeats_ok"] > 0
    assert summary["heartbeats_failed"] == {}
    assert "8/8 registered" in err, "the progress line, plain (stderr is not a terminal)"
    assert serving.devices() == []


def test_sigterm_stops_cleanly_and_deregisters(serving: Serving) -> None:
    process = simulate(serving, "--count", "5", "--id-prefix", "term")
    try:
        end = time.monotonic() + DEADLINE
        while len(serving.devices()) < 5:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < end, "the five devices never registered"
            time.sleep(0.05)
        assert serving.devices() == [f"term-gym-{i:05d}" for i in range(5)]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "deregistered   5 (0 failed)" in out
    assert serving.devices() == []


def test_refusals_exit_1_with_their_reasons_counted(serving: Serving) -> None:
    process = simulate(serving, "--count", "4", "--address", "198.19.6.1", "--duration", "30", "-o", "json")
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1, err
    reason = "PERMISSION_DENIED: endpoint address 198.19.6.1 is outside the ranges of site gym (198.19.5.0/24)"
    assert json.loads(out)["refused"] == {reason: 4}
    assert "4 of 4 devices refused:" in err
    assert f"     4  {reason}" in err


def test_a_loopback_address_is_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    registry = f"127.0.0.1:{free_port()}"
    assert local_address_towards("127.0.0.1", 18001) == "127.0.0.1"
    code = main(["simulate", "devices", "--count", "2", "--site", "gym", "--registry", registry])
    assert code == 2
    error = capsys.readouterr().err
    assert "over loopback" in error
    assert "the registry refuses" in error
    assert "--address" in error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["--site", "gym"], "--count and --site are required", id="no-count"),
        pytest.param(["--count", "2", "--site", "gym", "--traffic", "http://127.0.0.1:1/"], "go together", id="host"),
        pytest.param(["--count", "2", "--site", "gym", "--label", "row"], "is not KEY=VALUE", id="label"),
        pytest.param(["--count", "0", "--site", "gym"], "count must be at least 1", id="zero"),
        pytest.param(["--count", "2", "--site", "gym", "--class", "Bike"], "lowercase RFC 1123", id="class"),
        pytest.param(["--count", "2", "--site", "gym", "--duration", "0"], "--duration must be positive", id="dur"),
        pytest.param(["--count", "2", "--site", "gym", "--registry", "x:y"], "is not host:port", id="registry"),
    ],
)
def test_bad_arguments_exit_2(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "devices", "--address", "198.19.5.7", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_every_flag_reaches_the_fleet_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ca.pem", "c.pem", "c.key"):  # read only to check they can be
        (tmp_path / name).write_text("-----BEGIN-----\n")
    monkeypatch.setenv("MESHPLANE_REGISTRY_TOKEN", "from-the-environment")
    monkeypatch.setenv("MESHPLANE_SIMULATE_RATE", "7.5")
    arguments = [
        *("simulate", "devices", "--count", "3", "--site", "gym", "--registry", "meshplane:1234"),
        *("--address", "198.19.5.7", "--port-base", "30000", "--class", "tread", "--id-prefix", "demo"),
        *("--firmware-version", "4.1", "--label", "row=a", "--label", "zone=b", "--ttl", "12"),
        *("--heartbeat-interval", "2", "--heartbeat-streams", "2", "--concurrency", "9", "--backends"),
        *("--traffic", "http://127.0.0.1:15080/", "--host", "web", "--duration", "5"),
        *("--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "c.key"),
    ]
    options, duration = fleet_options(parser().parse_args(arguments))
    assert duration == 5
    assert options == FleetOptions(
        registry="meshplane:1234",
        site="gym",
        count=3,
        address="198.19.5.7",
        port_base=30000,
        device_class="tread",
        id_prefix="demo",
        token="from-the-environment",
        ttl_seconds=12,
        heartbeat_interval=2,
        heartbeat_streams=2,
        backends=True,
        traffic_url="http://127.0.0.1:15080/",
        traffic_host="web",
        traffic_rate=7.5,
        concurrency=9,
        version="4.1",
        labels={"row": "a", "zone": "b"},
        tls_ca=Path("ca.pem"),
        tls_cert=Path("c.pem"),
        tls_key=Path("c.key"),
    )
    assert options.device_id(2) == "demo-gym-00002"


def test_flags_come_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHPLANE_SIMULATE_COUNT", "0")
    assert main(["simulate", "devices", "--site", "gym", "--address", "198.19.5.7"]) == 2
    assert "count must be at least 1, not 0" in capsys.readouterr().err


def stats(**fields: object) -> FleetStats:
    value = FleetStats(count=10, elapsed=2.0)
    for name, field in fields.items():
        setattr(value, name, field)
    return value


def test_progress_line() -> None:
    line = progress_line(stats(registered=4, refused=Counter({"INVALID_ARGUMENT: x": 1}), heartbeats_ok=12), width=10)
    assert line == "[#####-----] 4/10 registered  1 refused  heartbeats 12 ok 0 failed  2 reg/s  2s"
    busy = progress_line(
        stats(
            registered=10,
            retried=Counter({"RESOURCE_EXHAUSTED: x": 4}),
            requests_ok=7,
            requests_failed=Counter({"HTTP 503": 2}),
            reregistered=3,
            registration_seconds=0.5,
        ),
        width=4,
    )
    assert busy == (
        "[####] 10/10 registered  0 refused  4 retried  heartbeats 0 ok 0 failed  requests 7 ok 2 failed"
        "  3 re-registered  20 reg/s  2s"
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_redrawn_in_place_at_most_ten_times_a_second() -> None:
    clock = FakeClock()
    terminal = Terminal()
    reporter = ProgressReporter(terminal, clock=clock, columns=lambda: 200)
    assert reporter.tty
    for step in range(30):  # 30 reports over 0.6 s
        clock.now = step * 0.02
        reporter.update(stats(registered=step % 10))
    reporter.finish(stats(registered=10))
    drawn = terminal.getvalue()
    assert drawn.count("\r") == 6 + 1  # every 0.1 s, then the final line
    assert drawn.endswith("10/10 registered  0 refused  heartbeats 0 ok 0 failed  5 reg/s  2s\x1b[K\n")
    assert drawn.count("\n") == 1


def test_progress_on_a_narrow_terminal_is_cut_to_its_width() -> None:
    """A line wider than the terminal would wrap, and `\\r` would then redraw only its last row."""
    terminal = Terminal()
    ProgressReporter(terminal, clock=FakeClock(), columns=lambda: 40).update(stats(registered=3))
    (line,) = terminal.getvalue().split("\r")[1:]
    assert line == progress_line(stats(registered=3))[:39] + "\x1b[K"


def test_progress_elsewhere_is_a_plain_line_every_few_seconds() -> None:
    clock = FakeClock()
    log = io.StringIO()
    reporter = ProgressReporter(log, clock=clock)
    assert not reporter.tty
    for step in range(100):  # 100 reports over 10 s
        clock.now = step * 0.1
        reporter.update(stats(registered=3))
    reporter.finish(stats(registered=10))
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 + 1  # at 0 s and 5 s, then the final line
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("[########################] 10/10 registered")


def test_summary_table_lists_reasons_by_count() -> None:
    table = summary_table(stats(registered=8, refused=Counter({"PERMISSION_DENIED: a": 2}), deregistered=8))
    assert "registered     8" in table
    assert "refused:\n       2  PERMISSION_DENIED: a" in table


def test_unreadable_tls_files_are_bad_arguments(tmp_path: Path) -> None:
    """Checked before anything starts: exit 2 with the flag and the reason, not a traceback later."""
    command = ["simulate", "devices", "--count", "1", "--site", "gym", "--address", "198.19.5.7"]
    result = subprocess.run(
        [sys.executable, "-m", "meshplane", *command, "--tls-ca", str(tmp_path / "missing-ca.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"--tls-ca {tmp_path / 'missing-ca.pem'}: No such file or directory" in result.stderr
