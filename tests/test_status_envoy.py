"""What operators see of real Envoys: `/status`, `/metrics`, `/config`, `meshplane status` and the
dashboard all show a NACK, and all show the proxies synced once the policy is fixed.

Two Envoys connect to an in-process control plane. Envoy "strict" runs with a small regex budget
(Envoy's `re2.max_program_size.error_level` runtime key), so a route regex that the other Envoy
accepts is invalid for it: pushing that policy makes exactly one proxy NACK, with Envoy's own
message. Removing the regex is the fix. Every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meshplane.app import ControlPlane, Settings
from tests.envoy_harness import ENVOY_CONFIGS, REPO, Backend, Envoy, start_backend, start_envoy
from tests.test_dashboard import Page, dashboard_when

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

SCHEMA = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
TOKEN = "s3cret-admin-token"
DEADLINE = 30.0
T = TypeVar("T")

SERVICES = """services:
  - name: web
    port: 8080
    endpoints:
      - {{address: 127.0.0.1, port: {port}}}
"""
BROKEN = "services:\n  - name: web\n    port: eighty\n"
# Valid RE2, accepted by a default Envoy (program size limit 100), too big for "strict" (limit 1).
ROUTES_WITH_REGEX = """routes:
  - name: web-routes
    service: web
    rules:
      - match: {path: {regex: '/items/[0-9]+'}}
        to: [{service: web}]
      - to: [{service: web}]
"""
ROUTES_FIXED = """routes:
  - name: web-routes
    service: web
    rules:
      - match: {path: {prefix: /items/}}
        to: [{service: web}]
      - to: [{service: web}]
"""


def validate(document: Any, definition: str) -> None:
    jsonschema.validate(document, {**SCHEMA, "$ref": f"#/$defs/{definition}"})


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, deadline: float = DEADLINE) -> T:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: object = None
    while loop.time() < end:
        result = await check()
        if result:
            return result
        last = result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Operated:
    """A control plane with its status endpoint, two Envoys and a backend."""

    policy: Path
    plane: ControlPlane
    session: aiohttp.ClientSession
    envoys: dict[str, Envoy] = field(default_factory=dict)
    backend: Backend | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.plane.status_port}"

    def write(self, name: str, text: str) -> None:
        temporary = (self.policy / name).with_suffix(".tmp")
        temporary.write_text(text)
        temporary.rename(self.policy / name)

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.url + path, headers=headers) as response:
            body = await response.text()
            is_json = response.content_type == "application/json"
            return response.status, json.loads(body) if is_json else body

    async def status(self, query: str = "") -> dict[str, Any]:
        code, document = await self.get("/status" + query)
        assert code == 200, document
        return document  # type: ignore[no-any-return]

    async def states(self) -> dict[str, dict[str, str]]:
        document = await self.status()
        return {proxy["node"]: {t: v["state"] for t, v in proxy["types"].items()} for proxy in document["proxies"]}

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, text = await self.get("/metrics")
        assert code == 200
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshplane",
            *args,
            "--server",
            self.url,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "MESHPLANE_ADMIN_TOKEN": ""},
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return subprocess.CompletedProcess(list(args), process.returncode, out.decode(), err.decode())


def strict_bootstrap(directory: Path) -> str:
    """The sidecar bootstrap with a regex program budget of 1: every regex route is too big for it."""
    config = yaml.safe_load((ENVOY_CONFIGS / "sidecar.yaml").read_text())
    config["layered_runtime"] = {
        "layers": [{"name": "strict-regex", "static_layer": {"re2.max_program_size.error_level": 1}}]
    }
    path = directory / "strict-sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)  # an absolute path: the harness joins it onto envoy-configs/, which keeps it as is


@pytest.fixture
async def operated(tmp_path: Path) -> AsyncIterator[Operated]:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "services.yaml").write_text(BROKEN)  # nothing valid to serve yet
    settings = Settings(
        config=policy,
        xds_address="127.0.0.1:0",
        status_address="127.0.0.1:0",
        poll_interval=3600,
        debounce_quiet=0.02,
        debounce_max=0.2,
        shutdown_grace=0.5,
        admin_token=TOKEN,
    )
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    task = asyncio.create_task(plane.run(stop))
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    state = Operated(policy, plane, session)
    try:
        yield state
    finally:
        for envoy in state.envoys.values():
            await envoy.stop()
        stop.set()
        await task
        await session.close()
        if state.backend is not None:
            await state.backend.close()


async def test_a_nack_shows_everywhere_and_the_fix_shows_synced_everywhere(
    operated: Operated, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Not ready before the first good load; the refused file is on /status and in the log.
    code, body = await operated.get("/readyz")
    assert code == 503
    assert "policy-files has not synced" in body
    source = (await operated.status())["sources"][0]
    assert source["synced"] is False
    assert "eighty" in source["errors"][0]
    logged = caplog.get_records("setup") + caplog.records  # the control plane started in the fixture
    errors = [(r.source, r.error) for r in logged if getattr(r, "event", None) == "source_error"]  # type: ignore[attr-defined]
    assert errors == [("policy-files", error) for error in source["errors"]]  # one line per error
    operated.backend = await start_backend("web")
    operated.write("services.yaml", SERVICES.format(port=operated.backend.port))

    async def ready() -> bool:
        return (await operated.get("/readyz"))[0] == 200

    await eventually(ready, "/readyz after the first good load")

    workdir = tmp_path / "envoy"
    workdir.mkdir()
    operated.envoys["relaxed"] = await start_envoy(workdir, operated.plane.xds_port, node_id="relaxed", delta=True)
    operated.envoys["strict"] = await start_envoy(
        workdir, operated.plane.xds_port, node_id="strict", delta=False, template=strict_bootstrap(workdir)
    )

    async def both(state: str) -> dict[str, dict[str, str]] | None:
        states = await operated.states()
        wanted = {"CDS": state, "EDS": state, "LDS": state, "RDS": state}
        ok = set(states) == {"relaxed", "strict"} and all(
            {t: s for t, s in types.items() if t in wanted} == wanted for types in states.values()
        )
        return states if ok else None

    await eventually(lambda: both("SYNCED"), "both Envoys synced")

    async def relaxed_routes_version() -> str:
        proxies = (await operated.status())["proxies"]
        return str(next(p for p in proxies if p["node"] == "relaxed")["types"]["RDS"]["acked_version"])

    # The regex route: the strict Envoy rejects it, the other takes it.
    before = await relaxed_routes_version()
    operated.write("routes.yaml", ROUTES_WITH_REGEX)

    async def one_nacked() -> dict[str, dict[str, str]] | None:
        states = await operated.states()
        if states.get("strict", {}).get("RDS") != "NACKED" or states.get("relaxed", {}).get("RDS") != "SYNCED":
            return None
        return states if await relaxed_routes_version() != before else None

    await eventually(one_nacked, "the strict Envoy's NACK")
    relaxed_routes = await operated.envoys["relaxed"].config_dump("dynamic_route_configs")
    assert "/items/[0-9]+" in json.dumps(relaxed_routes)  # the other Envoy really runs the new routes

    # /status: the NACK with Envoy's message, per proxy and in recent NACKs; the schema holds.
    document = await operated.status()
    validate(document, "status")
    strict = next(proxy for proxy in document["proxies"] if proxy["node"] == "strict")
    relaxed = next(proxy for proxy in document["proxies"] if proxy["node"] == "relaxed")
    assert strict["state"] == "NACKED"
    assert strict["kind"] == "sotw-ads"
    assert relaxed["state"] == "SYNCED"
    assert relaxed["kind"] == "delta-ads"
    assert strict["role"] == "sidecar"
    assert strict["locality"]["zone"] == "local-a"
    nack = strict["types"]["RDS"]["last_nack"]
    assert "max program size of 1" in nack["message"]
    assert nack["version"] == strict["types"]["RDS"]["sent_version"]
    assert strict["types"]["RDS"]["acked_version"] != nack["version"]  # it keeps its previous routes
    assert [n["node"] for n in document["recent_nacks"]] == ["strict"]
    assert {group["group"] for group in document["groups"]} == {relaxed["group"], strict["group"]}
    for group in document["groups"]:
        assert group["resources"]["CDS"] == 1
        assert group["version"]
    out_of_sync = await operated.status("?out_of_sync=true")
    assert [proxy["node"] for proxy in out_of_sync["proxies"]] == ["strict"]
    assert (await operated.status("?role=grpc"))["proxies"] == []

    # One log line for the NACK, with node id and type.
    nack_records = [r for r in caplog.records if getattr(r, "event", None) == "nack"]
    assert [(r.node_id, r.type) for r in nack_records] == [("strict", "RDS")]  # type: ignore[attr-defined]

    # /metrics: counted, and the state gauge shows one NACKED proxy.
    samples = await operated.metrics()
    assert samples[("meshplane_xds_nacks_total", (("type", "RDS"),))] == 1
    assert samples[("meshplane_xds_proxies", (("state", "NACKED"), ("type", "RDS")))] == 1
    assert samples[("meshplane_xds_proxies", (("state", "SYNCED"), ("type", "RDS")))] == 1
    assert samples[("meshplane_xds_connected_streams", (("kind", "delta-ads"), ("role", "sidecar"), ("site", "")))] == 1
    assert samples[("meshplane_xds_connected_streams", (("kind", "sotw-ads"), ("role", "sidecar"), ("site", "")))] == 1
    assert samples[("meshplane_xds_push_latency_seconds_count", (("type", "CDS"),))] >= 2
    assert samples[("meshplane_rebuilds_total", (("kind", "full"),))] >= 2
    ads = (("grpc_method", "StreamAggregatedResources"), ("grpc_service", _ADS))
    assert samples[("meshplane_grpc_server_started_total", ads)] == 1
    assert samples[("meshplane_grpc_server_msg_received_total", ads)] >= 4

    # The CLI table, run as an operator runs it (stdout is a pipe: plain text).
    table = await operated.cli("status")
    assert table.returncode == 0, table.stderr
    rows = _table(table.stdout)
    assert rows["strict"]["RDS"] == "NACKED"
    assert rows["strict"]["CDS"] == "SYNCED"
    assert rows["relaxed"]["RDS"] == "SYNCED"
    assert "strict RDS NACKED" in table.stdout
    assert "max program size of 1" in table.stdout
    stale = await operated.cli("status", "--stale")
    assert set(_table(stale.stdout)) == {"strict"}
    as_json = await operated.cli("status", "--output", "json")
    validate(json.loads(as_json.stdout), "status")

    # The dashboard, in a real browser.
    def shows(node: str, state: str) -> Callable[[Page], bool]:
        return lambda page: any(
            row.attrs.get("data-state") == state for row in page.find("tr", class_="proxy", data_node=node)
        )

    page = await dashboard_when(operated.url + "/", shows("strict", "NACKED"))
    assert page.one("tr", class_="proxy", data_node="relaxed").attrs["data-state"] == "SYNCED"
    strict_row = page.one("tr", class_="proxy", data_node="strict")
    assert [c.attrs["data-state"] for c in page.find("td", data_type="RDS")] == ["SYNCED", "NACKED"]
    assert strict_row.attrs["data-role"] == "sidecar"
    assert "max program size of 1" in page.one("tr", class_="nack", data_node="strict").content

    # /config?node=: exactly what each proxy was last sent; for the strict one, the rejected routes.
    code, dump = await operated.get("/config?node=strict")
    assert code == 200
    validate(dump, "configDumpSent")
    assert dump["types"]["RDS"]["state"] == "NACKED"
    assert "/items/[0-9]+" in json.dumps(dump["types"]["RDS"]["resources"])
    code, dump = await operated.get("/config?node=relaxed")
    ours = {r["name"]: r["resource"] for r in dump["types"]["RDS"]["resources"]}
    envoys = {c["route_config"]["name"]: c["route_config"] for c in relaxed_routes["configs"]}
    assert ours == envoys  # the same JSON as Envoy's own /config_dump

    # The fix: both Envoys take the new routes; everything shows synced.
    before = await relaxed_routes_version()
    operated.write("routes.yaml", ROUTES_FIXED)

    async def fixed() -> dict[str, dict[str, str]] | None:
        states = await both("SYNCED")
        return states if states and await relaxed_routes_version() != before else None

    await eventually(fixed, "both Envoys synced after the fix")
    document = await operated.status()
    validate(document, "status")
    assert {proxy["state"] for proxy in document["proxies"]} == {"SYNCED"}
    assert (await operated.status("?out_of_sync=true"))["proxies"] == []
    samples = await operated.metrics()
    assert samples[("meshplane_xds_proxies", (("state", "SYNCED"), ("type", "RDS")))] == 2
    assert samples[("meshplane_xds_proxies", (("state", "NACKED"), ("type", "RDS")))] == 0
    assert samples[("meshplane_xds_nacks_total", (("type", "RDS"),))] == 1  # a counter: the NACK happened
    table = await operated.cli("status")
    assert {row["RDS"] for row in _table(table.stdout).values()} == {"SYNCED"}
    assert "NACKED" not in table.stdout
    page = await dashboard_when(operated.url + "/", shows("strict", "SYNCED"))
    assert {row.attrs["data-state"] for row in page.find("tr", class_="proxy")} == {"SYNCED"}
    assert {c.attrs["data-state"] for c in page.find("td", data_type="RDS")} == {"SYNCED"}

    # `meshplane config NODE` and what a proxy of a kind would get now.
    config = await operated.cli("config", "strict")
    assert config.returncode == 0, config.stderr
    assert "RDS" in config.stdout
    assert "SYNCED" in config.stdout
    code, current = await operated.get("/config?role=sidecar&outbound_port=15001")
    assert code == 200
    validate(current, "configDumpCurrent")
    assert "/items/" in json.dumps(current["types"]["RDS"])
    assert current["withheld"] == ["SDS"]
    sources = await operated.cli("status", "sources")
    assert _table(sources.stdout, key="SOURCE")["policy-files"]["SYNCED"] == "yes"


_ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _table(text: str, key: str = "NAME") -> dict[str, dict[str, str]]:
    """The plain-text table `meshplane status` prints: rows by their first column (split on 2+ spaces)."""
    import re

    lines = [line for line in text.splitlines() if line.strip()]
    header_at = next(i for i, line in enumerate(lines) if line.startswith(key))
    headers = re.split(r"\s{2,}", lines[header_at].strip())
    rows = {}
    for line in lines[header_at + 1 :]:
        if not line[0].isalnum() or line.endswith(":"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(headers, cells, strict=True))
    return rows
