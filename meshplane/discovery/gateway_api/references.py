"""References between Gateway API objects, with the spec's defaults applied.

Owns how an omitted `group` or `kind` is read: an omitted (or empty) `group` is the core group
`""` wherever the schema defaults it so (backends, certificates) and the Gateway API group where
the schema defaults that (parents); an omitted `kind` is the spec's default of the field: `Service`
for a backendRef, `Gateway` for a parentRef, `Secret` for a certificateRef. An omitted namespace
stays None: the referring object's own, resolved by whoever resolves references (it also decides
whether a ReferenceGrant allows a cross-namespace one). Must not resolve anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import DNS_LABEL, DNS_SUBDOMAIN, KIND, SECTION_NAME, Fields

GATEWAY_GROUP = "gateway.networking.k8s.io"
CORE_GROUP = ""
MAX_WEIGHT = 1_000_000


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A route's parent: by default a Gateway (of the route's namespace when `namespace` is None),
    a listener of it when `section_name` is set, its listeners on `port` when that is."""

    name: str
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None
    section_name: str | None = None
    port: int | None = None

    @property
    def parent(self) -> tuple[str, str, str | None, str]:
        """The object referred to, whatever part of it: (group, kind, namespace, name)."""
        return (self.group, self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class BackendRef:
    """Where traffic goes: by default a Service, which needs `port`. `weight` is its share among
    the rule's backends (0 sends it nothing)."""

    name: str
    group: str = CORE_GROUP
    kind: str = "Service"
    namespace: str | None = None
    port: int | None = None
    weight: int = 1

    @property
    def is_service(self) -> bool:
        return self.group == CORE_GROUP and self.kind == "Service"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A certificate reference (SecretObjectReference): by default a core Secret."""

    name: str
    group: str = CORE_GROUP
    kind: str = "Secret"
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class LocalRef:
    """An object of the referrer's namespace (LocalObjectReference): group, kind and name all given."""

    group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class ParametersRef:
    """A GatewayClass's parametersRef (group, kind and name given; namespace for a namespaced kind)."""

    group: str
    kind: str
    name: str
    namespace: str | None = None


def _group(fields: Fields, obj: Mapping[str, Any], path: str, default: str) -> str:
    value = fields.text(obj, "group", path, pattern=DNS_SUBDOMAIN)
    return default if value is None else value


def _kind(fields: Fields, obj: Mapping[str, Any], path: str, default: str) -> str:
    value = fields.text(obj, "kind", path, max_length=63, min_length=1, pattern=KIND)
    return default if value is None else value


def _name(fields: Fields, obj: Mapping[str, Any], path: str) -> str | None:
    return fields.text(obj, "name", path, required=True, min_length=1)


def _namespace(fields: Fields, obj: Mapping[str, Any], path: str) -> str | None:
    return fields.text(obj, "namespace", path, max_length=63, min_length=1, pattern=DNS_LABEL)


def parent_ref(fields: Fields, obj: Mapping[str, Any], path: str) -> ParentRef | None:
    """The parentRef at `path`; None (with a problem) without a valid name."""
    name = _name(fields, obj, path)
    # A parent's `group` defaults to the Gateway API group; an explicit "" is the core group.
    group = _group(fields, obj, path, GATEWAY_GROUP)
    kind = _kind(fields, obj, path, "Gateway")
    namespace = _namespace(fields, obj, path)
    section = fields.text(obj, "sectionName", path, min_length=1, pattern=SECTION_NAME)
    port = fields.number(obj, "port", path, low=1, high=65535)
    if name is None:
        return None
    return ParentRef(name, group, kind, namespace, section, port)


def backend_ref(fields: Fields, obj: Mapping[str, Any], path: str) -> BackendRef | None:
    """The backendRef at `path`; None (with a problem) without a valid name. A Service without a
    port is a problem ("Must have port for Service reference"), still returned for status."""
    name = _name(fields, obj, path)
    group = _group(fields, obj, path, CORE_GROUP)
    kind = _kind(fields, obj, path, "Service")
    namespace = _namespace(fields, obj, path)
    port = fields.number(obj, "port", path, low=1, high=65535)
    weight = fields.number(obj, "weight", path, low=0, high=MAX_WEIGHT)
    if name is None:
        return None
    ref = BackendRef(name, group, kind, namespace, port, 1 if weight is None else weight)
    if ref.is_service and port is None and "port" not in obj:
        fields.invalid(path, "must have port for Service reference")
    return ref


def secret_ref(fields: Fields, obj: Mapping[str, Any], path: str) -> SecretRef | None:
    name = _name(fields, obj, path)
    group = _group(fields, obj, path, CORE_GROUP)
    kind = _kind(fields, obj, path, "Secret")
    namespace = _namespace(fields, obj, path)
    return None if name is None else SecretRef(name, group, kind, namespace)


def local_ref(fields: Fields, obj: Mapping[str, Any], path: str) -> LocalRef | None:
    """A LocalObjectReference: `group` and `kind` are required (the empty group is the core one)."""
    if "group" not in obj:
        fields.invalid(f"{path}.group", "is required")
    kind = fields.text(obj, "kind", path, required=True, max_length=63, min_length=1, pattern=KIND)
    group = _group(fields, obj, path, CORE_GROUP)
    name = _name(fields, obj, path)
    if kind is None or name is None:
        return None
    return LocalRef(group, kind, name)


def parameters_ref(fields: Fields, obj: Mapping[str, Any], path: str) -> ParametersRef | None:
    local = local_ref(fields, obj, path)
    namespace = _namespace(fields, obj, path)
    return None if local is None else ParametersRef(local.group, local.kind, local.name, namespace)


def check_parent_sections(fields: Fields, parents: tuple[ParentRef, ...], path: str) -> None:
    """The CRDs' rules on several references to one parent: each names a sectionName or none does,
    and no sectionName is given twice."""
    by_parent: dict[tuple[str, str, str | None, str], list[ParentRef]] = {}
    for parent in parents:
        by_parent.setdefault(parent.parent, []).append(parent)
    for (_, kind, namespace, name), refs in sorted(by_parent.items(), key=lambda item: str(item[0])):
        if len(refs) < 2:
            continue
        named = f"{kind} {namespace + '/' if namespace else ''}{name}"
        if len({ref.section_name is None for ref in refs}) > 1:
            fields.invalid(
                path, f"sectionName must be specified when parentRefs includes 2 or more references to {named}"
            )
        sections = [ref.section_name for ref in refs]
        if len(set(sections)) < len(sections):
            fields.invalid(path, f"sectionName must be unique when parentRefs includes 2 or more references to {named}")
