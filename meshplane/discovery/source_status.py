"""The health of one source, as the status endpoint and the CLI show it.

Owns `SourceStatus`, a frozen snapshot a source hands out on request. Holds no behaviour: a
source builds a new one whenever asked, so readers never see it change under them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Where a source stands.

    `synced`: a first load succeeded, so the source's content may be served. `last_success` and
    `last_attempt` are wall-clock times (`time.time()`) of the last load whose content was good
    and of the last load at all. `errors` say why the source's current content is refused (each
    `path:line: reason`); empty when it is good. `counts` describe the content being served (the
    last good content), e.g. {"services": 3, "routes": 1, "secrets": 0, "files": 2}. `events`
    counts what happened since start, e.g. {"registrations": 9, "lease_expiries": 2}.
    """

    name: str
    synced: bool
    last_success: float | None
    last_attempt: float | None
    errors: tuple[str, ...]
    counts: Mapping[str, int]
    events: Mapping[str, int] = field(default_factory=dict)
