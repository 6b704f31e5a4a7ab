"""The `status` to write on a Gateway, an HTTPRoute or a GRPCRoute: pure rendering of the values
`resolve.py` worked out (`conditions.py`) onto what the object holds now.

Owns the spec's shapes and the rules of writing them: a condition keeps its `lastTransitionTime`
while its status stays; a route's `status.parents` entries of other controllers are kept as they
are, ours (by `controllerName`) replaced; a Gateway's `addresses` are the listen addresses of the
Envoys serving it; a BackendTLSPolicy's `status.ancestors` entries are kept or replaced as a
route's parents are. Each function returns the whole `status` to write, or None when the object holds
it already (so nothing is written and writes never loop). Must not do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from meshplane.discovery.gateway_api.conditions import (
    MAX_POLICY_ANCESTORS,
    Condition,
    GatewayStatus,
    PolicyStatus,
    RouteStatus,
    programmed,
)
from meshplane.discovery.gateway_api.references import ParentRef
from meshplane.discovery.status_conditions import render_conditions

MAX_PARENTS = 32  # the CRDs' maxItems for a route's status.parents
MAX_ADDRESSES = 16


def _conditions(wanted: Sequence[Condition], current: Any, now: datetime) -> list[dict[str, Any]]:
    """`wanted` as condition objects, each observed at its own generation (`status_writing`)."""
    return render_conditions(((c, c.observed_generation) for c in wanted), current, now)


def _status_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, Mapping) else {}


def gateway_status(
    obj: Mapping[str, Any], wanted: GatewayStatus, addresses: Sequence[str], now: datetime
) -> dict[str, Any] | None:
    """The `status` of Gateway `obj` for `wanted`, `Programmed` True when `addresses` (of the
    Envoys that took its listeners) are any; None when `obj` holds it already."""
    current = _status_of(obj)
    gateway_programmed, listener_programmed = programmed(wanted, bool(addresses))
    current_listeners = {item.get("name"): item for item in current.get("listeners") or () if isinstance(item, Mapping)}
    listeners = []
    for listener, listener_condition in zip(wanted.listeners, listener_programmed, strict=True):
        before = current_listeners.get(listener.name) or {}
        listeners.append(
            {
                "name": listener.name,
                "supportedKinds": [{"group": kind.group, "kind": kind.kind} for kind in listener.supported_kinds],
                "attachedRoutes": listener.attached_routes,
                "conditions": _conditions((*listener.conditions, listener_condition), before.get("conditions"), now),
            }
        )
    status: dict[str, Any] = {
        "conditions": _conditions((*wanted.conditions, gateway_programmed), current.get("conditions"), now),
        "listeners": listeners,
    }
    if addresses:
        status["addresses"] = [{"type": "IPAddress", "value": address} for address in addresses[:MAX_ADDRESSES]]
    return None if _same(current, status, ("conditions", "listeners", "addresses")) else status


def _parent_ref(parent: ParentRef) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": parent.group, "kind": parent.kind, "name": parent.name}
    if parent.namespace is not None:
        ref["namespace"] = parent.namespace
    if parent.section_name is not None:
        ref["sectionName"] = parent.section_name
    if parent.port is not None:
        ref["port"] = parent.port
    return ref


def route_status(
    obj: Mapping[str, Any], wanted: RouteStatus | None, controller_name: str, now: datetime
) -> dict[str, Any] | None:
    """The `status` of route `obj`: its parents of other controllers as they are, then ours for
    `wanted` (None: we owe none, so ours go); None when `obj` holds it already."""
    current = _status_of(obj)
    entries = [item for item in current.get("parents") or () if isinstance(item, Mapping)]
    others = [dict(item) for item in entries if item.get("controllerName") != controller_name]
    ours_before = [item for item in entries if item.get("controllerName") == controller_name]
    ours = []
    for parent in wanted.parents if wanted is not None else ():
        ref = _parent_ref(parent.parent)
        before = next((item for item in ours_before if _same_ref(item.get("parentRef"), ref)), {})
        ours.append(
            {
                "parentRef": ref,
                "controllerName": controller_name,
                "conditions": _conditions(parent.conditions, before.get("conditions"), now),
            }
        )
    status = {"parents": (others + ours)[:MAX_PARENTS]}
    return None if _same(current, status, ("parents",)) else status


def policy_status(
    obj: Mapping[str, Any], wanted: PolicyStatus | None, controller_name: str, now: datetime
) -> dict[str, Any] | None:
    """The `status` of policy `obj` (a BackendTLSPolicy): its ancestors of other controllers as
    they are, then ours, one per Gateway of `wanted` (None: we owe none, so ours go); None when
    `obj` holds it already."""
    current = _status_of(obj)
    entries = [item for item in current.get("ancestors") or () if isinstance(item, Mapping)]
    others = [dict(item) for item in entries if item.get("controllerName") != controller_name]
    ours_before = [item for item in entries if item.get("controllerName") == controller_name]
    ours = []
    for ancestor in wanted.ancestors if wanted is not None else ():
        namespace, name = ancestor.ancestor
        ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": namespace, "name": name}
        before = next((item for item in ours_before if _same_ref(item.get("ancestorRef"), ref)), {})
        ours.append(
            {
                "ancestorRef": ref,
                "controllerName": controller_name,
                "conditions": _conditions(ancestor.conditions, before.get("conditions"), now),
            }
        )
    status = {"ancestors": (others + ours)[:MAX_POLICY_ANCESTORS]}
    return None if _same(current, status, ("ancestors",)) else status


def _same_ref(found: Any, ref: Mapping[str, Any]) -> bool:
    """Whether a written parentRef names `ref` (the API server fills in the defaults it writes)."""
    if not isinstance(found, Mapping):
        return False
    defaults = {"group": "gateway.networking.k8s.io", "kind": "Gateway"}
    return all(found.get(key, defaults.get(key)) == value for key, value in ref.items())


def _same(current: Mapping[str, Any], status: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    return all(_normal(current.get(key)) == _normal(status.get(key)) for key in keys)


def _normal(value: Any) -> Any:
    """`value` with empty lists and absent values alike (the API server drops empty lists)."""
    if value in (None, [], {}):
        return None
    if isinstance(value, list):
        return [_normal(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _normal(item) for key, item in value.items() if _normal(item) is not None}
    return value
