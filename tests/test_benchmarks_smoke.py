"""The benchmarks keep working: every scenario at a tiny size. No timing is asserted, only that
each scenario ran, every stream synced and every change reached every stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import scale, translation
from tests.netns import unavailable_reason
from tests.preconditions import require, requires

ROOT = Path(__file__).resolve().parent.parent


def test_translation_benchmark_takes_the_endpoint_fast_path() -> None:
    figures = translation.measure(services=20, endpoints=2, repeat=1)
    assert figures["services"] == 20
    assert figures["endpoints"] == 40
    assert {"full_ms", "one_endpoint_ms", "churn_10pct_ms"} <= set(figures)


BASELINE_MISSING = (
    None
    if (scale.BASELINE / "build.sh").exists()
    else f"the go-control-plane baseline is not beside the repository ({scale.BASELINE})"
)


def baseline_tools() -> dict[str, Path]:
    """The Go baseline and clients, built on first use; a failed build fails the test, with its output."""
    require(BASELINE_MISSING)
    try:
        return scale.build_tools()
    except subprocess.CalledProcessError as error:
        pytest.fail(f"building the go-control-plane baseline failed:\n{error.stderr[-3000:]}")


@requires(BASELINE_MISSING)
@pytest.mark.timeout(900)  # the first build downloads and compiles the baseline (about a minute)
def test_every_scenario_runs_at_tiny_size_against_both_servers(tmp_path: Path) -> None:
    baseline_tools()
    results = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--quick", "--port", "18690", "--json", str(results)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    rows = json.loads(results.read_text())["rows"]
    scenarios = ["sync-1", "sync-3", "delta-sync-3", "update-all", "one-endpoint-delta", "churn", "idle-4"]
    assert [row["scenario"] for row in rows] == scenarios
    for row in rows:
        for server in ("meshplane", "go-control-plane"):
            figures = row[server]
            assert figures["streams"] > 0, (row["scenario"], server, figures)
            assert not figures.get("errors"), (row["scenario"], server, figures)
            if "changes" in figures:
                assert figures["updates_reaching_all"] == figures["changes"], (row["scenario"], server, figures)
            if "update_reached" in figures:
                assert figures["update_reached"] == figures["streams"], (row["scenario"], server, figures)


@requires(BASELINE_MISSING)
@pytest.mark.timeout(900)
def test_the_benchmark_server_serves_more_streams_than_one_client_may_in_production(tmp_path: Path) -> None:
    """One load client opens every stream: beyond `serve`'s per-client default (1,000) none may be refused."""
    baseline_tools()  # the load client is the baseline's
    results = tmp_path / "results.json"
    sizes = ["--clusters", "5", "--endpoints", "2", "--sync-streams", "1010", "--settle", "2"]
    only = ["--only", "sync-1010", "--servers", "meshplane", "--port", "18694", "--json", str(results)]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", *sizes, *only],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = json.loads(results.read_text())["rows"]
    assert (row["meshplane"]["streams"], row["meshplane"].get("errors")) == (1010, 0), row


def test_the_topology_benchmark_runs_at_tiny_size() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.topology",
            "--services",
            "3",
            "--routes",
            "2",
            "--groups",
            "2",
            "--proxies",
            "2",
            "--devices",
            "10",
            "--repeat",
            "1",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert (figures["services"], figures["proxies"], figures["devices"]) == (3, 2, 10)
    assert figures["nodes"] > 0
    assert figures["bytes"] > 0


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@requires(unavailable_reason())
@pytest.mark.timeout(300)
def test_the_registry_postgres_benchmark_runs_at_tiny_size() -> None:
    """Both parts (in process and through three replicas, a gateway Envoy and a failover) complete."""
    tiny = ["--sizes", "1000", "--heartbeats", "1000", "--heartbeat-seconds", "2", "--path-devices", "500"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.registry_postgres", *tiny, "--runs", "2", "--failovers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(run.stdout[run.stdout.index("{\n") :])
    assert figures["in_process_1000"]["postgresql_3_processes_heartbeats_paced"]["calls"] == 1000
    assert len(figures["replicas"]["registration_at_a_to_gateway_on_c_ms"]["runs"]) == 2
