"""`benchmarks.changes_memory` keeps working: run tiny, in process. Its figures are reported, never
asserted as times; what is asserted is that the fleet was built as asked and every figure is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import changes_memory

ROOT = Path(__file__).resolve().parent.parent


def test_the_changes_memory_benchmark_runs_tiny() -> None:
    figures = changes_memory.measure(proxies=60, groups=6, affected=2, keep=5, past=6, repeat=1)
    assert (figures["proxies"], figures["groups"], figures["kept"]) == (60, 6, 5)
    assert figures["generations"] == 5 + 6
    assert figures["kept_generations"] == 5  # the window, whatever was recorded
    # The newest generation changed 2 groups of 10 streams each; every one of them ACKed it.
    assert figures["newest_proxies"] == 20
    assert figures["newest_acks"]["acked"] == 20
    assert figures["changes_bytes_max"] >= figures["changes_bytes_default"] > figures["changes_bytes_one"] > 0
    for key in ("kept_bytes_per_generation", "growth_bytes_per_generation", "build_ms_default", "ack_us"):
        assert isinstance(figures[key], int | float), key


def test_the_command_prints_one_json_line(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    arguments = ["--proxies", "20", "--groups", "4", "--affected", "1", "--keep", "3", "--past", "2", "--repeat", "1"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.changes_memory", *arguments, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == json.loads(out.read_text())
    refused = subprocess.run(
        [sys.executable, "-m", "benchmarks.changes_memory", "--groups", "5", "--affected", "6"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2
    assert "need 0 < --affected <= --groups" in refused.stderr
