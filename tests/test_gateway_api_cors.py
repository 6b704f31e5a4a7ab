"""A gateway's CORS rules answer every preflight themselves (the Gateway API's HTTPRouteCORS).

- The gateway translation sets `forward_not_matching_preflights: false` on each CORS policy, so a
  preflight from an origin the rule does not allow never reaches the backend.
- A rule without CORS gets no policy; sidecar routes keep Envoy's default (tests/golden).
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.cors.v3 import cors_pb2

from meshplane.model import (
    CorsPolicy,
    Gateway,
    GatewayHost,
    GatewayListener,
    ListenerProtocol,
    Mesh,
    PathMatch,
    PathMatchKind,
    WeightedBackend,
)
from meshplane.xds.translate import translate
from meshplane.xds.translate.routes import CORS_FILTER
from meshplane.xds.types import TypeUrl
from tests.test_gateway_api_translate import API, GROUP, WEB, forward, service

POLICY = CorsPolicy(("https://www.foo.com",), allow_methods=("GET",), allow_credentials=True)


def routes_of(*rules: Any) -> list[Any]:
    listener = GatewayListener("http", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", tuple(rules)),))
    mesh = Mesh.of([service(WEB), service(API)], gateways=[Gateway("shop", "edge", (listener,))])
    (config,) = dict(translate(mesh, GROUP).resources)[TypeUrl.ROUTE]
    (host,) = config.virtual_hosts
    return list(host.routes)


def test_a_gateway_cors_rule_answers_preflights_of_origins_it_refuses() -> None:
    cors, plain = routes_of(
        forward(PathMatch(PathMatchKind.PREFIX, "/cors"), WeightedBackend(WEB, 8080), cors=POLICY),
        forward(PathMatch(PathMatchKind.PREFIX, "/"), WeightedBackend(API, 8080)),
    )
    policy = cors_pb2.CorsPolicy()
    cors.typed_per_filter_config[CORS_FILTER].Unpack(policy)
    assert policy.HasField("forward_not_matching_preflights")
    assert policy.forward_not_matching_preflights.value is False
    assert policy.allow_credentials.value is True  # the rest of the policy is kept
    assert [m.exact for m in policy.allow_origin_string_match] == ["https://www.foo.com"]
    assert CORS_FILTER not in plain.typed_per_filter_config
