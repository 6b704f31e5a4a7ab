"""The dashboard as a browser shows it: Debian's headless Chromium loads `/`, runs its script, and
the DOM it dumps is what we assert on.

Chromium runs with a virtual time budget: its clock advances only while no request is pending,
so the page's fetch of /status completes and its refresh timer fires within the budget, however
slow the machine. `make chromium` installs the browser (`make test` depends on it).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import web

from meshplane.model import ProxyGroup, ProxyRole, SourceStatus
from meshplane.status.document import StatusInputs
from meshplane.status.http import status_app
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import Cause, ChangeLog, Generation, PublishState
from meshplane.xds.server.tracking import StreamKind, StreamRegistry
from meshplane.xds.types import TypeUrl

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def content(self) -> str:
        return "".join(self.text).strip()


class _Collector(HTMLParser):
    """Every element with its attributes and the text directly or indirectly inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text.append(data)


@dataclass
class Page:
    dom: str
    elements: list[Element]

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        wanted = {name.rstrip("_").replace("_", "-"): value for name, value in attrs.items()}
        return [
            element
            for element in self.elements
            if (tag is None or element.tag == tag) and all(element.attrs.get(k) == v for k, v in wanted.items())
        ]

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)} in:\n{self.dom[:4000]}"
        return found[0]

    @property
    def body(self) -> Element:
        return self.one("body")


def require_chromium() -> str:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (Debian's chromium package)")
    return CHROMIUM


async def render(url: str, budget_ms: int = 5000) -> Page:
    """Loads `url` in a fresh headless Chromium, lets `budget_ms` of virtual time pass, and parses the DOM."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="meshplane-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), 90)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    dom = out.decode(errors="replace")
    assert process.returncode == 0, f"chromium failed ({process.returncode}): {err.decode()[-2000:]}"
    assert dom, err.decode()[-2000:]
    collector = _Collector()
    collector.feed(dom)
    return Page(dom, collector.elements)


async def dashboard_when(url: str, ready: Any, deadline: float = 60.0) -> Page:
    """Renders `url` until `ready(page)` holds (the page loaded its data); fails after `deadline` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        page = await render(url)
        if page.body.attrs.get("data-loaded") == "true" and ready(page):
            return page
        if loop.time() > end:
            raise AssertionError(f"the dashboard never showed what was expected:\n{page.dom[:6000]}")
        await asyncio.sleep(0.2)


# A status endpoint over hand-made state: one synced proxy, one whose routes were NACKed with a
# message that would be markup if the page inserted it as HTML.
HOSTILE = "<img src=x onerror=alert(1)> regex '/x\\Z' rejected"


@pytest.fixture
async def fake_endpoint() -> AsyncIterator[str]:
    registry = StreamRegistry()
    group = ProxyGroup(role=ProxyRole.SIDECAR)
    good = registry.open(StreamKind.DELTA_ADS, "good-proxy", "web", group, "envoy 1.40", "ipv4:127.0.0.1:1")
    bad = registry.open(StreamKind.SOTW_ADS, "bad-proxy", "web", group, "envoy 1.40", "ipv4:127.0.0.1:2")
    for track in (good, bad):
        for type_url in (TypeUrl.CLUSTER, TypeUrl.ROUTE):
            registry.sent(track, type_url, "v1", "1", ())
            registry.acked(track, type_url, "v1")
    registry.sent(bad, TypeUrl.ROUTE, "v2", "2", ())
    registry.nacked(bad, TypeUrl.ROUTE, "v2", HOSTILE)
    errors = ("policy/web.yaml:3: port: 'eighty' is not an integer",)
    sources = [SourceStatus("policy-files", False, None, 1.0, errors, {"services": 0})]
    inputs = StatusInputs(sources=lambda: sources, publish_state=PublishState, cache=SnapshotCache(), registry=registry)
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_dashboard_shows_proxies_sources_and_nacks_and_refreshes_itself(fake_endpoint: str) -> None:
    page = await render(f"{fake_endpoint}/")
    body = page.body
    assert body.attrs["data-loaded"] == "true", page.dom[:3000]
    assert int(body.attrs["data-refreshes"]) >= 2  # it fetched /status again by itself
    assert body.attrs["data-ready"] == "false"
    assert page.one("span", id="readiness").content == "not ready"

    source = page.one("tr", data_source="policy-files")
    assert source.attrs["data-synced"] == "false"
    assert "'eighty' is not an integer" in source.content

    assert page.one("tr", class_="proxy", data_node="good-proxy").attrs["data-state"] == "SYNCED"
    bad = page.one("tr", class_="proxy", data_node="bad-proxy")
    assert bad.attrs["data-state"] == "NACKED"
    assert [cell.attrs["data-state"] for cell in page.find("td", data_type="RDS")] == ["NACKED", "SYNCED"]
    nack = page.one("tr", class_="nack", data_node="bad-proxy", data_type="RDS")
    # The NACK message is shown as text, never interpreted as markup.
    assert HOSTILE in nack.content
    assert not page.find("img")


async def test_dashboard_is_self_contained(fake_endpoint: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{fake_endpoint}/") as response:
        html = await response.text()
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    collector = _Collector()
    collector.feed(html)
    for element in collector.elements:
        for name in ("src", "href"):
            assert name not in element.attrs, f"<{element.tag} {name}=…> loads an asset"
    assert "http://" not in html
    assert "https://" not in html


# Two generations of the sidecars' clusters, "v1" then "v2"; the second's cause names a service
# whose name would be markup if the page inserted it as HTML.
MARKUP_SERVICE = "default/<i id=injected>web</i>"


@pytest.fixture
async def changes_endpoint() -> AsyncIterator[str]:
    registry, log = StreamRegistry(), ChangeLog()
    group = ProxyGroup(role=ProxyRole.SIDECAR)
    for number, version, cause, parts, services in (
        (1, "v1", Cause(("policy files",)), ("services",), ()),
        (2, "v2", Cause(("kubernetes",)), ("endpoints",), (MARKUP_SERVICE,)),
    ):
        log.record(
            Generation(number, 1_800_000_000.0 + number, cause, parts, services, len(services), {group: version}),
            {group: {str(TypeUrl.CLUSTER): version}},
        )
    # Every proxy took "v1"; of "v2", one ACKed it, one has not answered, one NACKed it.
    tracks = {
        node_id: registry.open(StreamKind.DELTA_ADS, node_id, "web", group, "envoy 1.40", "ipv4:127.0.0.1:1")
        for node_id in ("new-proxy", "waiting-proxy", "bad-proxy")
    }
    for track in tracks.values():
        registry.sent(track, TypeUrl.CLUSTER, "v1", "1", ())
        registry.acked(track, TypeUrl.CLUSTER, "v1")
        registry.sent(track, TypeUrl.CLUSTER, "v2", "2", ())
    registry.acked(tracks["new-proxy"], TypeUrl.CLUSTER, "v2")
    registry.nacked(tracks["bad-proxy"], TypeUrl.CLUSTER, "v2", HOSTILE)
    inputs = StatusInputs(sources=list, publish_state=PublishState, cache=SnapshotCache(), registry=registry)
    runner = web.AppRunner(status_app(inputs, changes=log), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_dashboard_shows_the_last_generations_with_their_causes_and_who_reached_them(
    changes_endpoint: str,
) -> None:
    page = await dashboard_when(f"{changes_endpoint}/", lambda page: bool(page.find("tr", class_="change")))
    rows = page.find("tr", class_="change")
    assert [row.attrs["data-generation"] for row in rows] == ["2", "1"]  # newest first

    first = page.one("tr", class_="change", data_generation="1")
    assert "policy files (services)" in first.content
    assert "reached 3 of 3" in first.content
    assert first.attrs["data-complete"] == "true"

    second = page.one("tr", class_="change", data_generation="2")
    assert "reached 1 of 3" in second.content
    assert page.one("td", title="2027-01-15T08:00:02.000Z").content  # its local time; UTC on hover
    assert (second.attrs["data-pending"], second.attrs["data-nacked"]) == ("1", "1")
    assert "waiting-proxy" in second.content
    nacked = page.one("li", class_="nacked", data_node="bad-proxy")
    assert "NACKED" in nacked.content
    assert "new-proxy" not in second.content

    # Text from the server, the cause's service name and the NACK's message, is shown as text.
    assert f"kubernetes (endpoints: {MARKUP_SERVICE})" in second.content
    assert HOSTILE in nacked.content
    assert not page.find(id="injected")
    assert not page.find("img")


async def test_dashboard_says_so_when_the_endpoint_keeps_no_change_log(fake_endpoint: str) -> None:
    page = await dashboard_when(
        f"{fake_endpoint}/", lambda page: "no change log" in page.one("table", id="changes").content
    )
    assert not page.find("tr", class_="change")
    assert page.body.attrs.get("data-error") == ""
