"""HTTPRoute: HTTP requests matched by host, path, headers, query and method, filtered, and sent
to weighted backends.

Owns the HTTPRoute type, its parser and the CRDs' rules on it that a 1.20 API server does not run:
at most 16 rules of at most 64 matches, 128 matches in all; paths of type Exact and PathPrefix
absolute; filters valid (`filters.py`), a redirect never with backendRefs, a ReplacePrefixMatch
only under exactly one PathPrefix match; a Service backend with a port; a backendRequest timeout
no longer than the request timeout; rule names unique. A rule without matches matches every path
(`PathPrefix /`), as the schema's default says. Must not translate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import SECTION_NAME, Fields, Parsed, created_of, metadata, shown, subject_of
from meshplane.discovery.gateway_api.filters import HTTP_TYPES, REQUEST_REDIRECT, URL_REWRITE, Filter, parse_filters
from meshplane.discovery.gateway_api.matches import HttpMatch, http_match
from meshplane.discovery.gateway_api.references import BackendRef, ParentRef, backend_ref
from meshplane.discovery.gateway_api.route_attachment import hostnames, parents

MAX_RULES = 16
MAX_MATCHES = 64
MAX_MATCHES_IN_ALL = 128
MAX_BACKEND_REFS = 16
# GEP-2257 durations: up to four parts of 1-5 digits, each with a unit.
DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_MILLISECONDS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


@dataclass(frozen=True, slots=True)
class RouteBackend:
    """A rule's backend, with the filters applied to requests sent to it only."""

    ref: BackendRef
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Milliseconds; 0 disables the timeout, None leaves it to the implementation."""

    request_ms: int | None = None
    backend_request_ms: int | None = None


@dataclass(frozen=True, slots=True)
class HttpRule:
    matches: tuple[HttpMatch, ...]
    filters: tuple[Filter, ...] = ()
    backends: tuple[RouteBackend, ...] = ()
    timeouts: Timeouts | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HttpRoute:
    namespace: str
    name: str
    generation: int
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[HttpRule, ...]
    # metadata.creationTimestamp: the older of two routes wins a precedence tie.
    created: str = ""


def duration_ms(text: str) -> int | None:
    """Milliseconds of a GEP-2257 duration (`1h30m`, `500ms`, `0s`), None when it is not one."""
    if not DURATION.fullmatch(text):
        return None
    return sum(int(number) * _MILLISECONDS[unit] for number, unit in _DURATION_PART.findall(text))


def _timeouts(fields: Fields, obj: Mapping[str, Any], path: str) -> Timeouts:
    found: dict[str, int | None] = {}
    for key in ("request", "backendRequest"):
        text = fields.text(obj, key, path, max_length=64)
        found[key] = None if text is None else duration_ms(text)
        if text is not None and found[key] is None:
            fields.invalid(f"{path}.{key}", f"{shown(text)} is not a duration such as 10s, 1m30s or 500ms")
    request, backend = found["request"], found["backendRequest"]
    if request and backend is not None and backend > request:
        fields.invalid(path, "backendRequest timeout cannot be longer than request timeout")
    return Timeouts(request, backend)


def backends(
    fields: Fields, rule: Mapping[str, Any], path: str, allowed_filters: tuple[str, ...]
) -> tuple[RouteBackend, ...]:
    """A rule's backendRefs (at most 16), each with its own filters."""
    found = []
    for where, item in fields.objects(rule, "backendRefs", path, max_items=MAX_BACKEND_REFS):
        ref = backend_ref(fields, item, where)
        filters = parse_filters(fields, item, where, allowed_filters)
        if ref is not None:
            found.append(RouteBackend(ref, filters))
    return tuple(found)


def _prefix_rewrites(filters: tuple[Filter, ...]) -> list[str]:
    """The filter types among `filters` that replace a prefix match."""
    found = []
    for f in filters:
        if f.redirect is not None and f.redirect.path is not None and f.redirect.path.type == "ReplacePrefixMatch":
            found.append(REQUEST_REDIRECT)
        if f.rewrite is not None and f.rewrite.path is not None and f.rewrite.path.type == "ReplacePrefixMatch":
            found.append(URL_REWRITE)
    return found


def _rule(fields: Fields, obj: Mapping[str, Any], path: str) -> HttpRule:
    matches = []
    raw_matches = fields.objects(obj, "matches", path, max_items=MAX_MATCHES)
    for where, item in raw_matches:
        match = http_match(fields, item, where)
        if match is not None:
            matches.append(match)
    if "matches" not in obj:
        matches.append(HttpMatch())
    filters = parse_filters(fields, obj, path, HTTP_TYPES)
    routed = backends(fields, obj, path, HTTP_TYPES)
    if routed and any(f.type == REQUEST_REDIRECT for f in filters):
        fields.invalid(path, "RequestRedirect filter must not be used together with backendRefs")
    rewrites = _prefix_rewrites(filters) + [t for b in routed for t in _prefix_rewrites(b.filters)]
    one_prefix = len(matches) == 1 and matches[0].path.type == "PathPrefix" and len(raw_matches) <= 1
    for kind in sorted(set(rewrites)):
        if not one_prefix:
            fields.invalid(
                path,
                f"when using {kind} filter with path.replacePrefixMatch,"
                " exactly one PathPrefix match must be specified",
            )
    timeouts = _timeouts(fields, fields.child(obj, "timeouts", path), f"{path}.timeouts") if "timeouts" in obj else None
    name = fields.text(obj, "name", path, min_length=1, pattern=SECTION_NAME)
    return HttpRule(tuple(matches), filters, routed, timeouts, name)


def check_rule_names(fields: Fields, names: list[str | None]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name is not None and name in seen:
            fields.invalid(f"spec.rules[{index}].name", f"{name!r} must be unique within the route")
        if name is not None:
            seen.add(name)


def parse_http_route(obj: Mapping[str, Any]) -> Parsed[HttpRoute]:
    """The HTTPRoute of `obj` (the API server's JSON) and what is wrong with it; never raises."""
    namespace, name, generation = metadata(obj)
    fields = Fields(subject_of("HTTPRoute", namespace, name))
    spec = fields.child(obj, "spec", "")
    refs = parents(fields, spec)
    names = hostnames(fields, spec)
    raw_rules = fields.objects(spec, "rules", "spec", max_items=MAX_RULES)
    rules = [_rule(fields, item, where) for where, item in raw_rules]
    if "rules" not in spec:
        rules.append(HttpRule((HttpMatch(),)))  # the schema's default: one rule matching every path
    total = sum(len(item.get("matches") or ()) if isinstance(item.get("matches"), list) else 0 for _, item in raw_rules)
    if total > MAX_MATCHES_IN_ALL:
        fields.invalid(
            "spec.rules",
            f"has {total} matches in all: while 16 rules and 64 matches per rule are allowed, the total number"
            f" of matches across all rules in a route must be at most {MAX_MATCHES_IN_ALL}",
        )
    check_rule_names(fields, [rule.name for rule in rules])
    value = HttpRoute(namespace, name, generation, refs, names, tuple(rules), created_of(obj))
    return Parsed(value, tuple(fields.problems))
