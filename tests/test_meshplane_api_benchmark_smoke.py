"""`benchmarks.meshplane_api` keeps working: at a tiny size, against the real API server, the real
`meshplane serve --kubernetes --meshplane-api` process and a real Envoy. No timing is asserted,
only that it completed, that every write was seen at the Envoy and on the object's status, and
that the figures are there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.real_apiserver import KUBE_MISSING
from tests.preconditions import require, requires

ROOT = Path(__file__).resolve().parent.parent


@requires(KUBE_MISSING)
@pytest.mark.envoy
@pytest.mark.xdist_group("kube-apiserver")
@pytest.mark.timeout(300)
def test_the_meshplane_api_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    require(KUBE_MISSING)
    results = tmp_path / "results.json"
    sizes = ["--services", "6", "--objects", "8", "--writes", "2", "--gap", "0.1"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.meshplane_api", *sizes, "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(results.read_text())
    assert (row["services"], row["objects"], row["writes"], row["writes_seen"]) == (6, 8, 2, 2), row
    assert row["mix"] == {"TrafficPolicy": 4, "MeshRoute": 2, "EdgeSite": 1, "ExternalService": 1}, row
    for figure in ("write_to_envoy_ms", "write_to_status_ms", "write_to_programmed_ms"):
        assert set(row[figure]) == {"median", "p99", "max"}, row
    assert "start_to_full_config_ms" in row
    assert row["analyze_exit"] == 0, row  # the set is clean, and analyze says so
    assert "server_cpu_ms_per_write" in row
    assert len(row["load_average"]) == 3
