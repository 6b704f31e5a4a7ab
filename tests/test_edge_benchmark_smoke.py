"""benchmarks/edge_registry.py, benchmarks/edge_fleet.py and benchmarks/registration_path.py keep working:
one tiny run each, every figure present."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.envoy_harness import REPO

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]


def figures_of(module: str, *arguments: str) -> dict[str, Any]:
    """Runs benchmark `module`; the JSON figures it prints after its table, by fleet size."""
    try:
        # Under pytest's own timeout (120 s; these runs take 1-3 s), so a run that hangs fails here
        # with what it printed so far instead of being killed silently.
        command = [sys.executable, "-m", module, *arguments]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"{module} still running after 90 s; it printed:\n{_text(hung.stdout)}\n{_text(hung.stderr)}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{\n") :])
    return figures


def _text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    return text[-3000:]


def test_edge_registry_benchmark_runs_at_tiny_size() -> None:
    tiny = ["--sizes", "300", "--sites", "3", "--concurrency", "8", "--heartbeats", "100", "--grpc", "50"]
    figures = figures_of("benchmarks.edge_registry", *tiny, "--routing-runs", "1")["300"]
    assert figures["registrations"]["calls"] == 300
    assert figures["heartbeats"]["calls"] == 100
    assert figures["grpc_registrations"]["calls"] == 50
    assert len(figures["registration_to_routing_ms"]["runs"]) == 1


def test_edge_fleet_benchmark_runs_at_tiny_size() -> None:
    figures = figures_of("benchmarks.edge_fleet", "--sizes", "40", "--heartbeat-seconds", "0.5")["40"]
    assert figures["registrations"]["devices"] == 40
    assert figures["registration_to_gateway_ms"]["from_start"] > 0
    assert figures["deregistration_ms"]["gateway_empty"] > 0
    assert figures["heartbeats"]["renewals"] > 0


def test_registration_path_benchmark_runs_at_tiny_size() -> None:
    tiny = ["--sizes", "200", "--sites", "2", "--runs", "2", "--gap", "0.2"]
    figures = figures_of("benchmarks.registration_path", *tiny)["200"]
    assert figures["devices"] == 200
    assert len(figures["registration_to_routing_ms"]["runs"]) == 2
    assert figures["start_to_ready_ms"] > 0
    # The served process published each registration: the server's own view saw a rebuild per run.
    assert len(figures["server_rebuilds"]["per_run"]) == 2
    assert all(count >= 1 for count in figures["server_rebuilds"]["per_run"])
