"""BackendTLSPolicy: how a Gateway verifies the TLS of the backends it targets.

Owns the BackendTLSPolicy type (v1) and its parser, with the CRDs' rules: 1 to 16 targetRefs
(sectionName given for all references to one target or none, never twice), CA certificates from
`caCertificateRefs` or the `System` well-known set (exactly one of them), a hostname (SNI), at most
5 subjectAltNames each of type Hostname or URI with the matching field. Must not translate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import (
    DNS_SUBDOMAIN,
    HOSTNAME,
    KIND,
    SECTION_NAME,
    Fields,
    Parsed,
    created_of,
    metadata,
    subject_of,
)
from meshplane.discovery.gateway_api.references import LocalRef, local_ref

MAX_TARGET_REFS = 16
MAX_CA_REFS = 8
MAX_SUBJECT_ALT_NAMES = 5
MAX_OPTIONS = 16


@dataclass(frozen=True, slots=True)
class PolicyTarget:
    group: str
    kind: str
    name: str
    section_name: str | None = None


@dataclass(frozen=True, slots=True)
class SubjectAltName:
    type: str  # Hostname or URI
    value: str


@dataclass(frozen=True, slots=True)
class BackendTlsPolicy:
    namespace: str
    name: str
    generation: int
    target_refs: tuple[PolicyTarget, ...]
    hostname: str
    ca_certificate_refs: tuple[LocalRef, ...] = ()
    well_known_ca_certificates: str | None = None
    subject_alt_names: tuple[SubjectAltName, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    # metadata.creationTimestamp (RFC 3339, UTC: sorts as time): the oldest policy wins a conflict.
    created: str = ""


def _targets(fields: Fields, spec: Mapping[str, Any]) -> tuple[PolicyTarget, ...]:
    found: list[PolicyTarget] = []
    for where, item in fields.objects(spec, "targetRefs", "spec", max_items=MAX_TARGET_REFS, min_items=1):
        group = fields.text(item, "group", where, required=True, pattern=DNS_SUBDOMAIN)
        kind = fields.text(item, "kind", where, required=True, max_length=63, min_length=1, pattern=KIND)
        name = fields.text(item, "name", where, required=True, min_length=1)
        section = fields.text(item, "sectionName", where, min_length=1, pattern=SECTION_NAME)
        if group is None or kind is None or name is None:
            continue
        same = [t for t in found if (t.group, t.kind, t.name) == (group, kind, name)]
        if same and any((t.section_name is None) != (section is None) for t in same):
            fields.invalid(
                where, "sectionName must be specified when targetRefs includes 2 or more references to the same target"
            )
            continue
        if any(t.section_name == section for t in same):
            fields.invalid(
                where, "sectionName must be unique when targetRefs includes 2 or more references to the same target"
            )
            continue
        found.append(PolicyTarget(group, kind, name, section))
    return tuple(found)


def _subject_alt_names(fields: Fields, obj: Mapping[str, Any], path: str) -> tuple[SubjectAltName, ...]:
    found = []
    for where, item in fields.objects(obj, "subjectAltNames", path, max_items=MAX_SUBJECT_ALT_NAMES):
        kind = fields.choice(item, "type", where, ("Hostname", "URI"))
        if kind is None:
            if "type" not in item:
                fields.invalid(f"{where}.type", "is required")
            continue
        key, other = ("hostname", "uri") if kind == "Hostname" else ("uri", "hostname")
        if other in item:
            fields.invalid(where, f"SubjectAltName element must not contain {other}, if Type is set to {kind}")
            continue
        value = fields.text(
            item, key, where, required=True, min_length=1, pattern=HOSTNAME if kind == "Hostname" else None
        )
        if value is not None:
            found.append(SubjectAltName(kind, value))
    return tuple(found)


def parse_backend_tls_policy(obj: Mapping[str, Any]) -> Parsed[BackendTlsPolicy]:
    """The BackendTLSPolicy of `obj` (the API server's JSON) and what is wrong with it; never raises."""
    namespace, name, generation = metadata(obj)
    fields = Fields(subject_of("BackendTLSPolicy", namespace, name))
    spec = fields.child(obj, "spec", "")
    targets = _targets(fields, spec)
    validation = fields.child(spec, "validation", "spec")
    path = "spec.validation"
    if "validation" not in spec:
        fields.invalid(path, "is required")
    refs = []
    for where, item in fields.objects(validation, "caCertificateRefs", path, max_items=MAX_CA_REFS):
        ref = local_ref(fields, item, where)
        if ref is not None:
            refs.append(ref)
    well_known = fields.choice(validation, "wellKnownCACertificates", path, ("System",))
    if refs and well_known:
        fields.invalid(path, "must not contain both CACertificateRefs and WellKnownCACertificates")
    elif not refs and not well_known and "validation" in spec:
        fields.invalid(path, "must specify either CACertificateRefs or WellKnownCACertificates")
    hostname = fields.text(validation, "hostname", path, required="validation" in spec, min_length=1, pattern=HOSTNAME)
    names = _subject_alt_names(fields, validation, path)
    options: list[tuple[str, str]] = []
    raw = fields.child(spec, "options", "spec")
    if len(raw) > MAX_OPTIONS:
        fields.invalid("spec.options", f"has {len(raw)} entries, more than the {MAX_OPTIONS} allowed")
    for key, value in sorted(raw.items(), key=lambda item: str(item[0]))[:MAX_OPTIONS]:
        if isinstance(key, str) and isinstance(value, str) and len(key) <= 253 and len(value) <= 4096:
            options.append((key, value))
        else:
            fields.invalid("spec.options", f"{key!r}: keys and values must be strings")
    value = BackendTlsPolicy(
        namespace,
        name,
        generation,
        targets,
        hostname or "",
        tuple(refs),
        well_known,
        names,
        tuple(options),
        created_of(obj),
    )
    return Parsed(value, tuple(fields.problems))
