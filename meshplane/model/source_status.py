"""The health of one source, as the status endpoint and the CLI show it.

Owns `SourceStatus`, a frozen snapshot a source hands out on request. Holds no behaviour: a
source builds a new one whenever asked, so readers never see it change under them. Here, in the
model, because both sides read it typed: the sources (discovery) that build it and the status
endpoint, metrics and logs that show it, which must not import discovery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Where a source stands.

    `synced`: a first load succeeded, so the source's content may be served. `last_success`: the
    wall-clock time (`time.time()`) the source last confirmed that the content it serves is in
    sync with where it comes from (a good load of the files; for Kubernetes a complete list, an
    accepted watch, a watch event or BOOKMARK; for the edge registry an answer of its store), so
    its age tells a quiet source (young) from a stale one (growing); None before the first.
    `last_attempt`: when it last tried to load, list, watch or reach its store, good or not.
    `errors` say why the source cannot load or why its current content is refused (each
    `path:line: reason`, or the request that fails; a `Problem` is there as its message); empty
    when it is good. While `synced` with errors, it serves its last good content. `notes` tell
    what the source left out of individual objects or noticed about them (a UDP port not served,
    an annotation skipped, a Secret kept at its last good version); they never make the source
    itself unhealthy. `counts` describe the content being served (the last good content), e.g.
    {"services": 3, "routes": 1, "secrets": 0, "files": 2}. `events` counts what happened since
    start, e.g. {"registrations": 9, "lease_expiries": 2}. `feeds_mesh`: False for a source whose
    objects are read and shown but not yet part of what is served; it does not hold readiness back.
    """

    name: str
    synced: bool
    last_success: float | None
    last_attempt: float | None
    errors: tuple[str, ...]
    counts: Mapping[str, int]
    events: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    feeds_mesh: bool = True
