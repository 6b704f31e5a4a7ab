"""Kubernetes objects → model: one Service and its EndpointSlices become one `meshplane.model.Service`.

Owns the mapping only, as pure functions over the objects as the API server sends them (JSON
dicts, camelCase keys): no I/O, no client library types, so it is tested with plain dicts and is
the same for `discovery.k8s.io/v1` and `v1beta1` slices. See docs/kubernetes.md for the rules:

- ports: a Service port named `n` takes the endpoints of every slice port named `n` (an unnamed
  Service port, allowed on a single-port Service, matches the unnamed slice port and is called by
  its number in the model, e.g. `80`). UDP and SCTP ports are left out: Envoy's HTTP/TCP
  listeners cannot carry them.
- protocol: `appProtocol` (http, http2, h2c, kubernetes.io/h2c, grpc, tcp, kubernetes.io/ws,
  kubernetes.io/wss), else the port name's prefix (`grpc-…`, `http2-…`, `h2c-…`, `tcp-…`,
  `http-…`), else HTTP/1. `kubernetes.io/h2c` is HTTP/2 with prior knowledge (upstream clusters
  speak HTTP/2 in clear text); `kubernetes.io/ws` is HTTP/1, whose WebSocket upgrades the Gateway
  role lets through; `kubernetes.io/wss` (WebSocket inside TLS the app or a BackendTLSPolicy
  originates) is TCP for sidecars, which cannot read HTTP inside TLS. Other values (`HTTPS`, any
  domain-prefixed protocol) fall back to the name's prefix.
- conditions: ready → READY; terminating and serving → TERMINATING (kept for draining, lowest
  priority); serving but not ready → SERVING; neither ready nor serving → left out. Not listed as
  UNHEALTHY: when most hosts of a cluster are unhealthy Envoy enters panic mode and balances over
  all of them, so a not-ready pod would get traffic. A missing `ready`/`serving` means
  ready/serving, as the API documents.
- locality: zone from the endpoint's `zone` (v1) or its `topology.kubernetes.io/zone` key
  (v1beta1); sub-zone from the node the endpoint runs on (`nodeName`, or the v1beta1
  `kubernetes.io/hostname` key), so Envoy sees one locality per node. Regions would need Node
  labels, and so list/watch on every Node, which the ClusterRole deliberately does not grant:
  v1beta1 slices that carry a region topology key give it, v1 slices leave the region empty.
- dual-stack: a Service's IPv4 and IPv6 slices are both used; every address of an endpoint is one.
- headless Services (clusterIP None) map like any other: the proxy balances over the pods.
- ExternalName Services map to a service with `external_name` and no endpoints (a DNS cluster).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.kubernetes_annotations import AnnotationPolicy, policy_of
from meshplane.model import (
    Endpoint,
    EndpointHealth,
    Locality,
    Protocol,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    WeightedBackend,
)

ORIGIN = "kubernetes"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_TOPOLOGY_KEY = "topology.kubernetes.io/zone"
REGION_TOPOLOGY_KEY = "topology.kubernetes.io/region"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"

_APP_PROTOCOLS = {
    "http": Protocol.HTTP1,
    "http1": Protocol.HTTP1,
    "http2": Protocol.HTTP2,
    "h2c": Protocol.HTTP2,
    "kubernetes.io/h2c": Protocol.HTTP2,
    "grpc": Protocol.GRPC,
    "tcp": Protocol.TCP,
    "kubernetes.io/ws": Protocol.HTTP1,
    "kubernetes.io/wss": Protocol.TCP,
}
_NAME_PREFIXES = (("grpc", Protocol.GRPC), ("http2", Protocol.HTTP2), ("h2c", Protocol.HTTP2),
                  ("tcp", Protocol.TCP), ("http", Protocol.HTTP1))  # fmt: skip

Object = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Mapped:
    """One Kubernetes Service as the model sees it: the service (None when it cannot be served),
    the route its annotations ask for (timeouts, retries), and every reason something was left out."""

    service: Service | None
    route: RouteTable | None
    notes: tuple[str, ...]


def key_of(obj: Object) -> tuple[str, str]:
    """(namespace, name) of any namespaced object."""
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def service_key_of_slice(obj: Object) -> tuple[str, str] | None:
    """(namespace, service name) that an EndpointSlice belongs to, by its `kubernetes.io/service-name` label."""
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return (str(meta.get("namespace") or ""), str(name)) if name else None


def protocol_of(port: Object) -> Protocol:
    """What a Service port speaks: its `appProtocol`, else its name's prefix, else HTTP/1."""
    app_protocol = str(port.get("appProtocol") or "").lower()
    if app_protocol in _APP_PROTOCOLS:
        return _APP_PROTOCOLS[app_protocol]
    name = str(port.get("name") or "")
    for prefix, protocol in _NAME_PREFIXES:
        if name == prefix or name.startswith(prefix + "-"):
            return protocol
    return Protocol.HTTP1


def health_of(conditions: Object | None) -> EndpointHealth | None:
    """The model's health for an endpoint's conditions; None when it must be left out (not serving)."""
    conditions = conditions or {}
    ready = conditions.get("ready")
    ready = True if ready is None else bool(ready)
    serving = conditions.get("serving")
    serving = ready if serving is None else bool(serving)
    if conditions.get("terminating"):
        return EndpointHealth.TERMINATING if serving else None
    if ready:
        return EndpointHealth.READY
    return EndpointHealth.SERVING if serving else None


def _locality(endpoint: Object) -> Locality:
    topology = endpoint.get("topology") or {}
    zone = endpoint.get("zone") or topology.get(ZONE_TOPOLOGY_KEY) or ""
    node = endpoint.get("nodeName") or topology.get(HOSTNAME_TOPOLOGY_KEY) or ""
    return Locality(region=str(topology.get(REGION_TOPOLOGY_KEY) or ""), zone=str(zone), sub_zone=str(node))


def _model_port_name(name: str, number: int) -> str:
    return name or str(number)


def map_service(obj: Object, slices: Iterable[Object], annotated: AnnotationPolicy | None = None) -> Mapped:
    """The model of Service `obj` with the endpoints of `slices` (already joined by the service-name
    label). `annotated` is what its `meshplane.io/…` annotations say (`policy_of(obj)` when None;
    callers pass it to reuse the parse while only the slices change)."""
    namespace, name = key_of(obj)
    where = f"service {namespace}/{name}"
    spec = obj.get("spec") or {}
    annotated = annotated if annotated is not None else policy_of(obj)
    notes = list(annotated.notes)
    if annotated.withheld:  # its tls-trust was refused: the notes say why
        return Mapped(None, None, (*notes, f"{where}: not served, rather than served without the TLS it asks for"))
    ports: list[ServicePort] = []
    by_slice_name: dict[str, str] = {}
    for port in spec.get("ports") or ():
        protocol = str(port.get("protocol") or "TCP")
        number = int(port.get("port") or 0)
        port_name = str(port.get("name") or "")
        if protocol != "TCP":
            notes.append(f"{where}: port {port_name or number} is {protocol}; only TCP ports are served")
            continue
        model_name = _model_port_name(port_name, number)
        ports.append(ServicePort(model_name, number, protocol_of(port)))
        by_slice_name[port_name] = model_name
    if not ports:
        notes.append(f"{where}: no TCP ports; not served")
        return Mapped(None, None, tuple(notes))

    external_name = ""
    endpoints: list[Endpoint] = []
    if spec.get("type") == "ExternalName":
        external_name = str(spec.get("externalName") or "").rstrip(".")
    else:
        endpoints = _endpoints(slices, by_slice_name)
    service = Service(
        name=name,
        namespace=namespace,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        policy=annotated.policy,
        tls=annotated.tls,
        origin=ORIGIN,
        external_name=external_name,
    )
    problems = [str(problem) for problem in service.problems()]
    if problems:
        return Mapped(None, None, (*notes, *problems, f"{where}: not served"))
    return Mapped(service, _route(service, annotated, notes), tuple(notes))


def route_name(namespace: str, name: str) -> str:
    """The route table a Service's timeout/retry annotations make."""
    return f"kubernetes/{namespace}/{name}"


def _route(service: Service, annotated: AnnotationPolicy, notes: list[str]) -> RouteTable | None:
    """A route attached to the service, when its annotations set a timeout or retries.

    An attached route replaces the default route of every HTTP port of the service, so it is made
    only for a service with exactly one HTTP port (a route cannot send each port to itself).
    """
    if annotated.timeout is None and annotated.retry is None:
        return None
    http_ports = [port for port in service.ports if port.protocol.is_http]
    if len(http_ports) != 1:
        notes.append(
            f"service {service.ref}: timeout and retry annotations need exactly one HTTP port "
            f"(it has {len(http_ports)}); skipped"
        )
        return None
    rule = RouteRule(
        match=RouteMatch(),
        backends=(WeightedBackend(service.ref, http_ports[0].name),),
        timeout=annotated.timeout,
        retry=annotated.retry,
    )
    return RouteTable(route_name(service.namespace, service.name), (rule,), service=service.ref, origin=ORIGIN)


def _endpoints(slices: Iterable[Object], by_slice_name: Mapping[str, str]) -> list[Endpoint]:
    """Every endpoint of `slices` for the service ports named in `by_slice_name`, sorted, without
    repeats (slices overlap for a moment while the EndpointSlice controller moves an endpoint)."""
    found: dict[tuple[str, int, str], Endpoint] = {}
    for slice_ in slices:
        if slice_.get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices name hosts, not addresses; nothing Kubernetes itself makes
        slice_ports = []
        for port in slice_.get("ports") or ():
            model_name = by_slice_name.get(str(port.get("name") or ""))
            number = port.get("port")
            if model_name is not None and isinstance(number, int) and (port.get("protocol") or "TCP") == "TCP":
                slice_ports.append((model_name, number))
        if not slice_ports:
            continue
        for endpoint in slice_.get("endpoints") or ():
            health = health_of(endpoint.get("conditions"))
            if health is None:
                continue
            locality = _locality(endpoint)
            for address in endpoint.get("addresses") or ():
                try:
                    canonical = str(ipaddress.ip_address(address))
                except ValueError:
                    continue
                for model_name, number in slice_ports:
                    key = (canonical, number, model_name)
                    previous = found.get(key)
                    # The same address in two slices: the healthier report wins (the move is ending).
                    if previous is None or _rank(health) < _rank(previous.health):
                        found[key] = Endpoint(canonical, number, model_name, locality=locality, health=health)
    return [found[key] for key in sorted(found)]


def _rank(health: EndpointHealth) -> int:
    return (EndpointHealth.READY, EndpointHealth.SERVING, EndpointHealth.TERMINATING, EndpointHealth.UNHEALTHY).index(
        health
    )
