"""What the server derives from one snapshot for its streams, computed once and shared by all of them.

Thousands of streams of a proxy group ask the same snapshot the same questions: the resources for
the same names, the same encoded body, the same whole response when they are in step. A snapshot
never changes, so each answer is computed for the first stream and handed, as the very same object,
to every other: one selection, one body, one response in memory however many streams send it, and
the later lookups are hits on objects the streams already share (`intern_names`).

Owns `ResponseCache`: one per server (`XdsServices`), holding per snapshot its selections with their
aggregate versions, encoded SotW bodies, interned name sets, whole shared responses, and the other
values the SotW rules derive (a selection less the withheld keys, the resources a client may lack,
the clusters a snapshot dropped, the secrets holding private keys). What it holds for a snapshot is
dropped with the snapshot (the cache refers to it weakly), and is bounded per snapshot: at most
`DERIVED_LIMIT` derived values and `RESPONSE_LIMIT` whole responses (they are large).

Used on the event loop only, by the streams; nothing here locks. (A snapshot dropped on another
thread drops its entry there: one `dict.pop`, atomic under the GIL.) Decides no content (the
snapshot's) and no protocol rule (the streams'): what it computes are plain functions of a snapshot
and of selections streams hold; what to send, and when, the streams decide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meshplane.xds.server.keys import private_key_secrets
from meshplane.xds.server.while_alive import WhileAlive
from meshplane.xds.snapshot import Resource, Snapshot, aggregate_version
from meshplane.xds.types import TypeUrl

# How many derived values (selections, bodies, name sets, …) one snapshot keeps. Streams of one
# group nearly always ask for the same names, so a few entries serve thousands of streams.
DERIVED_LIMIT = 256
# Whole responses kept per snapshot (each is as large as the selection it carries).
RESPONSE_LIMIT = 16

Resources = tuple[Resource, ...]
"""Resources sorted by name: a selection's (shared by the streams that hold it), or a part of one."""

Selection = tuple[str, Resources]
"""Resources chosen from a snapshot, sorted by name, with their aggregate version."""

Names = frozenset[str] | None
"""The names a stream subscribes to; None for every resource of the type (a wildcard)."""

ResponseKey = tuple[TypeUrl, str, str, Resources | None]
"""What decides a SotW response's bytes: type, version, nonce, and what it carries when that is not
the whole selection (None: the whole selection, which `version` decides)."""


@dataclass(slots=True)
class _Derived:
    """Everything remembered for one snapshot. Each table is typed by what it holds; `size` counts
    the entries of all but `responses` against `DERIVED_LIMIT`."""

    selections: dict[tuple[TypeUrl, Names], Selection] = field(default_factory=dict)
    bodies: dict[tuple[TypeUrl, Names], tuple[Resources, bytes]] = field(default_factory=dict)
    names: dict[frozenset[str], frozenset[str]] = field(default_factory=dict)
    without_keys: dict[tuple[TypeUrl, Names], Selection] = field(default_factory=dict)
    changed: dict[tuple[TypeUrl, Resources, Resources, Resources], Resources] = field(default_factory=dict)
    gone: dict[tuple[TypeUrl, Resources], Resources] = field(default_factory=dict)
    private_keys: frozenset[str] | None = None
    responses: dict[ResponseKey, bytes] = field(default_factory=dict)
    size: int = 0

    def reserve(self) -> bool:
        """Counts one more derived value to keep, if `DERIVED_LIMIT` allows; False when it does not."""
        if self.size < DERIVED_LIMIT:
            self.size += 1
            return True
        return False


class ResponseCache:
    """Per-snapshot answers shared by every stream of a server. Event loop only (see the module).

    Every method takes the snapshot the answer is about; an answer is kept while that snapshot
    lives, and never outlives it.
    """

    def __init__(self) -> None:
        self._kept: WhileAlive[Snapshot, _Derived] = WhileAlive(_Derived)

    def __len__(self) -> int:
        """How many snapshots have something remembered (those still alive)."""
        return len(self._kept)

    def _derived(self, snapshot: Snapshot) -> _Derived:
        return self._kept.get(snapshot)

    def select(self, snapshot: Snapshot, type_url: TypeUrl, names: Names) -> Selection:
        """The resources of `type_url` named in `names` (all of them for None), and their version:
        the same objects for every stream asking for the same names."""
        derived = self._derived(snapshot)
        found = derived.selections.get((type_url, names))
        if found is not None:
            return found
        resources = snapshot.of_type(type_url)
        if names is None:
            result: Selection = (resources.version, tuple(resources.by_name.values()))
        else:
            chosen = tuple(resources.by_name[name] for name in sorted(names) if name in resources.by_name)
            result = (aggregate_version(chosen), chosen)
        if derived.reserve():
            derived.selections[(type_url, names)] = result
        return result

    def sotw_body(self, snapshot: Snapshot, type_url: TypeUrl, names: Names, chosen: Resources) -> bytes:
        """The encoded `resources` entries of a SotW response holding `chosen` (selected by `names`)."""
        derived = self._derived(snapshot)
        found = derived.bodies.get((type_url, names))
        if found is not None and found[0] is chosen:
            return found[1]
        body = b"".join(resource.sotw_entry for resource in chosen)
        if found is not None or derived.reserve():
            derived.bodies[(type_url, names)] = (chosen, body)
        return body

    def intern_names(self, snapshot: Snapshot, names: frozenset[str]) -> frozenset[str]:
        """One shared set object for every stream asking for the same names.

        Thousands of streams of a group subscribe to the same names; sharing the set (and its
        strings) keeps per-stream memory flat, and makes the lookups keyed by names identity hits.
        """
        derived = self._derived(snapshot)
        found = derived.names.get(names)
        if found is not None:
            return found
        if derived.reserve():
            derived.names[names] = names
        return names

    def known_names(self, snapshot: Snapshot, names: frozenset[str]) -> frozenset[str] | None:
        """The shared set equal to `names` if `intern_names` has one for `snapshot`, else None."""
        return self._derived(snapshot).names.get(names)

    def shared_response(self, snapshot: Snapshot, key: ResponseKey, build: Callable[[], bytes]) -> bytes:
        """A whole encoded response, built once for every stream that would build the same bytes.

        The caller's `key` must decide the bytes (see `ResponseKey`); streams of one group in step
        share one object instead of one copy each. At most `RESPONSE_LIMIT` kept per snapshot.
        """
        responses = self._derived(snapshot).responses
        found = responses.get(key)
        if found is None:
            found = build()
            if len(responses) < RESPONSE_LIMIT:
                responses[key] = found
        return found

    def private_key_secrets(self, snapshot: Snapshot) -> frozenset[str]:
        """The names of `snapshot`'s secrets that carry a private key (keys.py), computed once."""
        derived = self._derived(snapshot)
        if derived.private_keys is None:
            derived.private_keys = private_key_secrets(snapshot)
        return derived.private_keys

    def without_keys(
        self,
        snapshot: Snapshot,
        type_url: TypeUrl,
        names: Names,
        chosen: Resources,
        withheld: frozenset[str],
    ) -> Selection:
        """`chosen` (the selection for `names`) less the `withheld` secrets, and its version.

        `withheld` must be `private_key_secrets(snapshot)`: the key does not include it, as it is
        the same for every stream of the snapshot that is not sent keys."""
        derived = self._derived(snapshot)
        found = derived.without_keys.get((type_url, names))
        if found is not None:
            return found
        kept = tuple(resource for resource in chosen if resource.name not in withheld)
        result = (aggregate_version(kept), kept)
        if derived.reserve():
            derived.without_keys[(type_url, names)] = result
        return result

    def changed(
        self,
        snapshot: Snapshot,
        type_url: TypeUrl,
        accepted: Resources,
        held: Resources,
        chosen: Resources,
    ) -> Resources:
        """The resources of `chosen` a client may lack: whose version differs from the one it
        acknowledged (`accepted`) or from the one it was sent since (`held`, which it may still be
        applying, or may yet reject). The three are shared selections (streams in step hold the
        very same objects), so every stream holding the same asks once."""
        derived = self._derived(snapshot)
        key = (type_url, accepted, held, chosen)
        found = derived.changed.get(key)
        if found is not None:
            return found
        acknowledged = {resource.name: resource.version for resource in accepted}
        pending = acknowledged if held is accepted else {resource.name: resource.version for resource in held}
        result = tuple(
            resource
            for resource in chosen
            if acknowledged.get(resource.name) != resource.version or pending.get(resource.name) != resource.version
        )
        if derived.reserve():
            derived.changed[key] = result
        return result

    def gone(self, snapshot: Snapshot, type_url: TypeUrl, held: Resources) -> Resources:
        """The resources of `held` that `snapshot` no longer has. `held` is the shared selection of
        an earlier snapshot: every stream holding it asks the same."""
        derived = self._derived(snapshot)
        found = derived.gone.get((type_url, held))
        if found is not None:
            return found
        current = snapshot.of_type(type_url).by_name
        result = tuple(resource for resource in held if resource.name not in current)
        if derived.reserve():
            derived.gone[(type_url, held)] = result
        return result
