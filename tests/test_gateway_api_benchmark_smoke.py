"""`benchmarks.gateway_api` keeps working: at a tiny size, against the real API server, the real
`meshplane serve --kubernetes --gateway-api` process and real gateway Envoys. No timing is
asserted, only that it completed, that every change was seen through every Envoy serving its
route, and that the figures are there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING
from tests.k8s.real_apiserver import KUBE_MISSING
from tests.preconditions import require, requires

ROOT = Path(__file__).resolve().parent.parent


@requires(KUBE_MISSING)
@requires(GATEWAY_API_MISSING)
@pytest.mark.envoy
@pytest.mark.xdist_group("kube-apiserver")
@pytest.mark.timeout(300)
def test_the_gateway_api_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    require(KUBE_MISSING)
    require(GATEWAY_API_MISSING)
    results = tmp_path / "results.json"
    sizes = ["--services", "5", "--gateways", "2", "--routes", "4", "--changes", "2", "--gap", "0.2"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gateway_api", *sizes, "--translate-runs", "1", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(results.read_text())
    assert (row["services"], row["gateways"], row["routes"], row["changes"]) == (5, 2, 4, 2)
    assert (row["changes_seen"], row["envoys"]) == (2, 2), row
    # Both Gateways' route configurations were built in process (a port each).
    assert row["translate_whole_set_cold"]["route_configurations"] == 2, row
    for figure in ("change_to_last_ms", "change_to_first_ms", "apiserver_patch_ms"):
        assert set(row[figure]) == {"median", "p99", "max"}, row
    assert "start_to_programmed_ms" in row
    assert "server_cpu_ms_per_change" in row
    # Every change rebuilt at least once (the server's own /metrics, read around the changes).
    assert row["rebuilds_per_change"] >= 1, row
