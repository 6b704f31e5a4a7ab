"""A real Envoy over SotW ADS, sent only the endpoints that changed, keeps the ones that did not.

EDS responses over SotW carry only the clusters whose endpoints changed (the xDS protocol's
"Grouping resources into responses": only Listener and Cluster responses are full state). Envoy
must keep every other cluster's endpoints, serve traffic to all, and the status endpoint must
still show everything the proxy holds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshplane.xds.types import TypeUrl
from tests.test_envoy_integration import Mesh, answered_by, answers, running_mesh, service

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

WEB, OTHER = "web.default:8080", "other.default:8080"


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as state:
        yield state


def endpoint_ports(dump: dict[str, Any]) -> dict[str, list[int]]:
    """Cluster name → the ports of its endpoints, from a config dump with EDS included."""
    found: dict[str, list[int]] = {}
    for config in dump.get("configs", []):
        for entry in config.get("dynamic_endpoint_configs", []):
            assignment = entry["endpoint_config"]
            ports = [
                lb["endpoint"]["address"]["socket_address"]["port_value"]
                for locality in assignment.get("endpoints", [])
                for lb in locality.get("lb_endpoints", [])
            ]
            found[assignment["cluster_name"]] = sorted(ports)
    return found


async def test_an_endpoint_change_keeps_the_other_clusters_endpoints(mesh: Mesh) -> None:
    one, two, other = await mesh.backend("one"), await mesh.backend("two"), await mesh.backend("other")
    mesh.write("services.yaml", "services:\n" + service("web", one.port) + service("other", other.port))
    envoy = await mesh.envoy("sidecar-sotw-changes", delta=False)
    await envoy.eventually(answers(envoy, "web", "one"), "traffic to web")
    await envoy.eventually(answers(envoy, "other", "other"), "traffic to other")
    # Envoy counts an EDS update per cluster only when a response carries that cluster's endpoints.
    other_updates = f"cluster.{OTHER.replace(':', '_')}.update_success"
    before = await envoy.stat(other_updates)
    assert isinstance(before, int), before
    assert before >= 1, before

    # web's endpoint moves; other's does not.
    mesh.write("services.yaml", "services:\n" + service("web", two.port) + service("other", other.port))
    await envoy.eventually(answers(envoy, "web", "two"), "web's new endpoint")

    # The response that moved web carried web only: other's endpoints were not sent again...
    assert await envoy.stat(other_updates) == before
    # ...and Envoy still holds both clusters' endpoints, and routes to both.
    assert endpoint_ports(await envoy.config_dump()) == {WEB: [two.port], OTHER: [other.port]}
    assert await answered_by(envoy, "other") == "other"
    assert await answered_by(envoy, "web") == "two"

    # The status endpoint shows both held, at their current versions.
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{mesh.plane.status_port}/status") as got:
        document = json.loads(await got.text())
    (proxy,) = [p for p in document["proxies"] if p["node"] == "sidecar-sotw-changes"]
    assert proxy["types"]["EDS"]["resources"] == 2, proxy
    (track,) = [t for t in mesh.plane.registry.streams() if t.node_id == "sidecar-sotw-changes"]
    assert [resource.name for resource in track.types[TypeUrl.ENDPOINT].sent_resources()] == [OTHER, WEB]
    assert not mesh.plane.registry.recent_nacks
