"""Keeps the registry's long-lived objects out of Python's cyclic garbage collector's scans.

Owns one process-wide decision: after the registry has read its whole fleet (the start-up load,
each full re-read of a shared store), every object alive is moved to the collector's permanent
generation (`gc.freeze`). Must not collect (a full pass over a fleet's heap is the stall this
avoids) nor change the collector's thresholds.

Why: a replica holding 100,000 devices has about half a million tracked objects; each full pass
over them took 0.13-0.16 s on an idle core and up to 1.8 s under load, and the worst heartbeat
latencies lined up with those passes. Frozen objects are still freed by reference counting when
they are dropped (registrations are acyclic), so a device replaced after the freeze costs nothing
to keep frozen; a reference cycle created before a freeze and dropped after it is not reclaimed
until `gc.unfreeze`, which nothing here needs: the registry's data has no cycles.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Moves every object tracked now out of future collections (see the module docstring)."""
    gc.freeze()
