"""The Client Status Discovery Service (CSDS, `envoy.service.status.v3`): which proxies this server
serves, in what sync state, and what each was last sent, for standard tools.

Owns the answer to a `ClientStatusRequest` and who may ask for one. Reads the stream registry
(tracking.py) and the open streams' subscribed types; never writes either, never touches a cache
or a snapshot: being asked changes nothing a proxy gets.

The answer: one `ClientConfig` per connected node id (its streams merged: a per-type proxy's
several streams are one client), with the node as its newest stream's first request carried it,
and one `GenericXdsConfig` per resource the proxy was last sent (from the newest of its streams
that holds it). A resource takes the state of the response that last carried it on that stream
(`TypeTrack.state`): SYNCED / CLIENT_ACKED once that response was ACKed, STALE / CLIENT_UNKNOWN
while it awaits its answer, ERROR / CLIENT_NACKED when it was NACKed (`error_state` holding the
NACK's message, bounded as tracking.py keeps it). A subscribed type nothing was sent of yet is one
entry with an empty name, and a secret withheld from an unauthenticated stream (keys.py) one entry
with its name, both NOT_SENT / CLIENT_REQUESTED, without contents. Every Secret's key material is
redacted from `xds_config` as /config dumps redact it: every DataSource payload below a Secret
becomes `[redacted]`, a private key provider is left out.

Who may ask (`access_refusal`): with `--admin-token`, only a caller that sends it as
`authorization: Bearer <token>` metadata; without one, only a caller on loopback, and nobody when
the xDS port authenticates proxies (`--client-ca`, `--xds-tokens`): a proxy's credential grants
roles, never an operator's view of every proxy.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import re2  # type: ignore[import-untyped]
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2, struct_pb2, value_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf import struct_pb2 as protobuf_struct_pb2
from google.protobuf.message import Message

from meshplane.grpc_limits import client_address
from meshplane.model.limits import regex_problem
from meshplane.xds.server.tracking import StreamTrack, SyncState, TypeTrack, bounded_text
from meshplane.xds.snapshot import Resource
from meshplane.xds.types import TypeUrl

log = logging.getLogger(__name__)

SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"

# Clients in one answer: the first this many node ids in order; a fleet bigger than this is
# read in parts, each selected by a node-id prefix matcher.
MAX_CLIENTS = 10_000
# What a request may ask: matchers, the text of one string matcher, the keys of one metadata path.
MAX_NODE_MATCHERS = 64
MAX_MATCH_TEXT = 1024
MAX_METADATA_PATH = 16
# A refusal's message may quote what the caller sent: at most this many UTF-8 bytes of it.
MAX_REFUSAL_BYTES = 2048

REDACTED = "[redacted]"
_DATA_SOURCE = base_pb2.DataSource.DESCRIPTOR.full_name

_CONFIG_STATUS = {
    SyncState.SYNCED: csds_pb2.SYNCED,
    SyncState.STALE: csds_pb2.STALE,
    SyncState.NACKED: csds_pb2.ERROR,
    SyncState.NOT_SENT: csds_pb2.NOT_SENT,
}
_CLIENT_STATUS = {
    SyncState.SYNCED: csds_pb2.CLIENT_ACKED,
    SyncState.STALE: csds_pb2.CLIENT_UNKNOWN,  # sent: the proxy has not said yet what it made of it
    SyncState.NACKED: csds_pb2.CLIENT_NACKED,
    SyncState.NOT_SENT: csds_pb2.CLIENT_REQUESTED,
}


class CsdsRefusal(Exception):
    """A request or caller CSDS does not answer: the gRPC status code and the reason."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = bounded_text(message, MAX_REFUSAL_BYTES)


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def is_loopback(peer: str) -> bool:
    """True when the gRPC peer string names a loopback address (`ipv4:127.0.0.1:5555`, `ipv6:[::1]:5555`)."""
    try:
        address = ipaddress.ip_address(client_address(peer))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def access_refusal(
    peer: str, metadata: Iterable[tuple[str, str | bytes]], admin_token: str | None, authenticates_clients: bool
) -> CsdsRefusal | None:
    """Why the caller at `peer` with `metadata` may not use CSDS; None when it may (see the module)."""
    if admin_token is not None:
        given = _bearer(metadata)
        if given is None:
            return CsdsRefusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "CSDS answers operators only: send the admin token as `authorization: Bearer <token>` metadata",
            )
        # Digests first, so the comparison takes the same time whatever the given token's length.
        expected = hashlib.sha256(admin_token.encode()).digest()
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), expected):
            return CsdsRefusal(grpc.StatusCode.PERMISSION_DENIED, "CSDS refused: wrong admin token")
        return None
    if authenticates_clients:
        return CsdsRefusal(
            grpc.StatusCode.PERMISSION_DENIED,
            "CSDS needs --admin-token on a server whose xDS port authenticates proxies (--client-ca, "
            "--xds-tokens): a proxy's credential does not make its holder an operator",
        )
    if not is_loopback(peer):
        return CsdsRefusal(
            grpc.StatusCode.PERMISSION_DENIED,
            "CSDS answers only callers on loopback when no --admin-token is configured; "
            "set one to ask from another host",
        )
    return None


# --- node matchers ---------------------------------------------------------------------------

NodePredicate = Callable[[base_pb2.Node], bool]


def _invalid(message: str) -> CsdsRefusal:
    return CsdsRefusal(grpc.StatusCode.INVALID_ARGUMENT, message)


def _string_predicate(matcher: string_pb2.StringMatcher, what: str) -> Callable[[str], bool]:
    """`matcher` as a predicate, as Envoy matches: a regex matches the whole string, `ignore_case`
    applies to exact, prefix, suffix and contains."""
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        pattern = matcher.safe_regex.regex
        if len(pattern) > MAX_MATCH_TEXT:
            raise _invalid(f"{what}: a regex of {len(pattern)} characters; at most {MAX_MATCH_TEXT}")
        if (problem := regex_problem(pattern)) is not None:
            raise _invalid(f"{what}: {problem}")
        compiled = re2.compile(pattern)
        return lambda value: compiled.fullmatch(value) is not None
    if kind not in ("exact", "prefix", "suffix", "contains"):
        raise _invalid(f"{what}: {kind or 'no'} match pattern; CSDS takes exact, prefix, suffix, contains, safe_regex")
    text = str(getattr(matcher, kind))
    if len(text) > MAX_MATCH_TEXT:
        raise _invalid(f"{what}: a {kind} of {len(text)} characters; at most {MAX_MATCH_TEXT}")
    fold: Callable[[str], str] = str.lower if matcher.ignore_case else str
    wanted = fold(text)
    tests: dict[str, Callable[[str], bool]] = {
        "exact": lambda value: value == wanted,
        "prefix": lambda value: value.startswith(wanted),
        "suffix": lambda value: value.endswith(wanted),
        "contains": lambda value: wanted in value,
    }
    test = tests[kind]
    return lambda value: test(fold(value))


def _value_predicate(matcher: value_pb2.ValueMatcher, what: str) -> Callable[[protobuf_struct_pb2.Value | None], bool]:
    """`matcher` as a predicate on a metadata value (None: the path is absent)."""
    kind = matcher.WhichOneof("match_pattern")
    if kind == "present_match":
        present = matcher.present_match
        return lambda value: (value is not None) == present
    if kind == "null_match":
        return lambda value: _kind(value) == "null_value"
    if kind == "bool_match":
        wanted = matcher.bool_match
        return lambda value: _kind(value) == "bool_value" and value is not None and value.bool_value == wanted
    if kind == "string_match":
        test = _string_predicate(matcher.string_match, what)
        return lambda value: _kind(value) == "string_value" and value is not None and test(value.string_value)
    raise _invalid(f"{what}: {kind or 'no'} value match; CSDS takes string, bool, present and null matches")


def _kind(value: protobuf_struct_pb2.Value | None) -> str | None:
    return value.WhichOneof("kind") if value is not None else None


def _metadata_predicate(matcher: struct_pb2.StructMatcher, what: str) -> NodePredicate:
    path = [segment.key for segment in matcher.path]
    if not path or len(path) > MAX_METADATA_PATH or any(len(key) > MAX_MATCH_TEXT for key in path):
        raise _invalid(f"{what}: a path of 1 to {MAX_METADATA_PATH} keys, each at most {MAX_MATCH_TEXT} characters")
    test = _value_predicate(matcher.value, what)

    def matches(node: base_pb2.Node) -> bool:
        fields: Any = node.metadata.fields
        value: protobuf_struct_pb2.Value | None = None
        for depth, key in enumerate(path):
            if key not in fields:
                return test(None)
            value = fields[key]
            if depth < len(path) - 1:
                if value.WhichOneof("kind") != "struct_value":
                    return test(None)
                fields = value.struct_value.fields
        return test(value)

    return matches


def _id_predicate(test: Callable[[str], bool]) -> NodePredicate:
    return lambda node: test(node.id)


def _all_of(parts: tuple[NodePredicate, ...]) -> NodePredicate:
    return lambda node: all(part(node) for part in parts)


def node_predicates(matchers: Sequence[node_pb2.NodeMatcher]) -> list[NodePredicate]:
    """Each matcher as a predicate on a node: its id matcher (when set) and every metadata matcher
    must match. Raises CsdsRefusal (INVALID_ARGUMENT) for one that cannot be answered as asked."""
    if len(matchers) > MAX_NODE_MATCHERS:
        raise _invalid(f"{len(matchers)} node matchers; at most {MAX_NODE_MATCHERS}")
    predicates: list[NodePredicate] = []
    for index, matcher in enumerate(matchers, 1):
        parts: list[NodePredicate] = []
        if matcher.HasField("node_id"):
            parts.append(_id_predicate(_string_predicate(matcher.node_id, f"node matcher {index}: node_id")))
        for position, metadata in enumerate(matcher.node_metadatas, 1):
            parts.append(_metadata_predicate(metadata, f"node matcher {index}: node_metadatas {position}"))
        predicates.append(_all_of(tuple(parts)))
    return predicates


# --- the answer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenStream:
    """What CSDS reads of one open stream: its record and the types it subscribed to."""

    track: StreamTrack
    subscribed: Collection[TypeUrl]


def node_of(track: StreamTrack) -> base_pb2.Node:
    """The node the stream's first request carried; its id and cluster for a record kept without it."""
    return track.node if track.node is not None else base_pb2.Node(id=track.node_id, cluster=track.node_cluster)


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _redact_data_sources(message: Message) -> None:
    """Every DataSource below `message` set to `[redacted]`, every private key provider cleared."""
    for descriptor, value in message.ListFields():
        if descriptor.name == "private_key_provider":
            message.ClearField(descriptor.name)
            continue
        # Key material is a DataSource or a provider, never a scalar nor inside a map (a Secret has none).
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        for item in value if descriptor.is_repeated else (value,):
            if descriptor.message_type.full_name == _DATA_SOURCE:
                item.Clear()
                item.inline_string = REDACTED
            else:
                _redact_data_sources(item)


def resource_any(resource: Resource) -> any_pb2.Any:
    """`resource` as an Any; a Secret with its key material redacted (`_redact_data_sources`)."""
    message = resource.message
    if resource.type_url is TypeUrl.SECRET:
        message = type(message)()
        message.CopyFrom(resource.message)
        _redact_data_sources(message)
    return any_pb2.Any(type_url=resource.type_url.value, value=message.SerializeToString(deterministic=True))


# One answer's packed resources by the identity of their `Resource`: the proxies of one group hold
# the same snapshot objects, so each is packed once per answer, not once per proxy holding it.
Packed = dict[int, any_pb2.Any] | None


def _resource_config(
    type_url: TypeUrl, resource: Resource | None, entry: TypeTrack, packed: Packed
) -> csds_pb2.ClientConfig.GenericXdsConfig:
    """The entry of `resource` as `entry` (its stream's record of the type) last sent it; with no
    resource, the entry of a type whose last response carried none (a SotW response with no
    listeners, say), named "". `packed` None: without the resource's contents."""
    state = entry.state
    config = csds_pb2.ClientConfig.GenericXdsConfig(
        type_url=type_url.value,
        name=resource.name if resource is not None else "",
        version_info=entry.sent_version,
        last_updated=_timestamp(entry.sent_at),
        config_status=_CONFIG_STATUS[state],
        client_status=_CLIENT_STATUS[state],
    )
    if resource is not None and packed is not None:
        if (contents := packed.get(id(resource))) is None:
            contents = packed[id(resource)] = resource_any(resource)
        config.xds_config.CopyFrom(contents)
    if state is SyncState.NACKED and entry.last_nack is not None:
        nack = entry.last_nack
        config.error_state.details = nack.message
        config.error_state.version_info = nack.rejected_version
        config.error_state.last_update_attempt.CopyFrom(_timestamp(nack.at))
    return config


def _not_sent(type_url: TypeUrl, name: str) -> csds_pb2.ClientConfig.GenericXdsConfig:
    return csds_pb2.ClientConfig.GenericXdsConfig(
        type_url=type_url.value, name=name, config_status=csds_pb2.NOT_SENT, client_status=csds_pb2.CLIENT_REQUESTED
    )


def client_config(streams: Sequence[OpenStream], packed: Packed) -> csds_pb2.ClientConfig:
    """One node's `ClientConfig` over all of its open streams (see the module for what it holds);
    `packed` None: without the resources' contents (`exclude_resource_contents`)."""
    oldest_first = sorted(streams, key=lambda stream: stream.track.stream_id)
    # (type, name) → the newest stream's record holding it: a reconnected proxy's new stream wins
    # over the old one not closed yet; a per-type proxy's streams, each holding its own, all count.
    held: dict[tuple[TypeUrl, str], tuple[Resource, TypeTrack]] = {}
    withheld: set[tuple[TypeUrl, str]] = set()
    subscribed: set[TypeUrl] = set()
    sent: dict[TypeUrl, TypeTrack] = {}  # per type, the newest stream's record that was sent any response
    for stream in oldest_first:
        subscribed.update(stream.subscribed)
        for type_url, entry in stream.track.types.items():
            for resource in entry.sent_resources():
                held[type_url, resource.name] = (resource, entry)
            withheld.update((type_url, name) for name in entry.keys_withheld)
            if entry.sent_seq:
                sent[type_url] = entry
    configs = [_resource_config(type_url, resource, entry, packed) for (type_url, _), (resource, entry) in held.items()]
    configs += [_not_sent(type_url, name) for type_url, name in withheld - held.keys()]
    types_held = {type_url for type_url, _ in held} | {type_url for type_url, _ in withheld}
    configs += [_resource_config(type_url, None, sent[type_url], packed) for type_url in sent.keys() - types_held]
    configs += [_not_sent(type_url, "") for type_url in subscribed - types_held - sent.keys()]
    configs.sort(key=lambda config: (config.type_url, config.name))
    return csds_pb2.ClientConfig(node=node_of(oldest_first[-1].track), generic_xds_configs=configs)


def client_status(
    request: csds_pb2.ClientStatusRequest, streams: Iterable[OpenStream]
) -> csds_pb2.ClientStatusResponse:
    """The answer to `request` over the open `streams`: every node when it has no matchers, else
    the nodes any matcher matches (OR, as the API says); at most `MAX_CLIENTS`, by node id.
    Raises CsdsRefusal (INVALID_ARGUMENT) for matchers it cannot answer as asked."""
    predicates = node_predicates(request.node_matchers)
    by_node: dict[str, list[OpenStream]] = {}
    for stream in streams:
        by_node.setdefault(stream.track.node_id, []).append(stream)
    packed: Packed = None if request.exclude_resource_contents else {}
    configs = []
    for node_id in sorted(by_node):
        node_streams = by_node[node_id]
        node = node_of(max(node_streams, key=lambda stream: stream.track.stream_id).track)
        if predicates and not any(predicate(node) for predicate in predicates):
            continue
        configs.append(client_config(node_streams, packed))
        if len(configs) == MAX_CLIENTS:
            break
    return csds_pb2.ClientStatusResponse(config=configs)


class ClientStatusService:
    """The CSDS gRPC handlers over the server's open streams (`open_streams`, read per request)."""

    def __init__(
        self,
        open_streams: Callable[[], Iterable[OpenStream]],
        admin_token: str | None = None,
        authenticates_clients: bool = False,
    ) -> None:
        self._open_streams = open_streams
        self._admin_token = admin_token
        self._authenticates_clients = authenticates_clients

    async def _check_access(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        refusal = access_refusal(
            context.peer(), context.invocation_metadata() or (), self._admin_token, self._authenticates_clients
        )
        if refusal is not None:
            log.warning("refused CSDS call from %s: %s", bounded_text(context.peer(), 256), refusal.message)
            await context.abort(refusal.code, refusal.message)

    async def _answer(
        self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> csds_pb2.ClientStatusResponse:
        try:
            return client_status(request, self._open_streams())
        except CsdsRefusal as refusal:
            await context.abort(refusal.code, refusal.message)

    async def fetch(
        self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> csds_pb2.ClientStatusResponse:
        await self._check_access(context)
        return await self._answer(request, context)

    async def stream(
        self, requests: AsyncIterator[csds_pb2.ClientStatusRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        """One response per request, until the caller closes its side; a request that cannot be
        answered ends the stream with INVALID_ARGUMENT and the reason."""
        await self._check_access(context)
        async for request in requests:
            yield await self._answer(request, context)

    def generic_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        request = csds_pb2.ClientStatusRequest.FromString
        response = csds_pb2.ClientStatusResponse.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                    self.fetch, request_deserializer=request, response_serializer=response
                ),
                "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
                    self.stream, request_deserializer=request, response_serializer=response
                ),
            },
        )
