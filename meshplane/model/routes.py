"""HTTP routing declared by policy: which requests go to which services, and how.

Owns route tables (hosts → ordered rules), matches (path, method, headers, query parameters),
weighted splits (canaries), retries, timeouts, rewrites (path prefix, full path, host name), header
modifiers, redirects, mirrors, named rules, fault injection, rate limits and CORS: what the
Kubernetes Gateway API's HTTPRoute expresses (and what Envoy Gateway, Contour and Istio add), so
any source maps onto one model. Refers to services by `ServiceRef`; must not know Envoy's wire
types. What it accepts a proxy accepts: regexes, header names and values, paths and timeouts are
held to proxies' limits (`meshplane.model.limits`), and lists and strings are bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from meshplane.model.limits import MIN_TIMEOUT, has_control_characters, header_name_problem, regex_problem
from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.services import ServiceRef, is_host_name


class PathMatchKind(StrEnum):
    PREFIX = "prefix"
    EXACT = "exact"
    REGEX = "regex"


class HeaderMatchKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class PathMatch:
    kind: PathMatchKind = PathMatchKind.PREFIX
    value: str = "/"


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """Matches one request header. With `invert`, matches when the condition does not hold."""

    name: str
    kind: HeaderMatchKind = HeaderMatchKind.EXACT
    value: str = ""
    invert: bool = False


class QueryMatchKind(StrEnum):
    EXACT = "exact"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """Matches one query parameter by name (case-sensitive): its value exactly, or fully by an RE2 regex."""

    name: str
    kind: QueryMatchKind = QueryMatchKind.EXACT
    value: str = ""


# The methods a rule may match (the Gateway API's HTTPMethod).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All conditions must hold: the path, the method (None: any), every header and query match."""

    path: PathMatch = PathMatch()
    headers: tuple[HeaderMatch, ...] = ()
    method: str | None = None
    query: tuple[QueryMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderValue:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """Changes to a request's or a response's headers: `remove` first, then `set` (replacing any
    value the header had), then `add` (appending a value). Values are literal text. Names are
    case-insensitive; each appears once per list."""

    set: tuple[HeaderValue, ...] = ()
    add: tuple[HeaderValue, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mirror:
    """Sends a copy of `percent` (0-100) of the requests a rule forwards to a port of `service`,
    whose answers are dropped. `port` may be omitted for single-port services."""

    service: ServiceRef
    port: str | int | None = None
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """Holds `percent` (0-100) of the requests for `duration` seconds before forwarding them."""

    duration: float
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """Answers `percent` (0-100) of the requests with HTTP `status` instead of forwarding them."""

    status: int
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultInjection:
    """Faults a rule injects, to test how clients cope: a delay, an abort, or both."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket on a rule's requests, kept by each proxy: `requests` more every `interval`
    seconds, up to `burst` at once (None: `requests`). With `per_header`, each value of that request
    header (a client's or device's id) gets a bucket of its own, and requests without it share one.
    A request over the limit is answered 429."""

    requests: int
    interval: float = 1.0
    burst: int | None = None
    per_header: str | None = None


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which browser origins may call a rule's paths from scripts (CORS), and with what.

    An origin is `scheme://host[:port]`, its host may start with `*.` (any subdomain), or `*` (any
    origin). `allow_methods` may hold `*`; header names are case-insensitive. `max_age` is how many
    seconds a browser may keep a preflight's answer (None: the browser's default).
    """

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False


def wildcard_origin_regex(origin: str) -> str:
    """The RE2 regex an origin with a wildcard host (`https://*.example.com`) full-matches, as proxies
    match it: one or more labels where the `*` is. Only for origins `is_wildcard_origin` accepts."""
    scheme, _, rest = origin.partition("://*.")
    return re.escape(f"{scheme}://") + r"[a-z0-9.-]+\." + re.escape(rest)


REDIRECT_STATUSES = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer with a redirect instead of forwarding. Each part left None keeps the request's own;
    `path` replaces the whole path, `prefix` only the part a prefix path match matched."""

    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: str | None = None
    prefix: str | None = None
    status: int = 302


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    """A share of a rule's traffic. `port` (name or number) may be omitted for single-port services.
    `request_headers`, when given, changes the headers of the requests sent to this backend only,
    besides the rule's own changes (meant for other headers than those: which of two changes to
    one header wins is the proxy's order, not the model's)."""

    service: ServiceRef
    port: str | int | None = None
    weight: int = 100
    request_headers: HeaderModifier | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`on` uses Envoy's retry conditions vocabulary (5xx, gateway-error, reset, connect-failure, …)."""

    on: tuple[str, ...] = ("5xx", "reset", "connect-failure")
    attempts: int = 2
    per_try_timeout: float | None = None


RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        # gRPC status based conditions
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One ordered rule: requests matching `match` go to `backends` split by weight, or, with a
    `redirect`, are answered with a redirect (and the rule has no backends).

    `prefix_rewrite` replaces what a prefix path match matched, `path_rewrite` the whole path (one
    of them at most), `host_rewrite` the Host header. `mirrors` get copies of the forwarded
    requests; `fault` delays or fails some of them; `rate_limit` caps them; `cors` lets browsers'
    scripts of other origins call them. `name`, optional, is unique in its table.

    `timeout` bounds a request from the proxy's first byte received to the response's last sent
    (0: none; None: the proxy's default); `backend_timeout` bounds each request to a backend (one
    try; 0 or None: no bound of its own). Without retries there is one try, so the stricter of
    the two applies; with retries, `backend_timeout` is each try's when `retry` names none.
    """

    match: RouteMatch
    backends: tuple[WeightedBackend, ...]
    timeout: float | None = None
    retry: RetryPolicy | None = None
    prefix_rewrite: str | None = None
    name: str | None = None
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    path_rewrite: str | None = None
    host_rewrite: str | None = None
    mirrors: tuple[Mirror, ...] = ()
    fault: FaultInjection | None = None
    rate_limit: RateLimit | None = None
    cors: CorsPolicy | None = None
    backend_timeout: float | None = None

    def targets(self) -> tuple[WeightedBackend, ...]:
        """Every service port the rule sends requests to, for checks that they exist: its backends,
        then its mirrors (as backends of the default weight)."""
        return self.backends + tuple(WeightedBackend(mirror.service, mirror.port) for mirror in self.mirrors)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routing for a set of host names, replacing the default route of the services it names.

    `service`, when set, attaches the table to that service's own host names (its virtual host);
    `hosts` adds further names. `port`, with `service` only, narrows the attachment to that one port
    of the service (its number): for that port such a table replaces the service-wide one (a
    Gateway API parentRef's `port`). `consumer`, with `service` only, narrows it to the clients of
    that namespace (proxies whose group says it): for them it replaces the tables without one (a
    Gateway API consumer route). Rules are tried in order; the first match wins.
    """

    name: str
    rules: tuple[RouteRule, ...]
    service: ServiceRef | None = None
    hosts: tuple[str, ...] = ()
    origin: str = ""
    port: int | None = None
    consumer: str = ""

    @property
    def attachment(self) -> tuple[ServiceRef, int | None, str] | None:
        """What the table attaches to, unique in a mesh: (service, port or None, consumer
        namespace or ""), or None."""
        return None if self.service is None else (self.service, self.port, self.consumer)

    def problems(self) -> list[Problem]:
        """Why this table cannot be served on its own, each naming it; the mesh checks what it refers to."""
        about = Subject(f"route {self.name}", self.origin)
        found = []
        if not self.rules:
            found.append(about.invalid("has no rules"))
        if self.service is None and not self.hosts:
            found.append(about.invalid("names neither a service nor hosts"))
        if self.port is not None and (self.service is None or not 1 <= self.port <= 65535):
            found.append(about.invalid(f"port {self.port} needs a service, and is a number 1-65535"))
        if self.consumer and (self.service is None or not _NAMESPACE.fullmatch(self.consumer)):
            found.append(about.invalid(f"consumer {self.consumer[:80]!r} needs a service, and is a namespace"))
        for host in self.hosts:
            if not is_host_name(host):
                found.append(about.invalid(f"host {host!r} is not a valid host name"))
        for index, rule in enumerate(self.rules):
            found += _rule_problems(about.within(f"rule {index + 1}"), rule)
        named = [rule.name for rule in self.rules if rule.name is not None]
        for name in sorted({name for name in named if named.count(name) > 1}):
            found.append(about.problem(ProblemKind.DUPLICATE, f"rule name {name!r} is used by more than one rule"))
        return found


def _rule_problems(about: Subject, rule: RouteRule) -> list[Problem]:
    found = []
    path = rule.match.path
    if path.kind is PathMatchKind.REGEX:
        found += _regex_problems(about, path.value)
    else:
        if not path.value.startswith("/"):
            found.append(about.invalid(f"path {path.value!r} must start with '/'"))
        # Envoy takes it, but no request path holds one: the rule could never match.
        if has_control_characters(path.value):
            found.append(about.invalid(f"path {path.value!r} must not contain control characters"))
    for header in rule.match.headers:
        if (problem := header_name_problem(header.name)) is not None:
            found.append(about.invalid(problem))
        if header.kind is HeaderMatchKind.REGEX:
            found += _regex_problems(about, header.value)
    found += _match_problems(about, rule.match)
    if rule.name is not None and not _RULE_NAME.fullmatch(rule.name):
        found.append(
            about.invalid(f"name {rule.name!r} must be a lowercase RFC 1123 label (a-z, 0-9, '-'; 63 at most)")
        )
    if rule.redirect is not None:
        found += _redirect_problems(about, rule)
    elif not rule.backends:
        found.append(about.invalid("has no backends"))
    if any(backend.weight < 0 for backend in rule.backends):
        found.append(about.invalid("backend weights must not be negative"))
    if rule.backends and sum(backend.weight for backend in rule.backends) <= 0:
        found.append(about.invalid("backend weights add up to zero"))
    if rule.timeout is not None and not (rule.timeout == 0 or MIN_TIMEOUT <= rule.timeout < float("inf")):
        found.append(about.invalid("timeout must be 0 (none) or at least 1ms"))
    backend = rule.backend_timeout
    if backend is not None and not (backend == 0 or MIN_TIMEOUT <= backend < float("inf")):
        found.append(about.invalid("backend timeout must be 0 (none) or at least 1ms"))
    if (retry := rule.retry) is not None:
        unknown = sorted(set(retry.on) - RETRY_CONDITIONS)
        if unknown:
            found.append(about.invalid(f"unknown retry conditions {unknown}"))
        if not 0 <= retry.attempts <= 10:
            found.append(about.invalid("retry attempts must be within 0-10"))
        if retry.per_try_timeout is not None and not MIN_TIMEOUT <= retry.per_try_timeout < float("inf"):
            found.append(about.invalid("per_try_timeout must be at least 1ms"))
    if (rewrite := rule.prefix_rewrite) is not None:
        if not rewrite.startswith("/"):
            found.append(about.invalid("prefix_rewrite must start with '/'"))
        if has_control_characters(rewrite):
            found.append(about.invalid(f"prefix_rewrite {rewrite!r} must not contain control characters"))
    if rule.path_rewrite is not None:
        if rule.prefix_rewrite is not None:
            found.append(about.invalid("rewrites either the path prefix or the whole path, not both"))
        found += _path_problems(about, "path rewrite", rule.path_rewrite)
    if rule.host_rewrite is not None and not _is_exact_host(rule.host_rewrite):
        found.append(about.invalid(f"host rewrite {rule.host_rewrite!r} is not a host name (no wildcard, no port)"))
    if len(rule.mirrors) > MAX_MIRRORS:
        found.append(about.invalid(f"has {len(rule.mirrors)} mirrors, more than {MAX_MIRRORS}"))
    for mirror in rule.mirrors:
        if not 0 <= mirror.percent <= 100:  # NaN fails both comparisons
            found.append(about.invalid(f"mirror percent {mirror.percent} is out of range 0-100"))
    if rule.fault is not None:
        found += _fault_problems(about, rule.fault)
    if rule.rate_limit is not None:
        found += _rate_limit_problems(about, rule.rate_limit)
    if rule.cors is not None:
        found += _cors_problems(about.within("cors"), rule.cors)
    if rule.request_headers is not None:
        found += _modifier_problems(about.within("request headers"), rule.request_headers)
    if rule.response_headers is not None:
        found += _modifier_problems(about.within("response headers"), rule.response_headers)
    return found


# Bounds on what one rule may list or say: generous for hand-written policy, small enough that a
# mistake (a generated file gone wrong) is refused rather than sent to every proxy.
MAX_HEADER_CHANGES = 32
MAX_HEADER_VALUE_LENGTH = 4096
MAX_QUERY_MATCHES = 16
MAX_QUERY_NAME_LENGTH = 256
MAX_PATH_LENGTH = 1024
MAX_MIRRORS = 8
# A fault delay longer than this is no test of a client's patience but an outage.
MAX_FAULT_DELAY = 3600.0
# Envoy refills a token bucket at most every 50ms, and counts tokens in 32 bits.
MIN_RATE_LIMIT_INTERVAL = 0.05
MAX_RATE_LIMIT_INTERVAL = 86400.0
MAX_RATE_LIMIT_TOKENS = 1_000_000_000
MAX_CORS_ENTRIES = 64
MAX_CORS_MAX_AGE = 86400

# `scheme://host[:port]`, the host a DNS name (or `*.` and one) or an IPv4 address, all lowercase.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?")

_RULE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAMESPACE = _RULE_NAME  # a Kubernetes namespace is the same lowercase RFC 1123 label
# Envoy refuses a header value holding NUL, CR or LF (its HTTP_HEADER_VALUE rule).
_BAD_HEADER_VALUE = re.compile(r"[\x00\r\n]")
# Headers a modifier may not touch: Envoy refuses to change pseudo-headers and `host` this way
# (`host_rewrite` changes the host).
_UNMODIFIABLE_HEADERS = frozenset({"host"})


def _is_exact_host(host: str) -> bool:
    return is_host_name(host) and not host.startswith("*")


def _match_problems(about: Subject, match: RouteMatch) -> list[Problem]:
    found = []
    if match.method is not None and match.method not in HTTP_METHODS:
        found.append(about.invalid(f"method {match.method!r} is not one of {', '.join(HTTP_METHODS)}"))
    if len(match.query) > MAX_QUERY_MATCHES:
        found.append(about.invalid(f"matches {len(match.query)} query parameters, more than {MAX_QUERY_MATCHES}"))
    seen: set[str] = set()
    for query in match.query:
        if not query.name or len(query.name) > MAX_QUERY_NAME_LENGTH or has_control_characters(query.name):
            found.append(
                about.invalid(
                    f"query parameter name {query.name!r} must be 1-{MAX_QUERY_NAME_LENGTH} characters, "
                    "no control characters"
                )
            )
        elif query.name in seen:
            found.append(about.invalid(f"query parameter {query.name!r} is matched twice"))
        seen.add(query.name)
        if query.kind is QueryMatchKind.REGEX:
            found += _regex_problems(about, query.value)
        elif has_control_characters(query.value):
            found.append(about.invalid(f"query parameter value {query.value!r} must not contain control characters"))
    return found


def _path_problems(about: Subject, what: str, path: str) -> list[Problem]:
    if not path.startswith("/") or len(path) > MAX_PATH_LENGTH or has_control_characters(path):
        return [
            about.invalid(
                f"{what} {path!r} must start with '/', hold no control characters and be at most "
                f"{MAX_PATH_LENGTH} characters"
            )
        ]
    return []


def _redirect_problems(about: Subject, rule: RouteRule) -> list[Problem]:
    redirect = rule.redirect
    assert redirect is not None
    found = []
    # A redirect answers the request itself: nothing is forwarded, so nothing about forwarding applies.
    forwarding = {
        "backends": bool(rule.backends),
        "timeout": rule.timeout is not None or rule.backend_timeout is not None,
        "retries": rule.retry is not None,
        "a rewrite": rule.prefix_rewrite is not None or rule.path_rewrite is not None or rule.host_rewrite is not None,
        "request headers": rule.request_headers is not None,
        "mirrors": bool(rule.mirrors),
        "a fault": rule.fault is not None,
    }
    for what, present in forwarding.items():
        if present:
            found.append(about.invalid(f"redirects, so it forwards nothing and cannot have {what}"))
    if redirect.scheme is not None and redirect.scheme not in ("http", "https"):
        found.append(about.invalid(f"redirect scheme {redirect.scheme!r} is not http or https"))
    if redirect.hostname is not None and not _is_exact_host(redirect.hostname):
        hostname = redirect.hostname
        found.append(about.invalid(f"redirect hostname {hostname!r} is not a host name (no wildcard, no port)"))
    if redirect.port is not None and not 1 <= redirect.port <= 65535:
        found.append(about.invalid(f"redirect port {redirect.port} is out of range 1-65535"))
    if redirect.path is not None and redirect.prefix is not None:
        found.append(about.invalid("a redirect replaces either the whole path or its prefix, not both"))
    if redirect.path is not None:
        found += _path_problems(about, "redirect path", redirect.path)
    if redirect.prefix is not None:
        found += _path_problems(about, "redirect prefix", redirect.prefix)
        if rule.match.path.kind is not PathMatchKind.PREFIX:
            found.append(about.invalid("a redirect prefix replaces a prefix path match; this rule matches none"))
    if redirect.status not in REDIRECT_STATUSES:
        statuses = ", ".join(str(status) for status in REDIRECT_STATUSES)
        found.append(about.invalid(f"redirect status {redirect.status} is not one of {statuses}"))
    return found


def _fault_problems(about: Subject, fault: FaultInjection) -> list[Problem]:
    found = []
    if fault.delay is None and fault.abort is None:
        found.append(about.invalid("a fault needs a delay, an abort or both"))
    if (delay := fault.delay) is not None:
        if not MIN_TIMEOUT <= delay.duration <= MAX_FAULT_DELAY:  # NaN fails both comparisons
            found.append(about.invalid(f"fault delay {delay.duration}s is not within 1ms and {MAX_FAULT_DELAY:.0f}s"))
        if not 0 <= delay.percent <= 100:
            found.append(about.invalid(f"fault delay percent {delay.percent} is out of range 0-100"))
    if (abort := fault.abort) is not None:
        # Envoy takes an HTTP status from 200 to 599 to abort with.
        if not 200 <= abort.status <= 599:
            found.append(about.invalid(f"fault abort status {abort.status} is out of range 200-599"))
        if not 0 <= abort.percent <= 100:
            found.append(about.invalid(f"fault abort percent {abort.percent} is out of range 0-100"))
    return found


def _rate_limit_problems(about: Subject, limit: RateLimit) -> list[Problem]:
    found = []
    if not 1 <= limit.requests <= MAX_RATE_LIMIT_TOKENS:
        found.append(about.invalid(f"rate limit requests {limit.requests} is out of range 1-{MAX_RATE_LIMIT_TOKENS}"))
    if limit.burst is not None and not 1 <= limit.burst <= MAX_RATE_LIMIT_TOKENS:
        found.append(about.invalid(f"rate limit burst {limit.burst} is out of range 1-{MAX_RATE_LIMIT_TOKENS}"))
    if not MIN_RATE_LIMIT_INTERVAL <= limit.interval <= MAX_RATE_LIMIT_INTERVAL:  # NaN fails both comparisons
        found.append(
            about.invalid(
                f"rate limit interval {limit.interval}s is not within {MIN_RATE_LIMIT_INTERVAL * 1000:.0f}ms "
                f"and {MAX_RATE_LIMIT_INTERVAL / 3600:.0f}h"
            )
        )
    if limit.per_header is not None and (problem := header_name_problem(limit.per_header)) is not None:
        found.append(about.invalid(f"rate limit per_header: {problem}"))
    return found


def _cors_problems(about: Subject, cors: CorsPolicy) -> list[Problem]:
    found = []
    if not cors.allow_origins:
        found.append(about.invalid("allow_origins must name at least one origin (or '*')"))
    for what, entries in (
        ("allow_origins", cors.allow_origins),
        ("allow_methods", cors.allow_methods),
        ("allow_headers", cors.allow_headers),
        ("expose_headers", cors.expose_headers),
    ):
        if len(entries) > MAX_CORS_ENTRIES:
            found.append(about.invalid(f"{what} lists {len(entries)} entries, more than {MAX_CORS_ENTRIES}"))
    for origin in cors.allow_origins:
        if origin == "*":
            continue
        if not _ORIGIN.fullmatch(origin) or len(origin) > 253:
            found.append(
                about.invalid(
                    f"origin {origin!r} must be '*' or scheme://host[:port] in lowercase (host may be *.name)"
                )
            )
        elif "*" in origin and (problem := regex_problem(wildcard_origin_regex(origin))) is not None:
            found.append(about.invalid(f"origin {origin!r}: {problem}"))
    for method in cors.allow_methods:
        if method != "*" and method not in HTTP_METHODS:
            found.append(about.invalid(f"method {method!r} is not '*' nor one of {', '.join(HTTP_METHODS)}"))
    for header in (*cors.allow_headers, *cors.expose_headers):
        if header != "*" and (problem := header_name_problem(header.lower())) is not None:
            found.append(about.invalid(problem))
    if cors.max_age is not None and not 0 <= cors.max_age <= MAX_CORS_MAX_AGE:
        found.append(about.invalid(f"max_age {cors.max_age} is out of range 0-{MAX_CORS_MAX_AGE} seconds"))
    if cors.allow_credentials and "*" in cors.allow_origins:
        # Browsers refuse credentials for an answer allowing any origin: name the origins.
        found.append(about.invalid("allow_credentials needs named origins, not '*'"))
    return found


def _modifier_problems(about: Subject, modifier: HeaderModifier) -> list[Problem]:
    found = []
    for what, names in (
        ("set", [header.name for header in modifier.set]),
        ("add", [header.name for header in modifier.add]),
        ("remove", list(modifier.remove)),
    ):
        if len(names) > MAX_HEADER_CHANGES:
            found.append(about.invalid(f"{what} lists {len(names)} headers, more than {MAX_HEADER_CHANGES}"))
        seen: set[str] = set()
        for name in names:
            lowered = name.lower()
            if (problem := header_name_problem(lowered)) is not None:
                found.append(about.invalid(problem))
            elif lowered.startswith(":") or lowered in _UNMODIFIABLE_HEADERS:
                found.append(about.invalid(f"{what}: header {name!r} cannot be changed (pseudo-headers and host)"))
            if lowered in seen:
                found.append(about.invalid(f"{what}: header {name!r} is listed twice"))
            seen.add(lowered)
    for header in (*modifier.set, *modifier.add):
        if len(header.value) > MAX_HEADER_VALUE_LENGTH or _BAD_HEADER_VALUE.search(header.value):
            found.append(
                about.invalid(
                    f"value of header {header.name!r} must be at most {MAX_HEADER_VALUE_LENGTH} characters, "
                    "without NUL, CR or LF"
                )
            )
    return found


def _regex_problems(about: Subject, pattern: str) -> list[Problem]:
    problem = regex_problem(pattern)
    return [] if problem is None else [about.invalid(problem)]
