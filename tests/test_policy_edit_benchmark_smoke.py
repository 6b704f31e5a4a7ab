"""`benchmarks.policy_edit` keeps working: every scenario at a tiny size. No timing is asserted, only
that every edit of an endpoint reached every stream, the generated directory validated and a client
got the full config after the start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.preconditions import requires
from tests.test_benchmarks_smoke import BASELINE_MISSING, baseline_tools

ROOT = Path(__file__).resolve().parent.parent


@requires(BASELINE_MISSING)
@pytest.mark.timeout(900)  # the first build of the load client downloads and compiles the baseline
def test_every_policy_edit_scenario_runs_at_tiny_size(tmp_path: Path) -> None:
    baseline_tools()
    results = tmp_path / "results.json"
    sizes = [
        "--services",
        "6",
        "--endpoints",
        "2",
        "--streams",
        "3",
        "--large-services",
        "10",
        "--settle",
        "0.2",
        "--edits",
        "2",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.policy_edit", *sizes, "--port", str(free_port()), "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["scenario"]: row for row in json.loads(results.read_text())["rows"]}
    assert list(rows) == ["edit-10-files", "edit-1-file", "validate-10", "start-10"]
    for name in ("edit-10-files", "edit-1-file"):
        assert rows[name]["reached_streams"] == 3, rows[name]
        assert rows[name]["updates"] == 2, rows[name]
        assert rows[name]["errors"] == 0, rows[name]
    assert rows["edit-10-files"]["files"] == 10
    assert rows["validate-10"]["valid"] is True
    assert "start_to_full_config_ms" in rows["start-10"]
