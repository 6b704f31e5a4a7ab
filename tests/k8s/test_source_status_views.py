"""What an operator sees of the sources' health: `/status` over HTTP, `meshplane status sources` as
a process, and the dashboard in headless Chromium, for a control plane running policy files (three
edge sites), Kubernetes (the fake API server, through the real client) and the edge registry.

- notes about single objects (a UDP port not served) are shown apart from errors;
- the edge registry counts the sites configured, not only those with a device;
- a source serving its last good content while its current content is refused says so (amber),
  never a green "synced";
- the edge registry, healthy and quiet, keeps confirming it is in sync (its age does not grow).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshplane.app import ControlPlane
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from tests.edge_plane import QUICK, running_edge_plane
from tests.k8s import objects as k
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.test_kubernetes_app import write_kubeconfig
from tests.test_cli_status import meshplane
from tests.test_dashboard import dashboard_when

THREE_SITES = """sites:
  - {id: gym, region: eu, device_ranges: ['10.1.0.0/24']}
  - {id: pool, region: eu, device_ranges: ['10.2.0.0/24']}
  - {id: track, region: us, device_ranges: ['10.3.0.0/24']}
services:
  - name: files-web
    port: 8080
    endpoints: [{address: 10.9.0.1, port: 8080}]
"""
UDP_NOTE = "service default/dns: port dns is UDP; only TCP ports are served"


async def status_of(plane: ControlPlane) -> dict[str, Any]:
    url = f"http://127.0.0.1:{plane.status_port}/status"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {source["name"]: source for source in document["sources"]}


@pytest.fixture
async def plane(tmp_path: Path, apiserver: FakeApiServer) -> AsyncIterator[ControlPlane]:
    apiserver.apply(k.service("dns", ports=[k.port("dns", 53, protocol="UDP"), k.port("http", 80)]))
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "edge.yaml").write_text(THREE_SITES)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest('device-token')}, device: bike-1}}\n")
    leases = LeaseSettings(default_ttl=2, min_ttl=1, check_interval=0.2)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)
    async with running_edge_plane(
        policy, tmp_path / "registry.db", tokens, leases, kubernetes=True, kubeconfig=kubeconfig, **QUICK
    ) as running:
        yield running


async def all_synced(plane: ControlPlane) -> dict[str, dict[str, Any]]:
    sources: dict[str, dict[str, Any]] = {}

    async def check() -> bool:
        sources.update(by_name(await status_of(plane)))
        return all(source["synced"] for source in sources.values()) and "kubernetes" in sources

    await poll(check, "every source synced")
    return sources


async def poll(condition: Any, what: str) -> None:
    """Awaits the async `condition` until it holds (wait_for takes a plain callable)."""
    result = False

    async def step() -> None:
        nonlocal result
        result = await condition()

    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while True:
        await step()
        if result:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_notes_apart_sites_configured_and_last_good_content_shown(plane: ControlPlane, tmp_path: Path) -> None:
    sources = await all_synced(plane)
    kubernetes = sources["kubernetes"]
    assert kubernetes["state"] == "synced"
    assert kubernetes["errors"] == []
    assert UDP_NOTE in kubernetes["notes"]
    registry = sources["edge-registry"]
    assert registry["counts"]["sites"] == 3
    assert registry["counts"]["sites_with_devices"] == 0
    assert sources["policy-files"]["state"] == "synced"

    # The policy files' current content is refused: they keep serving their last good content.
    (tmp_path / "policy" / "broken.yaml").write_text("services:\n  - {name: web, port: eighty}\n")

    async def refused() -> bool:
        return bool(by_name(await status_of(plane))["policy-files"]["errors"])

    await poll(refused, "the policy files' refusal")
    policy = by_name(await status_of(plane))["policy-files"]
    assert policy["synced"] is True
    assert policy["state"] == "serving_last_good"

    server = f"http://127.0.0.1:{plane.status_port}"
    table = await meshplane("status", "sources", "--server", server)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:] if line and not line.startswith(" ")}
    assert "yes, serving last good" in rows["policy-files"]
    assert "sites 3," in rows["edge-registry"]
    errors, _, notes = table.stdout.partition("\nNotes:\n")
    assert f"kubernetes: {UDP_NOTE}" in notes
    assert UDP_NOTE not in errors
    assert "policy-files: " in errors.partition("\nErrors:\n")[2]

    page = await dashboard_when(
        f"{server}/", lambda page: page.one("tr", data_source="policy-files").attrs.get("data-state") != "synced"
    )
    policy_row = page.one("tr", data_source="policy-files")
    assert policy_row.attrs["data-state"] == "serving_last_good"
    (badge,) = [e for e in page.find("span") if e.attrs.get("data-state") == "serving_last_good"]
    assert badge.content == "serving last good"
    assert "last-good" in badge.attrs["class"].split()
    kubernetes_row = page.one("tr", data_source="kubernetes")
    assert (kubernetes_row.attrs["data-errors"], kubernetes_row.attrs["data-notes"]) == ("0", "1")
    shown = [e.content for e in page.find("li") if UDP_NOTE in e.content]
    assert shown == [UDP_NOTE]  # once, in the notes list (not among the errors)
    assert [e.attrs.get("class") for e in page.find("ul") if UDP_NOTE in e.content] == ["notes"]
    assert "sites 3," in page.one("tr", data_source="edge-registry").content


async def test_a_healthy_quiet_registry_keeps_confirming_its_sync(plane: ControlPlane) -> None:
    """No registration, no change: the registry's store answers every lease sweep, so its
    `last_success` moves on and its sync age stays within a check interval or so."""
    first = (await all_synced(plane))["edge-registry"]["last_success"]
    assert first is not None

    async def confirmed_again() -> bool:
        return bool(float(by_name(await status_of(plane))["edge-registry"]["last_success"]) > first)

    await poll(confirmed_again, "a later confirmation")
