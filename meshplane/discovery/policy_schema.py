"""The policy-file format: YAML text in, model objects and `path:line: reason` errors out.

Owns the format documented in docs/policy-files.md: its keys (`KEYS`), their types and defaults,
durations, and every error a file can have before the model sees it. Pure: no file system, no
clock. The caller passes the text and the name to report it under (the file's path); each model
object's `origin` is `name:line` of its definition, so the model's own problems (ranges, names,
duplicates across files, unknown references) point at the right file and line too.

The keys of each section and their types are declared once, in `policy_fields.SECTIONS` (`KEYS`
is derived from it; tests hold this reader to it). A document with `apiVersion: meshplane.io/…` is
an object of meshplane's own kinds: its `spec` is one section, read by this module's readers with
metadata standing for the section's identity (`read_kind_spec`); the API server's objects are read
by the same function (`read_spec`, for `meshplane_api/parse.py`), so there is one reader of them.

A document with `apiVersion` (or `kind` and no policy key) is a Gateway API object: read into the
JSON the API server would send and parsed by the Gateway API source's own typed parsers (never a
second parser), their problems reported at the line of the field they name (`GatewayApiDocument`).

Secrets come back as file references (`CertificateFiles`, `TrustBundleFile`), not PEM: reading the
files is I/O, which belongs to the caller (`policy_files`).

Checks that the model owns (port and weight ranges, name syntax, weights adding up) stay in the
model, so they are written once. This module reports what only it can see: YAML syntax, shapes,
types, unknown keys, enum values, and references it can resolve locally (an endpoint's port name).
Regexes and header names of route matches are held to the model's limits (`regex_problem`,
`header_name_problem`) here too, so their errors name their own line rather than the route's.
A bad field is reported and left at its default, so one mistake does not cascade into others.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshplane.discovery.gateway_api.fields import DNS_LABEL, DNS_SUBDOMAIN, Parsed
from meshplane.discovery.gateway_api.gateway_classes import parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.grpc_routes import parse_grpc_route
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.objects import (
    BACKEND_TLS_POLICY,
    GATEWAY,
    GATEWAY_CLASS,
    GRPC_ROUTE,
    HTTP_ROUTE,
    REFERENCE_GRANT,
)
from meshplane.discovery.gateway_api.reference_grants import parse_reference_grant
from meshplane.discovery.gateway_api.references import GATEWAY_GROUP
from meshplane.discovery.meshplane_api.kinds import API_VERSION as MESHPLANE_API_VERSION
from meshplane.discovery.meshplane_api.kinds import GROUP as MESHPLANE_GROUP
from meshplane.discovery.meshplane_api.kinds import KINDS as MESHPLANE_KINDS
from meshplane.discovery.meshplane_api.kinds import Kind, kind_named
from meshplane.discovery.policy_fields import POLICY_KEYS, SECTIONS, keys_of
from meshplane.discovery.policy_yaml import LibyamlPolicyLoader, PythonPolicyLoader
from meshplane.model import (
    HTTP_METHODS,
    REDIRECT_STATUSES,
    RETRY_CONDITIONS,
    AccessLog,
    CircuitBreakers,
    Collector,
    CorsPolicy,
    Endpoint,
    EndpointHealth,
    FaultAbort,
    FaultDelay,
    FaultInjection,
    GatewayAddress,
    HashKey,
    HeaderMatch,
    HeaderMatchKind,
    HeaderModifier,
    HeaderValue,
    HealthCheck,
    HealthCheckProtocol,
    LoadBalancing,
    Locality,
    LogSink,
    Mirror,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
    PolicyAttachment,
    PolicyTarget,
    Protocol,
    ProxyRole,
    QueryMatch,
    QueryMatchKind,
    RateLimit,
    Redirect,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    RouteTable,
    RouteTelemetry,
    Service,
    ServicePort,
    ServiceRef,
    Site,
    TargetKind,
    Telemetry,
    Tracing,
    TrafficPolicy,
    UpstreamTls,
    WeightedBackend,
    format_problems,
    header_name_problem,
    regex_problem,
)
from meshplane.model.device_policy import (
    MAX_ACCESS,
    MAX_AUDIENCES,
    MAX_PROVIDERS,
    MAX_SELECTED,
    DefaultAccess,
    DevicePolicy,
    DeviceRateLimit,
    JwksUri,
    JwtProvider,
    PathKind,
    PathRule,
    ServiceAccess,
    jwks_problem,
)
from meshplane.model.services import DnsEndpoints, DnsResolution, DnsResolver, LookupFamily, is_meant_as_dns_name
from meshplane.model.sites import ClientCertificates, SiteTls, ToDevices
from meshplane.model.telemetry import NO_TELEMETRY

DEFAULT_NAMESPACE = "default"

# Aliases let a small file expand into a huge tree (a "billion laughs"); the walk stops here.
MAX_NODES = 200_000

# The name a single `port:` gets, from its protocol.
SHORTHAND_PORT_NAMES: Mapping[Protocol, str] = {
    Protocol.HTTP1: "http",
    Protocol.HTTP2: "http",
    Protocol.GRPC: "grpc",
    Protocol.TCP: "tcp",
}

# Every key the format accepts, by section, from the one field table (`policy_fields.SECTIONS`).
# Section names are what error messages and the headings of docs/policy-files.md call them; tests
# check that the docs describe every key listed here, and that this reader agrees with the table.
KEYS: Mapping[str, tuple[str, ...]] = keys_of(SECTIONS)


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file a policy names, as written: relative paths are relative to the policy file's directory.
    `origin` is `source:line` of the value, for errors about reading it."""

    path: str
    origin: str


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A `TlsCertificate` to be: its PEM chain and key are in these files."""

    name: str
    certificate_file: FileRef
    key_file: FileRef
    origin: str


@dataclass(frozen=True, slots=True)
class TrustBundleFile:
    """A `TrustBundle` to be: its PEM CA certificates are in this file."""

    name: str
    ca_file: FileRef
    origin: str


SecretFiles = CertificateFiles | TrustBundleFile


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """What one policy file declares. With `errors`, the content must not be served; the objects
    are still the best reading of the file, for further validation."""

    services: tuple[Service, ...] = ()
    routes: tuple[RouteTable, ...] = ()
    secrets: tuple[SecretFiles, ...] = ()
    errors: tuple[str, ...] = ()
    sites: tuple[Site, ...] = ()
    telemetry: Telemetry = NO_TELEMETRY
    gateway_api: tuple[GatewayApiDocument, ...] = ()
    policies: tuple[PolicyAttachment, ...] = ()
    device_policies: tuple[DevicePolicy, ...] = ()
    # Documents ignored, each `source:line: reason`: objects of other API groups (`foreign_api`).
    warnings: tuple[str, ...] = ()


# libyaml's parser (PyYAML's C extension) reads a policy file about 10x faster than the pure-Python
# one and gives every node the same line (its syntax errors are worded again: `_syntax_error`); the
# pure-Python loader is the fallback only where PyYAML was built without libyaml. Tests run the
# format's cases under both (tests/test_policy_load_performance.py). Both resolve tags as PyYAML's
# SafeLoader does, only cheaper (policy_yaml).
YAML_LOADER: type[yaml.SafeLoader] = LibyamlPolicyLoader if yaml.__with_libyaml__ else PythonPolicyLoader


def parse_policy(text: str, source: str) -> ParsedPolicy:
    """Parse every YAML document of `text`, reporting errors as `source:line: reason`."""
    reader = _Reader(source)
    services: list[Service] = []
    routes: list[RouteTable] = []
    secrets: list[SecretFiles] = []
    sites: list[Site] = []
    telemetry: list[Telemetry] = []
    gateway_api: list[GatewayApiDocument] = []
    policies: list[PolicyAttachment] = []
    device_policies: list[DevicePolicy] = []
    warnings: list[str] = []
    try:
        for document in yaml.compose_all(text, Loader=YAML_LOADER):
            if isinstance(document, ScalarNode) and document.tag == _NULL:
                continue  # an empty document, e.g. between two `---`
            if not isinstance(document, MappingNode):
                reader.error(document, "a policy document must be a mapping with services, routes and/or secrets")
                continue
            if _is_meshplane_api(document):
                read = _meshplane_document(reader, document)
                if isinstance(read, Service):
                    services.append(read)
                elif isinstance(read, RouteTable):
                    routes.append(read)
                elif isinstance(read, Site):
                    sites.append(read)
                elif isinstance(read, Telemetry):
                    telemetry.append(read)
                elif isinstance(read, PolicyAttachment):
                    policies.append(read)
                elif isinstance(read, DevicePolicy):
                    device_policies.append(read)
                continue
            if (foreign := foreign_api(document)) is not None:
                warnings.append(f"{source}:{document.start_mark.line + 1}: {foreign}")
                continue
            if _is_gateway_api(document):
                if (found_document := _gateway_api_document(reader, document)) is not None:
                    gateway_api.append(found_document)
                continue
            fields = reader.mapping(document, "document")
            if fields is None:
                continue
            if "services" in fields:
                services += _each(reader, fields["services"], "services", _service)
            if "routes" in fields:
                routes += _each(reader, fields["routes"], "routes", _route)
            if "secrets" in fields:
                secrets += _each(reader, fields["secrets"], "secrets", _secret)
            if "sites" in fields:
                sites += _each(reader, fields["sites"], "sites", _site)
            if "device_policies" in fields:
                device_policies += _each(reader, fields["device_policies"], "device_policies", _device_policy)
            if "telemetry" in fields and (found := _telemetry(reader, fields["telemetry"])) is not None:
                telemetry.append(found)
    except yaml.YAMLError as error:
        line, reason = _syntax_error(text, error)
        reader.errors.append((line, f"{source}:{line}: invalid YAML: {reason}"))
    except _TooManyNodes:
        reader.errors.append((1, f"{source}:1: more than {MAX_NODES} YAML nodes once aliases are expanded"))
    return ParsedPolicy(
        services=tuple(services),
        routes=tuple(routes),
        secrets=tuple(secrets),
        sites=tuple(sites),
        telemetry=Telemetry.joined(telemetry) if telemetry else NO_TELEMETRY,
        gateway_api=tuple(gateway_api),
        policies=tuple(policies),
        device_policies=tuple(device_policies),
        # In file order; an aliased node is read once per use, but its problems are reported once.
        errors=tuple(dict.fromkeys(text for _, text in sorted(reader.errors, key=lambda error: error[0]))),
        warnings=tuple(warnings),
    )


def _syntax_error(text: str, error: yaml.YAMLError) -> tuple[int, str]:
    """The line and reason of `text`'s YAML syntax error, in the pure-Python parser's words.

    libyaml finds the same errors but words them differently and places some on another line, so
    its error is derived again by the pure-Python parser: messages and lines are the same whichever
    loader read the file. Only a broken file pays for the second parse.
    """
    if YAML_LOADER is not PythonPolicyLoader:
        try:
            for _ in yaml.compose_all(text, Loader=PythonPolicyLoader):
                pass
        except yaml.YAMLError as python_error:
            error = python_error
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        return (mark.line + 1 if mark is not None else 1), str(error.problem or error.context)
    return 1, str(error)


def parse_duration(text: str) -> float | None:
    """Seconds in `text` ("250ms", "1s", "1.5s", "2m", "1h", "1m30s"), or None when it is not a duration."""
    text = text.strip()
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))


_NULL = "tag:yaml.org,2002:null"
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_STANDARD_TAG = "tag:yaml.org,2002:"
# Keys that make `flatten_mapping` change a mapping: a merge (`<<`) and YAML 1.1's value key (`=`).
_FLATTENED_KEY_TAGS = frozenset(("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"))
_KEY_SETS: Mapping[str, frozenset[str]] = {section: frozenset(keys) for section, keys in KEYS.items()}
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HELP = 'use e.g. "250ms", "1s", "1.5s", "2m" or a number of seconds'

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")


class _TooManyNodes(Exception):
    pass


def _is_decimal(text: str) -> bool:
    """Whether SafeConstructor reads `text`, tagged int, as `int(text)`: plain ASCII digits, no
    leading zero (octal in YAML 1.1), no `_`, sign, base prefix or `:`."""
    return text.isascii() and text.isdigit() and (text[0] != "0" or text == "0")


def _clean_fields(node: MappingNode, allowed: frozenset[str]) -> dict[str, Node] | None:
    """The mapping's values by key when `_Reader.mapping` would report nothing and merge nothing:
    plain keys, each once, all in `allowed` (or any key when `allowed` is empty). Otherwise None,
    and the reader checks the mapping key by key."""
    fields: dict[str, Node] = {}
    for key, value in node.value:
        if type(key) is not ScalarNode or key.tag in _FLATTENED_KEY_TAGS:
            return None
        fields[key.value] = value
    if len(fields) != len(node.value) or (allowed and not allowed.issuperset(fields)):
        return None
    return fields


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "empty"
    return repr(node.value)


class _Reader:
    """Reads typed values out of composed YAML nodes, collecting errors with their lines.

    `default_namespace`: the namespace of a service or service reference that names none (a
    meshplane.io object's own namespace; "default" in policy documents). `fixed_origin`, when set,
    is every object's origin (an API object's "Kind namespace/name": no line means anything there).
    """

    def __init__(self, source: str, default_namespace: str = DEFAULT_NAMESPACE, fixed_origin: str = "") -> None:
        self.source = source
        self.default_namespace = default_namespace
        self.fixed_origin = fixed_origin
        self.errors: list[tuple[int, str]] = []  # (line, "source:line: reason")
        # By index in `errors`: the field path (`service.policy.connect_timeout`) its reason begins
        # with, where the reader's own checks know it, so an API object's reader can say the
        # reason of the object's field path instead (`read_spec`) without reading the text back.
        self.fields: dict[int, str] = {}
        self._constructor = SafeConstructor()
        self._nodes = 0
        # Mappings whose keys were checked, held (not their ids: a freed document's ids are reused).
        self._checked: set[Node] = set()

    def origin(self, node: Node) -> str:
        return self.fixed_origin or f"{self.source}:{node.start_mark.line + 1}"

    def error(self, node: Node, reason: str, field: str = "") -> None:
        """An error at `node`'s line; `field`: the field path `reason` begins with, if it does."""
        line = node.start_mark.line + 1
        if field:
            self.fields[len(self.errors)] = field
        self.errors.append((line, f"{self.source}:{line}: {reason}"))

    def visited(self, nodes: int = 1) -> None:
        """Counts nodes read: each call of `mapping`, `items` and `scalar` (and the readers built on
        them) counts one, and a fast path counts one for each call it stands in for."""
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _TooManyNodes

    def mapping(self, node: Node, section: str, keys: Collection[str] | None = None) -> dict[str, Node] | None:
        """The mapping's values by key. Keys not in `keys` (by default KEYS[section]) are reported and left
        out; an empty `keys` accepts any key (e.g. port names)."""
        self.visited()
        if not isinstance(node, MappingNode):
            self.error(node, f"{section} must be a mapping, not {_kind(node)}", section)
            return None
        allowed = KEYS[section] if keys is None else keys
        if node not in self._checked:  # an aliased mapping is checked once (merging changes it)
            self._checked.add(node)
            clean = _clean_fields(node, _KEY_SETS[section] if keys is None else frozenset(keys))
            if clean is not None:
                return clean
            self._check_keys(node, section, allowed)
            try:
                self._constructor.flatten_mapping(node)  # YAML merge keys: `<<: *defaults`
            except yaml.YAMLError as error:
                self.error(node, f"{section}: bad merge key: {getattr(error, 'problem', error)}")
        fields: dict[str, Node] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode) and (not allowed or key.value in allowed):
                fields[str(key.value)] = value
        return fields

    def _check_keys(self, node: MappingNode, section: str, allowed: Collection[str]) -> None:
        first_line: dict[str, int] = {}
        for key, _ in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key, ScalarNode):
                self.error(key, f"{section}: keys must be plain names, not {_kind(key)}")
                continue
            # The raw text: `on:` is a key here, not YAML 1.1's boolean true.
            name = str(key.value)
            if name in first_line:
                self.error(key, f"{section}: duplicate key {name!r} (first at line {first_line[name]})")
            first_line.setdefault(name, key.start_mark.line + 1)
            if allowed and name not in allowed:
                self.error(key, f"unknown key {name!r} in {section}{_suggest(name, allowed)}")

    def items(self, node: Node, what: str) -> list[Node]:
        self.visited()
        if isinstance(node, SequenceNode):
            return list(node.value)
        self.error(node, f"{what} must be a list, not {_kind(node)}", what)
        return []

    def scalar(self, node: Node, what: str, expected: str) -> object:
        """The scalar's value as YAML types it, or `_BAD` (error reported)."""
        self.visited()
        if type(node) is ScalarNode:
            # The two types nearly every value has, read as SafeConstructor reads them, without it.
            tag = node.tag
            if tag == _STR:
                return node.value
            if tag == _INT and _is_decimal(value := node.value):
                return int(value)
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            self.error(node, f"{what} must be {expected}, not {_kind(node)}", what)
            return _BAD
        if not node.tag.startswith(_STANDARD_TAG):
            self.error(node, f"{what}: YAML tag {node.tag} is not supported", what)
            return _BAD
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, LookupError, AttributeError):
            # e.g. an impossible date: the text it is. SafeConstructor raises more than YAMLError
            # for an explicit tag its text does not fit: `!!bool abc` (KeyError), `!!int ""`
            # (IndexError), `!!timestamp x` (AttributeError).
            return str(node.value)

    def string(self, node: Node, what: str) -> str | None:
        # Any scalar's text as written: `exact: 010` means "010", `sni: true` means "true".
        if type(node) is ScalarNode and node.tag == _STR:  # what `scalar` would find, without it
            self.visited()
            return str(node.value)
        if self.scalar(node, what, "a string") is _BAD:
            return None
        return str(node.value)

    def integer(self, node: Node, what: str) -> int | None:
        value = self.scalar(node, what, "a whole number")
        if value is _BAD:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.error(node, f"{what} must be a whole number, not {_kind(node)}", what)
        return None

    def boolean(self, node: Node, what: str) -> bool | None:
        value = self.scalar(node, what, "true or false")
        if value is _BAD:
            return None
        if isinstance(value, bool):
            return value
        self.error(node, f"{what} must be true or false, not {_kind(node)}", what)
        return None

    def duration(self, node: Node, what: str) -> float | None:
        value = self.scalar(node, what, "a duration")
        if value is _BAD:
            return None
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration(value)
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            self.error(node, f"{what}: {node.value!r} is not a duration ({_DURATION_HELP})", what)
            return None
        return seconds

    def choice(self, node: Node, what: str, choices: type[_E]) -> _E | None:
        text = self.string(node, what)
        if text is None:
            return None
        for choice in choices:
            if choice.value == text:
                return choice
        names = [choice.value for choice in choices]
        self.error(node, f"{what}: {text!r} is not one of {', '.join(names)}{_suggest(text, names)}", what)
        return None

    def strings(self, node: Node, what: str) -> tuple[str, ...]:
        found = (self.string(item, what) for item in self.items(node, what))
        return tuple(text for text in found if text is not None)


_BAD = object()
_NO_STRINGS: tuple[str, ...] = ()


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(choices)})"


def _each(reader: _Reader, node: Node, what: str, parse: Callable[[_Reader, Node], _T | None]) -> list[_T]:
    parsed = (parse(reader, item) for item in reader.items(node, what))
    return [item for item in parsed if item is not None]


def _optional(
    fields: Mapping[str, Node], key: str, read: Callable[[Node, str], _T | None], what: str, default: _T
) -> _T:
    """The value at `key` read with `read`, or `default` when absent or wrong (the error is already reported)."""
    node = fields.get(key)
    if node is None:
        return default
    value = read(node, what)
    return default if value is None else value


def _section_reader(
    section: str,
) -> Callable[[Callable[[_Reader, Node, Mapping[str, Node], str], _T | None]], Callable[[_Reader, Node], _T | None]]:
    """Makes a reader of one part, written as `read(reader, node, fields, section)`, into a reader
    of the node: `read` is called with the node's mapping; a node that is no mapping reads as None
    (the error is reported)."""

    def wrap(
        read: Callable[[_Reader, Node, Mapping[str, Node], str], _T | None],
    ) -> Callable[[_Reader, Node], _T | None]:
        def read_node(reader: _Reader, node: Node) -> _T | None:
            fields = reader.mapping(node, section)
            if fields is None:
                return None
            return read(reader, node, fields, section)

        return read_node

    return wrap


def _mapping_needing(reader: _Reader, node: Node, section: str, key: str) -> Mapping[str, Node] | None:
    """The mapping at `node` when it has `key`; None when it is no mapping or lacks `key` (the
    error is reported: a part without what it cannot do without is left out whole)."""
    fields = reader.mapping(node, section)
    if fields is not None and key not in fields:
        reader.error(node, f"{section} needs `{key}`")
        return None
    return fields


def _required_string(reader: _Reader, node: Node, fields: Mapping[str, Node], key: str, section: str) -> str | None:
    if key not in fields:
        reader.error(node, f"{section} needs `{key}`")
        return None
    return reader.string(fields[key], f"{section}.{key}")


# Plain sub-objects: one reader per key, the model's defaults for absent keys.
_FieldReader = Callable[[_Reader, Node, str], object]


def _enum_reader(choices: type[StrEnum]) -> _FieldReader:
    return lambda reader, node, what: reader.choice(node, what, choices)


_FIELD_READERS: Mapping[str, Mapping[str, _FieldReader]] = {
    "service.policy.hash_key": {"header": _Reader.string, "cookie": _Reader.string, "source_ip": _Reader.boolean},
    "service.policy.circuit_breakers": {key: _Reader.integer for key in KEYS["service.policy.circuit_breakers"]},
    "service.policy.outlier_detection": {
        "consecutive_5xx": _Reader.integer,
        "consecutive_gateway_failure": _Reader.integer,
        "interval": _Reader.duration,
        "base_ejection_time": _Reader.duration,
        "max_ejection_percent": _Reader.integer,
    },
    "service.policy.health_check": {
        "protocol": _enum_reader(HealthCheckProtocol),
        "path": _Reader.string,
        "interval": _Reader.duration,
        "timeout": _Reader.duration,
        "unhealthy_threshold": _Reader.integer,
        "healthy_threshold": _Reader.integer,
    },
    "service.tls": {"trust": _Reader.string, "sni": _Reader.string, "client_certificate": _Reader.string},
    "route.rules.cors": {
        "allow_origins": _Reader.strings,
        "allow_methods": _Reader.strings,
        "allow_headers": _Reader.strings,
        "expose_headers": _Reader.strings,
        "max_age": _Reader.integer,
        "allow_credentials": _Reader.boolean,
    },
    "route.rules.rate_limit": {
        "requests": _Reader.integer,
        "interval": _Reader.duration,
        "burst": _Reader.integer,
        "per_header": _Reader.string,
    },
}


def _plain(reader: _Reader, fields: Mapping[str, Node], section: str) -> dict[str, Any]:
    """The keyword arguments for a plain sub-object: the keys present and well-formed."""
    readers = _FIELD_READERS[section]
    found: dict[str, Any] = {}
    for key, value in fields.items():
        parsed = readers[key](reader, value, f"{section}.{key}")
        if parsed is not None:
            found[key] = parsed
    return found


# --- services ---


def _service(reader: _Reader, node: Node) -> Service | None:
    fields = reader.mapping(node, "service")
    if fields is None:
        return None
    name = _required_string(reader, node, fields, "name", "service")
    namespace = _optional(fields, "namespace", reader.string, "service.namespace", reader.default_namespace)
    hosts = _optional(fields, "hosts", reader.strings, "service.hosts", _NO_STRINGS)
    ports = _ports(reader, node, fields)
    endpoints: list[Endpoint] = []
    if "endpoints" in fields:
        # Nearly every endpoint is `{address: A, port: P}` of a one-port service: such an entry has
        # no error to report, and is read here without the general reader (`_endpoint`).
        only_port = ports[0].name if len(ports) == 1 else None
        for item in reader.items(fields["endpoints"], "service.endpoints"):
            if only_port is not None and (plain := _address_and_port(item)) is not None:
                reader.visited(3)  # the mapping and its two values, as `_endpoint` counts them
                endpoints.append(Endpoint(plain[0], plain[1], only_port, _UNKNOWN_LOCALITY, _READY, 1))
            else:
                endpoints += _endpoint(reader, item, ports)
    endpoints, dns = _dns_endpoints(reader, fields, endpoints)
    policy = _policy(reader, fields["policy"]) if "policy" in fields else TrafficPolicy()
    tls = _tls(reader, fields["tls"]) if "tls" in fields else None
    if name is None:
        return None
    return Service(
        name=name,
        namespace=namespace,
        ports=ports,
        endpoints=tuple(endpoints),
        hosts=hosts,
        policy=policy,
        tls=tls,
        origin=reader.origin(node),
        dns=dns,
    )


def _dns_endpoints(
    reader: _Reader, fields: Mapping[str, Node], endpoints: list[Endpoint]
) -> tuple[list[Endpoint], DnsEndpoints | None]:
    """The service's IP endpoints, and its endpoints named by DNS with the `dns` settings (None when
    its endpoints are addresses). A service has one kind or the other: a mix is reported, and the
    names left out. The names themselves are the model's to check (`Endpoint.problems`)."""
    named = [endpoint for endpoint in endpoints if is_meant_as_dns_name(endpoint.address)]
    if named and len(named) < len(endpoints):
        address = next(e.address for e in endpoints if not is_meant_as_dns_name(e.address))
        reader.error(
            fields["endpoints"],
            f"service.endpoints: mixes IP addresses ({address}) and DNS names ({named[0].address[:80]}); "
            "a service's endpoints are all addresses or all names",
        )
        return [e for e in endpoints if not is_meant_as_dns_name(e.address)], None
    if not named:
        if "dns" in fields:
            reader.error(fields["dns"], "service.dns: applies to endpoints named by DNS; this service has none")
        return endpoints, None
    settings: dict[str, Any] = {}
    if "dns" in fields and (dns := reader.mapping(fields["dns"], "service.dns")) is not None:
        if "resolution" in dns:
            settings["resolution"] = reader.choice(dns["resolution"], "service.dns.resolution", DnsResolution)
        if "refresh" in dns:
            settings["refresh"] = reader.duration(dns["refresh"], "service.dns.refresh")
        if "lookup_family" in dns:
            settings["lookup_family"] = reader.choice(dns["lookup_family"], "service.dns.lookup_family", LookupFamily)
        if "resolvers" in dns:
            items = reader.items(dns["resolvers"], "service.dns.resolvers")
            found = (_dns_resolver(reader, item) for item in items)
            settings["resolvers"] = tuple(resolver for resolver in found if resolver is not None)
    defaults = {key: value for key, value in settings.items() if value is not None}
    return [], DnsEndpoints(tuple(named), **defaults)


_RESOLVER = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[0-9]{1,5}))?$")


def _dns_resolver(reader: _Reader, node: Node) -> DnsResolver | None:
    """A resolver written `10.0.0.53`, `10.0.0.53:5353`, `fd00::53` or `[fd00::53]:5353` (port 53 by
    default). Whether the address is an IP address is the model's to check."""
    text = reader.string(node, "service.dns.resolvers")
    if text is None:
        return None
    if text.count(":") > 1 and not text.startswith("["):
        return DnsResolver(text)  # a bare IPv6 address
    shape = _RESOLVER.match(text)
    if shape is None or not (address := shape["v6"] if shape["v6"] is not None else shape["host"]):
        reader.error(
            node,
            f"service.dns.resolvers: {text[:80]!r} is not an IP address with an optional port "
            "(10.0.0.53, 10.0.0.53:5353, [fd00::53]:5353)",
        )
        return None
    return DnsResolver(address, int(shape["port"]) if shape["port"] else 53)


def _ports(reader: _Reader, node: Node, fields: Mapping[str, Node]) -> tuple[ServicePort, ...]:
    if "ports" in fields:
        if "port" in fields or "protocol" in fields:
            reader.error(node, "service: use either `port` (with `protocol`) or `ports`, not both")
        return tuple(
            port
            for port in (_port(reader, item) for item in reader.items(fields["ports"], "service.ports"))
            if port is not None
        )
    if "port" in fields:
        number = reader.integer(fields["port"], "service.port")
        protocol = _optional(
            fields, "protocol", lambda n, w: reader.choice(n, w, Protocol), "service.protocol", Protocol.HTTP1
        )
        return () if number is None else (ServicePort(SHORTHAND_PORT_NAMES[protocol], number, protocol),)
    if "protocol" in fields:
        reader.error(fields["protocol"], "service.protocol goes with `port`; this service has none")
    return ()


def _port(reader: _Reader, node: Node) -> ServicePort | None:
    fields = reader.mapping(node, "service.ports")
    if fields is None:
        return None
    protocol = _optional(
        fields, "protocol", lambda n, w: reader.choice(n, w, Protocol), "service.ports.protocol", Protocol.HTTP1
    )
    name = _optional(fields, "name", reader.string, "service.ports.name", SHORTHAND_PORT_NAMES[protocol])
    if "port" not in fields:
        reader.error(node, "service.ports needs `port`")
        return None
    number = reader.integer(fields["port"], "service.ports.port")
    return None if number is None else ServicePort(name, number, protocol)


_UNKNOWN_LOCALITY = Locality()
_READY = EndpointHealth.READY


def _address_and_port(node: Node) -> tuple[str, int] | None:
    """The address and port of an endpoint entry written `{address: A, port: P}`: in that order, A
    a string, P a decimal (`_is_decimal`). None for any other entry."""
    if type(node) is not MappingNode or len(pairs := node.value) != 2:
        return None
    (address_key, address), (port_key, port) = pairs
    if (
        type(address_key) is ScalarNode
        and type(port_key) is ScalarNode
        and address_key.value == "address"
        and port_key.value == "port"
        and address_key.tag == _STR
        and port_key.tag == _STR
        and type(address) is ScalarNode
        and type(port) is ScalarNode
        and address.tag == _STR
        and port.tag == _INT
        and _is_decimal(port.value)
    ):
        return address.value, int(port.value)
    return None


def _endpoint(reader: _Reader, node: Node, ports: tuple[ServicePort, ...]) -> list[Endpoint]:
    """One endpoint entry: one `Endpoint` per service port it serves."""
    fields = reader.mapping(node, "service.endpoints")
    if fields is None:
        return []
    address = _required_string(reader, node, fields, "address", "service.endpoints")
    # Absent keys' defaults are taken without a reader.
    locality = _UNKNOWN_LOCALITY
    if "region" in fields or "zone" in fields or "sub_zone" in fields:
        locality = Locality(
            region=_optional(fields, "region", reader.string, "service.endpoints.region", ""),
            zone=_optional(fields, "zone", reader.string, "service.endpoints.zone", ""),
            sub_zone=_optional(fields, "sub_zone", reader.string, "service.endpoints.sub_zone", ""),
        )
    health = EndpointHealth.READY
    if "health" in fields:
        chosen = reader.choice(fields["health"], "service.endpoints.health", EndpointHealth)
        health = health if chosen is None else chosen
    weight = 1
    if "weight" in fields:
        weight = _optional(fields, "weight", reader.integer, "service.endpoints.weight", weight)
    targets: list[tuple[str, int]] = []  # (port name, number)
    if "port" in fields and "ports" in fields:
        reader.error(node, "service.endpoints: use either `port` or `ports`, not both")
    elif "port" in fields:
        number = reader.integer(fields["port"], "service.endpoints.port")
        if number is not None and len(ports) == 1:
            targets = [(ports[0].name, number)]
        elif number is not None and ports:
            names = ", ".join(port.name for port in ports)
            reader.error(
                fields["port"],
                f"service.endpoints.port: the service has several ports ({names}); "
                "map each with `ports: {name: number}`",
            )
    elif "ports" in fields:
        mapped = reader.mapping(fields["ports"], "service.endpoints.ports", keys=())
        known = tuple(port.name for port in ports)  # in order: the error's suggestion lists them
        for port_name, value in (mapped or {}).items():
            if port_name not in known:
                reader.error(
                    value,
                    f"service.endpoints.ports: the service has no port named {port_name!r}{_suggest(port_name, known)}",
                )
            elif (number := reader.integer(value, f"service.endpoints.ports.{port_name}")) is not None:
                targets.append((port_name, number))
    else:
        targets = [(port.name, port.port) for port in ports]  # like Kubernetes: targetPort defaults to port
    if address is None:
        return []
    return [Endpoint(address, number, port_name, locality, health, weight) for port_name, number in targets]


def _policy(reader: _Reader, node: Node) -> TrafficPolicy:
    fields = reader.mapping(node, "service.policy")
    if fields is None:
        return TrafficPolicy()
    found: dict[str, Any] = {}
    if "connect_timeout" in fields:
        found["connect_timeout"] = reader.duration(fields["connect_timeout"], "service.policy.connect_timeout")
    if "load_balancing" in fields:
        found["load_balancing"] = reader.choice(
            fields["load_balancing"], "service.policy.load_balancing", LoadBalancing
        )
    if "locality_failover" in fields:
        found["locality_failover"] = reader.boolean(fields["locality_failover"], "service.policy.locality_failover")
    parts: Mapping[str, Callable[..., object]] = {
        "hash_key": HashKey,
        "circuit_breakers": CircuitBreakers,
        "outlier_detection": OutlierDetection,
        "health_check": HealthCheck,
    }
    for key, build in parts.items():
        section = f"service.policy.{key}"
        if key in fields and (part := reader.mapping(fields[key], section)) is not None:
            found[key] = build(**_plain(reader, part, section))
    return TrafficPolicy(**{key: value for key, value in found.items() if value is not None})


def _tls(reader: _Reader, node: Node) -> UpstreamTls | None:
    fields = reader.mapping(node, "service.tls")
    if fields is None:
        return None
    if "trust" not in fields:
        reader.error(node, "service.tls needs `trust` (the name of a CA bundle secret)")
        return None
    values = _plain(reader, fields, "service.tls")
    return UpstreamTls(**values) if "trust" in values else None


# --- routes ---


def _service_ref(reader: _Reader, node: Node, what: str) -> ServiceRef | None:
    text = reader.string(node, what)
    if text is None:
        return None
    parts = text.split("/")
    if len(parts) == 1 and parts[0]:
        return ServiceRef(reader.default_namespace, parts[0])
    if len(parts) == 2 and all(parts):
        return ServiceRef(parts[0], parts[1])
    reader.error(node, f'{what}: {text!r} is not "name" or "namespace/name"')
    return None


def _route(reader: _Reader, node: Node) -> RouteTable | None:
    fields = reader.mapping(node, "route")
    if fields is None:
        return None
    name = _required_string(reader, node, fields, "name", "route")
    service = _service_ref(reader, fields["service"], "route.service") if "service" in fields else None
    hosts = _optional(fields, "hosts", reader.strings, "route.hosts", _NO_STRINGS)
    rules = _each(reader, fields["rules"], "route.rules", _rule) if "rules" in fields else []
    if name is None:
        return None
    return RouteTable(name=name, rules=tuple(rules), service=service, hosts=hosts, origin=reader.origin(node))


def _rule(reader: _Reader, node: Node) -> RouteRule | None:
    fields = reader.mapping(node, "route.rules")
    if fields is None:
        return None
    match = _match(reader, fields["match"]) if "match" in fields else RouteMatch()
    if "backends" in fields and "to" in fields:
        reader.error(node, "route.rules: `to` is another name for `backends`; use one of them")
    backends_node = fields.get("backends", fields.get("to"))
    backends = [] if backends_node is None else _each(reader, backends_node, "route.rules.backends", _backend)
    timeout = _optional(fields, "timeout", reader.duration, "route.rules.timeout", None)
    retry = _retries(reader, fields["retries"]) if "retries" in fields else None
    rewrite: str | None = None
    path_rewrite: str | None = None
    host_rewrite: str | None = None
    if "rewrite" in fields and (rewrites := reader.mapping(fields["rewrite"], "route.rules.rewrite")) is not None:
        rewrite = _optional(rewrites, "prefix", reader.string, "route.rules.rewrite.prefix", None)
        path_rewrite = _optional(rewrites, "path", reader.string, "route.rules.rewrite.path", None)
        host_rewrite = _optional(rewrites, "hostname", reader.string, "route.rules.rewrite.hostname", None)
        if rewrite is not None and path_rewrite is not None:
            reader.error(fields["rewrite"], "route.rules.rewrite: use either `prefix` or `path`, not both")
    redirect = _redirect(reader, fields["redirect"]) if "redirect" in fields else None
    if redirect is not None and backends_node is not None:
        reader.error(node, "route.rules: a rule with a `redirect` answers the request itself and has no backends")
    return RouteRule(
        match=match,
        backends=tuple(backends),
        timeout=timeout,
        retry=retry,
        prefix_rewrite=rewrite,
        name=_optional(fields, "name", reader.string, "route.rules.name", None),
        request_headers=_modifier(reader, fields, "request_headers"),
        response_headers=_modifier(reader, fields, "response_headers"),
        redirect=redirect,
        path_rewrite=path_rewrite,
        host_rewrite=host_rewrite,
        mirrors=tuple(_each(reader, fields["mirror"], "route.rules.mirror", _mirror)) if "mirror" in fields else (),
        fault=_fault(reader, fields["fault"]) if "fault" in fields else None,
        rate_limit=_rate_limit(reader, fields["rate_limit"]) if "rate_limit" in fields else None,
        cors=_cors(reader, fields["cors"]) if "cors" in fields else None,
    )


def _cors(reader: _Reader, node: Node) -> CorsPolicy | None:
    """Shapes and types here; the model checks the origins, methods, header names and ranges."""
    section = "route.rules.cors"
    fields = _mapping_needing(reader, node, section, "allow_origins")
    if fields is None:
        return None
    values = _plain(reader, fields, section)
    return CorsPolicy(**values)


def _rate_limit(reader: _Reader, node: Node) -> RateLimit | None:
    section = "route.rules.rate_limit"
    fields = _mapping_needing(reader, node, section, "requests")
    if fields is None:
        return None
    values = _plain(reader, fields, section)
    header = values.get("per_header")
    # Checked here, where the line is known; a refused header is left out like any bad part.
    if header is not None and (problem := header_name_problem(header)) is not None:
        reader.error(fields["per_header"], f"{section}.per_header: {problem}")
        return None
    return RateLimit(**values) if "requests" in values else None


@_section_reader("route.rules.fault")
def _fault(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> FaultInjection | None:
    if "delay" not in fields and "abort" not in fields:
        reader.error(node, f"{section} needs `delay`, `abort` or both")
        return None
    delay = _fault_delay(reader, fields["delay"], f"{section}.delay") if "delay" in fields else None
    abort = _fault_abort(reader, fields["abort"], f"{section}.abort") if "abort" in fields else None
    return FaultInjection(delay, abort) if delay is not None or abort is not None else None


def _fault_delay(reader: _Reader, node: Node, section: str) -> FaultDelay | None:
    parts = _mapping_needing(reader, node, section, "duration")
    if parts is None or (duration := reader.duration(parts["duration"], f"{section}.duration")) is None:
        return None
    return FaultDelay(duration, _percent(reader, parts, section))


def _fault_abort(reader: _Reader, node: Node, section: str) -> FaultAbort | None:
    parts = _mapping_needing(reader, node, section, "status")
    if parts is None or (status := reader.integer(parts["status"], f"{section}.status")) is None:
        return None
    if not 200 <= status <= 599:
        reader.error(parts["status"], f"{section}.status: {status} is not an HTTP status from 200 to 599")
        return None
    return FaultAbort(status, _percent(reader, parts, section))


def _percent(reader: _Reader, fields: Mapping[str, Node], section: str) -> float:
    """The number 0-100 at `percent`; 100 when absent or wrong (the error is reported)."""
    if "percent" not in fields:
        return 100.0
    node = fields["percent"]
    value = reader.scalar(node, f"{section}.percent", "a number from 0 to 100")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    if value is not _BAD:
        reader.error(node, f"{section}.percent: {node.value!r} is not a number from 0 to 100")
    return 100.0


def _modifier(reader: _Reader, fields: Mapping[str, Node], key: str) -> HeaderModifier | None:
    """`set` and `add` map header names to values; `remove` lists names. Names are checked here, on
    their own lines; the model checks the rest (repeats across lists, values, counts)."""
    section = f"route.rules.{key}"
    if key not in fields or (parts := reader.mapping(fields[key], section)) is None:
        return None
    found: dict[str, tuple[HeaderValue, ...]] = {}
    for part in ("set", "add"):
        if part in parts and (values := reader.mapping(parts[part], f"{section}.{part}", keys=())) is not None:
            headers = []
            for name, value in values.items():
                text = reader.string(value, f"{section}.{part}.{name}")
                if _modifiable_header(reader, value, name, f"{section}.{part}") and text is not None:
                    headers.append(HeaderValue(name, text))
            found[part] = tuple(headers)
    removed: list[str] = []
    for item in reader.items(parts["remove"], f"{section}.remove") if "remove" in parts else ():
        header = reader.string(item, f"{section}.remove")
        if header is not None and _modifiable_header(reader, item, header, f"{section}.remove"):
            removed.append(header)
    return HeaderModifier(set=found.get("set", ()), add=found.get("add", ()), remove=tuple(removed))


def _modifiable_header(reader: _Reader, node: Node, name: str, what: str) -> bool:
    """Whether a header modifier may change header `name`; if not, reports why at `node`."""
    lowered = name.lower()
    if (problem := header_name_problem(lowered)) is not None:
        reader.error(node, f"{what}: {problem}")
        return False
    if lowered.startswith(":") or lowered == "host":
        reader.error(node, f"{what}: header {name!r} cannot be changed (pseudo-headers and host; see rewrite.hostname)")
        return False
    return True


@_section_reader("route.rules.redirect")
def _redirect(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> Redirect | None:
    if "path" in fields and "prefix" in fields:
        reader.error(node, f"{section}: use either `path` or `prefix`, not both")
    scheme = _optional(fields, "scheme", reader.string, f"{section}.scheme", None)
    if scheme is not None and scheme not in ("http", "https"):
        reader.error(fields["scheme"], f"{section}.scheme: {scheme!r} is not one of http, https")
        scheme = None
    status = _optional(fields, "status", reader.integer, f"{section}.status", 302)
    if status not in REDIRECT_STATUSES:
        statuses = ", ".join(str(code) for code in REDIRECT_STATUSES)
        reader.error(fields["status"], f"{section}.status: {status} is not one of {statuses}")
        status = 302
    return Redirect(
        scheme=scheme,
        hostname=_optional(fields, "hostname", reader.string, f"{section}.hostname", None),
        port=_optional(fields, "port", reader.integer, f"{section}.port", None),
        path=_optional(fields, "path", reader.string, f"{section}.path", None),
        prefix=_optional(fields, "prefix", reader.string, f"{section}.prefix", None),
        status=status,
    )


def _match(reader: _Reader, node: Node) -> RouteMatch:
    fields = reader.mapping(node, "route.rules.match")
    if fields is None:
        return RouteMatch()
    path = PathMatch()
    if "path" in fields and (paths := reader.mapping(fields["path"], "route.rules.match.path")) is not None:
        if len(paths) != 1:
            reader.error(fields["path"], "route.rules.match.path needs exactly one of prefix, exact, regex")
        for key, value in paths.items():
            if (text := reader.string(value, f"route.rules.match.path.{key}")) is None:
                continue
            # Checked here, where the line is known; refused, it is left at the default like any bad field.
            if key == PathMatchKind.REGEX and (problem := regex_problem(text)) is not None:
                reader.error(value, f"route.rules.match.path.regex: {problem}")
                continue
            path = PathMatch(PathMatchKind(key), text)
    headers = _each(reader, fields["headers"], "route.rules.match.headers", _header) if "headers" in fields else []
    method: str | None = None
    if "method" in fields and (text := reader.string(fields["method"], "route.rules.match.method")) is not None:
        if text in HTTP_METHODS:
            method = text
        else:
            hint = _suggest(text.upper(), HTTP_METHODS)
            reader.error(fields["method"], f"route.rules.match.method: {text!r} is not an HTTP method{hint}")
    query = _each(reader, fields["query"], "route.rules.match.query", _query) if "query" in fields else []
    return RouteMatch(path=path, headers=tuple(headers), method=method, query=tuple(query))


@_section_reader("route.rules.match.query")
def _query(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> QueryMatch | None:
    name = _required_string(reader, node, fields, "name", section)
    kinds = [kind for kind in QueryMatchKind if kind.value in fields]
    if len(kinds) != 1:
        reader.error(node, f"{section} needs exactly one of exact, regex")
        return None
    kind = kinds[0]
    value = reader.string(fields[kind.value], f"{section}.{kind.value}")
    # Checked here, where the line is known; a refused match is left out like any bad part.
    if kind is QueryMatchKind.REGEX and value is not None and (problem := regex_problem(value)) is not None:
        reader.error(fields["regex"], f"{section}.regex: {problem}")
        value = None
    if name is None or value is None:
        return None
    return QueryMatch(name=name, kind=kind, value=value)


@_section_reader("route.rules.match.headers")
def _header(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> HeaderMatch | None:
    name = _required_string(reader, node, fields, "name", section)
    invert = _optional(fields, "invert", reader.boolean, f"{section}.invert", False)
    kinds = [kind for kind in HeaderMatchKind if kind.value in fields]
    if len(kinds) != 1:
        reader.error(node, f"{section} needs exactly one of exact, prefix, regex, present")
        return None
    kind = kinds[0]
    value: str | None
    if kind is HeaderMatchKind.PRESENT:
        present = reader.boolean(fields["present"], f"{section}.present")
        if present is False:
            reader.error(fields["present"], f"{section}.present must be true; add `invert: true` to match absence")
        value = ""
    else:
        value = reader.string(fields[kind.value], f"{section}.{kind.value}")
    # Checked here, where the line is known; a refused header is left out like any bad part.
    if name is not None and (problem := header_name_problem(name)) is not None:
        reader.error(fields["name"], f"{section}.name: {problem}")
        name = None
    if kind is HeaderMatchKind.REGEX and value and (problem := regex_problem(value)) is not None:
        reader.error(fields["regex"], f"{section}.regex: {problem}")
        value = None
    if name is None or value is None:
        return None
    return HeaderMatch(name=name, kind=kind, value=value, invert=invert)


def _backend(reader: _Reader, node: Node) -> WeightedBackend | None:
    section = "route.rules.backends"
    if isinstance(node, ScalarNode):  # `to: [api]`: the whole service, weight 100
        ref = _service_ref(reader, node, section)
        return None if ref is None else WeightedBackend(ref)
    fields = _mapping_needing(reader, node, section, "service")
    if fields is None:
        return None
    ref = _service_ref(reader, fields["service"], f"{section}.service")
    port = _port_reference(reader, fields, section)
    weight = _optional(fields, "weight", reader.integer, f"{section}.weight", 100)
    return None if ref is None else WeightedBackend(ref, port, weight)


def _port_reference(reader: _Reader, fields: Mapping[str, Node], section: str) -> str | int | None:
    """A service port named by `port:` (a name or a number), None when absent or wrong."""
    if "port" not in fields:
        return None
    value = reader.scalar(fields["port"], f"{section}.port", "a port name or number")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None if value is _BAD else str(fields["port"].value)


def _mirror(reader: _Reader, node: Node) -> Mirror | None:
    section = "route.rules.mirror"
    if isinstance(node, ScalarNode):  # `mirror: [api-shadow]`: every request, to its only port
        ref = _service_ref(reader, node, section)
        return None if ref is None else Mirror(ref)
    fields = _mapping_needing(reader, node, section, "service")
    if fields is None:
        return None
    ref = _service_ref(reader, fields["service"], f"{section}.service")
    port = _port_reference(reader, fields, section)
    percent = _percent(reader, fields, section)
    return None if ref is None else Mirror(ref, port, percent)


@_section_reader("route.rules.retries")
def _retries(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> RetryPolicy | None:
    defaults = RetryPolicy()
    on = defaults.on
    if "on" in fields:
        on_node = fields["on"]
        if isinstance(on_node, SequenceNode):
            conditions = reader.strings(on_node, f"{section}.on")
        else:  # Envoy's own spelling: "5xx,reset,connect-failure"
            text = reader.string(on_node, f"{section}.on")
            conditions = tuple(part.strip() for part in (text or "").split(",") if part.strip())
        unknown = [condition for condition in conditions if condition not in RETRY_CONDITIONS]
        for condition in unknown:
            hint = _suggest(condition, sorted(RETRY_CONDITIONS))
            reader.error(on_node, f"{section}.on: unknown retry condition {condition!r}{hint}")
        on = tuple(condition for condition in conditions if condition in RETRY_CONDITIONS)
    return RetryPolicy(
        on=on,
        attempts=_optional(fields, "attempts", reader.integer, f"{section}.attempts", defaults.attempts),
        per_try_timeout=_optional(
            fields, "per_try_timeout", reader.duration, f"{section}.per_try_timeout", defaults.per_try_timeout
        ),
    )


# --- secrets ---


def _secret(reader: _Reader, node: Node) -> SecretFiles | None:
    fields = reader.mapping(node, "secret")
    if fields is None:
        return None
    name = _required_string(reader, node, fields, "name", "secret")
    if name is not None and "/" in name:
        # `namespace/name` (and `…#ca`) refer to Kubernetes Secrets (kubernetes_secrets.py): a file
        # secret of such a name could be mistaken for one.
        reader.error(fields["name"], f"secret name {name!r}: `/` is reserved for Kubernetes Secrets (namespace/name)")
        return None
    has_certificate = "certificate_file" in fields or "key_file" in fields
    if has_certificate and "ca_file" in fields:
        reader.error(
            node, "secret: a secret is a certificate (certificate_file + key_file) or a CA bundle (ca_file), not both"
        )
        return None
    if has_certificate:
        missing = [key for key in ("certificate_file", "key_file") if key not in fields]
        if missing:
            reader.error(node, "secret needs both `certificate_file` and `key_file`")
            return None
        certificate = _file(reader, fields["certificate_file"], "secret.certificate_file")
        key = _file(reader, fields["key_file"], "secret.key_file")
        if name is None or certificate is None or key is None:
            return None
        return CertificateFiles(name, certificate, key, reader.origin(node))
    if "ca_file" in fields:
        ca = _file(reader, fields["ca_file"], "secret.ca_file")
        return None if name is None or ca is None else TrustBundleFile(name, ca, reader.origin(node))
    reader.error(node, "secret needs `certificate_file` and `key_file`, or `ca_file`")
    return None


def _file(reader: _Reader, node: Node, what: str) -> FileRef | None:
    path = reader.string(node, what)
    if path == "":
        reader.error(node, f"{what} must not be empty")
        return None
    return None if path is None else FileRef(path, reader.origin(node))


# --- sites ---


def _site(reader: _Reader, node: Node) -> Site | None:
    """An edge site. Gateways are `address:port` strings (IPv6 as `[addr]:port`); ranges are CIDRs.
    The model checks the addresses and ranges themselves."""
    fields = reader.mapping(node, "site")
    if fields is None:
        return None
    site_id = _required_string(reader, node, fields, "id", "site")
    region = _required_string(reader, node, fields, "region", "site")
    zone = _optional(fields, "zone", reader.string, "site.zone", "")
    gateways: list[GatewayAddress] = []
    for item in reader.items(fields["gateways"], "site.gateways") if "gateways" in fields else ():
        text = reader.string(item, "site.gateways")
        if text is None:
            continue
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            reader.error(item, f"site.gateways: {text!r} must be address:port (IPv6 as [address]:port)")
            continue
        gateways.append(GatewayAddress(host.removeprefix("[").removesuffix("]"), int(port)))
    ranges = _optional(fields, "device_ranges", reader.strings, "site.device_ranges", _NO_STRINGS)
    tls = _site_tls(reader, fields["tls"]) if "tls" in fields else None
    if site_id is None or region is None:
        return None
    return Site(
        id=site_id,
        region=region,
        zone=zone,
        gateways=tuple(gateways),
        device_ranges=ranges,
        origin=reader.origin(node),
        tls=tls,
    )


def _site_tls(reader: _Reader, node: Node) -> SiteTls | None:
    """A site's gateway TLS: `certificate` (a certificate secret's name) is required; the two
    choices default to the strict ones (client certificates required, mTLS to devices)."""
    fields = _mapping_needing(reader, node, "site.tls", "certificate")
    if fields is None:
        return None
    certificate = reader.string(fields["certificate"], "site.tls.certificate")
    clients = _optional(
        fields,
        "client_certificates",
        lambda value, what: reader.choice(value, what, ClientCertificates),
        "site.tls.client_certificates",
        ClientCertificates.REQUIRED,
    )
    to_devices = _optional(
        fields,
        "to_devices",
        lambda value, what: reader.choice(value, what, ToDevices),
        "site.tls.to_devices",
        ToDevices.MTLS,
    )
    return None if certificate is None else SiteTls(certificate, clients, to_devices)


# --- telemetry ---


def _telemetry(reader: _Reader, node: Node) -> Telemetry | None:
    """Access logs and tracing. Shapes, types, enum values, percents and format operators are
    checked here, each on its own line; the model checks references (collectors, services, ports,
    routes and rules) and counts."""
    fields = reader.mapping(node, "telemetry")
    if fields is None:
        return None
    parts = {
        key: tuple(_each(reader, fields[key], f"telemetry.{key}", read)) if key in fields else ()
        for key, read in _TELEMETRY_PARTS.items()
    }
    return Telemetry(**parts)


@_section_reader("telemetry.collectors")
def _collector(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> Collector | None:
    name = _required_string(reader, node, fields, "name", section)
    if "service" not in fields:
        reader.error(node, f"{section} needs `service`")
        return None
    ref = _service_ref(reader, fields["service"], f"{section}.service")
    port = _port_reference(reader, fields, section)
    if name is None or ref is None:
        return None
    return Collector(name, ref, port, origin=reader.origin(node))


def _access_log(reader: _Reader, node: Node) -> AccessLog | None:
    section = "telemetry.access_logs"
    fields = _mapping_needing(reader, node, section, "to")
    if fields is None or (sink := reader.choice(fields["to"], f"{section}.to", LogSink)) is None:
        return None
    text_format = ""
    if "format" in fields and (text := reader.string(fields["format"], f"{section}.format")) is not None:
        if not text:
            reader.error(fields["format"], f"{section}.format must not be empty (leave it out for the default)")
        elif reasons := format_problems(text):
            for reason in reasons:
                reader.error(fields["format"], f"{section}.format: {reason}")
        else:
            text_format = text
    json_fields: list[tuple[str, str]] = []
    if "json" in fields and (entries := reader.mapping(fields["json"], f"{section}.json", keys=())) is not None:
        if not entries:
            reader.error(fields["json"], f"{section}.json needs at least one field")
        for key, value in entries.items():
            operators = reader.string(value, f"{section}.json.{key}")
            if operators is None:
                continue
            if reasons := format_problems(operators):
                for reason in reasons:
                    reader.error(value, f"{section}.json.{key}: {reason}")
                continue
            json_fields.append((key, operators))
    return AccessLog(
        sink=sink,
        path=_optional(fields, "path", reader.string, f"{section}.path", ""),
        collector=_optional(fields, "collector", reader.string, f"{section}.collector", ""),
        text_format=text_format,
        json_fields=tuple(json_fields),
        roles=_roles(reader, fields, section),
        origin=reader.origin(node),
    )


@_section_reader("telemetry.tracing")
def _tracing(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> Tracing | None:
    collector = _required_string(reader, node, fields, "collector", section)
    sampling = _sampling(reader, fields, section)
    if collector is None:
        return None
    return Tracing(
        collector=collector,
        sampling=100.0 if sampling is None else sampling,
        service_name=_optional(fields, "service_name", reader.string, f"{section}.service_name", ""),
        roles=_roles(reader, fields, section),
        origin=reader.origin(node),
    )


@_section_reader("telemetry.routes")
def _route_telemetry(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> RouteTelemetry | None:
    route = _required_string(reader, node, fields, "route", section)
    rule = _required_string(reader, node, fields, "rule", section)
    access_log = _optional(fields, "access_log", reader.boolean, f"{section}.access_log", None)
    if route is None or rule is None:
        return None
    return RouteTelemetry(route, rule, access_log, _sampling(reader, fields, section), origin=reader.origin(node))


def _sampling(reader: _Reader, fields: Mapping[str, Node], section: str) -> float | None:
    """The percent 0-100 at `sampling`; None when absent or wrong (the error is reported)."""
    if "sampling" not in fields:
        return None
    node = fields["sampling"]
    value = reader.scalar(node, f"{section}.sampling", "a number from 0 to 100")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    if value is not _BAD:
        reader.error(node, f"{section}.sampling: {node.value!r} is not a percent from 0 to 100")
    return None


def _roles(reader: _Reader, fields: Mapping[str, Node], section: str) -> tuple[ProxyRole, ...]:
    """The roles a setting names; () when `roles` is left out, which the model reads as every
    role taking telemetry. So an empty list, which reads as "no role", is refused rather than
    silently meaning every role."""
    if "roles" not in fields:
        return ()
    node = fields["roles"]
    items = reader.items(node, f"{section}.roles")
    if isinstance(node, SequenceNode) and not items:
        reader.error(node, f"{section}.roles: an empty list means no role: leave `roles` out for every role")
    found = (reader.choice(item, f"{section}.roles", ProxyRole) for item in items)
    return tuple(role for role in found if role is not None)


# The parts of a `telemetry:` section and their readers (the keys are `Telemetry`'s fields).
_TELEMETRY_PARTS: Mapping[str, Callable[[_Reader, Node], Any]] = {
    "collectors": _collector,
    "access_logs": _access_log,
    "tracing": _tracing,
    "routes": _route_telemetry,
}


# --- Gateway API documents -------------------------------------------------------------------
#
# A document with `apiVersion` or `kind` is a Gateway API object, written as for kubectl. It is
# turned into the JSON the API server would send (plain mappings, lists and scalars) and read by
# the Kubernetes source's own typed parsers; their problems come back at the line of the field
# they name. What the API server adds is added here: a namespace ("default" when none is given),
# `metadata.generation` 1.

GATEWAY_API_VERSION = f"{GATEWAY_GROUP}/v1"
# A Gateway API document nested deeper than this is refused (the parsers read a few levels).
MAX_GATEWAY_API_DEPTH = 32
_GATEWAY_API_PARSERS: Mapping[str, Callable[[Mapping[str, Any]], Parsed[Any]]] = {
    GATEWAY_CLASS: parse_gateway_class,
    GATEWAY: parse_gateway,
    HTTP_ROUTE: parse_http_route,
    GRPC_ROUTE: parse_grpc_route,
    REFERENCE_GRANT: parse_reference_grant,
}
_GATEWAY_API_KEYS = ("apiVersion", "kind", "metadata", "spec")
_METADATA_KEYS = ("name", "namespace", "labels", "annotations")


@dataclass(frozen=True, slots=True)
class GatewayApiDocument:
    """One Gateway API object of a policy file: its kind, (namespace, name) (namespace "" for a
    GatewayClass), the typed parser's reading, and `origin`, `source:line` of the document. Its
    parser's problems are in the file's errors already."""

    kind: str
    key: tuple[str, str]
    parsed: Parsed[Any]
    origin: str


class _TooDeep(Exception):
    pass


def foreign_api(document: Node) -> str | None:
    """Why `document` is ignored, when it is an object of an API group neither meshplane's nor the
    Gateway API's (`apiVersion: v1` for a Namespace, `apps/v1`, `kustomize.config.k8s.io/…`): a
    folder a cluster applies from holds such objects beside meshplane's, and they are the
    cluster's, not meshplane's. None for any other document (read, or refused with a reason)."""
    if not isinstance(document, MappingNode):
        return None
    fields = {key.value: value for key, value in document.value if isinstance(key, ScalarNode)}
    version = fields.get("apiVersion")
    if not isinstance(version, ScalarNode) or not isinstance(version.value, str):
        return None
    group = version.value.rpartition("/")[0]
    if group in (GATEWAY_GROUP, MESHPLANE_GROUP):
        return None
    kind = fields.get("kind")
    named = f" {str(kind.value)[:80]}" if isinstance(kind, ScalarNode) else ""
    return (
        f"ignored: {version.value[:80]!r}{named} is not an object of meshplane's API ({MESHPLANE_GROUP}) "
        f"or of the Gateway API ({GATEWAY_GROUP})"
    )


def _is_gateway_api(document: Node) -> bool:
    """Whether `document` is read as a Gateway API object: it has `apiVersion`, or `kind` and none
    of a policy document's keys (`services: […]` beside a stray `kind:` stays a policy document,
    whose error names the stray key)."""
    if not isinstance(document, MappingNode):
        return False
    keys = {key.value for key, _ in document.value if isinstance(key, ScalarNode)}
    return "apiVersion" in keys or ("kind" in keys and keys.isdisjoint(KEYS["document"]))


def _gateway_api_document(reader: _Reader, node: Node) -> GatewayApiDocument | None:
    """The Gateway API object of `node`, its problems reported at their lines; None when it cannot
    be read as one (unknown kind, no name)."""
    fields = reader.mapping(node, "a Gateway API document", keys=_GATEWAY_API_KEYS)
    if fields is None:
        return None
    version = _required_string(reader, node, fields, "apiVersion", "a Gateway API document")
    kind = _required_string(reader, node, fields, "kind", "a Gateway API document")
    if version is not None and version != GATEWAY_API_VERSION:
        reader.error(fields["apiVersion"], f"apiVersion must be {GATEWAY_API_VERSION}, not {version!r}")
        return None
    if kind is None or version is None:
        return None
    if kind == BACKEND_TLS_POLICY:
        reader.error(fields["kind"], f"{kind} is not read from policy files")
        return None
    if kind not in _GATEWAY_API_PARSERS:
        reader.error(fields["kind"], f"unknown Gateway API kind {kind!r}{_suggest(kind, _GATEWAY_API_PARSERS)}")
        return None
    metadata = (
        reader.mapping(fields["metadata"], f"{kind} metadata", keys=_METADATA_KEYS) if "metadata" in fields else {}
    )
    if metadata is None or "name" not in metadata:
        if metadata is not None:
            reader.error(fields.get("metadata", node), f"{kind} needs `metadata.name`")
        return None
    name = reader.string(metadata["name"], f"{kind} metadata.name")
    namespace = DEFAULT_NAMESPACE if kind != GATEWAY_CLASS else ""
    if "namespace" in metadata:
        if kind == GATEWAY_CLASS:
            reader.error(metadata["namespace"], f"{kind} is cluster-scoped: it has no namespace")
        elif (given := reader.string(metadata["namespace"], f"{kind} metadata.namespace")) is not None:
            if len(given) > 63 or not DNS_LABEL.fullmatch(given):
                reader.error(metadata["namespace"], f"{kind} metadata.namespace {given!r} is not a DNS label")
                return None
            namespace = given
    if name is None:
        return None
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        reader.error(metadata["name"], f"{kind} metadata.name {name!r} is not a DNS subdomain name")
        return None
    lines: dict[str, int] = {"": node.start_mark.line + 1}
    try:
        spec = _json_value(reader, fields["spec"], "spec", lines, 1) if "spec" in fields else None
    except _TooDeep:
        reader.error(node, f"{kind} {name}: nested deeper than {MAX_GATEWAY_API_DEPTH} levels")
        return None
    obj: dict[str, Any] = {
        "apiVersion": version,
        "kind": kind,
        "metadata": {"name": name, "generation": 1, **({"namespace": namespace} if namespace else {})},
    }
    if spec is not None:
        obj["spec"] = spec
    parsed = _GATEWAY_API_PARSERS[kind](obj)
    for problem in parsed.problems:
        text = problem.message.removeprefix(f"{problem.subject}: ")
        line = _line_of(text.split(": ", 1)[0], lines)
        reader.errors.append((line, f"{reader.source}:{line}: {problem.message}"))
    return GatewayApiDocument(kind, (namespace, name), parsed, reader.origin(node))


def _json_value(reader: _Reader, node: Node, path: str, lines: dict[str, int], depth: int) -> Any:
    """`node` as the API server's JSON would have it (mappings, lists, str, int, float, bool,
    None), recording the line of every path (`spec.rules[0].matches`) in `lines`."""
    if depth > MAX_GATEWAY_API_DEPTH:
        raise _TooDeep
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, MappingNode):
        fields = reader.mapping(node, path, keys=())
        if fields is None:
            return None
        return {key: _json_value(reader, value, f"{path}.{key}", lines, depth + 1) for key, value in fields.items()}
    if isinstance(node, SequenceNode):
        items = reader.items(node, path)
        return [_json_value(reader, item, f"{path}[{index}]", lines, depth + 1) for index, item in enumerate(items)]
    if node.tag == _NULL:
        reader.visited()
        return None
    value = reader.scalar(node, path, "a value")
    if value is _BAD:
        return None
    if isinstance(value, str | bool | int | float):
        return value
    return str(node.value)  # a date or binary YAML typed: the text, as JSON would carry it


def _line_of(path: str, lines: Mapping[str, int]) -> int:
    """The line of `path` or of its closest enclosing field that has one."""
    while path not in lines:
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines[path]


# --- device policies ---


@_section_reader("device_policy")
def _device_policy(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> DevicePolicy | None:
    """A device policy (`model/device_policy.py`); what it means as a whole (classes and a default
    together, a provider without keys…) is the model's check, reported at this policy's line."""
    name = _required_string(reader, node, fields, "name", section)
    sites = _bounded_strings(reader, fields, "sites", section, MAX_SELECTED)
    classes = _bounded_strings(reader, fields, "classes", section, MAX_SELECTED)
    default = _optional(
        fields, "default", lambda value, what: reader.choice(value, what, DefaultAccess), f"{section}.default", None
    )
    allow = _service_accesses(reader, fields["allow"], f"{section}.allow") if "allow" in fields else None
    rate_limit = _device_rate_limit(reader, fields["rate_limit"]) if "rate_limit" in fields else None
    providers: list[JwtProvider] = []
    if "jwt_providers" in fields:
        items = reader.items(fields["jwt_providers"], f"{section}.jwt_providers")
        if len(items) > MAX_PROVIDERS:
            reader.error(fields["jwt_providers"], f"{section}.jwt_providers: at most {MAX_PROVIDERS}")
        providers = [provider for item in items if (provider := _jwt_provider(reader, item)) is not None]
    require: tuple[ServiceAccess, ...] = ()
    if "require_jwt" in fields:
        require = _service_accesses(reader, fields["require_jwt"], f"{section}.require_jwt")
    if name is None:
        return None
    return DevicePolicy(
        name, sites, classes, default, allow, rate_limit, tuple(providers), require, origin=reader.origin(node)
    )


def _bounded_strings(reader: _Reader, fields: Mapping[str, Node], key: str, section: str, most: int) -> tuple[str, ...]:
    if key not in fields:
        return _NO_STRINGS
    found = reader.strings(fields[key], f"{section}.{key}")
    if len(found) > most:
        reader.error(fields[key], f"{section}.{key}: at most {most}, not {len(found)}")
    return found


def _service_accesses(reader: _Reader, node: Node, what: str) -> tuple[ServiceAccess, ...]:
    items = reader.items(node, what)
    if len(items) > MAX_ACCESS:
        reader.error(node, f"{what}: at most {MAX_ACCESS} entries, not {len(items)}")
    return tuple(access for item in items if (access := _service_access(reader, item, what)) is not None)


def _service_access(reader: _Reader, node: Node, what: str) -> ServiceAccess | None:
    fields = _mapping_needing(reader, node, "device_policy.allow", "service")
    if fields is None:
        return None
    service = _service_ref(reader, fields["service"], f"{what}.service")
    paths: list[PathRule] = []
    for item in reader.items(fields["paths"], f"{what}.paths") if "paths" in fields else ():
        path = reader.mapping(item, "device_policy.allow.paths")
        if path is None:
            continue
        if len(path) != 1:
            reader.error(item, f"{what}.paths: each path is one of `exact: /p` or `prefix: /p`")
            continue
        [(kind, value)] = path.items()
        text = reader.string(value, f"{what}.paths.{kind}")
        if text is not None and not text.startswith("/"):
            reader.error(value, f"{what}.paths.{kind}: {text[:80]!r} must start with /")
        elif text is not None:
            paths.append(PathRule(PathKind(kind), text))
    methods = []
    for item in reader.items(fields["methods"], f"{what}.methods") if "methods" in fields else ():
        method = reader.string(item, f"{what}.methods")
        if method is not None and method not in HTTP_METHODS:
            reader.error(item, f"{what}.methods: {method[:20]!r} is not one of {', '.join(HTTP_METHODS)}")
        elif method is not None:
            methods.append(method)
    if service is None:
        return None
    return ServiceAccess(service, tuple(paths), tuple(methods))


def _device_rate_limit(reader: _Reader, node: Node) -> DeviceRateLimit | None:
    section = "device_policy.rate_limit"
    fields = _mapping_needing(reader, node, section, "requests")
    if fields is None:
        return None
    requests = reader.integer(fields["requests"], f"{section}.requests")
    interval = _optional(fields, "interval", reader.duration, f"{section}.interval", 1.0)
    burst = _optional(fields, "burst", reader.integer, f"{section}.burst", None)
    return None if requests is None else DeviceRateLimit(requests, interval, burst)


@_section_reader("device_policy.jwt_providers")
def _jwt_provider(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> JwtProvider | None:
    name = _required_string(reader, node, fields, "name", section)
    issuer = _required_string(reader, node, fields, "issuer", section)
    audiences = _bounded_strings(reader, fields, "audiences", section, MAX_AUDIENCES)
    jwks = _optional(fields, "jwks", reader.string, f"{section}.jwks", "")
    if jwks and (problem := jwks_problem(jwks)) is not None:
        reader.error(fields["jwks"], f"{section}.{problem}")
        return None
    jwks_file = _optional(fields, "jwks_file", reader.string, f"{section}.jwks_file", "")
    if jwks and jwks_file:
        reader.error(fields["jwks_file"], f"{section}: jwks and jwks_file are two sources of keys: give one")
        return None
    uri = None
    if "jwks_uri" in fields and (text := reader.string(fields["jwks_uri"], f"{section}.jwks_uri")) is not None:
        uri = JwksUri.parse(text)
        if uri is None:
            reader.error(fields["jwks_uri"], f"{section}.jwks_uri: {text[:200]!r} is not http://host[:port]/path")
            return None
    if name is None or issuer is None:
        return None
    return JwtProvider(name, issuer, audiences, jwks, uri, jwks_file)


# --- meshplane.io documents ------------------------------------------------------------------
#
# A document with `apiVersion: meshplane.io/v1alpha1` is one of meshplane's own kinds
# (`meshplane_api/kinds.py`): its `spec` holds a section's keys, spelled as in these files, and its
# metadata stands for the section's identity keys (`Kind.metadata_keys`). The spec is read by this
# module's own section readers, so a document means the same here and in a cluster; the API
# server's objects are read the same way (`read_spec`, which `meshplane_api/parse.py` calls).

_MESHPLANE_KEYS = ("apiVersion", "kind", "metadata", "spec")
# Read into content by kind: the model value each kind's spec becomes.
MeshplaneContent = Service | RouteTable | Site | Telemetry | PolicyAttachment | DevicePolicy


def _is_meshplane_api(document: Node) -> bool:
    """Whether `document` is an object of meshplane's own API: its `apiVersion` is in meshplane.io."""
    for key, value in document.value if isinstance(document, MappingNode) else ():
        if isinstance(key, ScalarNode) and key.value == "apiVersion" and isinstance(value, ScalarNode):
            return str(value.value).startswith(f"{MESHPLANE_GROUP}/")
    return False


def _meshplane_document(reader: _Reader, node: Node) -> MeshplaneContent | None:
    """The model value of a meshplane.io document, its problems reported at their lines; None when
    it cannot be read (unknown kind, no name, a spec that is no mapping)."""
    what = "a meshplane.io document"
    fields = reader.mapping(node, what, keys=_MESHPLANE_KEYS)
    if fields is None:
        return None
    version = _required_string(reader, node, fields, "apiVersion", what)
    kind_name = _required_string(reader, node, fields, "kind", what)
    if version is not None and version != MESHPLANE_API_VERSION:
        reader.error(fields["apiVersion"], f"apiVersion must be {MESHPLANE_API_VERSION}, not {version!r}")
        return None
    if kind_name is None or version is None:
        return None
    kind = kind_named(kind_name)
    if kind is None:
        names = [known.name for known in MESHPLANE_KINDS]
        reader.error(fields["kind"], f"unknown {MESHPLANE_GROUP} kind {kind_name!r}{_suggest(kind_name, names)}")
        return None
    metadata = (
        reader.mapping(fields["metadata"], f"{kind.name} metadata", keys=_METADATA_KEYS) if "metadata" in fields else {}
    )
    if metadata is None or "name" not in metadata:
        if metadata is not None:
            reader.error(fields.get("metadata", node), f"{kind.name} needs `metadata.name`")
        return None
    name = reader.string(metadata["name"], f"{kind.name} metadata.name")
    namespace = DEFAULT_NAMESPACE if kind.namespaced else ""
    if "namespace" in metadata:
        if not kind.namespaced:
            reader.error(metadata["namespace"], f"{kind.name} is cluster-scoped: it has no namespace")
        elif (given := reader.string(metadata["namespace"], f"{kind.name} metadata.namespace")) is not None:
            if len(given) > 63 or not DNS_LABEL.fullmatch(given):
                reader.error(metadata["namespace"], f"{kind.name} metadata.namespace {given!r} is not a DNS label")
                return None
            namespace = given
    if name is None:
        return None
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        reader.error(metadata["name"], f"{kind.name} metadata.name {name!r} is not a DNS subdomain name")
        return None
    spec = fields.get("spec")
    if spec is None:
        spec = MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
    saved = reader.default_namespace
    reader.default_namespace = namespace or DEFAULT_NAMESPACE
    try:
        return read_kind_spec(reader, kind, spec, node, name, namespace)
    finally:
        reader.default_namespace = saved


def read_spec(
    kind: Kind, spec: Node, name: str, namespace: str, created: str, origin: str
) -> tuple[MeshplaneContent | None, list[tuple[int, str, str]]]:
    """An API object's spec (composed into nodes, each at its own line) read as a policy document
    of `kind` named `name` in `namespace` is: the model value and the errors as (line, reason,
    field), reasons without a `source:line:` prefix (the caller names the object and the field of
    the line), `field` the section's field path the reason begins with ("" when the reason names
    none). Every model value's origin is `origin`. `created` orders TrafficPolicies."""
    reader = _Reader("", default_namespace=namespace or DEFAULT_NAMESPACE, fixed_origin=origin)
    value: MeshplaneContent | None = None
    try:
        value = read_kind_spec(reader, kind, spec, spec, name, namespace, created)
    except _TooManyNodes:
        reader.errors.append((0, f"more than {MAX_NODES} values"))
    return value, [
        (line, text.split(": ", 1)[1] if ": " in text else text, reader.fields.get(index, ""))
        for index, (line, text) in enumerate(reader.errors)
    ]


def read_kind_spec(
    reader: _Reader, kind: Kind, spec: Node, at: Node, name: str, namespace: str, created: str = ""
) -> MeshplaneContent | None:
    """`spec` read as `kind`'s section, with the identity keys taken from metadata (`name`,
    `namespace`); `at` is the node problems about the object as a whole are reported at."""
    if not isinstance(spec, MappingNode):
        reader.error(spec, f"{kind.name} spec must be a mapping, not {_kind(spec)}")
        return None
    for key, _ in spec.value:
        if isinstance(key, ScalarNode) and key.value in kind.metadata_keys:
            source = "metadata.namespace" if key.value == "namespace" else "metadata.name"
            field = f"spec.{key.value}"
            reader.error(key, f"{field}: a {kind.name} takes it from {source}, not from its spec", field)
            return None
    identity = {"name": name, "namespace": namespace, "id": name}
    mark = at.start_mark
    pairs = [
        (ScalarNode(_STR, key, mark, mark), ScalarNode(_STR, identity[key], mark, mark)) for key in kind.metadata_keys
    ]
    node = MappingNode("tag:yaml.org,2002:map", [*pairs, *spec.value], mark, at.end_mark)
    if kind.section == "traffic_policy":
        return _traffic_policy(reader, node, f"{namespace}/{name}", created)
    return _SPEC_READERS[kind.section](reader, node)


def _traffic_policy(reader: _Reader, node: Node, name: str, created: str) -> PolicyAttachment | None:
    """A TrafficPolicy's spec: `target_refs`, and a service's `policy` keys and `tls`."""
    section = "traffic_policy"
    fields = _mapping_needing(reader, node, section, "target_refs")
    if fields is None:
        return None
    items = reader.items(fields["target_refs"], f"{section}.target_refs")
    if not 1 <= len(items) <= _MAX_TARGETS:
        reader.error(fields["target_refs"], f"{section}.target_refs must list 1 to {_MAX_TARGETS} targets")
    targets = [target for item in items if (target := _target_ref(reader, item)) is not None]
    # The policy keys are read by the reader of a service's `policy`, as one mapping.
    assert isinstance(node, MappingNode)  # `_mapping_needing` read it as one
    policy_node = MappingNode(
        "tag:yaml.org,2002:map",
        [(key, value) for key, value in node.value if isinstance(key, ScalarNode) and key.value in POLICY_KEYS],
        node.start_mark,
        node.end_mark,
    )
    policy = _policy(reader, policy_node)
    tls = _tls(reader, fields["tls"]) if "tls" in fields else None
    if len(targets) != len(items) or not targets:
        return None
    return PolicyAttachment(name, tuple(targets), policy, tls, created, reader.origin(node))


_MAX_TARGETS = 16


@_section_reader("traffic_policy.target_refs")
def _target_ref(reader: _Reader, node: Node, fields: Mapping[str, Node], section: str) -> PolicyTarget | None:
    group = _optional(fields, "group", reader.string, f"{section}.group", "")
    kind = _optional(fields, "kind", lambda n, w: reader.choice(n, w, TargetKind), f"{section}.kind", None)
    name = _required_string(reader, node, fields, "name", section)
    if "kind" not in fields:
        reader.error(node, f"{section} needs `kind`")
    wanted = "" if kind is TargetKind.SERVICE else MESHPLANE_GROUP
    if kind is not None and group != wanted:
        reader.error(fields.get("group", node), f"{section}.group: {kind} is in group {wanted!r}, not {group!r}")
        return None
    if kind is None or name is None:
        return None
    return PolicyTarget(kind, reader.default_namespace, name)


_SPEC_READERS: Mapping[str, Callable[[_Reader, Node], MeshplaneContent | None]] = {
    "service": _service,
    "route": _route,
    "site": _site,
    "telemetry": _telemetry,
    "device_policy": _device_policy,
}
