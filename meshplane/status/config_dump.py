"""Config dumps: what a proxy was last sent, or what a proxy of a kind would get now, as JSON.

Resources are rendered as Envoy's own `/config_dump` renders them (proto field names, `@type` on
every Any), so an operator can put the two side by side. Secrets never leave: every Secret's key
material and every private key or password anywhere is replaced by `[redacted]` (as Envoy's own
dump does), and the Secret type as a whole is withheld unless the request carries the admin token
(`withheld` in the dump says so). Reads only.
"""

from __future__ import annotations

import base64
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from google.protobuf import json_format

from meshplane.model import ProxyGroup, ProxyRole
from meshplane.status.document import group_fields, group_site, nack_document, node_types
from meshplane.xds.server.tracking import StreamTrack
from meshplane.xds.snapshot import Resource, Snapshot
from meshplane.xds.types import TypeUrl

REDACTED = "[redacted]"
SECRET_TYPES = frozenset({TypeUrl.SECRET})
# Fields whose value is key material wherever they appear (TLS contexts inlined in clusters or
# listeners included); names from envoy.extensions.transport_sockets.tls.v3.
_SECRET_FIELDS = frozenset(
    {"private_key", "password", "session_ticket_keys", "keys", "hmac_secret", "private_key_provider", "secret"}
)
# A DataSource's payload fields (envoy.config.core.v3.DataSource).
_DATA_SOURCE_FIELDS = frozenset({"inline_bytes", "inline_string", "filename", "environment_variable"})


class DumpError(ValueError):
    """A dump request that cannot be answered as asked (unknown parameter or value)."""


def _redact_all(value: Any) -> Any:
    """Every DataSource payload below `value` redacted, the structure kept."""
    if isinstance(value, dict):
        return {key: REDACTED if key in _DATA_SOURCE_FIELDS else _redact_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_all(item) for item in value]
    return value


def _redact_secret_fields(value: Any) -> Any:
    """Every field named like key material below `value` redacted: its DataSources, or its scalar."""
    if isinstance(value, dict):
        return {
            key: (_redact_all(item) if isinstance(item, dict | list) else REDACTED)
            if key in _SECRET_FIELDS
            else _redact_secret_fields(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact_secret_fields(item) for item in value]
    return value


def resource_document(resource: Resource) -> dict[str, Any]:
    """One resource as JSON with its name and version; key material redacted."""
    try:
        body: dict[str, Any] = json_format.MessageToDict(resource.message, preserving_proto_field_name=True)
    except (TypeError, KeyError):  # an Any whose type is not linked into this process
        body = {"unrendered": base64.b64encode(resource.message.SerializeToString(deterministic=True)).decode()}
    body = {"@type": resource.type_url.value, **body}
    body = _redact_secret_fields(body)
    if resource.type_url in SECRET_TYPES:
        body = _redact_all(body)
    return {"name": resource.name, "version": resource.version, "resource": body}


def _type_dump(resources: Iterable[Resource], extra: Mapping[str, Any]) -> dict[str, Any]:
    ordered = sorted(resources, key=lambda resource: resource.name)
    return {**extra, "resources": [resource_document(resource) for resource in ordered]}


def _withheld(authorized: bool) -> list[str]:
    return [] if authorized else sorted(type_url.short for type_url in SECRET_TYPES)


def node_dump(node_id: str, streams: list[StreamTrack], authorized: bool) -> dict[str, Any]:
    """What the proxy `node_id` was last sent, per type, over all of its current streams.

    A type's resources are the union of what its streams hold (a per-type proxy's EDS: every
    cluster's assignment, each from its own stream); its state, versions and NACK are combined as
    on `/status` (`document.node_types`).
    """
    newest = max(streams, key=lambda track: track.stream_id)
    combined = node_types(streams)
    types = {}
    for type_url in TypeUrl:
        entry = combined.get(type_url)
        if entry is None or (type_url in SECRET_TYPES and not authorized):
            continue
        types[type_url.short] = _type_dump(
            entry.sent_resources(),
            {
                "state": entry.state.value,
                "version": entry.sent_version or None,
                "acked_version": entry.acked_version or None,
                "last_nack": nack_document(entry.last_nack),
            },
        )
    return {
        "node": node_id,
        "source": "sent",
        "group": str(newest.group),
        "group_fields": group_fields(newest.group),
        "withheld": _withheld(authorized),
        "types": types,
    }


def group_dump(group: ProxyGroup, snapshot: Snapshot, authorized: bool) -> dict[str, Any]:
    """Every resource a proxy of `group` would get now."""
    types = {}
    for type_url in TypeUrl:
        if type_url in SECRET_TYPES and not authorized:
            continue
        resources = snapshot.of_type(type_url)
        types[type_url.short] = _type_dump(resources.by_name.values(), {"version": resources.version})
    return {
        "source": "current",
        "group": str(group),
        "group_fields": group_fields(group),
        "site": group_site(group),
        "version": snapshot.version,
        "withheld": _withheld(authorized),
        "types": types,
    }


def group_from_query(query: Mapping[str, str]) -> ProxyGroup:
    """The `ProxyGroup` that query parameters describe, whatever fields it has: each field by its
    name (`role=grpc`, `outbound_port=15002`, `site=…`), a nested dataclass by its own fields
    (`region=…&zone=…` for the locality). Missing fields take their defaults; a missing
    `outbound_port` the role's (`ProxyRole.default_outbound_port`: 15080 for an edge gateway), as
    for a proxy whose node leaves it out and in `meshplane bootstrap`'s output."""
    hints = typing.get_type_hints(ProxyGroup)
    values: dict[str, Any] = {}
    used: set[str] = set()
    for group_field in dataclasses.fields(ProxyGroup):
        kind = _concrete(hints[group_field.name])
        if dataclasses.is_dataclass(kind):
            nested_hints = typing.get_type_hints(kind)
            nested = {}
            for inner in dataclasses.fields(kind):
                if inner.name in query:
                    nested[inner.name] = _convert(inner.name, query[inner.name], _concrete(nested_hints[inner.name]))
                    used.add(inner.name)
            if nested:
                values[group_field.name] = kind(**nested)  # type: ignore[operator]  # a dataclass type
        elif group_field.name in query:
            values[group_field.name] = _convert(group_field.name, query[group_field.name], kind)
            used.add(group_field.name)
    unknown = sorted(set(query) - used)
    if unknown:
        raise DumpError(f"unknown parameter(s) {', '.join(unknown)}")
    if "outbound_port" not in values:
        values["outbound_port"] = ProxyRole(values.get("role", ProxyRole.SIDECAR)).default_outbound_port
    try:
        return ProxyGroup(**values)
    except (TypeError, ValueError) as error:
        raise DumpError(str(error)) from None


def _concrete(kind: Any) -> Any:
    """`X | None` → X."""
    arguments = [argument for argument in typing.get_args(kind) if argument is not type(None)]
    return arguments[0] if arguments else kind


def _convert(name: str, raw: str, kind: Any) -> Any:
    try:
        if isinstance(kind, type) and issubclass(kind, Enum):
            return kind(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            return raw.lower() in ("1", "true", "yes")
        return raw
    except ValueError:
        choices = ""
        if isinstance(kind, type) and issubclass(kind, Enum):
            choices = f" (one of: {', '.join(str(member.value) for member in kind)})"
        raise DumpError(f"{name}={raw!r} is not valid{choices}") from None
