"""Debouncing: turn a burst of change notifications into few rebuilds, and a lone change into one at once.

Leading and trailing edges. A change that comes after a quiet spell (no rebuild for `quiet`
seconds and none pending) is rebuilt at once: a lone file edit, Kubernetes write or registration
reaches the proxies without waiting out a window that nothing else will fill. Changes that come
within `quiet` of a rebuild form a burst: its rebuild runs `quiet` seconds after the burst's last
change, but never later than `max_delay` after its first (Contour's handler: 100 ms / 500 ms;
Istio's PILOT_DEBOUNCE_AFTER / PILOT_DEBOUNCE_MAX: 100 ms / 10 s, both trailing only). So a storm
costs at most one rebuild more than trailing alone (the leading one), and never more than one
per `max_delay` after it. Changes arriving during a rebuild start the next burst, so no change is
ever lost and no rebuild runs twice at once.

While `action` runs, `window_opened` says when the first change it rebuilds for was noted (Unix
time and monotonic seconds, read from the system clocks, not the loop's): the start of the
change-to-proxy time (the convergence time) that the wait here is part of.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

_DUE = 0.001


class Debouncer:
    """Coalesces `poke()` calls into calls of `action`. Run `run()` as a task; it ends only when cancelled.

    `window_opened`: while `action` runs, (Unix time, monotonic time) of the first `poke()` it
    rebuilds for; None at any other time.
    """

    def __init__(self, action: Callable[[], None], *, quiet: float = 0.1, max_delay: float = 1.0) -> None:
        if quiet <= 0 or max_delay < quiet:
            raise ValueError("debounce needs 0 < quiet <= max_delay")
        self._action = action
        self.quiet = quiet
        self.max_delay = max_delay
        self._changed = asyncio.Event()
        self._first: float | None = None
        self._first_clocks: tuple[float, float] | None = None
        self.window_opened: tuple[float, float] | None = None
        self._last = 0.0
        self._ran_at = -math.inf  # when the last rebuild ended (loop time)
        self.pokes = 0
        self.runs = 0

    def poke(self) -> None:
        """Notes a change; cheap, synchronous, safe to call from any callback on the loop."""
        now = asyncio.get_running_loop().time()
        if self._first is None:
            self._first = now
            self._first_clocks = (time.time(), time.monotonic())
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
            assert self._first is not None
            leading = self._first - self._ran_at >= self.quiet
            while not leading:
                self._changed.clear()
                assert self._first is not None
                deadline = min(self._last + self.quiet, self._first + self.max_delay)
                remaining = deadline - loop.time()
                # Within a millisecond counts as due: a clock of coarse resolution (or float
                # rounding) could otherwise wake early forever with a remainder it cannot sleep.
                if remaining < _DUE:
                    break
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that arrives as the
                # wait completes, and a loop meant to end by cancellation would run on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
            self._changed.clear()  # every change so far is in this rebuild
            self._first = None
            self.window_opened, self._first_clocks = self._first_clocks, None
            self.runs += 1
            try:
                self._action()
            finally:
                self.window_opened = None
            self._ran_at = loop.time()
