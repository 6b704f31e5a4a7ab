"""The merge of meshplane's own objects (meshplane.io) with the other sources: one precedence
(policy files > meshplane objects > Gateway API > Kubernetes Services), TrafficPolicy attachment
(whole policy replaced; the older of two wins; a missing target waits; Conflicted only when every
target is lost), a refused object's last good version serving and its problem on /status, a
status for every object with ResolvedRefs derived from the merge's problems for every kind,
overlapping EdgeSites, a Gateway API route losing to a MeshRoute, the precise change set of an
object change, and its cost (one object judged per object changed)."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.inventory import Contents, Inventory, Merged
from meshplane.discovery.kubernetes import KubernetesContent
from meshplane.discovery.meshplane_api.conditions import ACCEPTED, RESOLVED_REFS, ObjectCondition
from meshplane.discovery.meshplane_api.kinds import API_VERSION, kind_named
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, ObjectKey, ParsedObject, parse_object
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import (
    Endpoint,
    LoadBalancing,
    Mesh,
    ProblemKind,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    Site,
    TrafficPolicy,
    WeightedBackend,
)
from meshplane.model.changes import MeshChanges

NS = "shop"


def obj(kind: str, name: str, spec: dict[str, Any], generation: int = 1, created: str = "") -> dict[str, Any]:
    found = kind_named(kind)
    assert found is not None
    metadata: dict[str, Any] = {"name": name, "generation": generation}
    if found.namespaced:
        metadata["namespace"] = NS
    if created:
        metadata["creationTimestamp"] = created
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def objects(*raw: dict[str, Any]) -> MeshplaneObjects:
    return MeshplaneObjects.of([parse_object(one) for one in raw])


def k8s_service(name: str, namespace: str = NS) -> Service:
    return Service(
        name,
        namespace,
        (ServicePort("http", 80),),
        (Endpoint("10.0.0.1", 8080, "http"),),
        origin="kubernetes",
    )


def merge(
    inventory: Inventory,
    found: MeshplaneObjects,
    *,
    files: Mesh | None = None,
    kubernetes: tuple[Service, ...] = (),
    changes: MeshChanges | None = None,
) -> Merged:
    return inventory.merge(
        Contents(
            files=files or Mesh(),
            kubernetes=KubernetesContent(kubernetes, ()),
            changes=changes or MeshChanges.everything(),
            meshplane_api=found,
        )
    )


def condition(merged: Merged, kind: str, name: str, type_: str) -> ObjectCondition:
    status = merged.object_status[ObjectKey(kind, "" if kind in ("EdgeSite", "DevicePolicy") else NS, name)]
    found = status.condition(type_)
    assert found is not None, status
    return found


EXTERNAL = obj("ExternalService", "payments", {"port": 443, "endpoints": [{"address": "192.0.2.10"}]})


def test_an_external_service_is_served_and_accepted() -> None:
    merged = merge(Inventory(), objects(EXTERNAL))
    service = merged.mesh.service(ServiceRef(NS, "payments"))
    assert service is not None
    assert service.endpoints[0].address == "192.0.2.10"
    assert service.origin == f"ExternalService {NS}/payments"
    assert condition(merged, "ExternalService", "payments", ACCEPTED).status == "True"


def test_policy_files_win_over_an_external_service_which_is_conflicted() -> None:
    files = Mesh.of([Service("payments", NS, (ServicePort("http", 80),), origin="a.yaml:1")])
    merged = merge(Inventory(), objects(EXTERNAL), files=files)
    assert merged.mesh.service(ServiceRef(NS, "payments")) == files.services[0]
    accepted = condition(merged, "ExternalService", "payments", ACCEPTED)
    assert (accepted.status, accepted.reason) == ("False", "Conflicted")
    conflicts = [p for p in merged.problems if p.kind is ProblemKind.CONFLICT]
    assert [p.where for p in conflicts] == [f"ExternalService {NS}/payments"]
    assert "serving the policy files' definition" in conflicts[0].message


def test_an_external_service_wins_over_a_kubernetes_service_of_its_name() -> None:
    merged = merge(Inventory(), objects(EXTERNAL), kubernetes=(k8s_service("payments"),))
    served = merged.mesh.service(ServiceRef(NS, "payments"))
    assert served is not None
    assert served.origin.startswith("ExternalService")
    assert [p.kind for p in merged.problems] == [ProblemKind.CONFLICT]
    assert "serving the ExternalService's definition" in merged.problems[0].message


def policy(name: str, targets: list[dict[str, str]], created: str, generation: int = 1, **keys: Any) -> dict[str, Any]:
    return obj("TrafficPolicy", name, {"target_refs": targets, **keys}, generation, created=created)


WEB = {"kind": "Service", "name": "web"}


def test_a_traffic_policy_replaces_its_targets_whole_policy() -> None:
    web = dataclasses.replace(k8s_service("web"), policy=TrafficPolicy(connect_timeout=3, locality_failover=False))
    found = objects(policy("fast", [WEB], "2026-01-01T00:00:00Z", load_balancing="least_request"))
    merged = merge(Inventory(), found, kubernetes=(web,))
    served = merged.mesh.service(ServiceRef(NS, "web"))
    assert served is not None
    # Whole: what the TrafficPolicy leaves out is the default, not the Service's annotation.
    assert served.policy == TrafficPolicy(load_balancing=LoadBalancing.LEAST_REQUEST)
    assert condition(merged, "TrafficPolicy", "fast", ACCEPTED).status == "True"
    assert condition(merged, "TrafficPolicy", "fast", RESOLVED_REFS).status == "True"


def test_of_two_traffic_policies_on_one_target_the_older_wins() -> None:
    found = objects(
        policy("newer", [WEB], "2026-02-01T00:00:00Z", load_balancing="random"),
        policy("older", [WEB], "2026-01-01T00:00:00Z", load_balancing="maglev", hash_key={"source_ip": True}),
    )
    merged = merge(Inventory(), found, kubernetes=(k8s_service("web"),))
    served = merged.mesh.service(ServiceRef(NS, "web"))
    assert served is not None
    assert served.policy.load_balancing is LoadBalancing.MAGLEV
    lost = condition(merged, "TrafficPolicy", "newer", ACCEPTED)
    assert (lost.status, lost.reason) == ("False", "Conflicted")
    assert lost.message == f"Service {NS}/web: TrafficPolicy {NS}/older was created first and applies to it"
    assert condition(merged, "TrafficPolicy", "older", ACCEPTED).status == "True"


def test_a_missing_target_waits_and_the_policy_applies_once_it_exists() -> None:
    inventory = Inventory()
    found = objects(policy("fast", [WEB], "2026-01-01T00:00:00Z", connect_timeout="2s"))
    merged = merge(inventory, found)
    refs = condition(merged, "TrafficPolicy", "fast", RESOLVED_REFS)
    assert (refs.status, refs.reason) == ("False", "TargetNotFound")
    assert condition(merged, "TrafficPolicy", "fast", ACCEPTED).status == "True"
    merged = merge(inventory, found, kubernetes=(k8s_service("web"),), changes=MeshChanges(services=True))
    served = merged.mesh.service(ServiceRef(NS, "web"))
    assert served is not None
    assert served.policy.connect_timeout == 2.0
    assert condition(merged, "TrafficPolicy", "fast", RESOLVED_REFS).status == "True"


def test_a_target_of_the_wrong_kind_is_not_found() -> None:
    external = {"group": "meshplane.io", "kind": "ExternalService", "name": "web"}
    found = objects(policy("fast", [external], "2026-01-01T00:00:00Z"))
    merged = merge(Inventory(), found, kubernetes=(k8s_service("web"),))
    assert condition(merged, "TrafficPolicy", "fast", RESOLVED_REFS).reason == "TargetNotFound"


def test_a_traffic_policy_on_a_policy_files_service_is_conflicted() -> None:
    files = Mesh.of([Service("web", NS, (ServicePort("http", 80),), origin="a.yaml:1")])
    external = {"group": "meshplane.io", "kind": "ExternalService", "name": "web"}
    found = objects(policy("fast", [external], "2026-01-01T00:00:00Z", connect_timeout="2s"))
    merged = merge(Inventory(), found, files=files)
    assert merged.mesh.services == files.services
    assert condition(merged, "TrafficPolicy", "fast", ACCEPTED).reason == "Conflicted"


def test_a_refused_object_keeps_its_last_good_version_serving() -> None:
    inventory = Inventory()
    merge(inventory, objects(EXTERNAL))
    broken = obj("ExternalService", "payments", {"port": 443, "endpoints": [{"address": "192.0.2.99", "weight": 0}]}, 2)
    merged = merge(inventory, objects(broken), changes=MeshChanges(policy_objects=True))
    served = merged.mesh.service(ServiceRef(NS, "payments"))
    assert served is not None
    assert served.endpoints[0].address == "192.0.2.10"
    accepted = condition(merged, "ExternalService", "payments", ACCEPTED)
    assert (accepted.status, accepted.reason) == ("False", "Invalid")
    assert "weight 0 is out of range" in accepted.message
    assert "serving generation 1" in accepted.message
    assert merged.object_status[ObjectKey("ExternalService", NS, "payments")].generation == 2
    # A process started with the broken object has no good version: nothing is served.
    fresh = merge(Inventory(), objects(broken))
    assert fresh.mesh.service(ServiceRef(NS, "payments")) is None
    assert "no version of it was accepted" in condition(fresh, "ExternalService", "payments", ACCEPTED).message


def test_an_object_refused_by_parsing_says_the_field() -> None:
    bad = obj("ExternalService", "payments", {"port": 443, "policy": {"connect_timeout": "5x"}})
    merged = merge(Inventory(), objects(bad))
    message = condition(merged, "ExternalService", "payments", ACCEPTED).message
    assert message.startswith(f"ExternalService {NS}/payments: spec.policy.connect_timeout: '5x' is not a duration")


ROUTE = obj("MeshRoute", "web-routes", {"service": "web", "rules": [{"to": ["web"], "timeout": "3s"}]})


def test_a_mesh_route_loses_to_a_policy_files_route_and_wins_over_annotations() -> None:
    web = k8s_service("web")
    annotation = RouteTable(
        "web-annotations", (RouteRule(RouteMatch(), backends=(WeightedBackend(web.ref),)),), service=web.ref
    )
    merged = merge(Inventory(), objects(ROUTE), kubernetes=(web,))
    assert [table.name for table in merged.mesh.routes] == ["web-routes"]
    assert condition(merged, "MeshRoute", "web-routes", RESOLVED_REFS).status == "True"
    inventory = Inventory()
    merged = inventory.merge(
        Contents(
            files=Mesh(),
            kubernetes=KubernetesContent((web,), (annotation,)),
            changes=MeshChanges.everything(),
            meshplane_api=objects(ROUTE),
        )
    )
    assert [table.name for table in merged.mesh.routes] == ["web-routes"]
    files = Mesh.of([], [RouteTable("files-route", annotation.rules, service=web.ref, origin="r.yaml:1")])
    merged = merge(Inventory(), objects(ROUTE), files=files, kubernetes=(web,))
    assert [table.name for table in merged.mesh.routes] == ["files-route"]
    assert condition(merged, "MeshRoute", "web-routes", ACCEPTED).reason == "Conflicted"


def test_a_mesh_route_to_a_missing_service_is_left_out_with_backend_not_found() -> None:
    merged = merge(Inventory(), objects(ROUTE))
    assert merged.mesh.routes == ()
    refs = condition(merged, "MeshRoute", "web-routes", RESOLVED_REFS)
    assert (refs.status, refs.reason) == ("False", "BackendNotFound")
    assert "unknown service shop/web" in refs.message


def test_an_edge_site_joins_the_files_sites_and_loses_a_clash() -> None:
    files = Mesh(sites=(Site("gym", "eu", origin="s.yaml:1"),))
    found = objects(obj("EdgeSite", "gym", {"region": "us"}), obj("EdgeSite", "store", {"region": "us"}))
    merged = merge(Inventory(), found, files=files)
    assert [(site.id, site.region) for site in merged.mesh.sites] == [("gym", "eu"), ("store", "us")]
    assert condition(merged, "EdgeSite", "gym", ACCEPTED).reason == "Conflicted"
    assert condition(merged, "EdgeSite", "store", ACCEPTED).status == "True"


def test_mesh_telemetry_is_joined_with_the_files() -> None:
    found = objects(obj("MeshTelemetry", "logs", {"access_logs": [{"to": "stderr"}]}))
    merged = merge(Inventory(), found)
    assert [log.sink.value for log in merged.mesh.telemetry.access_logs] == ["stderr"]


def test_every_object_gets_a_status_even_one_that_cannot_be_read() -> None:
    unreadable = obj("MeshTelemetry", "broken", {"access_logs": "everything"})
    found = objects(EXTERNAL, ROUTE, unreadable)
    merged = merge(Inventory(), found)
    assert sorted(merged.object_status) == sorted(found.objects)
    assert condition(merged, "MeshTelemetry", "broken", ACCEPTED).reason == "Invalid"


def test_an_object_change_reports_exactly_the_parts_it_changed() -> None:
    inventory = Inventory()
    web = k8s_service("web")
    first = merge(inventory, objects(ROUTE), kubernetes=(web,))
    assert first.changes == MeshChanges.everything()
    faster = obj("MeshRoute", "web-routes", {"service": "web", "rules": [{"to": ["web"], "timeout": "1s"}]}, 2)
    merged = merge(inventory, objects(faster), kubernetes=(web,), changes=MeshChanges(policy_objects=True))
    assert merged.changes == MeshChanges(routes=True)
    assert merged.changes.covers(MeshChanges.between(first.mesh, merged.mesh))
    with_policy = objects(faster, policy("fast", [WEB], "2026-01-01T00:00:00Z", connect_timeout="2s"))
    before = merged.mesh
    merged = merge(inventory, with_policy, kubernetes=(web,), changes=MeshChanges(policy_objects=True))
    assert merged.changes == MeshChanges(services=True)
    assert merged.changes.covers(MeshChanges.between(before, merged.mesh))
    # Nothing reported: the previous result stands, statuses included.
    again = merge(inventory, with_policy, kubernetes=(web,), changes=MeshChanges())
    assert again.changes.none
    assert again.mesh is merged.mesh
    assert again.object_status == merged.object_status


def test_parsed_objects_key_and_metadata() -> None:
    parsed: ParsedObject = parse_object(obj("EdgeSite", "gym", {"region": "eu"}, 4, "2026-03-01T00:00:00Z"))
    assert parsed.key == ObjectKey("EdgeSite", "", "gym")
    assert (parsed.generation, parsed.created, parsed.errors) == (4, "2026-03-01T00:00:00Z", ())


def test_a_mesh_telemetry_the_joined_settings_refuse_is_left_out_as_invalid() -> None:
    collector = {"collectors": [{"name": "otel", "service": "otel", "port": 4317}]}
    found = objects(
        obj("MeshTelemetry", "a", {**collector, "tracing": [{"collector": "otel"}]}),
        obj("MeshTelemetry", "b", {**collector, "access_logs": [{"to": "collector", "collector": "nowhere"}]}),
    )
    merged = merge(Inventory(), found)
    assert condition(merged, "MeshTelemetry", "a", ACCEPTED).status == "True"
    refused = condition(merged, "MeshTelemetry", "b", ACCEPTED)
    assert (refused.status, refused.reason) == ("False", "Invalid")
    assert "defined twice" in refused.message
    assert [c.name for c in merged.mesh.telemetry.collectors] == ["otel"]
    # The refusal is a problem said where the object is; the collector's service is another
    # source's to define: an error, not a refusal, and MeshTelemetry a's ResolvedRefs says it.
    assert [(p.kind, p.where) for p in merged.problems] == [
        (ProblemKind.INVALID, f"MeshTelemetry {NS}/b"),
        (ProblemKind.UNKNOWN_SERVICE, f"MeshTelemetry {NS}/a"),
    ]
    refs = condition(merged, "MeshTelemetry", "a", RESOLVED_REFS)
    assert (refs.status, refs.reason) == ("False", "BackendNotFound")


# --- ResolvedRefs on every kind, from the merge's problems ---


def test_an_external_service_naming_a_missing_secret_is_left_out_with_resolved_refs_false() -> None:
    tls = {"trust": "shop/payments-ca", "sni": "payments.example"}
    found = objects(obj("ExternalService", "payments", {**EXTERNAL["spec"], "tls": tls}))
    merged = merge(Inventory(), found)
    assert merged.mesh.service(ServiceRef(NS, "payments")) is None
    assert condition(merged, "ExternalService", "payments", ACCEPTED).status == "True"
    refs = condition(merged, "ExternalService", "payments", RESOLVED_REFS)
    assert (refs.status, refs.reason) == ("False", "InvalidCertificateRef")
    assert "shop/payments-ca" in refs.message
    assert "left out" in refs.message
    assert [p.where for p in merged.problems] == [f"ExternalService {NS}/payments"]


def test_every_kind_served_has_resolved_refs_true_when_its_references_resolve() -> None:
    found = objects(EXTERNAL, obj("EdgeSite", "gym", {"region": "eu"}))
    merged = merge(Inventory(), found)
    for kind, name in (("ExternalService", "payments"), ("EdgeSite", "gym")):
        assert condition(merged, kind, name, RESOLVED_REFS).status == "True"


def site_object(name: str, *ranges: str) -> dict[str, Any]:
    return obj("EdgeSite", name, {"region": "eu", "device_ranges": list(ranges)})


def test_overlapping_device_ranges_are_a_condition_on_both_sites_and_a_problem() -> None:
    found = objects(site_object("berlin", "10.20.0.0/16"), site_object("paris", "10.30.0.0/16", "10.20.5.0/24"))
    merged = merge(Inventory(), found)
    assert [site.id for site in merged.mesh.sites] == ["berlin", "paris"]  # both served
    for name, other in (("berlin", "paris"), ("paris", "berlin")):
        assert condition(merged, "EdgeSite", name, ACCEPTED).status == "True"
        overlap = condition(merged, "EdgeSite", name, "Conflicted")
        assert (overlap.status, overlap.reason) == ("True", "DeviceRangeOverlap")
        assert f"of site {other}" in overlap.message
        assert "10.20.5.0/24" in overlap.message
    conflicts = [(p.kind, p.where) for p in merged.problems]
    assert conflicts == [(ProblemKind.CONFLICT, "EdgeSite berlin"), (ProblemKind.CONFLICT, "EdgeSite paris")]


def test_a_device_policy_naming_an_unknown_site_or_service_has_resolved_refs_false() -> None:
    spec = {"sites": ["nowhere"], "classes": ["bike"], "allow": [{"service": "shop/missing"}]}
    found = objects(obj("EdgeSite", "gym", {"region": "eu"}), obj("DevicePolicy", "bikes", spec))
    merged = merge(Inventory(), found)
    key = ObjectKey("DevicePolicy", "", "bikes")
    refs = merged.object_status[key].condition(RESOLVED_REFS)
    assert refs is not None
    assert (refs.status, refs.reason) == ("False", "SiteNotFound")
    assert "unknown site 'nowhere'" in refs.message
    assert "unknown service shop/missing" in refs.message
    assert {p.kind for p in merged.problems if p.where == str(key)} == {
        ProblemKind.UNKNOWN_SITE,
        ProblemKind.UNKNOWN_SERVICE,
    }
    fine = {"sites": ["gym"], "classes": ["bike"], "allow": [{"service": "shop/payments"}]}
    merged = merge(
        Inventory(), objects(EXTERNAL, obj("EdgeSite", "gym", {"region": "eu"}), obj("DevicePolicy", "bikes", fine))
    )
    refs = merged.object_status[key].condition(RESOLVED_REFS)
    assert refs is not None
    assert refs.status == "True"


# --- a refused object says why on /status ---


def test_an_object_the_model_refuses_and_a_policy_losing_a_clash_are_problems() -> None:
    too_long = policy("slow", [WEB], "2026-01-01T00:00:00Z", connect_timeout="500s")
    newer = policy("newer", [WEB], "2026-02-01T00:00:00Z", connect_timeout="1s")
    older = policy("older", [WEB], "2026-01-01T00:00:00Z", connect_timeout="2s")
    merged = merge(Inventory(), objects(too_long, newer, older), kubernetes=(k8s_service("web"),))
    by_where = {p.where: p for p in merged.problems}
    refused = by_where[f"TrafficPolicy {NS}/slow"]
    assert refused.kind is ProblemKind.INVALID
    # Said once, not "TrafficPolicy shop/slow (TrafficPolicy shop/slow): …".
    assert refused.message.startswith(f"TrafficPolicy {NS}/slow: connect_timeout")
    assert refused.message.count(f"TrafficPolicy {NS}/slow") == 1
    assert "not served" in refused.message
    lost = by_where[f"TrafficPolicy {NS}/newer"]
    assert lost.kind is ProblemKind.CONFLICT
    assert f"TrafficPolicy {NS}/older was created first" in lost.message
    accepted = condition(merged, "TrafficPolicy", "slow", ACCEPTED)
    assert accepted.message.count(f"TrafficPolicy {NS}/slow") == 1


# --- a partly conflicted TrafficPolicy ---


def test_a_policy_losing_some_targets_is_accepted_and_names_them_and_one_losing_all_is_conflicted() -> None:
    api = {"kind": "Service", "name": "api"}
    gone = {"kind": "Service", "name": "gone"}
    older = policy("older", [WEB], "2026-01-01T00:00:00Z", connect_timeout="1s")
    partly = policy("partly", [WEB, api, gone], "2026-02-01T00:00:00Z", connect_timeout="2s")
    merged = merge(Inventory(), objects(older, partly), kubernetes=(k8s_service("api"), k8s_service("web")))
    served = merged.mesh.service(ServiceRef(NS, "api"))
    assert served is not None
    assert served.policy.connect_timeout == 2.0
    accepted = condition(merged, "TrafficPolicy", "partly", ACCEPTED)
    assert (accepted.status, accepted.reason) == ("True", "Accepted")
    assert f"Service {NS}/web: TrafficPolicy {NS}/older was created first" in accepted.message
    refs = condition(merged, "TrafficPolicy", "partly", RESOLVED_REFS)
    assert (refs.status, refs.reason) == ("False", "TargetNotFound")
    assert f"Service {NS}/gone" in refs.message
    # Every target lost: Conflicted, and nothing resolved of it is claimed.
    only_web = policy("partly", [WEB], "2026-02-01T00:00:00Z", connect_timeout="2s", generation=2)
    merged = merge(Inventory(), objects(older, only_web), kubernetes=(k8s_service("web"),))
    assert condition(merged, "TrafficPolicy", "partly", ACCEPTED).reason == "Conflicted"
    assert merged.object_status[ObjectKey("TrafficPolicy", NS, "partly")].condition(RESOLVED_REFS) is None


# --- the cost of an object change ---


def test_a_one_object_change_judges_that_object_only() -> None:
    inventory = Inventory()
    many = [obj("ExternalService", f"svc-{index}", EXTERNAL["spec"]) for index in range(50)]
    merge(inventory, objects(*many))
    judged = inventory._last_good.judged
    assert judged == 50
    changed = obj("ExternalService", "svc-7", {"port": 443, "endpoints": [{"address": "192.0.2.77"}]}, 2)
    merged = merge(inventory, objects(*many[:7], changed, *many[8:]), changes=MeshChanges(policy_objects=True))
    assert inventory._last_good.judged == judged + 1
    served = merged.mesh.service(ServiceRef(NS, "svc-7"))
    assert served is not None
    assert served.endpoints[0].address == "192.0.2.77"
    assert merged.object_status[ObjectKey("ExternalService", NS, "svc-7")].generation == 2
    # A deletion judges nothing, and the object's status goes.
    merged = merge(inventory, objects(*many[:7], *many[8:]), changes=MeshChanges(policy_objects=True))
    assert inventory._last_good.judged == judged + 1
    assert ObjectKey("ExternalService", NS, "svc-7") not in merged.object_status
    assert merged.mesh.service(ServiceRef(NS, "svc-7")) is None
    assert list(merged.object_status) == sorted(merged.object_status)


# --- a Gateway API route losing to a MeshRoute ---

GAMMA_ROUTE = f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {NS}}}
spec:
  parentRefs: [{{kind: Service, group: '', name: web}}]
  rules:
    - backendRefs: [{{name: web, port: 80}}]
"""


def test_a_gateway_api_route_losing_to_a_mesh_route_is_told_and_named_the_real_winner() -> None:
    parsed = parse_policy(GAMMA_ROUTE, "k.yaml")
    assert parsed.errors == ()
    gateway_api = GatewayApiObjects(http_routes={d.key: d.parsed for d in parsed.gateway_api})
    contents = Contents(
        kubernetes=KubernetesContent((k8s_service("web"),), ()), gateway_api=gateway_api, meshplane_api=objects(ROUTE)
    )
    merged = Inventory().merge(contents)
    assert [table.name for table in merged.mesh.routes] == ["web-routes"]
    (conflict,) = [p for p in merged.problems if p.kind is ProblemKind.CONFLICT]
    assert conflict.message.endswith(f"serving route web-routes (MeshRoute {NS}/web-routes)")
    (parent,) = merged.gateway_status.http_routes[(NS, "web")].parents
    accepted = next(c for c in parent.conditions if c.type == "Accepted")
    assert (accepted.status, accepted.reason) == ("False", "Conflicted")
    assert f"route web-routes (MeshRoute {NS}/web-routes)" in accepted.message
    # Without the MeshRoute, the HTTPRoute is served and Accepted.
    alone = Inventory().merge(dataclasses.replace(contents, meshplane_api=objects()))
    (parent,) = alone.gateway_status.http_routes[(NS, "web")].parents
    assert next(c for c in parent.conditions if c.type == "Accepted").status == "True"
