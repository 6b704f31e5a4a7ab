"""The conditions meshplane writes on the GatewayClasses it owns: a pure function of the object,
the installed CRDs' bundle versions and the time.

Owns the GatewayClass condition rules (apis/v1/gatewayclass_types.go): `Accepted` is True with
reason `Accepted`, or False with `InvalidParameters` when `spec.parametersRef` is set (meshplane
takes no parameters) or `Invalid` when the spec breaks the CRD's rules; `SupportedVersion` is True
with reason `SupportedVersion` when every installed Gateway API CRD carries a bundle version of
`SUPPORTED_VERSIONS`, else False with `UnsupportedVersion` naming what is installed and what is
supported (meshplane then keeps `Accepted` as it is: best effort, as the spec allows). Each
condition carries the object's `observedGeneration`; its `lastTransitionTime` is kept while its
status stays the same. Conditions of other types are kept as they are.

`status_update` returns None when the object already holds exactly these conditions: whoever
writes must write only then, so a write (which comes back on the watch) never causes another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.gateway_classes import GatewayClass
from meshplane.discovery.status_conditions import render_condition

BUNDLE_VERSION_ANNOTATION = "gateway.networking.k8s.io/bundle-version"
SUPPORTED_VERSIONS = re.compile(r"v1\.6\.\d+")
SUPPORTED_TEXT = "v1.6.x"
ACCEPTED = "Accepted"
SUPPORTED_VERSION = "SupportedVersion"
MAX_CONDITIONS = 8  # the CRD's maxItems for status.conditions
MAX_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # True, False or Unknown
    reason: str
    message: str


def bundle_version_of(crd: Mapping[str, Any]) -> str | None:
    """The bundle version a Gateway API CRD carries, None when it carries none."""
    annotations = (crd.get("metadata") or {}).get("annotations") or {}
    version = annotations.get(BUNDLE_VERSION_ANNOTATION) if isinstance(annotations, Mapping) else None
    return version if isinstance(version, str) and version else None


def version_condition(bundles: Mapping[str, str | None]) -> Condition:
    """`SupportedVersion` for the installed CRDs (`bundles`: CRD name → its bundle version)."""
    unsupported = {crd: version for crd, version in bundles.items() if not SUPPORTED_VERSIONS.fullmatch(version or "")}
    if not bundles:
        return Condition(SUPPORTED_VERSION, "False", "UnsupportedVersion", "no Gateway API CRD is installed")
    if unsupported:
        found = ", ".join(
            f"{crd} {version or '(no bundle-version annotation)'}" for crd, version in sorted(unsupported.items())
        )
        message = (
            f"installed Gateway API CRDs of versions meshplane does not support: {found}; supported: {SUPPORTED_TEXT}"
        )
        return Condition(SUPPORTED_VERSION, "False", "UnsupportedVersion", message[:MAX_MESSAGE])
    versions = ", ".join(sorted({version or "" for version in bundles.values()}))
    message = f"the installed Gateway API CRDs are {versions}; meshplane supports {SUPPORTED_TEXT}"
    return Condition(SUPPORTED_VERSION, "True", "SupportedVersion", message)


def accepted_condition(parsed: Parsed[GatewayClass]) -> Condition:
    gateway_class = parsed.value
    if gateway_class.parameters_ref is not None:
        ref = gateway_class.parameters_ref
        named = f"{ref.kind} {ref.namespace + '/' if ref.namespace else ''}{ref.name}"
        message = f"meshplane takes no parameters; parametersRef names {named}"
        return Condition(ACCEPTED, "False", "InvalidParameters", message[:MAX_MESSAGE])
    if parsed.problems:
        message = "; ".join(str(problem) for problem in parsed.problems)
        return Condition(ACCEPTED, "False", "Invalid", message[:MAX_MESSAGE])
    return Condition(ACCEPTED, "True", "Accepted", "meshplane accepts this class")


def status_update(
    obj: Mapping[str, Any], parsed: Parsed[GatewayClass], bundles: Mapping[str, str | None], now: datetime
) -> list[dict[str, Any]] | None:
    """The whole `status.conditions` list to write on GatewayClass `obj`, or None when it already
    holds it. `parsed` is `obj` read; `now` is the transition time of a condition whose status changes."""
    status = obj.get("status")
    raw = status.get("conditions") if isinstance(status, Mapping) else None
    current = [c for c in raw if isinstance(c, Mapping)] if isinstance(raw, list) else []
    wanted = {c.type: c for c in (accepted_condition(parsed), version_condition(bundles))}
    generation = parsed.value.generation

    result: list[dict[str, Any]] = []
    rendered: set[str] = set()
    room_for_others = MAX_CONDITIONS - len(wanted)  # ours are written whatever else is there
    for condition in current:
        kind = condition.get("type")
        if isinstance(kind, str) and kind in wanted:
            if kind not in rendered:  # a type is listed once (listType=map)
                result.append(render_condition(wanted[kind], generation, condition, now))
                rendered.add(kind)
        elif room_for_others > 0:
            result.append(dict(condition))
            room_for_others -= 1
    result += [
        render_condition(condition, generation, None, now) for kind, condition in wanted.items() if kind not in rendered
    ]
    return None if result == [dict(c) for c in current] else result
