"""The status meshplane owes the Gateway API objects it serves, as values: conditions per Gateway,
per listener and per route parent, with the spec's types and reasons.

Owns the vocabulary (condition types, reasons) and the value types `resolve.py` fills and the
status writer renders: `GatewayStatus` (Accepted; listeners with Accepted, ResolvedRefs,
Conflicted, supportedKinds, attachedRoutes), `RouteStatus` (per parentRef: Accepted,
ResolvedRefs). `Programmed`, of a Gateway and of its listeners, depends on whether a gateway Envoy
has taken the config, which only the xDS server knows: `programmed()` derives it when asked,
given that fact. Must not read the cluster or write anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshplane.discovery.gateway_api.gateways import RouteKind
from meshplane.discovery.gateway_api.objects import Key
from meshplane.discovery.gateway_api.references import ParentRef

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"
# Condition types.
ACCEPTED = "Accepted"
PROGRAMMED = "Programmed"
RESOLVED_REFS = "ResolvedRefs"
CONFLICTED = "Conflicted"
# Reasons (apis/v1/gateway_types.go, httproute_types.go, shared_types.go).
REASON_ACCEPTED = "Accepted"
REASON_PROGRAMMED = "Programmed"
REASON_RESOLVED_REFS = "ResolvedRefs"
REASON_NO_CONFLICTS = "NoConflicts"
REASON_PENDING = "Pending"
REASON_NO_RESOURCES = "NoResources"
REASON_INVALID = "Invalid"
REASON_LISTENERS_NOT_VALID = "ListenersNotValid"
REASON_UNSUPPORTED_ADDRESS = "UnsupportedAddress"
REASON_UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
REASON_PROTOCOL_CONFLICT = "ProtocolConflict"
REASON_HOSTNAME_CONFLICT = "HostnameConflict"
REASON_INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
REASON_INVALID_ROUTE_KINDS = "InvalidRouteKinds"
REASON_REF_NOT_PERMITTED = "RefNotPermitted"
REASON_NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
REASON_NO_MATCHING_LISTENER_HOSTNAME = "NoMatchingListenerHostname"
REASON_NO_MATCHING_PARENT = "NoMatchingParent"
REASON_UNSUPPORTED_VALUE = "UnsupportedValue"
REASON_BACKEND_NOT_FOUND = "BackendNotFound"
REASON_INVALID_KIND = "InvalidKind"
REASON_INVALID_PARAMETERS = "InvalidParameters"
# BackendTLSPolicy reasons (apis/v1/backendtlspolicy_types.go, policy_types.go).
REASON_CONFLICTED = "Conflicted"
REASON_INVALID_CA_CERTIFICATE_REF = "InvalidCACertificateRef"
REASON_NO_VALID_CA_CERTIFICATE = "NoValidCACertificate"
# A policy's status lists at most this many ancestors (the CRD's maxItems).
MAX_POLICY_ANCESTORS = 16
MAX_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition as the spec words it; `observed_generation` is the object's generation it
    was worked out from."""

    type: str
    status: str
    reason: str
    message: str
    observed_generation: int


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Condition:
    """A condition whose status is True when `ok`, its message cut to the CRD's bound."""
    return Condition(kind, TRUE if ok else FALSE, reason, message[:MAX_MESSAGE], generation)


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    """A listener's status. `servable`: meshplane serves it (accepted, refs resolved, no conflict)."""

    name: str
    supported_kinds: tuple[RouteKind, ...]
    attached_routes: int
    conditions: tuple[Condition, ...]
    servable: bool


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """A Gateway's status but for `Programmed` (see `programmed`)."""

    generation: int
    conditions: tuple[Condition, ...]
    listeners: tuple[ListenerStatus, ...]

    @property
    def servable(self) -> bool:
        """Whether meshplane serves any of it (it is accepted, and a listener is servable)."""
        accepted = any(c.type == ACCEPTED and c.status == TRUE for c in self.conditions)
        return accepted and any(listener.servable for listener in self.listeners)


@dataclass(frozen=True, slots=True)
class ParentStatus:
    """A route's status for one of its parentRefs (as written, defaults applied)."""

    parent: ParentRef
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class RouteStatus:
    """A route's status for the parents that are meshplane's Gateways, in parentRefs order."""

    generation: int
    parents: tuple[ParentStatus, ...]


@dataclass(frozen=True, slots=True)
class AncestorStatus:
    """A policy's status for one ancestor: a Gateway (namespace, name) whose proxies it affects."""

    ancestor: Key
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """A BackendTLSPolicy's status: per ancestor Gateway (sorted, at most MAX_POLICY_ANCESTORS)."""

    generation: int
    ancestors: tuple[AncestorStatus, ...]


@dataclass(frozen=True, slots=True)
class GatewayApiStatus:
    """Every status meshplane owes, by (namespace, name): the Gateways it serves, the routes
    naming one of them as a parent, and the BackendTLSPolicies affecting one of them."""

    gateways: Mapping[Key, GatewayStatus] = field(default_factory=lambda: MappingProxyType({}))
    http_routes: Mapping[Key, RouteStatus] = field(default_factory=lambda: MappingProxyType({}))
    grpc_routes: Mapping[Key, RouteStatus] = field(default_factory=lambda: MappingProxyType({}))
    backend_tls_policies: Mapping[Key, PolicyStatus] = field(default_factory=lambda: MappingProxyType({}))


def programmed(status: GatewayStatus, serving: bool) -> tuple[Condition, tuple[Condition, ...]]:
    """`Programmed` of the Gateway, and of each listener (in `status.listeners` order), given
    whether a gateway Envoy serving it has taken (ACKed) its listeners: True only then, and for a
    listener only when it is servable. Otherwise False: `Invalid` for a listener meshplane cannot
    serve, `NoResources` for a Gateway with nothing to serve, `Pending` while no Envoy has taken it."""
    generation = status.generation
    if not status.servable:
        gateway = condition(PROGRAMMED, False, REASON_NO_RESOURCES, "no listener can be served", generation)
    elif serving:
        gateway = condition(PROGRAMMED, True, REASON_PROGRAMMED, "a gateway Envoy serves its listeners", generation)
    else:
        gateway = condition(
            PROGRAMMED, False, REASON_PENDING, "waiting for a gateway Envoy to take its listeners", generation
        )
    listeners = []
    for listener in status.listeners:
        if not listener.servable:
            listeners.append(condition(PROGRAMMED, False, REASON_INVALID, "the listener is not served", generation))
        else:
            listeners.append(gateway)  # a servable listener is programmed when its Gateway is
    return gateway, tuple(listeners)
