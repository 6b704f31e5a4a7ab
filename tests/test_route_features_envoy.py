"""Gateway API route features through a real Envoy: policy files → control plane → Envoy → an echo backend.

The echo backend answers with what reached it (method, path, query, Host, headers), so each test
asserts what Envoy did to the request: header modifiers, rewrites, method and query matches,
mirrored copies; a redirect is Envoy's own 3xx answer with a Location header (never followed), a
fault's abort Envoy's own answer, its delay counted in Envoy's stats, a rate limit Envoy's 429s,
a CORS preflight Envoy's own answer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.envoy_harness import Envoy
from tests.test_envoy_integration import Mesh, delta, mesh  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.envoy, pytest.mark.xdist_group("envoy")]


@dataclass
class Echo:
    """An HTTP server answering every request with a JSON account of it (also kept in `seen`), and
    headers for a route's response modifiers to change."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving_echo() -> AsyncIterator[Echo]:
    echo = Echo()

    async def answer(request: web.Request) -> web.Response:
        seen = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "host": request.host,
            "headers": {name.lower(): value for name, value in request.headers.items()},
        }
        echo.seen.append(seen)
        return web.json_response(seen, headers={"x-internal": "secret", "x-version": "1"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    echo.port = runner.addresses[0][1]
    try:
        yield echo
    finally:
        await runner.cleanup()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    async with serving_echo() as server:
        yield server


@pytest.fixture
async def shadow() -> AsyncIterator[Echo]:
    """A second echo server, for mirrored requests."""
    async with serving_echo() as server:
        yield server


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]  # names are case-insensitive
    body: str

    def echoed(self) -> dict[str, Any]:
        assert self.status == 200, self
        return json.loads(self.body)  # type: ignore[no-any-return]


async def send(envoy: Envoy, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    url = f"http://127.0.0.1:{envoy.outbound_port}{path}"
    async with envoy.session.request(
        method, url, headers={"host": "web", **(headers or {})}, allow_redirects=False
    ) as response:
        return Answer(response.status, CIMultiDict(response.headers), await response.text())


ROUTES = """\
routes:
  - name: web-features
    service: web
    rules:
      - name: moved
        match: {path: {prefix: /old/}}
        redirect: {scheme: https, hostname: shop.example.com, prefix: /new/, status: 301}
      - name: login
        match: {path: {exact: /login}}
        redirect: {port: 8443, path: /sign-in}
      - name: search
        match:
          path: {exact: /search}
          method: GET
          query: [{name: lang, exact: en}, {name: page, regex: "[0-9]+"}]
        to: [web]
        rewrite: {path: /v2/search, hostname: search.internal}
        request_headers:
          set: {x-tenant: shop}
          add: {x-trace: "50%"}
          remove: [x-debug]
        response_headers:
          set: {x-version: "2"}
          add: {x-served-by: meshplane}
          remove: [x-internal]
        mirror: [shadow]
      - name: chaos
        match: {path: {prefix: /chaos/}}
        to: [web]
        fault:
          delay: {duration: 1ms}
          abort: {status: 418}
      - name: limited
        match: {path: {prefix: /limited/}}
        to: [web]
        rate_limit: {requests: 1, interval: 24h, per_header: x-device-id}
      - name: browsers
        match: {path: {prefix: /cors/}}
        to: [web]
        cors:
          allow_origins: ["https://shop.example.com", "https://*.apps.example.com"]
          allow_methods: [PUT]
          allow_headers: [x-custom]
          max_age: 600
      - name: rest
        to: [web]
"""


def service(name: str, echo: Echo) -> str:
    return f"  - name: {name}\n    port: 8080\n    endpoints: [{{address: 127.0.0.1, port: {echo.port}}}]\n"


async def test_every_route_feature_through_envoy(
    mesh: Mesh,  # noqa: F811
    echo: Echo,
    shadow: Echo,
    delta: bool,  # noqa: F811
) -> None:
    mesh.write("services.yaml", "services:\n" + service("web", echo) + service("shadow", shadow))
    mesh.write("routes.yaml", ROUTES)
    envoy = await mesh.envoy("sidecar-features", delta)

    async def routed() -> Answer | None:
        answer = await send(envoy, "GET", "/old/x")
        return answer if answer.status == 301 else None

    moved = await envoy.eventually(routed, "the routes with the new features")
    assert moved.headers["Location"] == "https://shop.example.com/new/x"

    login = await send(envoy, "POST", "/login?next=/cart")
    assert login.status == 302
    assert login.headers["Location"] == "http://web:8443/sign-in?next=/cart"

    search = await send(envoy, "GET", "/search?lang=en&page=2", {"x-debug": "1", "x-tenant": "other"})
    seen = search.echoed()
    assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/v2/search", {"lang": "en", "page": "2"})
    assert seen["host"] == "search.internal"
    assert seen["headers"]["x-tenant"] == "shop"  # set: replaced the client's value
    assert seen["headers"]["x-trace"] == "50%"  # literal: Envoy's `%` commands are escaped
    assert "x-debug" not in seen["headers"]
    assert search.headers["x-version"] == "2"
    assert search.headers["x-served-by"] == "meshplane"
    assert "x-internal" not in search.headers

    # The mirror gets a copy, as forwarded (rewritten, headers changed), its Host marked as a shadow's;
    # copies are sent without waiting, so it is waited for.
    async def mirrored() -> dict[str, Any] | None:
        return shadow.seen[0] if shadow.seen else None

    copy = await envoy.eventually(mirrored, "the mirrored request")
    assert (copy["method"], copy["path"], copy["host"]) == ("GET", "/v2/search", "search.internal-shadow")
    assert copy["headers"]["x-tenant"] == "shop"

    # Each match condition must hold: another method, a query value that does not match, or a
    # missing parameter falls through to the plain rule, which changes nothing.
    for method, path in (
        ("POST", "/search?lang=en&page=2"),
        ("GET", "/search?lang=de&page=2"),
        ("GET", "/search?lang=en"),
    ):
        plain = await send(envoy, method, path, {"x-debug": "1"})
        seen = plain.echoed()
        assert (seen["method"], seen["path"], seen["host"]) == (method, "/search", "web"), (method, path)
        assert seen["headers"]["x-debug"] == "1"
        assert "x-tenant" not in seen["headers"]
        assert plain.headers["x-internal"] == "secret"

    # Faults: every request to /chaos/ is delayed, then answered 418 by Envoy; the backend sees none.
    before = len(echo.seen)
    chaos = await send(envoy, "GET", "/chaos/x")
    assert chaos.status == 418
    prefix = f"http.outbound_http_{envoy.outbound_port}.fault"
    assert await envoy.stat(f"{prefix}.aborts_injected") == 1
    assert await envoy.stat(f"{prefix}.delays_injected") == 1
    assert (await send(envoy, "GET", "/plain")).echoed()["path"] == "/plain"  # the next request is forwarded
    assert [seen["path"] for seen in echo.seen[before:]] == ["/plain"]

    # Rate limits: one request a day per device, and one a day for all requests without a device id.
    # The buckets start full and refill only after a day, so the outcome of each request is certain.
    for device, statuses in (("a", [200, 429]), ("b", [200, 429]), (None, [200, 429])):
        headers = {} if device is None else {"x-device-id": device}
        answers = [await send(envoy, "GET", "/limited/x", headers) for _ in statuses]
        assert [answer.status for answer in answers] == statuses, device
        assert answers[1].body == "local_rate_limited"  # Envoy's own answer: the backend was not asked

    # CORS: Envoy answers an allowed origin's preflight itself, and marks answers to allowed origins.
    before = len(echo.seen)
    origin = {"origin": "https://shop.example.com"}
    preflight = await send(envoy, "OPTIONS", "/cors/x", {**origin, "access-control-request-method": "PUT"})
    assert preflight.status == 200, preflight
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example.com", preflight
    assert preflight.headers["access-control-allow-methods"] == "PUT"
    assert preflight.headers["access-control-allow-headers"] == "x-custom"
    assert preflight.headers["access-control-max-age"] == "600"
    assert len(echo.seen) == before
    allowed = await send(envoy, "GET", "/cors/x", {"origin": "https://a.b.apps.example.com"})
    assert allowed.echoed()["path"] == "/cors/x"
    assert allowed.headers["access-control-allow-origin"] == "https://a.b.apps.example.com"
    for other in ("https://evil.example.com", "https://apps.example.com", "http://shop.example.com"):
        refused = await send(envoy, "GET", "/cors/x", {"origin": other})
        assert "access-control-allow-origin" not in refused.headers, other

    # Named rules name Envoy's routes.
    dump = await envoy.config_dump("dynamic_route_configs")
    names = {
        route.get("name")
        for config in dump["configs"]
        for vhost in config["route_config"]["virtual_hosts"]
        for route in vhost["routes"]
    }
    assert {"moved", "login", "search", "chaos", "limited", "browsers", "rest"} <= names
