"""A Gateway API gateway Envoy whose HTTPRoute's backend is a service named by DNS: policy files
(services, Gateway, HTTPRoute) served by `meshplane serve`, a real gateway Envoy from `meshplane
bootstrap gateway`, the backend on 127.0.0.1 named `localhost` (which /etc/hosts maps already)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.k8s.gateway_api_fixtures import until
from tests.k8s.test_gateway_api_serving import Echo, ports_and_offset
from tests.ports import free_port
from tests.serve_process import serve
from tests.test_gateway_api_policy_serving import GATEWAY, start_envoy

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]

SERVICES = """\
services:
  - name: payments
    namespace: shop
    port: 8080
    dns: {{lookup_family: v4}}
    endpoints: [{{address: localhost, port: {port}}}]
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: pay
  namespace: shop
spec:
  parentRefs: [{name: edge}]
  hostnames: [pay.example]
  rules:
    - backendRefs: [{name: payments, port: 8080}]
"""


async def test_a_gateway_routes_to_a_backend_named_by_dns(tmp_path: Path) -> None:
    payments = await Echo("payments").start()
    (port,), offset = ports_and_offset(1)
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mesh.yaml").write_text(SERVICES.format(port=payments.port) + "---\n" + GATEWAY.format(port=port))
    (policy / "route.yaml").write_text(ROUTE)
    xds_port = free_port()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def answered_by() -> str | None:
        try:
            async with session.get(f"http://127.0.0.1:{port + offset}/", headers={"host": "pay.example"}) as response:
                return str(json.loads(await response.text())["backend"]) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    try:
        async with serve("--config", str(policy), xds_address=f"127.0.0.1:{xds_port}") as plane:
            document = await plane.status()
            files = next(source for source in document["sources"] if source["name"] == "policy-files")
            assert not files["errors"], files
            envoy = await start_envoy(tmp_path / "envoy", xds_port, offset)
            try:
                assert await until(answered_by, "the gateway to reach payments by its DNS name") == "payments"
                clusters = json.loads(await envoy.admin("/clusters?format=json"))["cluster_statuses"]
                (cluster,) = [c for c in clusters if c["name"] == "payments.shop:8080"]
                hosts = [h["address"]["socket_address"] for h in cluster["host_statuses"]]
                assert [(h["address"], h["port_value"]) for h in hosts] == [("127.0.0.1", payments.port)]
            finally:
                await envoy.stop()
    finally:
        await session.close()
        await payments.close()
