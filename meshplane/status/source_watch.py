"""Turns changes in the sources' status into log lines and counters.

Sources report their state when asked (`SourceStatus`); operators need an event when something
goes wrong. `SourceWatch.check()` compares each source's status with the last one seen and logs
one line per new error (with the source's name and the error; `event: source_error`), one at
INFO per new note (`event: source_note`; notes are not errors and are not counted), and one
when a source loses or regains its sync; it counts errors per source for the metrics. Reads the
sources through a callable and never changes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence

from meshplane.logs import redact_secrets
from meshplane.model import SourceStatus

log = logging.getLogger(__name__)

NOTES_LOGGED_PER_CHECK = 20


class SourceWatch:
    """Logs and counts source errors. Run `run()` as a task (ends only when cancelled), or call `check()`."""

    def __init__(self, sources: Callable[[], Sequence[SourceStatus]], interval: float = 0.5) -> None:
        self._sources = sources
        self.interval = interval
        self._errors: dict[str, frozenset[str]] = {}
        self._notes: dict[str, frozenset[str]] = {}
        self._synced: dict[str, bool] = {}
        self.error_counts: Counter[str] = Counter()

    def check(self) -> None:
        for source in self._sources():
            name = source.name
            errors = tuple(redact_secrets(error) for error in source.errors)
            seen = self._errors.get(name, frozenset())
            for error in errors:
                if error not in seen:
                    self.error_counts[name] += 1
                    log.warning(
                        "source %s: %s",
                        name,
                        error,
                        extra={"event": "source_error", "source": name, "error": error},
                    )
            if seen and not errors:
                log.info("source %s: errors cleared", name, extra={"event": "source_recovered", "source": name})
            self._errors[name] = frozenset(errors)
            notes = frozenset(redact_secrets(note) for note in source.notes)
            fresh = sorted(notes - self._notes.get(name, frozenset()))
            # Bounded: a cluster's first list may note thousands of objects at once (all on /status).
            for note in fresh[:NOTES_LOGGED_PER_CHECK]:
                log.info("source %s: %s", name, note, extra={"event": "source_note", "source": name, "note": note})
            if len(fresh) > NOTES_LOGGED_PER_CHECK:
                more = len(fresh) - NOTES_LOGGED_PER_CHECK
                log.info("source %s: %d more notes (see /status)", name, more, extra={"event": "source_note"})
            self._notes[name] = notes
            synced = source.synced
            if self._synced.get(name) and not synced:
                log.warning("source %s lost its sync", name, extra={"event": "source_unsynced", "source": name})
            elif name in self._synced and synced and not self._synced[name]:
                log.info("source %s synced", name, extra={"event": "source_synced", "source": name})
            self._synced[name] = synced

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval)
