"""HTTPS listeners sharing a port answer 421 a request whose Host belongs to another listener than
the one the connection's SNI chose (GatewayHTTPSListenerDetectMisdirectedRequests).

- Each filter chain of such a port names its listener in the connection's filter state first.
- Every hostname's virtual host, `*` too, starts with a 421 route taken when that state names
  another listener than the hostname's owner (the most specific listener matching it).
- A port of one HTTPS listener, and HTTP ports, are unchanged. Envoy accepts the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2

from meshplane.model import (
    Gateway,
    GatewayHost,
    GatewayListener,
    ListenerProtocol,
    Mesh,
    PathMatch,
    PathMatchKind,
    TlsCertificate,
    WeightedBackend,
)
from meshplane.xds.translate import translate
from meshplane.xds.translate.gateway_api import LISTENER_STATE, MISDIRECTED, SET_FILTER_STATE
from meshplane.xds.types import TypeUrl
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap
from tests.test_gateway_api_translate import API, CHAIN, GROUP, KEY, WEB, forward, service

RULE = forward(PathMatch(PathMatchKind.PREFIX, "/"), WeightedBackend(WEB, 8080))
OTHER = forward(PathMatch(PathMatchKind.PREFIX, "/"), WeightedBackend(API, 8080))


def https(name: str, hostname: str | None, *hosts: GatewayHost) -> GatewayListener:
    return GatewayListener(
        name, 443, ListenerProtocol.HTTPS, hostname=hostname, certificates=("shop/tls",), hosts=tuple(hosts)
    )


LISTENERS = (
    https("any", None, GatewayHost("example.org", (RULE,))),
    https("second", "second.example", GatewayHost("second.example", (OTHER,))),
    https("wild", "*.wild.example", GatewayHost("*.wild.example", (OTHER,))),
    https("fourth", "fourth.wild.example", GatewayHost("fourth.wild.example", (RULE,))),
)


def mesh_of(*listeners: GatewayListener) -> Mesh:
    return Mesh.of(
        [service(WEB), service(API)],
        certificates=[TlsCertificate("shop/tls", CHAIN, KEY)],
        gateways=[Gateway("shop", "edge", listeners)],
    )


def translated(mesh: Mesh) -> tuple[Any, Any]:
    resources = dict(translate(mesh, GROUP).resources)
    (listener,) = resources[TypeUrl.LISTENER]
    (config,) = resources[TypeUrl.ROUTE]
    return listener, config


def chain_listener(chain: Any) -> str | None:
    """The listener a chain names in its filter state, or None without that filter."""
    first = chain.filters[0]
    if first.name != SET_FILTER_STATE:
        return None
    config = set_filter_state_pb2.Config()
    first.typed_config.Unpack(config)
    (value,) = config.on_new_connection
    assert value.object_key == LISTENER_STATE
    return str(value.format_string.text_format_source.inline_string)


def misdirected_for(host: Any) -> str | None:
    """The regex of the listeners whose requests `host` answers 421, or None without that route."""
    first = host.routes[0]
    if not first.HasField("direct_response") or first.direct_response.status != MISDIRECTED:
        return None
    (state,) = first.match.filter_state
    assert state.key == LISTENER_STATE
    return str(state.string_match.safe_regex.regex)


def test_each_chain_names_its_listener_before_the_connection_manager() -> None:
    listener, _ = translated(mesh_of(*LISTENERS))
    named = {chain.name: chain_listener(chain) for chain in listener.filter_chains}
    assert sorted(named.values(), key=str) == ["any", "fourth", "second", "wild"]
    assert all(
        chain.filters[1].name == "envoy.filters.network.http_connection_manager" for chain in listener.filter_chains
    )


def test_every_hostname_answers_421_for_the_other_listeners() -> None:
    _, config = translated(mesh_of(*LISTENERS))
    by_domain = {host.domains[0]: misdirected_for(host) for host in config.virtual_hosts}
    assert by_domain == {
        "*": "^(?:fourth|second|wild)$",  # the listener without a hostname owns the rest
        "example.org": "^(?:fourth|second|wild)$",
        "second.example": "^(?:any|fourth|wild)$",
        "*.wild.example": "^(?:any|fourth|second)$",
        "fourth.wild.example": "^(?:any|second|wild)$",
    }
    (host,) = [host for host in config.virtual_hosts if host.domains[0] == "example.org"]
    assert len(host.routes) == 2  # the 421 route, then the rule


def test_a_hostname_no_listener_matches_answers_421_on_every_chain() -> None:
    _, config = translated(mesh_of(*LISTENERS[1:]))
    (catch_all,) = [host for host in config.virtual_hosts if host.domains[0] == "*"]
    assert misdirected_for(catch_all) == "^(?:fourth|second|wild)$"


def test_a_single_https_listener_is_unchanged() -> None:
    listener, config = translated(mesh_of(https("any", None, GatewayHost("example.org", (RULE,)))))
    (chain,) = listener.filter_chains
    assert chain_listener(chain) is None
    assert [misdirected_for(host) for host in config.virtual_hosts] == [None]


def test_envoy_accepts_misdirected_request_detection(tmp_path: Path) -> None:
    bootstrap = validation_bootstrap(translate(mesh_of(*LISTENERS), GROUP))
    for listener in bootstrap.static_resources.listeners:
        for chain in listener.filter_chains:
            chain.ClearField("transport_socket")  # the certificates come over SDS, absent here
            hcm = HttpConnectionManager()
            chain.filters[-1].typed_config.Unpack(hcm)
            assert misdirected_for(hcm.route_config.virtual_hosts[0])
    result = envoy_validate(bootstrap, tmp_path / "gateway.json")
    assert result.returncode == 0, result.stdout + result.stderr
