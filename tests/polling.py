"""Waiting on a condition in a test: poll it until it holds, with a generous deadline.

It owns the one poll loop the tests without an Envoy at hand share (`Envoy.eventually` also reads
the Envoy's log); it must never sleep a fixed time and hope, nor assert anything about timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE = 30.0  # seconds: generous on the shared 2-core machine
INTERVAL = 0.05  # seconds between two polls


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, deadline: float = DEADLINE) -> T:
    """Polls `check` until it returns something truthy, and returns that; after `deadline` seconds
    fails with `what` and the last value seen."""
    end = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < end:
        found = await check()
        if found:
            return found
        last = found
        await asyncio.sleep(INTERVAL)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")
