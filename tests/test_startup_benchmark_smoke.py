"""`benchmarks.startup` keeps working: one start at a tiny size. No time or size is asserted, only
that the real `meshplane serve` became ready on the generated directory and every figure is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.startup import FIGURES
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_startup_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    sizes = ["--services", "5", "--endpoints", "2", "--files", "2", "--runs", "1", "--idle", "0"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.startup", *sizes, "--port", str(free_port()), "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = json.loads(results.read_text())["rows"]
    assert row["scenario"] == "startup-5"
    assert row["endpoints"] == 10
    assert set(FIGURES) <= set(row)
    offenders = row["import_offenders"]
    assert offenders["modules_imported"] > 0
    assert offenders["packages_ms"]
    assert offenders["meshplane_self_ms"]
    assert set(row["phases_cpu_ms"]) == {"import", "load", "merge", "translate"}
