"""benchmarks/edge_mtls.py keeps working: one tiny run, every figure present."""

from __future__ import annotations

import pytest

from tests.test_edge_benchmark_smoke import figures_of

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]


def test_edge_mtls_benchmark_runs_at_tiny_size() -> None:
    tiny = ["--seconds", "0.3", "--runs", "1", "--concurrency", "2", "--registrations", "10", "--expiry-runs", "1"]
    figures = figures_of("benchmarks.edge_mtls", *tiny, "--lease-check-interval", "0.2")
    throughput = figures["throughput"]
    assert set(throughput["median"]) == {
        "mtls_new_connection",
        "plain_new_connection",
        "mtls_kept_alive",
        "plain_kept_alive",
    }
    assert all(rate > 0 for rate in throughput["median"].values())
    assert throughput["ratio_new_connection"] > 0
    assert throughput["ratio_kept_alive"] > 0
    assert figures["registrations"]["with_csr"]["calls"] == 10
    assert figures["registrations"]["without_csr"]["calls"] == 10
    assert len(figures["lease_end_to_refusal"]["runs_ms"]) == 1
    assert len(figures["load_average"]["before"]) == 3
