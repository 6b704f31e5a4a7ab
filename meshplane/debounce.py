"""Debouncing: turn a burst of change notifications into one rebuild.

A rebuild runs `quiet` seconds after the last change, but never later than `max_delay` after the
first change of the burst (Contour's handler: 100 ms / 500 ms; Istio's PILOT_DEBOUNCE_AFTER /
PILOT_DEBOUNCE_MAX: 100 ms / 10 s). Changes arriving during a rebuild start the next burst, so
no change is ever lost and no rebuild runs twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Debouncer:
    """Coalesces `poke()` calls into calls of `action`. Run `run()` as a task; it ends only when cancelled."""

    def __init__(self, action: Callable[[], None], *, quiet: float = 0.1, max_delay: float = 1.0) -> None:
        if quiet <= 0 or max_delay < quiet:
            raise ValueError("debounce needs 0 < quiet <= max_delay")
        self._action = action
        self.quiet = quiet
        self.max_delay = max_delay
        self._changed = asyncio.Event()
        self._first: float | None = None
        self._last = 0.0
        self.pokes = 0
        self.runs = 0

    def poke(self) -> None:
        """Notes a change; cheap, synchronous, safe to call from any callback on the loop."""
        now = asyncio.get_running_loop().time()
        if self._first is None:
            self._first = now
        self._last = now
        self.pokes += 1
        self._changed.set()

    @property
    def merged(self) -> int:
        """How many pokes were absorbed into a rebuild that another poke caused."""
        return self.pokes - self.runs

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            while True:
                self._changed.clear()
                assert self._first is not None
                deadline = min(self._last + self.quiet, self._first + self.max_delay)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
            self._first = None
            self.runs += 1
            self._action()
