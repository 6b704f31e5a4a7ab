"""End to end: Gateways and HTTPRoutes on a real kube-apiserver (v1.6.1 standard-channel CRDs)
served by meshplane to a real gateway Envoy started from `meshplane bootstrap gateway`.

- An HTTPRoute's requests reach the right backend through the Envoy: by path, header and hostname,
  split by weight (roughly, by counts), with a request header modifier and a redirect; a rule
  whose backend does not resolve answers 500 while the others work.
- A backend in another namespace works only once a ReferenceGrant there allows it.
- HTTPS: a listener terminating TLS with a certificateRef Secret (labelled for SDS), by SNI.
- GRPCRoute: a call matched by service and method reaches a real grpcio backend (a Service port
  of appProtocol grpc); a rule whose backend does not resolve answers UNAVAILABLE.
- Status as the spec says: the route's `Accepted` and `ResolvedRefs` (with `BackendNotFound`,
  `RefNotPermitted`), the listener's `attachedRoutes`, and the Gateway's `Programmed` False
  (`Pending`) until the Envoy has taken its listeners, then True with its address.

Backends are HTTP servers on 127.0.0.1 answering JSON (their name, the path, host and headers),
reached through Services and EndpointSlices. Every wait polls a condition with a generous
deadline and fails showing what it last saw.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from meshplane.app import ControlPlane, Settings
from meshplane.bootstrap.render import BootstrapOptions, render
from tests.edge_plane import running_control_plane
from tests.envoy_harness import Envoy
from tests.k8s import objects as k
from tests.k8s.gateway_api_crds import GROUP
from tests.k8s.gateway_api_fixtures import (
    OURS,
    V1,
    admin_fixture,
    cluster_fixtures,
    launch_envoy,
    until,
)
from tests.k8s.real_apiserver import (
    KUBE_MISSING,
    MERGE_PATCH,
    RealApiServer,
    call,
    call_ok,
)
from tests.ports import free_port
from tests.preconditions import requires
from tests.tls_certs import issue, make_ca

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.xdist_group("kube-apiserver"),
    pytest.mark.timeout(300),
    requires(KUBE_MISSING),
]
SLICES = "/apis/discovery.k8s.io/v1beta1"  # the 1.20 test API server serves v1beta1 EndpointSlices
DEADLINE = 60.0


cluster, server = cluster_fixtures("kube-gateway-serving")
admin = admin_fixture(serving=True)


async def until_holds(
    fetch: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], what: str, deadline: float = DEADLINE
) -> Any:
    """Fetches until `check` holds of what `fetch` returns, and returns that; fails after
    `deadline` seconds showing the last value fetched."""
    last: list[Any] = [None]

    async def holds() -> Any:
        last[0] = await fetch()
        return last[0] if check(last[0]) else None

    try:
        return await until(holds, what, deadline)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what}; last fetched: {last[0]!r}") from None


# --- backends, Services, EndpointSlices ---


@dataclass
class Echo:
    """An HTTP server on 127.0.0.1 answering every request with JSON: its name, the request's
    method, path, host and headers; it counts what it answered."""

    name: str
    port: int = 0
    hits: int = 0
    runner: web.AppRunner | None = None

    async def start(self) -> Echo:
        async def answer(request: web.Request) -> web.Response:
            self.hits += 1
            body = {
                "backend": self.name,
                "method": request.method,
                "path": request.path_qs,
                "host": request.host,
                "headers": {key.lower(): value for key, value in request.headers.items()},
            }
            return web.json_response(body)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def namespace(admin: ApiClient, name: str) -> str:
    status, answer = await call(
        admin, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert status in (201, 409), answer
    return name


async def backend_service(admin: ApiClient, ns: str, name: str, echo: Echo) -> None:
    """Service `ns/name` on port 8080, its one endpoint `echo` (an EndpointSlice of 127.0.0.1)."""
    body = k.service(name, ns, ports=[k.port("http", 8080)])
    del body["spec"]["clusterIP"]  # the API server allocates one
    await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/services", body)
    endpoints = k.endpoint_slice(
        f"{name}-1", name, ns, [k.endpoint("127.0.0.1")], [("http", echo.port)], api_version="discovery.k8s.io/v1beta1"
    )
    await call_ok(admin, "POST", f"{SLICES}/namespaces/{ns}/endpointslices", endpoints)


def gateway(ns: str, listeners: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"namespace": ns, "name": "edge"},
        "spec": {"gatewayClassName": "meshplane", "listeners": listeners},
    }


def http_route(ns: str, name: str, hostnames: list[str], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"parentRefs": [{"name": "edge"}], "hostnames": hostnames, "rules": rules},
    }


def to(name: str, namespace: str | None = None, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": 8080}
    if namespace is not None:
        ref["namespace"] = namespace
    if weight is not None:
        ref["weight"] = weight
    return ref


# --- status ---


async def read(admin: ApiClient, path: str) -> dict[str, Any]:
    status, obj = await call(admin, "GET", path)
    assert status == 200, obj
    return obj  # type: ignore[no-any-return]


def by_type(conditions: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions or ()}


async def gateway_condition(admin: ApiClient, ns: str, kind: str) -> dict[str, Any]:
    obj = await read(admin, f"{V1}/namespaces/{ns}/gateways/edge")
    return by_type((obj.get("status") or {}).get("conditions")).get(kind, {})


async def route_conditions(admin: ApiClient, ns: str, name: str) -> dict[str, dict[str, Any]]:
    obj = await read(admin, f"{V1}/namespaces/{ns}/httproutes/{name}")
    parents = [p for p in (obj.get("status") or {}).get("parents") or () if p.get("controllerName") == OURS]
    return by_type(parents[0]["conditions"]) if parents else {}


def reason_is(expected: str, found: dict[str, dict[str, Any]], kind: str) -> bool:
    return found.get(kind, {}).get("reason") == expected


# --- the control plane and the gateway Envoy ---


@contextlib.asynccontextmanager
async def serving_plane(server: RealApiServer, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = Settings(
        kubernetes=True,
        gateway_api=True,
        kubernetes_secrets=True,
        # The test's Envoy connects without credentials; HTTPS listeners need their keys over SDS.
        insecure_serve_keys_without_client_auth=True,
        kubeconfig=server.kubeconfig(tmp_path / "kubeconfig", "admin-token"),
        xds_address="127.0.0.1:0",
        status_address="127.0.0.1:0",
        debounce_quiet=0.02,
        debounce_max=0.2,
        shutdown_grace=0.5,
    )
    async with running_control_plane(settings) as plane:
        yield plane


@dataclass
class GatewayEnvoy:
    envoy: Envoy
    offset: int
    # A bounded wait per request: a listener still warming may take a connection and answer nothing.
    session: aiohttp.ClientSession = field(
        default_factory=lambda: aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    )

    async def get(
        self, port: int, host: str, path: str, *, headers: dict[str, str] | None = None, **options: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """A request to the Gateway listener on `port` (plus the offset); the status, the JSON
        body (empty when it is not JSON) and the headers."""
        scheme = "https" if "ssl" in options else "http"
        url = f"{scheme}://127.0.0.1:{port + self.offset}{path}"
        async with self.session.get(
            url, headers={"host": host, **(headers or {})}, allow_redirects=False, **options
        ) as response:
            text = await response.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = {}
            return response.status, body if isinstance(body, dict) else {}, dict(response.headers)

    async def close(self) -> None:
        await self.session.close()
        await self.envoy.stop()


async def start_gateway_envoy(workdir: Path, plane: ControlPlane, gateway: str, offset: int) -> GatewayEnvoy:
    """An Envoy from `meshplane bootstrap gateway --gateway … --listen-address 127.0.0.1 --port-offset …`."""
    options = BootstrapOptions(
        "gateway",
        xds_server=f"127.0.0.1:{plane.xds_port}",
        node_id="gateway-e2e",
        admin_address="127.0.0.1:0",
        gateway=gateway,
        listen_address="127.0.0.1",
        port_offset=offset,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap, admin_path, log_path = workdir / "gateway.yaml", workdir / "gateway.admin", workdir / "gateway.log"
    bootstrap.write_text(render(options))
    envoy = await launch_envoy(bootstrap, admin_path, log_path)
    return GatewayEnvoy(envoy, offset)


def ports_and_offset(count: int) -> tuple[list[int], int]:
    """`count` Gateway listener ports and an offset putting each on a free port of this host."""
    free = [free_port() for _ in range(count)]
    offset = min(free) - 1000
    return [port - offset for port in free], offset


# --- the tests ---


async def test_an_httproute_is_served_by_a_gateway_envoy_with_status(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    ns = await namespace(admin, "gw-serving")
    other = await namespace(admin, "gw-serving-other")
    web_echo, api_echo, billing_echo = (
        await Echo("web").start(),
        await Echo("api").start(),
        await Echo("billing").start(),
    )
    await backend_service(admin, ns, "web", web_echo)
    await backend_service(admin, ns, "api", api_echo)
    await backend_service(admin, other, "billing", billing_echo)
    (port,), offset = ports_and_offset(1)
    await call_ok(
        admin,
        "POST",
        f"{V1}/namespaces/{ns}/gateways",
        gateway(ns, [{"name": "http", "port": port, "protocol": "HTTP"}]),
    )
    rules: list[dict[str, Any]] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "gw"}]}}
            ],
            "backendRefs": [to("api")],
        },
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}], "backendRefs": [to("api")]},
        {
            "matches": [{"path": {"type": "Exact", "value": "/moved"}}],
            "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example", "statusCode": 301}}],
        },
        {"matches": [{"path": {"type": "PathPrefix", "value": "/split"}}],
         "backendRefs": [to("web", weight=1), to("api", weight=1)]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/broken"}}], "backendRefs": [to("nowhere")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/billing"}}], "backendRefs": [to("billing", other)]},
        {"backendRefs": [to("web")]},
    ]  # fmt: skip
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/httproutes", http_route(ns, "web", ["web.example"], rules))

    async with serving_plane(server, tmp_path) as plane:
        # Status before any gateway Envoy: accepted, refs not all resolved, not programmed.
        found = await until_holds(
            lambda: route_conditions(admin, ns, "web"),
            lambda c: reason_is("BackendNotFound", c, "ResolvedRefs"),
            "the route's ResolvedRefs False, BackendNotFound",
        )
        assert found["Accepted"]["status"] == "True"
        assert found["ResolvedRefs"]["status"] == "False"
        assert "nowhere" in found["ResolvedRefs"]["message"]
        assert "billing" in found["ResolvedRefs"]["message"]  # RefNotPermitted, named too
        pending = await until_holds(
            lambda: gateway_condition(admin, ns, "Programmed"),
            lambda c: c.get("reason") == "Pending",
            "the Gateway's Programmed False, Pending",
        )
        assert pending["status"] == "False"
        edge = await read(admin, f"{V1}/namespaces/{ns}/gateways/edge")
        (listener,) = edge["status"]["listeners"]
        assert listener["attachedRoutes"] == 1
        assert by_type(listener["conditions"])["Accepted"]["status"] == "True"
        assert not edge["status"].get("addresses")

        envoy = await start_gateway_envoy(tmp_path / "envoy", plane, f"{ns}/edge", offset)
        try:
            programmed = await until_holds(
                lambda: gateway_condition(admin, ns, "Programmed"),
                lambda c: c.get("status") == "True",
                "the Gateway's Programmed True once the Envoy took its listeners",
            )
            assert programmed["reason"] == "Programmed"
            edge = await read(admin, f"{V1}/namespaces/{ns}/gateways/edge")
            assert edge["status"]["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]

            async def answered(path: str, backend: str) -> dict[str, Any] | None:
                try:
                    status, body, _ = await envoy.get(port, "web.example", path)
                except (aiohttp.ClientError, TimeoutError):  # the listener not bound yet
                    return None
                return body if status == 200 and body.get("backend") == backend else None

            root = await until(lambda: answered("/", "web"), "/ to web through the gateway")
            assert root["host"] == "web.example"
            api = await until(lambda: answered("/api/v1/items", "api"), "/api to api")
            assert api["headers"]["x-via"] == "gw"
            assert api["path"] == "/api/v1/items"
            # PathPrefix matches whole segments: /apiary is not under /api.
            assert (await envoy.get(port, "web.example", "/apiary"))[1]["backend"] == "web"
            canary = await envoy.get(port, "web.example", "/", headers={"x-canary": "yes"})
            assert canary[1]["backend"] == "api"
            status, _, headers = await envoy.get(port, "web.example", "/moved")
            assert status == 301
            # No port in the redirect: the Gateway listener's (the port its clients know), not the
            # Envoy's offset port.
            assert headers["Location"] == f"http://new.example:{port}/moved"
            assert (await envoy.get(port, "web.example", "/broken"))[0] == 500
            assert (await envoy.get(port, "web.example", "/billing"))[0] == 500  # not permitted yet
            assert (await envoy.get(port, "other.example", "/"))[0] == 404  # no route for that host

            before = {"web": web_echo.hits, "api": api_echo.hits}
            for _ in range(100):
                assert (await envoy.get(port, "web.example", "/split"))[0] == 200
            counts = {"web": web_echo.hits - before["web"], "api": api_echo.hits - before["api"]}
            assert sum(counts.values()) == 100
            assert min(counts.values()) >= 20, counts  # weights 1:1, roughly

            # A ReferenceGrant in the other namespace lets the route use its Service.
            grant = {
                "apiVersion": f"{GROUP}/v1beta1",
                "kind": "ReferenceGrant",
                "metadata": {"namespace": other, "name": "from-gw-serving"},
                "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": ns}],
                         "to": [{"group": "", "kind": "Service"}]},
            }  # fmt: skip
            await call_ok(admin, "POST", f"/apis/{GROUP}/v1beta1/namespaces/{other}/referencegrants", grant)
            await until(lambda: answered("/billing", "billing"), "/billing reaching the other namespace once granted")
            found = await until_holds(
                lambda: route_conditions(admin, ns, "web"),
                lambda c: "billing" not in c.get("ResolvedRefs", {}).get("message", "billing"),
                "the route's ResolvedRefs naming only the missing Service",
            )
            assert found["ResolvedRefs"]["reason"] == "BackendNotFound"
            assert found["ResolvedRefs"]["observedGeneration"] == 1
        finally:
            await envoy.close()
        await until_holds(
            lambda: gateway_condition(admin, ns, "Programmed"),
            lambda c: c.get("status") == "False",
            "the Gateway's Programmed False once its only Envoy is gone",
        )
    for echo in (web_echo, api_echo, billing_echo):
        await echo.close()


async def test_an_https_listener_terminates_tls_with_its_certificate_ref(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    ns = await namespace(admin, "gw-https")
    web_echo = await Echo("web").start()
    await backend_service(admin, ns, "web", web_echo)
    ca = make_ca(tmp_path / "certs", "gateway-ca")
    pair = issue(ca, tmp_path / "certs", "secure", "DNS:secure.example")
    secret = k.tls_secret("secure-tls", ns, pair.certificate.read_text(), pair.key.read_text())
    await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/secrets", secret)
    (port,), offset = ports_and_offset(1)
    listener = {
        "name": "https",
        "port": port,
        "protocol": "HTTPS",
        "hostname": "secure.example",
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "secure-tls"}]},
    }
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/gateways", gateway(ns, [listener]))
    await call_ok(
        admin, "POST", f"{V1}/namespaces/{ns}/httproutes", http_route(ns, "web", [], [{"backendRefs": [to("web")]}])
    )

    context = ssl.create_default_context(cafile=str(ca.certificate))
    async with serving_plane(server, tmp_path) as plane:
        envoy = await start_gateway_envoy(tmp_path / "envoy", plane, f"{ns}/edge", offset)
        try:

            async def secured() -> tuple[int, dict[str, Any]] | str:
                try:
                    status, body, _ = await envoy.get(
                        port, "secure.example", "/hello", ssl=context, server_hostname="secure.example"
                    )
                except (aiohttp.ClientError, TimeoutError) as error:  # not listening yet, or no certificate yet
                    return f"{type(error).__name__}: {error}"
                return status, body

            _, body = await until_holds(
                secured,
                lambda found: isinstance(found, tuple) and found[0] == 200,
                "an HTTPS request, SNI secure.example, verified against the CA",
            )
            assert body["backend"] == "web"
            assert body["host"] == "secure.example"

            async def listener_status() -> dict[str, Any] | str:
                # Written by meshplane once it serves the Gateway: it may trail the first answer.
                edge = await read(admin, f"{V1}/namespaces/{ns}/gateways/edge")
                return edge if edge.get("status", {}).get("listeners") else f"no listener status: {edge.get('status')}"

            edge = await until_holds(listener_status, lambda found: isinstance(found, dict), "the listener's status")
            (status,) = edge["status"]["listeners"]
            assert by_type(status["conditions"])["ResolvedRefs"]["status"] == "True"
            assert status["attachedRoutes"] == 1
        finally:
            await envoy.close()
    await web_echo.close()


async def test_a_grpcroute_reaches_a_grpc_backend_through_the_gateway_envoy(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    ns = await namespace(admin, "gw-grpc")
    backend = grpc.aio.server()
    say = grpc.unary_unary_rpc_method_handler(lambda request, context: b"greeter:" + request)
    backend.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Say": say}),))
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    await backend.start()
    body = k.service("greeter", ns, ports=[k.port("grpc", 9000, app_protocol="grpc")])
    del body["spec"]["clusterIP"]
    await call_ok(admin, "POST", f"/api/v1/namespaces/{ns}/services", body)
    endpoints = k.endpoint_slice(
        "greeter-1", "greeter", ns, [k.endpoint("127.0.0.1")], [("grpc", backend_port)],
        api_version="discovery.k8s.io/v1beta1",
    )  # fmt: skip
    await call_ok(admin, "POST", f"{SLICES}/namespaces/{ns}/endpointslices", endpoints)
    (port,), offset = ports_and_offset(1)
    await call_ok(
        admin,
        "POST",
        f"{V1}/namespaces/{ns}/gateways",
        gateway(ns, [{"name": "http", "port": port, "protocol": "HTTP"}]),
    )
    route = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GRPCRoute",
        "metadata": {"namespace": ns, "name": "echo"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "hostnames": ["grpc.example"],
            "rules": [
                {"matches": [{"method": {"service": "test.Echo", "method": "Say"}}],
                 "backendRefs": [{"name": "greeter", "port": 9000}]},
                {"matches": [{"method": {"service": "test.Echo", "method": "Lost"}}],
                 "backendRefs": [{"name": "nowhere", "port": 9000}]},
            ],
        },
    }  # fmt: skip
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/grpcroutes", route)

    async with serving_plane(server, tmp_path) as plane:
        envoy = await start_gateway_envoy(tmp_path / "envoy", plane, f"{ns}/edge", offset)
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port + offset}", options=[("grpc.default_authority", "grpc.example")]
        )
        try:

            async def call_rpc(method: str) -> bytes | grpc.StatusCode:
                try:
                    answer: bytes = await channel.unary_unary(f"/test.Echo/{method}")(b"hi", timeout=5)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return answer

            await until_holds(
                lambda: call_rpc("Say"), lambda found: found == b"greeter:hi", "a call through the gateway"
            )
            # A rule whose backend does not resolve: UNAVAILABLE, as the spec asks of a GRPCRoute.
            assert await call_rpc("Lost") == grpc.StatusCode.UNAVAILABLE
            # No rule for the method: Envoy answers 404, which gRPC reads as UNIMPLEMENTED.
            assert await call_rpc("Other") == grpc.StatusCode.UNIMPLEMENTED
            found = await until_holds(
                lambda: _grpc_route_conditions(admin, ns),
                lambda c: "ResolvedRefs" in c,
                "the GRPCRoute's status",
            )
            assert (found["Accepted"]["status"], found["Accepted"]["reason"]) == ("True", "Accepted")
            assert (found["ResolvedRefs"]["status"], found["ResolvedRefs"]["reason"]) == ("False", "BackendNotFound")
        finally:
            await channel.close()
            await envoy.close()
    await backend.stop(None)


async def _grpc_route_conditions(admin: ApiClient, ns: str) -> dict[str, dict[str, Any]]:
    obj = await read(admin, f"{V1}/namespaces/{ns}/grpcroutes/echo")
    parents = [p for p in (obj.get("status") or {}).get("parents") or () if p.get("controllerName") == OURS]
    return by_type(parents[0]["conditions"]) if parents else {}


async def test_a_listener_takes_routes_of_the_namespaces_its_selector_selects(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    ns = await namespace(admin, "gw-selector")
    chosen, other = await namespace(admin, "gw-selector-team"), await namespace(admin, "gw-selector-else")
    await call_ok(
        admin, "PATCH", f"/api/v1/namespaces/{chosen}", {"metadata": {"labels": {"gateway-access": "yes"}}}, MERGE_PATCH
    )
    listener = {
        "name": "http",
        "port": 80,
        "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"gateway-access": "yes"}}}},
    }
    await call_ok(admin, "POST", f"{V1}/namespaces/{ns}/gateways", gateway(ns, [listener]))
    for route_ns in (chosen, other):
        route = http_route(route_ns, "web", [], [{"backendRefs": [to("web")]}])
        route["spec"]["parentRefs"] = [{"name": "edge", "namespace": ns}]
        await call_ok(admin, "POST", f"{V1}/namespaces/{route_ns}/httproutes", route)

    async with serving_plane(server, tmp_path):
        accepted = await until_holds(
            lambda: route_conditions(admin, chosen, "web"),
            lambda c: c.get("Accepted", {}).get("status") == "True",
            "the route of the selected namespace accepted",
        )
        assert accepted["Accepted"]["reason"] == "Accepted"
        refused = await until_holds(
            lambda: route_conditions(admin, other, "web"),
            lambda c: reason_is("NotAllowedByListeners", c, "Accepted"),
            "the route of another namespace not allowed",
        )
        assert "does not select namespace gw-selector-else" in refused["Accepted"]["message"]
        # Labelling the other namespace lets its route attach: Namespaces are watched.
        await call_ok(
            admin,
            "PATCH",
            f"/api/v1/namespaces/{other}",
            {"metadata": {"labels": {"gateway-access": "yes"}}},
            MERGE_PATCH,
        )
        await until_holds(
            lambda: route_conditions(admin, other, "web"),
            lambda c: c.get("Accepted", {}).get("status") == "True",
            "the route accepted once its namespace is labelled",
        )
        edge = await read(admin, f"{V1}/namespaces/{ns}/gateways/edge")
        assert edge["status"]["listeners"][0]["attachedRoutes"] == 2
