"""What every route kind shares: the parents it attaches to and the hostnames it serves.

Owns reading `spec.parentRefs` (at most 32, with the CRDs' sectionName rules) and `spec.hostnames`
(at most 16, each a precise or wildcard hostname, no repeats) of HTTPRoute and GRPCRoute.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshplane.discovery.gateway_api.fields import HOSTNAME, Fields
from meshplane.discovery.gateway_api.references import ParentRef, check_parent_sections, parent_ref

MAX_PARENT_REFS = 32
MAX_HOSTNAMES = 16


def parents(fields: Fields, spec: Mapping[str, Any]) -> tuple[ParentRef, ...]:
    found = []
    for where, item in fields.objects(spec, "parentRefs", "spec", max_items=MAX_PARENT_REFS):
        ref = parent_ref(fields, item, where)
        if ref is not None:
            found.append(ref)
    refs = tuple(found)
    check_parent_sections(fields, refs, "spec.parentRefs")
    return refs


def hostnames(fields: Fields, spec: Mapping[str, Any]) -> tuple[str, ...]:
    return fields.strings(spec, "hostnames", "spec", max_items=MAX_HOSTNAMES, pattern=HOSTNAME, unique=True)
