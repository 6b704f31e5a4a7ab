"""The policy format's fields, declared once: every section, its keys, each key's type and bounds.

Owns `SECTIONS`, the one table the policy format is described by. From it come the reader's
`KEYS` (`policy_schema.KEYS`, the keys each section accepts, in this order), the CustomResource
definitions' OpenAPI schemas (`meshplane_api.crds`), the conversion of durations written as numbers
(`meshplane_api.convert`), and the tests that hold the reader to it (a value of the wrong type is
refused naming its key; an enum's values are its StrEnum's). Bounds come from the model's own
constants, so a range is written once. Must not read anything, nor import the reader (which
imports this).

A field's type is one of: `Text` (optional pattern, max length), `Integer` (bounds, or a set of
values), `Number` (bounds), `Boolean`, `Duration` (a number of seconds or a string like "250ms"),
`Choice` (the values of a StrEnum, or of a fixed tuple), `NameOrNumber` (a port by name or
number), `ListOf` (items, max items), `Section` (a mapping read by the section named), `FreeMap`
(any string keys, values of one type) and `OneOf` (shorthands: the first type that fits).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from meshplane.model import (
    HTTP_METHODS,
    REDIRECT_STATUSES,
    EndpointHealth,
    HealthCheckProtocol,
    LoadBalancing,
    LogSink,
    Protocol,
    ProxyRole,
    TargetKind,
)
from meshplane.model.device_policy import (
    MAX_ACCESS,
    MAX_AUDIENCES,
    MAX_JWKS_BYTES,
    MAX_PATH_LENGTH,
    MAX_PATHS,
    MAX_PROVIDERS,
    MAX_SELECTED,
    DefaultAccess,
)
from meshplane.model.routes import (
    MAX_CORS_ENTRIES,
    MAX_CORS_MAX_AGE,
    MAX_HEADER_CHANGES,
    MAX_MIRRORS,
    MAX_QUERY_MATCHES,
    MAX_RATE_LIMIT_TOKENS,
)
from meshplane.model.services import (
    MAX_DNS_NAME,
    MAX_DNS_RESOLVERS,
    MAX_ENDPOINT_WEIGHT,
    MAX_PORT,
    MIN_ENDPOINT_WEIGHT,
    MIN_PORT,
    DnsResolution,
    LookupFamily,
)
from meshplane.model.sites import MAX_GATEWAYS, MAX_RANGES, ClientCertificates, ToDevices
from meshplane.model.telemetry import (
    MAX_ACCESS_LOGS,
    MAX_COLLECTORS,
    MAX_JSON_FIELDS,
    MAX_ROUTE_OVERRIDES,
    MAX_TRACING,
)


@dataclass(frozen=True, slots=True)
class Text:
    pattern: str | None = None
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class Integer:
    minimum: int | None = None
    maximum: int | None = None
    values: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Number:
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True)
class Boolean:
    pass


@dataclass(frozen=True, slots=True)
class Duration:
    pass


@dataclass(frozen=True, slots=True)
class Choice:
    """One of `values`; `enum` is the model's StrEnum they come from (None: a fixed tuple)."""

    values: tuple[str, ...]
    enum: type[StrEnum] | None = None

    @staticmethod
    def of(enum: type[StrEnum]) -> Choice:
        return Choice(tuple(member.value for member in enum), enum)


@dataclass(frozen=True, slots=True)
class NameOrNumber:
    """A port by name (a string) or by number (1-65535)."""


@dataclass(frozen=True, slots=True)
class ListOf:
    item: FieldType
    max_items: int | None = None
    min_items: int | None = None


@dataclass(frozen=True, slots=True)
class Section:
    """A mapping whose keys are the fields of `SECTIONS[name]`."""

    name: str


@dataclass(frozen=True, slots=True)
class FreeMap:
    """A mapping of any string keys (header names, port names…) to values of `value`."""

    value: FieldType
    max_properties: int | None = None


@dataclass(frozen=True, slots=True)
class OneOf:
    """A shorthand: the value is any of `types` (e.g. a backend as "name" or as a mapping)."""

    types: tuple[FieldType, ...]


FieldType = Text | Integer | Number | Boolean | Duration | Choice | NameOrNumber | ListOf | Section | FreeMap | OneOf


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a section: its type, whether the reader needs it, and a line for the CRD."""

    key: str
    type: FieldType
    required: bool = False
    description: str = ""


PERCENT = Number(0, 100)
PORT = Integer(MIN_PORT, MAX_PORT)
# A service reference: "name" (in the default namespace, or the object's) or "namespace/name".
SERVICE_REF = Text(r"^[^/]+(/[^/]+)?$", 253)
# Kubernetes' own bounds for a name (an RFC 1123 subdomain) and a label (a namespace).
NAME = Text(max_length=253)
STRINGS = ListOf(Text())
_HEADER_CHANGES = Section("route.rules.request_headers")
_STRING_MAP = FreeMap(Text(), MAX_HEADER_CHANGES)

SECTIONS: Mapping[str, tuple[Field, ...]] = {
    "document": (
        Field("services", ListOf(Section("service"))),
        Field("routes", ListOf(Section("route"))),
        Field("secrets", ListOf(Section("secret"))),
        Field("sites", ListOf(Section("site"))),
        Field("device_policies", ListOf(Section("device_policy"))),
        Field("telemetry", Section("telemetry")),
    ),
    "service": (
        Field("name", NAME, required=True),
        Field("namespace", Text(max_length=63)),
        Field("hosts", STRINGS, description="Extra host names clients may use."),
        Field("port", PORT, description="The one port (with `protocol`); or use `ports`."),
        Field("protocol", Choice.of(Protocol)),
        Field("ports", ListOf(Section("service.ports"))),
        Field("endpoints", ListOf(Section("service.endpoints"))),
        Field("dns", Section("service.dns"), description="How proxies resolve endpoints named by DNS."),
        Field("policy", Section("service.policy")),
        Field("tls", Section("service.tls")),
    ),
    "service.dns": (
        Field("resolution", Choice.of(DnsResolution)),
        Field("refresh", Duration(), description="Between two lookups; absent: each answer's TTL."),
        Field("lookup_family", Choice.of(LookupFamily)),
        Field("resolvers", ListOf(Text(max_length=47), MAX_DNS_RESOLVERS), description="IP[:port] of DNS servers."),
    ),
    "service.ports": (
        Field("name", Text(max_length=15)),
        Field("port", PORT, required=True),
        Field("protocol", Choice.of(Protocol)),
    ),
    "service.endpoints": (
        Field("address", Text(max_length=MAX_DNS_NAME), required=True, description="An IP address or a DNS name."),
        Field("port", PORT),
        Field("ports", FreeMap(PORT)),
        Field("zone", Text()),
        Field("region", Text()),
        Field("sub_zone", Text()),
        Field("health", Choice.of(EndpointHealth)),
        Field("weight", Integer(MIN_ENDPOINT_WEIGHT, MAX_ENDPOINT_WEIGHT)),
    ),
    "service.policy": (
        Field("connect_timeout", Duration()),
        Field("load_balancing", Choice.of(LoadBalancing)),
        Field("hash_key", Section("service.policy.hash_key")),
        Field("circuit_breakers", Section("service.policy.circuit_breakers")),
        Field("outlier_detection", Section("service.policy.outlier_detection")),
        Field("health_check", Section("service.policy.health_check")),
        Field("locality_failover", Boolean()),
    ),
    "service.policy.hash_key": (
        Field("header", Text()),
        Field("cookie", Text()),
        Field("source_ip", Boolean()),
    ),
    "service.policy.circuit_breakers": (
        Field("max_connections", Integer(0)),
        Field("max_pending_requests", Integer(0)),
        Field("max_requests", Integer(0)),
        Field("max_retries", Integer(0)),
    ),
    "service.policy.outlier_detection": (
        Field("consecutive_5xx", Integer(1)),
        Field("consecutive_gateway_failure", Integer(1)),
        Field("interval", Duration()),
        Field("base_ejection_time", Duration()),
        Field("max_ejection_percent", Integer(0, 100)),
    ),
    "service.policy.health_check": (
        Field("protocol", Choice.of(HealthCheckProtocol)),
        Field("path", Text()),
        Field("interval", Duration()),
        Field("timeout", Duration()),
        Field("unhealthy_threshold", Integer(1)),
        Field("healthy_threshold", Integer(1)),
    ),
    "service.tls": (
        Field("trust", Text(), required=True, description="The CA bundle secret to verify endpoints with."),
        Field("sni", Text(max_length=255)),
        Field("client_certificate", Text()),
    ),
    "route": (
        Field("name", NAME, required=True),
        Field("service", SERVICE_REF, description="The service whose traffic this route table routes."),
        Field("hosts", STRINGS),
        Field("rules", ListOf(Section("route.rules"))),
    ),
    "route.rules": (
        Field("name", Text(max_length=63)),
        Field("match", Section("route.rules.match")),
        Field("backends", ListOf(OneOf((SERVICE_REF, Section("route.rules.backends"))))),
        Field("to", ListOf(OneOf((SERVICE_REF, Section("route.rules.backends"))))),
        Field("timeout", Duration()),
        Field("retries", Section("route.rules.retries")),
        Field("rewrite", Section("route.rules.rewrite")),
        Field("request_headers", _HEADER_CHANGES),
        Field("response_headers", Section("route.rules.response_headers")),
        Field("redirect", Section("route.rules.redirect")),
        Field("mirror", ListOf(OneOf((SERVICE_REF, Section("route.rules.mirror"))), MAX_MIRRORS)),
        Field("fault", Section("route.rules.fault")),
        Field("rate_limit", Section("route.rules.rate_limit")),
        Field("cors", Section("route.rules.cors")),
    ),
    "route.rules.match": (
        Field("path", Section("route.rules.match.path")),
        Field("method", Choice(HTTP_METHODS)),
        Field("headers", ListOf(Section("route.rules.match.headers"))),
        Field("query", ListOf(Section("route.rules.match.query"), MAX_QUERY_MATCHES)),
    ),
    "route.rules.match.path": (
        Field("prefix", Text()),
        Field("exact", Text()),
        Field("regex", Text()),
    ),
    "route.rules.match.headers": (
        Field("name", Text(), required=True),
        Field("exact", Text()),
        Field("prefix", Text()),
        Field("regex", Text()),
        Field("present", Boolean()),
        Field("invert", Boolean()),
    ),
    "route.rules.match.query": (
        Field("name", Text(), required=True),
        Field("exact", Text()),
        Field("regex", Text()),
    ),
    "route.rules.backends": (
        Field("service", SERVICE_REF, required=True),
        Field("port", NameOrNumber()),
        Field("weight", Integer(0)),
    ),
    "route.rules.mirror": (
        Field("service", SERVICE_REF, required=True),
        Field("port", NameOrNumber()),
        Field("percent", PERCENT),
    ),
    "route.rules.fault": (
        Field("delay", Section("route.rules.fault.delay")),
        Field("abort", Section("route.rules.fault.abort")),
    ),
    "route.rules.fault.delay": (
        Field("duration", Duration(), required=True),
        Field("percent", PERCENT),
    ),
    "route.rules.fault.abort": (
        Field("status", Integer(200, 599), required=True),
        Field("percent", PERCENT),
    ),
    "route.rules.rate_limit": (
        Field("requests", Integer(1, MAX_RATE_LIMIT_TOKENS), required=True),
        Field("interval", Duration()),
        Field("burst", Integer(1, MAX_RATE_LIMIT_TOKENS)),
        Field("per_header", Text()),
    ),
    "route.rules.cors": (
        Field("allow_origins", ListOf(Text(), MAX_CORS_ENTRIES), required=True),
        Field("allow_methods", ListOf(Text(), MAX_CORS_ENTRIES)),
        Field("allow_headers", ListOf(Text(), MAX_CORS_ENTRIES)),
        Field("expose_headers", ListOf(Text(), MAX_CORS_ENTRIES)),
        Field("max_age", Integer(0, MAX_CORS_MAX_AGE)),
        Field("allow_credentials", Boolean()),
    ),
    "route.rules.retries": (
        # A list of conditions, or Envoy's own spelling: "5xx,reset,connect-failure".
        Field("on", OneOf((STRINGS, Text()))),
        Field("attempts", Integer(0, 10)),
        Field("per_try_timeout", Duration()),
    ),
    "route.rules.rewrite": (
        Field("prefix", Text()),
        Field("path", Text()),
        Field("hostname", Text()),
    ),
    "route.rules.request_headers": (
        Field("set", _STRING_MAP),
        Field("add", _STRING_MAP),
        Field("remove", ListOf(Text(), MAX_HEADER_CHANGES)),
    ),
    "route.rules.response_headers": (
        Field("set", _STRING_MAP),
        Field("add", _STRING_MAP),
        Field("remove", ListOf(Text(), MAX_HEADER_CHANGES)),
    ),
    "route.rules.redirect": (
        Field("scheme", Choice(("http", "https"))),
        Field("hostname", Text()),
        Field("port", PORT),
        Field("path", Text()),
        Field("prefix", Text()),
        Field("status", Integer(values=REDIRECT_STATUSES)),
    ),
    "secret": (
        Field("name", Text(), required=True),
        Field("certificate_file", Text()),
        Field("key_file", Text()),
        Field("ca_file", Text()),
    ),
    "site": (
        Field("id", Text(max_length=63), required=True),
        Field("region", Text(), required=True),
        Field("zone", Text()),
        Field("gateways", ListOf(Text(), MAX_GATEWAYS), description='"address:port" ("[address]:port" for IPv6).'),
        Field("device_ranges", ListOf(Text(), MAX_RANGES), description="CIDRs the site's devices register from."),
        Field("tls", Section("site.tls")),
    ),
    "site.tls": (
        Field("certificate", Text(), required=True, description="The gateways' certificate secret."),
        Field("client_certificates", Choice.of(ClientCertificates)),
        Field("to_devices", Choice.of(ToDevices)),
    ),
    "device_policy": (
        Field("name", Text(max_length=253), required=True),
        Field("sites", ListOf(Text(max_length=63), MAX_SELECTED), description="Where it applies (none: everywhere)."),
        Field("classes", ListOf(Text(max_length=63), MAX_SELECTED), description="Device classes (none: every class)."),
        Field("default", Choice.of(DefaultAccess), description="What unrestricted classes may reach."),
        Field("allow", ListOf(Section("device_policy.allow"), MAX_ACCESS), description="What its classes may reach."),
        Field("rate_limit", Section("device_policy.rate_limit"), description="Requests per device."),
        Field("jwt_providers", ListOf(Section("device_policy.jwt_providers"), MAX_PROVIDERS)),
        Field("require_jwt", ListOf(Section("device_policy.allow"), MAX_ACCESS), description="Services needing a JWT."),
    ),
    "device_policy.allow": (
        Field("service", SERVICE_REF, required=True),
        Field("paths", ListOf(Section("device_policy.allow.paths"), MAX_PATHS)),
        Field("methods", ListOf(Choice(HTTP_METHODS))),
    ),
    "device_policy.allow.paths": (
        Field("exact", Text(max_length=MAX_PATH_LENGTH)),
        Field("prefix", Text(max_length=MAX_PATH_LENGTH)),
    ),
    "device_policy.rate_limit": (
        Field("requests", Integer(1, MAX_RATE_LIMIT_TOKENS), required=True),
        Field("interval", Duration()),
        Field("burst", Integer(1, MAX_RATE_LIMIT_TOKENS)),
    ),
    "device_policy.jwt_providers": (
        Field("name", Text(max_length=63), required=True),
        Field("issuer", Text(), required=True),
        Field("audiences", ListOf(Text(), MAX_AUDIENCES)),
        Field("jwks", Text(max_length=MAX_JWKS_BYTES), description="A JWKS document (JSON)."),
        Field("jwks_file", Text(), description="A JWKS file, relative to the policy file."),
        Field("jwks_uri", Text(), description="http://<service host>:<port>/<path> of a mesh service."),
    ),
    "telemetry": (
        Field("collectors", ListOf(Section("telemetry.collectors"), MAX_COLLECTORS)),
        Field("access_logs", ListOf(Section("telemetry.access_logs"), MAX_ACCESS_LOGS)),
        Field("tracing", ListOf(Section("telemetry.tracing"), MAX_TRACING)),
        Field("routes", ListOf(Section("telemetry.routes"), MAX_ROUTE_OVERRIDES)),
    ),
    "telemetry.collectors": (
        Field("name", Text(), required=True),
        Field("service", SERVICE_REF, required=True),
        Field("port", NameOrNumber()),
    ),
    "telemetry.access_logs": (
        Field("to", Choice.of(LogSink), required=True),
        Field("path", Text()),
        Field("collector", Text()),
        Field("format", Text()),
        Field("json", FreeMap(Text(), MAX_JSON_FIELDS)),
        Field("roles", ListOf(Choice.of(ProxyRole))),
    ),
    "telemetry.tracing": (
        Field("collector", Text(), required=True),
        Field("sampling", PERCENT),
        Field("service_name", Text()),
        Field("roles", ListOf(Choice.of(ProxyRole))),
    ),
    "telemetry.routes": (
        Field("route", Text(), required=True),
        Field("rule", Text(), required=True),
        Field("access_log", Boolean()),
        Field("sampling", PERCENT),
    ),
    # A TrafficPolicy's spec: the services it applies to, and a service's `policy` and `tls` keys.
    "traffic_policy": (
        Field(
            "target_refs",
            ListOf(Section("traffic_policy.target_refs"), 16, 1),
            required=True,
            description="The services this policy applies to, as the Gateway API's targetRefs.",
        ),
        Field("connect_timeout", Duration()),
        Field("load_balancing", Choice.of(LoadBalancing)),
        Field("hash_key", Section("service.policy.hash_key")),
        Field("circuit_breakers", Section("service.policy.circuit_breakers")),
        Field("outlier_detection", Section("service.policy.outlier_detection")),
        Field("health_check", Section("service.policy.health_check")),
        Field("locality_failover", Boolean()),
        Field("tls", Section("service.tls")),
    ),
    "traffic_policy.target_refs": (
        Field("group", Choice(("", "meshplane.io")), description='"" (core) for a Service; "meshplane.io" otherwise.'),
        Field("kind", Choice.of(TargetKind), required=True),
        Field("name", NAME, required=True),
    ),
}

# The keys of the sections `traffic_policy` shares with a service's `policy`.
POLICY_KEYS = tuple(field.key for field in SECTIONS["service.policy"])


def keys_of(sections: Mapping[str, tuple[Field, ...]]) -> dict[str, tuple[str, ...]]:
    """Each section's keys, in table order (what `policy_schema.KEYS` is)."""
    return {section: tuple(field.key for field in fields) for section, fields in sections.items()}


def field_of(section: str, key: str) -> Field | None:
    """The field `key` of `section`, or None."""
    return next((field for field in SECTIONS.get(section, ()) if field.key == key), None)
