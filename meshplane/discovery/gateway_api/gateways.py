"""Gateway: the listeners a GatewayClass's controller is asked to open, and who may attach routes.

Owns the Gateway type (listeners with name, hostname, port, protocol, TLS mode and certificates,
allowed routes; addresses), its parser, and the CRDs' rules across listeners that a 1.20 API server
does not run: TLS only on HTTPS and TLS listeners (mode Terminate for HTTPS, a mode for TLS), no
hostname on TCP or UDP listeners, unique listener names, unique (port, protocol, hostname)
combinations, certificateRefs (or options) when terminating; addresses unique, IPAddress ones IPs.
Of the spec's `infrastructure`, only `parametersRef` is read (meshplane takes no parameters, so a
Gateway naming some is refused); its labels and annotations, `tls` (Gateway-level client
certificates) and `allowedListeners` are not read yet: the translation that would use them is not
built. Must not translate.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import (
    DNS_SUBDOMAIN,
    HOSTNAME,
    KIND,
    SECTION_NAME,
    Fields,
    Parsed,
    metadata,
    shown,
    subject_of,
)
from meshplane.discovery.gateway_api.references import GATEWAY_GROUP, LocalRef, SecretRef, local_ref, secret_ref

MAX_LISTENERS = 64
MAX_ADDRESSES = 16
MAX_CERTIFICATE_REFS = 64
MAX_ROUTE_KINDS = 8
MAX_TLS_OPTIONS = 16
HTTP, HTTPS, TLS, TCP, UDP = "HTTP", "HTTPS", "TLS", "TCP", "UDP"
# ProtocolType: a core protocol, or a domain-prefixed one of an implementation.
PROTOCOL = re.compile(
    r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]+"
)
FROM_CHOICES = ("All", "Same", "Selector")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


@dataclass(frozen=True, slots=True)
class SelectorTerm:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector: every label of `match_labels` and every term must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[SelectorTerm, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteKind:
    group: str
    kind: str


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    """Which routes may attach: from `namespaces` (`Same`, `All`, or `Selector` with `selector`),
    of `kinds` (empty: the kinds the listener's protocol takes)."""

    namespaces: str = "Same"
    selector: LabelSelector | None = None
    kinds: tuple[RouteKind, ...] = ()


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """`Terminate` (with `certificate_refs`) or `Passthrough`; `options` are implementation-specific."""

    mode: str = "Terminate"
    certificate_refs: tuple[SecretRef, ...] = ()
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None = None
    tls: ListenerTls | None = None
    allowed_routes: AllowedRoutes = AllowedRoutes()


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    type: str
    value: str


@dataclass(frozen=True, slots=True)
class Gateway:
    namespace: str
    name: str
    generation: int
    gateway_class_name: str
    listeners: tuple[Listener, ...]
    addresses: tuple[GatewayAddress, ...] = ()
    # spec.infrastructure.parametersRef: implementation-specific configuration (meshplane takes none).
    parameters_ref: LocalRef | None = None


def _selector(fields: Fields, obj: Mapping[str, Any], path: str) -> LabelSelector:
    labels = fields.child(obj, "matchLabels", path)
    pairs: list[tuple[str, str]] = []
    for label, value in sorted(labels.items(), key=lambda item: str(item[0]))[:64]:
        if not isinstance(label, str) or not _LABEL_KEY.fullmatch(label) or len(label) > 317:
            fields.invalid(f"{path}.matchLabels", f"{shown(label)} is not a label key")
        elif not isinstance(value, str) or len(value) > 63:
            fields.invalid(f"{path}.matchLabels.{label}", f"{shown(value)} is not a label value")
        else:
            pairs.append((label, value))
    terms = []
    for where, item in fields.objects(obj, "matchExpressions", path, max_items=64):
        key = fields.text(item, "key", where, required=True, max_length=317, min_length=1, pattern=_LABEL_KEY)
        operator = fields.choice(item, "operator", where, SELECTOR_OPERATORS)
        if "operator" not in item:
            fields.invalid(f"{where}.operator", "is required")
        values = fields.strings(item, "values", where, max_items=64, max_length=63)
        if operator in ("In", "NotIn") and not values:
            fields.invalid(where, f"operator {operator} needs values")
        elif operator in ("Exists", "DoesNotExist") and values:
            fields.invalid(where, f"operator {operator} takes no values")
        elif key is not None and operator is not None:
            terms.append(SelectorTerm(key, operator, values))
    return LabelSelector(tuple(pairs), tuple(terms))


def _allowed_routes(fields: Fields, obj: Mapping[str, Any], path: str) -> AllowedRoutes:
    namespaces = fields.child(obj, "namespaces", path)
    where = f"{path}.namespaces"
    origin = fields.choice(namespaces, "from", where, FROM_CHOICES, "Same") or "Same"
    selector = None
    if "selector" in namespaces:
        selector = _selector(fields, fields.child(namespaces, "selector", where), f"{where}.selector")
    elif origin == "Selector":
        fields.invalid(where, "from Selector needs a selector")
    kinds = []
    for item_path, item in fields.objects(obj, "kinds", path, max_items=MAX_ROUTE_KINDS):
        group = fields.text(item, "group", item_path, pattern=DNS_SUBDOMAIN)
        kind = fields.text(item, "kind", item_path, required=True, max_length=63, min_length=1, pattern=KIND)
        if kind is not None:
            kinds.append(RouteKind(GATEWAY_GROUP if group is None else group, kind))
    return AllowedRoutes(origin, selector, tuple(kinds))


def _tls(fields: Fields, obj: Mapping[str, Any], path: str) -> ListenerTls:
    mode = fields.choice(obj, "mode", path, ("Terminate", "Passthrough"), "Terminate") or "Terminate"
    refs = []
    for where, item in fields.objects(obj, "certificateRefs", path, max_items=MAX_CERTIFICATE_REFS):
        ref = secret_ref(fields, item, where)
        if ref is not None:
            refs.append(ref)
    options: list[tuple[str, str]] = []
    raw_options = fields.child(obj, "options", path)
    if len(raw_options) > MAX_TLS_OPTIONS:
        fields.invalid(f"{path}.options", f"has {len(raw_options)} entries, more than the {MAX_TLS_OPTIONS} allowed")
    for key, value in sorted(raw_options.items(), key=lambda item: str(item[0]))[:MAX_TLS_OPTIONS]:
        if isinstance(key, str) and isinstance(value, str) and len(key) <= 253 and len(value) <= 4096:
            options.append((key, value))
        else:
            fields.invalid(f"{path}.options", f"{shown(key)}: keys and values must be strings")
    if mode == "Terminate" and not refs and not options:
        fields.invalid(path, "certificateRefs or options must be specified when mode is Terminate")
    return ListenerTls(mode, tuple(refs), tuple(options))


def _listener(fields: Fields, obj: Mapping[str, Any], path: str) -> Listener | None:
    name = fields.text(obj, "name", path, required=True, min_length=1, pattern=SECTION_NAME)
    hostname = fields.text(obj, "hostname", path, min_length=1, pattern=HOSTNAME)
    port = fields.number(obj, "port", path, low=1, high=65535, required=True)
    protocol = fields.text(obj, "protocol", path, required=True, max_length=255, min_length=1, pattern=PROTOCOL)
    tls = _tls(fields, fields.child(obj, "tls", path), f"{path}.tls") if "tls" in obj else None
    allowed = _allowed_routes(fields, fields.child(obj, "allowedRoutes", path), f"{path}.allowedRoutes")
    if protocol in (HTTP, TCP, UDP) and tls is not None:
        fields.invalid(path, f"tls must not be specified for protocol {protocol}")
    if protocol == HTTPS and tls is not None and tls.mode != "Terminate":
        fields.invalid(path, "tls mode must be Terminate for protocol HTTPS")
    if protocol == TLS and (tls is None or "mode" not in fields.child(obj, "tls", path)):
        fields.invalid(path, "tls mode must be set for protocol TLS")
    if protocol in (TCP, UDP) and hostname:
        fields.invalid(path, f"hostname must not be specified for protocol {protocol}")
    if name is None or port is None or protocol is None:
        return None
    return Listener(name, port, protocol, hostname or None, tls, allowed)


def _addresses(fields: Fields, spec: Mapping[str, Any]) -> tuple[GatewayAddress, ...]:
    found: list[GatewayAddress] = []
    for where, item in fields.objects(spec, "addresses", "spec", max_items=MAX_ADDRESSES):
        kind = fields.text(item, "type", where, max_length=253, min_length=1) or "IPAddress"
        value = fields.text(item, "value", where, max_length=253, min_length=1)
        if value is None:
            # An address without a value asks the implementation to choose one (v1.6 allows it).
            found.append(GatewayAddress(kind, ""))
            continue
        if kind == "IPAddress":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                fields.invalid(where, f"value {shown(value)} must be an IP address")
                continue
        elif kind == "Hostname" and not HOSTNAME.fullmatch(value):
            fields.invalid(where, f"value {shown(value)} must be a hostname")
            continue
        if any(address.type == kind and address.value == value for address in found):
            fields.invalid(where, f"{kind} values must be unique ({shown(value)} is given twice)")
            continue
        found.append(GatewayAddress(kind, value))
    return tuple(found)


def parse_gateway(obj: Mapping[str, Any]) -> Parsed[Gateway]:
    """The Gateway of `obj` (the API server's JSON) and what is wrong with it; never raises."""
    namespace, name, generation = metadata(obj)
    fields = Fields(subject_of("Gateway", namespace, name))
    spec = fields.child(obj, "spec", "")
    class_name = fields.text(spec, "gatewayClassName", "spec", required=True, min_length=1)
    listeners: list[Listener] = []
    for where, item in fields.objects(spec, "listeners", "spec", max_items=MAX_LISTENERS, min_items=1):
        listener = _listener(fields, item, where)
        if listener is None:
            continue
        if any(other.name == listener.name for other in listeners):
            fields.invalid(where, f"listener name {listener.name!r} must be unique within the Gateway")
            continue
        combination = (listener.port, listener.protocol, listener.hostname)
        if any((other.port, other.protocol, other.hostname) == combination for other in listeners):
            fields.invalid(where, "the combination of port, protocol and hostname must be unique for each listener")
            continue
        listeners.append(listener)
    parameters = None
    infrastructure = fields.child(spec, "infrastructure", "spec")
    if "parametersRef" in infrastructure:
        where = "spec.infrastructure.parametersRef"
        parameters = local_ref(fields, fields.child(infrastructure, "parametersRef", "spec.infrastructure"), where)
    addresses = _addresses(fields, spec)
    value = Gateway(namespace, name, generation, class_name or "", tuple(listeners), addresses, parameters)
    return Parsed(value, tuple(fields.problems))
