"""`meshplane convert`: policy files → documents of meshplane's own kinds, to apply to a cluster
(or commit where Flux applies from).

Owns the mapping: each `services` entry becomes an ExternalService (its `policy` and `tls` inline,
as in the file), each `routes` entry a MeshRoute, each `sites` entry an EdgeSite, each
`device_policies` entry a DevicePolicy, each `telemetry` section a MeshTelemetry; documents that
already have an `apiVersion` (Gateway API objects, meshplane.io objects) pass through unchanged;
each file secret becomes a Kubernetes Secret in the shape the Kubernetes Secrets source reads
(`kubernetes_secrets.py`: a `kubernetes.io/tls` Secret for a certificate, an `Opaque` one holding
`ca.crt` for a CA bundle, both labelled `meshplane.io/sds=true`), and the services' references to
them are rewritten to `namespace/name` (`namespace/name#ca` for a CA bundle). Spec keys are copied
as written, so the documents mean what the files meant; durations written as fractional numbers
become strings ("1.5s"), which the CRDs' int-or-string schema takes.

`--namespace` stands for the files' implicit "default": services without a namespace, every route
table and telemetry section, and the Secrets go there, and a service reference without a namespace
keeps meaning the same namespace as the document holding it; in the cluster-scoped kinds (a
DevicePolicy's `allow` and `require_jwt` entries), where a bare name would mean `default`, it is
written `namespace/name`. Files with errors are not converted
(`meshplane validate` says why). Reads files (the policy files and the secret files they name);
does not write them: the caller prints or writes `render()`'s text.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshplane.discovery.gateway_api.fields import DNS_SUBDOMAIN
from meshplane.discovery.kubernetes_secrets import (
    CA_KEY,
    CA_SUFFIX,
    DEFAULT_SECRET_SELECTOR,
    OPAQUE_TYPE,
    TLS_CERT_KEY,
    TLS_KEY_KEY,
    TLS_TYPE,
)
from meshplane.discovery.meshplane_api.kinds import (
    API_VERSION,
    DEVICE_POLICY,
    EDGE_SITE,
    EXTERNAL_SERVICE,
    MESH_ROUTE,
    MESH_TELEMETRY,
)
from meshplane.discovery.policy_fields import (
    Choice,
    Duration,
    FieldType,
    FreeMap,
    ListOf,
    OneOf,
    Section,
    Text,
    field_of,
)
from meshplane.discovery.policy_files import find_policy_files
from meshplane.discovery.policy_schema import DEFAULT_NAMESPACE, YAML_LOADER, parse_policy

_LABEL_KEY, _, _LABEL_VALUE = DEFAULT_SECRET_SELECTOR.partition("=")


@dataclass(frozen=True, slots=True)
class Conversion:
    """The documents (Secrets first, then the files' documents in file order), warnings (what was
    left out), and errors (nothing was converted when there are any)."""

    documents: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


class _Refused(Exception):
    pass


def convert(config: Path, namespace: str = DEFAULT_NAMESPACE, secrets: bool = True) -> Conversion:
    """The documents of the policy file or directory `config`. Blocking (reads files)."""
    paths = find_policy_files(config) if config.is_dir() else [config]
    texts: list[tuple[Path, str]] = []
    errors: list[str] = []
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            errors.append(f"{path}: {error}")
            continue
        errors += parse_policy(text, str(path)).errors
        texts.append((path, text))
    if errors:
        return Conversion(errors=tuple(errors))
    converter = _Converter(namespace, secrets)
    try:
        for path, text in texts:
            for node in yaml.compose_all(text, Loader=YAML_LOADER):
                converter.document(path, _generic(node) if _has_api_version(node) else _json(node, _DOCUMENT))
        converter.rewrite_references()
    except _Refused as refused:
        return Conversion(errors=(str(refused),))
    return Conversion((*converter.secrets, *converter.documents), tuple(converter.warnings))


def render(conversion: Conversion) -> str:
    """The documents as one YAML stream (no anchors: each document stands alone)."""
    return yaml.dump_all(conversion.documents, Dumper=_Dumper, sort_keys=False, width=120)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


# The policy files' values as the reader reads them: mapping keys as written (`on:` is a key, not
# YAML 1.1's true), a string field's text as written (`exact: 010` is "010"), merge keys merged.
_CONSTRUCTOR = SafeConstructor()
_DOCUMENT = Section("document")
_NULL = "tag:yaml.org,2002:null"


def _has_api_version(node: Node | None) -> bool:
    return isinstance(node, MappingNode) and any(
        isinstance(key, ScalarNode) and key.value in ("apiVersion", "kind") for key, _ in node.value
    )


def _pairs(node: MappingNode) -> list[tuple[str, Node]]:
    _CONSTRUCTOR.flatten_mapping(node)
    return [(str(key.value), value) for key, value in node.value if isinstance(key, ScalarNode)]


def _generic(node: Node | None) -> Any:
    """`node` as JSON values, typed as YAML types it (keys as written)."""
    if node is None:
        return None
    if isinstance(node, MappingNode):
        return {key: _generic(value) for key, value in _pairs(node)}
    if isinstance(node, SequenceNode):
        return [_generic(item) for item in node.value]
    if node.tag == _NULL:
        return None
    value = _CONSTRUCTOR.construct_object(node)
    return value if isinstance(value, str | int | float | bool) else str(node.value)


def _json(node: Node | None, kind: FieldType | None) -> Any:
    """`node` as JSON values, read as the field type `kind` says (None: as YAML types it); a
    duration written as a fractional number becomes a string ("1.5s")."""
    if node is None:
        return None
    match kind:
        case Section(name=name) if isinstance(node, MappingNode):
            return {key: _json(value, _field_type(name, key)) for key, value in _pairs(node)}
        case FreeMap(value=inner) if isinstance(node, MappingNode):
            return {key: _json(value, inner) for key, value in _pairs(node)}
        case ListOf(item=inner) if isinstance(node, SequenceNode):
            return [_json(item, inner) for item in node.value]
        case OneOf(types=types):
            for one in types:
                fits = (
                    (isinstance(one, Section) and isinstance(node, MappingNode))
                    or (isinstance(one, ListOf) and isinstance(node, SequenceNode))
                    or (not isinstance(one, Section | ListOf) and isinstance(node, ScalarNode))
                )
                if fits:
                    return _json(node, one)
        case Text() | Choice() if isinstance(node, ScalarNode) and node.tag != _NULL:
            return str(node.value)
        case Duration() if isinstance(node, ScalarNode):
            value = _generic(node)
            return f"{Decimal(repr(value)).normalize():f}s" if isinstance(value, float) else value
    return _generic(node)


def _field_type(section: str, key: str) -> FieldType | None:
    field = field_of(section, key)
    return None if field is None else field.type


class _Converter:
    def __init__(self, namespace: str, secrets: bool) -> None:
        self.namespace = namespace
        self.with_secrets = secrets
        self.documents: list[dict[str, Any]] = []
        self.secrets: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        # File secret name → the name a reference to it takes (`namespace/name`, `…#ca`).
        self.renamed: dict[str, str] = {}
        self.telemetry = 0

    def document(self, path: Path, document: Any) -> None:
        if not isinstance(document, Mapping):
            return  # an empty document (parse_policy accepted the file)
        if document.get("apiVersion") == API_VERSION:
            self.documents.append(dict(document))
            return
        if "apiVersion" in document or "kind" in document:
            self.documents.append(dict(document))
            return
        for service in document.get("services") or ():
            spec = {key: value for key, value in service.items() if key not in ("name", "namespace")}
            where = service.get("namespace", self.namespace)
            self.documents.append(_object(EXTERNAL_SERVICE, service["name"], where, spec))
        for route in document.get("routes") or ():
            spec = {key: value for key, value in route.items() if key != "name"}
            self.documents.append(_object(MESH_ROUTE, route["name"], self.namespace, spec))
        for site in document.get("sites") or ():
            spec = {key: value for key, value in site.items() if key != "id"}
            self.documents.append(_object(EDGE_SITE, site["id"], "", spec))
        for policy in document.get("device_policies") or ():
            spec = {key: value for key, value in policy.items() if key != "name"}
            if "jwt_providers" in spec:
                # An object has no directory to read a file from: its JWKS goes inline.
                spec["jwt_providers"] = [_inline_jwks(path.parent, provider) for provider in spec["jwt_providers"]]
            for key in ("allow", "require_jwt"):
                if isinstance(spec.get(key), list):
                    spec[key] = [self.qualified(entry) for entry in spec[key]]
            self.documents.append(_object(DEVICE_POLICY, policy["name"], "", spec))
        if document.get("telemetry"):
            self.telemetry += 1
            name = "telemetry" if self.telemetry == 1 else f"telemetry-{self.telemetry}"
            spec = dict(document["telemetry"])
            self.documents.append(_object(MESH_TELEMETRY, name, self.namespace, spec))
        for secret in document.get("secrets") or ():
            self.secret(path.parent, secret)

    def qualified(self, entry: Any) -> Any:
        """A device policy's service entry with a bare service name (the files' `default`) given
        the namespace the services go to: a DevicePolicy is cluster-scoped, so a bare name there
        means `default` whatever `--namespace` says."""
        if isinstance(entry, Mapping) and isinstance(name := entry.get("service"), str) and "/" not in name:
            return {**entry, "service": f"{self.namespace}/{name}"}
        return entry

    def secret(self, base: Path, secret: Mapping[str, Any]) -> None:
        name = str(secret["name"])
        if not self.with_secrets:
            self.warnings.append(
                f"secret {name} is left out (--no-secrets): create it as a Kubernetes Secret and "
                f"refer to it as {self.namespace}/{name}"
            )
            return
        if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
            raise _Refused(f"secret {name!r} cannot be a Kubernetes Secret's name (a DNS subdomain): rename it")
        metadata = {"name": name, "namespace": self.namespace, "labels": {_LABEL_KEY: _LABEL_VALUE}}
        if "ca_file" in secret:
            data = {CA_KEY: _base64(base / secret["ca_file"])}
            kind, reference = OPAQUE_TYPE, f"{self.namespace}/{name}{CA_SUFFIX}"
        else:
            data = {
                TLS_CERT_KEY: _base64(base / secret["certificate_file"]),
                TLS_KEY_KEY: _base64(base / secret["key_file"]),
            }
            kind, reference = TLS_TYPE, f"{self.namespace}/{name}"
        self.secrets.append({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": kind, "data": data})
        self.renamed[name] = reference

    def rewrite_references(self) -> None:
        """Every ExternalService's TLS naming a file secret, made to name its Secret."""
        if not self.renamed:
            return
        for document in self.documents:
            tls = document.get("spec", {}).get("tls") if document.get("kind") == EXTERNAL_SERVICE else None
            if not isinstance(tls, dict):
                continue
            for key in ("trust", "client_certificate"):
                if isinstance(tls.get(key), str) and tls[key] in self.renamed:
                    tls[key] = self.renamed[tls[key]]


def _inline_jwks(base: Path, provider: Mapping[str, Any]) -> dict[str, Any]:
    found = dict(provider)
    if "jwks_file" in found:
        path = base / str(found.pop("jwks_file"))
        try:
            found["jwks"] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise _Refused(f"{path}: {getattr(error, 'strerror', None) or error}") from error
    return found


def _base64(path: Path) -> str:
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as error:
        raise _Refused(f"{path}: {error.strerror or error}") from error


def _object(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def convert_command(config: Path, namespace: str, output: Path | None, secrets: bool, err: Any, out: Any) -> int:
    """`meshplane convert`: 0 with the documents written (to `output`, or `out`), warnings on
    `err`; 1 with the errors on `err` when the files cannot be converted."""
    conversion = convert(config, namespace, secrets)
    for warning in conversion.warnings:
        print(f"meshplane convert: warning: {warning}", file=err)
    if conversion.errors:
        for error in conversion.errors:
            print(f"meshplane convert: {error}", file=err)
        return 1
    text = render(conversion)
    if output is None:
        out.write(text)
    else:
        output.write_text(text)
    return 0


def documents_of(text: str) -> list[dict[str, Any]]:
    """The documents of a YAML stream as JSON values, keys as written (`on:` stays "on", where
    YAML 1.1 loaders, kubectl's among them, make it `true`: quote it for kubectl)."""
    return [
        document
        for document in (_generic(node) for node in yaml.compose_all(text, Loader=YAML_LOADER))
        if isinstance(document, dict)
    ]
