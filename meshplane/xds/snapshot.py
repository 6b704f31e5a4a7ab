"""Immutable, versioned sets of Envoy resources: what one proxy group should have, all at once.

Owns `Resource` (a message with its content-hash version and its pre-serialised bytes),
`TypeResources` (one type's resources and their aggregate version) and `Snapshot` (every type,
plus `consistency_problems()`). A snapshot is built whole and never changed; the server shares
its bytes among every stream that receives it. Must not know streams, nodes or sources.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from google.protobuf.message import Message

from meshplane.xds import wire
from meshplane.xds.types import TypeUrl

# Field numbers of the repeated `resources` field, whose entries each Resource pre-encodes.
_SOTW_RESOURCES = 2  # DiscoveryResponse.resources (google.protobuf.Any)
_DELTA_RESOURCES = 2  # DeltaDiscoveryResponse.resources (envoy.service.discovery.v3.Resource)
_DELTA_RESOURCE_NAME = 3
_DELTA_RESOURCE_VERSION = 1
_DELTA_RESOURCE_BODY = 2

_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def content_version(data: bytes) -> str:
    """A version that is the same for the same content on every replica and after every restart."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True, eq=False)
class Resource:
    """One named resource, serialised once.

    `version` is a hash of its deterministic serialisation, so Delta clients reconnecting with
    `initial_resource_versions` are recognised by any replica. `sotw_entry` and `delta_entry`
    are the encodings of this resource as one entry of a SotW / Delta response's `resources`.
    """

    type_url: TypeUrl
    name: str
    version: str
    message: Message
    sotw_entry: bytes
    delta_entry: bytes

    @staticmethod
    def of(type_url: TypeUrl, name: str, message: Message) -> Resource:
        body = message.SerializeToString(deterministic=True)
        version = content_version(body)
        packed = wire.any_bytes(type_url.value, body)
        delta = (
            wire.string_field(_DELTA_RESOURCE_NAME, name)
            + wire.string_field(_DELTA_RESOURCE_VERSION, version)
            + wire.length_delimited(_DELTA_RESOURCE_BODY, packed)
        )
        return Resource(
            type_url=type_url,
            name=name,
            version=version,
            message=message,
            sotw_entry=wire.length_delimited(_SOTW_RESOURCES, packed),
            delta_entry=wire.length_delimited(_DELTA_RESOURCES, delta),
        )


def aggregate_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: a hash of their sorted (name, version) pairs."""
    digest = hashlib.blake2b(digest_size=8)
    for resource in sorted(resources, key=lambda r: r.name):
        digest.update(resource.name.encode())
        digest.update(b"\0")
        digest.update(resource.version.encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class TypeResources:
    """Every resource of one type in a snapshot, by name, with their aggregate version."""

    type_url: TypeUrl
    by_name: Mapping[str, Resource]
    version: str

    @staticmethod
    def of(type_url: TypeUrl, resources: Iterable[Resource]) -> TypeResources:
        ordered = sorted(resources, key=lambda r: r.name)
        by_name = {resource.name: resource for resource in ordered}
        if len(by_name) != len(ordered):
            names = [r.name for r in ordered]
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"{type_url.short}: resource names are not unique: {twice}")
        return TypeResources(type_url, MappingProxyType(by_name), aggregate_version(ordered))

    @staticmethod
    def empty(type_url: TypeUrl) -> TypeResources:
        return TypeResources.of(type_url, ())

    def __len__(self) -> int:
        return len(self.by_name)


# How many distinct (type, names) selections a snapshot remembers. Streams of one group nearly
# always ask for the same names, so a few entries serve thousands of streams.
_MEMO_LIMIT = 256


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every type's resources for one proxy group. Equal content gives equal versions.

    `select` and `sotw_body` remember their results: the snapshot never changes, so every stream
    asking for the same names shares one selection, one version and one encoded body.
    """

    types: Mapping[TypeUrl, TypeResources] = field(default_factory=dict)
    _memo: dict[tuple[str, TypeUrl, frozenset[str] | None], object] = field(
        default_factory=dict, compare=False, repr=False
    )

    @staticmethod
    def of(messages: Mapping[TypeUrl, Iterable[Message]]) -> Snapshot:
        """Serialises and versions `messages`; every type meshplane serves is present, maybe empty."""
        types = {
            type_url: TypeResources.of(
                type_url, (Resource.of(type_url, _name_of(m), m) for m in messages.get(type_url, ()))
            )
            for type_url in TypeUrl
        }
        return Snapshot(MappingProxyType(types))

    def with_type(self, resources: TypeResources) -> Snapshot:
        """A copy with one type replaced; the others are shared, not copied (the endpoint fast path)."""
        types = dict(self.types)
        types[resources.type_url] = resources
        return Snapshot(MappingProxyType(types))

    def of_type(self, type_url: TypeUrl) -> TypeResources:
        found = self.types.get(type_url)  # not `or`: an empty TypeResources is falsy
        return found if found is not None else TypeResources.empty(type_url)

    def select(self, type_url: TypeUrl, names: frozenset[str] | None) -> tuple[str, tuple[Resource, ...]]:
        """The resources of `type_url` named in `names` (all of them for None), and their version."""
        key = ("select", type_url, names)
        found = self._memo.get(key)
        if found is not None:
            return found  # type: ignore[return-value]
        resources = self.of_type(type_url)
        if names is None:
            result = (resources.version, tuple(resources.by_name.values()))
        else:
            chosen = tuple(resources.by_name[name] for name in sorted(names) if name in resources.by_name)
            result = (aggregate_version(chosen), chosen)
        self._remember(key, result)
        return result

    def sotw_body(self, type_url: TypeUrl, names: frozenset[str] | None, chosen: tuple[Resource, ...]) -> bytes:
        """The encoded `resources` entries of a SotW response holding `chosen` (selected by `names`)."""
        key = ("body", type_url, names)
        found = self._memo.get(key)
        if isinstance(found, tuple) and found[0] is chosen:
            return found[1]  # type: ignore[no-any-return]
        body = b"".join(resource.sotw_entry for resource in chosen)
        self._remember(key, (chosen, body))
        return body

    def _remember(self, key: tuple[str, TypeUrl, frozenset[str] | None], value: object) -> None:
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[key] = value

    @property
    def version(self) -> str:
        """One version for the whole snapshot, for logs and the status endpoint."""
        digest = hashlib.blake2b(digest_size=8)
        for type_url in TypeUrl:
            digest.update(self.of_type(type_url).version.encode())
        return digest.hexdigest()

    def consistency_problems(self) -> list[str]:
        """What a proxy would find missing: every EDS cluster's endpoints, every listener's routes.

        A snapshot with problems must not be published (go-control-plane's `Snapshot.Consistent`).
        """
        found = []
        endpoints = self.of_type(TypeUrl.ENDPOINT).by_name
        for resource in self.of_type(TypeUrl.CLUSTER).by_name.values():
            cluster = resource.message
            assert isinstance(cluster, cluster_pb2.Cluster)
            if cluster.type == cluster_pb2.Cluster.EDS:
                wanted = cluster.eds_cluster_config.service_name or cluster.name
                if wanted not in endpoints:
                    found.append(f"cluster {cluster.name} wants endpoints {wanted!r}, which are missing")
        routes = self.of_type(TypeUrl.ROUTE).by_name
        for resource in self.of_type(TypeUrl.LISTENER).by_name.values():
            for route_name in _rds_names(resource.message):
                if route_name not in routes:
                    found.append(f"listener {resource.name} wants routes {route_name!r}, which are missing")
        return found


def _name_of(message: Message) -> str:
    name = getattr(message, "name", None) or getattr(message, "cluster_name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{type(message).__name__} has no name")
    return name


def _rds_names(listener: Message) -> list[str]:
    """The RouteConfiguration names a listener's HTTP connection managers ask for over RDS."""
    assert isinstance(listener, listener_pb2.Listener)
    configs = []
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    for chain in [
        *listener.filter_chains,
        *([listener.default_filter_chain] if listener.HasField("default_filter_chain") else []),
    ]:
        configs += [f.typed_config for f in chain.filters if f.HasField("typed_config")]
    names = []
    for packed in configs:
        if packed.type_url != _HCM_TYPE:
            continue
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        packed.Unpack(hcm)
        if hcm.HasField("rds"):
            names.append(hcm.rds.route_config_name)
    return names
