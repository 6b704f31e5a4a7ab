"""End to end without Kubernetes: a Gateway and HTTPRoutes written in a policy directory, served by
`meshplane serve --config DIR` to a real gateway Envoy started from `meshplane bootstrap gateway`.

- Requests through the Envoy reach the backends the route names: by path, header and weight.
- Editing the route file (a hot reload) changes where requests go.
- The policy-file source counts the Gateway it serves on /status.

Backends are HTTP servers on 127.0.0.1 answering JSON with their name. Every wait polls a
condition with a generous deadline and fails showing what it last saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import pytest

from tests.envoy_harness import REPO, Envoy
from tests.k8s.gateway_api_fixtures import launch_envoy, until
from tests.k8s.test_gateway_api_serving import Echo, ports_and_offset
from tests.ports import free_port
from tests.serve_process import serve

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]
DEADLINE = 60.0

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: shop
spec:
  gatewayClassName: meshplane
  listeners:
    - name: http
      port: {port}
      protocol: HTTP
"""

SERVICES = """\
services:
  - name: web
    namespace: shop
    port: 8080
    endpoints: [{{address: 127.0.0.1, port: {web}}}]
  - name: api
    namespace: shop
    port: 8080
    endpoints: [{{address: 127.0.0.1, port: {api}}}]
"""

# The HTTPRoute shop/web up to its rules; the two versions below differ only in those.
ROUTE_HEAD = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: shop
spec:
  parentRefs: [{name: edge}]
  hostnames: [web.example]
  rules:
"""

ROUTE_BY_PATH = (
    ROUTE_HEAD
    + """\
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: api, port: 8080}]
    - matches: [{headers: [{name: x-canary, value: "yes"}]}]
      backendRefs: [{name: api, port: 8080}]
    - matches: [{path: {type: PathPrefix, value: /split}}]
      backendRefs: [{name: web, port: 8080, weight: 1}, {name: api, port: 8080, weight: 1}]
    - backendRefs: [{name: web, port: 8080}]
"""
)

# The same route after an edit: everything to api.
ROUTE_ALL_TO_API = ROUTE_HEAD + "    - backendRefs: [{name: api, port: 8080}]\n"


async def start_envoy(workdir: Path, xds_port: int, offset: int) -> Envoy:
    """An Envoy from the bootstrap `meshplane bootstrap gateway --gateway shop/edge` renders."""
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap, admin_path, log_path = workdir / "gateway.yaml", workdir / "gateway.admin", workdir / "gateway.log"
    rendered = subprocess.run(
        [
            *(sys.executable, "-m", "meshplane", "bootstrap", "gateway"),
            *("--xds-server", f"127.0.0.1:{xds_port}", "--node-id", "gateway-files"),
            *("--gateway", "shop/edge", "--listen-address", "127.0.0.1", "--port-offset", str(offset)),
            *("--admin-address", "127.0.0.1:0", "-o", str(bootstrap)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    envoy = await launch_envoy(bootstrap, admin_path, log_path)
    return envoy


async def test_a_gateway_in_a_policy_directory_is_served_and_follows_edits(tmp_path: Path) -> None:
    web, api = await Echo("web").start(), await Echo("api").start()
    (port,), offset = ports_and_offset(1)
    policy = tmp_path / "policy"
    policy.mkdir()
    # Services and the Gateway in one file, separated by `---`; the route in its own file.
    (policy / "mesh.yaml").write_text(SERVICES.format(web=web.port, api=api.port) + "---\n" + GATEWAY.format(port=port))
    route_file = policy / "route.yaml"
    route_file.write_text(ROUTE_BY_PATH)
    xds_port = free_port()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def backend(path: str, headers: dict[str, str] | None = None) -> str | None:
        """Which backend answered `path` on web.example through the Envoy (None: no answer yet)."""
        try:
            async with session.get(
                f"http://127.0.0.1:{port + offset}{path}", headers={"host": "web.example", **(headers or {})}
            ) as response:
                if response.status != 200:
                    return None
                body = json.loads(await response.text())
                return str(body["backend"])
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    try:
        async with serve("--config", str(policy), xds_address=f"127.0.0.1:{xds_port}") as plane:
            document = await plane.status()
            files = next(source for source in document["sources"] if source["name"] == "policy-files")
            assert files["counts"]["gateways"] == 1, files
            assert not files["errors"], files
            # The preview of a gateway proxy of this Gateway, as `meshplane config --gateway` asks for it.
            code, body = await plane.get(f"/config?role=gateway&gateway=shop/edge&port_offset={offset}")
            assert code == 200, body
            listeners = [resource["name"] for resource in json.loads(body)["types"]["LDS"]["resources"]]
            assert listeners == [f"gateway_{port + offset}"]
            envoy = await start_envoy(tmp_path / "envoy", xds_port, offset)
            try:
                assert await until(lambda: _is(backend("/"), "web"), "/ to reach web") == "web"
                assert await backend("/api/items") == "api"
                assert await backend("/", {"x-canary": "yes"}) == "api"
                seen: set[str] = set()

                async def both_halves() -> set[str] | None:
                    if (found := await backend("/split")) is not None:
                        seen.add(found)
                    return seen if seen == {"web", "api"} else None

                await until(both_halves, "/split to reach both web and api")

                # A broken edit is refused with file:line and the reason; the last good routes keep serving.
                route_file.write_text(ROUTE_BY_PATH.replace("PathPrefix", "Prefix"))

                async def refused() -> list[str] | None:
                    document = await plane.status()
                    files = next(source for source in document["sources"] if source["name"] == "policy-files")
                    return files["errors"] or None

                errors = await until(refused, "the broken route file to be refused")
                assert any(
                    error.startswith(f"{route_file}:10: HTTPRoute shop/web: spec.rules[0].matches[0].path.type")
                    for error in errors
                ), errors
                assert await backend("/") == "web"

                # A hot reload: the route file edited, everything goes to api.
                route_file.write_text(ROUTE_ALL_TO_API)
                assert await until(lambda: _is(backend("/"), "api"), "/ to reach api after the edit") == "api"
                assert await backend("/split") == "api"
            finally:
                await envoy.stop()
    finally:
        await session.close()
        await web.close()
        await api.close()


async def _is(found: Awaitable[str | None], wanted: str) -> str | None:
    return wanted if await found == wanted else None
