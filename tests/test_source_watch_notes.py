"""Source notes in the logs: each new note one INFO line (`event: source_note`), never counted or
logged as an error, and bounded per check (a first list may note thousands of objects)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from meshplane.logs import JsonFormatter
from meshplane.model import SourceStatus
from meshplane.status.source_watch import NOTES_LOGGED_PER_CHECK, SourceWatch


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_notes_are_logged_once_at_info_and_are_not_errors(logged: io.StringIO) -> None:
    status = [SourceStatus("kubernetes", True, None, None, (), {}, notes=("port dns is UDP",))]
    watch = SourceWatch(lambda: status)
    watch.check()
    watch.check()  # the same note again: no new line
    status[0] = dataclasses.replace(status[0], notes=("port dns is UDP", "port syslog is UDP"))
    watch.check()
    notes = [entry for entry in lines(logged) if entry.get("event") == "source_note"]
    assert [(entry["level"], entry["note"]) for entry in notes] == [
        ("info", "port dns is UDP"),
        ("info", "port syslog is UDP"),
    ]
    assert not [entry for entry in lines(logged) if entry.get("event") == "source_error"]
    assert watch.error_counts["kubernetes"] == 0


def test_a_burst_of_notes_is_logged_bounded(logged: io.StringIO) -> None:
    many = [f"service default/svc-{i:04d}: port dns is UDP" for i in range(2000)]
    status = SourceStatus("kubernetes", True, None, None, (), {}, notes=tuple(many))
    SourceWatch(lambda: [status]).check()
    notes = [entry for entry in lines(logged) if entry.get("event") == "source_note"]
    assert len(notes) == NOTES_LOGGED_PER_CHECK + 1
    assert notes[-1]["message"] == f"source kubernetes: {2000 - NOTES_LOGGED_PER_CHECK} more notes (see /status)"
