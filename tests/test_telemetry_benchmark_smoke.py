"""`benchmarks.telemetry_overhead` keeps working: one run of each policy, briefly. No rate is
asserted, only that traffic flowed with telemetry off and on, and that the collector got spans
and log records while it was on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]


def test_the_telemetry_benchmark_runs_briefly() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.telemetry_overhead",
            "--runs",
            "1",
            "--seconds",
            "0.5",
            "--connections",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["off_rps"][0] > 0
    assert result["on_rps"][0] > 0
    collected = [line for line in run.stdout.splitlines() if line.startswith("the collector received")]
    assert collected, run.stdout
    assert "received 0 spans" not in collected[0]
    assert "and 0 log records" not in collected[0]
