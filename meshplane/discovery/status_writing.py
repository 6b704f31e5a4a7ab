"""What every status writer of meshplane shares: the set of objects marked to be looked at again,
and one write through the status subresource with its outcome counted (rendering the conditions
written is `status_conditions`', pure).

Owns the rules common to the GatewayClass, Gateway API and meshplane API writers: marked objects
are taken in key order, sorted once per pass (never the smallest of the set once per object: with
thousands marked that is quadratic), with the event loop given a turn every `YIELD_EVERY` objects
looked at, whether or not a write awaited; a write is a JSON merge patch on `/status` carrying the object's
resourceVersion, so one based on an old copy is refused with 409 instead of undoing a newer one.
After a 409 the object waits for the watch to bring its newer version (which marks it again); a
404 means it was deleted meanwhile; any other failure is retried after a jittered exponential
backoff. Must not decide what a status says: the writers' callers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp

from meshplane.discovery.kubernetes_watching import Backoff

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
WRITE_SECONDS = 30.0
# Objects looked at between two turns given to the event loop. Looking at one (reading it from the
# watch's cache, rendering, comparing) takes tens of microseconds; 64 keep a pass over thousands of
# unchanged objects from holding the loop for more than a few milliseconds at a time.
YIELD_EVERY = 64

K = TypeVar("K", bound=Hashable)


class Marked(Generic[K]):
    """The objects to look at again. `mark()` is cheap and synchronous (watch callbacks call it);
    `wanted` is set whenever something is marked; `take()` hands the marked ones over, sorted once,
    and forgets them: what is marked meanwhile waits for the next pass."""

    def __init__(self) -> None:
        self._keys: set[K] = set()
        self.wanted = asyncio.Event()

    def mark(self, keys: Iterable[K]) -> None:
        """Look at `keys` again; `wanted` is set even when all were marked already (what is owed
        may have changed)."""
        marked = list(keys)
        if marked:
            self._keys.update(marked)
            self.wanted.set()

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> frozenset[K]:
        return frozenset(self._keys)

    def take(self) -> deque[K]:
        """Every marked key, in order (one sort per pass), now unmarked."""
        taken, self._keys = self._keys, set()
        return deque(sorted(taken))  # type: ignore[type-var]  # keys of one writer are of one orderable type


async def wait_marked(marked: Marked[Any], seconds: float) -> None:
    """Until something is marked, or at most `seconds` (a writer also has periodic work); then
    `marked.wanted` is cleared."""
    # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that arrives as
    # the wait completes, and a loop meant to end by cancellation would run on.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await marked.wanted.wait()
    marked.wanted.clear()


async def pass_over(keys: deque[K], look: Callable[[K], Awaitable[None]], *, yield_every: int = YIELD_EVERY) -> int:
    """Calls `await look(key)` for each of `keys`, taking them from the left (several `pass_over`
    may share one deque: each key is looked at once), giving the event loop a turn every
    `yield_every` keys; how many this one looked at."""
    looked = 0
    while keys:
        key = keys.popleft()
        await look(key)
        looked += 1
        if looked % yield_every == 0:
            await asyncio.sleep(0)  # a turn for the loop, even when no key needed a write
    return looked


class StatusWrites:
    """One status write at a time, its outcome counted: `writes` (accepted by the API server),
    `conflicts` (409s), `skipped` (looked at, nothing to write, counted by the caller through
    `skip()`); `last_error` is the failure being retried, "" when none."""

    def __init__(self, backoff: Backoff | None = None, rng: random.Random | None = None) -> None:
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._failures = 0
        self.writes = 0
        self.conflicts = 0
        self.skipped = 0
        self.last_error = ""

    def skip(self) -> None:
        self.skipped += 1

    async def write(
        self, client: ApiClient, path: str, obj: Mapping[str, Any], status: Mapping[str, Any], named: str
    ) -> bool:
        """PATCHes `status` onto `path` (an object's `/status`) at `obj`'s resourceVersion. False
        when done with it (written, 409, 404); True when it failed otherwise: the backoff delay has
        been slept, and the caller marks the object again."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        body = {"metadata": {"resourceVersion": version}, "status": status}
        try:
            code, reason = await patch_status(client, path, body)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # unreachable, timed out: keep it marked, back off
            code, reason = 0, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if code in (200, 201):
            self.writes += 1
            self._failures, self.last_error = 0, ""
            log.info("%s: status written", named)
            return False
        if code == 409:
            self.conflicts += 1  # the watch brings the newer version, which marks it again
            return False
        if code == 404:
            return False  # deleted meanwhile: its DELETED event forgets it
        self._failures += 1
        self.last_error = f"cannot write the status of {named}: {reason}"
        delay = self._backoff.delay(self._failures, self._rng)
        log.warning("%s; retrying in %.2f s", self.last_error, delay)
        await asyncio.sleep(delay)
        return True


class CountedWrites:
    """For a writer holding its `StatusWrites` as `_outcomes`: its counters, read by its source's
    status."""

    _outcomes: StatusWrites

    @property
    def writes(self) -> int:
        return self._outcomes.writes

    @property
    def conflicts(self) -> int:
        return self._outcomes.conflicts

    @property
    def skipped(self) -> int:
        return self._outcomes.skipped

    @property
    def last_error(self) -> str:
        return self._outcomes.last_error


async def patch_status(client: ApiClient, path: str, body: Mapping[str, Any]) -> tuple[int, str]:
    """PATCHes `body` (a JSON merge patch) onto the status subresource at `path`: the HTTP status,
    and what the server said when it refused."""
    response: aiohttp.ClientResponse = await client.call_api(
        path,
        "PATCH",
        body=body,
        header_params={"Content-Type": MERGE_PATCH, "Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=aiohttp.ClientTimeout(total=WRITE_SECONDS),
    )
    try:
        text = ""
        if response.status not in (200, 201, 404, 409):
            text = await response.text()
            with contextlib.suppress(ValueError, AttributeError):
                text = json.loads(text).get("message", text)
        return int(response.status), f"HTTP {response.status}: {str(text)[:300]}"
    finally:
        response.release()
