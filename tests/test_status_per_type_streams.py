"""A proxy on the per-type services holds one stream per EDS cluster, SDS secret and RDS route
configuration; what operators see of it combines them all.

- A real per-type Envoy with two clusters (two EDS streams): `/config?node=` holds every
  cluster's endpoints, exactly as the Envoy's own `/config_dump` shows them.
- One EDS stream of the node NACKed while the Envoy's own EDS streams ACK later versions: `/status`
  shows the node's EDS as NACKED (worst state wins), its resources counted once each, no common
  version, each stream's own state in its `streams` entry; `meshplane status`, the proxy gauge and
  the config dump agree.
- The rule on the real stream registry: worst state wins, versions only when every stream agrees,
  resources counted once, a newer stream holding what an older one held replaces it (a reconnect),
  and a node's ADS stream behaves as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jsonschema
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from meshplane.bootstrap.render import render
from meshplane.model import ProxyGroup, ProxyRole
from meshplane.status.config_dump import node_dump
from meshplane.status.console import config_rows
from meshplane.status.document import node_types
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack, SyncState
from meshplane.xds.snapshot import Resource
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO
from tests.test_bootstrap import Plane, running_plane, serves_web
from tests.xds_fixtures import EDS, AdsStream, endpoints, request

SCHEMA = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
NODE = "per-type-status"
WEB = "web.default:8080"
API = "api.default:8090"
API_POLICY = """services:
  - {name: api, port: 8090, endpoints: [{address: 127.0.0.1, port: 9}]}
"""


def validate(document: Any, definition: str) -> None:
    jsonschema.validate(document, {**SCHEMA, "$ref": f"#/$defs/{definition}"})


async def get_json(plane: Plane, path: str) -> Any:
    url = f"http://127.0.0.1:{plane.control.status_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def proxy_of(plane: Plane, query: str = "") -> dict[str, Any] | None:
    document = await get_json(plane, "/status" + query)
    validate(document, "status")
    return next((proxy for proxy in document["proxies"] if proxy["node"] == NODE), None)


def eds_tracks(plane: Plane) -> dict[str, StreamTrack]:
    """The node's streams that carry EDS, by the one assignment each was sent."""
    found = {}
    for track in plane.control.registry.streams():
        entry = track.types.get(TypeUrl.ENDPOINT)
        if track.node_id == NODE and entry is not None:
            for resource in entry.sent_resources():
                found[resource.name] = track
    return found


def addresses(assignment: dict[str, Any]) -> set[tuple[str, int]]:
    """The endpoints of a ClusterLoadAssignment as JSON (ours, or Envoy's, which adds defaults)."""
    return {
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for locality in assignment.get("endpoints", [])
        for e in locality.get("lb_endpoints", [])
    }


def node_of(plane: Plane, sotw: bool) -> base_pb2.Node:
    """The node the per-type Envoy of this test sends (so the same group): read from its bootstrap."""
    rendered = yaml.safe_load(render(plane.options("sidecar", NODE, sotw=sotw, transport="per-type")))
    return json_format.ParseDict(rendered["node"], base_pb2.Node())


async def cli_status(plane: Plane) -> str:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meshplane", "status", "--server", f"http://127.0.0.1:{plane.control.status_port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "MESHPLANE_ADMIN_TOKEN": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


def table_row(text: str, node: str) -> dict[str, str]:
    """The row of `node` in the plain-text table `meshplane status` prints (cells split on 2+ spaces)."""
    import re

    lines = [line for line in text.splitlines() if line.strip()]
    headers = re.split(r"\s{2,}", lines[0].strip())
    [row] = [re.split(r"\s{2,}", line.strip()) for line in lines[1:] if line.startswith(node + " ")]
    return dict(zip(headers, row, strict=True))


async def proxy_gauge(plane: Plane, type_name: str, state: str) -> float:
    text = await get_json_text(plane, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "meshplane_xds_proxies" and sample.labels == {"type": type_name, "state": state}:
                return sample.value
    raise AssertionError(f"no meshplane_xds_proxies sample for {type_name} {state}")


async def get_json_text(plane: Plane, path: str) -> str:
    url = f"http://127.0.0.1:{plane.control.status_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@pytest.mark.parametrize("sotw", [True, False], ids=["sotw", "delta"])
async def test_a_per_type_proxys_state_and_dump_combine_every_stream_of_a_type(tmp_path: Path, sotw: bool) -> None:
    async with running_plane(tmp_path, extra_policy=API_POLICY) as plane:
        envoy = await plane.envoy(plane.options("sidecar", NODE, sotw=sotw, transport="per-type"))
        await envoy.eventually(serves_web(envoy), "web through the per-type Envoy")

        async def synced() -> dict[str, Any] | None:
            proxy = await proxy_of(plane)
            if proxy is None or set(eds_tracks(plane)) != {WEB, API}:
                return None
            wanted = ("CDS", "EDS", "LDS", "RDS")
            return proxy if all(proxy["types"][t]["state"] == "SYNCED" for t in wanted) else None

        proxy = await envoy.eventually(synced, "the per-type Envoy synced, one EDS stream per cluster")
        # Two clusters, two EDS streams; one resource each, two for the node.
        assert sum("EDS" in stream["types"] for stream in proxy["streams"]) == 2
        assert proxy["types"]["EDS"]["resources"] == 2
        # A version for the type only where every stream has the same: SotW streams are sent their
        # own assignment's version, Delta streams the snapshot's system version.
        versions = [stream["states"]["EDS"]["sent_version"] for stream in proxy["streams"] if "EDS" in stream["types"]]
        assert len(set(versions)) == (2 if sotw else 1)
        assert proxy["types"]["EDS"]["sent_version"] == (None if sotw else versions[0])

        # The node's config dump: every cluster's endpoints, as the Envoy itself holds them.
        dump = await get_json(plane, f"/config?node={NODE}")
        validate(dump, "configDumpSent")
        ours = {r["name"]: r["resource"] for r in dump["types"]["EDS"]["resources"]}
        assert set(ours) == {WEB, API}
        envoys_own = await envoy.config_dump()
        [dumped] = [c for c in envoys_own["configs"] if c["@type"].endswith("EndpointsConfigDump")]
        held = {e["endpoint_config"]["cluster_name"]: e["endpoint_config"] for e in dumped["dynamic_endpoint_configs"]}
        assert {name: addresses(resource) for name, resource in ours.items()} == {
            name: addresses(held[name]) for name in (WEB, API)
        }

        # A second EDS stream for `api` under the same node (a raw client beside the Envoy) NACKs it.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.control.xds_port}") as channel:
            raw = AdsStream(eds_pb2_grpc.EndpointDiscoveryServiceStub(channel).StreamEndpoints())
            await raw.send(request(EDS, [API], with_node=node_of(plane, sotw)))
            response = await raw.recv()
            await raw.send(request(EDS, [API], nonce=response.nonce, error="api: refused by this test"))

            def raw_nacked() -> bool:
                entries = [t.types.get(TypeUrl.ENDPOINT) for t in plane.control.registry.streams() if t.node_id == NODE]
                return any(entry is not None and entry.state is SyncState.NACKED for entry in entries)

            await envoy.eventually(_true_when(raw_nacked), "the raw stream's NACK recorded")

            # Then `web`'s endpoints change: the Envoy's own EDS stream for web is sent and ACKs a
            # new version, after the NACK. The NACKed stream is not sent `api` again (unchanged).
            web_track = eds_tracks(plane)[WEB]
            before = web_track.types[TypeUrl.ENDPOINT].acked_version
            (tmp_path / "policy" / "web.yaml.tmp").write_text(
                "services:\n  - {name: web, port: 8080, endpoints: "
                f"[{{address: 127.0.0.1, port: {plane.backend.port}}}, {{address: 127.0.0.2, port: 9}}]}}\n"
            )
            (tmp_path / "policy" / "web.yaml.tmp").rename(tmp_path / "policy" / "web.yaml")

            def web_acked_anew() -> bool:
                entry = web_track.types[TypeUrl.ENDPOINT]
                return entry.state is SyncState.SYNCED and entry.acked_version != before

            await envoy.eventually(_true_when(web_acked_anew), "the Envoy's ACK of web's new endpoints")
            assert [n.node_id for n in plane.control.registry.recent_nacks] == [NODE]

            # /status: the node's EDS is NACKED, with the NACK that made it so.
            found = await proxy_of(plane)
            assert found is not None
            proxy = found
            eds = proxy["types"]["EDS"]
            assert eds["state"] == "NACKED"
            assert proxy["state"] == "NACKED"
            assert eds["last_nack"]["message"] == "api: refused by this test"
            assert eds["resources"] == 2  # web and api, api counted once over its two streams
            assert eds["sent_version"] is None
            assert eds["pending_nonce"] is None
            # Each stream's own state of each type it carries.
            per_stream = sorted(
                stream["states"]["EDS"]["state"] for stream in proxy["streams"] if "EDS" in stream["types"]
            )
            assert per_stream == ["NACKED", "SYNCED", "SYNCED"]
            assert [p["node"] for p in (await get_json(plane, "/status?out_of_sync=true"))["proxies"]] == [NODE]

            # The same in `meshplane status`, in the proxy gauge and in the config dump.
            row = table_row(await cli_status(plane), NODE)
            assert (row["EDS"], row["CDS"]) == ("NACKED", "SYNCED")
            assert await proxy_gauge(plane, "EDS", "NACKED") == 1
            assert await proxy_gauge(plane, "EDS", "SYNCED") == 0
            dump = await get_json(plane, f"/config?node={NODE}")
            validate(dump, "configDumpSent")
            assert dump["types"]["EDS"]["state"] == "NACKED"
            assert {r["name"] for r in dump["types"]["EDS"]["resources"]} == {WEB, API}
            [web] = [r["resource"] for r in dump["types"]["EDS"]["resources"] if r["name"] == WEB]
            assert len(web["endpoints"][0]["lb_endpoints"]) == 2  # the new version the Envoy ACKed
            await raw.close()


def _true_when(check: Any) -> Any:
    async def wrapped() -> bool:
        return bool(check())

    return wrapped


# --- the rule, on the real stream registry -------------------------------------------------------

PER_TYPE_GROUP = ProxyGroup(ProxyRole.SIDECAR)


def assignment(name: str, port: int = 8080) -> Resource:
    return Resource.of(EDS, name, endpoints(name, port))


def open_stream(registry: StreamRegistry, kind: StreamKind = StreamKind.SOTW) -> StreamTrack:
    return registry.open(kind, "node-1", "test", PER_TYPE_GROUP, "envoy", "ipv4:127.0.0.1:1")


def synced(registry: StreamRegistry, track: StreamTrack, *resources: Resource, version: str = "") -> None:
    version = version or "v-" + "-".join(r.name for r in resources)
    registry.sent(track, EDS, version, f"n{track.stream_id}", resources)
    registry.acked(track, EDS, version)


def test_worst_state_wins_and_resources_count_once() -> None:
    registry = StreamRegistry()
    a, b, c = open_stream(registry), open_stream(registry), open_stream(registry)
    synced(registry, a, assignment("a"))
    registry.sent(b, EDS, "v-b", "nb", (assignment("b"),))
    registry.nacked(b, EDS, "v-b", "b refused")
    synced(registry, c, assignment("c"))  # the last to send and answer: SYNCED
    combined = node_types(registry.streams())[TypeUrl.ENDPOINT]
    assert combined.state is SyncState.NACKED
    assert combined.last_nack is not None
    assert combined.last_nack.message == "b refused"
    assert combined.resource_count == 3
    assert combined.sent_version == ""  # three streams, three versions
    registry.sent(b, EDS, "v-b2", "nb2", (assignment("b", 9090),))
    assert node_types(registry.streams())[TypeUrl.ENDPOINT].state is SyncState.STALE
    assert node_types(registry.streams())[TypeUrl.ENDPOINT].pending_nonce == "nb2"


def test_versions_show_when_every_stream_agrees() -> None:
    registry = StreamRegistry()
    a, b = open_stream(registry), open_stream(registry)
    synced(registry, a, assignment("a"), version="same")
    synced(registry, b, assignment("b"), version="same")
    combined = node_types(registry.streams())[TypeUrl.ENDPOINT]
    assert (combined.state, combined.sent_version, combined.acked_version) == (SyncState.SYNCED, "same", "same")


def test_a_newer_stream_holding_an_older_ones_resources_replaces_it() -> None:
    registry = StreamRegistry()
    old, other = open_stream(registry), open_stream(registry)
    registry.sent(old, EDS, "v-a", "n1", (assignment("a"),))  # never answered: its connection went away
    synced(registry, other, assignment("b"))
    assert node_types(registry.streams())[TypeUrl.ENDPOINT].state is SyncState.STALE
    new = open_stream(registry)  # the reconnect, asking for `a` again
    synced(registry, new, assignment("a"))
    combined = node_types(registry.streams())[TypeUrl.ENDPOINT]
    assert combined.state is SyncState.SYNCED
    assert combined.resource_count == 2


@pytest.mark.parametrize("kind", [StreamKind.SOTW_ADS, StreamKind.DELTA_ADS], ids=["sotw-ads", "delta-ads"])
def test_an_ads_node_shows_its_newest_ads_stream(kind: StreamKind) -> None:
    """One ADS stream per node: while a reconnect overlaps, the newer stream's state is the node's,
    even where the older one held resources the newer one was not sent."""
    registry = StreamRegistry()
    old = open_stream(registry, kind)
    registry.sent(old, EDS, "v1", "n1", (assignment("a"), assignment("gone")))
    registry.nacked(old, EDS, "v1", "refused")
    new = open_stream(registry, kind)
    synced(registry, new, assignment("a"), version="v2")
    combined = node_types(registry.streams())[TypeUrl.ENDPOINT]
    assert (combined.state, combined.sent_version, combined.resource_count) == (SyncState.SYNCED, "v2", 1)
    dump = node_dump("node-1", registry.streams(), authorized=False)
    assert [r["name"] for r in dump["types"]["EDS"]["resources"]] == ["a"]


def test_meshplane_config_says_a_types_versions_differ_by_stream() -> None:
    registry = StreamRegistry()
    synced(registry, open_stream(registry), assignment("a"))
    synced(registry, open_stream(registry), assignment("b"))
    _, rows = config_rows(node_dump("node-1", registry.streams(), authorized=False))
    assert rows == [["EDS", "per stream", "SYNCED", "2: a, b"]]
