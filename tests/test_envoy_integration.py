"""The whole pipeline through real Envoy processes: policy files → control plane → Envoy → backends.

Each test runs the control plane in-process (so it can read the stream registry) on ephemeral
ports, writes policy files into a temporary directory, and drives traffic through real Envoys
started from envoy-configs/sidecar.yaml. Every test runs over Delta and over SotW.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplane.app import ControlPlane, Settings
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import ENVOY_CONFIGS, Backend, Envoy, start_backend, start_envoy

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]


def service(name: str, *ports: int, extra: str = "") -> str:
    lines = [f"  - name: {name}", "    port: 8080", "    endpoints:"]
    lines += [f"      - {{address: 127.0.0.1, port: {port}}}" for port in ports]
    return "\n".join(lines) + ("\n" + extra if extra else "") + "\n"


@dataclass
class Mesh:
    """A running control plane on a policy directory, plus the Envoys and backends of one test."""

    policy: Path
    workdir: Path
    plane: ControlPlane
    envoys: list[Envoy] = field(default_factory=list)
    backends: dict[str, Backend] = field(default_factory=dict)

    def write(self, name: str, text: str) -> None:
        # Write then rename, as a GitOps sync would, so the poller never reads half a file.
        path = self.policy / name
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.rename(path)

    async def backend(self, name: str) -> Backend:
        self.backends[name] = await start_backend(name)
        return self.backends[name]

    async def envoy(self, node_id: str, delta: bool, **kwargs: Any) -> Envoy:
        envoy = await start_envoy(self.workdir, self.plane.xds_port, node_id=node_id, delta=delta, **kwargs)
        self.envoys.append(envoy)
        return envoy


async def answered_by(envoy: Envoy, host: str, path: str = "/", headers: dict[str, str] | None = None) -> str | None:
    status, body, _ = await envoy.request(host, path, headers)
    return body.split()[0] if status == 200 else None


def answers(envoy: Envoy, host: str, expected: str, path: str = "/", **headers: str) -> Callable[[], Any]:
    async def check() -> bool:
        return await answered_by(envoy, host, path, headers or None) == expected

    return check


async def start_plane(policy: Path, xds_port: int = 0) -> tuple[ControlPlane, asyncio.Event, asyncio.Task[None]]:
    settings = Settings(
        config=policy,
        xds_address=f"127.0.0.1:{xds_port}",
        status_address="127.0.0.1:0",
        poll_interval=3600,  # changes must arrive by file-system notification, not by polling
        debounce_quiet=0.02,
        debounce_max=0.2,
        shutdown_grace=0.5,
    )
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    return plane, stop, asyncio.create_task(plane.run(stop))


@contextlib.asynccontextmanager
async def running_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    """A control plane on the empty policy directory `tmp_path/policy`, its Envoys working in
    `tmp_path/envoy`; on exit the Envoys stop, then the plane, then the backends close."""
    policy = tmp_path / "policy"
    policy.mkdir()
    plane, stop, task = await start_plane(policy)
    state = Mesh(policy, tmp_path / "envoy", plane)
    try:
        yield state
    finally:
        for envoy in state.envoys:
            await envoy.stop()
        stop.set()
        await task
        for backend in state.backends.values():
            await backend.close()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as state:
        yield state


@pytest.fixture(params=[True, False], ids=["delta", "sotw"])
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_traffic_reaches_backends_and_policy_changes_arrive_without_restart(mesh: Mesh, delta: bool) -> None:
    one, two, other = await mesh.backend("one"), await mesh.backend("two"), await mesh.backend("other")
    mesh.write("services.yaml", "services:\n" + service("web", one.port) + service("other", other.port))
    envoy = await mesh.envoy("sidecar-a", delta)
    await envoy.eventually(answers(envoy, "web", "one"), "traffic to web")
    assert await answered_by(envoy, "web.default.svc.cluster.local:8080") == "one"

    # A new endpoint: both replicas answer.
    mesh.write("services.yaml", "services:\n" + service("web", one.port, two.port) + service("other", other.port))

    async def both_answer() -> bool:
        seen = {await answered_by(envoy, "web") for _ in range(20)}
        return seen == {"one", "two"}

    await envoy.eventually(both_answer, "the new endpoint taking traffic")

    # A new route: /other/ on web goes to the other service, the rest still to web.
    mesh.write(
        "routes.yaml",
        """routes:
  - name: web-routes
    service: web
    rules:
      - match: {path: {prefix: /other/}}
        to: [{service: other}]
      - to: [{service: web}]
""",
    )
    await envoy.eventually(answers(envoy, "web", "other", "/other/x"), "the new route")
    assert await answered_by(envoy, "web", "/plain") in {"one", "two"}

    # A weighted split moved entirely to the other service: the canary takes all traffic.
    mesh.write(
        "routes.yaml",
        """routes:
  - name: web-routes
    service: web
    rules:
      - to: [{service: web, weight: 0}, {service: other, weight: 100}]
""",
    )
    await envoy.eventually(answers(envoy, "web", "other", "/plain"), "the weighted split")
    assert not mesh.plane.registry.recent_nacks


async def test_nack_keeps_old_config_is_recorded_and_not_resent(mesh: Mesh, delta: bool) -> None:
    web, other = await mesh.backend("web"), await mesh.backend("other")
    mesh.write("services.yaml", "services:\n" + service("web", web.port) + service("other", other.port))
    # This Envoy's regex budget is 1 (Envoy's default is 100, which our validation holds regexes to), so
    # it rejects a route regex our validation passes.
    config = yaml.safe_load((ENVOY_CONFIGS / "sidecar.yaml").read_text())
    budget = {"re2.max_program_size.error_level": 1}
    config["layered_runtime"] = {"layers": [{"name": "strict", "static_layer": budget}]}
    mesh.workdir.mkdir(parents=True, exist_ok=True)
    strict = mesh.workdir / "strict-sidecar.yaml"
    strict.write_text(yaml.safe_dump(config))
    envoy = await mesh.envoy("sidecar-nack", delta, template=str(strict))
    await envoy.eventually(answers(envoy, "web", "web"), "traffic to web")
    mesh.write(
        "routes.yaml",
        """routes:
  - name: web-routes
    service: web
    rules:
      - match: {path: {regex: '/x[0-9]'}}
        to: [{service: other}]
      - to: [{service: web}]
""",
    )

    async def nacked() -> Any:
        return [n for n in mesh.plane.registry.recent_nacks if n.node_id == "sidecar-nack"]

    nacks = await envoy.eventually(nacked, "the NACK")
    assert nacks[0].type_url is TypeUrl.ROUTE
    assert "program size" in nacks[0].message  # Envoy's own RE2 error, passed on verbatim
    # Envoy keeps serving the last good routes.
    assert await answered_by(envoy, "web", "/x1") == "web"
    route_pushes = mesh.plane.registry.push_counts[TypeUrl.ROUTE]
    # An unrelated change (a new endpoint for `other`) reaches Envoy; the rejected routes are not re-sent.
    second = await mesh.backend("other-2")
    mesh.write("services.yaml", "services:\n" + service("web", web.port) + service("other", other.port, second.port))

    async def other_has_two_endpoints() -> bool:
        dump = await envoy.admin("/clusters?format=json")
        for cluster in json.loads(dump)["cluster_statuses"]:
            if cluster["name"] == "other.default:8080":
                return len(cluster.get("host_statuses", [])) == 2
        return False

    await envoy.eventually(other_has_two_endpoints, "the endpoint change after the NACK")
    assert mesh.plane.registry.push_counts[TypeUrl.ROUTE] == route_pushes
    assert len(await nacked()) == 1
    status = json.loads(await envoy.admin("/stats?format=json&filter=rds.*update_rejected"))
    assert sum(s["value"] for s in status["stats"]) == 1


async def test_changed_eds_cluster_warms_with_its_endpoints(mesh: Mesh, delta: bool) -> None:
    web = await mesh.backend("web")
    mesh.write("services.yaml", "services:\n" + service("web", web.port))
    envoy = await mesh.envoy("sidecar-warm", delta)
    await envoy.eventually(answers(envoy, "web", "web"), "traffic to web")
    # A CDS change to the EDS cluster (its connect timeout): Envoy re-creates and warms it.
    mesh.write("services.yaml", "services:\n" + service("web", web.port, extra="    policy: {connect_timeout: 2s}"))

    async def warmed_with_new_cluster() -> bool:
        dump = await envoy.config_dump("dynamic_active_clusters")
        clusters = [c["cluster"] for c in dump.get("configs", [])]
        changed = any(c.get("name") == "web.default:8080" and c.get("connect_timeout") == "2s" for c in clusters)
        return changed and await envoy.stat("cluster_manager.warming_clusters") == 0

    await envoy.eventually(warmed_with_new_cluster, "the changed cluster to warm")
    # It warmed because endpoints arrived, not because Envoy's initial fetch timeout fired.
    timeouts = json.loads(await envoy.admin("/stats?format=json&filter=init_fetch_timeout"))
    assert all(s["value"] == 0 for s in timeouts["stats"]), timeouts
    assert await answered_by(envoy, "web") == "web"


async def test_envoy_keeps_serving_through_a_control_plane_restart_and_reconverges(
    mesh: Mesh, delta: bool, tmp_path: Path
) -> None:
    web, canary = await mesh.backend("web"), await mesh.backend("canary")
    mesh.write("services.yaml", "services:\n" + service("web", web.port) + service("canary", canary.port))
    envoy = await mesh.envoy("sidecar-restart", delta)
    await envoy.eventually(answers(envoy, "web", "web"), "traffic to web")
    port = mesh.plane.xds_port
    await mesh.plane.shutdown()

    async def disconnected() -> bool:
        return await envoy.stat("control_plane.connected_state") == 0

    await envoy.eventually(disconnected, "Envoy to notice the control plane is gone")
    assert await answered_by(envoy, "web") == "web"  # still serving its last config

    plane, stop, task = await start_plane(mesh.policy, port)
    try:

        async def reconnected() -> bool:
            return any(t.node_id == "sidecar-restart" for t in plane.registry.streams())

        await envoy.eventually(reconnected, "Envoy to reconnect")
        mesh.write(
            "routes.yaml",
            "routes:\n  - name: r\n    service: web\n    rules:\n      - to: [{service: canary}]\n",
        )
        await envoy.eventually(answers(envoy, "web", "canary"), "a change after the restart")
    finally:
        stop.set()
        await task


async def test_several_envoys_in_different_zones_get_their_own_priorities(mesh: Mesh) -> None:
    near, far = await mesh.backend("near"), await mesh.backend("far")
    mesh.write(
        "services.yaml",
        f"""services:
  - name: web
    port: 8080
    endpoints:
      - {{address: 127.0.0.1, port: {near.port}, region: r1, zone: a}}
      - {{address: 127.0.0.1, port: {far.port}, region: r1, zone: b}}
""",
    )
    in_a = await mesh.envoy("sidecar-zone-a", True, region="r1", zone="a")
    in_b = await mesh.envoy("sidecar-zone-b", False, region="r1", zone="b")
    await in_a.eventually(answers(in_a, "web", "near"), "zone a preferring its own zone")
    await in_b.eventually(answers(in_b, "web", "far"), "zone b preferring its own zone")
    assert {await answered_by(in_a, "web") for _ in range(10)} == {"near"}
    assert {await answered_by(in_b, "web") for _ in range(10)} == {"far"}
    zones = sorted((group.role.value, group.locality.zone) for group in mesh.plane.cache.groups())
    assert zones == [("sidecar", "a"), ("sidecar", "b")]


async def test_stopping_the_control_plane_ends_streams_at_once_so_envoy_reconnects(mesh: Mesh, delta: bool) -> None:
    web = await mesh.backend("web")
    mesh.write("services.yaml", "services:\n" + service("web", web.port))
    envoy = await mesh.envoy("sidecar-stop", delta)
    await envoy.eventually(answers(envoy, "web", "web"), "traffic to web")
    # A grace period far longer than the test's deadline: only ending the streams can make stop() return.
    mesh.plane.settings = dataclasses.replace(mesh.plane.settings, shutdown_grace=3600)
    await asyncio.wait_for(mesh.plane.shutdown(), 30)
    assert await answered_by(envoy, "web") == "web"
