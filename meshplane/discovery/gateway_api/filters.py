"""Route filters (HTTPRoute and GRPCRoute, on a rule or a backendRef), typed, with the CRDs' rules.

Owns the filter types and what the schema and its CEL rules forbid: an unknown `type`, a filter
whose `type` and the field set disagree ("filter.urlRewrite must be specified for URLRewrite"),
a filter that may not be repeated given twice, a redirect together with a rewrite. A GRPCRoute
allows only the types of `GRPC_TYPES`. An invalid filter is left out of the rule, with a problem;
since the object as a whole is one the API server's validation refuses, whoever serves routes must
not serve it (see `objects.py`). Must not translate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import HEADER_NAME, HOSTNAME, Fields, shown
from meshplane.discovery.gateway_api.matches import MAX_HEADER_VALUE
from meshplane.discovery.gateway_api.references import BackendRef, LocalRef, backend_ref, local_ref

REQUEST_HEADER_MODIFIER = "RequestHeaderModifier"
RESPONSE_HEADER_MODIFIER = "ResponseHeaderModifier"
REQUEST_MIRROR = "RequestMirror"
REQUEST_REDIRECT = "RequestRedirect"
URL_REWRITE = "URLRewrite"
EXTENSION_REF = "ExtensionRef"
CORS = "CORS"
# The filter types of the standard channel, and the field each one's settings are in.
FIELD_OF_TYPE = {
    REQUEST_HEADER_MODIFIER: "requestHeaderModifier",
    RESPONSE_HEADER_MODIFIER: "responseHeaderModifier",
    REQUEST_MIRROR: "requestMirror",
    REQUEST_REDIRECT: "requestRedirect",
    URL_REWRITE: "urlRewrite",
    EXTENSION_REF: "extensionRef",
    CORS: "cors",
}
HTTP_TYPES = tuple(FIELD_OF_TYPE)
GRPC_TYPES = (REQUEST_HEADER_MODIFIER, RESPONSE_HEADER_MODIFIER, REQUEST_MIRROR, EXTENSION_REF)
# Types a rule (or a backendRef) may hold once only.
UNREPEATABLE = (REQUEST_HEADER_MODIFIER, RESPONSE_HEADER_MODIFIER, REQUEST_REDIRECT, URL_REWRITE, CORS)
MAX_FILTERS = 16
MAX_HEADERS = 16
REDIRECT_CODES = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """Headers to set (replace), add (append) and remove, in that order of the spec."""

    set: tuple[Header, ...] = ()
    add: tuple[Header, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    """`ReplaceFullPath` (the whole path becomes `value`) or `ReplacePrefixMatch` (the matched
    prefix does)."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class Rewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    """Copies of requests to `backend`: all of them, or `percent`, or `fraction` (numerator, denominator)."""

    backend: BackendRef
    percent: int | None = None
    fraction: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Cors:
    allow_origins: tuple[str, ...] = ()
    allow_credentials: bool | None = None
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int = 5


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter: `type` says which one field holds its settings."""

    type: str
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    mirror: Mirror | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    extension: LocalRef | None = None
    cors: Cors | None = None


def _headers(fields: Fields, obj: Mapping[str, Any], key: str, path: str) -> tuple[Header, ...]:
    found: list[Header] = []
    for where, item in fields.objects(obj, key, path, max_items=MAX_HEADERS):
        name = fields.text(item, "name", where, required=True, max_length=256, min_length=1, pattern=HEADER_NAME)
        value = fields.text(item, "value", where, required=True, max_length=MAX_HEADER_VALUE, min_length=1)
        if name is None or value is None:
            continue
        if any(header.name.lower() == name.lower() for header in found):
            fields.invalid(where, f"header {shown(name)} is given twice")
            continue
        found.append(Header(name, value))
    return tuple(found)


def _header_modifier(fields: Fields, obj: Mapping[str, Any], path: str) -> HeaderModifier:
    remove = fields.strings(
        obj, "remove", path, max_items=MAX_HEADERS, max_length=256, pattern=HEADER_NAME, unique=True
    )
    return HeaderModifier(_headers(fields, obj, "set", path), _headers(fields, obj, "add", path), remove)


def _path_modifier(fields: Fields, obj: Mapping[str, Any], path: str) -> PathModifier | None:
    kind = fields.choice(obj, "type", path, ("ReplaceFullPath", "ReplacePrefixMatch"))
    if kind is None:
        if "type" not in obj:
            fields.invalid(f"{path}.type", "is required")
        return None
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    other = "replacePrefixMatch" if kind == "ReplaceFullPath" else "replaceFullPath"
    if other in obj:
        fields.invalid(
            path,
            f"type must be {'ReplacePrefixMatch' if kind == 'ReplaceFullPath' else 'ReplaceFullPath'}"
            f" when {other} is set",
        )
        return None
    value = fields.text(obj, key, path, max_length=1024)
    if value is None:
        if key not in obj:
            fields.invalid(path, f"{key} must be specified when type is set to '{kind}'")
        return None
    if value and not value.startswith("/"):
        fields.invalid(f"{path}.{key}", f"{shown(value)} must be an absolute path and start with '/'")
        return None
    return PathModifier(kind, value)


def _redirect(fields: Fields, obj: Mapping[str, Any], path: str) -> Redirect:
    path_value = fields.child(obj, "path", path)
    code = fields.number(obj, "statusCode", path, low=100, high=599)
    if code is not None and code not in REDIRECT_CODES:
        fields.invalid(f"{path}.statusCode", f"{code} is not one of {', '.join(map(str, REDIRECT_CODES))}")
        code = None
    return Redirect(
        scheme=fields.choice(obj, "scheme", path, ("http", "https")),
        hostname=fields.text(obj, "hostname", path, min_length=1, pattern=HOSTNAME),
        path=_path_modifier(fields, path_value, f"{path}.path") if "path" in obj else None,
        port=fields.number(obj, "port", path, low=1, high=65535),
        status_code=302 if code is None else code,
    )


def _rewrite(fields: Fields, obj: Mapping[str, Any], path: str) -> Rewrite:
    path_value = fields.child(obj, "path", path)
    return Rewrite(
        hostname=fields.text(obj, "hostname", path, min_length=1, pattern=HOSTNAME),
        path=_path_modifier(fields, path_value, f"{path}.path") if "path" in obj else None,
    )


def _mirror(fields: Fields, obj: Mapping[str, Any], path: str) -> Mirror | None:
    backend = backend_ref(fields, fields.child(obj, "backendRef", path), f"{path}.backendRef")
    if "backendRef" not in obj:
        fields.invalid(f"{path}.backendRef", "is required")
    percent = fields.number(obj, "percent", path, low=0, high=100)
    fraction = None
    if "fraction" in obj:
        where = f"{path}.fraction"
        value = fields.child(obj, "fraction", path)
        numerator = fields.number(value, "numerator", where, low=0, high=2**31 - 1, required=True)
        denominator = fields.number(value, "denominator", where, low=1, high=2**31 - 1)
        denominator = 100 if denominator is None else denominator
        if numerator is not None:
            if numerator > denominator:
                fields.invalid(where, "numerator must be less than or equal to denominator")
            else:
                fraction = (numerator, denominator)
        if "percent" in obj:
            fields.invalid(path, "only one of percent or fraction may be specified")
    return None if backend is None else Mirror(backend, percent, fraction)


def _cors(fields: Fields, obj: Mapping[str, Any], path: str) -> Cors:
    max_age = fields.number(obj, "maxAge", path, low=1, high=2**31 - 1)
    return Cors(
        allow_origins=fields.strings(obj, "allowOrigins", path, max_items=64, max_length=253, unique=True),
        allow_credentials=fields.flag(obj, "allowCredentials", path),
        allow_methods=fields.strings(obj, "allowMethods", path, max_items=9, max_length=16, unique=True),
        allow_headers=fields.strings(obj, "allowHeaders", path, max_items=64, max_length=256, unique=True),
        expose_headers=fields.strings(obj, "exposeHeaders", path, max_items=64, max_length=256, unique=True),
        max_age=5 if max_age is None else max_age,
    )


def parse_filter(fields: Fields, obj: Mapping[str, Any], path: str, allowed: Sequence[str]) -> Filter | None:
    """The filter at `path`; None (with problems) when it is invalid or not of an `allowed` type."""
    before = len(fields.problems)
    kind = obj.get("type")
    if kind is None:
        fields.invalid(f"{path}.type", "is required")
        return None
    if kind not in allowed:
        fields.invalid(f"{path}.type", f"{shown(kind)} is not a filter type here (one of {', '.join(allowed)})")
        return None
    for other_type, key in FIELD_OF_TYPE.items():
        if other_type != kind and key in obj:
            fields.invalid(path, f"filter.{key} must be nil if the filter.type is not {other_type}")
    key = FIELD_OF_TYPE[kind]
    if key not in obj:
        fields.invalid(path, f"filter.{key} must be specified for {kind} filter.type")
        return None
    where = f"{path}.{key}"
    settings = fields.mapping(obj[key], where)
    found: Filter | None = None
    if kind == REQUEST_HEADER_MODIFIER:
        found = Filter(kind, request_headers=_header_modifier(fields, settings, where))
    elif kind == RESPONSE_HEADER_MODIFIER:
        found = Filter(kind, response_headers=_header_modifier(fields, settings, where))
    elif kind == REQUEST_MIRROR:
        mirror = _mirror(fields, settings, where)
        found = Filter(kind, mirror=mirror) if mirror is not None else None
    elif kind == REQUEST_REDIRECT:
        found = Filter(kind, redirect=_redirect(fields, settings, where))
    elif kind == URL_REWRITE:
        found = Filter(kind, rewrite=_rewrite(fields, settings, where))
    elif kind == EXTENSION_REF:
        extension = local_ref(fields, settings, where)
        found = Filter(kind, extension=extension) if extension is not None else None
    elif kind == CORS:
        found = Filter(kind, cors=_cors(fields, settings, where))
    return found if len(fields.problems) == before else None


def parse_filters(fields: Fields, obj: Mapping[str, Any], path: str, allowed: Sequence[str]) -> tuple[Filter, ...]:
    """The `filters` list at `path`, with the rules across its filters checked."""
    found: list[Filter] = []
    for where, item in fields.objects(obj, "filters", path, max_items=MAX_FILTERS):
        parsed = parse_filter(fields, item, where, allowed)
        if parsed is None:
            continue
        if parsed.type in UNREPEATABLE and any(f.type == parsed.type for f in found):
            fields.invalid(where, f"{parsed.type} filter cannot be repeated")
            continue
        found.append(parsed)
    types = {f.type for f in found}
    if REQUEST_REDIRECT in types and URL_REWRITE in types:
        fields.invalid(f"{path}.filters", "may specify either RequestRedirect or URLRewrite, but not both")
    return tuple(found)
