"""meshplane's own objects as read: each one's key, metadata and typed content, and the content
value the source hands to the merge.

Owns `ObjectKey`, `ParsedObject` (one object: accepted by parsing, or refused with the reasons),
`parse_object` (an object as the API server sends it → `ParsedObject`, with the policy files' own
reader, `parse.py`, and the model's own checks of the object by itself, so both run once per
generation, in the source's worker thread) and `MeshplaneObjects`, the immutable content value. Must not know where the
objects come from, nor decide precedence (the merge does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshplane.discovery.meshplane_api.parse import Content, read_object
from meshplane.model import RouteTable, Service, Site, Telemetry
from meshplane.model.device_policy import DevicePolicy
from meshplane.model.policy import PolicyAttachment


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """An object's identity: its kind, namespace ("" for cluster-scoped kinds) and name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class ParsedObject:
    """One object as read. `generation`: metadata.generation (0 when absent); `created`:
    metadata.creationTimestamp as sent ("" when absent; RFC 3339 in UTC, so text order is time
    order); `errors`: why the object is refused, by reading or by the model's own checks of it
    (empty: accepted; references to other objects are the merge's); `content`: the model value
    it becomes (a `Service` for an ExternalService, a `PolicyAttachment` for a TrafficPolicy, a
    `RouteTable` for a MeshRoute, a `Site` for an EdgeSite, a `Telemetry` for a MeshTelemetry, a
    `DevicePolicy` for a DevicePolicy), None when it could not be read."""

    key: ObjectKey
    generation: int
    created: str
    errors: tuple[str, ...]
    content: Content | None = None

    @property
    def accepted(self) -> bool:
        return not self.errors and self.content is not None

    def service(self) -> Service | None:
        return self.content if isinstance(self.content, Service) else None

    def route(self) -> RouteTable | None:
        return self.content if isinstance(self.content, RouteTable) else None

    def site(self) -> Site | None:
        return self.content if isinstance(self.content, Site) else None

    def telemetry(self) -> Telemetry | None:
        return self.content if isinstance(self.content, Telemetry) else None

    def attachment(self) -> PolicyAttachment | None:
        return self.content if isinstance(self.content, PolicyAttachment) else None


def parse_object(raw: Mapping[str, Any]) -> ParsedObject:
    """`raw` (an object as the API server sends it, JSON as Python values) read. Pure; never
    raises, whatever JSON value it is given; bounded work (`parse.MAX_NODES`, `parse.MAX_DEPTH`).
    An object whose kind, name or namespace cannot be read gets a key with what could be ("" for
    the rest) and errors. One read is checked by the model too (`Service.problems()` and the
    like): what it refuses in the object by itself is an error here."""
    read = read_object(raw)
    key = ObjectKey(read.kind, read.namespace, read.name)
    errors = read.errors
    if not errors and read.content is not None:
        errors = _model_problems(key, read.content)
    return ParsedObject(key=key, generation=read.generation, created=read.created, errors=errors, content=read.content)


def _model_problems(key: ObjectKey, content: Content) -> tuple[str, ...]:
    """What the model refuses in the object by itself (references to other objects are the
    merge's). A TrafficPolicy's are said of the object once, not of it and of its origin (the
    same words)."""
    if isinstance(content, Service | Site | RouteTable | DevicePolicy):
        found = content.problems()
    elif isinstance(content, PolicyAttachment):
        found = content.policy.problems(str(key))
    else:
        found = []
    return tuple(dict.fromkeys(str(problem) for problem in found))


def _empty() -> Mapping[ObjectKey, ParsedObject]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class MeshplaneObjects:
    """Every object of meshplane's kinds the source read, by key. The mapping is read-only
    (a `MappingProxyType`: build it with `MeshplaneObjects.of`)."""

    objects: Mapping[ObjectKey, ParsedObject] = field(default_factory=_empty)

    @staticmethod
    def of(objects: Mapping[ObjectKey, ParsedObject] | list[ParsedObject]) -> MeshplaneObjects:
        """The content value of `objects` (a mapping by key, or a list keyed by each one's key)."""
        by_key = {item.key: item for item in objects} if isinstance(objects, list) else dict(objects)
        return MeshplaneObjects(MappingProxyType(by_key))
