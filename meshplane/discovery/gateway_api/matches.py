"""What a route rule matches: HTTP paths, headers, query parameters and methods; gRPC methods.

Owns the match types and the CRDs' rules on them (a path of type Exact or PathPrefix is absolute:
it starts with `/` and holds no `//`, `/./`, `/../`, `%2f`, `#`…; a gRPC method match names a
service or a method). Regular expressions are kept as written: their dialect is the
implementation's, checked where they are translated. Must not translate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import HEADER_NAME, Fields, shown

PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
MAX_HEADERS = 16
MAX_QUERY_PARAMS = 16
MAX_PATH = 1024
MAX_HEADER_VALUE = 4096

_PATH_CHARACTERS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+")
_FORBIDDEN_IN_PATH = ("//", "/./", "/../", "%2f", "%2F", "#")
_GRPC_SERVICE = re.compile(r"[^.\s/]+(\.[^.\s/]+)*")  # dotted names: `grpc.health.v1.Health`
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: str  # one of PATH_TYPES
    value: str


DEFAULT_PATH = PathMatch("PathPrefix", "/")


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query parameter match: `name` must equal (`Exact`) or match (`RegularExpression`)
    `value`."""

    type: str  # one of VALUE_TYPES
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """One HTTPRouteMatch: every part given must hold. `path` is never None (the spec's default is
    a PathPrefix of `/`)."""

    path: PathMatch = DEFAULT_PATH
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class GrpcMethodMatch:
    """`service` and/or `method` (None: any), exactly or as regular expressions."""

    type: str  # one of VALUE_TYPES
    service: str | None
    method: str | None


@dataclass(frozen=True, slots=True)
class GrpcMatch:
    method: GrpcMethodMatch | None = None
    headers: tuple[ValueMatch, ...] = ()


def path_problem(path_type: str, value: str) -> str | None:
    """Why `value` is no valid path of `path_type`, or None (the CRD's CEL rules)."""
    if path_type not in ("Exact", "PathPrefix"):
        return None
    if not value.startswith("/"):
        return f"value {shown(value)} must be an absolute path and start with '/'"
    for part in _FORBIDDEN_IN_PATH:
        if part in value:
            return f"value {shown(value)} must not contain {part!r}"
    for end in ("/..", "/."):
        if value.endswith(end):
            return f"value {shown(value)} must not end with {end!r}"
    if not _PATH_CHARACTERS.fullmatch(value):
        return f"value {shown(value)} holds characters a path may not (only RFC 3986 path characters)"
    return None


def path_match(fields: Fields, obj: Mapping[str, Any], path: str) -> PathMatch | None:
    path_type = fields.choice(obj, "type", path, PATH_TYPES, "PathPrefix")
    value = fields.text(obj, "value", path, max_length=MAX_PATH)
    value = "/" if value is None and "value" not in obj else value
    if path_type is None or value is None:
        return None
    if (problem := path_problem(path_type, value)) is not None:
        fields.invalid(path, problem)
        return None
    return PathMatch(path_type, value)


def value_matches(
    fields: Fields, obj: Mapping[str, Any], key: str, path: str, max_items: int
) -> tuple[ValueMatch, ...]:
    """Header or query parameter matches; a name may appear once (the first is kept)."""
    found: list[ValueMatch] = []
    seen: set[str] = set()
    for where, item in fields.objects(obj, key, path, max_items=max_items):
        kind = fields.choice(item, "type", where, VALUE_TYPES, "Exact")
        name = fields.text(item, "name", where, required=True, max_length=256, min_length=1, pattern=HEADER_NAME)
        value = fields.text(item, "value", where, required=True, max_length=MAX_HEADER_VALUE, min_length=1)
        if kind is None or name is None or value is None:
            continue
        folded = name.lower() if key == "headers" else name
        if folded in seen:
            fields.invalid(where, f"{shown(name)} is matched twice in one match")
            continue
        seen.add(folded)
        found.append(ValueMatch(kind, name, value))
    return tuple(found)


def http_match(fields: Fields, obj: Mapping[str, Any], path: str) -> HttpMatch | None:
    """One HTTPRouteMatch; None when a part of it is invalid (a match that matched less than
    written would send traffic where it was not meant to go)."""
    before = len(fields.problems)
    path_value = fields.child(obj, "path", path)
    found = path_match(fields, path_value, f"{path}.path") if "path" in obj else DEFAULT_PATH
    headers = value_matches(fields, obj, "headers", path, MAX_HEADERS)
    params = value_matches(fields, obj, "queryParams", path, MAX_QUERY_PARAMS)
    method = fields.choice(obj, "method", path, METHODS)
    if found is None or len(fields.problems) > before:
        return None
    return HttpMatch(found, headers, params, method)


def grpc_match(fields: Fields, obj: Mapping[str, Any], path: str) -> GrpcMatch | None:
    """One GRPCRouteMatch; None when a part of it is invalid."""
    before = len(fields.problems)
    method: GrpcMethodMatch | None = None
    if "method" in obj:
        where = f"{path}.method"
        value = fields.child(obj, "method", path)
        kind = fields.choice(value, "type", where, VALUE_TYPES, "Exact")
        exact = kind == "Exact"
        service = fields.text(value, "service", where, max_length=1024, pattern=_GRPC_SERVICE if exact else None)
        name = fields.text(value, "method", where, max_length=1024, pattern=_GRPC_METHOD if exact else None)
        if not service and not name:
            fields.invalid(where, "one or both of 'service' or 'method' must be specified")
        elif kind is not None:
            method = GrpcMethodMatch(kind, service or None, name or None)
    headers = value_matches(fields, obj, "headers", path, MAX_HEADERS)
    if len(fields.problems) > before:
        return None
    return GrpcMatch(method, headers)
