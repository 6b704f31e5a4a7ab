"""Shared test options. Fixtures live beside the tests that use them (tests/envoy_harness.py etc.)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

from tests import ports

_slot_lock: int | None = None  # held open for the run: the claimed slot stays ours until we exit


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/out/ from the translators' current output (and delete stale files)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def pytest_configure(config: pytest.Config) -> None:
    """Claims a port slot for this run (tests/ports.py) before any xdist worker starts.

    Runs in the controller (and in a plain run); workers inherit the claimed slot through the
    environment, so two test runs on one machine never hand out the same ports.
    """
    global _slot_lock
    if hasattr(config, "workerinput") or ports.SLOT_VARIABLE in os.environ:
        return
    for slot in range(ports.SLOTS):
        path = Path(tempfile.gettempdir()) / f"meshplane-test-ports-{os.getuid()}-{slot}.lock"
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        _slot_lock = descriptor
        os.environ[ports.SLOT_VARIABLE] = str(slot)
        ports.claim(slot)
        return
    # Every slot taken: share slot 0 (ports are still checked free before they are handed out).
