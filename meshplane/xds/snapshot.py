"""Immutable, versioned sets of Envoy resources: what one proxy group should have, all at once.

Owns `Resource` (a message with its content-hash version and its pre-serialised bytes),
`TypeResources` (one type's resources and their aggregate version) and `Snapshot` (every type,
plus `consistency_problems()`). A snapshot is built whole and never changed; the server shares
its bytes among every stream that receives it. Holds content only: what the server derives from
a snapshot for its streams (selections, encoded responses) is the server's (`server/responses.py`).
Must not know streams, nodes, sources or translators.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf.message import Message

from meshplane.xds import wire
from meshplane.xds.references import rds_names, sds_secret_names
from meshplane.xds.types import TypeUrl

# Field numbers of the repeated `resources` field, whose entries each Resource pre-encodes.
_SOTW_RESOURCES = 2  # DiscoveryResponse.resources (google.protobuf.Any)
_DELTA_RESOURCES = 2  # DeltaDiscoveryResponse.resources (envoy.service.discovery.v3.Resource)
_DELTA_RESOURCE_NAME = 3
_DELTA_RESOURCE_VERSION = 1
_DELTA_RESOURCE_BODY = 2


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
    # A 64-bit hash of (name, version): aggregate versions are sums of these, so replacing one
    # resource updates its set's version in O(1) (the endpoint fast path).
    digest: int

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
            digest=int.from_bytes(hashlib.blake2b(f"{name}\0{version}".encode(), digest_size=8).digest(), "little"),
        )


_DIGEST_MASK = (1 << 64) - 1


def _digest_version(total: int) -> str:
    return format(total & _DIGEST_MASK, "016x")


def aggregate_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: the sum (mod 2^64) of their (name, version) hashes.

    Equal sets have equal versions whatever their order, on every replica and after restarts;
    a sum (not a hash of the sorted list) lets `TypeResources.replacing` update it in O(changes).
    """
    return _digest_version(sum(resource.digest for resource in resources))


@dataclass(frozen=True, slots=True, weakref_slot=True)
class TypeResources:
    """Every resource of one type in a snapshot, by name, with their aggregate version.

    A set made by `replacing` knows the set it was made from (`parent`, weakly: old sets must not
    pile up) and the names whose resource it replaced (`changed`), so a stream that holds exactly
    the parent can find what to send by looking at `changed` only. A set `Snapshot.of` made keeps
    the tuple of messages it was made from (`messages`), so `holds` knows that tuple at once.
    """

    type_url: TypeUrl
    by_name: Mapping[str, Resource]
    version: str
    digest_sum: int = field(default=0, compare=False)
    parent: weakref.ref[TypeResources] | None = field(default=None, compare=False, repr=False)
    changed: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    messages: tuple[Message, ...] | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def of(type_url: TypeUrl, resources: Iterable[Resource]) -> TypeResources:
        ordered = sorted(resources, key=lambda r: r.name)
        by_name = {resource.name: resource for resource in ordered}
        if len(by_name) != len(ordered):
            names = [r.name for r in ordered]
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"{type_url.short}: resource names are not unique: {twice}")
        total = sum(resource.digest for resource in ordered)
        return TypeResources(type_url, MappingProxyType(by_name), _digest_version(total), total)

    def replacing(self, changed: Iterable[Resource]) -> TypeResources:
        """A copy with the resources of the same names replaced by `changed`; the rest shared.

        Costs a dict copy plus O(len(changed)): no re-sorting, no re-hashing of the others.
        Raises KeyError for a name this set does not have (a new name is not an endpoint-only change).
        """
        by_name = dict(self.by_name)
        total = self.digest_sum
        names = []
        for resource in changed:
            before = by_name[resource.name]
            if before is not resource:
                total += resource.digest - before.digest
                by_name[resource.name] = resource
                names.append(resource.name)
        return TypeResources(
            self.type_url, MappingProxyType(by_name), _digest_version(total), total, weakref.ref(self), frozenset(names)
        )

    def changed_since(self, earlier: TypeResources) -> frozenset[str] | None:
        """The names whose resource differs from `earlier`, when this set was made from it by
        `replacing` (same names, some resources replaced); None when that is not known."""
        if self is earlier:
            return frozenset()
        if self.parent is not None and self.parent() is earlier:
            return self.changed
        return None

    def holds(self, messages: Sequence[Message]) -> bool:
        """Whether this set is of the very objects `messages`, in the same order (by name, as
        translators give them): then it is what `of` would make of them, already made."""
        if messages is self.messages:
            return True  # the very tuple it was made from (a translator's memo hands it back)
        if len(messages) != len(self.by_name):
            return False
        return all(map(operator.is_, messages, (resource.message for resource in self.by_name.values())))

    @staticmethod
    def empty(type_url: TypeUrl) -> TypeResources:
        return TypeResources.of(type_url, ())

    def __len__(self) -> int:
        return len(self.by_name)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Snapshot:
    """Every type's resources for one proxy group. Equal content gives equal versions.

    Weakly referenceable: the server keeps what it derives from a snapshot only while the
    snapshot lives (`server/responses.py`).
    """

    types: Mapping[TypeUrl, TypeResources] = field(default_factory=dict)

    @staticmethod
    def of(
        messages: Mapping[TypeUrl, Iterable[Message]], earlier: Snapshot | None = None, shared: Iterable[Snapshot] = ()
    ) -> Snapshot:
        """Serialises and versions `messages`; every type meshplane serves is present, maybe empty.

        A type whose messages are the very objects, in the same order, that `earlier` or one of
        `shared` holds for it (translators hand back what they built before for the same input,
        and the same parts to groups that get the same) takes that snapshot's set whole: nothing
        is serialised, sorted or summed again. In another type, a message that is the very object
        `earlier` holds keeps its `Resource`: serialised once, not once per snapshot.
        """
        candidates = [earlier, *shared] if earlier is not None else list(shared)
        types: dict[TypeUrl, TypeResources] = {}
        for type_url in TypeUrl:
            given = tuple(messages.get(type_url, ()))
            found = next((t for c in candidates if (t := c.of_type(type_url)).holds(given)), None)
            if found is None:
                known = {}
                if earlier is not None:
                    known = {id(r.message): r for r in earlier.of_type(type_url).by_name.values()}
                made = TypeResources.of(type_url, (_resource(type_url, m, known) for m in given))
                found = dataclasses.replace(made, messages=given)
            types[type_url] = found
        return Snapshot(MappingProxyType(types))

    def with_type(self, resources: TypeResources) -> Snapshot:
        """A copy with one type replaced; the others are shared, not copied (the endpoint fast path)."""
        types = dict(self.types)
        types[resources.type_url] = resources
        return Snapshot(MappingProxyType(types))

    def of_type(self, type_url: TypeUrl) -> TypeResources:
        found = self.types.get(type_url)  # not `or`: an empty TypeResources is falsy
        return found if found is not None else TypeResources.empty(type_url)

    @property
    def version(self) -> str:
        """One version for the whole snapshot, for logs and the status endpoint."""
        digest = hashlib.blake2b(digest_size=8)
        for type_url in TypeUrl:
            digest.update(self.of_type(type_url).version.encode())
        return digest.hexdigest()

    def consistency_problems(self, passed: Iterable[Snapshot] = ()) -> list[str]:
        """What a proxy would find missing: every EDS cluster's endpoints and SDS secrets, every
        listener's routes. (A cluster whose SDS secret never comes warms until the initial fetch timeout, and its TLS
        handshakes fail: Envoy's last good configuration is better than that.)

        `passed`: snapshots known to have no problems (the caller checked them, or built them so
        that they cannot have any). A part whose sets are the very sets of one of them is not
        looked at again: the clusters when this snapshot's clusters, endpoints and secrets are
        those of one snapshot passed, the listeners when its listeners and routes are. Equal
        objects give equal answers, so the result is the same; a change of routes alone then
        costs a look at the listeners only, not at thousands of clusters.

        A snapshot with problems must not be published (go-control-plane's `Snapshot.Consistent`).
        """
        found = []
        passed = tuple(passed)
        if not any(self._shares(other, _CLUSTER_PART) for other in passed):
            found += self._cluster_problems()
        if not any(self._shares(other, _LISTENER_PART) for other in passed):
            found += self._listener_problems()
        return found

    def _shares(self, other: Snapshot, type_urls: tuple[TypeUrl, ...]) -> bool:
        """Whether `other` holds the very sets this snapshot holds for every one of `type_urls`."""
        return all(self.types.get(type_url) is other.types.get(type_url) is not None for type_url in type_urls)

    def _cluster_problems(self) -> list[str]:
        found = []
        endpoints = self.of_type(TypeUrl.ENDPOINT).by_name
        secrets = self.of_type(TypeUrl.SECRET).by_name
        for resource in self.of_type(TypeUrl.CLUSTER).by_name.values():
            cluster = resource.message
            assert isinstance(cluster, cluster_pb2.Cluster)
            if cluster.type == cluster_pb2.Cluster.EDS:
                wanted = cluster.eds_cluster_config.service_name or cluster.name
                if wanted not in endpoints:
                    found.append(f"cluster {cluster.name} wants endpoints {wanted!r}, which are missing")
            for secret_name in sorted(sds_secret_names((cluster,))):
                if secret_name not in secrets:
                    found.append(f"cluster {cluster.name} wants secret {secret_name!r}, which is missing")
        return found

    def _listener_problems(self) -> list[str]:
        found = []
        routes = self.of_type(TypeUrl.ROUTE).by_name
        for resource in self.of_type(TypeUrl.LISTENER).by_name.values():
            listener = resource.message
            assert isinstance(listener, listener_pb2.Listener)
            for route_name in rds_names(listener):
                if route_name not in routes:
                    found.append(f"listener {resource.name} wants routes {route_name!r}, which are missing")
        return found


# The types each part of the consistency check reads.
_CLUSTER_PART = (TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.SECRET)
_LISTENER_PART = (TypeUrl.LISTENER, TypeUrl.ROUTE)


def _resource(type_url: TypeUrl, message: Message, known: Mapping[int, Resource]) -> Resource:
    """`message`'s Resource: the one in `known` (by the message's id) when it is that very message."""
    found = known.get(id(message))
    if found is not None and found.message is message and found.type_url is type_url:
        return found
    return Resource.of(type_url, _name_of(message), message)


def _name_of(message: Message) -> str:
    name = getattr(message, "name", None) or getattr(message, "cluster_name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{type(message).__name__} has no name")
    return name
