"""Endpoints (EDS): one ClusterLoadAssignment per service port, with locality priorities.

Owns how endpoints become Envoy priorities and localities, for EDS and for the load assignment a
DNS service's cluster carries inline (`dns_assignment`). The same output serves Envoy and
proxyless gRPC, so it keeps to what gRPC core accepts (EdsResourceParse in
src/core/xds/grpc/xds_endpoint_parser.cc): priorities contiguous from 0, every locality with a
non-zero weight and unique within its priority, no address twice in one assignment. Must stay pure.
"""

from __future__ import annotations

import ipaddress
import operator
import socket
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshplane.model import Endpoint, EndpointHealth, Locality, Mesh, ProxyGroup, Service, ServicePort
from meshplane.xds import names
from meshplane.xds.translate import core

_HEALTH = {
    EndpointHealth.READY: health_check_pb2.HEALTHY,
    EndpointHealth.SERVING: health_check_pb2.DEGRADED,
    EndpointHealth.TERMINATING: health_check_pb2.DRAINING,
    EndpointHealth.UNHEALTHY: health_check_pb2.UNHEALTHY,
}

# Tiers of preference before renumbering: the proxy's zone, its region, anywhere, then draining.
_SAME_ZONE, _SAME_REGION, _ELSEWHERE, _TERMINATING = range(4)


def build_endpoints(mesh: Mesh, group: ProxyGroup) -> tuple[list[Any], list[str]]:
    """Every service port's ClusterLoadAssignment for `group`, and warnings for endpoints left out.

    A port without endpoints still gets an (empty) assignment, so its cluster never waits for one.
    """
    assignments: list[Any] = []
    warnings: list[str] = []
    for service in mesh.services:
        assignments += build_service_endpoints(service, group, warnings)
    return assignments, warnings


def build_service_endpoints(service: Service, group: ProxyGroup, warnings: list[str]) -> list[Any]:
    """One service's share of `build_endpoints` (its ports' assignments), warnings appended to `warnings`.

    It depends on the service and the group only, so the publisher's endpoint fast path translates
    again just the services that changed.
    """
    if service.external_name or service.dns is not None:  # a DNS cluster carries its own load assignment; no EDS
        return []
    return [_assignment(service, port, group.locality, warnings) for port in service.ports]


def _parsed(address: str) -> tuple[str, tuple[int, bytes]]:
    """An address's one spelling and its sort key (version, packed bytes). Dotted-quad IPv4, what
    nearly every endpoint is, goes through `inet_pton`, which accepts only the spelling `ipaddress`
    would give back (four decimal octets, no leading zeros) and is many times faster; the rest
    through `ipaddress`."""
    try:
        return address, (4, socket.inet_pton(socket.AF_INET, address))
    except (OSError, ValueError):
        parsed = ipaddress.ip_address(address)
        return str(parsed), (parsed.version, parsed.packed)


def _named(name: str) -> tuple[str, tuple[int, bytes]]:
    """A DNS name's one spelling (DNS ignores case) and its sort key, after every address's."""
    spelling = name.lower()
    return spelling, (0, spelling.encode())


def dns_assignment(service: Service, port: ServicePort, warnings: list[str]) -> Any:
    """The load assignment a DNS service's cluster for `port` carries inline (`service.dns`'s names):
    localities, weights, health and the draining tier laid out as for IP endpoints, and no locality
    failover, as the cluster is the same for every proxy of a role wherever it runs."""
    assert service.dns is not None
    return _assignment(service, port, Locality(), warnings, service.dns.endpoints, _named)


def _assignment(
    service: Service,
    port: ServicePort,
    proxy: Locality,
    warnings: list[str],
    endpoints: tuple[Endpoint, ...] | None = None,
    parse: Callable[[str], tuple[str, tuple[int, bytes]]] = _parsed,
) -> Any:
    """`service`'s assignment for `port` as seen from `proxy`: of `endpoints` (its IP endpoints when
    None), each address spelled and ordered by `parse`."""
    name = names.endpoints_name(service.ref, port)
    unique: dict[tuple[str, int], Endpoint] = {}
    # Each address parsed once (ipaddress is slow): its one spelling and its sort key.
    parsed: dict[str, tuple[str, tuple[int, bytes]]] = {}
    port_name = port.name
    for endpoint in service.endpoints if endpoints is None else endpoints:
        if endpoint.port_name != port_name:
            continue
        spelled = parsed.get(endpoint.address)
        if spelled is None:
            spelled = parsed[endpoint.address] = parse(endpoint.address)
        # gRPC NACKs an assignment listing one address twice; sources may repeat an endpoint
        # (Kubernetes EndpointSlices overlap while they change). Keep the first.
        key = (spelled[0], endpoint.port)
        if key in unique:
            warnings.append(f"endpoints {name}: {endpoint.address}:{endpoint.port} is listed twice; kept the first")
            continue
        unique[key] = endpoint

    failover = service.policy.locality_failover and proxy.is_known
    tiers = {key: _tier(endpoint, proxy, failover) for key, endpoint in unique.items()}
    # Envoy takes gaps in priorities, gRPC rejects them ("priority N empty"): number the tiers in use.
    priority_of_tier = {tier: priority for priority, tier in enumerate(sorted(set(tiers.values())))}

    groups: dict[tuple[int, Locality], list[Endpoint]] = defaultdict(list)
    for key, endpoint in unique.items():
        groups[(priority_of_tier[tiers[key]], endpoint.locality)].append(endpoint)

    # Built in place (`add()`, field by field): constructing each nested message and copying it
    # into its parent costs twice as much, and an assignment is built per endpoint change.
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for priority, locality in sorted(groups):
        members = sorted(groups[(priority, locality)], key=lambda e: (*parsed[e.address][1], e.port))
        tier = assignment.endpoints.add()
        tier.locality.SetInParent()
        tier.locality.region = locality.region
        tier.locality.zone = locality.zone
        tier.locality.sub_zone = locality.sub_zone
        tier.priority = priority
        # gRPC ignores localities without a weight; Envoy uses it only with locality-weighted
        # balancing. The sum keeps every endpoint's share what its own weight says.
        tier.load_balancing_weight.value = core.clamp_uint32(sum(e.weight for e in members))
        lb_endpoints = tier.lb_endpoints
        for endpoint in members:
            _add_lb_endpoint(lb_endpoints.add(), endpoint, parsed[endpoint.address][0])
    return assignment


def _tier(endpoint: Endpoint, proxy: Locality, failover: bool) -> int:
    """How far `endpoint` is from the proxy. An unknown zone or region never counts as a match."""
    if endpoint.health is EndpointHealth.TERMINATING:
        return _TERMINATING
    if not failover:
        return _SAME_ZONE  # every live endpoint in the first tier
    where = endpoint.locality
    if proxy.zone and where.zone == proxy.zone and where.region == proxy.region:
        return _SAME_ZONE
    if proxy.region and where.region == proxy.region:
        return _SAME_REGION
    return _ELSEWHERE


def _add_lb_endpoint(lb_endpoint: Any, endpoint: Endpoint, spelling: str) -> None:
    """Fills `lb_endpoint` (an LbEndpoint just added to its locality) with `endpoint`."""
    socket_address = lb_endpoint.endpoint.address.socket_address
    socket_address.address = spelling  # one spelling per address (ipaddress's)
    socket_address.port_value = endpoint.port
    lb_endpoint.health_status = _HEALTH[endpoint.health]
    lb_endpoint.load_balancing_weight.value = core.clamp_uint32(endpoint.weight)


def same_services(before: Sequence[object], now: Sequence[object]) -> bool:
    """Whether `now` holds the very objects `before` holds, in the same order (what the memos
    compare a mesh's services, certificates and trust bundles by: the model is immutable, so the
    same objects give the same translation). Linear, by identity only: cheap beside translating."""
    return before is now or (len(before) == len(now) and all(map(operator.is_, before, now)))


class EndpointsMemo:
    """Each service's assignments for a locality, kept while the `Service` object is the same.

    For roles whose endpoints change only with the services (a Gateway API gateway's: a route
    written to the API server changes no endpoint, yet rebuilds every gateway group), so each
    rebuild reuses the assignments of every unchanged service, and `Snapshot.of` their serialised
    form. While the services are the very objects of the last build for the locality
    (`same_services`), the result is the very tuple of that build: every group of the locality
    is handed the same one, which `Snapshot.of` takes whole. The result is what
    `build_service_endpoints` gives for each service, sorted by name; warnings are dropped, as
    `translate_endpoints` drops them. Keyed by object identity (an entry holds its Service, so
    the id stays its own while the entry lives), an optimisation inside the translators, never a
    promise to callers. Bounded: the services of the last mesh seen, for at most `groups`
    localities. The messages are shared: callers must not change them.
    """

    def __init__(self, groups: int = 4) -> None:
        self._groups = groups
        # locality → (id of the Service → (the Service, its assignments), the services and the
        # result of the last build)
        self._by_locality: dict[
            Locality, tuple[dict[int, tuple[Service, tuple[Any, ...]]], tuple[Service, ...], tuple[Any, ...]]
        ] = {}

    def build(self, mesh: Mesh, group: ProxyGroup) -> tuple[Any, ...]:
        """Every service's assignments for `group`, sorted by name (only its locality counts:
        `_assignment`)."""
        known, services, assignments = self._by_locality.pop(group.locality, ({}, (), ()))
        if not known or not same_services(services, mesh.services):
            current: dict[int, tuple[Service, tuple[Any, ...]]] = {}
            for service in mesh.services:
                found = known.get(id(service))
                if found is None:
                    found = (service, tuple(build_service_endpoints(service, group, [])))
                current[id(service)] = found
            known, services = current, mesh.services
            built = (assignment for service in services for assignment in current[id(service)][1])
            assignments = tuple(sorted(built, key=lambda assignment: str(assignment.cluster_name)))
        self._by_locality[group.locality] = (known, services, assignments)  # the most recent last: evicted last
        while len(self._by_locality) > self._groups:
            del self._by_locality[next(iter(self._by_locality))]
        return assignments
