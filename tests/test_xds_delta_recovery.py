"""What /status and config dumps say of real Envoys after a rejected policy is reverted, and after
a Delta Envoy fails over to another replica: what the proxy runs, SotW and Delta alike."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshplane.app import ControlPlane
from tests.edge_plane import running_control_plane
from tests.envoy_harness import Backend, Envoy, start_backend, start_envoy
from tests.ports import free_port
from tests.test_xds_keys import get, settings

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]

# Envoy's default limit on a regex's RE2 program is 100, which meshplane holds every policy to.
# These Envoys are given a limit of 10 in their bootstrap's runtime, so a modest route regex
# (program size 19) is refused by them only: a NACK that a valid policy can cause.
LOW_RE2_LIMIT = 10
REGEX_ROUTES = """routes:
  - name: rides
    service: web
    rules:
      - match: {path: {regex: "/rides/[0-9]+/stats"}}
        to: [{service: web}]
"""
XDS_TYPES = ("CDS", "EDS", "LDS", "RDS")


def low_re2_limit(config: dict[str, Any]) -> None:
    config["layered_runtime"] = {
        "layers": [{"name": "static", "static_layer": {"re2.max_program_size.error_level": LOW_RE2_LIMIT}}]
    }


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    web, api = await start_backend("web"), await start_backend("api")
    try:
        yield web, api
    finally:
        await web.close()
        await api.close()


def write_services(policy: Path, web: Backend, api: Backend) -> Path:
    policy.mkdir(parents=True, exist_ok=True)
    (policy / "services.yaml").write_text(
        "services:\n"
        f"  - {{name: web, port: 8080, endpoints: [{{address: 127.0.0.1, port: {web.port}}}]}}\n"
        f"  - {{name: api, port: 8080, endpoints: [{{address: 127.0.0.1, port: {api.port}}}]}}\n"
    )
    return policy


async def proxy_types(plane: ControlPlane, node_id: str) -> dict[str, Any] | None:
    document = json.loads(await get(plane, "/status"))
    for proxy in document["proxies"]:
        if proxy["node"] == node_id:
            types: dict[str, Any] = proxy["types"]
            return types
    return None


def states(types: dict[str, Any] | None) -> dict[str, str]:
    return {name: types[name]["state"] for name in XDS_TYPES} if types else {}


async def serves(envoy: Envoy, host: str) -> bool:
    status, body, _ = await envoy.request(host)
    return status == 200 and body.startswith(host)


async def test_delta_and_sotw_envoys_are_synced_again_once_a_rejected_policy_is_reverted(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    policy = write_services(tmp_path / "policy", *backends)
    async with running_control_plane(settings(policy)) as plane:
        envoys = {
            node_id: await start_envoy(
                tmp_path / "envoy", plane.xds_port, node_id=node_id, delta=delta, patch=low_re2_limit
            )
            for node_id, delta in (("strict-delta", True), ("strict-sotw", False))
        }
        try:
            for node_id, envoy in envoys.items():
                await envoy.eventually(functools.partial(serves, envoy, "web"), f"{node_id} serving web")

            async def all_in(state: str) -> bool:
                for node_id in envoys:
                    found = states(await proxy_types(plane, node_id))
                    if not found or set(found.values()) != {state}:
                        return False
                return True

            async def rds_nacked() -> bool:
                for node_id in envoys:
                    types = await proxy_types(plane, node_id)
                    if not types or types["RDS"]["state"] != "NACKED":
                        return False
                return True

            some = next(iter(envoys.values()))
            await some.eventually(lambda: all_in("SYNCED"), "both proxies SYNCED on /status")

            (policy / "routes.yaml").write_text(REGEX_ROUTES)
            await some.eventually(rds_nacked, "both proxies NACKing the routes")
            for node_id in envoys:
                types = await proxy_types(plane, node_id)
                assert types is not None
                assert "RE2 program size" in types["RDS"]["last_nack"]["message"]

            (policy / "routes.yaml").unlink()  # the fix: back to the policy both accepted
            await some.eventually(lambda: all_in("SYNCED"), "both proxies SYNCED again after the revert")
            for node_id in envoys:
                types = await proxy_types(plane, node_id)
                assert types is not None
                assert types["RDS"]["acked_version"] == types["RDS"]["sent_version"]
                assert types["RDS"]["last_nack"] is not None, "the NACK stays, as history"
            for node_id, envoy in envoys.items():
                assert await serves(envoy, "web"), node_id
        finally:
            for envoy in envoys.values():
                await envoy.stop()


async def test_a_delta_envoy_failing_over_shows_what_it_holds_on_the_new_replica(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    policy = write_services(tmp_path / "policy", *backends)
    ports = (free_port(), free_port())
    planes = [ControlPlane(settings(policy, xds_address=f"127.0.0.1:{port}")) for port in ports]  # replicas
    stops = [asyncio.Event() for _ in planes]
    tasks = []
    for plane, stop in zip(planes, stops, strict=True):
        await plane.start()
        tasks.append(asyncio.create_task(plane.run(stop)))

    def both_replicas(config: dict[str, Any]) -> None:
        (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "meshplane"]
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        second = json.loads(json.dumps(endpoints[0]))
        second["endpoint"]["address"]["socket_address"]["port_value"] = ports[1]
        endpoints.append(second)

    envoy = await start_envoy(tmp_path / "envoy", ports[0], node_id="roaming", delta=True, patch=both_replicas)
    try:
        for host in ("web", "api"):
            await envoy.eventually(functools.partial(serves, envoy, host), f"{host} through the Envoy")

        async def holder() -> int | None:
            for index, plane in enumerate(planes):
                if set(states(await proxy_types(plane, "roaming")).values()) == {"SYNCED"}:
                    return index + 1
            return None

        first = await envoy.eventually(holder, "the Envoy synced on one replica") - 1
        other = planes[1 - first]
        before = await proxy_types(planes[first], "roaming")
        assert before is not None
        stops[first].set()  # that replica stops: its streams end, the Envoy reconnects to the other
        await tasks[first]

        async def synced_on_the_other() -> dict[str, Any] | None:
            types = await proxy_types(other, "roaming")
            return types if set(states(types).values()) == {"SYNCED"} else None

        after = await envoy.eventually(synced_on_the_other, "the Envoy synced on the other replica")
        for name in XDS_TYPES:
            assert after[name]["resources"] == before[name]["resources"] > 0, name
        dump = json.loads(await get(other, "/config?node=roaming"))
        held = {name: sorted(r["name"] for r in dump["types"][name]["resources"]) for name in XDS_TYPES}
        assert held["CDS"] == ["api.default:8080", "web.default:8080"]
        assert held["EDS"] == ["api.default:8080", "web.default:8080"]
        assert len(held["LDS"]) == 1
        assert len(held["RDS"]) == 1
        assert await serves(envoy, "api")
    finally:
        await envoy.stop()
        for stop, task in zip(stops, tasks, strict=True):
            stop.set()
            await task
