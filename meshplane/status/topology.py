"""`/topology`: the mesh as a graph of who routes to whom, for the dashboard's picture.

Owns the graph document: a pure function of the current `Mesh` and the connected streams
(`StreamRegistry`), with no clock but the `generated_at` it is handed; and `CachedTopology`, the
endpoint's last document as JSON bytes, reused while neither the mesh nor the streams changed.
Must not build config, translate, or change anything it reads; status reads only.

Nodes, each with an `id` of the form `kind:name` (a contract with the dashboard and its tests):

- `group:<group>`: a connected proxy group (`str(ProxyGroup)`), its role, site, proxies and their sync states;
- `route:<name>`: a route table; `service:<namespace>/<name>`: a service with its endpoint count and ports;
- `site:<id>`: an edge site with its device count; `gateway:<site>/<address:port>`: one of the site's
  gateway addresses (declared in the policy files), or the listen address and port of a connected
  gateway group no declared address matches; `devices:<site>`: the site's devices, counted, never
  one node per device (a site of 100,000 devices is one node).

Edges: `reaches` (a sidecar or gRPC group → every route table, and every service no table is
attached to: what its listeners route to), `routes` (table → backend service, with each rule's
share of traffic in percent) and `mirror` (table → mirrored service, with each mirror's percent),
`serves` (an edge-gateway group → its gateway), `at` (a device or mobile group → its site),
`has` (site → gateway), `carries` (gateway → the site's devices; site → devices where a site has
no gateway).

Bounded and deterministic: nodes in kind order (`KIND_ORDER`), by id within a kind, at most
`MAX_NODES`; edges between shown nodes, sorted, at most `MAX_EDGES`. What is left off is counted in
`more`; an edge to a node left off is left off with it (and not counted).

Cheap whatever the mesh's size, as every open dashboard asks every few seconds and the document
is built on the event loop (where the registry is written): a node past the bound is counted from
its kind's length, never built; edges are built only between shown nodes (never one per group and
table of the whole mesh), relying on the mesh's services and tables being unique; each id is
formatted once; a site's devices are counted by binary search, not copied. `CachedTopology` builds
a document once per change of the mesh or the streams, however many polls ask.
"""

from __future__ import annotations

import bisect
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from meshplane.model import Device, Mesh, ProxyGroup, ProxyRole, Service
from meshplane.model.routes import RouteTable
from meshplane.model.sites import GatewayAddress, Site
from meshplane.status.document import node_types, overall_state, proxies_by_node
from meshplane.xds.server.tracking import StreamRegistry, SyncState

MAX_NODES = 300
MAX_EDGES = 1200
# A service's ports and a table's hosts as listed on its node; the rest are counted.
MAX_LISTED = 8

KIND_ORDER = ("group", "site", "gateway", "devices", "route", "service")
# Roles that route by the mesh's route tables and services (their listeners hold every service).
_ROUTING_ROLES = (ProxyRole.SIDECAR, ProxyRole.GRPC)
_SITE_ROLES = (ProxyRole.DEVICE, ProxyRole.MOBILE)

_Item = TypeVar("_Item")
# An edge of one source before it is a dict: (to, kind, the order it was found in, its extra fields).
# The order makes edges of equal (to, kind) compare without reaching the fields, and keeps them in
# the order they were found, as a stable sort by (from, to, kind) would.
_Edge = tuple[str, str, int, Mapping[str, Any]]
_NO_FIELDS: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class _Group:
    """One connected proxy group: how many proxies (node ids) are in it, by overall sync state.
    `id` and `proxies` are computed once, by `of`."""

    id: str
    group: ProxyGroup
    states: Mapping[SyncState, int]
    proxies: int

    @staticmethod
    def of(group: ProxyGroup, states: Mapping[SyncState, int]) -> _Group:
        return _Group(f"group:{group}", group, states, sum(states.values()))


def service_id(namespace: str, name: str) -> str:
    return f"service:{namespace}/{name}"


def topology_document(mesh: Mesh | None, registry: StreamRegistry, generated_at: float) -> dict[str, Any]:
    """The whole `/topology` document (docs/status-api.md, "Topology"). `mesh`: the current mesh,
    None before the first merge (then only the connected groups are shown)."""
    groups = _groups(registry)
    current = mesh if mesh is not None else Mesh()
    sites = sorted(current.sites, key=lambda site: site.id)
    # Each site with its gateways, found once for both the nodes and the edges.
    site_gateways = [(site, _gateways(site, groups)) for site in sites]
    gateways = sorted((gateway for _, found in site_gateways for gateway in found), key=lambda g: g.id)
    devices = _DeviceCounts(current.devices)
    shown: list[dict[str, Any]] = []
    left: dict[str, int] = {}
    _show(shown, left, "group", groups, _group_node)
    _show(shown, left, "site", sites, lambda site: _site_node(site, devices.at(site.id)))
    _show(shown, left, "gateway", gateways, _Gateway.node)
    _show(shown, left, "devices", sites, lambda site: _devices_node(site, devices.at(site.id)))
    routes = sorted(current.routes, key=lambda table: table.name)
    route_nodes = _show(shown, left, "route", routes, _route_node)
    service_nodes = _show(shown, left, "service", current.services, _service_node)  # in (namespace, name) order
    edges, found = _edges(
        current.routes,
        groups,
        site_gateways,
        [(table, node["id"]) for table, node in zip(routes, route_nodes, strict=False)],
        [(service, node["id"]) for service, node in zip(current.services, service_nodes, strict=False)],
        {node["id"] for node in shown},
    )
    return {
        "generated_at": generated_at,
        "published": mesh is not None,
        "nodes": shown,
        "edges": edges,
        "more": {
            "nodes": sum(left.values()),
            "nodes_by_kind": dict(sorted(left.items())),
            "edges": found - len(edges),
        },
        "limits": {"nodes": MAX_NODES, "edges": MAX_EDGES},
    }


def _show(
    shown: list[dict[str, Any]],
    left: dict[str, int],
    kind: str,
    items: Sequence[_Item],
    node: Callable[[_Item], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Appends the nodes of `items` (one kind, in order) while `shown` has room, and returns them
    (those of the first items); those past `MAX_NODES` are counted in `left`, never built."""
    room = MAX_NODES - len(shown)
    built = [node(item) for item in items[:room]]
    shown += built
    if len(items) > room:
        left[kind] = len(items) - room
    return built


def _groups(registry: StreamRegistry) -> list[_Group]:
    """Connected groups by name; a proxy counts in its newest stream's group, in its overall state
    (the worst of its types, as `/status` shows it)."""
    counts: dict[ProxyGroup, dict[SyncState, int]] = {}
    for streams in proxies_by_node(registry).values():
        if len(streams) == 1:
            # Most proxies hold one stream, which counts for every type it carries (`node_types`
            # replaces a stream only by a newer one): judged without combining streams.
            group = streams[0].group
            state = overall_state(entry.state for entry in streams[0].types.values())
        else:
            group = max(streams, key=lambda track: track.stream_id).group
            state = overall_state(entry.state for entry in node_types(streams).values())
        states = counts.setdefault(group, {})
        states[state] = states.get(state, 0) + 1
    return sorted((_Group.of(group, states) for group, states in counts.items()), key=lambda found: found.id)


def _device_site(device: Device) -> str:
    return device.site


class _DeviceCounts:
    """How many devices each site has, by binary search over `Mesh.devices` (in `device_order`:
    by site, then id), so counting a site of 100,000 devices copies none (`Mesh.devices_at` would
    copy its slice); each site's count is found once, when a node shows it."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self._devices = devices
        self._counts: dict[str, int] = {}

    def at(self, site_id: str) -> int:
        count = self._counts.get(site_id)
        if count is None:
            start = bisect.bisect_left(self._devices, site_id, key=_device_site)
            count = bisect.bisect_right(self._devices, site_id, lo=start, key=_device_site) - start
            self._counts[site_id] = count
        return count


def _group_node(found: _Group) -> dict[str, Any]:
    group = found.group
    worst = overall_state(found.states)
    return {
        "id": found.id,
        "kind": "group",
        "label": str(group),
        "role": str(group.role),
        "site": group.site or None,
        "proxies": found.proxies,
        "state": worst.value,
        "sync": {state.value: found.states.get(state, 0) for state in SyncState},
    }


def _site_node(site: Site, devices: int) -> dict[str, Any]:
    return {
        "id": f"site:{site.id}",
        "kind": "site",
        "label": site.id,
        "region": site.region,
        "zone": site.zone,
        "gateways": len(site.gateways),
        "devices": devices,
    }


def _devices_node(site: Site, devices: int) -> dict[str, Any]:
    return {
        "id": f"devices:{site.id}",
        "kind": "devices",
        "label": f"{devices} devices",
        "site": site.id,
        "count": devices,
    }


def _serves(group: ProxyGroup, site: str, gateway: GatewayAddress) -> bool:
    """Whether a gateway group's device listener is at `gateway`: same site and port, and it binds
    that address or every address ("")."""
    return (
        group.role is ProxyRole.EDGE_GATEWAY
        and group.site == site
        and group.outbound_port == gateway.port
        and group.listen_address in ("", gateway.address)
    )


@dataclass(frozen=True, slots=True)
class _Gateway:
    """One gateway node of a site and the connected gateway groups listening there. `id` is
    computed once, by `of`."""

    id: str
    site: str
    address: GatewayAddress
    declared: bool
    serving: tuple[_Group, ...]

    @staticmethod
    def of(site: str, address: GatewayAddress, declared: bool, serving: tuple[_Group, ...]) -> _Gateway:
        return _Gateway(f"gateway:{site}/{address}", site, address, declared, serving)

    def node(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "gateway",
            "label": str(self.address),
            "site": self.site,
            "address": str(self.address),
            "declared": self.declared,
            "proxies": sum(group.proxies for group in self.serving),
        }


def _gateways(site: Site, groups: list[_Group]) -> list[_Gateway]:
    """The site's declared gateway addresses, each with the connected gateway groups listening
    there, then one per connected gateway group of the site that listens at none of them."""
    found = []
    matched: set[ProxyGroup] = set()
    for address in sorted(set(site.gateways)):
        serving = tuple(group for group in groups if _serves(group.group, site.id, address))
        matched.update(group.group for group in serving)
        found.append(_Gateway.of(site.id, address, True, serving))
    for group in groups:
        if group.group.role is ProxyRole.EDGE_GATEWAY and group.group.site == site.id and group.group not in matched:
            where = GatewayAddress(group.group.listen_address or "0.0.0.0", group.group.outbound_port)
            found.append(_Gateway.of(site.id, where, False, (group,)))
    return found


def _route_node(table: RouteTable) -> dict[str, Any]:
    return {
        "id": f"route:{table.name}",
        "kind": "route",
        "label": table.name,
        "service": str(table.service) if table.service is not None else None,
        "hosts": list(table.hosts[:MAX_LISTED]),
        "more_hosts": max(0, len(table.hosts) - MAX_LISTED),
        "rules": len(table.rules),
    }


def _service_node(service: Service) -> dict[str, Any]:
    return {
        "id": service_id(service.namespace, service.name),
        "kind": "service",
        "label": f"{service.namespace}/{service.name}",
        "namespace": service.namespace,
        "name": service.name,
        # Endpoints named by DNS count as endpoints too (the names, not what they resolve to).
        "endpoints": len(service.endpoints) + (len(service.dns.endpoints) if service.dns is not None else 0),
        "ports": [
            {"name": port.name, "port": port.port, "protocol": str(port.protocol)}
            for port in service.ports[:MAX_LISTED]
        ],
        "more_ports": max(0, len(service.ports) - MAX_LISTED),
    }


def _edges(
    routes: Iterable[RouteTable],
    groups: list[_Group],
    site_gateways: list[tuple[Site, list[_Gateway]]],
    tables: list[tuple[RouteTable, str]],
    services: list[tuple[Service, str]],
    shown: set[str],
) -> tuple[list[dict[str, Any]], int]:
    """The first `MAX_EDGES` edges between `shown` nodes in (from, to, kind) order, as the document
    lists them, and how many there are in all. `routes`: every table of the mesh; `tables` and
    `services`: the shown ones, each with its node's id (the mesh's services and tables are unique,
    so no table or service left off has the id of one shown).

    Built from the shown side: the targets a sidecar or gRPC group reaches are found and sorted
    once, one block every such group shares (counted, not built, past the bound); tables' edges
    only when a service is shown, as they all end at one."""
    order = itertools.count()  # the order edges are found in: how equal (from, to, kind) stay ordered
    own: dict[str, list[_Edge]] = {}
    shared: dict[str, list[Sequence[_Edge]]] = {}

    def add(source: str, target: str, kind: str, fields: Mapping[str, Any] = _NO_FIELDS) -> None:
        if source in shown and target in shown:
            own.setdefault(source, []).append((target, kind, next(order), fields))

    targets = [route_id for _, route_id in tables]
    if services:
        # A service a table is attached to, shown or not, is reached through the table.
        attached = {table.service for table in routes if table.service is not None}
        targets += [node_id for service, node_id in services if service.ref not in attached]
    reached = sorted((target, "reaches", next(order), _NO_FIELDS) for target in targets)
    for group in groups:
        role = group.group.role
        if role in _ROUTING_ROLES:
            if reached and group.id in shown:
                shared.setdefault(group.id, []).append(reached)
        elif role in _SITE_ROLES and group.group.site:
            add(group.id, f"site:{group.group.site}", "at")
    if services:
        for table, route_id in tables:
            for target, kind, fields in _table_edges(table):
                add(route_id, target, kind, fields)
    for site, gateways in site_gateways:
        site_node, devices_node = f"site:{site.id}", f"devices:{site.id}"
        for gateway in gateways:
            add(site_node, gateway.id, "has")
            add(gateway.id, devices_node, "carries")
            for group in gateway.serving:
                add(group.id, gateway.id, "serves")
        if not gateways:
            add(site_node, devices_node, "carries")
    listed: list[dict[str, Any]] = []
    total = 0
    for source in sorted(own.keys() | shared.keys()):
        blocks = [*shared.get(source, ()), own.get(source, [])]
        # One shared block is sorted already; a group id twice (or own edges) needs a merge.
        edges = blocks[0] if len(blocks) == 2 and not blocks[1] else sorted(itertools.chain(*blocks))
        total += len(edges)
        room = MAX_EDGES - len(listed)
        listed.extend(
            {"from": source, "to": target, "kind": kind, **fields} for target, kind, _, fields in edges[:room]
        )
    return listed, total


def _table_edges(table: RouteTable) -> list[tuple[str, str, Mapping[str, Any]]]:
    """A table's edges to each service it sends to, as (to, kind, fields): `routes` with each
    rule's share (percent of that rule's traffic, in rule order), `mirror` with each mirror's
    percent."""
    shares: dict[str, list[float]] = {}
    mirrors: dict[str, list[float]] = {}
    for rule in table.rules:
        total = sum(backend.weight for backend in rule.backends)
        for backend in rule.backends:
            share = round(100.0 * backend.weight / total, 1) if total > 0 else 0.0
            shares.setdefault(str(backend.service), []).append(share)
        for mirror in rule.mirrors:
            mirrors.setdefault(str(mirror.service), []).append(mirror.percent)
    return [
        *((f"service:{ref}", "routes", {"shares": values[:MAX_LISTED]}) for ref, values in shares.items()),
        *((f"service:{ref}", "mirror", {"percents": values[:MAX_LISTED]}) for ref, values in mirrors.items()),
    ]


def streams_version(registry: StreamRegistry) -> int:
    """A value that differs whenever anything `/topology` shows of the streams may have changed:
    the registry's `revision`, bumped by every stream opened or closed, response sent, ACK, NACK,
    Delta catch-up and secret withheld. Constant time, whatever the number of streams."""
    return registry.revision


class CachedTopology:
    """The `/topology` document as JSON bytes, built when first asked for and then reused, the very
    same bytes, while the mesh is the same object and the streams have not changed
    (`streams_version`): a poll of an unchanged mesh costs the streams' version, not a build.

    Its `generated_at` is `clock()` when the bytes were built, not when they are served. Holds the
    mesh it was built from until the next build, so that mesh's identity cannot be reused by
    another. Not thread-safe: for the event loop, where the registry is written.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._key: tuple[Mesh | None, StreamRegistry, int] | None = None
        self._body = b""

    def body(self, mesh: Mesh | None, registry: StreamRegistry) -> bytes:
        """The document of `mesh` and `registry` (`topology_document`), serialised as the
        endpoint's JSON responses are."""
        version = streams_version(registry)
        key = self._key
        if key is not None and key[0] is mesh and key[1] is registry and key[2] == version:
            return self._body
        document = topology_document(mesh, registry, self._clock())
        self._body = json.dumps(document).encode()
        self._key = (mesh, registry, version)
        return self._body
