"""RDS translation: domains and their uniqueness, default routes, route tables, and the gRPC subset."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from meshplane.model import (
    HashKey,
    HeaderMatch,
    HeaderMatchKind,
    LoadBalancing,
    Mesh,
    PathMatch,
    PathMatchKind,
    Protocol,
    ProxyGroup,
    ProxyRole,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    TrafficPolicy,
    WeightedBackend,
)
from meshplane.xds.translate import Translation, translate
from meshplane.xds.types import TypeUrl

SIDECAR = ProxyGroup()
GRPC = ProxyGroup(role=ProxyRole.GRPC)
WEB = ServiceRef("shop", "web")
API = ServiceRef("shop", "api")


def service(
    name: str,
    *ports: ServicePort,
    namespace: str = "shop",
    hosts: tuple[str, ...] = (),
    policy: TrafficPolicy | None = None,
) -> Service:
    return Service(name, namespace, ports or (ServicePort("http", 80),), hosts=hosts, policy=policy or TrafficPolicy())


def translated(mesh: Mesh, group: ProxyGroup = SIDECAR, *, validated: bool = True) -> Translation:
    """`translate`, on a mesh that passes validation unless `validated` is False: the model refuses
    empty regexes, yet the translator must cope with one rather than emit what Envoy rejects."""
    if validated:
        assert mesh.problems() == []
    return translate(mesh, group)


def vhosts(translation: Translation) -> dict[str, Any]:
    (config,) = translation.resources[TypeUrl.ROUTE]
    return {vhost.name: vhost for vhost in config.virtual_hosts}


def domains(translation: Translation) -> dict[str, list[str]]:
    return {name: list(vhost.domains) for name, vhost in vhosts(translation).items()}


def only_route(translation: Translation, vhost: str = "web.shop:80") -> Any:
    (route,) = vhosts(translation)[vhost].routes
    return route


def test_domains_of_a_two_port_service() -> None:
    mesh = Mesh.of([service("web", ServicePort("http", 80), ServicePort("alt", 8080), hosts=("www.example.com",))])
    assert domains(translated(mesh)) == {
        "web.shop:80": [
            "web:80",
            "web.shop:80",
            "web.shop.svc:80",
            "web.shop.svc.cluster.local:80",
            "www.example.com:80",
            "web",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
            "www.example.com",
        ],
        "web.shop:8080": [
            "web:8080",
            "web.shop:8080",
            "web.shop.svc:8080",
            "web.shop.svc.cluster.local:8080",
            "www.example.com:8080",
        ],
    }


def test_tcp_ports_get_no_virtual_host_and_the_first_http_port_gets_bare_names() -> None:
    mesh = Mesh.of([service("db", ServicePort("pg", 5432, Protocol.TCP), ServicePort("http", 8080))])
    assert domains(translated(mesh)) == {
        "db.shop:8080": [
            "db:8080",
            "db.shop:8080",
            "db.shop.svc:8080",
            "db.shop.svc.cluster.local:8080",
            "db",
            "db.shop",
            "db.shop.svc",
            "db.shop.svc.cluster.local",
        ]
    }


@pytest.mark.parametrize(
    ("services", "tables", "expected_missing", "expected_warnings"),
    [
        pytest.param(
            [service("api", hosts=("www.example.com",)), service("web", hosts=("www.example.com",))],
            [],
            {"web.shop:80": ["www.example.com:80", "www.example.com"]},
            [
                "domain 'www.example.com:80' of web.shop:80 is already taken by api.shop:80; left out",
                "domain 'www.example.com' of web.shop:80 is already taken by api.shop:80; left out",
            ],
            id="alias-clash-first-service-wins",
        ),
        pytest.param(
            [service("api", hosts=("WWW.Example.com",)), service("web", hosts=("www.example.com",))],
            [],
            {"web.shop:80": ["www.example.com:80", "www.example.com"]},
            [
                "domain 'www.example.com:80' of web.shop:80 is already taken by api.shop:80; left out",
                "domain 'www.example.com' of web.shop:80 is already taken by api.shop:80; left out",
            ],
            id="domains-compare-without-case",
        ),
        pytest.param(
            [service("api", hosts=("web.shop",)), service("web")],
            [],
            {"api.shop:80": ["web.shop:80", "web.shop"]},
            [
                "domain 'web.shop:80' of api.shop:80 is already taken by web.shop:80; left out",
                "domain 'web.shop' of api.shop:80 is already taken by web.shop:80; left out",
            ],
            id="alias-never-takes-a-services-own-name",
        ),
        pytest.param(
            [
                service("api", ServicePort("http", 80), hosts=("x.example.com",)),
                service("web", ServicePort("http", 8080), hosts=("x.example.com",)),
            ],
            [],
            {"web.shop:8080": ["x.example.com"]},
            ["domain 'x.example.com' of web.shop:8080 is already taken by api.shop:80; left out"],
            id="different-ports-share-an-alias-but-not-its-bare-name",
        ),
        pytest.param(
            [service("web", hosts=("www.example.com",))],
            [
                RouteTable(
                    "front",
                    rules=(RouteRule(RouteMatch(), (WeightedBackend(WEB),)),),
                    hosts=("www.example.com", "shop.example.com"),
                )
            ],
            {"route/front": ["www.example.com"]},
            ["domain 'www.example.com' of route/front is already taken by web.shop:80; left out"],
            id="services-come-before-route-tables",
        ),
        pytest.param(
            [service("web")],
            [
                RouteTable("a", rules=(RouteRule(RouteMatch(), (WeightedBackend(WEB),)),), hosts=("x.example.com",)),
                RouteTable("b", rules=(RouteRule(RouteMatch(), (WeightedBackend(WEB),)),), hosts=("x.example.com",)),
            ],
            {"route/b": ["x.example.com"]},
            [
                "domain 'x.example.com' of route/b is already taken by route/a; left out",
                "virtual host route/b: every domain is taken by others; left out",
            ],
            id="route-table-left-without-domains-is-left-out",
        ),
    ],
)
def test_domains_are_unique_and_clashes_are_reported(
    services: list[Service],
    tables: list[RouteTable],
    expected_missing: dict[str, list[str]],
    expected_warnings: list[str],
) -> None:
    translation = translated(Mesh.of(services, tables))
    got = domains(translation)
    everything = [domain.lower() for names in got.values() for domain in names]
    assert len(everything) == len(set(everything))
    assert list(translation.warnings) == expected_warnings
    for vhost, missing in expected_missing.items():
        for domain in missing:
            assert domain not in got.get(vhost, [])


def test_route_table_hosts_get_their_own_virtual_host() -> None:
    table = RouteTable(
        "front", rules=(RouteRule(RouteMatch(), (WeightedBackend(WEB),)),), hosts=("shop.example.com", "*.shop.io")
    )
    translation = translated(Mesh.of([service("web")], [table]))
    assert domains(translation)["route/front"] == ["shop.example.com", "*.shop.io"]
    assert only_route(translation, "route/front").route.cluster == "web.shop:80"


@pytest.mark.parametrize(
    ("protocol", "timeout"),
    [
        pytest.param(Protocol.HTTP1, None, id="http1-envoy-default"),
        pytest.param(Protocol.HTTP2, None, id="http2-envoy-default"),
        pytest.param(Protocol.GRPC, 0, id="grpc-no-timeout"),
    ],
)
def test_default_route(protocol: Protocol, timeout: int | None) -> None:
    translation = translated(Mesh.of([service("web", ServicePort("p", 80, protocol))]))
    route = only_route(translation)
    assert route.match.prefix == "/"
    assert route.route.cluster == "web.shop:80"
    assert route.route.HasField("timeout") is (timeout is not None)
    if timeout is not None:
        assert route.route.timeout.ToNanoseconds() == timeout


def test_attached_table_replaces_the_default_route_of_every_http_port() -> None:
    web = service("web", ServicePort("http", 80), ServicePort("alt", 8080), ServicePort("db", 5432, Protocol.TCP))
    table = RouteTable(
        "web",
        service=WEB,
        rules=(RouteRule(RouteMatch(PathMatch(PathMatchKind.EXACT, "/x")), (WeightedBackend(API),)),),
    )
    translation = translated(Mesh.of([web, service("api")], [table]))
    for name in ("web.shop:80", "web.shop:8080"):
        (route,) = vhosts(translation)[name].routes
        assert route.match.path == "/x"
        assert route.route.cluster == "api.shop:80"
    assert only_route(translation, "api.shop:80").route.cluster == "api.shop:80"


def test_table_on_a_service_without_http_ports_warns() -> None:
    db = service("db", ServicePort("pg", 5432, Protocol.TCP))
    table = RouteTable(
        "db", service=ServiceRef("shop", "db"), rules=(RouteRule(RouteMatch(), (WeightedBackend(WEB),)),)
    )
    translation = translated(Mesh.of([db, service("web")], [table]))
    assert translation.warnings == ("route db: service shop/db has no HTTP port to attach to",)


def rule_route(rule: RouteRule, *services: Service, group: ProxyGroup = SIDECAR, validated: bool = True) -> Any:
    """The route `rule` becomes, in a table attached to shop/web (a gRPC port, so both roles route it)."""
    web = service("web", ServicePort("grpc", 80, Protocol.GRPC))
    mesh = Mesh.of([web, *services], [RouteTable("t", service=WEB, rules=(rule,))])
    translation = translated(mesh, group, validated=validated)
    if group.role is ProxyRole.GRPC:
        config = next(c for c in translation.resources[TypeUrl.ROUTE] if c.name == "grpc/web.shop:80")
        (route,) = config.virtual_hosts[0].routes
        return route
    return only_route(translation)


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        pytest.param(PathMatch(PathMatchKind.PREFIX, "/api/"), "prefix", "/api/", id="prefix"),
        pytest.param(PathMatch(PathMatchKind.EXACT, "/api"), "path", "/api", id="exact"),
        pytest.param(PathMatch(PathMatchKind.REGEX, "/api/[0-9]+"), "safe_regex", "/api/[0-9]+", id="regex"),
    ],
)
def test_path_match(path: PathMatch, field: str, value: str) -> None:
    route = rule_route(RouteRule(RouteMatch(path), (WeightedBackend(WEB),)))
    assert route.match.WhichOneof("path_specifier") == field
    assert (route.match.safe_regex.regex if field == "safe_regex" else getattr(route.match, field)) == value
    assert not route.match.safe_regex.HasField("google_re2")  # deprecated; RE2 is the default


def test_empty_path_regex_rule_is_left_out_with_a_warning() -> None:
    rules = (
        RouteRule(RouteMatch(PathMatch(PathMatchKind.REGEX, "")), (WeightedBackend(API),)),
        RouteRule(RouteMatch(), (WeightedBackend(WEB),)),
    )
    mesh = Mesh.of([service("web"), service("api")], [RouteTable("t", service=WEB, rules=rules)])
    translation = translated(mesh, validated=False)
    assert only_route(translation).route.cluster == "web.shop:80"
    assert translation.warnings == ("route t rule 1: an empty path regex matches no path; rule left out",)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(HeaderMatch("x-a", HeaderMatchKind.EXACT, "1"), {"string_match": {"exact": "1"}}, id="exact"),
        pytest.param(HeaderMatch("x-a", HeaderMatchKind.EXACT, ""), {"string_match": {"exact": ""}}, id="exact-empty"),
        pytest.param(HeaderMatch("x-a", HeaderMatchKind.PREFIX, "v"), {"string_match": {"prefix": "v"}}, id="prefix"),
        pytest.param(HeaderMatch("x-a", HeaderMatchKind.PREFIX, ""), {"present_match": True}, id="empty-prefix"),
        pytest.param(
            HeaderMatch("x-a", HeaderMatchKind.REGEX, "v[0-9]"),
            {"string_match": {"safe_regex": {"regex": "v[0-9]"}}},
            id="regex",
        ),
        pytest.param(HeaderMatch("x-a", HeaderMatchKind.REGEX, ""), {"string_match": {"exact": ""}}, id="empty-regex"),
        pytest.param(HeaderMatch("x-a", HeaderMatchKind.PRESENT), {"present_match": True}, id="present"),
        pytest.param(
            HeaderMatch("x-a", HeaderMatchKind.PRESENT, invert=True),
            {"present_match": True, "invert_match": True},
            id="absent",
        ),
        pytest.param(
            HeaderMatch("x-a", HeaderMatchKind.EXACT, "1", invert=True),
            {"string_match": {"exact": "1"}, "invert_match": True},
            id="inverted",
        ),
    ],
)
def test_header_match(header: HeaderMatch, expected: dict[str, Any]) -> None:
    empty_regex = header.kind is HeaderMatchKind.REGEX and not header.value  # refused by the model
    route = rule_route(RouteRule(RouteMatch(headers=(header,)), (WeightedBackend(WEB),)), validated=not empty_regex)
    (matcher,) = route.match.headers
    got = json_format.MessageToDict(matcher, preserving_proto_field_name=True)
    assert got == {"name": "x-a", **expected}


def test_weighted_split_keeps_weights_and_merges_repeated_ports() -> None:
    backends = (
        WeightedBackend(WEB, weight=80),
        WeightedBackend(API, weight=15),
        WeightedBackend(WEB, "grpc", weight=5),
        WeightedBackend(API, 80, weight=0),
    )
    route = rule_route(RouteRule(RouteMatch(), backends), service("api"))
    clusters = [(c.name, c.weight.value) for c in route.route.weighted_clusters.clusters]
    assert clusters == [("web.shop:80", 85), ("api.shop:80", 15)]


def test_single_backend_after_merging_is_a_plain_cluster() -> None:
    route = rule_route(RouteRule(RouteMatch(), (WeightedBackend(WEB, weight=1), WeightedBackend(WEB, 80, weight=3))))
    assert route.route.WhichOneof("cluster_specifier") == "cluster"


def test_weights_beyond_uint32_are_scaled() -> None:
    backends = (WeightedBackend(WEB, weight=3 * 2**32), WeightedBackend(API, weight=2**32), WeightedBackend(API, 80, 0))
    route = rule_route(RouteRule(RouteMatch(), backends), service("api"))
    weights = [c.weight.value for c in route.route.weighted_clusters.clusters]
    assert sum(weights) < 2**32
    assert weights[0] == pytest.approx(3 * weights[1], rel=1e-6)


FULL_RULE = RouteRule(
    RouteMatch(),
    (WeightedBackend(WEB),),
    timeout=2.5,
    retry=RetryPolicy(on=("5xx", "unavailable", "reset"), attempts=3, per_try_timeout=0.5),
    prefix_rewrite="/v2/",
)


def test_sidecar_route_action() -> None:
    action = rule_route(FULL_RULE).route
    assert action.timeout.ToMilliseconds() == 2500
    assert action.retry_policy.retry_on == "5xx,unavailable,reset"
    assert action.retry_policy.num_retries.value == 3
    assert action.retry_policy.per_try_timeout.ToMilliseconds() == 500
    assert action.prefix_rewrite == "/v2/"
    assert not action.HasField("max_stream_duration")


def test_grpc_route_action_keeps_only_what_grpc_honours() -> None:
    action = rule_route(FULL_RULE, group=GRPC).route
    assert action.max_stream_duration.max_stream_duration.ToMilliseconds() == 2500
    assert not action.HasField("timeout")
    assert action.retry_policy.retry_on == "unavailable"
    assert action.retry_policy.num_retries.value == 3
    assert not action.retry_policy.HasField("per_try_timeout")
    assert action.prefix_rewrite == ""


@pytest.mark.parametrize(
    "retry",
    [
        pytest.param(RetryPolicy(on=("5xx", "reset"), attempts=2), id="no-grpc-conditions"),
        pytest.param(RetryPolicy(on=("unavailable",), attempts=0), id="zero-attempts-grpc-would-nack"),
    ],
)
def test_grpc_drops_retries_it_cannot_do(retry: RetryPolicy) -> None:
    route = rule_route(RouteRule(RouteMatch(), (WeightedBackend(WEB),), retry=retry), group=GRPC)
    assert not route.route.HasField("retry_policy")
    sidecar = rule_route(RouteRule(RouteMatch(), (WeightedBackend(WEB),), retry=retry))
    assert sidecar.route.retry_policy.num_retries.value == retry.attempts


def test_zero_timeout_disables_the_timeout() -> None:
    rule = RouteRule(RouteMatch(), (WeightedBackend(WEB),), timeout=0)
    assert rule_route(rule).route.timeout.ToNanoseconds() == 0
    assert rule_route(rule).route.HasField("timeout")
    assert not rule_route(rule, group=GRPC).route.HasField("max_stream_duration")


@pytest.mark.parametrize(
    ("balancing", "key", "sidecar_policy", "grpc_policy"),
    [
        pytest.param(
            LoadBalancing.RING_HASH,
            HashKey(header="x-user"),
            {"header": {"header_name": "x-user"}},
            {"header": {"header_name": "x-user"}},
            id="ring-hash-header",
        ),
        pytest.param(
            LoadBalancing.MAGLEV,
            HashKey(cookie="sid"),
            {"cookie": {"name": "sid"}},
            None,
            id="maglev-cookie-not-for-grpc",
        ),
        pytest.param(
            LoadBalancing.RING_HASH,
            HashKey(source_ip=True),
            {"connection_properties": {"source_ip": True}},
            {"filter_state": {"key": "io.grpc.channel_id"}},
            id="source-ip-is-channel-id-for-grpc",
        ),
        pytest.param(LoadBalancing.ROUND_ROBIN, HashKey(header="x-user"), None, None, id="not-consistent-hash"),
    ],
)
def test_hash_policy_follows_the_first_backends_service(
    balancing: LoadBalancing, key: HashKey, sidecar_policy: dict[str, Any] | None, grpc_policy: dict[str, Any] | None
) -> None:
    hashed = service(
        "hashed", ServicePort("grpc", 80, Protocol.GRPC), policy=TrafficPolicy(load_balancing=balancing, hash_key=key)
    )
    rule = RouteRule(
        RouteMatch(), (WeightedBackend(ServiceRef("shop", "hashed"), weight=9), WeightedBackend(WEB, weight=1))
    )
    for group, expected in ((SIDECAR, sidecar_policy), (GRPC, grpc_policy)):
        action = rule_route(rule, hashed, group=group).route
        got = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in action.hash_policy]
        assert got == ([expected] if expected else [])


def test_default_route_of_a_consistent_hash_service_hashes() -> None:
    hashed = service(
        "web", policy=TrafficPolicy(load_balancing=LoadBalancing.RING_HASH, hash_key=HashKey(header="x-u"))
    )
    (policy,) = only_route(translated(Mesh.of([hashed]))).route.hash_policy
    assert policy.header.header_name == "x-u"


def test_grpc_role_route_configs() -> None:
    mesh = Mesh.of(
        [
            service("web", ServicePort("grpc", 9090, Protocol.GRPC), ServicePort("http", 80)),
            service("api", ServicePort("grpc", 9091, Protocol.GRPC), ServicePort("rpc", 9092, Protocol.GRPC)),
        ],
        [RouteTable("hosts-only", rules=(RouteRule(RouteMatch(), (WeightedBackend(WEB, 80),)),), hosts=("a.example",))],
    )
    translation = translated(mesh, GRPC)
    configs = {c.name: c for c in translation.resources[TypeUrl.ROUTE]}
    assert sorted(configs) == ["grpc/api.shop:9091", "grpc/api.shop:9092", "grpc/web.shop:9090"]
    for name, config in configs.items():
        (vhost,) = config.virtual_hosts
        assert list(vhost.domains) == ["*"]
        (route,) = vhost.routes
        assert route.route.cluster == name.removeprefix("grpc/")
        assert not route.route.HasField("timeout")
    assert translation.warnings == ()


def test_a_rule_shared_by_several_virtual_hosts_warns_once() -> None:
    rules = (
        RouteRule(RouteMatch(PathMatch(PathMatchKind.REGEX, "")), (WeightedBackend(WEB, 80),)),
        RouteRule(RouteMatch(), (WeightedBackend(WEB, 80),)),
    )
    web = service(
        "web", ServicePort("http", 80), ServicePort("grpc", 90, Protocol.GRPC), ServicePort("g2", 91, Protocol.GRPC)
    )
    mesh = Mesh.of([web], [RouteTable("t", rules, service=WEB, hosts=("www.example.com",))])
    for group in (SIDECAR, GRPC):
        assert translated(mesh, group, validated=False).warnings == (
            "route t rule 1: an empty path regex matches no path; rule left out",
        )


def test_an_alias_naming_an_ambiguous_bare_name_is_only_an_alias() -> None:
    # Two services called `web`: neither owns the bare name, so it is an alias like any other.
    mesh = Mesh.of([service("web", namespace="b", hosts=("web",)), service("web", namespace="a", hosts=("web",))])
    translation = translated(mesh)
    got = domains(translation)
    assert "web" in got["web.a:80"]
    assert "web" not in got["web.b:80"]
    assert "domain 'web' of web.b:80 is already taken by web.a:80; left out" in translation.warnings
