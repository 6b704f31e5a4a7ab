"""`benchmarks.kubernetes_write` keeps working: at a tiny size, against the real API server. No timing
is asserted, only that every write reached every stream as exactly one update and that the figures
are there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.real_apiserver import KUBE_MISSING
from tests.ports import free_port
from tests.preconditions import require, requires
from tests.test_benchmarks_smoke import BASELINE_MISSING, baseline_tools

ROOT = Path(__file__).resolve().parent.parent


@requires(BASELINE_MISSING)
@requires(KUBE_MISSING)
@pytest.mark.xdist_group("kube-apiserver")
@pytest.mark.timeout(900)  # the first build of the load client downloads and compiles the baseline
def test_the_kubernetes_write_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    require(KUBE_MISSING)
    baseline_tools()
    results = tmp_path / "results.json"
    sizes = [
        "--services",
        "6",
        "--endpoints",
        "2",
        "--streams",
        "3",
        "--writes",
        "3",
        "--gap",
        "0.5",
        "--settle",
        "0.2",
    ]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.kubernetes_write",
            *sizes,
            "--port",
            str(free_port()),
            "--json",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(results.read_text())
    assert (row["endpoints"], row["streams"], row["writes"]) == (12, 3, 3)
    assert (row["updates"], row["writes_reached"], row["reached_streams"], row["errors"]) == (3, 3, 3, 0), row
    for figure in ("write_to_last_ms", "write_to_first_ms", "apiserver_write_ms"):
        assert set(row[figure]) == {"median", "p90", "max"}, row
