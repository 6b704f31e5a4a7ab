"""GRPCRoute: gRPC calls matched by host, service, method and headers, sent to weighted backends.

Owns the GRPCRoute type and its parser, with the CRDs' rules (at most 16 rules of at most 64
matches; a method match names a service or a method; the filter types a GRPCRoute takes; a
Service backend with a port). A rule without matches matches every call. Must not translate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import SECTION_NAME, Fields, Parsed, created_of, metadata, subject_of
from meshplane.discovery.gateway_api.filters import GRPC_TYPES, Filter, parse_filters
from meshplane.discovery.gateway_api.http_routes import RouteBackend, backends, check_rule_names
from meshplane.discovery.gateway_api.matches import GrpcMatch, grpc_match
from meshplane.discovery.gateway_api.references import ParentRef
from meshplane.discovery.gateway_api.route_attachment import hostnames, parents

MAX_RULES = 16
MAX_MATCHES = 64


@dataclass(frozen=True, slots=True)
class GrpcRule:
    """`matches` empty: every call matches."""

    matches: tuple[GrpcMatch, ...] = ()
    filters: tuple[Filter, ...] = ()
    backends: tuple[RouteBackend, ...] = ()
    name: str | None = None


@dataclass(frozen=True, slots=True)
class GrpcRoute:
    namespace: str
    name: str
    generation: int
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[GrpcRule, ...]
    # metadata.creationTimestamp: the older of two routes wins a precedence tie.
    created: str = ""


def _rule(fields: Fields, obj: Mapping[str, Any], path: str) -> GrpcRule:
    matches = []
    for where, item in fields.objects(obj, "matches", path, max_items=MAX_MATCHES):
        match = grpc_match(fields, item, where)
        if match is not None:
            matches.append(match)
    filters = parse_filters(fields, obj, path, GRPC_TYPES)
    routed = backends(fields, obj, path, GRPC_TYPES)
    name = fields.text(obj, "name", path, min_length=1, pattern=SECTION_NAME)
    return GrpcRule(tuple(matches), filters, routed, name)


def parse_grpc_route(obj: Mapping[str, Any]) -> Parsed[GrpcRoute]:
    """The GRPCRoute of `obj` (the API server's JSON) and what is wrong with it; never raises."""
    namespace, name, generation = metadata(obj)
    fields = Fields(subject_of("GRPCRoute", namespace, name))
    spec = fields.child(obj, "spec", "")
    refs = parents(fields, spec)
    names = hostnames(fields, spec)
    rules = [_rule(fields, item, where) for where, item in fields.objects(spec, "rules", "spec", max_items=MAX_RULES)]
    check_rule_names(fields, [rule.name for rule in rules])
    value = GrpcRoute(namespace, name, generation, refs, names, tuple(rules), created_of(obj))
    return Parsed(value, tuple(fields.problems))
