"""What `meshplane serve` writes to its log and publishes at start, read from a real process.

- Each policy error is one log line (the source watch's `source <name>: <error>`), at start as on a
  reload; a file that stays broken with the same errors is not logged again; an error that
  persists while another changes is not repeated.
- Start publishes once: the sources' first loads are in the first publication, so nothing is left
  for the debouncer to publish again.
- Other libraries' INFO lines (watchfiles' "1 change detected") stay out of the log unless debug
  logging is asked for.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port
from tests.serve_process import ServeProcess, copy_examples, serve

pytestmark = pytest.mark.xdist_group("envoy")

BROKEN = "services:\n  - name: web\n    port: eighty\n"
BROKEN_OTHERWISE = "services:\n  - name: web\n    port: ninety\n"
EXTRA_SERVICE = "services:\n  - name: extra\n    port: 8080\n    endpoints:\n      - {address: 127.0.0.1, port: 9401}\n"
PUBLISHED = re.compile(r" meshplane\.xds\.publisher: published mesh generation (\d+)\b.*")


def generation_published(line: str) -> int | None:
    """The mesh generation a publisher log line announces, or None for any other line."""
    match = PUBLISHED.search(line)
    return int(match.group(1)) if match else None


def count(lines: list[str], text: str) -> int:
    return sum(text in line for line in lines)


async def policy_source(served: ServeProcess) -> dict[str, object]:
    [source] = [source for source in (await served.status())["sources"] if source["name"] == "policy-files"]
    return dict(source)


async def load_started_after(served: ServeProcess, moment: float) -> float:
    """Waits for a load of the policy files that started after `moment`; returns when it started."""
    while True:
        started = (await policy_source(served))["last_attempt"]
        if isinstance(started, int | float) and started > moment:
            return started
        await asyncio.sleep(0.05)


async def test_each_policy_error_is_logged_once_at_start_and_on_reload(tmp_path: Path) -> None:
    policy = tmp_path / "web.yaml"
    policy.write_text(BROKEN)
    async with serve("--config", str(tmp_path), env={"MESHPLANE_POLL_INTERVAL": "0.2"}) as served:
        assert count(served.lines, "service.port must be a whole number, not 'eighty'") == 1, served.lines
        assert count(served.lines, "declares no ports") == 1, served.lines

        # Reloads of the same broken content: re-read (a new mtime), refused again, not logged again.
        os.utime(policy)
        touched = time.time()
        first = await load_started_after(served, touched)
        await load_started_after(served, first)  # loads run one at a time: the first one has finished
        assert (await policy_source(served))["errors"] != []

        # A different error is logged; the one that persists ("declares no ports") is not repeated.
        policy.write_text(BROKEN_OTHERWISE)
        await served.wait_for_line(lambda line: "not 'ninety'" in line)
    lines = served.lines
    assert count(lines, "service.port must be a whole number, not 'eighty'") == 1, lines
    assert count(lines, "declares no ports") == 1, lines
    assert count(lines, "not 'ninety'") == 1, lines
    assert count(lines, f"policy files at {tmp_path} refused: 2 error(s); nothing to serve yet") == 2, lines


async def test_start_publishes_once_and_a_change_publishes_the_next_generation(tmp_path: Path) -> None:
    config = copy_examples(tmp_path / "policy")
    registry = ("--registry-address", f"127.0.0.1:{free_port()}", "--registry-http-address", f"127.0.0.1:{free_port()}")
    async with serve("--config", str(config), "--registry-db", ":memory:", *registry) as served:
        _, metrics = await served.get("/metrics")
        pokes = next(
            family for family in text_string_to_metric_families(metrics) if family.name == "meshplane_debounce_pokes"
        )
        assert [sample.value for sample in pokes.samples] == [0], "a rebuild is pending after start"
        publication = (await served.status())["publish"]
        assert (publication["mesh_generation"], publication["endpoints_only"]) == (1, False)

        (config / "extra.yaml").write_text(EXTRA_SERVICE)
        await served.wait_for_line(lambda line: generation_published(line) == 2)
        publication = (await served.status())["publish"]
        assert (publication["mesh_generation"], publication["endpoints_only"]) == (2, False)
    published = [match.group(0) for line in served.lines if (match := PUBLISHED.search(line))]
    assert len(published) == 2, published
    assert not any("endpoints only" in line for line in published), published


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)], ids=["info", "debug"])
async def test_other_libraries_info_lines_show_only_with_debug_logging(tmp_path: Path, level: str, shown: bool) -> None:
    config = copy_examples(tmp_path / "policy")
    # Polling off in effect: the reload below comes from watchfiles' notification, which watchfiles
    # logs (INFO "1 change detected", DEBUG with the paths) before handing it on.
    async with serve("--config", str(config), "--log-level", level, env={"MESHPLANE_POLL_INTERVAL": "600"}) as served:
        live = await served.wait_for_line(lambda line: f"watching {config} for changes" in line)
        (config / "extra.yaml").write_text(EXTRA_SERVICE)
        if shown:
            await served.wait_for_line(lambda line: " watchfiles." in line and "change" in line, live)
        await served.wait_for_line(lambda line: f"policy files at {config} loaded: 5 services" in line, live)
    from_watchfiles = [line for line in served.lines if " watchfiles." in line]
    assert bool(from_watchfiles) is shown, served.lines
