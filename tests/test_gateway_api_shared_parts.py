"""Every Gateway's proxy of a locality gets the same clusters, endpoints and secrets, built once:

- the translation hands every gateway group the very same tuples while the services are the same
  objects, and they equal a translation from scratch (a mesh of copies, which no memo knows);
- what they depend on besides the services (certificates, trust bundles, a Gateway's own
  certificates and backend TLS) still changes them;
- `Snapshot.of` takes a set whole from a snapshot holding the very same messages, and
  `consistency_problems` does not look again at a part a passed snapshot holds as the same sets;
- through the publisher: ten gateway groups share one set of clusters, endpoints and secrets, a
  route change leaves those sets as they were (nothing serialised again) and replaces the routes,
  and each group's snapshot is the one the pure `build_snapshot` gives.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from typing import Any

from meshplane.model import (
    BackendTls,
    Endpoint,
    Gateway,
    GatewayHost,
    GatewayListener,
    GatewayRule,
    ListenerProtocol,
    Mesh,
    PathMatch,
    ProxyGroup,
    ProxyRole,
    RouteMatch,
    RouteRule,
    Service,
    ServicePort,
    ServiceRef,
    TlsCertificate,
    TrustBundle,
    UpstreamTls,
    WeightedBackend,
)
from meshplane.model.changes import MeshChanges
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher, build_snapshot
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.certificates import fixed_self_signed_pem

SHARED_TYPES = (TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.SECRET)


CHAIN, KEY = fixed_self_signed_pem("secure.example")
CA, _ = fixed_self_signed_pem("mesh-ca")
OTHER_CA, _ = fixed_self_signed_pem("other-ca")


def service(index: int, tls: UpstreamTls | None = None) -> Service:
    return Service(
        f"svc-{index}", "shop", (ServicePort("http", 8080),), (Endpoint(f"10.0.0.{index + 1}", 9000, "http"),), tls=tls
    )


# Services named so that mesh order (namespace, name) differs from the clusters' name order.
SERVICES = [service(index) for index in (3, 12, 1, 20)] + [service(7, UpstreamTls("shop/mesh-ca"))]


def gateway(index: int, backend: ServiceRef, **more: Any) -> Gateway:
    rule = GatewayRule(RouteRule(RouteMatch(path=PathMatch()), (WeightedBackend(backend, 8080),)))
    listener = GatewayListener("http", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", (rule,)),))
    return Gateway("shop", f"gw-{index}", (listener,), **more)


GATEWAYS = 10
GROUPS = [
    ProxyGroup(ProxyRole.GATEWAY, gateway=f"shop/gw-{index}", listen_address=f"127.0.0.{101 + index}")
    for index in range(GATEWAYS)
]


def mesh(backend: int = 1, **more: Any) -> Mesh:
    gateways = [gateway(index, ServiceRef("shop", f"svc-{backend}")) for index in range(GATEWAYS)]
    more.setdefault("trust_bundles", [TrustBundle("shop/mesh-ca", CA)])
    return Mesh.of(SERVICES, gateways=gateways, **more)


def serialised(resources: tuple[Any, ...]) -> list[bytes]:
    return [message.SerializeToString(deterministic=True) for message in resources]


def fresh(of: Mesh) -> Mesh:
    """`of` with every service, certificate and bundle a copy: what no memo has seen."""
    return dataclasses.replace(
        of,
        services=tuple(copy.deepcopy(s) for s in of.services),
        certificates=tuple(copy.deepcopy(c) for c in of.certificates),
        trust_bundles=tuple(copy.deepcopy(b) for b in of.trust_bundles),
    )


def test_every_gateway_group_of_a_locality_gets_the_very_same_clusters_endpoints_and_secrets() -> None:
    current = mesh()
    first, *others = [translate(current, group).resources for group in GROUPS]
    for type_url in SHARED_TYPES:
        assert first[type_url], type_url
        for resources in others:
            assert resources[type_url] is first[type_url], type_url
    assert [secret.name for secret in first[TypeUrl.SECRET]] == ["shop/mesh-ca"]
    # Each Gateway still gets its own listeners and routes.
    assert len({id(resources[TypeUrl.ROUTE]) for resources in (first, *others)}) == GATEWAYS


def test_the_shared_parts_equal_a_translation_from_scratch_sorted_by_name() -> None:
    current = mesh()
    translate(current, GROUPS[0])  # the memo holds them
    held = translate(current, GROUPS[1]).resources
    scratch = translate(fresh(current), GROUPS[1]).resources
    for type_url in TypeUrl:
        assert serialised(held[type_url]) == serialised(scratch[type_url]), type_url
    names = [cluster.name for cluster in held[TypeUrl.CLUSTER]]
    assert names == sorted(names)
    assert len(names) == len(SERVICES)
    assignments = [assignment.cluster_name for assignment in held[TypeUrl.ENDPOINT]]
    assert assignments == sorted(assignments)
    assert len(assignments) == len(SERVICES)


def test_new_trust_bundles_give_new_secrets_though_the_services_are_the_same() -> None:
    before = translate(mesh(), GROUPS[0]).resources
    changed = translate(mesh(trust_bundles=[TrustBundle("shop/mesh-ca", OTHER_CA)]), GROUPS[0]).resources
    assert changed[TypeUrl.CLUSTER] is before[TypeUrl.CLUSTER]  # the services are the same objects
    (secret,) = changed[TypeUrl.SECRET]
    assert secret.validation_context.trusted_ca.inline_string == OTHER_CA


def test_a_service_changed_gets_new_clusters_and_the_others_keep_theirs() -> None:
    current = mesh()
    before = translate(current, GROUPS[0]).resources
    changed_one = dataclasses.replace(SERVICES[0], ports=(ServicePort("http", 8081),))
    after_mesh = dataclasses.replace(
        current, services=tuple(changed_one if s is SERVICES[0] else s for s in current.services)
    )
    after = translate(after_mesh, GROUPS[0]).resources
    assert serialised(after[TypeUrl.CLUSTER]) == serialised(
        translate(fresh(after_mesh), GROUPS[0]).resources[TypeUrl.CLUSTER]
    )
    kept = {cluster.name: cluster for cluster in before[TypeUrl.CLUSTER]}
    for cluster in after[TypeUrl.CLUSTER]:
        assert (cluster is kept.get(cluster.name)) == ("svc-3" not in cluster.name), cluster.name


def test_a_gateways_own_certificates_and_backend_tls_join_the_shared_parts_for_it_alone() -> None:
    own_listener = GatewayListener(
        "https", 443, ListenerProtocol.HTTPS, hostname="secure.example", certificates=("shop/tls",),
        hosts=(GatewayHost("secure.example", ()),),
    )  # fmt: skip
    special = dataclasses.replace(
        gateway(0, ServiceRef("shop", "svc-1")),
        listeners=(gateway(0, ServiceRef("shop", "svc-1")).listeners[0], own_listener),
        backend_tls=(BackendTls(ServiceRef("shop", "svc-12"), "http", "svc-12.example", CA),),
    )
    current = mesh(certificates=[TlsCertificate("shop/tls", CHAIN, KEY)])
    current = dataclasses.replace(current, gateways=(special, *current.gateways[1:]))
    plain = translate(current, GROUPS[1]).resources
    own = translate(current, GROUPS[0]).resources
    assert [secret.name for secret in plain[TypeUrl.SECRET]] == ["shop/mesh-ca"]
    assert [secret.name for secret in own[TypeUrl.SECRET]] == ["shop/mesh-ca", "shop/tls"]
    tls_clusters = [c.name for c in own[TypeUrl.CLUSTER] if c.HasField("transport_socket")]
    assert sorted(tls_clusters) == ["svc-12.shop:8080", "svc-7.shop:8080"]
    assert [c.name for c in own[TypeUrl.CLUSTER]] == [c.name for c in plain[TypeUrl.CLUSTER]]
    assert own[TypeUrl.ENDPOINT] is plain[TypeUrl.ENDPOINT]
    scratch = translate(fresh(current), GROUPS[0]).resources
    for type_url in TypeUrl:
        assert serialised(own[type_url]) == serialised(scratch[type_url]), type_url


def test_snapshot_of_takes_a_set_whole_from_a_snapshot_holding_the_very_same_messages() -> None:
    resources = translate(mesh(), GROUPS[0]).resources
    earlier = Snapshot.of(resources)
    again = Snapshot.of(resources, None, [earlier])
    for type_url in TypeUrl:
        assert again.of_type(type_url) is earlier.of_type(type_url), type_url
    # Equal messages that are other objects are serialised anew, to the same versions.
    copies = {type_url: tuple(copy.deepcopy(m) for m in messages) for type_url, messages in resources.items()}
    anew = Snapshot.of(copies, None, [earlier])
    assert anew.of_type(TypeUrl.CLUSTER) is not earlier.of_type(TypeUrl.CLUSTER)
    assert anew.version == earlier.version


def test_the_consistency_check_skips_only_the_parts_a_passed_snapshot_holds_as_the_same_sets() -> None:
    resources = dict(translate(mesh(), GROUPS[0]).resources)
    without_endpoints = Snapshot.of({**resources, TypeUrl.ENDPOINT: ()})
    wanting = [p for p in without_endpoints.consistency_problems() if "wants endpoints" in p]
    assert len(wanting) == len(SERVICES)
    # Taken as passed (the caller's word), its clusters are not looked at again…
    assert without_endpoints.consistency_problems([without_endpoints]) == []
    # …but its listeners are, in a snapshot sharing only the clusters: one asking for routes not there.
    route_less = Snapshot.of({**resources, TypeUrl.ENDPOINT: (), TypeUrl.ROUTE: ()}, without_endpoints)
    assert route_less.of_type(TypeUrl.CLUSTER) is without_endpoints.of_type(TypeUrl.CLUSTER)
    assert route_less.consistency_problems([without_endpoints]) == [
        f"listener {listener.name} wants routes {route.name!r}, which are missing"
        for listener, route in zip(resources[TypeUrl.LISTENER], resources[TypeUrl.ROUTE], strict=True)
    ]


def route_change(current: Mesh, backend: int) -> Mesh:
    """The Gateways of `current`, their one route moved to service `backend`; the services kept."""
    gateways = tuple(gateway(index, ServiceRef("shop", f"svc-{backend}")) for index in range(GATEWAYS))
    return dataclasses.replace(current, gateways=gateways)


async def test_through_the_publisher_ten_gateway_groups_share_their_sets_and_a_route_change_keeps_them() -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    for group in GROUPS:
        cache.subscribe(group, asyncio.Event())
    current = mesh()
    publisher.publish(current)
    snapshots = {group: cache.snapshot(group) for group in GROUPS}
    first = snapshots[GROUPS[0]]
    assert first is not None
    for snapshot in snapshots.values():
        assert snapshot is not None
        for type_url in SHARED_TYPES:
            assert snapshot.of_type(type_url) is first.of_type(type_url), type_url

    moved = route_change(current, 12)
    publisher.publish(moved, MeshChanges(gateways=True))
    assert not publisher.state.problems
    for group in GROUPS:
        before, after = snapshots[group], cache.snapshot(group)
        assert before is not None
        assert after is not None
        for type_url in SHARED_TYPES:
            assert after.of_type(type_url) is before.of_type(type_url), type_url  # nothing made again
        assert after.of_type(TypeUrl.ROUTE).version != before.of_type(TypeUrl.ROUTE).version
        # What the pure function gives, from nothing held.
        assert after.version == build_snapshot(fresh(moved), group)[0].version
