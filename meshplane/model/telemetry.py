"""Telemetry declared by policy: proxies' access logs and tracing, off unless a policy turns them on.

Owns collectors (a name for a gRPC port of a mesh service speaking OTLP), access logs (where:
stdout, stderr, a file or a collector; in what format: Envoy's command operators in a text line,
or named JSON fields), tracing (to which collector, what share of requests, under which service
name), the proxy roles each applies to, per-rule overrides of route tables (a rule's own trace
sampling, or its access log off), and their validation, which lists every problem.

Also owns the one list of Envoy's access-log command operators (`ENVOY_COMMAND_OPERATORS`, each
with its rule: arguments required, optional or none, a length or not, what an argument may hold)
and the parser that holds formats to it (`format_problems`): a format Envoy would refuse is
refused here, with its reason, before any proxy sees it (the inside of a CEL expression, which
only Envoy compiles, aside). It also refuses operators Envoy takes but policy must not use
(`REFUSED_COMMAND_OPERATORS`). Must not do I/O or know Envoy's wire types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum

from meshplane.model.limits import has_control_characters
from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.proxy import ProxyRole
from meshplane.model.routes import RouteTable
from meshplane.model.services import Protocol, Service, ServiceRef, is_dns_label

# The roles whose proxies take access logs and tracing: full Envoys with listeners from meshplane.
# Proxyless gRPC has no access log or tracer it configures over xDS, and Envoy Mobile gets no
# listeners from meshplane: neither takes telemetry.
TELEMETRY_ROLES: tuple[ProxyRole, ...] = (ProxyRole.SIDECAR, ProxyRole.EDGE_GATEWAY, ProxyRole.DEVICE)

# Envoy's default access-log line (its documented default format), without the trailing newline,
# plus the route and upstream cluster: what an operator asks first about a request ("which rule
# took it, where did it go"). Text sinks end each line with a newline.
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %ROUTE_NAME% %UPSTREAM_CLUSTER%'
)


class Arguments(Enum):
    """Whether an operator takes arguments in parentheses: `%REQ(x-foo)%` needs them, `%DURATION%`
    takes none (`%DURATION()%`, empty, is none), `%START_TIME(%s)%` may have them."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class OperatorRule:
    """How Envoy takes one command operator: its `arguments`, whether a `length` may follow
    (`%REQ(x):10%` truncates to 10 characters), and `check`, why Envoy would refuse an argument
    (None when it takes any)."""

    arguments: Arguments = Arguments.NONE
    length: bool = False
    check: Callable[[str], str | None] | None = None


# RFC 9110 token characters: what an HTTP header name is made of.
_HEADER_NAME = re.compile(r":?[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A strftime `%n` (a newline, with any flags): Envoy refuses a time format that would write one.
_TIME_NEWLINE = re.compile(r"%[-_0^#]*[1-9]*[EO]?n")
_METADATA_KINDS = ("DYNAMIC", "CLUSTER", "ROUTE", "UPSTREAM_HOST", "LISTENER", "VIRTUAL_HOST")
_DURATION_PRECISIONS = ("ms", "us", "ns")
_BRACKETS = {")": "(", "]": "[", "}": "{"}


def _headers(argument: str) -> str | None:
    """`name` or `name?alternative` (either may be empty), each a header name (`:path` included)."""
    names = argument.split("?")
    if len(names) > 2:
        return "at most one alternative header (`name?alternative`)"
    bad = [name for name in names if name and not _HEADER_NAME.fullmatch(name)]
    return f"{bad[0]!r} is not a header name" if bad else None


def _time_format(argument: str) -> str | None:
    return "a time format must not write a newline (%n)" if _TIME_NEWLINE.search(argument) else None


def _metadata(argument: str) -> str | None:
    kind = argument.split(":", 1)[0]
    return None if kind in _METADATA_KINDS else f"{kind!r} is not a kind of metadata ({', '.join(_METADATA_KINDS)})"


def _filter_state(argument: str) -> str | None:
    key, _, serialize = argument.partition(":")
    if not key:
        return "a filter state key must not be empty"
    if serialize in ("", "PLAIN", "TYPED") or (serialize.startswith("FIELD:") and serialize != "FIELD:"):
        return None
    return "the key may be followed by :PLAIN, :TYPED or :FIELD:<name> only"


def _common_duration(argument: str) -> str | None:
    parts = argument.split(":")
    if len(parts) not in (2, 3):
        return "give START:END or START:END:PRECISION"
    if len(parts) == 3 and parts[2] not in _DURATION_PRECISIONS:
        return f"precision {parts[2]!r} is not one of {', '.join(_DURATION_PRECISIONS)}"
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(argument: str) -> str | None:
        return None if argument in choices else f"{argument!r} is not one of {', '.join(choices)}"

    return check


def _path(argument: str) -> str | None:
    parts = argument.split(":")
    if parts[0] not in ("WQ", "NQ"):
        return f"{parts[0]!r} is not one of WQ, NQ"
    if len(parts) > 1 and parts[1] not in ("ORIG", "PATH", "ORIG_OR_PATH"):
        return f"{parts[1]!r} is not one of ORIG, PATH, ORIG_OR_PATH"
    return None


def _cel(argument: str) -> str | None:
    """Only the shape of a CEL expression: brackets that pair up, strings that end. Envoy compiles
    it; an expression that parses here may still be one Envoy refuses (see `format_problems`)."""
    open_brackets: list[str] = []
    quote = ""
    escaped = False
    for character in argument:
        if quote:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == quote:
                quote = ""
        elif character in "\"'":
            quote = character
        elif character in "([{":
            open_brackets.append(character)
        elif character in _BRACKETS and (not open_brackets or open_brackets.pop() != _BRACKETS[character]):
            return f"an unpaired {character!r} in the CEL expression"
    if quote:
        return "a string in the CEL expression never ends"
    if open_brackets:
        return f"an unclosed {open_brackets[-1]!r} in the CEL expression"
    return None


_NONE = OperatorRule()
_TIME = OperatorRule(Arguments.OPTIONAL, check=_time_format)
_ANY = OperatorRule(Arguments.OPTIONAL)
_HEADER = OperatorRule(Arguments.REQUIRED, length=True, check=_headers)

# Envoy's access-log command operators, for the Envoy release meshplane is tested against (1.40):
# the "Command Operators" of its access-log docs (configuration/observability/access_log/usage),
# each with the rule that release holds it to. tests/test_telemetry.py has that Envoy accept
# every operator here, and agree with `format_problems` on a list of formats at each rule's edge.
ENVOY_COMMAND_OPERATORS: Mapping[str, OperatorRule] = {
    **dict.fromkeys(
        (
            "ACCESS_LOG_TYPE",
            "BYTES_RECEIVED",
            "BYTES_RETRANSMITTED",
            "BYTES_SENT",
            "CONNECTION_ID",
            "CONNECTION_TERMINATION_DETAILS",
            "CUSTOM_FLAGS",
            "DOWNSTREAM_CX_RTT",
            "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
            "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
            "DOWNSTREAM_DETECTED_CLOSE_TYPE",
            "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
            "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID",
            "DOWNSTREAM_DIRECT_LOCAL_PORT",
            "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
            "DOWNSTREAM_DIRECT_REMOTE_PORT",
            "DOWNSTREAM_HANDSHAKE_DURATION",
            "DOWNSTREAM_HEADER_BYTES_RECEIVED",
            "DOWNSTREAM_HEADER_BYTES_SENT",
            "DOWNSTREAM_LOCAL_ADDRESS",
            "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID",
            "DOWNSTREAM_LOCAL_CLOSE_REASON",
            "DOWNSTREAM_LOCAL_DNS_SAN",
            "DOWNSTREAM_LOCAL_EMAIL_SAN",
            "DOWNSTREAM_LOCAL_IP_SAN",
            "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
            "DOWNSTREAM_LOCAL_PORT",
            "DOWNSTREAM_LOCAL_SUBJECT",
            "DOWNSTREAM_LOCAL_URI_SAN",
            "DOWNSTREAM_PEER_CERT",
            "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
            "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
            "DOWNSTREAM_PEER_CHAIN_SERIALS",
            "DOWNSTREAM_PEER_DNS_SAN",
            "DOWNSTREAM_PEER_EMAIL_SAN",
            "DOWNSTREAM_PEER_FINGERPRINT_1",
            "DOWNSTREAM_PEER_FINGERPRINT_256",
            "DOWNSTREAM_PEER_IP_SAN",
            "DOWNSTREAM_PEER_ISSUER",
            "DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256",
            "DOWNSTREAM_PEER_ISSUER_SERIAL",
            "DOWNSTREAM_PEER_OTHERNAME_SAN",
            "DOWNSTREAM_PEER_SERIAL",
            "DOWNSTREAM_PEER_SUBJECT",
            "DOWNSTREAM_PEER_URI_SAN",
            "DOWNSTREAM_REMOTE_ADDRESS",
            "DOWNSTREAM_REMOTE_PORT",
            "DOWNSTREAM_TLS_CIPHER",
            "DOWNSTREAM_TLS_GROUP",
            "DOWNSTREAM_TLS_SESSION_ID",
            "DOWNSTREAM_TLS_VERSION",
            "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
            "DOWNSTREAM_WIRE_BYTES_RECEIVED",
            "DOWNSTREAM_WIRE_BYTES_SENT",
            "DURATION",
            "FILTER_CHAIN_NAME",
            "GRPC_STATUS_NUMBER",
            "HOSTNAME",
            "LOCAL_REPLY_BODY",
            "PROTOCOL",
            "REQUEST_DURATION",
            "REQUEST_HEADERS_BYTES",
            "REQUEST_TX_DURATION",
            "RESPONSE_CODE",
            "RESPONSE_DURATION",
            "RESPONSE_FLAGS",
            "RESPONSE_FLAGS_LONG",
            "RESPONSE_HEADERS_BYTES",
            "RESPONSE_TRAILERS_BYTES",
            "RESPONSE_TX_DURATION",
            "ROUNDTRIP_DURATION",
            "ROUTE_NAME",
            "ROUTE_RESOLUTION_COUNT",
            "ROUTE_RESOLUTION_TIME_US",
            "SPAN_ID",
            "STREAM_ID",
            "TLS_JA3_FINGERPRINT",
            "TLS_JA4_FINGERPRINT",
            "TRACE_ID",
            "UNIQUE_ID",
            "UPSTREAM_CLUSTER",
            "UPSTREAM_CLUSTER_RAW",
            "UPSTREAM_CONNECTION_ID",
            "UPSTREAM_CONNECTION_IDS_ATTEMPTED",
            "UPSTREAM_CONNECTION_POOL_READY_DURATION",
            "UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
            "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
            "UPSTREAM_DETECTED_CLOSE_TYPE",
            "UPSTREAM_HEADER_BYTES_RECEIVED",
            "UPSTREAM_HEADER_BYTES_SENT",
            "UPSTREAM_HOST",
            "UPSTREAM_HOSTS_ATTEMPTED",
            "UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT",
            "UPSTREAM_HOST_NAME",
            "UPSTREAM_HOST_NAMES_ATTEMPTED",
            "UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT",
            "UPSTREAM_HOST_NAME_WITHOUT_PORT",
            "UPSTREAM_LOCAL_ADDRESS",
            "UPSTREAM_LOCAL_CLOSE_REASON",
            "UPSTREAM_LOCAL_DNS_SAN",
            "UPSTREAM_LOCAL_IP_SAN",
            "UPSTREAM_LOCAL_PORT",
            "UPSTREAM_LOCAL_URI_SAN",
            "UPSTREAM_PEER_CERT",
            "UPSTREAM_PEER_DNS_SAN",
            "UPSTREAM_PEER_IP_SAN",
            "UPSTREAM_PEER_ISSUER",
            "UPSTREAM_PEER_SUBJECT",
            "UPSTREAM_PEER_URI_SAN",
            "UPSTREAM_PROTOCOL",
            "UPSTREAM_REMOTE_ADDRESS",
            "UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID",
            "UPSTREAM_REMOTE_PORT",
            "UPSTREAM_REQUEST_ATTEMPT_COUNT",
            "UPSTREAM_SERVER_NAME",
            "UPSTREAM_TLS_CIPHER",
            "UPSTREAM_TLS_GROUP",
            "UPSTREAM_TLS_SESSION_ID",
            "UPSTREAM_TLS_VERSION",
            "UPSTREAM_TRANSPORT_FAILURE_REASON",
            "UPSTREAM_WIRE_BYTES_RECEIVED",
            "UPSTREAM_WIRE_BYTES_SENT",
            "VIRTUAL_CLUSTER_NAME",
        ),
        _NONE,
    ),
    # A time format (strftime, plus Envoy's %f and %Ns).
    **dict.fromkeys(
        (
            "START_TIME",
            "START_TIME_LOCAL",
            "EMIT_TIME",
            "EMIT_TIME_LOCAL",
            "DOWNSTREAM_PEER_CERT_V_START",
            "DOWNSTREAM_PEER_CERT_V_END",
            "UPSTREAM_PEER_CERT_V_START",
            "UPSTREAM_PEER_CERT_V_END",
        ),
        _TIME,
    ),
    # An address without its port may take a mask (`MASK_PREFIX_LEN`); details may take ALLOW_WHITESPACES.
    **dict.fromkeys(
        (
            "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
            "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
            "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
            "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
            "RESPONSE_CODE_DETAILS",
        ),
        _ANY,
    ),
    **dict.fromkeys(
        ("REQ", "RESP", "TRAILER", "REQUEST_HEADER", "RESPONSE_HEADER", "RESPONSE_TRAILER", "STREAM_INFO_REQ"),
        _HEADER,
    ),
    "PATH": OperatorRule(Arguments.OPTIONAL, length=True, check=_path),
    "QUERY_PARAMS": OperatorRule(Arguments.OPTIONAL, length=True, check=_one_of("ORIG", "DECODED")),
    "QUERY_PARAM": OperatorRule(Arguments.REQUIRED, length=True),
    "GRPC_STATUS": OperatorRule(Arguments.OPTIONAL, check=_one_of("CAMEL_STRING", "SNAKE_STRING", "NUMBER")),
    "REQUESTED_SERVER_NAME": OperatorRule(Arguments.OPTIONAL, check=_one_of("SNI_ONLY", "SNI_FIRST", "HOST_FIRST")),
    "DYNAMIC_METADATA": OperatorRule(Arguments.REQUIRED, length=True),
    "CLUSTER_METADATA": OperatorRule(Arguments.REQUIRED),
    "UPSTREAM_METADATA": OperatorRule(Arguments.REQUIRED),
    "METADATA": OperatorRule(Arguments.REQUIRED, length=True, check=_metadata),
    "FILTER_STATE": OperatorRule(Arguments.REQUIRED, length=True, check=_filter_state),
    "UPSTREAM_FILTER_STATE": OperatorRule(Arguments.REQUIRED, length=True, check=_filter_state),
    "COMMON_DURATION": OperatorRule(Arguments.REQUIRED, check=_common_duration),
    "CEL": OperatorRule(Arguments.REQUIRED, length=True, check=_cel),
}

# Operators Envoy knows that policy files may not use, and why.
REFUSED_COMMAND_OPERATORS: Mapping[str, str] = {
    "ENVIRONMENT": "it would make every proxy write its environment variables (secrets included) to wherever "
    "its access log goes",
    "COALESCE": "its argument is JSON naming further operators, which meshplane does not check",
}

# The largest length Envoy takes (an unsigned 64-bit number).
_MAX_LENGTH = 2**64 - 1

# Bounds: every proxy of a role carries all of these, so they stay small.
MAX_FORMAT_LENGTH = 4096
MAX_JSON_FIELDS = 64
MAX_COLLECTORS = 32
MAX_ACCESS_LOGS = 16
MAX_TRACING = 8
MAX_ROUTE_OVERRIDES = 1024
MAX_PATH_LENGTH = 1024
MAX_SERVICE_NAME_LENGTH = 256

# An operator (Envoy's grammar): `%NAME`, then `(arguments)` or not, then `:length` or not, then
# `%`. The arguments end at the first `)` that a length or the closing `%` follows, and hold no
# newline: `%CEL(size("a)"))%` has the argument `size("a)")`, `%START_TIME(%s)%` has `%s`.
_NAME = re.compile(r"[A-Z0-9_]+")
_END = re.compile(r"(?::([0-9]+))?%")
_ARGUMENTS_END = re.compile(r"\)(?::([0-9]+))?%")
_JSON_FIELD = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class LogSink(StrEnum):
    """Where a proxy writes an access log: its stdout or stderr, a file on its host, or a collector."""

    STDOUT = "stdout"
    STDERR = "stderr"
    FILE = "file"
    COLLECTOR = "collector"


@dataclass(frozen=True, slots=True)
class Collector:
    """An OpenTelemetry collector: a gRPC port of a mesh service that takes OTLP (logs, traces).
    `port` (name or number) may be omitted for a single-port service."""

    name: str
    service: ServiceRef
    port: str | int | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class AccessLog:
    """One access log of every proxy of `roles` (empty: every role that takes telemetry; the
    policy files never give an empty list, which would read as "no role").

    `sink` says where: `path` names the file of FILE, `collector` the collector of COLLECTOR.
    The format is `json_fields` (field name → operators) when given, else `text_format`, else
    `DEFAULT_TEXT_FORMAT`. A collector gets the text line as the log record's body, or the JSON
    fields as its attributes."""

    sink: LogSink = LogSink.STDOUT
    path: str = ""
    collector: str = ""
    text_format: str = ""
    json_fields: tuple[tuple[str, str], ...] = ()
    roles: tuple[ProxyRole, ...] = ()
    origin: str = ""

    def applies_to(self, role: ProxyRole) -> bool:
        return role in (self.roles or TELEMETRY_ROLES)

    @property
    def text(self) -> str:
        """The text line this log writes (when it has no JSON fields)."""
        return self.text_format or DEFAULT_TEXT_FORMAT


@dataclass(frozen=True, slots=True)
class Tracing:
    """Tracing for every proxy of `roles` (empty: every role that takes telemetry): spans to
    `collector` under `service_name` (empty: the role's name). `sampling` (0-100) is the percent
    of requests traced among those the proxy decides about: the ones arriving without a decision
    an earlier Envoy recorded in their `x-request-id`. A request an earlier proxy traced is traced
    whatever this sampling; a W3C `traceparent` alone carries no decision Envoy follows (see
    `meshplane.xds.translate.telemetry`)."""

    collector: str
    sampling: float = 100.0
    service_name: str = ""
    roles: tuple[ProxyRole, ...] = ()
    origin: str = ""

    def applies_to(self, role: ProxyRole) -> bool:
        return role in (self.roles or TELEMETRY_ROLES)


@dataclass(frozen=True, slots=True)
class RouteTelemetry:
    """What one named rule of a route table does differently: its own trace `sampling` percent
    (None: the proxy's), or its access log off (`access_log` False; None or True: logged)."""

    route: str
    rule: str
    access_log: bool | None = None
    sampling: float | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Every telemetry setting of the mesh, in the order the policy files give them. `Telemetry()`
    is none at all: no proxy gets an access log or a tracer."""

    collectors: tuple[Collector, ...] = ()
    access_logs: tuple[AccessLog, ...] = ()
    tracing: tuple[Tracing, ...] = ()
    routes: tuple[RouteTelemetry, ...] = ()

    @staticmethod
    def joined(parts: Sequence[Telemetry]) -> Telemetry:
        """The settings of several files (each file's `telemetry:` sections) as one."""
        return Telemetry(
            collectors=tuple(c for part in parts for c in part.collectors),
            access_logs=tuple(a for part in parts for a in part.access_logs),
            tracing=tuple(t for part in parts for t in part.tracing),
            routes=tuple(r for part in parts for r in part.routes),
        )

    def collector(self, name: str) -> Collector | None:
        return next((collector for collector in self.collectors if collector.name == name), None)

    def access_logs_of(self, role: ProxyRole) -> tuple[AccessLog, ...]:
        return tuple(log for log in self.access_logs if log.applies_to(role))

    def tracing_of(self, role: ProxyRole) -> Tracing | None:
        """The tracing of `role` (a valid mesh has at most one per role)."""
        return next((tracing for tracing in self.tracing if tracing.applies_to(role)), None)

    def route_override(self, route: str, rule: str | None) -> RouteTelemetry | None:
        if rule is None:
            return None
        return next((o for o in self.routes if o.route == route and o.rule == rule), None)

    @property
    def logs_off_anywhere(self) -> bool:
        """Whether some rule turns its access log off (access logs then carry a route filter)."""
        return any(override.access_log is False for override in self.routes)

    def problems(self, services: Mapping[ServiceRef, Service], routes: Sequence[RouteTable]) -> list[Problem]:
        """Every reason these settings cannot be served against `services` and `routes`."""
        found: list[Problem] = []
        found += _count_problems(self)
        names: dict[str, Collector] = {}
        for collector in self.collectors:
            about = _subject(f"collector {collector.name}", collector.origin)
            if not is_dns_label(collector.name):
                found.append(about.invalid("the name must be a lowercase RFC 1123 label"))
            if (twin := names.get(collector.name)) is not None:
                found.append(
                    Problem(
                        ProblemKind.DUPLICATE,
                        about.name,
                        collector.origin,
                        f"{about.heading} is defined twice: in {twin.origin} and in {collector.origin}",
                    )
                )
            names[collector.name] = collector
            found += collector_problems(about, collector, services.get(collector.service))
        for index, log in enumerate(self.access_logs):
            found += _access_log_problems(_subject(f"access log {index + 1}", log.origin), log, names)
        covered: dict[ProxyRole, Tracing] = {}
        for tracing in self.tracing:
            about = _subject("tracing", tracing.origin)
            if tracing.collector not in names:
                found.append(about.invalid(f"unknown collector {tracing.collector!r}{_known(names)}"))
            if not 0 <= tracing.sampling <= 100:
                found.append(about.invalid(f"sampling {tracing.sampling:g} is not a percent from 0 to 100"))
            if len(tracing.service_name) > MAX_SERVICE_NAME_LENGTH or has_control_characters(tracing.service_name):
                found.append(
                    about.invalid(f"service_name must be at most {MAX_SERVICE_NAME_LENGTH} printable characters")
                )
            found += _role_problems(about, tracing.roles)
            for role in tracing.roles or TELEMETRY_ROLES:
                if (other := covered.get(role)) is not None:
                    found.append(about.problem(ProblemKind.CONFLICT, f"role {role} is traced by {other.origin} too"))
                covered.setdefault(role, tracing)
        found += _override_problems(self.routes, routes)
        return found


# No telemetry at all: the default of every mesh.
NO_TELEMETRY = Telemetry()


def collector_problems(about: Subject, collector: Collector, service: Service | None) -> list[Problem]:
    """Why `collector` cannot be reached (`service`: the service it names, None when none has its
    name): an unknown service, an ambiguous or unknown port, a port that is not gRPC."""
    if service is None:
        return [about.problem(ProblemKind.UNKNOWN_SERVICE, f"unknown service {collector.service}")]
    if collector.port is None and len(service.ports) > 1:
        return [about.invalid(f"service {collector.service} has several ports; name one")]
    port = service.port(collector.port)
    if port is None:
        return [about.problem(ProblemKind.UNKNOWN_PORT, f"service {collector.service} has no port {collector.port!r}")]
    if port.protocol is not Protocol.GRPC:
        return [about.invalid(f"port {port.name} of {collector.service} is {port.protocol}, not grpc (OTLP is gRPC)")]
    return []


def format_problems(text: str) -> list[str]:
    """Why Envoy would refuse `text` as an access-log format, empty when it would take it: a `%`
    that starts no operator (write `%%` for a literal one), arguments never closed, an operator it
    does not know, arguments or a length an operator does not take, an argument Envoy refuses
    (a header name with a space, an unknown kind of metadata…). Also refuses the operators of
    `REFUSED_COMMAND_OPERATORS`, which Envoy takes. One limit: a CEL expression is checked for
    its brackets and strings only; Envoy compiles it, and refuses one naming an unknown function
    or field. A `%` that ends the parse stops it: what follows is not read.
    """
    found: list[str] = []
    position = 0
    while (start := text.find("%", position)) != -1:
        if text.startswith("%%", start):
            position = start + 2
            continue
        name_match = _NAME.match(text, start + 1)
        if name_match is None:
            found.append(f"a '%' at character {start + 1} starts no %OPERATOR% (write %% for a literal %)")
            break
        name = name_match.group()
        arguments: str | None = None
        if text.startswith("(", name_match.end()):
            end = _ARGUMENTS_END.search(text, name_match.end() + 1)
            line_end = text.find("\n", name_match.end())
            if end is None or (line_end != -1 and line_end < end.start()):
                found.append(f"the '(' after %{name} at character {start + 1} is never closed by ')%' on its line")
                break
            arguments = text[name_match.end() + 1 : end.start()]
        else:
            end = _END.match(text, name_match.end())
            if end is None:
                found.append(f"a '%' at character {start + 1} starts no %OPERATOR% (write %% for a literal %)")
                break
        found += _operator_problems(name, arguments, end.group(1))
        position = end.end()
    return found


def _operator_problems(name: str, arguments: str | None, length: str | None) -> list[str]:
    """Why Envoy would refuse operator `name` with `arguments` (None: no parentheses) and
    `length` (None: none)."""
    if (refusal := REFUSED_COMMAND_OPERATORS.get(name)) is not None:
        return [f"%{name}(...)% is refused: {refusal}"]
    rule = ENVOY_COMMAND_OPERATORS.get(name)
    if rule is None:
        return [f"unknown operator %{name}%"]
    found = []
    if arguments and rule.arguments is Arguments.NONE:
        found.append(f"%{name}% takes no argument (found '({arguments})')")
    elif not arguments and rule.arguments is Arguments.REQUIRED:
        found.append(f"%{name}% needs an argument: %{name}(...)%")
    elif arguments and rule.check is not None and (reason := rule.check(arguments)) is not None:
        found.append(f"%{name}({arguments})%: {reason}")
    if length is not None:
        if not rule.length:
            found.append(f"%{name}% takes no length (found ':{length}')")
        elif int(length) > _MAX_LENGTH:
            found.append(f"%{name}%: the length {length} is more than {_MAX_LENGTH}")
    return found


def _count_problems(telemetry: Telemetry) -> list[Problem]:
    limits = (
        ("collectors", len(telemetry.collectors), MAX_COLLECTORS),
        ("access logs", len(telemetry.access_logs), MAX_ACCESS_LOGS),
        ("tracing settings", len(telemetry.tracing), MAX_TRACING),
        ("route overrides", len(telemetry.routes), MAX_ROUTE_OVERRIDES),
    )
    return [
        Problem(ProblemKind.INVALID, "telemetry", "", f"telemetry: {count} {what}, more than the {limit} allowed")
        for what, count, limit in limits
        if count > limit
    ]


def _access_log_problems(about: Subject, log: AccessLog, collectors: Mapping[str, Collector]) -> list[Problem]:
    found = []
    if log.sink is LogSink.FILE:
        if not log.path.startswith("/"):
            found.append(about.invalid("a file access log needs an absolute `path`"))
        elif len(log.path) > MAX_PATH_LENGTH or has_control_characters(log.path):
            found.append(about.invalid(f"path must be at most {MAX_PATH_LENGTH} printable characters"))
    elif log.path:
        found.append(about.invalid(f"`path` is for file access logs, not {log.sink}"))
    if log.sink is LogSink.COLLECTOR:
        if log.collector not in collectors:
            found.append(about.invalid(f"unknown collector {log.collector!r}{_known(collectors)}"))
    elif log.collector:
        found.append(about.invalid(f"`collector` is for collector access logs, not {log.sink}"))
    if log.text_format and log.json_fields:
        found.append(about.invalid("use either a text `format` or `json` fields, not both"))
    if len(log.text_format) > MAX_FORMAT_LENGTH:
        found.append(about.invalid(f"the format is longer than {MAX_FORMAT_LENGTH} characters"))
    else:
        found += [about.invalid(f"format: {reason}") for reason in format_problems(log.text_format)]
    if len(log.json_fields) > MAX_JSON_FIELDS:
        found.append(about.invalid(f"{len(log.json_fields)} json fields, more than the {MAX_JSON_FIELDS} allowed"))
    seen: set[str] = set()
    for name, value in log.json_fields:
        if not _JSON_FIELD.fullmatch(name):
            found.append(about.invalid(f"json field {name!r}: a name is 1-128 letters, digits, '_', '.' or '-'"))
        if name in seen:
            found.append(about.invalid(f"json field {name!r} is given twice"))
        seen.add(name)
        if len(value) > MAX_FORMAT_LENGTH:
            found.append(about.invalid(f"json field {name!r} is longer than {MAX_FORMAT_LENGTH} characters"))
            continue
        found += [about.invalid(f"json field {name!r}: {reason}") for reason in format_problems(value)]
    return found + _role_problems(about, log.roles)


def _role_problems(about: Subject, roles: tuple[ProxyRole, ...]) -> list[Problem]:
    found = []
    for role in roles:
        if role not in TELEMETRY_ROLES:
            found.append(
                about.invalid(
                    f"role {role} takes no access logs or tracing from meshplane (roles: {', '.join(TELEMETRY_ROLES)})"
                )
            )
    if len(set(roles)) != len(roles):
        found.append(about.invalid("a role is listed twice"))
    return found


def _override_problems(overrides: Sequence[RouteTelemetry], routes: Sequence[RouteTable]) -> list[Problem]:
    found = []
    rules = {table.name: {rule.name for rule in table.rules if rule.name} for table in routes}
    seen: dict[tuple[str, str], RouteTelemetry] = {}
    for override in overrides:
        about = _subject(f"telemetry of route {override.route} rule {override.rule}", override.origin)
        if override.route not in rules:
            found.append(about.invalid(f"unknown route {override.route!r}"))
        elif override.rule not in rules[override.route]:
            found.append(about.invalid(f"route {override.route} has no rule named {override.rule!r}"))
        if override.sampling is not None and not 0 <= override.sampling <= 100:
            found.append(about.invalid(f"sampling {override.sampling:g} is not a percent from 0 to 100"))
        if override.access_log is None and override.sampling is None:
            found.append(about.invalid("says nothing: give `access_log`, `sampling` or both"))
        key = (override.route, override.rule)
        if (twin := seen.get(key)) is not None:
            found.append(
                Problem(
                    ProblemKind.DUPLICATE,
                    about.name,
                    override.origin,
                    f"{about.heading} is defined twice: in {twin.origin} and in {override.origin}",
                )
            )
        seen[key] = override
    return found


def _subject(name: str, origin: str) -> Subject:
    """A telemetry setting as its messages name it: `file:line: name: reason`, the policy-file error
    form, so an operator finds the line before reading the rest."""
    return Subject(name, origin, f"{origin}: {name}" if origin else name)


def _known(names: Mapping[str, object]) -> str:
    return f" (collectors: {', '.join(names)})" if names else " (no collector is defined)"
