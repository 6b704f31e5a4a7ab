"""ReferenceGrant: which objects of other namespaces may refer to objects of this one.

Owns the ReferenceGrant type and its parser. Must not decide whether a reference is allowed: who
resolves references does, from these values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import DNS_LABEL, DNS_SUBDOMAIN, KIND, Fields, Parsed, metadata, subject_of

MAX_ENTRIES = 16


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    """Objects of this namespace that may be referred to: of `group` and `kind`, named `name` or any (None)."""

    group: str
    kind: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    namespace: str
    name: str
    generation: int
    from_: tuple[GrantFrom, ...]
    to: tuple[GrantTo, ...]


def parse_reference_grant(obj: Mapping[str, Any]) -> Parsed[ReferenceGrant]:
    """The ReferenceGrant of `obj` and what is wrong with it; never raises."""
    namespace, name, generation = metadata(obj)
    fields = Fields(subject_of("ReferenceGrant", namespace, name))
    spec = fields.child(obj, "spec", "")
    grants_from = []
    for where, item in fields.objects(spec, "from", "spec", max_items=MAX_ENTRIES, min_items=1):
        group = fields.text(item, "group", where, required=True, pattern=DNS_SUBDOMAIN)
        kind = fields.text(item, "kind", where, required=True, max_length=63, min_length=1, pattern=KIND)
        ns = fields.text(item, "namespace", where, required=True, max_length=63, min_length=1, pattern=DNS_LABEL)
        if group is not None and kind is not None and ns is not None:
            grants_from.append(GrantFrom(group, kind, ns))
    grants_to = []
    for where, item in fields.objects(spec, "to", "spec", max_items=MAX_ENTRIES, min_items=1):
        group = fields.text(item, "group", where, required=True, pattern=DNS_SUBDOMAIN)
        kind = fields.text(item, "kind", where, required=True, max_length=63, min_length=1, pattern=KIND)
        target = fields.text(item, "name", where, min_length=1)
        if group is not None and kind is not None:
            grants_to.append(GrantTo(group, kind, target))
    value = ReferenceGrant(namespace, name, generation, tuple(grants_from), tuple(grants_to))
    return Parsed(value, tuple(fields.problems))
