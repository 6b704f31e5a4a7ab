"""A value kept for each live object, by identity, and dropped with the object.

What the server derives from a snapshot, or from one type's resource set, is kept beside that
object for as long as it lives and no longer. A `weakref.WeakKeyDictionary` cannot do this here:
snapshots and resource sets compare by content and are not hashable, and identity is what is
meant (two equal snapshots are two sets of objects, each with its own derived values).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class WhileAlive(Generic[K, V]):
    """`get(obj)`: the value kept for `obj`, made by `make()` the first time; gone when `obj` is.

    Keyed by `id(obj)` with a weak reference whose callback removes the entry, checked on every
    lookup so that an id reused by a newer object never finds the older one's value. Not locked:
    used from one thread (a callback from another only removes its own entry, one dict operation).
    """

    def __init__(self, make: Callable[[], V]) -> None:
        self._make = make
        self._entries: dict[int, tuple[weakref.ref[K], V]] = {}

    def get(self, obj: K) -> V:
        key = id(obj)
        found = self._entries.get(key)
        if found is not None and found[0]() is obj:
            return found[1]
        entries = self._entries

        def forget(ref: weakref.ref[K]) -> None:
            if entries.get(key, (None,))[0] is ref:
                del entries[key]

        value = self._make()
        entries[key] = (weakref.ref(obj, forget), value)
        return value

    def __len__(self) -> int:
        """How many live objects have a value kept."""
        return len(self._entries)
